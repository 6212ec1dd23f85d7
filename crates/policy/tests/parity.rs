//! Parity with Tailscale: the engine against recorded answers of Tailscale's control plane
//! (headscale's captures, vendored in testdata/tailscale-parity with their licence).
//!
//! Three scores, printed by `cargo test -p tsk8s-policy --test parity -- --nocapture`:
//! - verdicts: per case, `policy check --nodes` exits as Tailscale answered (200 → 0,
//!   `test(s) failed` → 1, any other refusal → 2);
//! - messages: per refused case, our first line of stderr is Tailscale's message;
//! - filters: per node of an accepted case, our filter means what Tailscale's does — the same
//!   decision for every (src, dst, proto, port) probe drawn from both filters' boundaries, and
//!   the same capability grants.
//!
//! Each score has a floor at the level reached, so a regression fails. `PARITY_VERBOSE=1`
//! prints every disagreement; `PARITY_FILTER=substring` keeps the cases whose id contains it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;
use tsk8s_policy::cli::{policy_check, policy_filter};
use tsk8s_policy::filter::FilterRule;
use tsk8s_policy::ipset::IpSet;
use tsk8s_policy::matcher::Matcher;

/// Disagreements allowed: the level reached (lower them as the engine improves). The one left:
/// one node of `policytest-allpass-grants-only-tag-src-ipv6-literal-dst`, recorded with no
/// filter at all although the case's own test (`tag:client` → `[fd7a:115c:a1e0::10]:22`)
/// passed on Tailscale.
const MAX_VERDICT_MISSES: usize = 0;
const MAX_MESSAGE_MISSES: usize = 0;

