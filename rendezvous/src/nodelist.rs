//! The rendezvous host of a SLURM job: the first host of its compressed node list
//! (`SLURM_JOB_NODELIST`), read the same way by the launcher and by workers started
//! directly by `srun`.

/// The first host of a SLURM node list such as `gpu[01-03,07],cpu5` (→ `gpu01`):
/// `scontrol show hostnames` when scontrol is installed (it knows every syntax SLURM
/// has), else [`first_host_of`]. The error says what is wrong with the list.
pub fn first_slurm_host(list: &str) -> Result<String, String> {
    match scontrol_first_host(list) {
        Some(host) => Ok(host),
        None => first_host_of(list),
    }
}

fn scontrol_first_host(list: &str) -> Option<String> {
    let out = std::process::Command::new("scontrol")
        .args(["show", "hostnames", list])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

/// The first host of a compressed node list, expanded by its rules: names separated by
/// commas outside brackets; each bracket group a list of numbers and ranges, zero padding
/// following a range's lower bound; several groups in one name (`r[1-2]n[1-2]` → `r1n1`)
/// and text after a group (`n[1-2]-ib` → `n1-ib`) kept. The whole list is checked.
pub fn first_host_of(list: &str) -> Result<String, String> {
    let names = split_top_level(list.trim())?;
    let mut first = None;
    for name in names {
        let host = first_of_name(name)?;
        first.get_or_insert(host);
    }
    first.ok_or_else(|| "it names no host".to_string())
}

/// The first host a name such as `gpu-a[1-2]-ib` stands for.
fn first_of_name(name: &str) -> Result<String, String> {
    let mut host = String::new();
    let mut rest = name;
    loop {
        let (literal, after) = match rest.find('[') {
            Some(open) => (&rest[..open], &rest[open..]),
            None => (rest, ""),
        };
        if literal.contains(']') {
            return Err("unbalanced ']'".to_string());
        }
        host.push_str(literal);
        if after.is_empty() {
            return Ok(host);
        }
        let close = after.find(']').ok_or("unbalanced '['")?;
        host.push_str(&first_of_ranges(&after[1..close])?);
        rest = &after[close + 1..];
    }
}

/// Splits at commas outside brackets: "a[1,2],b" → ["a[1,2]", "b"].
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err("unbalanced brackets".to_string());
        }
    }
    if depth != 0 {
        return Err("unbalanced '['".to_string());
    }
    parts.push(&list[start..]);
    Ok(parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect())
}

/// The first value of a bracket group such as "01-03,07" ("01"); every item is checked.
fn first_of_ranges(spec: &str) -> Result<String, String> {
    let mut first = None;
    for item in spec.split(',').map(str::trim) {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("{item:?} is not a number or range"));
        if parse(lo)? > parse(hi)? {
            return Err(format!("range {item:?} runs backwards"));
        }
        first.get_or_insert_with(|| lo.to_string());
    }
    first.ok_or_else(|| "an empty bracket group".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(list: &str) -> String {
        first_host_of(list).unwrap_or_else(|e| panic!("{list}: {e}"))
    }

    #[test]
    fn first_hosts_of_compressed_lists() {
        for (list, host) in [
            ("gpu[01-03,07],cpu5", "gpu01"),
            ("node5", "node5"),
            ("a1,b[2-3]", "a1"),
            ("gpu[3,5]", "gpu3"),
            ("n[098-101]", "n098"),
            ("node-[001-002]", "node-001"),
            ("r[1-2]n[1-2]", "r1n1"),
            ("n[1-2]-ib", "n1-ib"),
            ("gpu-a[1-2]-ib,login", "gpu-a1-ib"),
            ("a[1-99999]b[1-99999]", "a1b1"),
            (" x7 ", "x7"),
        ] {
            assert_eq!(first(list), host, "{list}");
        }
    }

    #[test]
    fn malformed_lists_are_errors() {
        for bad in ["", ",", "gpu[01-03", "gpu01]", "gpu[a-b]", "gpu[5-3]", "x[[1]]", "x[]", "a,b[2-1]"] {
            assert!(first_host_of(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
