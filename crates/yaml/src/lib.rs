//! tsk8s's one YAML writer: a serde `Serializer` that writes a value as it is serialized (no
//! intermediate tree), in one of two layouts:
//!
//! - [`Layout::KUBECTL`], the compiler's manifests: kubectl's layout (indent 2, list items at
//!   their key's indentation), multi-line strings as literal blocks, and conservative quoting —
//!   any string a YAML 1.1 or 1.2 reader could take for something else (`on`, `yes`, `no`, `y`,
//!   `off`, `null`, `~`, numbers in any base (`0755`, `0x1F`, `1_000`, `1:20`), `.inf`,
//!   timestamps, text with YAML indicators) is quoted, single quotes preferred;
//! - [`Layout::SOPS`], `tsk8s-sops`'s encrypted Secrets: byte for byte what the sops CLI 3.11
//!   (go-yaml v3, indent 4) writes — list items indented under their key, go-yaml's choice of
//!   plain or double-quoted scalars and its escapes (`\x7F`); the sops metadata's own fields
//!   ask for their style with [`Styled`].
//!
//! The layouts differ because each is compared with a different reader's expectations (the
//! manifests' reviewers and kubectl; the sops CLI's own output); what a YAML reader takes a
//! plain word for, how a line is indented and how a literal block is written are the same
//! code. Map keys keep the order they are serialized in (struct field order, as serde_json's
//! `preserve_order` would). The output is what `serde_json::to_value` + writing would produce,
//! except that a map with a key serialized twice is an error (serde_json keeps one value
//! silently). The tests check the stream against a tree writer kept as their oracle
//! (`tree.rs`, test-only).

mod scalar;
mod stream;
#[cfg(test)]
mod tree;

use serde::Serialize;

pub use stream::SerError;

/// How a document is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// A map or literal block under a key at column `c` starts at the next multiple of
    /// `indent` after `c` (go-yaml's rule; with kubectl's 2 every column is even, so `c + 2`).
    indent: usize,
    /// A sequence under a key: its `- ` indented as a map would be (go-yaml), or at the key's
    /// own column (kubectl).
    indent_sequences: bool,
    /// Which strings are plain and how the others are quoted.
    strings: Strings,
}

/// A layout's rule for strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strings {
    /// Plain unless a YAML 1.1 or 1.2 reader could take it for something else; single quotes,
    /// or double quotes with `\uxxxx` escapes when it holds a control character; a multi-line
    /// string as a literal block. Non-finite floats are `null` (as serde_json has them).
    Manifest,
    /// go-yaml v3's: plain or double-quoted with go-yaml's escapes, multi-line strings
    /// double-quoted; non-finite floats `.nan`, `.inf`, `-.inf`.
    GoYaml,
}

impl Layout {
    /// The compiler's manifests.
    pub const KUBECTL: Layout = Layout {
        indent: 2,
        indent_sequences: false,
        strings: Strings::Manifest,
    };

    /// What the sops CLI 3.11 writes (go-yaml v3 with indent 4).
    pub const SOPS: Layout = Layout {
        indent: 4,
        indent_sequences: true,
        strings: Strings::GoYaml,
    };

    /// The column of a block nested under a key at column `c`.
    fn deeper(self, c: usize) -> usize {
        self.indent * (c / self.indent + 1)
    }
}

/// Serialize `v` and write it as YAML in `layout`, as it is serialized (no intermediate tree).
/// An error when `v` cannot be represented: a map with a non-scalar key or a key serialized
/// twice (serde_json's map would silently keep one value), or a failing `Serialize` impl.
pub fn to_string<T: Serialize + ?Sized>(v: &T, layout: Layout) -> Result<String, SerError> {
    stream::to_string(v, layout)
}

/// How one string asks to be written, whatever its layout's rule would choose; where the style
/// cannot hold the string, the layout's rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A literal block (`|`).
    Literal,
    /// Double quotes, in the layout's escapes.
    DoubleQuoted,
    /// Plain, when a YAML reader reads it back as this string (a version `3.11.0`).
    Plain,
    /// Plain when the layout's rule allows it, else single quotes (readable for regular
    /// expressions: no backslash escaping).
    SingleQuoted,
}

impl Style {
    const ALL: [Style; 4] = [
        Style::Literal,
        Style::DoubleQuoted,
        Style::Plain,
        Style::SingleQuoted,
    ];

    /// The newtype-struct name [`Styled`] serializes under; a serializer that is not this
    /// crate's sees a plain string.
    fn name(self) -> &'static str {
        match self {
            Style::Literal => "\0tsk8s-yaml:literal",
            Style::DoubleQuoted => "\0tsk8s-yaml:double-quoted",
            Style::Plain => "\0tsk8s-yaml:plain",
            Style::SingleQuoted => "\0tsk8s-yaml:single-quoted",
        }
    }

    fn from_name(name: &str) -> Option<Style> {
        if !name.starts_with('\0') {
            return None;
        }
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A string written in the given [`Style`].
#[derive(Clone, Copy, Debug)]
pub struct Styled<'a>(pub Style, pub &'a str);

impl Serialize for Styled<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct(self.0.name(), self.1)
    }
}
