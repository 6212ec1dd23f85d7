//! Tree walking, per-value encryption decisions and the MAC (`sops.go`).
//!
//! * Paths are the map keys from the document root; list indices are not
//!   part of a path. The additional data of a value is `k1:k2:…:kn:` (keys
//!   joined with `:` plus a trailing `:`).
//! * `null` values are skipped entirely (neither encrypted nor hashed).
//! * The MAC is SHA-512 over the plaintext bytes of every value in document
//!   order (with `mac_only_encrypted`, only the encrypted ones, after hashing
//!   the 32-byte `sha256("sops")` prefix), written as upper-case hex and
//!   stored encrypted (`type:str`) with the normalised `lastmodified` as
//!   additional data.

use serde_yaml_ng::Value;
use sha2::{Digest, Sha512};

use crate::SopsError;
use crate::cipher::{self, ValueType};
use crate::metadata::Rule;

/// `MACOnlyEncryptedInitialization` = sha256("sops").
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

pub(crate) struct Mac {
    hash: Sha512,
    only_encrypted: bool,
}

impl Mac {
    pub(crate) fn new(only_encrypted: bool) -> Self {
        let mut hash = Sha512::new();
        if only_encrypted {
            hash.update(MAC_ONLY_ENCRYPTED_INIT);
        }
        Mac {
            hash,
            only_encrypted,
        }
    }

    fn add(&mut self, encrypted: bool, bytes: &[u8]) {
        if !self.only_encrypted || encrypted {
            self.hash.update(bytes);
        }
    }

    /// `fmt.Sprintf("%X", hash.Sum(nil))`.
    pub(crate) fn hex(self) -> String {
        hex::encode_upper(self.hash.finalize())
    }
}

