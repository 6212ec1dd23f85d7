//! The YAML facts tsk8s's two YAML writers share, so each is written once:
//!
//! - the compiler's stream emitter (`tsk8s::yaml`): Kubernetes manifests in kubectl's layout
//!   (indent 2, list items at their key's indentation), conservative quoting, single quotes
//!   preferred;
//! - `tsk8s-sops`'s writer (`tsk8s_sops::emit`): encrypted Secrets in the layout of the sops
//!   CLI 3.11 (go-yaml v3: indent 4, list items indented under their key, go-yaml's choice of
//!   plain or double-quoted scalars), byte for byte what `sops --encrypt` writes.
//!
//! The layouts differ because each is compared with a different reader's expectations (the
//! manifests' reviewers and kubectl; the sops CLI's own output); what a YAML reader takes a
//! plain word for, how a line is indented and how a literal block is written are the same.

/// The plain words a YAML 1.1 or 1.2 reader resolves to a boolean or null, spelled as the
/// specifications spell them (YAML 1.1 `bool` and `null`, the 1.2 core schema): `yes`, `No`,
/// `ON`, `true`, `Null`, `~`, … (`yEs` is a string in both). A writer must quote these to keep
/// them strings.
#[inline]
pub fn is_keyword(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
            | "null"
            | "Null"
            | "NULL"
            | "~"
    )
}

/// Append `n` spaces.
pub fn indent(out: &mut String, n: usize) {
    const SPACES: &str = "                                ";
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

/// Can `s` be written as a literal block (`|`) that reads back as exactly `s`: more than
/// blanks, printable, no line ending in a blank.
pub fn literal_ok(s: &str) -> bool {
    // Printable ASCII and newlines (generated JSON documents, armor): one byte pass.
    if s.bytes().all(|c| c == b'\n' || (0x20..0x7f).contains(&c)) {
        return !s.trim().is_empty() && !s.contains(" \n") && !s.ends_with(' ');
    }
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && !s.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
}

/// Write `s` (checked by [`literal_ok`]) as a literal block whose lines are indented by `ind`:
/// the indicator with its chomping (`|` one final newline, `|-` none, `|+` more) and an
/// indentation indicator when the text starts with a space; no newline after the last line.
pub fn literal(out: &mut String, s: &str, ind: usize) {
    let chomp = if s.ends_with("\n\n") {
        "+"
    } else if s.ends_with('\n') {
        ""
    } else {
        "-"
    };
    out.push('|');
    if s.starts_with(' ') {
        out.push('2');
    }
    out.push_str(chomp);
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            indent(out, ind);
            out.push_str(line);
        }
    }
}

/// How a double-quoted scalar writes the characters it must escape besides `"`, `\\`, newline,
/// tab and carriage return (which every writer escapes as `\"`, `\\\\`, `\n`, `\t`, `\r`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escapes {
    /// go-yaml v3's (the sops CLI's): `\xXX` for C0 controls and DEL, `\uXXXX` for NEL, the
    /// line and paragraph separators and the BOM, upper-case hex.
    GoYaml,
    /// `\uxxxx` for every control character (C0, DEL, C1), NEL and the BOM, lower-case hex.
    Unicode,
}

/// `s` as a double-quoted scalar that reads back as exactly `s`.
pub fn double_quoted(s: &str, escapes: Escapes) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        // Writing to a String cannot fail.
        let _ = match (c, escapes) {
            ('"', _) => out.write_str("\\\""),
            ('\\', _) => out.write_str("\\\\"),
            ('\n', _) => out.write_str("\\n"),
            ('\t', _) => out.write_str("\\t"),
            ('\r', _) => out.write_str("\\r"),
            (c, Escapes::GoYaml) if (c as u32) < 0x20 || c == '\u{7f}' => {
                write!(out, "\\x{:02X}", c as u32)
            }
            ('\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}', Escapes::GoYaml) => {
                write!(out, "\\u{:04X}", c as u32)
            }
            (c, Escapes::Unicode) if c.is_control() || c == '\u{feff}' || c == '\u{85}' => {
                write!(out, "\\u{:04x}", c as u32)
            }
            (c, _) => out.write_char(c),
        };
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_blocks_keep_their_final_newlines() {
        let mut out = String::new();
        literal(&mut out, "a\nb\n", 4);
        assert_eq!(out, "|\n    a\n    b");
        out.clear();
        literal(&mut out, "a", 2);
        assert_eq!(out, "|-\n  a");
        out.clear();
        literal(&mut out, " a\n\n", 2);
        assert_eq!(out, "|2+\n   a\n");
        assert!(!literal_ok("a \nb") && !literal_ok("  ") && literal_ok("a\nb"));
    }

    #[test]
    fn double_quoted_escapes_by_style() {
        let s = "a\"b\\c\n\t\r\u{1}\u{7f}\u{85}\u{2028}\u{feff}\u{90}ü";
        assert_eq!(
            double_quoted(s, Escapes::GoYaml),
            "\"a\\\"b\\\\c\\n\\t\\r\\x01\\x7F\\u0085\\u2028\\uFEFF\u{90}ü\""
        );
        assert_eq!(
            double_quoted(s, Escapes::Unicode),
            "\"a\\\"b\\\\c\\n\\t\\r\\u0001\\u007f\\u0085\u{2028}\\ufeff\\u0090ü\""
        );
    }

    #[test]
    fn keywords_are_the_spelled_forms() {
        for w in ["yes", "No", "ON", "true", "NULL", "~", "y"] {
            assert!(is_keyword(w), "{w}");
        }
        for w in ["yEs", "tRUE", "nil", "none", ""] {
            assert!(!is_keyword(w), "{w}");
        }
    }
}
