//! `cargo bench -p tsk8s-kdl`: MB/s of `parse_fast` and of `kdl::KdlDocument::parse_v2` on a
//! generated ~1 MB spec and a ~1 MB lock file.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use kdl::KdlDocument;
use tsk8s_kdl::parse_fast;

/// A spec of `tailnet`, then groups, tags, devices, clusters and ACLs until `target` bytes.
fn spec(target: usize) -> String {
    let mut s = String::from("tailnet \"bench\" domain=\"bench.example\"\n");
    let mut i = 0;
    while s.len() < target {
        let _ = write!(
            s,
            "group \"team{i}\" {{ member \"u{i}@bench.example\"; }}\n\
             tag \"app{i}\" owner=\"group:team{i}\"\n\
             device \"laptop{i}\" user=\"u{i}@bench.example\" public-key=\"abc+/==\"\n\
             cluster \"c{i}\" endpoint=\"wg.c{i}.bench.example\" image=\"ghcr.io/bench/tsk8s-runtime:1.0.0\" {{\n\
             \x20   proxy \"c{i}-p0\" service=\"ns{i}/svc{i}\" port=8000 tag=\"app{i}\"\n\
             \x20   proxy \"c{i}-p1\" service=\"ns{i}/db{i}\" port=5432 tag=\"app{i}\" {{\n\
             \x20       port 5432 protocol=\"tcp\"\n\
             \x20   }}\n\
             \x20   subnet-router \"c{i}-r\" route=\"10.{}.{}.0/24\" tag=\"app{i}\"\n\
             }}\n\
             acl {{\n\
             \x20   accept src=\"group:team{i}\" dst=\"tag:app{i}:*\"\n\
             \x20   // a comment\n\
             \x20   accept src=\"group:team{i}\" {{ dst \"10.{}.{}.0/24:443\" \"tag:app{i}:8000\"; }}\n\
             }}\n",
            (i / 256) % 256,
            i % 256,
            (i / 256) % 256,
            i % 256,
        );
        i += 1;
    }
    s
}

/// A lock file in `lockfile::render`'s format until `target` bytes.
fn lock(target: usize) -> String {
    let mut s = String::from(
        "// tailnet.lock: written by `tsk8s lock`. Commit it with tailnet.kdl; do not edit by hand.\n\
         // Entries never change once assigned; removed nodes stay as tombstones so their\n\
         // addresses are never reused.\nversion 1\n",
    );
    let mut i = 0u32;
    while s.len() < target {
        let (a, b) = (i / 250, i % 250 + 1);
        let _ = writeln!(
            s,
            "device \"laptop{i}\" ipv4=\"100.64.{a}.{b}\" ipv6=\"fd7a:115c:a1e0::6440:{i:x}\""
        );
        let _ = writeln!(
            s,
            "node \"svc{i}\" cluster=\"c{}\" ipv4=\"100.65.{a}.{b}\" ipv6=\"fd7a:115c:a1e0::6441:{i:x}\" port={} public-key=\"StX84he8ZmCwAOtrrs66u4RzSvjlvVqs6Vjf7G4NHRk=\"",
            i % 7,
            30000 + i % 20000
        );
        if i.is_multiple_of(10) {
            let _ = writeln!(
                s,
                "tombstone \"old{i}\" cluster=\"c1\" ipv4=\"100.66.{a}.{b}\" ipv6=\"fd7a:115c:a1e0::6442:{i:x}\" port=41641"
            );
        }
        i += 1;
    }
    s
}

/// Best-of throughput in MB/s of `f` (timing excludes dropping its result, which `f` returns),
/// and of `f` plus the drop; at least `min_runs` runs and at least `budget` of time.
fn mbps<T>(text: &str, min_runs: usize, budget: Duration, f: impl Fn(&str) -> T) -> (f64, f64) {
    let (mut best, mut best_with_drop) = (Duration::MAX, Duration::MAX);
    let started = Instant::now();
    let mut runs = 0;
    while runs < min_runs || started.elapsed() < budget {
        let t = Instant::now();
        let out = black_box(f(black_box(text)));
        let parsed = t.elapsed();
        drop(out);
        best = best.min(parsed);
        best_with_drop = best_with_drop.min(t.elapsed());
        runs += 1;
    }
    let rate = |d: Duration| text.len() as f64 / 1e6 / d.as_secs_f64();
    (rate(best), rate(best_with_drop))
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments are ignored.
    for (name, text) in [("spec", spec(1_000_000)), ("lock", lock(1_000_000))] {
        let fast = parse_fast(&text).expect("generated input takes the fast path");
        let slow = KdlDocument::parse_v2(&text).expect("generated input is valid KDL");
        assert_eq!(fast.nodes().len(), slow.nodes().len());
        assert_eq!(fast.span(), slow.span());
        drop(slow);
        let (f, fd) = mbps(&text, 10, Duration::from_secs(3), |t| {
            parse_fast(t).expect("fast path")
        });
        // Floor: just building a document of this shape (cloning the result) and dropping it.
        let (c, cd) = mbps(&text, 10, Duration::from_secs(1), |_| fast.clone());
        let (s, sd) = mbps(&text, 2, Duration::ZERO, |t| {
            KdlDocument::parse_v2(t).expect("valid")
        });
        println!(
            "{name}: {:.2} MB, {} lines, {} top-level nodes",
            text.len() as f64 / 1e6,
            text.lines().count(),
            fast.nodes().len()
        );
        println!("  parse_fast  {f:7.1} MB/s  ({fd:6.1} MB/s including drop)");
        println!(
            "  parse_v2    {s:7.2} MB/s  ({sd:6.2} MB/s including drop)  -> fast is {:.0}x",
            f / s
        );
        println!(
            "  (floor: cloning the resulting document {c:.1} MB/s, {cd:.1} MB/s including drop)"
        );
    }
}
