//! Printing untrusted text (names, keys and values from a spec, a lock, a policy file or a
//! peer) into terminals and CI logs, safely: the one owner of escaping for every crate of the
//! workspace (this is the crate all of them depend on).
//!
//! - [`escape`]: one user-provided string inside a message. Control characters (C0 including
//!   NUL and ESC, DEL, C1), Unicode bidi controls, line and paragraph separators and the BOM
//!   become `\n`, `\r`, `\t`, `\0` or `\u{1b}`, so a string cannot end a line, move the
//!   cursor, recolour or retitle a terminal, or hide text.
//! - [`neutralize`]: a whole text about to be printed (any number of lines). Control
//!   characters other than newline and tab are escaped as above, a line whose first non-blank
//!   characters are `::` (a GitHub Actions workflow command such as `::error::` or
//!   `::add-mask::`) gets its first `:` written `\u{3a}`, and `##[` (the runner's older command
//!   syntax, recognised anywhere in a line) becomes `#\u{23}[`.
//! - [`neutralize_json`]: the same for JSON text: `##[` becomes `#\u0023[` (valid inside a
//!   JSON string, the only place it can occur), so the JSON still parses to the same value.
//!
//! Backslashes are not escaped: the output is for people, and a literal `\u{1b}` in the input
//! stays readable as such.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that must not reach a terminal or log raw.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{feff}'
        )
}

/// Append `c` escaped (`\n`, `\r`, `\t`, `\0`, else `\u{…}` in lowercase hex).
pub fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// One user-provided string, every [`is_unsafe`] character escaped (newlines and tabs too).
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` if it has at most `max` characters (`max` ≥ 200), else its head and its last 100
/// characters around `…(N characters)…`: a message stays readable and bounded whatever the
/// input holds.
pub fn bounded(s: &str, max: usize) -> Cow<'_, str> {
    let max = max.max(200);
    // Cheap test first: a string of at most `max` bytes has at most `max` characters.
    if s.len() <= max || s.chars().count() <= max {
        return Cow::Borrowed(s);
    }
    let n = s.chars().count();
    let head: String = s.chars().take(max - 100).collect();
    let tail: String = s.chars().skip(n - 100).collect();
    Cow::Owned(format!("{head}…({} characters)…{tail}", n - max))
}

fn needs_neutralizing(text: &str) -> bool {
    text.contains("##[")
        || text.split('\n').any(|l| l.trim_start().starts_with("::"))
        || text.chars().any(|c| c != '\n' && c != '\t' && is_unsafe(c))
}

/// A whole text for a terminal or CI log: newlines and tabs kept, every other unsafe
/// character escaped, no line starting (after blanks) with `::`, no `##[`.
pub fn neutralize(text: &str) -> Cow<'_, str> {
    if !needs_neutralizing(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut line_out = String::with_capacity(line.len());
        for c in line.chars() {
            if c != '\t' && is_unsafe(c) {
                push_escaped(&mut line_out, c);
            } else {
                line_out.push(c);
            }
        }
        let blank = line_out.len() - line_out.trim_start().len();
        if line_out[blank..].starts_with("::") {
            line_out.replace_range(blank..blank + 1, "\\u{3a}");
        }
        out.push_str(&line_out.replace("##[", "#\\u{23}["));
    }
    Cow::Owned(out)
}

/// [`neutralize`] for JSON text (already escaped by its serializer): `##[` becomes
/// `#\u0023[`, which parses back to the same string.
pub fn neutralize_json(text: &str) -> Cow<'_, str> {
    if text.contains("##[") {
        Cow::Owned(text.replace("##[", "#\\u0023["))
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_and_invisible_characters() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(
            escape("a\nb\r\t\0\u{1b}[31m\u{7f}\u{9b}\u{202e}"),
            "a\\nb\\r\\t\\0\\u{1b}[31m\\u{7f}\\u{9b}\\u{202e}"
        );
    }

    #[test]
    fn neutralizes_workflow_commands() {
        assert_eq!(neutralize("ok\n  fine: x"), "ok\n  fine: x");
        assert_eq!(
            neutralize("x\n::error::pwned\n \t::add-mask::y"),
            "x\n\\u{3a}:error::pwned\n \t\\u{3a}:add-mask::y"
        );
        assert_eq!(neutralize("a ##[error]b"), "a #\\u{23}[error]b");
        assert_eq!(neutralize("a\u{1b}]0;t\u{7}b\r"), "a\\u{1b}]0;t\\u{7}b\\r");
        for out in [
            neutralize("::error::x\n##[group]\n\u{1b}::x").into_owned(),
            neutralize(":\u{0}:error").into_owned(),
        ] {
            assert!(!out.contains("##["), "{out}");
            assert!(
                out.lines().all(|l| !l.trim_start().starts_with("::")),
                "{out}"
            );
        }
    }

    #[test]
    fn bounded_keeps_head_and_tail() {
        assert_eq!(bounded("short", 300), "short");
        let long = format!("{}{}", "h".repeat(500), "t".repeat(500));
        let b = bounded(&long, 300);
        assert!(b.starts_with(&"h".repeat(200)));
        assert!(b.ends_with(&format!("…(700 characters)…{}", "t".repeat(100))));
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"##[error]x": "a ##[b"});
        let text = serde_json::to_string_pretty(&v).unwrap_or_default();
        let safe = neutralize_json(&text);
        assert!(!safe.contains("##["));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).ok(),
            Some(v)
        );
    }
}
