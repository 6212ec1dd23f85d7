//! The tree writer the stream is tested against (test-only oracle): serialize into a [`Node`]
//! (serde_json's data model, following `serde_json::value::Serializer` case by case), then
//! write it in kubectl's layout with the same scalar rules. Not an engine: the stream is.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Number;

use crate::Strings;
use crate::scalar::indent;
use crate::stream::{SerError, key_text};

fn key(out: &mut String, k: &str) {
    crate::scalar::key(out, k, Strings::Manifest);
}

fn string(out: &mut String, s: &str, ind: usize) {
    crate::scalar::string(out, s, ind, 2, Strings::Manifest);
}

/// A serialized value: serde_json's data model, with borrowed struct keys.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(Cow<'static, str>, Node)>),
}

/// Write a serialized value as YAML.
pub(crate) fn write(v: &Node) -> String {
    let mut out = String::with_capacity(4096);
    match v {
        Node::Object(m) if !m.is_empty() => map(&mut out, m, 0),
        Node::Array(a) if !a.is_empty() => seq(&mut out, a, 0),
        other => {
            scalar(&mut out, other, 0);
            out.push('\n');
        }
    }
    out
}

fn map(out: &mut String, m: &[(Cow<'static, str>, Node)], ind: usize) {
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
fn value_after_key(out: &mut String, v: &Node, ind: usize) {
    match v {
        Node::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, ind + 2);
            map(out, m, ind + 2);
        }
        Node::Array(a) if !a.is_empty() => {
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

fn seq(out: &mut String, a: &[Node], ind: usize) {
    for (i, v) in a.iter().enumerate() {
        if i > 0 {
            indent(out, ind);
        }
        out.push_str("- ");
        match v {
            Node::Object(m) if !m.is_empty() => map(out, m, ind + 2),
            Node::Array(inner) if !inner.is_empty() => seq(out, inner, ind + 2),
            other => {
                scalar(out, other, ind + 2);
                out.push('\n');
            }
        }
    }
}

fn scalar(out: &mut String, v: &Node, ind: usize) {
    match v {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{n}");
        }
        Node::String(s) => string(out, s, ind),
        Node::Object(_) => out.push_str("{}"),
        Node::Array(_) => out.push_str("[]"),
    }
}

/// Serializes into a [`Node`], following `serde_json::value::Serializer` case by case.
pub(crate) struct NodeSer;

fn num(n: impl Into<Number>) -> Result<Node, SerError> {
    Ok(Node::Number(n.into()))
}

impl serde::Serializer for NodeSer {
    type Ok = Node;
    type Error = SerError;
    type SerializeSeq = SeqSer;
    type SerializeTuple = SeqSer;
    type SerializeTupleStruct = SeqSer;
    type SerializeTupleVariant = VariantSer<SeqSer>;
    type SerializeMap = MapSer;
    type SerializeStruct = MapSer;
    type SerializeStructVariant = VariantSer<MapSer>;

    fn serialize_bool(self, v: bool) -> Result<Node, SerError> {
        Ok(Node::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_i16(self, v: i16) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_i32(self, v: i32) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_i64(self, v: i64) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_u16(self, v: u16) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_u32(self, v: u32) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_u64(self, v: u64) -> Result<Node, SerError> {
        num(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Node, SerError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Node, SerError> {
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }
    fn serialize_char(self, v: char) -> Result<Node, SerError> {
        Ok(Node::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Node, SerError> {
        Ok(Node::String(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Node, SerError> {
        Ok(Node::Array(
            v.iter().map(|b| Node::Number((*b).into())).collect(),
        ))
    }
    fn serialize_none(self) -> Result<Node, SerError> {
        Ok(Node::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<Node, SerError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Node, SerError> {
        Ok(Node::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Node, SerError> {
        Ok(Node::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Node, SerError> {
        Ok(Node::String(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<Node, SerError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Node, SerError> {
        Ok(Node::Object(vec![(
            Cow::Borrowed(variant),
            v.serialize(self)?,
        )]))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer, SerError> {
        Ok(SeqSer(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSer, SerError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqSer, SerError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSer<SeqSer>, SerError> {
        Ok(VariantSer(variant, SeqSer(Vec::with_capacity(len))))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapSer, SerError> {
        Ok(MapSer(Vec::with_capacity(len.unwrap_or(0)), None))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<MapSer, SerError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSer<MapSer>, SerError> {
        Ok(VariantSer(variant, MapSer(Vec::with_capacity(len), None)))
    }
}

pub(crate) struct SeqSer(Vec<Node>);

impl serde::ser::SerializeSeq for SeqSer {
    type Ok = Node;
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        self.0.push(v.serialize(NodeSer)?);
        Ok(())
    }
    fn end(self) -> Result<Node, SerError> {
        Ok(Node::Array(self.0))
    }
}

impl serde::ser::SerializeTuple for SeqSer {
    type Ok = Node;
    type Error = SerError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        serde::ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Node, SerError> {
        serde::ser::SerializeSeq::end(self)
    }
}

impl serde::ser::SerializeTupleStruct for SeqSer {
    type Ok = Node;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        serde::ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<Node, SerError> {
        serde::ser::SerializeSeq::end(self)
    }
}

/// Map entries, and the key waiting for its value. A key serialized twice keeps its first
/// position and takes the last value (as serde_json's ordered map does).
pub(crate) struct MapSer(Vec<(Cow<'static, str>, Node)>, Option<String>);

impl MapSer {
    fn put(&mut self, k: Cow<'static, str>, v: Node) {
        match self.0.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => self.0.push((k, v)),
        }
    }
}

impl serde::ser::SerializeMap for MapSer {
    type Ok = Node;
    type Error = SerError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), SerError> {
        self.1 = Some(key_text(k)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        let k = self
            .1
            .take()
            .ok_or_else(|| SerError("value without a key".into()))?;
        let v = v.serialize(NodeSer)?;
        self.put(Cow::Owned(k), v);
        Ok(())
    }
    fn end(self) -> Result<Node, SerError> {
        Ok(Node::Object(self.0))
    }
}

impl serde::ser::SerializeStruct for MapSer {
    type Ok = Node;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        let v = v.serialize(NodeSer)?;
        // Struct fields are distinct: no duplicate check needed.
        self.0.push((Cow::Borrowed(k), v));
        Ok(())
    }
    fn end(self) -> Result<Node, SerError> {
        Ok(Node::Object(self.0))
    }
}

/// An enum variant with content: `{variant: content}`.
pub(crate) struct VariantSer<S>(&'static str, S);

impl serde::ser::SerializeTupleVariant for VariantSer<SeqSer> {
    type Ok = Node;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), SerError> {
        serde::ser::SerializeSeq::serialize_element(&mut self.1, v)
    }
    fn end(self) -> Result<Node, SerError> {
        Ok(Node::Object(vec![(
            Cow::Borrowed(self.0),
            Node::Array(self.1.0),
        )]))
    }
}

impl serde::ser::SerializeStructVariant for VariantSer<MapSer> {
    type Ok = Node;
    type Error = SerError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        k: &'static str,
        v: &T,
    ) -> Result<(), SerError> {
        serde::ser::SerializeStruct::serialize_field(&mut self.1, k, v)
    }
    fn end(self) -> Result<Node, SerError> {
        Ok(Node::Object(vec![(
            Cow::Borrowed(self.0),
            Node::Object(self.1.0),
        )]))
    }
}
