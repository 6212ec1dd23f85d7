//! SOPS file format (age + AES-256-GCM), written from the behaviour of
//! `getsops/sops` (`aes/cipher.go`, `sops.go`, `age/keysource.go`,
//! `stores/yaml`, `stores/json`, `stores/stores.go`).
//!
//! * A random 32-byte data key encrypts every selected value with
//!   AES-256-GCM, a fresh 32-byte IV, and the value's path (map keys joined
//!   with `:` plus a trailing `:`) as additional data, written as
//!   `ENC[AES256_GCM,data:…,iv:…,tag:…,type:str|int|float|bool|…]`.
//! * The data key is wrapped for each age recipient separately as an armored
//!   age file: `sops.age[] = {recipient, enc}`.
//! * The MAC is SHA-512 over all plaintext values in document order, as
//!   upper-case hex, encrypted with the data key and the RFC 3339
//!   `lastmodified` as additional data.
//!
//! `encrypt_secret` writes a Kubernetes `Secret` in the layout `sops` 3.11
//! produces with `encrypted_regex: ^(data|stringData)$`; `encrypt_yaml` any
//! document under any of sops' value rules. `decrypt` reads any SOPS YAML
//! file with age keys; `decrypt_json` any SOPS JSON file.
//! `plaintext_secret_values` finds a Secret's `data`/`stringData` values in
//! clear whatever the file's rule says.

mod cipher;
mod emit;
mod error;
mod metadata;
mod rfc3339;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::str::FromStr as _;

use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize as _;
use serde_yaml_ng::{Mapping, Value};
use zeroize::Zeroizing;

pub use error::SopsError;
pub use rfc3339::from_unix_seconds as rfc3339_from_unix_seconds;

/// `encrypted_regex` used for Kubernetes Secrets (the Flux / SOPS
/// convention): only `data` and `stringData` values are encrypted.
pub const K8S_ENCRYPTED_REGEX: &str = "^(data|stringData)$";

/// `sops.version` written into files produced here: the `sops` release whose
/// output layout (metadata key order, indentation) `encrypt_secret` follows.
pub const SOPS_FORMAT_VERSION: &str = "3.11.0";

const METADATA_KEY: &str = "sops";

/// Encrypt a Kubernetes `v1` `Secret` (type `Opaque`) for the given age
/// recipients. `data` values are base64-encoded into `data:` and then
/// encrypted; everything else stays plaintext. `lastmodified` (RFC 3339) is
/// written in Go's normal form (no fractional seconds, `Z` for UTC).
///
/// The data key and every IV come from the OS RNG, so the ciphertext differs
/// on every call: callers must copy an existing file rather than re-encrypt
/// when nothing changed.
pub fn encrypt_secret(
    name: &str,
    namespace: &str,
    data: &BTreeMap<String, Vec<u8>>,
    labels: &BTreeMap<String, String>,
    recipients: &[String],
    lastmodified: &str,
) -> Result<String, SopsError> {
    if name.is_empty() {
        return Err(SopsError::Input("Secret name is empty".into()));
    }
    if namespace.is_empty() {
        return Err(SopsError::Input("Secret namespace is empty".into()));
    }
    if data.keys().any(String::is_empty) {
        return Err(SopsError::Input("a data key is empty".into()));
    }
    let lastmodified = rfc3339::normalize(lastmodified).ok_or_else(|| {
        SopsError::Input(format!(
            "lastmodified `{lastmodified}` is not an RFC 3339 timestamp"
        ))
    })?;

    let mut meta = Mapping::new();
    meta.insert(s("name"), s(name));
    meta.insert(s("namespace"), s(namespace));
    if !labels.is_empty() {
        let mut l = Mapping::new();
        for (k, v) in labels {
            l.insert(s(k), s(v));
        }
        meta.insert(s("labels"), Value::Mapping(l));
    }
    let mut d = Mapping::new();
    for (k, v) in data {
        d.insert(
            s(k),
            s(&base64::engine::general_purpose::STANDARD.encode(v)),
        );
    }
    let mut doc = Mapping::new();
    doc.insert(s("apiVersion"), s("v1"));
    doc.insert(s("kind"), s("Secret"));
    doc.insert(s("metadata"), Value::Mapping(meta));
    doc.insert(s("type"), s("Opaque"));
    doc.insert(s("data"), Value::Mapping(d));
    let out = encrypt_yaml(
        &doc,
        &EncryptionRule::EncryptedRegex(K8S_ENCRYPTED_REGEX.to_string()),
        false,
        recipients,
        &lastmodified,
    )?;
    // Belt and braces: what we wrote must hold no `data`/`stringData` value
    // in clear, by the project's rule (not only by the file's own rule).
    if !matches!(plaintext_secret_values(&out), Ok(v) if v.is_empty()) {
        return Err(SopsError::Encrypt(
            "internal: output failed the encryption self-check".into(),
        ));
    }
    Ok(out)
}

