//! A small, strict YAML emitter for JSON-shaped values, written for reviewable GitOps output:
//! block style, kubectl's layout (list items at their key's indentation), literal blocks for
//! multi-line strings, and conservative quoting. Any string a YAML 1.1 or 1.2 reader could
//! take for something else — `on`, `yes`, `no`, `y`, `off`, `null`, `~`, numbers in any
//! base (`0755`, `0x1F`, `1_000`, `1:20`), `.inf`, timestamps, or text with YAML indicators —
//! is single- or double-quoted. Map keys keep the order they are serialized in (struct field
//! order, as serde_json's `preserve_order` would).
//!
//! A value is written as it is serialized ([`Stream`]): no intermediate tree, one engine. The
//! output is what `serde_json::to_value` + writing would produce, except that a map with a key
//! serialized twice is an error (serde_json keeps one value silently). The tests check the
//! stream against a tree writer kept as their oracle (`yaml/tree.rs`, test-only).

use serde::Serialize;
use serde_json::Number;
use tsk8s_yaml::{Escapes, double_quoted, indent, is_keyword, literal, literal_ok};

/// Serialize `v` and write it as YAML, as it is serialized ([`Stream`]: no intermediate
/// tree). An error when `v` cannot be represented: a map with a non-scalar key or a key
/// serialized twice (serde_json's map would silently keep one value), or a failing
/// `Serialize` impl.
pub fn to_string<T: Serialize + ?Sized>(v: &T) -> Result<String, SerError> {
    let mut out = String::with_capacity(4096);
    v.serialize(Stream {
        out: &mut out,
        at: At::Top,
    })?;
    Ok(out)
}

/// A map key as serde_json accepts it: strings, and numbers, bools and chars as text.
fn key_text<T: Serialize + ?Sized>(k: &T) -> Result<String, SerError> {
    match serde_json::to_value(k) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Ok(serde_json::Value::Bool(b)) => Ok(b.to_string()),
        _ => Err(SerError("key must be a string".into())),
    }
}

fn key(out: &mut String, k: &str) {
    if plain_ok(k) {
        out.push_str(k);
    } else {
        out.push_str(&quote(k));
    }
}

fn string(out: &mut String, s: &str, ind: usize) {
    if s.contains('\n') && literal_ok(s) {
        literal(out, s, ind);
    } else if plain_ok(s) {
        out.push_str(s);
    } else {
        out.push_str(&quote(s));
    }
}

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
    // keywords are `tsk8s_yaml::is_keyword`'s).
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
    double_quoted(s, Escapes::Unicode)
}

/// Why a value could not be serialized.
#[derive(Debug)]
pub struct SerError(String);

impl std::fmt::Display for SerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SerError {}

impl serde::ser::Error for SerError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SerError(msg.to_string())
    }
}

/// Where a value being streamed stands.
#[derive(Clone, Copy)]
enum At {
    /// The whole document.
    Top,
    /// Right after `key:`, the key at this indentation.
    AfterKey(usize),
    /// Right after `- `; the item's content is at this indentation.
    Item(usize),
}

/// Writes a value as it is serialized: the layout of [`write`], decided event by event. An
/// empty map or sequence is only known at its end, so nothing of a collection is written
/// before its first entry (or its `{}` / `[]` at the end).
struct Stream<'a> {
    out: &'a mut String,
    at: At,
}

impl<'a> Stream<'a> {
    /// A scalar: `f` writes it, given the indentation of a literal block's lines.
    fn scalar(self, f: impl FnOnce(&mut String, usize)) -> Result<(), SerError> {
        match self.at {
            At::Top => f(self.out, 0),
            At::AfterKey(ind) => {
                self.out.push(' ');
                f(self.out, ind + 2);
            }
            At::Item(ind) => f(self.out, ind),
        }
        self.out.push('\n');
        Ok(())
    }

    fn str(self, s: &str) -> Result<(), SerError> {
        self.scalar(|out, ind| string(out, s, ind))
    }

