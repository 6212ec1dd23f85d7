//! Secret masking (kubectl diff style).
//!
//! A secret value is replaced by `***`. When the value at the same place differs between the two
//! trees, the old side shows `*** (before)` and the new side `*** (after)`, so a reviewer sees
//! *that* it changed but never *what* it is. What counts as secret:
//!
//! - values under `data` / `stringData` of `kind: Secret`;
//! - values under `spec.encryptedData` of `kind: SealedSecret`;
//! - `mac` and every `enc` field inside a top-level `sops` block;
//! - any string value starting with `ENC[` (SOPS ciphertext), `tskey-` (Tailscale auth keys) or
//!   `AGE-SECRET-KEY-` (age identities);
//! - values of keys that look like private or pre-shared keys or passwords (`PrivateKey`,
//!   `private_key`, `PresharedKey`, `password`, …), both as YAML/JSON keys and as `key = value`
//!   lines in text (wg-quick configs, or multi-line strings inside YAML).

use serde_yaml_ng::{Mapping, Value};

/// Which tree a text belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Before,
    After,
}

pub(crate) const MASK: &str = "***";

const TOKEN_PREFIXES: [&str; 3] = ["ENC[", "tskey-", "AGE-SECRET-KEY-"];

fn marker(changed: bool, side: Side) -> String {
    match (changed, side) {
        (false, _) => MASK.to_string(),
        (true, Side::Before) => format!("{MASK} (before)"),
        (true, Side::After) => format!("{MASK} (after)"),
    }
}

/// Whether a key name (YAML/JSON key or `key = value` line) names a secret value.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    norm.ends_with("privatekey")
        || norm.ends_with("presharedkey")
        || norm == "password"
        || norm == "passwd"
        || norm == "clientsecret"
}

/// Whether a whole string value is a secret token.
fn is_secret_string(s: &str) -> bool {
    let t = s.trim_start();
    TOKEN_PREFIXES.iter().any(|p| t.starts_with(p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Every scalar below is secret.
    MaskAll,
    /// Inside a top-level `sops` block: `mac` and `enc` are secret.
    Sops,
}

/// Masks one YAML document (a Kubernetes object or any YAML value). `other` is the unmasked
/// document at the same identity in the other tree, used for the before/after markers.
pub(crate) fn mask_yaml_doc(v: &Value, other: Option<&Value>, side: Side) -> Value {
    let Value::Mapping(m) = v else {
        return walk(v, other, Mode::Normal, side);
    };
    let kind = m.get("kind").and_then(Value::as_str);
    let mut out = Mapping::new();
    for (k, child) in m {
        let o = other.and_then(Value::as_mapping).and_then(|om| om.get(k));
        let key = k.as_str();
        let masked = match (kind, key) {
            (Some("Secret"), Some("data" | "stringData")) => walk(child, o, Mode::MaskAll, side),
            (_, Some("sops")) => walk(child, o, Mode::Sops, side),
            (Some("SealedSecret"), Some("spec")) => mask_sealed_spec(child, o, side),
            _ => walk_keyed(key, child, o, Mode::Normal, side),
        };
        out.insert(k.clone(), masked);
    }
    Value::Mapping(out)
}

fn mask_sealed_spec(v: &Value, other: Option<&Value>, side: Side) -> Value {
    let Value::Mapping(m) = v else {
        return walk(v, other, Mode::Normal, side);
    };
    let mut out = Mapping::new();
    for (k, child) in m {
        let o = other.and_then(Value::as_mapping).and_then(|om| om.get(k));
        let mode = if k.as_str() == Some("encryptedData") {
            Mode::MaskAll
        } else {
            Mode::Normal
        };
        out.insert(k.clone(), walk_keyed(k.as_str(), child, o, mode, side));
    }
    Value::Mapping(out)
}

/// Walks a child reached through mapping key `key`, switching mode for secret-looking keys.
fn walk_keyed(
    key: Option<&str>,
    v: &Value,
    other: Option<&Value>,
    mode: Mode,
    side: Side,
) -> Value {
    let mode = match (mode, key) {
        (Mode::MaskAll, _) => Mode::MaskAll,
        (_, Some(k)) if is_secret_key(k) => Mode::MaskAll,
        (Mode::Sops, Some("mac" | "enc")) => Mode::MaskAll,
        (m, _) => m,
    };
    walk(v, other, mode, side)
}

fn walk(v: &Value, other: Option<&Value>, mode: Mode, side: Side) -> Value {
    match v {
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, child) in m {
                let o = other.and_then(Value::as_mapping).and_then(|om| om.get(k));
                out.insert(k.clone(), walk_keyed(k.as_str(), child, o, mode, side));
            }
            Value::Mapping(out)
        }
        Value::Sequence(s) => Value::Sequence(
            s.iter()
                .enumerate()
                .map(|(i, child)| {
                    let o = other.and_then(Value::as_sequence).and_then(|os| os.get(i));
                    walk(child, o, mode, side)
                })
                .collect(),
        ),
        Value::Tagged(t) => {
            let o = match other {
                Some(Value::Tagged(ot)) if ot.tag == t.tag => Some(&ot.value),
                _ => None,
            };
            let mut t2 = (**t).clone();
            t2.value = walk(&t.value, o, mode, side);
            Value::Tagged(Box::new(t2))
        }
        Value::Null => Value::Null,
        scalar => {
            let secret =
                mode == Mode::MaskAll || matches!(scalar, Value::String(s) if is_secret_string(s));
            if secret {
                // kubectl diff: markers only when both sides have the value and it differs.
                let changed = other.is_some_and(|o| o != scalar);
                return Value::String(marker(changed, side));
            }
            match (scalar, other) {
                (Value::String(s), o) => {
                    let os = o.and_then(Value::as_str);
                    match mask_text(s, os, side) {
                        Some(masked) => Value::String(masked),
                        None => scalar.clone(),
                    }
                }
                _ => scalar.clone(),
            }
        }
    }
}