/// Which values a SOPS file encrypts: the one rule `sops` keeps in the
/// metadata under the field of the same name (`encrypted_regex`, …). Without
/// any, `sops` leaves values under keys ending in `_unencrypted` in clear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncryptionRule {
    /// Encrypt values with a key on their path matching the regex.
    EncryptedRegex(String),
    /// Encrypt all but values with a key on their path matching the regex.
    UnencryptedRegex(String),
    /// Encrypt values with a key on their path ending in the suffix.
    EncryptedSuffix(String),
    /// Encrypt all but values with a key on their path ending in the suffix.
    UnencryptedSuffix(String),
}

impl EncryptionRule {
    /// The metadata field and its value.
    fn field(&self) -> (&'static str, &str) {
        match self {
            EncryptionRule::EncryptedRegex(r) => ("encrypted_regex", r),
            EncryptionRule::UnencryptedRegex(r) => ("unencrypted_regex", r),
            EncryptionRule::EncryptedSuffix(s) => ("encrypted_suffix", s),
            EncryptionRule::UnencryptedSuffix(s) => ("unencrypted_suffix", s),
        }
    }

    fn internal(&self) -> Result<metadata::Rule, SopsError> {
        let re = |r: &str| regex::Regex::new(r).map_err(|e| SopsError::Input(e.to_string()));
        Ok(match self {
            EncryptionRule::EncryptedRegex(r) => metadata::Rule::EncryptedRegex(re(r)?),
            EncryptionRule::UnencryptedRegex(r) => metadata::Rule::UnencryptedRegex(re(r)?),
            EncryptionRule::EncryptedSuffix(s) => metadata::Rule::EncryptedSuffix(s.clone()),
            EncryptionRule::UnencryptedSuffix(s) => metadata::Rule::UnencryptedSuffix(s.clone()),
        })
    }
}

/// Encrypt one YAML document (a mapping of string keys whose values are
/// strings, numbers, booleans, null or nested mappings) for the given age
/// recipients, in the layout `sops` 3.11 writes: the values `rule` selects
/// become `ENC[…]`, the others stay as they are, and the MAC covers all
/// values (only the encrypted ones with `mac_only_encrypted`, which is then
/// written to the metadata). [`encrypt_secret`] is this with
/// `encrypted_regex: ^(data|stringData)$`; other rules are what `sops`
/// users may pick (and what a reader must not trust to have encrypted a
/// Secret's values, see [`plaintext_secret_values`]).
pub fn encrypt_yaml(
    doc: &Mapping,
    rule: &EncryptionRule,
    mac_only_encrypted: bool,
    recipients: &[String],
    lastmodified: &str,
) -> Result<String, SopsError> {
    let lastmodified = rfc3339::normalize(lastmodified).ok_or_else(|| {
        SopsError::Input(format!(
            "lastmodified `{lastmodified}` is not an RFC 3339 timestamp"
        ))
    })?;
    if doc.contains_key(METADATA_KEY) {
        return Err(SopsError::Input(
            "the document already has a `sops` entry".into(),
        ));
    }
    if !writable(doc) {
        return Err(SopsError::Input(
            "only string keys and string, number, boolean, null or mapping values are written"
                .into(),
        ));
    }
    let parsed = parse_recipients(recipients)?;
    let mut docs = [Value::Mapping(doc.clone())];
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng
        .try_fill_bytes(key.as_mut())
        .map_err(|_| SopsError::Encrypt("OS random number generator failed".into()))?;
    let mut mac = tree::Mac::new(mac_only_encrypted);
    tree::encrypt_docs(&mut docs, &rule.internal()?, &key, &mut mac)?;
    let mac = cipher::seal(
        &key,
        mac.hex().as_bytes(),
        cipher::ValueType::Str,
        &lastmodified,
    )
    .map_err(SopsError::Encrypt)?;
    let mut age = Vec::with_capacity(parsed.len());
    for (text, r) in recipients.iter().zip(&parsed) {
        age.push(metadata::AgeKey {
            recipient: text.trim().to_string(),
            enc: wrap_data_key(r, key.as_ref())?,
        });
    }

    let [Value::Mapping(doc)] = &docs else {
        return Err(SopsError::Encrypt("internal: document shape".into()));
    };
    let out = emit::EncryptedFile {
        doc,
        sops: emit::SopsBlock {
            age: &age,
            lastmodified: &lastmodified,
            mac: &mac,
            rule: rule.field(),
            mac_only_encrypted,
            version: SOPS_FORMAT_VERSION,
        },
    }
    .to_yaml()?;
    // What we wrote must read back as a SOPS file whose selected values are
    // ciphertext.
    if !is_sops_encrypted(&out) {
        return Err(SopsError::Encrypt(
            "internal: output failed the encryption self-check".into(),
        ));
    }
    Ok(out)
}

