//! tsk8s — compile one `tailnet.kdl` into a Tailscale policy file and GitOps-ready Kubernetes
//! manifests. See ARCHITECTURE.md for the map.
//!
//! Pipeline (data flows one way; no stage does I/O):
//! [`syntax`] (KDL → syntax tree with spans) → [`resolve`] (→ [`model::Tailnet`], validated) →
//! [`lower`] (policy file, Kubernetes objects, mesh/runtime config, device configs) →
//! [`emit`] (path → bytes). [`lockfile`] reads and writes `tailnet.lock`. Only [`cli`] touches
//! the filesystem.

pub mod access;
pub mod build;
pub mod cli;
pub mod diag;
pub mod emit;
pub mod import;
pub mod lockfile;
pub mod lower;
pub mod model;
mod par;
pub mod resolve;
pub mod syntax;
pub mod verbatim;
