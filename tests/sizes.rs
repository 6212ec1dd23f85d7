//! Object sizes at scale (not timed: speed is measured by `cargo bench --bench build`): a
//! cluster whose nodes have 10,000 peers emits its mesh as shards, every Kubernetes object
//! file stays under Kubernetes' 1 MiB limit and the largest within 200 KiB.

mod common;

use std::fmt::Write as _;

use tsk8s::build;
use tsk8s::lockfile::{self, LockOptions};

const DEVICES: usize = 10_000;

fn key(n: u32) -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b[31] = 0x40;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn ten_thousand_peers_fit_in_small_objects() {
    let mut spec = String::from("tailnet \"big\" domain=\"big.example\"\n");
    for u in 0..100 {
        let _ = writeln!(spec, "user \"u{u}@big.example\"");
    }
    spec.push_str("tag \"web\"\n");
    for d in 0..DEVICES {
        let _ = writeln!(
            spec,
            "device \"laptop-{d}\" user=\"u{}@big.example\" public-key=\"{}\"",
            d % 100,
            key(d as u32)
        );
    }
    spec.push_str(
        "cluster \"c\" endpoint=\"wg.c.big.example\" image=\"ghcr.io/big/tsk8s-runtime:1.0.0\" {\n\
         \x20   proxy \"web\" service=\"shop/web\" port=443 tag=\"web\"\n\
         \x20   sidecar \"side\" workload=\"shop/app\" port=8080 tag=\"web\"\n\
         }\n\
         acl {\n\
         \x20   accept src=\"autogroup:member\" dst=\"tag:web:443,8080\"\n\
         }\n",
    );
    let front = build::front("tailnet.kdl", &spec).unwrap_or_else(|f| panic!("{}", f.text));
    let mut n = 0u32;
    let mut keygen = move || {
        n += 1;
        (key(1_000_000 + n), key(2_000_000 + n))
    };
    let upd = lockfile::update(
        &front.tailnet,
        &Default::default(),
        &LockOptions::default(),
        &mut keygen,
    )
    .unwrap();
    let lock = lockfile::render(&upd.lock);
    let tree = common::build_with(&spec, Some(&lock), Default::default())
        .unwrap_or_else(|f| panic!("{}", f.text));

    let objects: Vec<(&String, usize)> = tree
        .iter()
        .filter(|(p, _)| p.ends_with(".yaml"))
        .map(|(p, b)| (p, b.len()))
        .collect();
    for (p, len) in &objects {
        assert!(*len < 1 << 20, "{p}: {len} bytes, over 1 MiB");
    }
    let (largest, len) = objects.iter().max_by_key(|(_, l)| *l).unwrap();
    assert!(
        *len <= 200 << 10,
        "largest object file {largest}: {len} bytes"
    );

    // Both the cluster's mesh and the sidecar's own are sharded, and every peer is in one shard.
    for (dir, name) in [
        ("clusters/c/", "tsk8s-mesh-"),
        ("clusters/c/components/side/", "tsk8s-side-mesh-"),
    ] {
        let shards: Vec<&String> = tree
            .keys()
            .filter(|p| {
                p.strip_prefix(dir)
                    .is_some_and(|f| f.starts_with("mesh-") && !f.contains('/'))
            })
            .collect();
        // 10,000 peer lines of about 150 bytes: 1.5 MB, at least 7 shards of 192 KiB.
        assert!(shards.len() >= 7, "{dir}: {} shards", shards.len());
        let mut peers = 0;
        for p in &shards {
            let text = String::from_utf8(tree[*p].clone()).unwrap();
            assert!(text.contains(&format!("name: {name}")), "{p}");
            peers += text.matches("{\"peer\":\"laptop-").count();
        }
        assert_eq!(peers, DEVICES, "{dir}: every device is a peer once");
    }
}
