//! The `sops` metadata block (`stores/stores.go` `Metadata`, `ToInternal`).

use regex::Regex;
use serde_yaml_ng::{Mapping, Value};

use crate::SopsError;

/// `sops.DefaultUnencryptedSuffix`.
pub(crate) const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// One age master key: `sops.age[] = {recipient, enc}`.
#[derive(Debug, Clone)]
pub(crate) struct AgeKey {
    pub recipient: String,
    pub enc: String,
}

/// Which values are encrypted (exactly one rule is in force, as in
/// `ToInternal`: none given means `unencrypted_suffix: _unencrypted`).
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl Rule {
    /// `Tree.shouldBeEncrypted` for a value at `path` (map keys only; list
    /// indices are not part of SOPS paths).
    pub(crate) fn should_encrypt(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(sfx) => !path.iter().any(|p| p.ends_with(sfx.as_str())),
            Rule::EncryptedSuffix(sfx) => path.iter().any(|p| p.ends_with(sfx.as_str())),
            Rule::UnencryptedRegex(re) => !path.iter().any(|p| re.is_match(p)),
            Rule::EncryptedRegex(re) => path.iter().any(|p| re.is_match(p)),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    /// Age keys of the (single) key group, in file order.
    pub age: Vec<AgeKey>,
    /// Number of non-age master keys (pgp, kms, …) — we cannot use them.
    pub other_keys: usize,
    /// `lastmodified` in Go's `Format(time.RFC3339)` normal form: the MAC's
    /// additional data.
    pub lastmodified: String,
    pub mac: String,
    pub rule: Rule,
    pub mac_only_encrypted: bool,
}

const OTHER_KEY_TYPES: [&str; 6] = ["pgp", "kms", "gcp_kms", "hckms", "azure_kv", "hc_vault"];

fn get<'a>(m: &'a Mapping, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

/// A string-ish field (mapstructure's weak typing accepts scalars).
fn string_field(m: &Mapping, key: &str) -> Result<Option<String>, SopsError> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(if *b { "1" } else { "0" }.to_string())),
        Some(_) => Err(SopsError::meta(key, "expected a string")),
    }
}

fn bool_field(m: &Mapping, key: &str) -> Result<bool, SopsError> {
    match get(m, key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Ok(false),
            _ => Err(SopsError::meta(key, "expected a boolean")),
        },
        Some(Value::Number(n)) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        Some(_) => Err(SopsError::meta(key, "expected a boolean")),
    }
}

fn list_len(m: &Mapping, key: &str) -> Result<usize, SopsError> {
    match get(m, key) {
        None => Ok(0),
        Some(Value::Sequence(s)) => Ok(s.len()),
        Some(_) => Err(SopsError::meta(key, "expected a list")),
    }
}

fn age_keys(m: &Mapping, field: &str) -> Result<Vec<AgeKey>, SopsError> {
    let Some(v) = get(m, "age") else {
        return Ok(Vec::new());
    };
    let Value::Sequence(items) = v else {
        return Err(SopsError::meta(field, "expected a list"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Mapping(entry) = item else {
            return Err(SopsError::meta(
                &format!("{field}[{i}]"),
                "expected a mapping",
            ));
        };
        let recipient = string_field(entry, "recipient")?.unwrap_or_default();
        let enc = string_field(entry, "enc")?.unwrap_or_default();
        out.push(AgeKey { recipient, enc });
    }
    Ok(out)
}

fn other_key_count(m: &Mapping) -> Result<usize, SopsError> {
    let mut n = 0;
    for k in OTHER_KEY_TYPES {
        n += list_len(m, k)?;
    }
    Ok(n)
}

/// Only the age keys of the metadata, for `recipients_of` (no other check).
pub(crate) fn age_keys_of(m: &Mapping) -> Result<Vec<AgeKey>, SopsError> {
    let (age, _) = key_group(m)?;
    Ok(age)
}

fn key_group(m: &Mapping) -> Result<(Vec<AgeKey>, usize), SopsError> {
    let top_age = age_keys(m, "age")?;
    let top_other = other_key_count(m)?;
    if !top_age.is_empty() || top_other > 0 {
        // `internalKeygroups`: top-level keys win over `key_groups`.
        return Ok((top_age, top_other));
    }
    match get(m, "key_groups") {
        None => Ok((Vec::new(), 0)),
        Some(Value::Sequence(groups)) => match groups.as_slice() {
            [] => Ok((Vec::new(), 0)),
            [Value::Mapping(g)] => Ok((age_keys(g, "key_groups[0].age")?, other_key_count(g)?)),
            [_] => Err(SopsError::meta("key_groups[0]", "expected a mapping")),
            _ => Err(SopsError::Unsupported(
                "several key_groups (Shamir secret sharing)".into(),
            )),
        },
        Some(_) => Err(SopsError::meta("key_groups", "expected a list")),
    }
}

fn regex(field: &str, pattern: &str) -> Result<Regex, SopsError> {
    Regex::new(pattern).map_err(|_| SopsError::meta(field, "not a valid regular expression"))
}

pub(crate) fn parse(m: &Mapping) -> Result<Metadata, SopsError> {
    let (age, other_keys) = key_group(m)?;
    let raw_lm = string_field(m, "lastmodified")?
        .ok_or_else(|| SopsError::meta("lastmodified", "missing"))?;
    let lastmodified = crate::rfc3339::normalize(&raw_lm)
        .ok_or_else(|| SopsError::meta("lastmodified", "not an RFC 3339 timestamp"))?;
    let mac = string_field(m, "mac")?.unwrap_or_default();

    let non_empty = |k: &str| -> Result<Option<String>, SopsError> {
        Ok(string_field(m, k)?.filter(|s| !s.is_empty()))
    };
    let mut rules = Vec::new();
    if let Some(s) = non_empty("unencrypted_suffix")? {
        rules.push(Rule::UnencryptedSuffix(s));
    }
    if let Some(s) = non_empty("encrypted_suffix")? {
        rules.push(Rule::EncryptedSuffix(s));
    }
    if let Some(s) = non_empty("unencrypted_regex")? {
        rules.push(Rule::UnencryptedRegex(regex("unencrypted_regex", &s)?));
    }
    if let Some(s) = non_empty("encrypted_regex")? {
        rules.push(Rule::EncryptedRegex(regex("encrypted_regex", &s)?));
    }
    for k in ["unencrypted_comment_regex", "encrypted_comment_regex"] {
        if non_empty(k)?.is_some() {
            return Err(SopsError::Unsupported(format!(
                "`{k}` (comment-driven encryption needs the YAML comments, which this reader does not keep)"
            )));
        }
    }
    if rules.len() > 1 {
        return Err(SopsError::meta(
            "encrypted_regex",
            "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, unencrypted_regex",
        ));
    }
    let rule = rules
        .pop()
        .unwrap_or_else(|| Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_string()));
    Ok(Metadata {
        age,
        other_keys,
        lastmodified,
        mac,
        rule,
        mac_only_encrypted: bool_field(m, "mac_only_encrypted")?,
    })
}
