//! Per-job secrets: generation and constant-time comparison.

/// Generates a random per-job secret: 32 lowercase hex characters (128 bits) from the
/// operating system's entropy via a cryptographically secure generator.
pub fn new_secret() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that depends only on their lengths, so a remote
/// guesser learns nothing from how fast a wrong secret is refused.
pub(crate) fn secrets_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    // Walk the longer one in full so a short guess costs as long as a long one.
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_32_hex_chars_and_differ() {
        let (a, b) = (new_secret(), new_secret());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn comparison_is_exact() {
        assert!(secrets_match("abc", "abc"));
        assert!(secrets_match("", ""));
        assert!(!secrets_match("abc", "abd"));
        assert!(!secrets_match("abc", "ab"));
        assert!(!secrets_match("abc", "abc\0"));
        assert!(!secrets_match("", "a"));
    }
}
