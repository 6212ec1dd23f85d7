//! A small, strict YAML emitter for JSON-shaped values, written for reviewable GitOps output:
//! block style, kubectl's layout (list items at their key's indentation), literal blocks for
//! multi-line strings, and conservative quoting. Any string a YAML 1.1 or 1.2 reader could
//! take for something else — `on`, `yes`, `no`, `y`, `off`, `null`, `~`, numbers in any
//! base (`0755`, `0x1F`, `1_000`, `1:20`), `.inf`, timestamps, or text with YAML indicators —
//! is single- or double-quoted. Map keys keep the value's order (serde_json `preserve_order`).

use serde_json::{Map, Value};

pub fn to_string(v: &Value) -> String {
    let mut out = String::with_capacity(4096);
    match v {
        Value::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        other => {
            scalar(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    const SPACES: &str = "                                ";
    let mut n = n;
    while n > 0 {
        let k = n.min(SPACES.len());
        out.push_str(&SPACES[..k]);
        n -= k;
    }
}

fn map(out: &mut String, m: &Map<String, Value>, ind: usize) {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        key(out, k);
        out.push(':');
        value_after_key(out, v, ind);
    }
}

/// After `key:` — a nested block on the next lines, or ` scalar`.
fn value_after_key(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, ind + 2);
            map(out, m, ind + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            indent(out, ind);
            seq(out, a, ind);
        }
        other => {
            out.push(' ');
            scalar(out, other, ind + 2);
            out.push('\n');
        }
    }
}

fn seq(out: &mut String, a: &[Value], ind: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => map(out, m, ind + 2),
            Value::Array(inner) if !inner.is_empty() => seq(out, inner, ind + 2),
            other => {
                scalar(out, other, ind + 2);
                out.push('\n');
            }
        }
    }
}

fn key(out: &mut String, k: &str) {
    if plain_ok(k) {
        out.push_str(k);
    } else {
        out.push_str(&quote(k));
    }
}

fn scalar(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s, ind),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

fn string(out: &mut String, s: &str, ind: usize) {
    if s.contains('\n') && literal_ok(s) {
        out.push_str(&literal(s, ind));
    } else if plain_ok(s) {
        out.push_str(s);
    } else {
        out.push_str(&quote(s));
    }
}

/// A literal block (`|`, `|-`, `|+`) holds the text exactly, if it is printable.
fn literal_ok(s: &str) -> bool {
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && !s.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
}

fn literal(s: &str, ind: usize) -> String {
    let chomp = if s.ends_with("\n\n") {
        "+"
    } else if s.ends_with('\n') {
        ""
    } else {
        "-"
    };
    let first_space = s.starts_with(' ');
    let mut out = String::from("|");
    if first_space {
        out.push('2');
    }
    out.push_str(chomp);
    let body = s.strip_suffix('\n').unwrap_or(s);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            for _ in 0..ind {
                out.push(' ');
            }
            out.push_str(line);
        }
    }
    out
}

const AMBIGUOUS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
    "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "=",
    "<<",
];

/// Could a YAML 1.1 or 1.2 reader take this string for a number, bool, null or timestamp?
fn looks_typed(s: &str) -> bool {
    if AMBIGUOUS.contains(&s) {
        return true;
    }
    let t = s.trim_start_matches(['+', '-']);
    let lower = t.to_ascii_lowercase();
    if matches!(lower.as_str(), ".inf" | ".nan" | "inf" | "nan" | "infinity") {
        return true;
    }
    // Anything built only from digits and number punctuation: ints in every base, floats,
    // sexagesimal (1:20), timestamps (2001-12-14), underscores (1_000).
    let numberish = t.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && t.chars()
            .all(|c| c.is_ascii_hexdigit() || "._:-+xXoObBtTzZ ".contains(c));
    numberish || s.parse::<f64>().is_ok()
}

