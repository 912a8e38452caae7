//! Quoting untrusted input in error messages and logs: at most a short prefix, cut on character
//! boundaries (never by bytes, so multibyte text cannot panic), escaped as Rust debug strings so
//! control characters and quotes stay visible and harmless.

/// Characters of untrusted input an error message quotes at most.
pub const QUOTE_CHARS: usize = 32;

/// `s` as a quoted string of at most [`QUOTE_CHARS`] characters, with `…` and the full length in
/// bytes when it was cut: `"abc"`, or `"aaaa…" (3000000 bytes)`.
pub fn quote(s: &str) -> String {
    quote_n(s, QUOTE_CHARS)
}

/// Like [`quote`], with at most `n` characters.
pub fn quote_n(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?} ({} bytes)", format!("{}…", &s[..cut]), s.len()),
    }
}

/// The first `n` characters of `s` (for display in a column), with `…` when cut.
pub fn prefix(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", &s[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(quote("abc"), "\"abc\"");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn long_input_is_cut_on_characters() {
        let long = "é".repeat(1_000_000);
        let q = quote(&long);
        assert!(q.chars().count() < 60, "{q}");
        assert!(q.ends_with("(2000000 bytes)"), "{q}");
        assert_eq!(prefix("ééé", 2), "éé…");
        assert_eq!(prefix("abc", 16), "abc");
        assert_eq!(prefix("🦀🦀🦀", 1), "🦀…");
    }
}
