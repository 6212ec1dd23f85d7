//! The value cipher of SOPS (`aes/cipher.go`): AES-256-GCM with a 32-byte IV,
//! the value's path as additional data, written as
//! `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<t>]` with standard
//! padded base64. An empty plaintext is stored as the empty string, not
//! encrypted.

use aes_gcm::aead::consts::{U12, U32};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rand::RngCore as _;

/// IV size SOPS writes (`nonceSize` in `aes/cipher.go`).
pub(crate) const IV_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// Go's `base64.StdEncoding`: standard alphabet, padding required, encoders
/// pad; decoding tolerates non-zero trailing bits like Go's non-strict mode.
const STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

pub(crate) fn b64(data: &[u8]) -> String {
    STD.encode(data)
}

/// The `type:` of an encrypted value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    Str,
    Int,
    Float,
    Bool,
    Bytes,
    Time,
    Comment,
}

impl ValueType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ValueType::Str => "str",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::Bool => "bool",
            ValueType::Bytes => "bytes",
            ValueType::Time => "time",
            ValueType::Comment => "comment",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "str" => ValueType::Str,
            "int" => ValueType::Int,
            "float" => ValueType::Float,
            "bool" => ValueType::Bool,
            "bytes" => ValueType::Bytes,
            "time" => ValueType::Time,
            "comment" => ValueType::Comment,
            _ => return None,
        })
    }
}

/// A parsed `ENC[…]` value (still encrypted).
pub(crate) struct EncValue {
    pub data: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub vtype: ValueType,
}

/// Parse `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`. Mirrors the Go regexp
/// `^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]` (greedy groups,
/// so each separator is taken at its last occurrence).
pub(crate) fn parse_enc(value: &str) -> Result<EncValue, String> {
    const PREFIX: &str = "ENC[AES256_GCM,data:";
    let rest = value
        .strip_prefix(PREFIX)
        .ok_or_else(|| "not in sops' ENC[AES256_GCM,…] format".to_string())?;
    let close = rest
        .rfind(']')
        .ok_or_else(|| "ENC[…] value has no closing `]`".to_string())?;
    let body = rest.get(..close).unwrap_or_default();
    let (body, vtype) = split_last(body, ",type:")?;
    let (body, tag) = split_last(body, ",tag:")?;
    let (data, iv) = split_last(body, ",iv:")?;
    if data.is_empty() {
        return Err("empty data field".into());
    }
    let vtype = ValueType::parse(vtype).ok_or_else(|| "unknown value type".to_string())?;
    let dec = |field: &str, s: &str| {
        STD.decode(s)
            .map_err(|_| format!("field `{field}` is not valid base64"))
    };
    Ok(EncValue {
        data: dec("data", data)?,
        iv: dec("iv", iv)?,
        tag: dec("tag", tag)?,
        vtype,
    })
}

fn split_last<'a>(s: &'a str, sep: &str) -> Result<(&'a str, &'a str), String> {
    let at = s
        .rfind(sep)
        .ok_or_else(|| format!("missing `{}` field", sep.trim_matches([',', ':'])))?;
    let head = s.get(..at).unwrap_or_default();
    let tail = s.get(at + sep.len()..).unwrap_or_default();
    if tail.is_empty() {
        return Err(format!("empty `{}` field", sep.trim_matches([',', ':'])));
    }
    Ok((head, tail))
}

/// Decrypt a parsed value; returns the plaintext bytes. Like Go's `gcm.Open`
/// on `data || tag`, the last 16 bytes of the concatenation are the tag.
pub(crate) fn open(key: &[u8; 32], enc: &EncValue, aad: &str) -> Result<Vec<u8>, String> {
    let mut sealed = Vec::with_capacity(enc.data.len() + enc.tag.len());
    sealed.extend_from_slice(&enc.data);
    sealed.extend_from_slice(&enc.tag);
    if sealed.len() < TAG_LEN {
        return Err("ciphertext shorter than the GCM tag".into());
    }
    let payload = Payload {
        msg: &sealed,
        aad: aad.as_bytes(),
    };
    let fail = |_| "authentication failed (wrong data key, path or tampered value)".to_string();
    match enc.iv.len() {
        IV_LEN => AesGcm::<Aes256, U32>::new(key.into())
            .decrypt(Nonce::<U32>::from_slice(&enc.iv), payload)
            .map_err(fail),
        12 => AesGcm::<Aes256, U12>::new(key.into())
            .decrypt(Nonce::<U12>::from_slice(&enc.iv), payload)
            .map_err(fail),
        n => Err(format!("unsupported IV length {n} (sops writes 32)")),
    }
}

/// Encrypt `plaintext` (already serialised as SOPS does for `vtype`) with a
/// fresh random 32-byte IV from the OS RNG. Empty plaintext stays empty.
pub(crate) fn seal(
    key: &[u8; 32],
    plaintext: &[u8],
    vtype: ValueType,
    aad: &str,
) -> Result<String, String> {
    if plaintext.is_empty() {
        return Ok(String::new());
    }
    let mut iv = [0u8; IV_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut iv)
        .map_err(|_| "OS random number generator failed".to_string())?;
    seal_with_iv(key, &iv, plaintext, vtype, aad)
}

pub(crate) fn seal_with_iv(
    key: &[u8; 32],
    iv: &[u8; IV_LEN],
    plaintext: &[u8],
    vtype: ValueType,
    aad: &str,
) -> Result<String, String> {
    let sealed = AesGcm::<Aes256, U32>::new(key.into())
        .encrypt(
            Nonce::<U32>::from_slice(iv),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| "AES-GCM encryption failed".to_string())?;
    let split = sealed.len().saturating_sub(TAG_LEN);
    let (data, tag) = sealed.split_at(split);
    Ok(format!(
        "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{}]",
        b64(data),
        b64(iv),
        b64(tag),
        vtype.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let key = [7u8; 32];
        let iv = [9u8; IV_LEN];
        let enc = seal_with_iv(&key, &iv, b"hello", ValueType::Str, "data:k:").unwrap();
        assert!(enc.starts_with("ENC[AES256_GCM,data:"));
        assert!(enc.ends_with(",type:str]"));
        let parsed = parse_enc(&enc).unwrap();
        assert_eq!(parsed.iv.len(), 32);
        assert_eq!(parsed.tag.len(), 16);
        assert_eq!(parsed.data.len(), 5);
        assert_eq!(open(&key, &parsed, "data:k:").unwrap(), b"hello");
        assert!(open(&key, &parsed, "data:other:").is_err());
        assert!(open(&[8u8; 32], &parsed, "data:k:").is_err());
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        for s in [
            "",
            "ENC[",
            "ENC[AES256_GCM,data:",
            "ENC[AES256_GCM,data:,iv:,tag:,type:]",
            "ENC[AES256_GCM,data:a,iv:b,tag:c,type:str",
            "ENC[AES256_GCM,data:!!!!,iv:AAAA,tag:AAAA,type:str]",
            "ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:nope]",
            "ENC[AES256_GCM,data:é,iv:é,tag:é,type:é]",
        ] {
            assert!(parse_enc(s).is_err(), "{s}");
        }
        // short IV / short tag parse but do not open
        let p = parse_enc("ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]").unwrap();
        assert!(open(&[0u8; 32], &p, "").is_err());
    }
}