/// The additional data for a value at `path`.
pub(crate) fn aad(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`.
pub(crate) fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust's Display for f64 is the shortest round-tripping decimal,
        // never in exponent form: the same digits as Go's 'f', -1.
        format!("{f}")
    }
}

/// `sops.ToBytes` of a plaintext scalar and the `type:` it is encrypted as.
/// `Ok(None)` for `null` (skipped by SOPS).
fn scalar_bytes(v: &Value, path: &[String]) -> Result<Option<(Vec<u8>, ValueType)>, SopsError> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::String(s) => (s.as_bytes().to_vec(), ValueType::Str),
        Value::Bool(b) => (
            if *b { "True" } else { "False" }.as_bytes().to_vec(),
            ValueType::Bool,
        ),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                (i.to_string().into_bytes(), ValueType::Int)
            } else if n.is_u64() {
                return Err(SopsError::Unsupported(format!(
                    "integer above 2^63-1 at `{}` (sops cannot walk uint64 values)",
                    aad(path)
                )));
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                (go_format_float(f).into_bytes(), ValueType::Float)
            }
        }
        Value::Tagged(_) => {
            return Err(SopsError::Unsupported(format!(
                "YAML tag on the value at `{}`",
                aad(path)
            )));
        }
        Value::Sequence(_) | Value::Mapping(_) => {
            return Err(SopsError::Document(format!(
                "unexpected collection at `{}`",
                aad(path)
            )));
        }
    }))
}

/// [`walk`] every document, in order.
fn walk_docs<F>(docs: &mut [Value], f: &mut F) -> Result<(), SopsError>
where
    F: FnMut(&mut Value, &[String]) -> Result<(), SopsError>,
{
    for doc in docs.iter_mut() {
        walk(doc, &mut Vec::new(), f)?;
    }
    Ok(())
}

/// Walk every scalar leaf of `v` in document order.
fn walk<F>(v: &mut Value, path: &mut Vec<String>, f: &mut F) -> Result<(), SopsError>
where
    F: FnMut(&mut Value, &[String]) -> Result<(), SopsError>,
{
    match v {
        Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                let Value::String(key) = k else {
                    return Err(SopsError::Document(format!(
                        "non-string key under `{}` (sops only supports string keys)",
                        aad(path)
                    )));
                };
                path.push(key.clone());
                let r = walk(val, path, f);
                path.pop();
                r?;
            }
            Ok(())
        }
        Value::Sequence(items) => {
            for item in items.iter_mut() {
                walk(item, path, f)?;
            }
            Ok(())
        }
        Value::Null => Ok(()),
        leaf => f(leaf, path),
    }
}

/// Encrypt the leaves `rule` selects, accumulating the MAC over all leaves.
pub(crate) fn encrypt_docs(
    docs: &mut [Value],
    rule: &Rule,
    key: &[u8; 32],
    mac: &mut Mac,
) -> Result<(), SopsError> {
    walk_docs(docs, &mut |leaf, path| {
        let encrypted = rule.should_encrypt(path);
        let Some((bytes, vtype)) = scalar_bytes(leaf, path)? else {
            return Ok(());
        };
        mac.add(encrypted, &bytes);
        if encrypted {
            let enc = cipher::seal(key, &bytes, vtype, &aad(path)).map_err(SopsError::Encrypt)?;
            *leaf = Value::String(enc);
        }
        Ok(())
    })
}

/// Decrypt the leaves `rule` selects in place, accumulating the MAC.
pub(crate) fn decrypt_docs(
    docs: &mut [Value],
    rule: &Rule,
    key: &[u8; 32],
    mac: &mut Mac,
) -> Result<(), SopsError> {
    walk_docs(docs, &mut |leaf, path| {
        let encrypted = rule.should_encrypt(path);
        if encrypted {
            let Value::String(s) = &*leaf else {
                return Err(SopsError::NotEncrypted {
                    path: aad(path),
                    found: kind(leaf),
                });
            };
            if s.is_empty() {
                // `Cipher.Decrypt("")` is "", which hashes to nothing.
                return Ok(());
            }
            let (value, mac_bytes) = decrypt_value(s, key, path)?;
            mac.add(true, &mac_bytes);
            *leaf = value;
        } else if let Some((bytes, _)) = scalar_bytes(leaf, path)? {
            mac.add(false, &bytes);
        }
        Ok(())
    })
}

/// Check without a key that every leaf the rule selects is an `ENC[…]`
/// string (or empty / null, which SOPS leaves as is).
pub(crate) fn check_encrypted(docs: &mut [Value], rule: &Rule) -> Result<(), SopsError> {
    walk_docs(docs, &mut |leaf, path| {
        if !rule.should_encrypt(path) {
            return Ok(());
        }
        match &*leaf {
            Value::String(s) if s.is_empty() => Ok(()),
            Value::String(s) if cipher::parse_enc(s).is_ok() => Ok(()),
            other => Err(SopsError::NotEncrypted {
                path: aad(path),
                found: kind(other),
            }),
        }
    })
}

/// Every leaf under `v` (at `path`) that is not an `ENC[…]` string, empty
/// or null, whatever any rule says, appended to `out`.
pub(crate) fn check_all_encrypted(
    v: &mut Value,
    path: &mut Vec<String>,
    out: &mut Vec<crate::PlaintextValue>,
) -> Result<(), SopsError> {
    walk(v, path, &mut |leaf, path| {
        match &*leaf {
            Value::String(s) if s.is_empty() || cipher::parse_enc(s).is_ok() => {}
            other => out.push(crate::PlaintextValue {
                path: path.to_vec(),
                found: kind(other),
            }),
        }
        Ok(())
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a plaintext string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Decrypt one `ENC[…]` value; returns the typed value and the bytes that go
/// into the MAC (`ToBytes` of the typed value, as SOPS does).
pub(crate) fn decrypt_value(
    s: &str,
    key: &[u8; 32],
    path: &[String],
) -> Result<(Value, Vec<u8>), SopsError> {
    let err = |msg: String| SopsError::Value {
        path: aad(path),
        msg,
    };
    let enc = cipher::parse_enc(s).map_err(err)?;
    let plain = cipher::open(key, &enc, &aad(path)).map_err(err)?;
    let text = || {
        String::from_utf8(plain.clone())
            .map_err(|_| err(format!("{} value is not UTF-8", enc.vtype.as_str())))
    };
    Ok(match enc.vtype {
        ValueType::Str | ValueType::Comment | ValueType::Time | ValueType::Bytes => {
            (Value::String(text()?), plain.clone())
        }
        ValueType::Int => {
            let i: i64 = text()?
                .parse()
                .map_err(|_| err("int value is not an integer".into()))?;
            (Value::Number(i.into()), i.to_string().into_bytes())
        }
        ValueType::Float => {
            let f = parse_go_float(&text()?)
                .ok_or_else(|| err("float value is not a number".into()))?;
            (Value::Number(f.into()), go_format_float(f).into_bytes())
        }
        ValueType::Bool => {
            let b = match text()?.as_str() {
                "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                _ => return Err(err("bool value is not a boolean".into())),
            };
            (
                Value::Bool(b),
                if b { "True" } else { "False" }.as_bytes().to_vec(),
            )
        }
    })
}

/// Go's `strconv.ParseFloat(s, 64)` for the forms SOPS writes (decimal,
/// exponent, `±Inf`, `NaN`).
fn parse_go_float(s: &str) -> Option<f64> {
    let lower = s.to_ascii_lowercase();
    match lower.trim_start_matches(['+', '-']) {
        "inf" | "infinity" | "nan" => {}
        t if t.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {}
        _ => return None,
    }
    lower.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_formatting() {
        assert_eq!(go_format_float(1.0), "1");
        assert_eq!(go_format_float(25.4), "25.4");
        assert_eq!(go_format_float(1234567890.0), "1234567890");
        assert_eq!(go_format_float(0.1), "0.1");
        assert_eq!(go_format_float(1e-7), "0.0000001");
        assert_eq!(go_format_float(f64::INFINITY), "+Inf");
        assert_eq!(parse_go_float("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_go_float("1e3"), Some(1000.0));
        assert_eq!(parse_go_float("abc"), None);
    }

    #[test]
    fn aad_is_keys_joined_with_trailing_colon() {
        assert_eq!(aad(&["a".into(), "b".into()]), "a:b:");
        assert_eq!(aad(&[]), ":");
    }
}
