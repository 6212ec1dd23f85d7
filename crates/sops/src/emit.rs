//! What an encrypted file and `.sops.yaml` hold, in the order `sops` 3.11 writes them, for
//! tsk8s's one YAML writer (`tsk8s_yaml`) to write in [`Layout::SOPS`]: go-yaml v3's layout
//! (indent 4, sequences indented under their key, go-yaml's plain or double-quoted scalars and
//! escapes), byte for byte what `sops --encrypt` writes. The `sops:` block's own fields ask for
//! the style sops gives them ([`Styled`]): `enc` armor as a literal block, `lastmodified`
//! double-quoted, `version` plain.

use serde::ser::{Serialize, SerializeMap as _, Serializer};
use serde_yaml_ng::Mapping;
use tsk8s_yaml::{Layout, Style, Styled};

use crate::SopsError;
use crate::metadata::AgeKey;

/// An encrypted document: its entries (string keys; string, number, boolean, null or mapping
/// values, as `writable` checked), then the `sops:` block.
pub(crate) struct EncryptedFile<'a> {
    pub doc: &'a Mapping,
    pub sops: SopsBlock<'a>,
}

/// The `sops:` block in the key order `sops` 3.11 writes (struct field order of
/// `stores.Metadata`, empty fields omitted).
pub(crate) struct SopsBlock<'a> {
    pub age: &'a [AgeKey],
    pub lastmodified: &'a str,
    pub mac: &'a str,
    /// The rule's field name and value (`encrypted_regex`, `^(data|stringData)$`).
    pub rule: (&'static str, &'a str),
    pub mac_only_encrypted: bool,
    /// A constant of ours (e.g. 3.11.0); go-yaml writes it plain.
    pub version: &'a str,
}

impl EncryptedFile<'_> {
    pub(crate) fn to_yaml(&self) -> Result<String, SopsError> {
        tsk8s_yaml::to_string(self, Layout::SOPS)
            .map_err(|e| SopsError::Encrypt(format!("internal: cannot write the file: {e}")))
    }
}

impl Serialize for EncryptedFile<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.doc.len() + 1))?;
        for (k, v) in self.doc {
            m.serialize_entry(k, v)?;
        }
        m.serialize_entry(crate::METADATA_KEY, &self.sops)?;
        m.end()
    }
}

impl Serialize for SopsBlock<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("age", &AgeKeys(self.age))?;
        m.serialize_entry(
            "lastmodified",
            &Styled(Style::DoubleQuoted, self.lastmodified),
        )?;
        m.serialize_entry("mac", self.mac)?;
        m.serialize_entry(self.rule.0, self.rule.1)?;
        if self.mac_only_encrypted {
            m.serialize_entry("mac_only_encrypted", &true)?;
        }
        m.serialize_entry("version", &Styled(Style::Plain, self.version))?;
        m.end()
    }
}

struct AgeKeys<'a>(&'a [AgeKey]);

impl Serialize for AgeKeys<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|k| AgeEntry {
            recipient: &k.recipient,
            enc: Styled(Style::Literal, &k.enc),
        }))
    }
}

#[derive(serde::Serialize)]
struct AgeEntry<'a> {
    recipient: &'a str,
    enc: Styled<'a>,
}

/// `.sops.yaml`: one creation rule per `(path_regex, recipients)`.
#[derive(serde::Serialize)]
pub(crate) struct CreationRules<'a> {
    pub creation_rules: Vec<CreationRule<'a>>,
}

/// A creation rule, its values single-quoted where they are not plain (readable regular
/// expressions).
#[derive(serde::Serialize)]
pub(crate) struct CreationRule<'a> {
    #[serde(serialize_with = "single_quoted")]
    pub path_regex: &'a str,
    #[serde(serialize_with = "single_quoted")]
    pub encrypted_regex: &'a str,
    /// The recipients joined by `,`.
    #[serde(serialize_with = "single_quoted")]
    pub age: String,
}

fn single_quoted<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    Styled(Style::SingleQuoted, v).serialize(s)
}

impl CreationRules<'_> {
    pub(crate) fn to_yaml(&self) -> String {
        // A list of structs of strings: no map key a serializer could refuse.
        tsk8s_yaml::to_string(self, Layout::SOPS).expect("creation rules always serialize")
    }
}