/// Decrypt a single-document SOPS YAML file with the given age identities
/// (identity-file text: `AGE-SECRET-KEY-1…` lines, `#` comments and blank
/// lines allowed). The MAC is verified. The `sops` block is removed; map
/// order is kept. YAML comments are not kept.
pub fn decrypt(yaml: &str, identities: &str) -> Result<Value, SopsError> {
    let mut docs = decrypt_documents(yaml, identities)?;
    match docs.len() {
        1 => Ok(docs.pop().unwrap_or(Value::Null)),
        n => Err(SopsError::Document(format!(
            "expected one YAML document, found {n} (use decrypt_documents)"
        ))),
    }
}

/// Like [`decrypt`] for multi-document YAML: SOPS reads the metadata from the
/// first document and computes one MAC over all documents.
pub fn decrypt_documents(yaml: &str, identities: &str) -> Result<Vec<Value>, SopsError> {
    let ids = parse_identities(identities)?;
    let (mut docs, meta) = load_yaml(yaml)?;
    decrypt_tree(&mut docs, &meta, &ids)?;
    Ok(docs)
}

/// Decrypt a SOPS JSON file (also SOPS' "binary" store, which is JSON with a
/// single `data` key). Numbers are float64 as in `sops` ≤ 3.13.1; integral
/// ones are returned as JSON integers.
pub fn decrypt_json(json: &str, identities: &str) -> Result<serde_json::Value, SopsError> {
    let ids = parse_identities(identities)?;
    let parsed: serde_json::Value = serde_json::from_str(json).map_err(|e| SopsError::Parse {
        format: "JSON",
        msg: e.to_string(),
    })?;
    let Value::Mapping(mut doc) = json_to_tree(&parsed) else {
        return Err(SopsError::Document(
            "top level of a SOPS JSON file must be an object".into(),
        ));
    };
    let meta = take_metadata(&mut doc)?;
    let mut docs = [Value::Mapping(doc)];
    decrypt_tree(&mut docs, &meta, &ids)?;
    let [doc] = docs;
    tree_to_json(&doc)
}

/// Decrypt a SOPS-encrypted Kubernetes Secret and return its contents as
/// bytes: `data` values base64-decoded, merged with `stringData` values
/// (which win, as in the API server). MAC verified as in [`decrypt`].
pub fn decrypt_secret_data(
    yaml: &str,
    identities: &str,
) -> Result<BTreeMap<String, Vec<u8>>, SopsError> {
    let v = decrypt(yaml, identities)?;
    let mut out = BTreeMap::new();
    for (field, is_b64) in [("data", true), ("stringData", false)] {
        let Some(entries) = v.get(field).filter(|e| !e.is_null()) else {
            continue;
        };
        let Value::Mapping(m) = entries else {
            return Err(SopsError::Document(format!("`{field}` is not a mapping")));
        };
        for (k, val) in m {
            let (Value::String(k), Value::String(val)) = (k, val) else {
                return Err(SopsError::Document(format!(
                    "`{field}` must map strings to strings"
                )));
            };
            let bytes = if is_b64 {
                base64::engine::general_purpose::STANDARD
                    .decode(val)
                    .map_err(|_| SopsError::Value {
                        path: format!("{field}:{k}:"),
                        msg: "not valid base64".into(),
                    })?
            } else {
                val.as_bytes().to_vec()
            };
            out.insert(k.clone(), bytes);
        }
    }
    Ok(out)
}

