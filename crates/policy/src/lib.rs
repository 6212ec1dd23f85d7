//! tsk8s-policy: the Tailscale policy file — parse (HuJSON), validate (Tailscale's wording),
//! compile per-node packet filters, evaluate `tests` offline — plus the compiler↔runtime config
//! contract. Shared by `tsk8s` (validate, test, build) and `tsk8s-runtime` (enforce).
//!
//! No I/O, no global state, no panics on any input.

pub mod filter;
pub mod matcher;
pub mod runtime_config;
