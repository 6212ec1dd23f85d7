//! HuJSON as Tailscale writes it (JWCC: JSON With Commas and Comments — not Hjson).
//!
//! `//` line comments, `/* */` block comments and trailing commas are accepted; everything else
//! is strict JSON. Duplicate object keys are an error (Tailscale once accepted them silently,
//! tailscale#2807). Nesting deeper than [`MAX_DEPTH`] is an error, never a stack overflow.
//! Object key order is kept.

use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays/objects accepted.
pub const MAX_DEPTH: usize = 256;

/// A HuJSON syntax error with its 1-based position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct HujsonError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parse HuJSON text into a JSON value.
pub fn parse(text: &str) -> Result<Value, HujsonError> {
    parse_document(text)?.ok_or_else(|| {
        let (line, column) = line_col(text, text.len());
        HujsonError {
            line,
            column,
            message: "unexpected end of input".to_string(),
        }
    })
}

/// Like [`parse`], but a document of nothing but whitespace and comments is `Ok(None)`
/// (an empty policy file).
pub fn parse_document(text: &str) -> Result<Option<Value>, HujsonError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        pos: 0,
    };
    // A UTF-8 byte order mark is tolerated.
    if text.starts_with('\u{feff}') {
        p.pos = 3;
    }
    p.skip_ws()?;
    if p.pos >= p.s.len() {
        return Ok(None);
    }
    let v = p.value(0)?;
    p.skip_ws()?;
    if p.pos < p.s.len() {
        return Err(p.err_here(format!(
            "invalid character {} after top-level value",
            p.describe_here()
        )));
    }
    Ok(Some(v))
}