    fn num(self, n: impl Into<Number>) -> Result<(), SerError> {
        let n: Number = n.into();
        self.scalar(|out, _| {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        })
    }

    fn map(self, check_keys: bool) -> MapStream<'a> {
        let ind = match self.at {
            At::Top => 0,
            At::AfterKey(ind) => ind + 2,
            At::Item(ind) => ind,
        };
        MapStream {
            out: self.out,
            at: self.at,
            ind,
            n: 0,
            keys: check_keys.then(std::collections::HashSet::new),
        }
    }

    fn seq(self) -> SeqStream<'a> {
        let ind = match self.at {
            At::Top => 0,
            At::AfterKey(ind) | At::Item(ind) => ind,
        };
        SeqStream {
            out: self.out,
            at: self.at,
            ind,
            n: 0,
        }
    }
}

struct MapStream<'a> {
    out: &'a mut String,
    at: At,
    /// Indentation of this map's keys.
    ind: usize,
    n: usize,
    /// Keys seen so far, for maps (struct fields are distinct).
    keys: Option<std::collections::HashSet<String>>,
}

impl MapStream<'_> {
    /// Write `key:`; the value follows at `At::AfterKey(self.ind)`.
    fn key(&mut self, k: &str) {
        start_entry(self.out, self.at, self.ind, self.n);
        self.n += 1;
        key(self.out, k);
        self.out.push(':');
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        v.serialize(Stream {
            out: self.out,
            at: At::AfterKey(self.ind),
        })
    }

    fn finish(self) -> Result<(), SerError> {
        finish_collection(self.out, self.at, self.n, "{}")
    }
}

/// Before entry `n` of a map or sequence whose entries sit at indentation `ind`: the first
/// entry after `key:` starts on the next line; the first at the top or after `- ` stays on the
/// current one; later entries are indented.
fn start_entry(out: &mut String, at: At, ind: usize, n: usize) {
    if n == 0 {
        if let At::AfterKey(_) = at {
            out.push('\n');
            indent(out, ind);
        }
    } else {
        indent(out, ind);
    }
}

/// The end of a map or sequence: one that had no entries is written as `empty` (`{}`, `[]`).
fn finish_collection(out: &mut String, at: At, n: usize, empty: &str) -> Result<(), SerError> {
    if n == 0 {
        Stream { out, at }.scalar(|out, _| out.push_str(empty))?;
    }
    Ok(())
}

struct SeqStream<'a> {
    out: &'a mut String,
    at: At,
    /// Indentation of this sequence's `- `.
    ind: usize,
    n: usize,
}

impl SeqStream<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        start_entry(self.out, self.at, self.ind, self.n);
        self.n += 1;
        self.out.push_str("- ");
        v.serialize(Stream {
            out: self.out,
            at: At::Item(self.ind + 2),
        })
    }

    fn finish(self) -> Result<(), SerError> {
        finish_collection(self.out, self.at, self.n, "[]")
    }
}