/// The common case, decided in one pass: a word that starts with a letter and holds only
/// `[A-Za-z0-9._/-]` is plain unless it is one of the ambiguous words. (No number, timestamp
/// or float starts with a letter, except `inf`/`infinity`/`nan` in any case.)
fn simple_word(s: &str) -> Option<bool> {
    let b = s.as_bytes();
    let first = *b.first()?;
    if !first.is_ascii_alphabetic()
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'))
    {
        return None;
    }
    // Every ambiguous word is at most 8 bytes long.
    let special = b.len() <= 8
        && (AMBIGUOUS.contains(&s)
            || ["inf", "nan", "infinity"]
                .iter()
                .any(|w| s.eq_ignore_ascii_case(w)));
    Some(!special)
}

fn plain_ok(s: &str) -> bool {
    simple_word(s).unwrap_or_else(|| plain_ok_general(s))
}

fn plain_ok_general(s: &str) -> bool {
    if s.is_empty() || looks_typed(s) {
        return false;
    }
    let first = s.chars().next().unwrap_or(' ');
    if "-?:,[]{}#&*!|>'\"%@`".contains(first) || first.is_whitespace() {
        return false;
    }
    if s.ends_with(char::is_whitespace) || s.ends_with(':') {
        return false;
    }
    if s.contains(": ") || s.contains(" #") || s.contains('\t') {
        return false;
    }
    s.chars()
        .all(|c| !c.is_control() && c != '\u{feff}' && c != '\u{85}')
}

fn quote(s: &str) -> String {
    if s.chars()
        .all(|c| !c.is_control() && c != '\u{feff}' && c != '\u{85}')
    {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || c == '\u{feff}' || c == '\u{85}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: &Value) {
        let text = to_string(v);
        let back: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(&back, v, "\n{text}");
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        for s in [
            "on",
            "yes",
            "no",
            "y",
            "off",
            "0755",
            "0x1F",
            "1_000",
            "1:20",
            "2001-12-14",
            ".inf",
            "null",
            "~",
            "-1",
            "1e3",
            "",
            " x",
            "a: b",
            "#c",
            "- x",
        ] {
            let text = to_string(&json!({ "k": s }));
            assert!(
                text.starts_with("k: '") || text.starts_with("k: \""),
                "{s:?} → {text}"
            );
            round_trip(&json!({ "k": s }));
        }
        assert_eq!(to_string(&json!({"k": "plain-value"})), "k: plain-value\n");
    }

    #[test]
    fn fast_path_agrees_with_general_rule() {
        let mut words: Vec<String> = AMBIGUOUS.iter().map(|s| s.to_string()).collect();
        for w in [
            "inf",
            "INF",
            "Infinity",
            "nan",
            "NaN",
            "x",
            "e5",
            "E",
            "a1",
            "b0x1",
            "t1:2",
            "app",
            "app.kubernetes.io/name",
            "tsk8s-runtime",
            "Recreate",
            "a_b",
            "z-",
            "Y",
            "yes.",
            "ON",
            "onx",
            "n",
            "nul",
            "nulll",
            "True",
            "tRue",
            "o",
            "no/x",
            "k8s",
            "v1",
        ] {
            words.push(w.to_string());
            words.push(format!("{w}x"));
        }
        for w in &words {
            if let Some(fast) = simple_word(w) {
                assert_eq!(fast, plain_ok_general(w), "{w:?}");
            }
        }
    }

    #[test]
    fn layout_matches_kubectl() {
        let v = json!({"a": {"b": [1, {"c": "d", "e": []}], "f": {}}, "g": "x\ny\n", "h": "x\ny"});
        assert_eq!(
            to_string(&v),
            "a:\n  b:\n  - 1\n  - c: d\n    e: []\n  f: {}\ng: |\n  x\n  y\nh: |-\n  x\n  y\n"
        );
        round_trip(&v);
    }

    #[test]
    fn odd_strings_round_trip() {
        for s in [
            "it's",
            "tab\there",
            "ctrl\u{1}",
            " lead\nline",
            "x\n\n",
            "\n",
            "trail \nx",
            "ünï",
            "a # b",
            "[x]",
            "'q'",
            "k:",
            "?x",
        ] {
            round_trip(&json!({ "k": s, s: [s] }));
        }
    }
}
