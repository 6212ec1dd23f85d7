//! Scalars: which strings each layout writes plain, how it quotes the others, literal blocks.
//! The YAML facts are written once: the keywords a YAML 1.1 or 1.2 reader takes for a boolean
//! or null, indentation, literal blocks, the double-quoted escaper with its two escape styles.

use crate::Strings;

/// The plain words a YAML 1.1 or 1.2 reader resolves to a boolean or null, spelled as the
/// specifications spell them (YAML 1.1 `bool` and `null`, the 1.2 core schema): `yes`, `No`,
/// `ON`, `true`, `Null`, `~`, … (`yEs` is a string in both). A writer must quote these to keep
/// them strings.
#[inline]
pub(crate) fn is_keyword(s: &str) -> bool {
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
pub(crate) fn indent(out: &mut String, n: usize) {
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
pub(crate) fn literal_ok(s: &str) -> bool {
    // Printable ASCII and newlines (generated JSON documents, armor): one byte pass, in
    // blocks without an early exit so it compiles to vector compares (a cluster's mesh is
    // hundreds of MB of such text).
    let not_printable = |c: u8| c != b'\n' && !(0x20..0x7f).contains(&c);
    if !s
        .as_bytes()
        .chunks(64)
        .any(|b| b.iter().fold(false, |bad, &c| bad | not_printable(c)))
    {
        return !s.trim().is_empty() && !s.contains(" \n") && !s.ends_with(' ');
    }
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
        && !s.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
}

/// Write `s` (checked by [`literal_ok`]) as a literal block whose lines are indented by `ind`:
/// the indicator with its chomping (`|` one final newline, `|-` none, `|+` more) and, when the
/// text starts with a space, the indentation indicator `step` (the lines' indentation relative
/// to the node that holds the block); no newline after the last line.
pub(crate) fn literal(out: &mut String, s: &str, ind: usize, step: usize) {
    let chomp = if s.ends_with("\n\n") {
        "+"
    } else if s.ends_with('\n') {
        ""
    } else {
        "-"
    };
    out.push('|');
    if s.starts_with(' ') {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(out, "{step}");
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
pub(crate) enum Escapes {
    /// go-yaml v3's (the sops CLI's): `\xXX` for C0 controls and DEL, `\uXXXX` for NEL, the
    /// line and paragraph separators and the BOM, upper-case hex.
    GoYaml,
    /// `\uxxxx` for every control character (C0, DEL, C1), NEL and the BOM, lower-case hex.
    Unicode,
}

/// `s` as a double-quoted scalar that reads back as exactly `s`.
pub(crate) fn double_quoted(s: &str, escapes: Escapes) -> String {
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

/// The escapes a layout's double-quoted scalars use.
fn escapes(strings: Strings) -> Escapes {
    match strings {
        Strings::Manifest => Escapes::Unicode,
        Strings::GoYaml => Escapes::GoYaml,
    }
}

/// A map key: plain when the layout's rule allows it, quoted otherwise (never a block).
pub(crate) fn key(out: &mut String, k: &str, strings: Strings) {
    if plain_ok(k, strings) {
        out.push_str(k);
    } else {
        quoted(out, k, strings);
    }
}

/// A string value. A literal block, when the layout writes one (manifests: any multi-line
/// string [`literal_ok`] takes), has its lines at `ind` and indentation indicator `step`.
pub(crate) fn string(out: &mut String, s: &str, ind: usize, step: usize, strings: Strings) {
    if strings == Strings::Manifest && s.contains('\n') && literal_ok(s) {
        literal(out, s, ind, step);
    } else {
        key(out, s, strings);
    }
}

/// A string the layout does not write plain. Manifests: single quotes unless it holds a
/// control character; go-yaml: double quotes.
fn quoted(out: &mut String, s: &str, strings: Strings) {
    match strings {
        Strings::Manifest if single_ok(s, strings) => single_quoted(out, s),
        _ => out.push_str(&double_quoted(s, escapes(strings))),
    }
}

/// A string in the style its caller asked for (`crate::Style`), the layout's rule where that
/// style cannot hold it.
pub(crate) fn styled(
    out: &mut String,
    s: &str,
    style: crate::Style,
    (ind, step): (usize, usize),
    strings: Strings,
) {
    use crate::Style;
    match style {
        Style::Literal if literal_ok(s) => literal(out, s, ind, step),
        Style::DoubleQuoted => out.push_str(&double_quoted(s, escapes(strings))),
        Style::Plain if plain_ok(s, strings) || reads_back_plain(s) => out.push_str(s),
        Style::SingleQuoted if !plain_ok(s, strings) && single_ok(s, strings) => {
            single_quoted(out, s);
        }
        _ => string(out, s, ind, step, strings),
    }
}

fn single_quoted(out: &mut String, s: &str) {
    out.push('\'');
    out.push_str(&s.replace('\'', "''"));
    out.push('\'');
}

/// Can `s` be single-quoted: no character a single-quoted scalar cannot hold (and, as go-yaml
/// has it, no blank at either end and not empty).
fn single_ok(s: &str, strings: Strings) -> bool {
    let printable = s
        .chars()
        .all(|c| !c.is_control() && c != '\u{feff}' && c != '\u{85}');
    match strings {
        Strings::Manifest => printable,
        Strings::GoYaml => {
            printable
                && !s.is_empty()
                && !s.contains(['\u{2028}', '\u{2029}'])
                && !s.starts_with(' ')
                && !s.ends_with(' ')
        }
    }
}

/// Does `s` read back as itself written plain, on one line: a YAML reader
/// (`serde_yaml_ng`) takes it for this string.
fn reads_back_plain(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(['\n', '\r', '#'])
        && matches!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(s),
            Ok(serde_yaml_ng::Value::String(ref back)) if back == s)
}

/// May `s` be written plain under the layout's rule.
fn plain_ok(s: &str, strings: Strings) -> bool {
    match strings {
        Strings::Manifest => simple_word(s).unwrap_or_else(|| plain_ok_general(s)),
        Strings::GoYaml => go_plain_ok(s),
    }
}

// The manifests' rule: any string a YAML 1.1 or 1.2 reader could take for something else is
// quoted.

/// Could a YAML 1.1 or 1.2 reader take this string for a number, bool, null, timestamp, the
/// value key (`=`) or the merge key (`<<`)?
fn looks_typed(s: &str) -> bool {
    if is_keyword(s) || matches!(s, "=" | "<<") {
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
    const WORD: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            t[i] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-');
            i += 1;
        }
        t
    };
    let b = s.as_bytes();
    let first = *b.first()?;
    if !first.is_ascii_alphabetic() || !b.iter().all(|&c| WORD[c as usize]) {
        return None;
    }
    // Every ambiguous word is at most 8 bytes long and starts with one of these letters (the
    // keywords are `is_keyword`'s).
    let special = b.len() <= 8
        && matches!(
            first.to_ascii_lowercase(),
            b'y' | b'n' | b't' | b'f' | b'o' | b'i'
        )
        && (is_keyword(s)
            || ["inf", "nan", "infinity"]
                .iter()
                .any(|w| s.eq_ignore_ascii_case(w)));
    Some(!special)
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

// go-yaml's rule, as the sops CLI writes: SOPS `ENC[…]` values and `^(data|stringData)$` are
// plain; in block context `[`, `]`, `,`, `|`, `(`, `)`, `^`, `$` are fine inside a plain scalar
// that starts with a safe character.

fn go_plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let first_ok = first.is_ascii_alphanumeric() || matches!(first, '.' | '/' | '_' | '^');
    let rest_ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '.' | '/'
                    | '_'
                    | '-'
                    | '+'
                    | '='
                    | '['
                    | ']'
                    | ','
                    | ':'
                    | '('
                    | ')'
                    | '|'
                    | '^'
                    | '$'
            )
    });
    if !(first_ok && rest_ok) || s.ends_with(':') || s.contains(": ") {
        return false;
    }
    // Must not resolve to a non-string (numbers, bools, null, YAML 1.1 booleans, timestamps)
    // in either go-yaml or serde_yaml_ng.
    if is_keyword(s) {
        return false;
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !s.starts_with("ENC[")
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | ':' | '_' | 'e' | 'E'))
    {
        return false;
    }
    matches!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(s),
        Ok(serde_yaml_ng::Value::String(ref back)) if back == s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_ascii_path_agrees_with_general_rule() {
        let general = |s: &str| {
            !s.trim().is_empty()
                && s.chars()
                    .all(|c| c == '\n' || (!c.is_control() && c != '\u{feff}'))
                && !s.lines().any(|l| l.ends_with(' ') || l.ends_with('\t'))
        };
        for s in [
            "a\nb",
            "a \nb",
            "a\nb ",
            "a\n\n",
            " \n",
            "\n",
            "{\n  \"k\": 1\n}\n",
            "x\n \n",
            "a\n\tb",
            "a\r\nb",
            "ü\nx ",
            "ü\nx",
        ] {
            assert_eq!(literal_ok(s), general(s), "{s:?}");
        }
    }

    #[test]
    fn fast_path_agrees_with_general_rule() {
        // The keywords in every case and their neighbours.
        let mut words: Vec<String> = [
            "y", "Y", "yes", "Yes", "YES", "yEs", "n", "N", "no", "No", "NO", "true", "True",
            "TRUE", "tRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
            "null", "Null", "NULL", "nULL", "~", "=", "<<",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
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

    /// A string as [`Strings::GoYaml`] writes it.
    fn go(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s, 4, 4, Strings::GoYaml);
        out
    }

    #[test]
    fn go_yaml_scalars_read_back_as_the_same_string() {
        for s in [
            "v1",
            "Secret",
            "wg-node-a",
            "app.kubernetes.io/name",
            "true",
            "yes",
            "No",
            "null",
            "~",
            "123",
            "1.5",
            "1e3",
            "0x1F",
            "2024-01-01",
            "",
            " lead",
            "trail ",
            "a: b",
            "a:",
            "#x",
            "- x",
            "x\ny",
            "quote\"back\\slash",
            "\u{1}\u{7f}",
            "ünïcode",
            "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]",
            "^(data|stringData)$",
            "@x",
            "*alias",
            "&anchor",
            "!tag",
            "%x",
            "{a}",
            "[a]",
            "'s'",
            "3.11.0",
        ] {
            let doc = format!("k: {}\n", go(s));
            let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&doc).unwrap();
            assert_eq!(
                back.get("k"),
                Some(&serde_yaml_ng::Value::String(s.to_string())),
                "{s:?} -> {doc:?}"
            );
        }
        assert_eq!(go("v1"), "v1");
        assert_eq!(go("^(data|stringData)$"), "^(data|stringData)$");
    }

    #[test]
    fn literal_blocks_keep_their_final_newlines() {
        let mut out = String::new();
        literal(&mut out, "a\nb\n", 4, 4);
        assert_eq!(out, "|\n    a\n    b");
        out.clear();
        literal(&mut out, "a", 2, 2);
        assert_eq!(out, "|-\n  a");
        out.clear();
        literal(&mut out, " a\n\n", 2, 2);
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