/// Line and column (1-based, columns in characters) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut line = 1;
    let mut col = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err_at(&self, pos: usize, message: String) -> HujsonError {
        let (line, column) = line_col(self.text, pos);
        HujsonError {
            line,
            column,
            message,
        }
    }

    fn err_here(&self, message: String) -> HujsonError {
        self.err_at(self.pos, message)
    }

    fn describe_here(&self) -> String {
        match self.text.get(self.pos..).and_then(|r| r.chars().next()) {
            Some(c) if c.is_control() => format!("{:?}", c),
            Some(c) => format!("'{c}'"),
            None => "end of input".to_string(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) -> Result<(), HujsonError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.pos += 1,
                Some(b'/') => match self.s.get(self.pos + 1) {
                    Some(b'/') => {
                        while let Some(c) = self.peek() {
                            if c == b'\n' {
                                break;
                            }
                            self.pos += 1;
                        }
                    }
                    Some(b'*') => {
                        let start = self.pos;
                        self.pos += 2;
                        loop {
                            match self.peek() {
                                None => {
                                    return Err(
                                        self.err_at(start, "unterminated block comment".into())
                                    );
                                }
                                Some(b'*') if self.s.get(self.pos + 1) == Some(&b'/') => {
                                    self.pos += 2;
                                    break;
                                }
                                Some(_) => self.pos += 1,
                            }
                        }
                    }
                    _ => {
                        return Err(self.err_here(
                            "invalid character '/' looking for beginning of value".into(),
                        ));
                    }
                },
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, HujsonError> {
        match self.peek() {
            None => Err(self.err_here("unexpected end of input".into())),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(_) => Err(self.err_here(format!(
                "invalid character {} looking for beginning of value",
                self.describe_here()
            ))),
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> Result<Value, HujsonError> {
        if self.s.get(self.pos..self.pos + word.len()) == Some(word.as_bytes()) {
            self.pos += word.len();
            Ok(v)
        } else {
            Err(self.err_here(format!(
                "invalid character {} looking for beginning of value",
                self.describe_here()
            )))
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), HujsonError> {
        if depth > MAX_DEPTH {
            Err(self.err_here(format!("exceeded max depth of {MAX_DEPTH}")))
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, HujsonError> {
        self.check_depth(depth)?;
        self.pos += 1; // '{'
        let mut map = Map::new();
        loop {
            self.skip_ws()?;
            match self.peek() {
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                Some(b'"') => {}
                None => return Err(self.err_here("unexpected end of input".into())),
                Some(_) => {
                    return Err(self.err_here(format!(
                        "invalid character {} looking for beginning of object key string",
                        self.describe_here()
                    )));
                }
            }
            let key_pos = self.pos;
            let key = self.string()?;
            self.skip_ws()?;
            if self.peek() != Some(b':') {
                return Err(self.err_here(format!(
                    "invalid character {} after object key",
                    self.describe_here()
                )));
            }
            self.pos += 1;
            self.skip_ws()?;
            let v = self.value(depth)?;
            if map.contains_key(&key) {
                return Err(self.err_at(key_pos, format!("duplicate key {:?}", key)));
            }
            map.insert(key, v);
            self.skip_ws()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                None => return Err(self.err_here("unexpected end of input".into())),
                Some(_) => {
                    return Err(self.err_here(format!(
                        "invalid character {} after object key:value pair",
                        self.describe_here()
                    )));
                }
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, HujsonError> {
        self.check_depth(depth)?;
        self.pos += 1; // '['
        let mut items = Vec::new();
        loop {
            self.skip_ws()?;
            if self.peek() == Some(b']') {
                self.pos += 1;
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth)?);
            self.skip_ws()?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {}
                None => return Err(self.err_here("unexpected end of input".into())),
                Some(_) => {
                    return Err(self.err_here(format!(
                        "invalid character {} after array element",
                        self.describe_here()
                    )));
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, HujsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self
                .peek()
                .ok_or_else(|| self.err_here("unexpected end of input".into()))?;
            let d = (c as char).to_digit(16).ok_or_else(|| {
                self.err_here(format!(
                    "invalid character {} in \\u hexadecimal character escape",
                    self.describe_here()
                ))
            })?;
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, HujsonError> {
        let start = self.pos;
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            // copy a run of plain characters at once
            let run_start = self.pos;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if let Some(run) = self.text.get(run_start..self.pos) {
                out.push_str(run);
            }
            match self.peek() {
                None => return Err(self.err_at(start, "unterminated string".into())),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.err_at(start, "unterminated string".into()))?;
                    self.pos += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                // surrogate pair, or U+FFFD if unpaired
                                if self.s.get(self.pos) == Some(&b'\\')
                                    && self.s.get(self.pos + 1) == Some(&b'u')
                                {
                                    let save = self.pos;
                                    self.pos += 2;
                                    let lo = self.hex4()?;
                                    if (0xDC00..0xE000).contains(&lo) {
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                    } else {
                                        self.pos = save;
                                        0xFFFD
                                    }
                                } else {
                                    0xFFFD
                                }
                            } else if (0xDC00..0xE000).contains(&hi) {
                                0xFFFD
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp).unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err_here(format!(
                                "invalid character {} in string escape code",
                                self.describe_here()
                            )));
                        }
                    }
                }
                Some(_) => {
                    return Err(self.err_here(format!(
                        "invalid character {} in string literal",
                        self.describe_here()
                    )));
                }
            }
        }
    }

    fn number(&mut self) -> Result<Value, HujsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.pos += 1;
                }
            }
            _ => {
                return Err(self.err_here(format!(
                    "invalid character {} in numeric literal",
                    self.describe_here()
                )));
            }
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            float = true;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err_here(format!(
                    "invalid character {} after decimal point in numeric literal",
                    self.describe_here()
                )));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            float = true;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err_here(format!(
                    "invalid character {} in exponent of numeric literal",
                    self.describe_here()
                )));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        let lit = self.text.get(start..self.pos).unwrap_or("0");
        let num = if !float {
            if let Ok(i) = lit.parse::<i64>() {
                Some(Number::from(i))
            } else if let Ok(u) = lit.parse::<u64>() {
                Some(Number::from(u))
            } else {
                lit.parse::<f64>().ok().and_then(Number::from_f64)
            }
        } else {
            lit.parse::<f64>().ok().and_then(Number::from_f64)
        };
        num.map(Value::Number)
            .ok_or_else(|| self.err_at(start, format!("number {lit} out of range")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas() {
        let v = parse("// head\n{ /* a */ \"acls\": [1, 2,], // x\n \"b\": {\"c\": \"d\",},\n}\n")
            .unwrap();
        assert_eq!(v, serde_json::json!({"acls": [1, 2], "b": {"c": "d"}}));
    }

    #[test]
    fn empty_document() {
        assert_eq!(parse_document(" // only a comment\n/* and */\n"), Ok(None));
        let e = parse("\n  ").unwrap_err();
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (2, 3, "unexpected end of input")
        );
        assert!(parse_document("/* open").is_err());
    }

    #[test]
    fn key_order_kept() {
        let v = parse(r#"{"z": 1, "a": 2, "m": 3}"#).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["z", "a", "m"]);
    }

    #[test]
    fn duplicate_key() {
        let e = parse("{\n  \"acls\": [],\n    \"acls\": []\n}").unwrap_err();
        assert_eq!(e.to_string(), "line 3, column 5: duplicate key \"acls\"");
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("{\"a\": tru}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 7));
        let e = parse("{\"a\": 1 /* open").unwrap_err();
        assert_eq!(e.message, "unterminated block comment");
        let e = parse("[1,,]").unwrap_err();
        assert_eq!(e.column, 4);
        assert!(parse("").is_err());
        assert!(parse("{} x").is_err());
        assert!(parse("[1] // fine").is_ok());
        assert!(parse("\"\\ud800\"").is_ok());
        assert!(parse("1e999").is_err());
        assert!(parse("\"\u{1}\"").is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        let e = parse(&deep).unwrap_err();
        assert!(e.message.contains("max depth"), "{e}");
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let deep_obj = "{\"a\":".repeat(10_000);
        assert!(parse(&deep_obj).is_err());
    }

    #[test]
    fn unicode_columns() {
        let e = parse("{\"é\": x}").unwrap_err();
        assert_eq!((e.line, e.column), (1, 7));
    }
}