/// One `key = value` line or token occurrence in a text, for before/after comparison.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
enum TextSecretId {
    /// (section header, occurrence of that header, key, occurrence of the key in the section)
    Line(String, usize, String, usize),
    /// n-th secret token of the text
    Token(usize),
}

fn split_key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once(['=', ':'])?;
    let key = k.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return None;
    }
    Some((key, v))
}

/// Per line: the secret `(id, raw value)` if the line is a `key = secret` line; plus all tokens.
type Scan = (
    Vec<Option<(TextSecretId, String)>>,
    Vec<(TextSecretId, String)>,
);

/// Scans a text for secret lines and tokens.
fn scan_text(text: &str) -> Scan {
    use std::collections::BTreeMap;
    let mut section = String::new();
    let mut section_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut section_occ = 0usize;
    let mut key_seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_line = Vec::new();
    let mut tokens = Vec::new();
    let mut token_no = 0usize;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            section = trimmed.to_string();
            let n = section_seen.entry(section.clone()).or_insert(0);
            section_occ = *n;
            *n += 1;
            key_seen.clear();
            per_line.push(None);
            continue;
        }
        let mut this = None;
        if let Some((key, value)) = split_key_value(line.trim_start())
            && is_secret_key(key)
        {
            let n = key_seen.entry(key.to_ascii_lowercase()).or_insert(0);
            let id = TextSecretId::Line(section.clone(), section_occ, key.to_ascii_lowercase(), *n);
            *n += 1;
            this = Some((id, value.trim().to_string()));
        }
        if this.is_none() {
            for tok in find_tokens(line) {
                tokens.push((TextSecretId::Token(token_no), tok.to_string()));
                token_no += 1;
            }
        }
        per_line.push(this);
    }
    (per_line, tokens)
}

/// Secret tokens in a line: `ENC[...]`, `tskey-…`, `AGE-SECRET-KEY-…`.
fn find_tokens(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        let next = TOKEN_PREFIXES
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .min();
        let Some((start, prefix)) = next else { break };
        let Some(tail) = rest.get(start..) else { break };
        let len = if prefix == "ENC[" {
            tail.find(']').map(|e| e + 1).unwrap_or(tail.len())
        } else {
            tail.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',')
                .unwrap_or(tail.len())
        };
        let Some(tok) = tail.get(..len) else { break };
        out.push(tok);
        let Some(r) = tail.get(len.max(1)..) else {
            break;
        };
        rest = r;
    }
    out
}

