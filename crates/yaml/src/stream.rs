//! The stream: a serde `Serializer` that is the YAML emitter, deciding the layout event by
//! event.

use serde::Serialize;
use serde_json::Number;

use crate::scalar::{indent, key, string, styled};
use crate::{Layout, Strings, Style};

pub(crate) fn to_string<T: Serialize + ?Sized>(v: &T, layout: Layout) -> Result<String, SerError> {
    let mut out = String::with_capacity(4096);
    v.serialize(Stream::top(&mut out, layout))?;
    Ok(out)
}

/// A map key as serde_json accepts it: strings, and numbers, bools and chars as text.
pub(crate) fn key_text<T: Serialize + ?Sized>(k: &T) -> Result<String, SerError> {
    match serde_json::to_value(k) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(serde_json::Value::Number(n)) => Ok(n.to_string()),
        Ok(serde_json::Value::Bool(b)) => Ok(b.to_string()),
        _ => Err(SerError("key must be a string".into())),
    }
}

/// Why a value could not be serialized.
#[derive(Debug)]
pub struct SerError(pub(crate) String);

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
    /// Right after `key:`, the key at this column.
    AfterKey(usize),
    /// Right after `- `; the item's content is at this column.
    Item(usize),
}

/// Writes a value as it is serialized, the layout decided event by event. An empty map or
/// sequence is only known at its end, so nothing of a collection is written before its first
/// entry (or its `{}` / `[]` at the end).
struct Stream<'a> {
    out: &'a mut String,
    at: At,
    layout: Layout,
    /// The style a [`crate::Styled`] string asked for.
    style: Option<Style>,
}

impl<'a> Stream<'a> {
    fn top(out: &'a mut String, layout: Layout) -> Self {
        Self::at(out, At::Top, layout)
    }

    fn at(out: &'a mut String, at: At, layout: Layout) -> Self {
        Stream {
            out,
            at,
            layout,
            style: None,
        }
    }

    /// A scalar: `f` writes it, given the column of a literal block's lines and its
    /// indentation indicator (the lines' indentation relative to the node that holds them).
    fn scalar(self, f: impl FnOnce(&mut String, usize, usize)) -> Result<(), SerError> {
        match self.at {
            At::Top => f(self.out, 0, 2),
            At::AfterKey(c) => {
                self.out.push(' ');
                let ind = self.layout.deeper(c);
                f(self.out, ind, ind - c);
            }
            At::Item(ind) => f(self.out, ind, 2),
        }
        self.out.push('\n');
        Ok(())
    }

    fn str(self, s: &str) -> Result<(), SerError> {
        let strings = self.layout.strings;
        match self.style {
            None => self.scalar(|out, ind, step| string(out, s, ind, step, strings)),
            Some(style) => {
                self.scalar(|out, ind, step| styled(out, s, style, (ind, step), strings))
            }
        }
    }

    fn num(self, n: impl Into<Number>) -> Result<(), SerError> {
        let n: Number = n.into();
        self.scalar(|out, _, _| {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        })
    }

    /// A float: serde_json's number (a non-finite one `null`), or in go-yaml's layout as
    /// serde_yaml_ng writes it (`1e20`, `.nan`, `.inf`, `-.inf`).
    fn float(self, v: f64) -> Result<(), SerError> {
        match self.layout.strings {
            Strings::Manifest => match Number::from_f64(v) {
                Some(n) => self.num(n),
                None => self.scalar(|out, _, _| out.push_str("null")),
            },
            Strings::GoYaml => self.scalar(|out, _, _| {
                use std::fmt::Write as _;
                let _ = write!(out, "{}", serde_yaml_ng::Number::from(v));
            }),
        }
    }