/// The age recipients named in a SOPS file's metadata, in file order.
pub fn recipients_of(yaml: &str) -> Result<Vec<String>, SopsError> {
    let mut docs = parse_yaml_docs(yaml)?;
    let first = docs.first_mut().ok_or(SopsError::MetadataNotFound)?;
    let Value::Mapping(m) = first else {
        return Err(SopsError::MetadataNotFound);
    };
    let Some(Value::Mapping(sops)) = m.get(METADATA_KEY) else {
        return Err(SopsError::MetadataNotFound);
    };
    Ok(metadata::age_keys_of(sops)?
        .into_iter()
        .map(|k| k.recipient)
        .collect())
}

/// True when `yaml` (or JSON) is a SOPS file: valid `sops` metadata with a
/// MAC and at least one master key, and every value the file's rule selects
/// for encryption is an `ENC[…]` value (or empty / null). A file whose
/// `data` leaked plaintext is therefore *not* reported as encrypted; but the
/// file's rule decides what is checked, so a Secret may still hold values in
/// clear that its rule does not select: [`plaintext_secret_values`] checks
/// those whatever the rule.
pub fn is_sops_encrypted(yaml: &str) -> bool {
    let Ok((mut docs, meta)) = load_yaml(yaml) else {
        return false;
    };
    !meta.mac.is_empty()
        && cipher::parse_enc(&meta.mac).is_ok()
        && (!meta.age.is_empty() || meta.other_keys > 0)
        && tree::check_encrypted(&mut docs, &meta.rule).is_ok()
}

/// A value under a Kubernetes Secret's `data` or `stringData` that is not
/// SOPS ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaintextValue {
    /// Map keys from the document root: the field as written (`data`,
    /// `stringData`, in any letter case), then the key(s) below it (none when
    /// the field itself is a scalar).
    pub path: Vec<String>,
    /// What is there instead: `a plaintext string`, `a number`, `a boolean`, ….
    pub found: &'static str,
}

/// Every value under a top-level `data` or `stringData` (field names in any
/// letter case, every YAML document of the file) that is not an `ENC[…]`
/// value, whatever the file's own `sops` metadata selects for encryption
/// (`encrypted_regex`, `unencrypted_suffix`, comment regexes, …): a file made
/// with `sops --encrypted-regex '^data$'` is a valid SOPS file, and its
/// `stringData` is plaintext. Empty strings and `null` pass (`sops` leaves
/// them as they are, and they hold nothing). Needs no key and reads no
/// metadata; in document order. `Err` when the text is not YAML, or a key
/// under those fields is not a string.
pub fn plaintext_secret_values(yaml: &str) -> Result<Vec<PlaintextValue>, SopsError> {
    let mut out = Vec::new();
    for doc in parse_yaml_docs(yaml)? {
        let Value::Mapping(m) = doc else {
            continue;
        };
        for (k, v) in m {
            let Value::String(field) = k else {
                continue;
            };
            if !["data", "stringData"]
                .iter()
                .any(|f| field.eq_ignore_ascii_case(f))
            {
                continue;
            }
            let mut v = v;
            let mut path = vec![field];
            tree::check_all_encrypted(&mut v, &mut path, &mut out)?;
        }
    }
    Ok(out)
}

