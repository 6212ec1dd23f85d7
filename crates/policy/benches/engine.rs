//! Engine timings (not a test): `cargo bench -p tsk8s-policy --bench engine`.
//! 5,000 rules × 1,000 nodes filter compile; 10,000 tests; `Matcher::allows` ns/op.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use tsk8s_policy::acltest::run_tests;
use tsk8s_policy::compile::{Compiled, compile_all};
use tsk8s_policy::matcher::Matcher;
use tsk8s_policy::policy::Policy;
use tsk8s_policy::topology::Topology;

const NODES: usize = 1000;
const RULES: usize = 5000;
const TAGS: usize = 100;
const USERS: usize = 200;
const TESTS: usize = 10_000;

fn v4(i: usize) -> String {
    format!("100.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255)
}

fn topology() -> String {
    let mut users = Vec::new();
    for u in 0..USERS {
        users.push(format!(
            r#"{{"name": "u{u}", "email": "u{u}@example.com"}}"#
        ));
    }
    let mut nodes = Vec::new();
    for n in 0..NODES {
        let ip4 = v4(n + 1);
        let ip6 = format!("fd7a:115c:a1e0::{:x}", n + 1);
        let (user, tags) = if n % 2 == 0 {
            ("null".to_string(), format!(r#"["tag:t{}"]"#, n % TAGS))
        } else {
            (format!(r#""u{}@example.com""#, n % USERS), "[]".to_string())
        };
        let routes = if n % 100 == 0 {
            format!(r#"["10.{}.0.0/16"]"#, n / 100)
        } else {
            "[]".into()
        };
        nodes.push(format!(
            r#""n{n}": {{"ipv4": "{ip4}", "ipv6": "{ip6}", "user": {user}, "tags": {tags}, "routable_ips": {routes}, "approved_routes": {routes}}}"#
        ));
    }
    format!(
        "{{\"users\": [{}], \"nodes\": {{{}}}}}",
        users.join(","),
        nodes.join(",")
    )
}

fn policy(tests: usize) -> String {
    let mut p = String::from("{\"groups\": {");
    for g in 0..20 {
        let members: Vec<String> = (0..10)
            .map(|k| format!("\"u{}@example.com\"", (g * 10 + k) % USERS))
            .collect();
        let _ = write!(
            p,
            "{}\"group:g{g}\": [{}]",
            if g > 0 { "," } else { "" },
            members.join(",")
        );
    }
    p.push_str("}, \"tagOwners\": {");
    for t in 0..TAGS {
        let _ = write!(
            p,
            "{}\"tag:t{t}\": [\"u0@example.com\"]",
            if t > 0 { "," } else { "" }
        );
    }
    p.push_str("}, \"acls\": [");
    for r in 0..RULES {
        let src = match r % 4 {
            0 => format!("group:g{}", r % 20),
            1 => format!("tag:t{}", r % TAGS),
            2 => format!("u{}@example.com", r % USERS),
            _ => v4(r % NODES + 1),
        };
        let dst = match r % 5 {
            0 => format!("tag:t{}:{}", (r * 7) % TAGS, 1000 + r % 1000),
            1 => format!("10.{}.0.0/16:{}", (r / 5) % 10, 22),
            2 => format!("u{}@example.com:80,443", (r * 3) % USERS),
            3 => format!("tag:t{}:8000-8100", (r * 11) % TAGS),
            _ => format!("{}:{}", v4((r * 13) % NODES + 1), 5432),
        };
        let _ = write!(
            p,
            "{}{{\"action\": \"accept\", \"src\": [\"{src}\"], \"dst\": [\"{dst}\"]}}",
            if r > 0 { "," } else { "" }
        );
    }
    p.push_str("], \"tests\": [");
    for t in 0..tests {
        let src = format!("tag:t{}", t % TAGS);
        let dst = format!("tag:t{}:{}", (t * 7) % TAGS, 1000 + t % 1000);
        let _ = write!(
            p,
            "{}{{\"src\": \"{src}\", \"accept\": [\"{dst}\"], \"deny\": [\"{}:1\"]}}",
            if t > 0 { "," } else { "" },
            v4(t % NODES + 1)
        );
    }
    p.push_str("]}");
    p
}

fn main() {
    let topo_text = topology();
    let topo = Topology::parse(&topo_text).expect("topology");

    let text = policy(0);
    let t = Instant::now();
    let pol = Policy::parse(&text).expect("policy");
    println!("parse+validate {RULES} rules: {:?}", t.elapsed());

    let t = Instant::now();
    let all = compile_all(&pol, &topo);
    let el = t.elapsed();
    let total: usize = all.values().map(Vec::len).sum();
    println!("compile_all {RULES} rules x {NODES} nodes: {el:?} ({total} rules emitted)");

    let text = policy(TESTS);
    let pol_t = Policy::parse(&text).expect("policy with tests");
    let t = Instant::now();
    let report = run_tests(&pol_t, &topo);
    println!(
        "run_tests {TESTS} tests: {:?} ({} failed entries)",
        t.elapsed(),
        report.failed_entries
    );

    // Matcher over the tailnet-wide rule set (the biggest filter there is).
    let global = Compiled::new(&pol, &topo).global_rules();
    let t = Instant::now();
    let m = Matcher::new(&global);
    println!(
        "Matcher::new over {} rules: {:?}",
        global.len(),
        t.elapsed()
    );
    let probes: Vec<(IpAddr, IpAddr, u16)> = (0..4096)
        .map(|i| {
            (
                v4(i * 7 % NODES + 1)
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                v4(i * 13 % NODES + 1)
                    .parse()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0])),
                [22u16, 80, 443, 5432, 1500, 8050][i % 6],
            )
        })
        .collect();
    let iters = 2_000_000;
    let t = Instant::now();
    let mut hits = 0u64;
    for i in 0..iters {
        let (s, d, p) = probes[i % probes.len()];
        if m.allows(black_box(s), black_box(d), 6, p) {
            hits += 1;
        }
    }
    let el = t.elapsed();
    println!(
        "Matcher::allows: {:.0} ns/op ({hits} of {iters} allowed)",
        el.as_nanos() as f64 / iters as f64
    );
}