    fn map(self, check_keys: bool) -> MapStream<'a> {
        let ind = match self.at {
            At::Top => 0,
            At::AfterKey(c) => self.layout.deeper(c),
            At::Item(ind) => ind,
        };
        MapStream {
            out: self.out,
            at: self.at,
            layout: self.layout,
            ind,
            n: 0,
            keys: check_keys.then(Keys::default),
        }
    }

    fn seq(self) -> SeqStream<'a> {
        let ind = match self.at {
            At::Top => 0,
            At::AfterKey(c) if self.layout.indent_sequences => self.layout.deeper(c),
            At::AfterKey(ind) | At::Item(ind) => ind,
        };
        SeqStream {
            out: self.out,
            at: self.at,
            layout: self.layout,
            ind,
            n: 0,
        }
    }
}

struct MapStream<'a> {
    out: &'a mut String,
    at: At,
    layout: Layout,
    /// Column of this map's keys.
    ind: usize,
    n: usize,
    /// Keys seen so far, for maps (struct fields are distinct).
    keys: Option<Keys>,
}

/// The keys of one map seen so far: a list while short (most maps are: labels, a ConfigMap's
/// files), a hash set past [`Keys::SHORT`] entries, so a long map stays linear. Hashing every
/// key of every small map was ~15 % of the YAML stream's time in a 1,000-cluster build.
#[derive(Default)]
struct Keys {
    short: Vec<String>,
    long: std::collections::HashSet<String>,
}

impl Keys {
    const SHORT: usize = 16;

    fn contains(&self, k: &str) -> bool {
        self.short.iter().any(|s| s == k) || self.long.contains(k)
    }

    fn insert(&mut self, k: String) {
        if self.short.len() < Keys::SHORT {
            self.short.push(k);
        } else {
            self.long.insert(k);
        }
    }
}

impl MapStream<'_> {
    /// Write `key:`; the value follows at `At::AfterKey(self.ind)`.
    fn key(&mut self, k: &str) {
        start_entry(self.out, self.at, self.ind, self.n);
        self.n += 1;
        key(self.out, k, self.layout.strings);
        self.out.push(':');
    }

    fn value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        v.serialize(Stream::at(self.out, At::AfterKey(self.ind), self.layout))
    }

    fn finish(self) -> Result<(), SerError> {
        finish_collection(Stream::at(self.out, self.at, self.layout), self.n, "{}")
    }
}

/// Before entry `n` of a map or sequence whose entries sit at column `ind`: the first entry
/// after `key:` starts on the next line; the first at the top or after `- ` stays on the
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
fn finish_collection(stream: Stream<'_>, n: usize, empty: &str) -> Result<(), SerError> {
    if n == 0 {
        stream.scalar(|out, _, _| out.push_str(empty))?;
    }
    Ok(())
}

struct SeqStream<'a> {
    out: &'a mut String,
    at: At,
    layout: Layout,
    /// Column of this sequence's `- `.
    ind: usize,
    n: usize,
}

impl SeqStream<'_> {
    fn item<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        start_entry(self.out, self.at, self.ind, self.n);
        self.n += 1;
        self.out.push_str("- ");
        v.serialize(Stream::at(self.out, At::Item(self.ind + 2), self.layout))
    }

    fn finish(self) -> Result<(), SerError> {
        finish_collection(Stream::at(self.out, self.at, self.layout), self.n, "[]")
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
        self.scalar(|out, _, _| out.push_str(if v { "true" } else { "false" }))
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
        self.float(v)
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
        self.scalar(|out, _, _| out.push_str("null"))
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
        name: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        match Style::from_name(name) {
            Some(style) => v.serialize(Stream {
                style: Some(style),
                ..self
            }),
            None => v.serialize(self),
        }
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
        Ok(Stream::at(map.out, at, map.layout).seq())
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
        Ok(Stream::at(map.out, at, map.layout).map(false))
    }
}

/// The sequence-like serde traits: each element is an item.
macro_rules! seq_traits {
    ($($tr:ident :: $method:ident),*) => {$(
        impl serde::ser::$tr for SeqStream<'_> {
            type Ok = ();
            type Error = SerError;
            fn $method<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
                self.item(v)
            }
            fn end(self) -> Result<(), SerError> {
                self.finish()
            }
        }
    )*};
}