/// `.sops.yaml` text: one creation rule per `(path_regex, recipients)` in the
/// given order (SOPS uses the first matching rule), each with
/// `encrypted_regex: ^(data|stringData)$` and the recipients joined by `,`.
pub fn creation_rules_yaml(rules: &[(String, Vec<String>)]) -> String {
    emit::CreationRules {
        creation_rules: rules
            .iter()
            .map(|(path_regex, recipients)| emit::CreationRule {
                path_regex,
                encrypted_regex: K8S_ENCRYPTED_REGEX,
                age: recipients
                    .iter()
                    .map(|r| r.trim())
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect(),
    }
    .to_yaml()
}

// ---------------------------------------------------------------------------

/// What [`emit::EncryptedFile`] writes faithfully: string keys; string, number, boolean, null
/// or mapping values (the shapes held to sops 3.11's output).
fn writable(m: &Mapping) -> bool {
    m.iter().all(|(k, v)| {
        matches!(k, Value::String(_))
            && match v {
                Value::Mapping(inner) => writable(inner),
                Value::Sequence(_) | Value::Tagged(_) => false,
                _ => true,
            }
    })
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn parse_recipients(recipients: &[String]) -> Result<Vec<age::x25519::Recipient>, SopsError> {
    if recipients.is_empty() {
        return Err(SopsError::NoRecipients);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(recipients.len());
    for (index, r) in recipients.iter().enumerate() {
        let bad = || SopsError::InvalidRecipient {
            index,
            recipient: shown_recipient(r),
        };
        let t = r.trim();
        let parsed = age::x25519::Recipient::from_str(t).map_err(|_| bad())?;
        if !seen.insert(t.to_string()) {
            return Err(SopsError::Input(format!(
                "age recipient #{index} is a duplicate"
            )));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// A recipient string as shown in an error: only if it looks like a public
/// `age1…` recipient, so an identity pasted by mistake is never echoed.
fn shown_recipient(r: &str) -> String {
    let t = r.trim();
    if t.starts_with("age1") && t.len() <= 100 && t.chars().all(|c| c.is_ascii_alphanumeric()) {
        t.to_string()
    } else {
        "<not shown: not an age1… recipient>".to_string()
    }
}

fn parse_identities(text: &str) -> Result<Vec<age::x25519::Identity>, SopsError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let id = age::x25519::Identity::from_str(t)
            .map_err(|_| SopsError::InvalidIdentity { line: i + 1 })?;
        out.push(id);
    }
    if out.is_empty() {
        return Err(SopsError::NoIdentities);
    }
    Ok(out)
}

/// `age/keysource.go` `Encrypt`: one armored age file per recipient whose
/// payload is the raw 32-byte data key.
fn wrap_data_key(r: &age::x25519::Recipient, key: &[u8]) -> Result<String, SopsError> {
    let fail = |what: &str| SopsError::Encrypt(format!("age: {what}"));
    let enc = age::Encryptor::with_recipients(std::iter::once(r as &dyn age::Recipient))
        .map_err(|_| fail("cannot set up the recipient"))?;
    let mut buf = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut buf, age::armor::Format::AsciiArmor)
        .map_err(|_| fail("armor"))?;
    let mut w = enc.wrap_output(armor).map_err(|_| fail("header"))?;
    w.write_all(key).map_err(|_| fail("payload"))?;
    let armor = w.finish().map_err(|_| fail("payload"))?;
    armor.finish().map_err(|_| fail("armor"))?;
    String::from_utf8(buf).map_err(|_| fail("armor is not UTF-8"))
}

fn unwrap_data_key(
    meta: &metadata::Metadata,
    ids: &[age::x25519::Identity],
) -> Result<Zeroizing<[u8; 32]>, SopsError> {
    if meta.age.is_empty() {
        return Err(SopsError::Unsupported(if meta.other_keys > 0 {
            "the file has no age recipient (only pgp/kms/vault keys)".into()
        } else {
            "the file has no master keys".into()
        }));
    }
    let mut wrong_len = false;
    for k in &meta.age {
        let Some(plain) = age_open_armored(&k.enc, ids, 64) else {
            continue;
        };
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            wrong_len = true;
            continue;
        }
        key.copy_from_slice(&plain);
        return Ok(key);
    }
    if wrong_len {
        return Err(SopsError::Unsupported(
            "data key is not 32 bytes (only AES-256 data keys are supported)".into(),
        ));
    }
    Err(SopsError::NoMatchingIdentity {
        recipients: meta
            .age
            .iter()
            .map(|k| shown_recipient(&k.recipient))
            .collect::<Vec<_>>()
            .join(", "),
        tried: meta.age.len(),
    })
}

/// `age/keysource.go` `Decrypt`: open an armored age file with any of the
/// identities; at most `limit` bytes of payload are read.
fn age_open_armored(
    armored: &str,
    ids: &[age::x25519::Identity],
    limit: u64,
) -> Option<Zeroizing<Vec<u8>>> {
    let dec =
        age::Decryptor::new(age::armor::ArmoredReader::new(armored.trim().as_bytes())).ok()?;
    let reader = dec
        .decrypt(ids.iter().map(|i| i as &dyn age::Identity))
        .ok()?;
    let mut plain = Zeroizing::new(Vec::with_capacity(32));
    reader.take(limit).read_to_end(&mut plain).ok()?;
    Some(plain)
}

fn decrypt_tree(
    docs: &mut [Value],
    meta: &metadata::Metadata,
    ids: &[age::x25519::Identity],
) -> Result<(), SopsError> {
    let key = unwrap_data_key(meta, ids)?;
    let mut mac = tree::Mac::new(meta.mac_only_encrypted);
    tree::decrypt_docs(docs, &meta.rule, &key, &mut mac)?;
    let computed = mac.hex();
    if meta.mac.is_empty() {
        return Err(SopsError::MacMismatch);
    }
    let enc = cipher::parse_enc(&meta.mac).map_err(|_| SopsError::MacMismatch)?;
    let stored =
        cipher::open(&key, &enc, &meta.lastmodified).map_err(|_| SopsError::MacMismatch)?;
    if stored != computed.as_bytes() {
        return Err(SopsError::MacMismatch);
    }
    Ok(())
}

fn parse_yaml_docs(yaml: &str) -> Result<Vec<Value>, SopsError> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(yaml) {
        let v = Value::deserialize(de).map_err(|e| SopsError::Parse {
            format: "YAML",
            msg: e.to_string(),
        })?;
        docs.push(v);
    }
    Ok(docs)
}

/// Parse YAML documents and pull out the metadata (`stores.ExtractMetadata`:
/// from the first document; the `sops` key is dropped from every document).
fn load_yaml(yaml: &str) -> Result<(Vec<Value>, metadata::Metadata), SopsError> {
    let mut docs = parse_yaml_docs(yaml)?;
    if docs.is_empty() {
        return Err(SopsError::MetadataNotFound);
    }
    let mut meta = None;
    for (i, doc) in docs.iter_mut().enumerate() {
        if doc.is_null() {
            *doc = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(m) = doc else {
            return Err(SopsError::Document(format!(
                "YAML document {} is not a mapping",
                i + 1
            )));
        };
        if i == 0 {
            meta = Some(take_metadata(m)?);
        } else {
            m.remove(METADATA_KEY);
        }
    }
    let meta = meta.ok_or(SopsError::MetadataNotFound)?;
    Ok((docs, meta))
}

fn take_metadata(m: &mut Mapping) -> Result<metadata::Metadata, SopsError> {
    match m.remove(METADATA_KEY) {
        Some(Value::Mapping(sops)) => metadata::parse(&sops),
        Some(_) => Err(SopsError::Document("`sops` entry is not a mapping".into())),
        None => Err(SopsError::MetadataNotFound),
    }
}

/// JSON → tree. Numbers become float64, as Go's `encoding/json` tokens do in
/// the SOPS JSON store.
fn json_to_tree(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN).into()),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Sequence(a.iter().map(json_to_tree).collect()),
        serde_json::Value::Object(o) => {
            let mut m = Mapping::new();
            for (k, v) in o {
                m.insert(Value::String(k.clone()), json_to_tree(v));
            }
            Value::Mapping(m)
        }
    }
}

