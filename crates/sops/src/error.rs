//! Errors. No variant ever carries plaintext, key material or a MAC value: only
//! key paths (which SOPS keeps in clear text anyway), recipients (public) and
//! line numbers.

/// Everything that can go wrong reading or writing a SOPS file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SopsError {
    /// The document is not valid YAML / JSON. `msg` comes from the parser and
    /// carries the line and column.
    #[error("cannot parse {format}: {msg}")]
    Parse { format: &'static str, msg: String },
    /// The document's shape is not one SOPS accepts (e.g. top level is a list).
    #[error("invalid document: {0}")]
    Document(String),
    /// No top-level `sops` metadata block.
    #[error("sops metadata not found (no top-level `sops` mapping)")]
    MetadataNotFound,
    /// The `sops` metadata block is malformed.
    #[error("invalid sops metadata: field `{field}`: {msg}")]
    Metadata { field: String, msg: String },
    /// A valid SOPS feature this implementation does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An age recipient (`age1…`) the caller passed could not be parsed.
    #[error("invalid age recipient #{index}: `{recipient}`")]
    InvalidRecipient { index: usize, recipient: String },
    /// The caller gave no recipient.
    #[error("no age recipients given")]
    NoRecipients,
    /// A line of the identity text is neither empty, a comment, nor an
    /// `AGE-SECRET-KEY-1…` identity. The line itself is never shown.
    #[error("identity text, line {line}: not an age X25519 identity (AGE-SECRET-KEY-1…)")]
    InvalidIdentity { line: usize },
    /// The identity text holds no identity at all.
    #[error("no age identity given")]
    NoIdentities,
    /// None of the identities could unwrap the data key of any age recipient
    /// in the file.
    #[error(
        "no identity matches the file's age recipients ({recipients}); tried {tried} wrapped key(s)"
    )]
    NoMatchingIdentity { recipients: String, tried: usize },
    /// An `ENC[…]` value could not be parsed or decrypted (wrong key, tampered
    /// ciphertext, or wrong path). `path` is the SOPS path, e.g. `data:key:`.
    #[error("cannot decrypt value at `{path}`: {msg}")]
    Value { path: String, msg: String },
    /// A value that must be encrypted is not an `ENC[…]` string.
    #[error("value at `{path}` should be encrypted but is {found}")]
    NotEncrypted { path: String, found: &'static str },
    /// The MAC stored in the file does not match the MAC of the decrypted
    /// values: the file was modified without the data key, or values were
    /// reordered/moved.
    #[error("MAC mismatch: the file was tampered with or is corrupt")]
    MacMismatch,
    /// Input to `encrypt_secret` or `creation_rules_yaml` is unusable.
    #[error("invalid input: {0}")]
    Input(String),
    /// Encryption failed (age or AES-GCM); should not happen.
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

impl SopsError {
    pub(crate) fn meta(field: &str, msg: impl Into<String>) -> Self {
        SopsError::Metadata {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