seq_traits!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl serde::ser::SerializeMap for MapStream<'_> {
    type Ok = ();
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), SerError> {
        let k = key_text(k)?;
        if let Some(keys) = &self.keys
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

/// The struct-like serde traits: each field is a key (struct fields are distinct, so not
/// checked) and its value.
macro_rules! struct_traits {
    ($($tr:ident),*) => {$(
        impl serde::ser::$tr for MapStream<'_> {
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
    )*};
}

struct_traits!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, NodeSer, write};
    use serde_json::{Value, json};

    fn to_string<T: Serialize + ?Sized>(v: &T) -> Result<String, SerError> {
        super::to_string(v, Layout::KUBECTL)
    }

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

    /// The stream writes exactly what the tree writer writes: every shape the data model has,
    /// nested in every position (top, after a key, as a list item), plus generated values.
    #[test]
    fn stream_matches_tree() {
        fn both<T: Serialize>(v: &T) {
            let tree = write(&v.serialize(NodeSer).unwrap_or(Node::Null));
            let mut out = String::new();
            let r = v.serialize(Stream::top(&mut out, Layout::KUBECTL));
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
        // Generated values: the suites' seeded generator over JSON shapes.
        let mut rng = tsk8s_test_support::Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next_u64();
        fn gen_value(next: &mut impl FnMut() -> u64, depth: u32) -> Value {
            let words = ["a", "on", "x\ny", "", " s", "k: v", "0755", "ünï", "t\n\n"];
            match next() % if depth > 3 { 4 } else { 7 } {
                0 => Value::Null,
                1 => Value::Bool(next().is_multiple_of(2)),
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
        // Past the short list too, whichever side of it the first one is on.
        for (first, again) in [(3, 30), (20, 35)] {
            let mut m: Vec<(String, u8)> = (0..40).map(|i| (format!("k{i}"), 0)).collect();
            m[again].0 = m[first].0.clone();
            let e = to_string(&Entries(m)).err().map(|e| e.to_string());
            assert_eq!(e, Some(format!("duplicate map key \"k{first}\"")));
        }
        let distinct: Vec<(String, u8)> = (0..40).map(|i| (format!("k{i}"), 0)).collect();
        assert!(to_string(&Entries(distinct)).is_ok());
    }

    /// A map written entry by entry, as given (duplicates too).
    struct Entries(Vec<(String, u8)>);

    impl Serialize for Entries {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap;
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
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

    /// go-yaml's layout: indent 4 by the next-multiple rule, sequences indented under their
    /// key, double quotes; styles asked for with `Styled`, which other serializers see as
    /// plain strings.
    #[test]
    fn sops_layout_and_styles() {
        use crate::{Style, Styled};
        #[derive(Serialize)]
        struct Item<'a> {
            k: &'a str,
            enc: Styled<'a>,
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            m: Value,
            l: Vec<Item<'a>>,
            v: Styled<'a>,
            q: Styled<'a>,
            r: Styled<'a>,
        }
        let doc = Doc {
            m: json!({"x": "on", "y": {}, "z": {"n": f64::NAN, "s": "a\u{7f}"}}),
            l: vec![Item {
                k: "a",
                enc: Styled(Style::Literal, "line1\nline2\n"),
            }],
            v: Styled(Style::Plain, "3.11.0"),
            q: Styled(Style::DoubleQuoted, "x"),
            r: Styled(Style::SingleQuoted, "^(a|b)$ #"),
        };
        assert_eq!(
            super::to_string(&doc, Layout::SOPS).ok().as_deref(),
            Some(
                "m:\n    x: \"on\"\n    \"y\": {}\n    z:\n        \"n\": null\n        s: \"a\\x7F\"\nl:\n    - k: a\n      enc: |\n        line1\n        line2\nv: 3.11.0\nq: \"x\"\nr: '^(a|b)$ #'\n"
            )
        );
        assert_eq!(
            serde_json::to_string(&Styled(Style::Plain, "3.11.0"))
                .ok()
                .as_deref(),
            Some("\"3.11.0\"")
        );
    }
}
