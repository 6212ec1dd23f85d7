//! A tiny, tolerant HuJSON → JSON converter: removes `//` and `/* */` comments and trailing
//! commas before `}` / `]`, leaving everything inside string literals untouched.
//!
//! Comments are replaced by spaces (newlines are kept) and dropped commas by a space, so line and
//! column numbers reported by `serde_json` on the result point into the original text.
//! This is deliberately not a validator: anything else that is not JSON is left for `serde_json`
//! to report. The real HuJSON parser lives in another crate; this one only has to be good enough
//! to compare two policy files.

use std::fmt;

/// An unterminated block comment (the only error the stripper itself reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HujsonError {
    /// 1-based line of the comment start.
    pub line: usize,
    /// 1-based column (in characters) of the comment start.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for HujsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for HujsonError {}

/// Converts HuJSON text to plain JSON text (see the module docs).
pub fn strip_hujson(input: &str) -> Result<String, HujsonError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let chars: Vec<char> = input.chars().collect();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut line = 1;
    let mut col = 1;
    while let Some(&c) = chars.get(i) {
        match c {
            '"' => {
                // Copy the whole string literal verbatim, honouring escapes.
                out.push(c);
                i += 1;
                col += 1;
                while let Some(&s) = chars.get(i) {
                    out.push(s);
                    i += 1;
                    col += 1;
                    match s {
                        '\\' => {
                            if let Some(&e) = chars.get(i) {
                                out.push(e);
                                i += 1;
                                col += 1;
                                if e == '\n' {
                                    line += 1;
                                    col = 1;
                                }
                            }
                        }
                        '"' => break,
                        '\n' => {
                            // Not valid JSON; serde_json will say so. Keep positions right.
                            line += 1;
                            col = 1;
                        }
                        _ => {}
                    }
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while let Some(&s) = chars.get(i) {
                    if s == '\n' {
                        break;
                    }
                    out.push(' ');
                    i += 1;
                    col += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let (start_line, start_col) = (line, col);
                out.push_str("  ");
                i += 2;
                col += 2;
                let mut closed = false;
                while let Some(&s) = chars.get(i) {
                    if s == '*' && chars.get(i + 1) == Some(&'/') {
                        out.push_str("  ");
                        i += 2;
                        col += 2;
                        closed = true;
                        break;
                    }
                    if s == '\n' {
                        out.push('\n');
                        line += 1;
                        col = 1;
                    } else {
                        out.push(' ');
                        col += 1;
                    }
                    i += 1;
                }
                if !closed {
                    return Err(HujsonError {
                        line: start_line,
                        column: start_col,
                        message: "unterminated /* comment".to_string(),
                    });
                }
            }
            ',' => {
                if next_significant(&chars, i + 1).is_some_and(|n| n == '}' || n == ']') {
                    out.push(' ');
                } else {
                    out.push(',');
                }
                i += 1;
                col += 1;
            }
            '\n' => {
                out.push(c);
                i += 1;
                line += 1;
                col = 1;
            }
            _ => {
                out.push(c);
                i += 1;
                col += 1;
            }
        }
    }
    Ok(out)
}

/// The next character at or after `i` that is neither whitespace nor inside a comment.
fn next_significant(chars: &[char], mut i: usize) -> Option<char> {
    loop {
        let c = *chars.get(i)?;
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while chars.get(i).is_some_and(|&s| s != '\n') {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            loop {
                let s = *chars.get(i)?;
                if s == '*' && chars.get(i + 1) == Some(&'/') {
                    i += 2;
                    break;
                }
                i += 1;
            }
        } else {
            return Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> serde_json::Value {
        let stripped = strip_hujson(s).unwrap_or_else(|e| panic!("strip failed: {e}"));
        serde_json::from_str(&stripped).unwrap_or_else(|e| panic!("{e}: {stripped}"))
    }

    #[test]
    fn strips_line_and_block_comments() {
        let v = json("// top\n{ /* a */ \"a\": 1, // trailing\n \"b\": /* x\n y */ 2 }\n");
        assert_eq!(v, serde_json::json!({"a": 1, "b": 2}));
    }

    #[test]
    fn comments_inside_strings_are_not_comments() {
        let v =
            json(r#"{"url": "https://example.com/x", "c": "/* not a comment */", "d": "a // b"}"#);
        assert_eq!(v["url"], "https://example.com/x");
        assert_eq!(v["c"], "/* not a comment */");
        assert_eq!(v["d"], "a // b");
    }

    #[test]
    fn escaped_quotes_keep_string_state() {
        let v = json(r#"{"q": "say \"// hi\" \\", "r": 1, /* c */}"#);
        assert_eq!(v["q"], "say \"// hi\" \\");
        assert_eq!(v["r"], 1);
    }

    #[test]
    fn trailing_commas_are_removed_even_before_comments() {
        let v = json("{\"a\": [1, 2, ], \"b\": {\"c\": 3, // x\n /* y */ }, }");
        assert_eq!(v, serde_json::json!({"a": [1, 2], "b": {"c": 3}}));
    }

    #[test]
    fn comma_in_string_before_bracket_is_kept() {
        let v = json(r#"{"a": ",]", "b": [",}"]}"#);
        assert_eq!(v["a"], ",]");
        assert_eq!(v["b"][0], ",}");
    }

    #[test]
    fn positions_are_preserved() {
        let src = "{\n  // comment\n  \"a\": 1,\n  \"b\": x,\n}";
        let stripped = strip_hujson(src).unwrap_or_default();
        assert_eq!(stripped.lines().count(), src.lines().count());
        let err = serde_json::from_str::<serde_json::Value>(&stripped).err();
        assert_eq!(err.map(|e| e.line()), Some(4));
    }

    #[test]
    fn unterminated_block_comment_is_an_error() {
        let err = strip_hujson("{\n  /* open").err();
        assert_eq!(
            err,
            Some(HujsonError {
                line: 2,
                column: 3,
                message: "unterminated /* comment".into()
            })
        );
    }

    #[test]
    fn garbage_never_panics() {
        for s in [
            "",
            "\"",
            "\"\\",
            "/",
            "/*",
            "//",
            ",",
            ",/*",
            "{\"a\":\"\n\"}",
            "\u{feff}{}",
        ] {
            let _ = strip_hujson(s);
        }
    }
}