fn tree_to_json(v: &Value) -> Result<serde_json::Value, SopsError> {
    Ok(match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    // Integral float64: Go's encoding/json writes it without ".0".
                    (f as i64).into()
                } else {
                    serde_json::Number::from_f64(f)
                        .map(serde_json::Value::Number)
                        .ok_or_else(|| {
                            SopsError::Document(
                                "non-finite number cannot be written as JSON".into(),
                            )
                        })?
                }
            }
        }
        Value::Sequence(a) => {
            serde_json::Value::Array(a.iter().map(tree_to_json).collect::<Result<_, _>>()?)
        }
        Value::Mapping(m) => {
            let mut o = serde_json::Map::new();
            for (k, v) in m {
                let Value::String(k) = k else {
                    return Err(SopsError::Document("non-string JSON key".into()));
                };
                o.insert(k.clone(), tree_to_json(v)?);
            }
            serde_json::Value::Object(o)
        }
        Value::Tagged(_) => {
            return Err(SopsError::Document("tagged value in JSON".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/sops/upstream");

    /// `age/keysource_test.go`: `mockEncryptedKey` opens to "data" with
    /// `mockIdentity` — the data-key wrapping sops uses, read by our code.
    #[test]
    fn upstream_keysource_mock_encrypted_key() {
        let enc =
            std::fs::read_to_string(format!("{DIR}/keysource_test.mockEncryptedKey.age")).unwrap();
        let id = std::fs::read_to_string(format!("{DIR}/keysource_test.mockIdentity.txt")).unwrap();
        let ids = parse_identities(&id).unwrap();
        let plain = age_open_armored(&enc, &ids, 64).unwrap();
        assert_eq!(plain.as_slice(), b"data");
        let other = parse_identities(
            "AGE-SECRET-KEY-1432K5YRNSC44GC4986NXMX6GVZ52WTMT9C79CLUVWYY4DKDHD5JSNDP4MC",
        )
        .unwrap();
        assert!(age_open_armored(&enc, &other, 64).is_none());
    }
}
