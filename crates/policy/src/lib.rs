//! tsk8s-policy: the Tailscale policy file — parse (HuJSON), validate (Tailscale's wording),
//! compile per-node packet filters, evaluate `tests` offline — plus the compiler↔runtime config
//! contract. Shared by `tsk8s` (validate, test, build) and `tsk8s-runtime` (enforce).
//!
//! - [`hujson`]: JWCC parser (comments, trailing commas, duplicate keys rejected).
//! - [`policy`]: typed model, decoding, validation and Go durations, one file each
//!   ([`policy::Policy::parse`]).
//! - [`topology`]: `TOPOLOGY.json` (users and nodes).
//! - [`compile`]: per-node / per-cluster filters ([`compile::compile_filter`],
//!   [`compile::compile_all`], [`compile::compile_for_nodes`]).
//! - [`matcher`]: indexed packet decisions for the runtime.
//! - [`access`]: the access model (who may reach what, and the rule that grants it).
//! - [`acltest`]: offline `tests` evaluation ([`acltest::run_tests`]).
//! - [`cli`]: `policy check` / `policy filter` as functions.
//! - [`filter`], [`runtime_config`]: wire shapes.
//! - [`text`]: escaping untrusted text for terminals and CI logs (used by every crate).
//!
//! No I/O, no global state, no panics on any input.

pub mod access;
pub mod acltest;
pub mod cli;
pub mod compile;
pub mod filter;
pub mod hujson;
pub mod ipset;
pub mod matcher;
pub mod policy;
pub mod runtime_config;
pub mod text;
pub mod topology;
