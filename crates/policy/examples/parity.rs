//! Compare the engine with recorded Tailscale answers (not part of the test suite).
//!
//! `cargo run --example parity -- DIR [ID-SUBSTRING]` where DIR holds one directory per case
//! with `policy.json` (the policy text), `topology.json` (TOPOLOGY.json) and `expected.json`
//! (`{"code": 200|400, "message": "...", "filters": {"<node>": [FilterRule…]}}`).
//! Filters are compared in meaning: the same (src, dst, proto, port) decisions on every probe
//! point drawn from both filters' boundaries, and the same capability grants.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tsk8s_policy::cli::{policy_check, policy_filter};
use tsk8s_policy::filter::FilterRule;
use tsk8s_policy::matcher::Matcher;

fn bounds(s: &str, out: &mut BTreeSet<IpAddr>) {
    let s = s.trim();
    let mut add = |lo: IpAddr, hi: IpAddr| {
        for ip in [lo, hi] {
            out.insert(ip);
            match ip {
                IpAddr::V4(a) => {
                    let v = u32::from(a);
                    out.insert(IpAddr::V4(v.wrapping_sub(1).into()));
                    out.insert(IpAddr::V4(v.wrapping_add(1).into()));
                }
                IpAddr::V6(a) => {
                    let v = u128::from(a);
                    out.insert(IpAddr::V6(v.wrapping_sub(1).into()));
                    out.insert(IpAddr::V6(v.wrapping_add(1).into()));
                }
            }
        }
    };
    if s == "*" {
        add(
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
        );
        add(
            "::".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        );
        return;
    }
    if let Some((a, b)) = s.split_once('-') {
        if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
            add(a, b);
        }
        return;
    }
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        add(n.network(), n.broadcast());
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        add(ip, ip);
    }
}

fn caps(rules: &[FilterRule]) -> BTreeSet<(String, String, String)> {
    // (cap, src entry normalized, dst) — coarse: normalize through IpSet strings
    let mut out = BTreeSet::new();
    for r in rules {
        let mut src = tsk8s_policy::ipset::IpSet::new();
        for s in &r.src_ips {
            if let Some(n) = tsk8s_policy::policy::parse_prefix(s) {
                src.add_net(&n);
            } else if let Some((a, b)) = s.split_once('-')
                && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
            {
                src.add_range(a, b);
            }
        }
        for cg in &r.cap_grant {
            for d in &cg.dsts {
                for c in cg.cap_map.keys() {
                    for s in src.to_strings() {
                        out.insert((c.clone(), s.clone(), d.clone()));
                    }
                }
            }
        }
    }
    out
}

fn compare(ours: &[FilterRule], theirs: &[FilterRule]) -> Option<String> {
    let mut srcs = BTreeSet::new();
    let mut dsts = BTreeSet::new();
    let mut ports = BTreeSet::from([0u16, 1, 22, 80, 443, 65535]);
    let mut protos = BTreeSet::from([1u8, 6, 17, 58, 132, 47]);
    for r in ours.iter().chain(theirs) {
        for s in &r.src_ips {
            bounds(s, &mut srcs);
        }
        for d in &r.dst_ports {
            bounds(&d.ip, &mut dsts);
            for p in [d.ports.first, d.ports.last] {
                ports.insert(p);
                ports.insert(p.wrapping_add(1));
                ports.insert(p.wrapping_sub(1));
            }
        }
        protos.extend(r.ip_proto.iter().copied());
    }
    let a = Matcher::new(ours);
    let b = Matcher::new(theirs);
    for &s in &srcs {
        for &d in &dsts {
            if s.is_ipv4() != d.is_ipv4() {
                continue;
            }
            for &pr in &protos {
                for &p in &ports {
                    let (x, y) = (a.allows(s, d, pr, p), b.allows(s, d, pr, p));
                    if x != y {
                        return Some(format!(
                            "{s} -> {d} proto {pr} port {p}: ours {x}, tailscale {y}"
                        ));
                    }
                }
            }
        }
    }
    let (ca, cb) = (caps(ours), caps(theirs));
    if ca != cb {
        let only_a: Vec<_> = ca.difference(&cb).take(3).collect();
        let only_b: Vec<_> = cb.difference(&ca).take(3).collect();
        return Some(format!(
            "caps differ: ours-only {only_a:?} tailscale-only {only_b:?}"
        ));
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("DIR");
    let filter = args.get(2).cloned().unwrap_or_default();
    let verbose = std::env::var("V").is_ok();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let (mut ok, mut bad) = (0, 0);
    let mut by_cat: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for case in entries {
        let id = case.file_name().unwrap().to_string_lossy().to_string();
        if !id.contains(&filter) {
            continue;
        }
        let policy = std::fs::read_to_string(case.join("policy.json")).unwrap();
        let topo = std::fs::read_to_string(case.join("topology.json")).unwrap();
        let exp: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let code = exp["code"].as_i64().unwrap_or(0);
        let msg = exp["message"].as_str().unwrap_or("");
        let cat = exp["category"].as_str().unwrap_or("").to_string();
        let check = policy_check(&policy, Some(&topo));
        let mut problem = None;
        if code != 200 {
            let want = if msg == "test(s) failed" { 1 } else { 2 };
            let first = check.stderr.lines().next().unwrap_or("");
            if check.code != want || first != msg {
                problem = Some(format!(
                    "want {want} {msg:?}, got {} {:?}",
                    check.code,
                    check.stderr.trim()
                ));
            }
        } else if check.code != 0 {
            problem = Some(format!(
                "want 0, got {} {:?}",
                check.code,
                check.stderr.trim()
            ));
        } else if cat != "policytest_results" {
            let out = policy_filter(&policy, &topo);
            let ours: BTreeMap<String, Vec<FilterRule>> =
                serde_json::from_str(&out.stdout).unwrap();
            let theirs: BTreeMap<String, Vec<FilterRule>> =
                serde_json::from_value(exp["filters"].clone()).unwrap_or_default();
            for (node, t) in &theirs {
                let o = ours.get(node).cloned().unwrap_or_default();
                if let Some(d) = compare(&o, t) {
                    problem = Some(format!("node {node}: {d}"));
                    if verbose {
                        eprintln!(
                            "ours: {}\ntheirs: {}",
                            serde_json::to_string(&o).unwrap(),
                            serde_json::to_string(t).unwrap()
                        );
                    }
                    break;
                }
            }
        }
        let e = by_cat.entry(cat).or_default();
        match problem {
            None => {
                ok += 1;
                e.0 += 1;
            }
            Some(p) => {
                bad += 1;
                e.1 += 1;
                println!("FAIL {id}: {p}");
            }
        }
    }
    println!("{by_cat:?}");
    println!("ok {ok} fail {bad}");
}
