//! The Tailscale policy file as a typed model, parsed from HuJSON and validated with Tailscale's
//! semantics and wording.
//!
//! Messages are Tailscale's own where known (captured from its API, as recorded in headscale's
//! compatibility tables); where Tailscale's wording is not known, headscale's
//! (`hscontrol/policy/v2`) is used. Only the first problem is reported, as Tailscale does.
//!
//! Validation happens in two passes, like Tailscale/headscale: first the document is decoded in
//! key order (syntax of each value: actions, aliases, ports, protocols, group recursion, tag
//! names), then references and combinations are checked section by section (`acls`, `ssh`,
//! `grants`, `nodeAttrs`, `tagOwners`, `autoApprovers`).
//!
//! A policy built in memory (the compiler builds one from the spec with the constructors
//! [`Acl::accept`], [`Grant::new`], [`SshRule::new`], [`AclTest::new`] and
//! [`Policy::decode_section`] for sections written as JSON) is validated by [`Policy::check`],
//! which names the [`Entry`] at fault; it is never rendered and re-parsed.
//!
//! Malformed `tests` entries do not make the policy invalid: Tailscale answers them with
//! `test(s) failed`, so they are kept (with [`AclTest::problem`]) and reported by the test run.

mod decode;
#[path = "duration.rs"]
pub mod go_duration;
mod model;
mod validate;

pub use decode::*;
pub use model::*;
pub use validate::*;

/// Why a policy is invalid. `Display` is the message (Tailscale's wording), after the
/// position of a HuJSON syntax error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", position.map(|(l, c)| format!("line {l}, column {c}: ")).unwrap_or_default())]
pub struct PolicyError {
    pub message: String,
    /// 1-based line and column, for HuJSON syntax errors.
    pub position: Option<(usize, usize)>,
}

impl From<String> for PolicyError {
    fn from(message: String) -> PolicyError {
        PolicyError {
            message,
            position: None,
        }
    }
}

/// The entry of a policy that validation found a problem in ([`Policy::check`]): an index into
/// its section's list, or a name for `tagOwners`. The compiler maps it to the spec node that
/// wrote the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Acl(usize),
    Ssh(usize),
    Grant(usize),
    NodeAttr(usize),
    /// The owners of this tag.
    TagOwner(String),
    AutoApprovers,
    IpSets,
}

/// A policy that validation refuses: the problem and the entry it is in (callers locate it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Invalid {
    pub error: PolicyError,
    pub entry: Entry,
}

fn err<T>(message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError {
        message: message.into(),
        position: None,
    })
}

#[cfg(test)]
mod tests;
