//! Strings from traced processes (comm, exe paths, cgroup names) are untrusted: a process can
//! name itself with terminal escape sequences. Everything shown on a terminal goes through
//! [`term`]. JSON output is escaped by serde_json.

use std::fmt::Write;

/// Escapes control characters (C0, DEL, C1), bidi overrides and backslashes as `\x..`/`\u{..}`
/// so a string cannot move the cursor, recolour or reorder the terminal.
pub fn term(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if ('\u{80}'..='\u{9f}').contains(&c)
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::term;

    #[test]
    fn neutralises_escape_sequences() {
        assert_eq!(term("ok-name_1"), "ok-name_1");
        assert_eq!(term("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(term("a\nb\tc\\"), "a\\x0ab\\x09c\\\\");
        assert_eq!(term("\u{9b}x\u{202e}"), "\\u{9b}x\\u{202e}");
        assert_eq!(term("naïve"), "naïve");
    }
}