impl<'a> serde::Serializer for Stream<'a> {
    type Ok = ();
    type Error = SerError;
    type SerializeSeq = SeqStream<'a>;
    type SerializeTuple = SeqStream<'a>;
    type SerializeTupleStruct = SeqStream<'a>;
    type SerializeTupleVariant = SeqStream<'a>;
    type SerializeMap = MapStream<'a>;
    type SerializeStruct = MapStream<'a>;
    type SerializeStructVariant = MapStream<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), SerError> {
        self.scalar(|out, _| out.push_str(if v { "true" } else { "false" }))
    }
    fn serialize_i8(self, v: i8) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_i16(self, v: i16) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_i32(self, v: i32) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_i64(self, v: i64) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_u16(self, v: u16) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_u32(self, v: u32) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_u64(self, v: u64) -> Result<(), SerError> {
        self.num(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), SerError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<(), SerError> {
        match Number::from_f64(v) {
            Some(n) => self.num(n),
            None => self.serialize_unit(),
        }
    }
    fn serialize_char(self, v: char) -> Result<(), SerError> {
        self.str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), SerError> {
        self.str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), SerError> {
        let mut seq = self.seq();
        for b in v {
            seq.item(b)?;
        }
        seq.finish()
    }
    fn serialize_none(self) -> Result<(), SerError> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), SerError> {
        self.scalar(|out, _| out.push_str("null"))
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), SerError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), SerError> {
        self.str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        let mut map = self.map(false);
        map.key(variant);
        map.value(v)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqStream<'a>, SerError> {
        Ok(self.seq())
    }
    fn serialize_tuple(self, _: usize) -> Result<SeqStream<'a>, SerError> {
        Ok(self.seq())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqStream<'a>, SerError> {
        Ok(self.seq())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<SeqStream<'a>, SerError> {
        let mut map = self.map(false);
        map.key(variant);
        let at = At::AfterKey(map.ind);
        Ok(Stream { out: map.out, at }.seq())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapStream<'a>, SerError> {
        Ok(self.map(true))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapStream<'a>, SerError> {
        Ok(self.map(false))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<MapStream<'a>, SerError> {
        let mut map = self.map(false);
        map.key(variant);
        let at = At::AfterKey(map.ind);
        Ok(Stream { out: map.out, at }.map(false))
    }
}

