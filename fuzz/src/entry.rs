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

/// A cheap, input-determined sample: the expensive checks (rendering every diagnostic with
/// miette, the slow reference KDL parser) run on about one input in `n`, so the target keeps
/// thousands of executions per second and still covers them.
fn sampled(data: &[u8], n: u32) -> bool {
    let h = data.iter().fold(2_166_136_261u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(16_777_619)
    });
    h % n == 0
}

/// Spec front end: bytes → parse + resolve + validate; when valid, a fresh lock (the real
/// `lock` logic, in memory) and the whole build. On a sample: the fast KDL parser against the
/// `kdl` crate's (same document, spans included, or a fallback), and diagnostic rendering.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sample = sampled(data, 16);
    fast_kdl_only(!sample);
    if sample {
        kdl_differential(text);
    }
    let front = match tsk8s::build::front_diags("tailnet.kdl", text) {
        Ok(f) => f,
        Err(d) => {
            if sample {
                let _ = d.render();
            }
            return;
        }
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

/// Outside the sample, text the fast KDL parser does not take skips `kdl`'s (slow) parser and
/// its diagnostics (see `tsk8s::syntax::FAST_KDL_ONLY`).
fn fast_kdl_only(on: bool) {
    tsk8s::syntax::FAST_KDL_ONLY.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The fast KDL parser must agree with the reference one whenever it answers.
fn kdl_differential(text: &str) {
    if tsk8s::syntax::too_deep(text).is_some() {
        return;
    }
    let Some(fast) = tsk8s_kdl::parse_fast(text) else {
        return;
    };
    match kdl::KdlDocument::parse_v2(text) {
        Ok(reference) => {
            if let Err(e) = tsk8s_kdl::compare::documents("", &fast, &reference) {
                panic!("fast KDL parser differs from parse_v2 ({e}) on:\n{text}");
            }
        }
        Err(e) => panic!("fast KDL parser accepted what parse_v2 rejects ({e}):\n{text}"),
    }
}

/// Lock reader: bytes as `tailnet.lock` → parse (a lock that parses renders to text that
/// parses to the same lock); then, beside the example spec, the stale/duplicate checks. On a
/// sample: the whole `build::load`, diagnostics rendered.
pub fn lock(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sample = sampled(data, 16);
    fast_kdl_only(!sample);
    match tsk8s::lockfile::parse("tailnet.lock", text) {
        Ok(l) => {
            let r = tsk8s::lockfile::render(&l);
            match tsk8s::lockfile::parse("tailnet.lock", &r) {
                Ok(l2) => assert_eq!(l, l2, "lock changed in a render/parse round trip"),
                Err(d) => panic!("a rendered lock does not parse:\n{}\n{r}", d.render()),
            }
            let _ = tsk8s::lockfile::check(&example().tailnet, &l);
        }
        Err(d) => {
            if sample {
                let _ = d.render();
            }
        }
    }
    if sample {
        let input = tsk8s::build::Input {
            spec_file: "tailnet.kdl",
            spec: EXAMPLE_SPEC,
            lock_file: "tailnet.lock",
            lock: Some(text),
            sources: BTreeMap::new(),
        };
        let _ = tsk8s::build::load(&input);
    }
}

/// The example spec through the front end, once.
fn example() -> &'static tsk8s::build::Front {
    static FRONT: std::sync::OnceLock<tsk8s::build::Front> = std::sync::OnceLock::new();
    FRONT.get_or_init(|| match tsk8s::build::front("tailnet.kdl", EXAMPLE_SPEC) {
        Ok(f) => f,
        Err(f) => panic!("the example spec does not build:\n{}", f.text),
    })
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

/// Gateway dispatch: one datagram routed (MAC1, receiver index, learned sidecar indices) and
/// learned from as if a relayed sidecar sent it.
pub fn gateway(data: &[u8]) {
    tsk8s_runtime::fuzz_gateway_datagram(data);
}

/// Runtime receive path: one decrypted IP packet from a peer into the filter and the stack.
pub fn inner_packet(data: &[u8]) {
    tsk8s_runtime::fuzz_inner_packet(data);
}
