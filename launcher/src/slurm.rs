//! What a SLURM allocation says about the job's shape: node count, this node's index,
//! the first host (where node 0's launcher hosts the rendezvous) and a job-specific port.
use anyhow::{bail, Context, Result};

/// Rendezvous ports under SLURM are `SLURM_PORT_BASE + job id % SLURM_PORT_BASE`, the same
/// rule the worker applies when srun starts it directly, so both agree without talking.
pub const SLURM_PORT_BASE: u64 = 20000;

/// The parts of a SLURM job's environment the launcher uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmJob {
    /// SLURM_JOB_ID.
    pub job_id: u64,
    /// SLURM_NNODES (or SLURM_JOB_NUM_NODES), when set.
    pub nnodes: Option<usize>,
    /// SLURM_NODEID, when set.
    pub node_id: Option<usize>,
    /// SLURM_JOB_NODELIST in its compressed form, when set.
    pub nodelist: Option<String>,
    /// SLURM_LOCALID: set by srun for each task it starts on a node.
    pub local_id: Option<usize>,
}

impl SlurmJob {
    /// Reads the job from the environment through `get`; `None` outside SLURM (no
    /// SLURM_JOB_ID).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let Some(job_id) = get("SLURM_JOB_ID") else { return Ok(None) };
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).with_context(|| {
                    format!("environment variable {key}={v:?} is not a number; unset it or pass the matching option")
                }),
            }
        };
        let job = SlurmJob {
            job_id: job_id
                .trim()
                .parse()
                .with_context(|| format!("SLURM_JOB_ID={job_id:?} is not a number; pass --master-port explicitly"))?,
            nnodes: match num("SLURM_NNODES")? {
                Some(n) => Some(n),
                None => num("SLURM_JOB_NUM_NODES")?,
            },
            node_id: num("SLURM_NODEID")?,
            nodelist: get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST")),
            local_id: num("SLURM_LOCALID")?,
        };
        Ok(Some(job))
    }

    /// The job's rendezvous port.
    pub fn port(&self) -> u16 {
        // The modulus keeps the value below 40000, so it always fits.
        u16::try_from(SLURM_PORT_BASE + self.job_id % SLURM_PORT_BASE).unwrap_or(29500)
    }

    /// The first host of the allocation: `scontrol show hostnames` when scontrol is
    /// installed (it knows every syntax SLURM has), else our own expansion.
    pub fn first_host(&self) -> Result<String> {
        let Some(list) = &self.nodelist else {
            bail!("SLURM_JOB_NODELIST is not set; pass --master-addr HOST (the first node of the job)")
        };
        if let Some(host) = scontrol_first_host(list) {
            return Ok(host);
        }
        expand_nodelist(list)?
            .into_iter()
            .next()
            .with_context(|| format!("SLURM_JOB_NODELIST={list:?} names no host; pass --master-addr HOST"))
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

/// Expands a compressed SLURM host list such as `gpu[01-03,07],cpu5` into
/// `gpu01 gpu02 gpu03 gpu07 cpu5`. Zero padding follows the range's lower bound, as
/// SLURM writes it; several bracket groups in one name (`r[1-2]n[1-2]`) multiply out.
pub fn expand_nodelist(list: &str) -> Result<Vec<String>> {
    let bad = |why: &str| anyhow::anyhow!("cannot read SLURM_JOB_NODELIST {list:?} ({why}); pass --master-addr HOST");
    let mut hosts = Vec::new();
    for name in split_top_level(list.trim()).map_err(&bad)? {
        let mut expanded = vec![String::new()];
        let mut rest = name;
        while !rest.is_empty() {
            let (literal, after) = match rest.find('[') {
                Some(open) => (&rest[..open], &rest[open..]),
                None => (rest, ""),
            };
            if literal.contains(']') {
                return Err(bad("unbalanced ']'"));
            }
            for host in &mut expanded {
                host.push_str(literal);
            }
            if after.is_empty() {
                break;
            }
            let close = after.find(']').ok_or_else(|| bad("unbalanced '['"))?;
            let values = expand_ranges(&after[1..close]).map_err(|why| bad(&why))?;
            expanded = expanded.iter().flat_map(|h| values.iter().map(move |v| format!("{h}{v}"))).collect();
            rest = &after[close + 1..];
        }
        hosts.extend(expanded);
    }
    if hosts.is_empty() {
        return Err(bad("empty"));
    }
    Ok(hosts)
}

/// Splits at commas outside brackets: "a[1,2],b" → ["a[1,2]", "b"].
fn split_top_level(list: &str) -> std::result::Result<Vec<&str>, &'static str> {
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
            return Err("unbalanced brackets");
        }
    }
    if depth != 0 {
        return Err("unbalanced '['");
    }
    parts.push(&list[start..]);
    Ok(parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect())
}

/// "01-03,07" → ["01", "02", "03", "07"].
fn expand_ranges(spec: &str) -> std::result::Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("{item:?} is not a number or range"));
        let (a, b) = (parse(lo)?, parse(hi)?);
        if a > b {
            return Err(format!("range {item:?} runs backwards"));
        }
        if b - a > 100_000 {
            return Err(format!("range {item:?} is implausibly large"));
        }
        let width = lo.len();
        out.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hosts(list: &str) -> Vec<String> {
        expand_nodelist(list).unwrap_or_else(|e| panic!("{list}: {e}"))
    }

    #[test]
    fn expands_compressed_nodelists() {
        assert_eq!(hosts("gpu[01-03,07],cpu5"), ["gpu01", "gpu02", "gpu03", "gpu07", "cpu5"]);
        assert_eq!(hosts("node5"), ["node5"]);
        assert_eq!(hosts("a1,b2"), ["a1", "b2"]);
        assert_eq!(hosts("gpu[3,5]"), ["gpu3", "gpu5"]);
        assert_eq!(hosts("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(hosts("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(hosts("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(hosts("gpu-a[1-2]-ib,login"), ["gpu-a1-ib", "gpu-a2-ib", "login"]);
    }

    #[test]
    fn malformed_nodelists_are_errors_naming_the_fix() {
        for bad in ["", "gpu[01-03", "gpu01]", "gpu[a-b]", "gpu[5-3]", "x[[1]]"] {
            let err = expand_nodelist(bad).expect_err(bad).to_string();
            assert!(err.contains("--master-addr"), "{bad}: {err}");
        }
    }

    #[test]
    fn reads_the_job_from_the_environment() {
        let env: HashMap<&str, &str> = [
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_JOB_NUM_NODES", "4"),
            ("SLURM_NODEID", "2"),
            ("SLURM_JOB_NODELIST", "gpu[07-10]"),
        ]
        .into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let job = SlurmJob::from_env(&get).expect("valid").expect("in a job");
        assert_eq!((job.nnodes, job.node_id, job.local_id), (Some(4), Some(2), None));
        assert_eq!(job.port(), 20000 + 3456);
        assert_eq!(expand_nodelist(job.nodelist.as_deref().unwrap_or_default()).expect("list")[0], "gpu07");

        let none = |_: &str| None;
        assert_eq!(SlurmJob::from_env(&none).expect("no job"), None);
        let junk = |k: &str| (k == "SLURM_JOB_ID").then(|| "abc".to_string());
        let err = SlurmJob::from_env(&junk).expect_err("bad id").to_string();
        assert!(err.contains("SLURM_JOB_ID") && err.contains("--master-port"), "{err}");
    }
}
