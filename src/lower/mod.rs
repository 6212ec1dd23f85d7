//! Stage 3 — lower: the tailnet model → policy file, runtime configs, Kubernetes objects and
//! device configs. Pure functions over [`crate::model::Tailnet`] and the lock.

pub mod devices;
pub mod gateway;
pub mod gitops;
pub mod k8s;
pub mod mesh;
pub mod net;
pub mod policy;
pub mod secrets;
pub mod sidecar;
pub mod tailscale;