/// Masks secret lines and tokens in free text. Returns `None` when nothing needed masking.
pub(crate) fn mask_text(text: &str, other: Option<&str>, side: Side) -> Option<String> {
    let (lines, tokens) = scan_text(text);
    if lines.iter().all(Option::is_none) && tokens.is_empty() {
        return None;
    }
    let other_secrets: std::collections::BTreeMap<TextSecretId, String> = match other {
        Some(o) => {
            let (ol, ot) = scan_text(o);
            ol.into_iter().flatten().chain(ot).collect()
        }
        None => Default::default(),
    };
    let changed =
        |id: &TextSecretId, value: &str| other_secrets.get(id).is_some_and(|ov| ov != value);
    let mut out = String::with_capacity(text.len());
    let mut token_no = 0usize;
    for (line, secret) in text.split_inclusive('\n').zip(lines.iter()) {
        if let Some((id, value)) = secret {
            // Keep everything up to the separator and the whitespace after it.
            let sep = line.find(['=', ':']).unwrap_or(0);
            let head = line.get(..=sep).unwrap_or("");
            let after = line.get(sep + 1..).unwrap_or("");
            let ws: String = after
                .chars()
                .take_while(|c| *c == ' ' || *c == '\t')
                .collect();
            out.push_str(head);
            out.push_str(&ws);
            out.push_str(&marker(changed(id, value), side));
            if line.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        let toks = find_tokens(line);
        if toks.is_empty() {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        for tok in toks {
            let id = TextSecretId::Token(token_no);
            token_no += 1;
            let Some(pos) = rest.find(tok) else { continue };
            out.push_str(rest.get(..pos).unwrap_or(""));
            out.push_str(&marker(changed(&id, tok), side));
            rest = rest.get(pos + tok.len()..).unwrap_or("");
        }
        out.push_str(rest);
    }
    Some(out)
}

/// Masks a text, returning it unchanged when it holds no secrets.
pub(crate) fn mask_text_or_keep(text: &str, other: Option<&str>, side: Side) -> String {
    mask_text(text, other, side).unwrap_or_else(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap_or(Value::Null)
    }

    #[test]
    fn secret_data_is_masked_with_markers() {
        let old = y("kind: Secret\ndata:\n  a: b2xk\n  same: eA==\nstringData:\n  x: raw\n");
        let new = y("kind: Secret\ndata:\n  a: bmV3\n  same: eA==\n");
        let mo = serde_yaml_ng::to_string(&mask_yaml_doc(&old, Some(&new), Side::Before))
            .unwrap_or_default();
        let mn = serde_yaml_ng::to_string(&mask_yaml_doc(&new, Some(&old), Side::After))
            .unwrap_or_default();
        assert!(mo.contains("a: '*** (before)'"), "{mo}");
        assert!(mn.contains("a: '*** (after)'"), "{mn}");
        assert!(mo.contains("same: '***'") && mn.contains("same: '***'"));
        assert!(mo.contains("x: '***'"));
        for raw in ["b2xk", "bmV3", "eA==", "raw"] {
            assert!(!mo.contains(raw) && !mn.contains(raw), "{raw} leaked");
        }
    }

    #[test]
    fn configmap_data_is_not_masked_but_tokens_are() {
        let v = y(
            "kind: ConfigMap\ndata:\n  a: plain\n  k: ENC[AES256_GCM,data:xx,type:str]\n  t: tskey-auth-abc\n",
        );
        let m = serde_yaml_ng::to_string(&mask_yaml_doc(&v, None, Side::After)).unwrap_or_default();
        assert!(m.contains("a: plain"));
        assert!(
            !m.contains("AES256") && !m.contains("tskey-auth-abc"),
            "{m}"
        );
    }

    #[test]
    fn sops_and_sealed_secret_fields() {
        let v = y(
            "kind: SealedSecret\nspec:\n  encryptedData:\n    k: AgBy\n  template:\n    metadata:\n      name: n\nsops:\n  mac: M\n  age:\n  - recipient: age1xyz\n    enc: |\n      -----BEGIN AGE ENCRYPTED FILE-----\n  version: 3.9.0\n",
        );
        let m = serde_yaml_ng::to_string(&mask_yaml_doc(&v, None, Side::After)).unwrap_or_default();
        assert!(
            !m.contains("AgBy") && !m.contains("mac: M") && !m.contains("BEGIN AGE"),
            "{m}"
        );
        assert!(
            m.contains("recipient: age1xyz") && m.contains("name: n"),
            "{m}"
        );
    }

    #[test]
    fn wg_quick_private_key_lines() {
        let old = "[Interface]\nPrivateKey = AAAA\nAddress = 100.64.0.1/32\n[Peer]\nPublicKey = P1\nPresharedKey=S1\n";
        let new = "[Interface]\nPrivateKey = BBBB\nAddress = 100.64.0.1/32\n[Peer]\nPublicKey = P1\nPresharedKey=S1\n";
        let mo = mask_text_or_keep(old, Some(new), Side::Before);
        let mn = mask_text_or_keep(new, Some(old), Side::After);
        assert!(mo.contains("PrivateKey = *** (before)\n"), "{mo}");
        assert!(mn.contains("PrivateKey = *** (after)\n"), "{mn}");
        assert!(mo.contains("PresharedKey=***\n"), "{mo}");
        assert!(mo.contains("PublicKey = P1"));
        assert!(!mo.contains("AAAA") && !mn.contains("BBBB"));
    }

    #[test]
    fn multiline_yaml_string_with_private_key() {
        let v = y(
            "kind: ConfigMap\ndata:\n  wg0.conf: |\n    [Interface]\n    PrivateKey = SECRET\n    ListenPort = 51820\n",
        );
        let m = serde_yaml_ng::to_string(&mask_yaml_doc(&v, None, Side::After)).unwrap_or_default();
        assert!(
            !m.contains("SECRET") && m.contains("ListenPort = 51820"),
            "{m}"
        );
    }

    #[test]
    fn tokens_in_text() {
        let t = "key: ENC[AES256_GCM,data:abc,iv:x,tag:y,type:str] and tskey-k1 end\nENC[open";
        let m = mask_text_or_keep(t, None, Side::After);
        assert_eq!(m, "key: *** and *** end\n***");
    }
}