impl serde::ser::SerializeSeq for SeqStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.item(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeTuple for SeqStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.item(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleStruct for SeqStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.item(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleVariant for SeqStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.item(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeMap for MapStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), SerError> {
        let k = key_text(k)?;
        if let Some(keys) = &mut self.keys
            && keys.contains(&k)
        {
            return Err(SerError(format!("duplicate map key {k:?}")));
        }
        self.key(&k);
        if let Some(keys) = &mut self.keys {
            keys.insert(k);
        }
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.value(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeStruct for MapStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        self.key(k);
        self.value(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

impl serde::ser::SerializeStructVariant for MapStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        self.key(k);
        self.value(v)
    }
    fn end(self) -> Result<(), SerError> {
        self.finish()
    }
}

#[cfg(test)]
mod tree;

#[cfg(test)]
mod tests {
    use super::tree::{Node, NodeSer, write};
    use super::*;
    use serde_json::{Value, json};

    fn round_trip(v: &Value) {
        let text = to_string(v).unwrap_or_default();
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
            let text = to_string(&json!({ "k": s })).unwrap_or_default();
            assert!(
                text.starts_with("k: '") || text.starts_with("k: \""),
                "{s:?} → {text}"
            );
            round_trip(&json!({ "k": s }));
        }
        assert_eq!(
            to_string(&json!({"k": "plain-value"})).ok().as_deref(),
            Some("k: plain-value\n")
        );
    }

    /// The light tree holds what `serde_json::to_value` would: same keys, order and scalars.
    #[test]
    fn node_tree_matches_serde_json_value() {
        fn to_json(n: &Node) -> Value {
            match n {
                Node::Null => Value::Null,
                Node::Bool(b) => Value::Bool(*b),
                Node::Number(x) => Value::Number(x.clone()),
                Node::String(s) => Value::String(s.clone()),
                Node::Array(a) => Value::Array(a.iter().map(to_json).collect()),
                Node::Object(m) => {
                    Value::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
                }
            }
        }
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tup(u8, String),
            Rec { a: Option<i64>, b: f64 },
        }
        #[derive(Serialize)]
        struct S {
            e: Vec<E>,
            m: std::collections::BTreeMap<u16, bool>,
            c: char,
            n: Option<()>,
            f: f32,
            nan: f64,
        }
        let s = S {
            e: vec![
                E::Unit,
                E::New(1),
                E::Tup(2, "x".into()),
                E::Rec { a: None, b: 1.5 },
            ],
            m: [(3, true), (1, false)].into(),
            c: 'c',
            n: None,
            f: 0.25,
            nan: f64::NAN,
        };
        let node = s.serialize(NodeSer).unwrap_or(Node::Null);
        assert_eq!(to_json(&node), serde_json::to_value(&s).unwrap_or_default());
        let v = json!({"b": 1, "a": [true, null, "s", {"x": {}}], "c": -2.5});
        let node = v.serialize(NodeSer).unwrap_or(Node::Null);
        assert_eq!(to_json(&node), v);
        assert_eq!(
            to_string(&v).unwrap_or_default(),
            "b: 1\na:\n- true\n- null\n- s\n- x: {}\nc: -2.5\n"
        );
    }

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

    /// The stream writes exactly what the tree writer writes: every shape the data model has,
    /// nested in every position (top, after a key, as a list item), plus generated values.
    #[test]
    fn stream_matches_tree() {
        fn both<T: Serialize>(v: &T) {
            let tree = write(&v.serialize(NodeSer).unwrap_or(Node::Null));
            let mut out = String::new();
            let r = v.serialize(Stream {
                out: &mut out,
                at: At::Top,
            });
            assert!(r.is_ok(), "{tree}");
            assert_eq!(out, tree);
        }
        #[derive(Serialize)]
        enum E {
            Unit,
            New(u8),
            Tup(u8, String),
            Rec { a: Option<i64>, b: f64 },
            Empty {},
            NoTup(),
        }
        #[derive(Serialize)]
        struct S {
            e: Vec<E>,
            m: std::collections::BTreeMap<u16, bool>,
            c: char,
            n: Option<()>,
            f: f32,
            nan: f64,
            #[serde(with = "serde_bytes_like")]
            b: Vec<u8>,
            t: (u8, &'static str),
            u: (),
            lit: &'static str,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let s = S {
            e: vec![
                E::Unit,
                E::New(1),
                E::Tup(2, "x".into()),
                E::Rec { a: None, b: 1.5 },
                E::Empty {},
                E::NoTup(),
            ],
            m: [(3, true), (1, false)].into(),
            c: 'c',
            n: None,
            f: 0.25,
            nan: f64::NAN,
            b: vec![1, 2],
            t: (7, "on"),
            u: (),
            lit: " a\nb\n\n",
        };
        both(&s);
        both(&vec![s]);
        both(&E::Tup(1, "y".into()));
        both(&E::Rec { a: Some(1), b: 2.0 });
        both(&E::NoTup());
        // Generated values: a small deterministic generator over JSON shapes.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        fn gen_value(next: &mut impl FnMut() -> u64, depth: u32) -> Value {
            let words = ["a", "on", "x\ny", "", " s", "k: v", "0755", "ünï", "t\n\n"];
            match next() % if depth > 3 { 4 } else { 7 } {
                0 => Value::Null,
                1 => Value::Bool(next() % 2 == 0),
                2 => json!(next() % 1000),
                3 => json!(words[(next() % words.len() as u64) as usize]),
                4 => json!(-1.5),
                5 => Value::Array(
                    (0..next() % 4)
                        .map(|_| gen_value(next, depth + 1))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next() % 4)
                        .map(|i| {
                            let k = format!("{}{i}", words[(next() % words.len() as u64) as usize]);
                            (k, gen_value(next, depth + 1))
                        })
                        .collect(),
                ),
            }
        }
        for _ in 0..3000 {
            both(&gen_value(&mut next, 0));
        }
    }

    /// A map that serializes a key twice is an error (serde_json's map would keep one value
    /// silently); struct fields are not checked (they are distinct).
    #[test]
    fn duplicate_map_keys_are_an_error() {
        struct Dup;
        impl Serialize for Dup {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("a", &1)?;
                m.serialize_entry("b", &2)?;
                m.serialize_entry("a", &3)?;
                m.end()
            }
        }
        let e = to_string(&Dup).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("duplicate map key \"a\""));
        // Nested as well.
        assert!(to_string(&vec![Dup]).is_err());
    }

    #[test]
    fn layout_matches_kubectl() {
        let v = json!({"a": {"b": [1, {"c": "d", "e": []}], "f": {}}, "g": "x\ny\n", "h": "x\ny"});
        assert_eq!(
            to_string(&v).unwrap_or_default(),
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
