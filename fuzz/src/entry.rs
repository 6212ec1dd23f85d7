//! The fuzzed entry points. Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and by
//! `tests/corpus_replay.rs`, which replays every corpus file through them in `cargo test`.
//! Each takes arbitrary bytes; a panic (or abort) is a finding.

#![allow(dead_code)]

use std::collections::BTreeMap;

use base64::Engine as _;

const EXAMPLE_SPEC: &str = include_str!("../../examples/tailnet.kdl");

/// A small topology for compiling fuzzed policies: one user, one tagged node with routes.
const TOPOLOGY: &str = r#"{"users": [{"name": "alice", "email": "alice@acme.example"}],
 "nodes": {"laptop": {"ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::6440:1", "user": "alice@acme.example"},
           "web": {"ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::6440:2", "tags": ["tag:web"],
                   "routable_ips": ["10.0.0.0/8"], "approved_routes": ["10.0.0.0/8"]}}}"#;

fn keygen() -> impl FnMut() -> (String, String) {
    let mut n = 0u8;
    move || {
        n = n.wrapping_add(1);
        let k = base64::engine::general_purpose::STANDARD.encode([n; 32]);
        (k.clone(), k)
    }
}

/// Spec front end: bytes → parse + resolve + validate; when valid, a fresh lock (the real
/// `lock` logic, in memory) and the whole build.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(front) = tsk8s::build::front("tailnet.kdl", text) else {
        return;
    };
    let Ok(upd) = tsk8s::lockfile::update(
        &front.tailnet,
        &tsk8s::lockfile::Lock::default(),
        &tsk8s::lockfile::LockOptions::default(),
        &mut keygen(),
    ) else {
        return;
    };
    let lock = tsk8s::lockfile::render(&upd.lock);
    // What `tsk8s lock` writes, `tsk8s build` must read.
    if let Err(d) = tsk8s::lockfile::parse("tailnet.lock", &lock) {
        panic!(
            "a lock written by `lock` does not parse:\n{}\n{lock}",
            d.render()
        );
    }
    let input = tsk8s::build::Input {
        spec_file: "tailnet.kdl",
        spec: text,
        lock_file: "tailnet.lock",
        lock: Some(&lock),
        sources: BTreeMap::new(),
    };
    let _ = tsk8s::build::build(&input);
}

/// Lock reader: bytes as `tailnet.lock` beside the example spec → parse + check (`build::load`);
/// a lock that parses renders to text that parses to the same lock.
pub fn lock(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(l) = tsk8s::lockfile::parse("tailnet.lock", text) {
        let r = tsk8s::lockfile::render(&l);
        match tsk8s::lockfile::parse("tailnet.lock", &r) {
            Ok(l2) => assert_eq!(l, l2, "lock changed in a render/parse round trip"),
            Err(d) => panic!("a rendered lock does not parse:\n{}\n{r}", d.render()),
        }
    }
    let input = tsk8s::build::Input {
        spec_file: "tailnet.kdl",
        spec: EXAMPLE_SPEC,
        lock_file: "tailnet.lock",
        lock: Some(text),
        sources: BTreeMap::new(),
    };
    let _ = tsk8s::build::load(&input);
}

/// Policy file: HuJSON parser, policy parser + validator, test checks, and the filter
/// compiler against a small topology.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tsk8s_policy::hujson::parse(text);
    let _ = tsk8s_policy::cli::policy_check(text, None);
    if tsk8s_policy::policy::Policy::parse(text).is_ok() {
        let _ = tsk8s_policy::cli::policy_check(text, Some(TOPOLOGY));
        let _ = tsk8s_policy::cli::policy_filter(text, TOPOLOGY);
    }
}

/// Runtime receive path: one UDP datagram from the network into the WireGuard layer.
pub fn datagram(data: &[u8]) {
    tsk8s_runtime::fuzz_datagram(data);
}

/// Runtime receive path: one decrypted IP packet from a peer into the filter and the stack.
pub fn inner_packet(data: &[u8]) {
    tsk8s_runtime::fuzz_inner_packet(data);
}
