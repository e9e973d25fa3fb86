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

/// [`term`], cut to at most `width` characters for a table column (on a character boundary,
/// never inside one; a cut string ends in `…`).
pub fn term_cut(s: &str, width: usize) -> String {
    let escaped = term(s);
    if escaped.chars().count() <= width {
        return escaped;
    }
    let mut out: String = escaped.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::{term, term_cut};

    #[test]
    fn cuts_on_character_boundaries() {
        // 3 control bytes escape to 12 characters, then two 2-byte characters: byte 16 falls
        // inside the second `é`.
        let name = "\x01\x01\x01aéé";
        assert_eq!(term_cut(name, 16), "\\x01\\x01\\x01aéé");
        assert_eq!(term_cut(name, 14), "\\x01\\x01\\x01a…");
        assert_eq!(term_cut("short", 16), "short");
        assert_eq!(term_cut("ééééé", 3), "éé…");
    }

    #[test]
    fn neutralises_escape_sequences() {
        assert_eq!(term("ok-name_1"), "ok-name_1");
        assert_eq!(term("\x1b[31mred"), "\\x1b[31mred");
        assert_eq!(term("a\nb\tc\\"), "a\\x0ab\\x09c\\\\");
        assert_eq!(term("\u{9b}x\u{202e}"), "\\u{9b}x\\u{202e}");
        assert_eq!(term("naïve"), "naïve");
    }
}