/// Recorded answers that depend on the tailnet that recorded them, not on the policy: left out
/// of the message score (counted and printed as excluded), and our own message is pinned.
/// `ssh-e1` writes `localpart:*@EXAMPLE.COM` in a tailnet whose domain is `example.com`;
/// Tailscale's message names "PASSKEY" (the recording tailnet's sign-in kind), which nothing
/// in the policy or topology says. We name the domain as written, as Tailscale does for every
/// other domain in the corpus (`ssh-b4`, `ssh-d1`, `ssh-e2`).
const RECORDING_ARTEFACTS: &[(&str, &str)] = &[(
    "ssh-e1",
    "EXAMPLE.COM is not associated with this Tailnet and cannot be used in user:*@<domain> expressions",
)];
const MAX_FILTER_MISSES: usize = 1;

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
        add([0, 0, 0, 0].into(), [255, 255, 255, 255].into());
        add(
            std::net::Ipv6Addr::from(0u128).into(),
            std::net::Ipv6Addr::from(u128::MAX).into(),
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

fn src_set(entries: &[String]) -> IpSet {
    let mut set = IpSet::new();
    for s in entries {
        if s == "*" {
            set.add_set(&IpSet::all());
        } else if let Some(n) = tsk8s_policy::policy::parse_prefix(s) {
            set.add_net(&n);
        } else if let Some((a, b)) = s.split_once('-')
            && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
        {
            set.add_range(a, b);
        }
    }
    set
}

/// (capability, source range, destination) triples, sources normalized.
fn caps(rules: &[FilterRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in rules {
        let src = src_set(&r.src_ips).to_strings();
        for cg in &r.cap_grant {
            for d in &cg.dsts {
                for c in cg.cap_map.keys() {
                    for s in &src {
                        out.insert((c.clone(), s.clone(), d.clone()));
                    }
                }
            }
        }
    }
    out
}

fn compare(ours: &[FilterRule], theirs: &[FilterRule]) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let mut srcs = BTreeSet::new();
    let mut dsts = BTreeSet::new();
    let mut ports = BTreeSet::from([0u16, 1, 22, 80, 443, 65535]);
    let mut protos = BTreeSet::from([1u8, 6, 17, 58, 132, 47]);
    for r in ours.iter().chain(theirs) {
        for s in r.src_ips.iter() {
            bounds(s, &mut srcs);
        }
        for d in &r.dst_ports {
            bounds(&d.ip, &mut dsts);
            for p in [d.ports.first, d.ports.last] {
                ports.extend([p, p.wrapping_add(1), p.wrapping_sub(1)]);
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

/// Go writes a nil slice or map as `null`: read a recorded filter with nulls as empty lists
/// (a capability's value list included: `{"tailscale.com/cap/drive-sharer": null}`).
fn recorded_rules(v: &Value) -> Result<Vec<FilterRule>, String> {
    fn denull(v: &Value, key: &str) -> Value {
        match v {
            Value::Null if key == "CapMap" => Value::Object(Default::default()),
            Value::Null => Value::Array(Vec::new()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, x)| (k.clone(), denull(x, k))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| denull(x, "")).collect()),
            x => x.clone(),
        }
    }
    serde_json::from_value(denull(v, "")).map_err(|e| format!("recorded filter: {e}"))
}

#[derive(Default)]
struct Score {
    cases: usize,
    verdicts: (usize, usize),
    messages: (usize, usize),
    filters: (usize, usize),
    /// Cases left out of the message score (see [`RECORDING_ARTEFACTS`]).
    excluded: Vec<String>,
    misses: Vec<String>,
}

fn pct(ok: usize, total: usize) -> f64 {
    if total == 0 {
        100.0
    } else {
        ok as f64 * 100.0 / total as f64
    }
}

fn run_case(case: &Value, score: &mut Score) {
    let id = case["id"].as_str().unwrap_or("?");
    let code = case["code"].as_i64().unwrap_or(0);
    let msg = case["message"].as_str().unwrap_or("");
    let policy = case["policy"].as_str().expect("policy text");
    let topo = serde_json::to_string(&case["topology"]).expect("topology");
    score.cases += 1;
    let check = policy_check(policy, Some(&topo));
    let want = match (code, msg) {
        (200, _) => 0,
        (_, "test(s) failed") => 1,
        _ => 2,
    };
    score.verdicts.1 += 1;
    if check.code == want {
        score.verdicts.0 += 1;
    } else {
        score.misses.push(format!(
            "{id}: verdict: want {want} {msg:?}, got {} {:?}",
            check.code,
            check.stderr.trim()
        ));
    }
    if code != 200 {
        let first = check.stderr.lines().next().unwrap_or("");
        if let Some((_, ours)) = RECORDING_ARTEFACTS.iter().find(|(a, _)| *a == id) {
            if first == *ours {
                score.excluded.push(format!("{id}: recorded {msg:?}"));
            } else {
                score.misses.push(format!(
                    "{id}: message: want (ours, pinned) {ours:?}, got {first:?}"
                ));
                score.messages.1 += 1;
            }
            return;
        }
        score.messages.1 += 1;
        if first == msg {
            score.messages.0 += 1;
        } else {
            score
                .misses
                .push(format!("{id}: message: want {msg:?}, got {first:?}"));
        }
        return;
    }
    let Some(recorded) = case["filters"].as_object() else {
        return;
    };
    let ours: BTreeMap<String, Vec<FilterRule>> = if check.code == 0 {
        let out = policy_filter(policy, &topo);
        serde_json::from_str(&out.stdout).unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    for (node, theirs) in recorded {
        score.filters.1 += 1;
        let theirs = match recorded_rules(theirs) {
            Ok(t) => t,
            Err(e) => {
                score.misses.push(format!("{id}: node {node}: {e}"));
                continue;
            }
        };
        if check.code != 0 {
            score
                .misses
                .push(format!("{id}: node {node}: no filter (policy refused)"));
            continue;
        }
        let o = ours.get(node).cloned().unwrap_or_default();
        match compare(&o, &theirs) {
            None => score.filters.0 += 1,
            Some(d) => score.misses.push(format!("{id}: node {node}: {d}")),
        }
    }
}

#[test]
fn engine_agrees_with_recorded_tailscale_answers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tailscale-parity");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/tailscale-parity")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no recorded answers in {}",
        dir.display()
    );
    let only = std::env::var("PARITY_FILTER").unwrap_or_default();
    let mut score = Score::default();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read corpus");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).expect("corpus line is JSON");
            if !case["id"].as_str().unwrap_or("").contains(&only) {
                continue;
            }
            run_case(&case, &mut score);
        }
    }
    let (v, m, fl) = (score.verdicts, score.messages, score.filters);
    println!(
        "parity over {} recorded cases: verdicts {}/{} ({:.2}%), messages {}/{} ({:.2}%), filters {}/{} nodes ({:.2}%)",
        score.cases,
        v.0,
        v.1,
        pct(v.0, v.1),
        m.0,
        m.1,
        pct(m.0, m.1),
        fl.0,
        fl.1,
        pct(fl.0, fl.1)
    );
    for e in &score.excluded {
        println!("  excluded from the message score (recording artefact): {e}");
    }
    let verbose = std::env::var_os("PARITY_VERBOSE").is_some();
    for miss in score
        .misses
        .iter()
        .take(if verbose { usize::MAX } else { 20 })
    {
        println!("  {miss}");
    }
    if !only.is_empty() {
        return;
    }
    let misses = [v.1 - v.0, m.1 - m.0, fl.1 - fl.0];
    let floors = [MAX_VERDICT_MISSES, MAX_MESSAGE_MISSES, MAX_FILTER_MISSES];
    assert!(
        misses.iter().zip(floors).all(|(&n, max)| n <= max),
        "parity regressed (floors: {MAX_VERDICT_MISSES} verdict, {MAX_MESSAGE_MISSES} message, {MAX_FILTER_MISSES} filter misses):\n{}",
        score.misses.join("\n")
    );
}
