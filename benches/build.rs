//! Compiler benchmark (not a test): generated specs of 10, 100 and 1,000 clusters × 10
//! exposures, in two shapes:
//!
//! - `own`: each team reaches its own cluster only (every cluster has few peers);
//! - `cross`: rules that cross clusters as in real tailnets — a monitoring group reaching a tag
//!   on every cluster, a tag in every cluster reaching a database tag in every cluster, egress
//!   nodes reaching every member's devices (`autogroup:member`), per-user rules; about 5 rules
//!   per cluster, ~300 users and ~500 devices at 1,000 clusters.
//!
//! For each shape and size it writes the spec and its lock to a temp dir, runs the release
//! `tsk8s build` as a child process, and reports wall time and peak RSS (from wait4's
//! rusage), the output's bytes and its largest Kubernetes object file (bytes and path).
//!
//! Run: `cargo bench --bench build` (builds the release binary first).
//! Besides the build it measures, per size, the access matrix (in process) and `tsk8s diff` of
//! a one-rule change against the built tree (`--base-dir`, child process, best of the runs).
//!
//! `TSK8S_BENCH_SHAPES=own,cross` picks shapes; `TSK8S_BENCH_SIZES=10,100` picks sizes
//! (default 10, 100, 1000 for `own`; 10, 100 for `cross` unless TSK8S_BENCH_SIZES is set:
//! its 1,000 is large); `TSK8S_BENCH_RUNS` the runs per size (default 3, best reported).

mod common;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

/// `own`: every team reaches its own cluster only.
fn spec(clusters: usize) -> String {
    let mut s = String::from("tailnet \"bench\" domain=\"bench.example\"\n");
    for c in 0..clusters {
        let _ = writeln!(s, "group \"team{c}\" {{ member \"u{c}@bench.example\"; }}");
        let _ = writeln!(s, "tag \"app{c}\" owner=\"group:team{c}\"");
        // A stand-in public key; devices keep their private keys.
        let _ = writeln!(
            s,
            "device \"laptop{c}\" user=\"u{c}@bench.example\" public-key=\"{}\"",
            pubkey(c as u32)
        );
    }
    for c in 0..clusters {
        let _ = writeln!(
            s,
            "cluster \"c{c}\" publish=\"load-balancer\" endpoint=\"{{node}}.wg.c{c}.bench.example\" image=\"ghcr.io/bench/tsk8s-runtime:1.0.0\" {{"
        );
        app_exposures(&mut s, c, 6);
        let _ = writeln!(
            s,
            "    egress \"c{c}-e\" target=\"laptop{c}\" port=2222 tag=\"app{c}\""
        );
        let _ = writeln!(
            s,
            "    proxy \"c{c}-db\" service=\"data/db\" port=5432 tag=\"app{c}\""
        );
        s.push_str("}\n");
    }
    s.push_str("acl {\n");
    for c in 0..clusters {
        let _ = writeln!(s, "    accept src=\"group:team{c}\" dst=\"tag:app{c}:*\"");
        let _ = writeln!(
            s,
            "    accept src=\"tag:app{c}\" dst=\"u{c}@bench.example:2222\""
        );
    }
    s.push_str("}\n");
    for c in 0..clusters {
        let _ = writeln!(
            s,
            "test src=\"u{c}@bench.example\" accept=\"tag:app{c}:8000\""
        );
    }
    s
}

/// `cross`: rules that cross clusters (see the module doc). Per cluster: 10 exposures (a web
/// proxy tagged `web`, a database proxy tagged `db`, a metrics proxy tagged `metrics`, three
/// app proxies, a sidecar, a subnet router, an egress to a member's device tagged `egress`, a
/// second egress), and five rules: its team to its app tag, its app tag to a user's devices,
/// one user to its app tag, one user to every database, its team to every web proxy. Three
/// rules for all clusters: monitoring to every metrics proxy, every web proxy to every
/// database (`tag:web` → `tag:db`), every egress to every member's device.
fn cross_spec(clusters: usize) -> String {
    let users = (clusters * 3 / 10).max(10);
    let devices = (clusters / 2).max(10);
    let mut s = String::from("tailnet \"bench\" domain=\"bench.example\"\n");
    for u in 0..users {
        let _ = writeln!(s, "user \"u{u}@bench.example\"");
    }
    s.push_str("group \"monitoring\" {\n");
    for u in 0..users.min(10) {
        let _ = writeln!(s, "    member \"u{u}@bench.example\"");
    }
    s.push_str("}\n");
    for t in ["web", "db", "metrics", "egress"] {
        let _ = writeln!(s, "tag \"{t}\" owner=\"group:monitoring\"");
    }
    for c in 0..clusters {
        let _ = writeln!(
            s,
            "group \"team{c}\" {{ member \"u{}@bench.example\" \"u{}@bench.example\"; }}",
            c % users,
            (c + 1) % users
        );
        let _ = writeln!(s, "tag \"app{c}\" owner=\"group:team{c}\"");
    }
    for d in 0..devices {
        let _ = writeln!(
            s,
            "device \"d{d}\" user=\"u{}@bench.example\" public-key=\"{}\"",
            d % users,
            pubkey(d as u32)
        );
    }
    for c in 0..clusters {
        let _ = writeln!(
            s,
            "cluster \"c{c}\" endpoint=\"wg.c{c}.bench.example\" publish=\"node-port\" image=\"ghcr.io/bench/tsk8s-runtime:1.0.0\" {{"
        );
        let _ = writeln!(
            s,
            "    proxy \"c{c}-web\" service=\"shop/web\" port=443 tag=\"web\""
        );
        let _ = writeln!(
            s,
            "    proxy \"c{c}-db\" service=\"data/db\" port=5432 tag=\"db\""
        );
        let _ = writeln!(
            s,
            "    proxy \"c{c}-metrics\" service=\"mon/node-exporter\" port=9100 tag=\"metrics\""
        );
        app_exposures(&mut s, c, 3);
        let _ = writeln!(
            s,
            "    egress \"c{c}-e\" target=\"d{}\" port=2222 tag=\"egress\"",
            c % devices
        );
        let _ = writeln!(
            s,
            "    egress \"c{c}-e2\" target=\"d{}\" port=2223 tag=\"app{c}\"",
            (c + 1) % devices
        );
        s.push_str("}\n");
    }
    s.push_str("acl {\n");
    s.push_str("    accept src=\"group:monitoring\" dst=\"tag:metrics:9100\"\n");
    s.push_str("    accept src=\"tag:web\" dst=\"tag:db:5432\"\n");
    s.push_str("    accept src=\"tag:egress\" dst=\"autogroup:member:22\"\n");
    for c in 0..clusters {
        let _ = writeln!(s, "    accept src=\"group:team{c}\" dst=\"tag:app{c}:*\"");
        let _ = writeln!(
            s,
            "    accept src=\"tag:app{c}\" dst=\"u{}@bench.example:22\"",
            (c + 1) % users
        );
        let _ = writeln!(
            s,
            "    accept src=\"u{}@bench.example\" dst=\"tag:app{c}:8000\"",
            (c * 7 + 3) % users
        );
        let _ = writeln!(
            s,
            "    accept src=\"u{}@bench.example\" dst=\"tag:db:5432\"",
            (c * 11 + 5) % users
        );
        let _ = writeln!(s, "    accept src=\"group:team{c}\" dst=\"tag:web:443\"");
    }
    s.push_str("}\n");
    for c in 0..clusters.min(100) {
        let _ = writeln!(
            s,
            "test src=\"u{}@bench.example\" accept=\"tag:app{c}:8000\"",
            (c * 7 + 3) % users
        );
    }
    s
}

/// Cluster `c`'s team exposures, tagged `app{c}`: `proxies` app proxies, a sidecar, a subnet
/// router.
fn app_exposures(s: &mut String, c: usize, proxies: usize) {
    for p in 0..proxies {
        let _ = writeln!(
            s,
            "    proxy \"c{c}-p{p}\" service=\"ns{p}/svc{p}\" port={} tag=\"app{c}\"",
            8000 + p
        );
    }
    let _ = writeln!(
        s,
        "    sidecar \"c{c}-side\" workload=\"shop/web{c}\" port=8080 tag=\"app{c}\""
    );
    let _ = writeln!(
        s,
        "    subnet-router \"c{c}-r\" route=\"10.{}.{}.0/24\" tag=\"app{c}\"",
        c / 256,
        c % 256
    );
}

fn pubkey(n: u32) -> String {
    use base64::Engine;
    let mut b = [7u8; 32];
    b[4..8].copy_from_slice(&n.to_le_bytes()); // not byte 0: x25519 clamps its low bits
    let secret = x25519_dalek::StaticSecret::from(b);
    base64::engine::general_purpose::STANDARD
        .encode(x25519_dalek::PublicKey::from(&secret).as_bytes())
}

fn lock(spec_text: &str) -> String {
    let front =
        tsk8s::build::front("tailnet.kdl", spec_text).unwrap_or_else(|f| panic!("{}", f.text));
    let mut n = 1_000_000u32;
    let mut keygen = move || {
        n += 1;
        let k = pubkey(n);
        (k.clone(), k)
    };
    let upd = tsk8s::lockfile::update(
        &front.tailnet,
        &Default::default(),
        &Default::default(),
        &mut keygen,
    )
    .unwrap();
    tsk8s::lockfile::render(&upd.lock)
}

/// An in-memory build of `spec` with `lock` (no secret sources), for the phases measured in
/// process.
fn input<'a>(spec: &'a str, lock: &'a str) -> tsk8s::build::Input<'a> {
    tsk8s::build::Input {
        spec_file: "tailnet.kdl",
        spec,
        lock_file: "tailnet.lock",
        lock: Some(lock),
        sources: Default::default(),
    }
}

/// Run a child; return (wall seconds, peak RSS in MiB, exit code).
fn measure(cmd: &mut Command) -> (f64, f64, i32) {
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    common::wait_measured(child, start)
}

fn main() {
    // TSK8S_BENCH_BIN=PATH measures another binary (e.g. a copy built from an older commit).
    let bin = std::env::var_os("TSK8S_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(common::release_bin);
    // Every run writes a fresh output dir, and nothing is deleted until the end of a shape:
    // on ext4 without a journal, creating files right after deleting many scans past the
    // recently deleted inodes, which would measure the previous run's cleanup.
    // TSK8S_BENCH_TMP picks the filesystem (e.g. /dev/shm to leave the disk out).
    let base = std::env::var_os("TSK8S_BENCH_TMP").map(std::path::PathBuf::from);
    // TSK8S_BENCH_KEEP=DIR keeps the inputs there (for profiling:
    // `perf record tsk8s build DIR/<shape>-<n>/tailnet.kdl -o DIR/out`).
    let sizes_env: Option<Vec<usize>> = std::env::var("TSK8S_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let shapes: Vec<String> = std::env::var("TSK8S_BENCH_SHAPES")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_else(|_| vec!["own".into(), "cross".into()]);
    let runs: usize = std::env::var("TSK8S_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    for shape in &shapes {
        let (generate, default_sizes): (fn(usize) -> String, Vec<usize>) = match shape.as_str() {
            "own" => (spec, vec![10, 100, 1000]),
            "cross" => (cross_spec, vec![10, 100]),
            other => panic!("unknown shape {other:?} (own, cross)"),
        };
        println!("\nshape: {shape}");
        println!(
            "{:>9} {:>9} {:>6} {:>9} {:>8} {:>10} {:>12} {:>9} {:>11} {:>12}  largest object file",
            "clusters",
            "nodes",
            "rules",
            "spec KiB",
            "files",
            "build s",
            "ms/1k nodes",
            "RSS MiB",
            "output MiB",
            "largest KiB"
        );
        let mut keep_alive = Vec::new();
        for &clusters in sizes_env.as_ref().unwrap_or(&default_sizes) {
            let tmp = match &base {
                Some(b) => tempfile::tempdir_in(b).unwrap(),
                None => tempfile::tempdir().unwrap(),
            };
            let keep = std::env::var_os("TSK8S_BENCH_KEEP")
                .map(|d| std::path::PathBuf::from(d).join(format!("{shape}-{clusters}")));
            let dir_path = match &keep {
                Some(k) => {
                    std::fs::create_dir_all(k).unwrap();
                    k.clone()
                }
                None => tmp.path().to_path_buf(),
            };
            let dir = &dir_path;
            let text = generate(clusters);
            let rules = text
                .lines()
                .filter(|l| l.trim_start().starts_with("accept "))
                .count();
            std::fs::write(dir.join("tailnet.kdl"), &text).unwrap();
            std::fs::write(dir.join("tailnet.lock"), lock(&text)).unwrap();
            let mut out = dir.join("out");
            let mut best = (f64::MAX, 0.0);
            for run in 0..runs {
                out = dir.join(format!("out{run}"));
                let (wall, rss, code) = measure(
                    Command::new(&bin)
                        .arg("build")
                        .arg(dir.join("tailnet.kdl"))
                        .arg("-o")
                        .arg(&out)
                        .stderr(std::process::Stdio::null()),
                );
                if code != 0 {
                    let o = Command::new(&bin)
                        .arg("build")
                        .arg(dir.join("tailnet.kdl"))
                        .arg("-o")
                        .arg(&out)
                        .output()
                        .expect("spawn");
                    panic!("build failed:\n{}", String::from_utf8_lossy(&o.stderr));
                }
                if wall < best.0 {
                    best = (wall, rss);
                }
            }
            let files = tsk8s::cli::output::list_files(&out).unwrap();
            let mut total = 0u64;
            let mut largest = (0u64, String::new());
            for f in &files {
                let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
                total += len;
                // Every `.yaml` in the tree holds Kubernetes objects (or a kustomization).
                if f.ends_with(".yaml") && len > largest.0 {
                    largest = (len, f.clone());
                }
            }
            {
                // The access matrix (policy flows and their WireGuard paths), in process.
                let lock_text = std::fs::read_to_string(dir.join("tailnet.lock")).unwrap();
                let input = input(&text, &lock_text);
                let l = tsk8s::build::load(&input).expect("load");
                let t = Instant::now();
                let netw = tsk8s::lower::net::build_net(&l.tailnet, &l.lock);
                let reach = tsk8s::lower::net::reach(&l.policy, &netw);
                let view = tsk8s::access::View::new(&l.tailnet, &l.lock, &l.policy, &netw, &reach);
                let m = view.matrix();
                let carried = m
                    .iter()
                    .filter(|(_, p)| matches!(p, Some(tsk8s::access::Path::Carried { .. })))
                    .count();
                eprintln!(
                    "  access matrix: {} flows ({carried} carried) in {:.3}s",
                    m.len(),
                    t.elapsed().as_secs_f64()
                );
            }
            {
                // `tsk8s diff` of a one-rule change against the tree just built (the whole
                // command: load, compile, read the base dir, object and access diff).
                let edited = dir.join("one-rule");
                std::fs::create_dir_all(&edited).unwrap();
                let changed = text.replacen(
                    "acl {\n",
                    "acl {\n    accept src=\"group:team0\" dst=\"tag:app1:443\"\n",
                    1,
                );
                assert_ne!(changed, text);
                std::fs::write(edited.join("tailnet.kdl"), &changed).unwrap();
                std::fs::copy(dir.join("tailnet.lock"), edited.join("tailnet.lock")).unwrap();
                let mut best_diff = (f64::MAX, 0.0, 0);
                for _ in 0..runs {
                    let (wall, rss, code) = measure(
                        Command::new(&bin)
                            .arg("diff")
                            .arg(edited.join("tailnet.kdl"))
                            .arg("--base-dir")
                            .arg(&out)
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null()),
                    );
                    if wall < best_diff.0 {
                        best_diff = (wall, rss, code);
                    }
                }
                // Exit 1: the trees differ (0 or 2 would mean the bench measured nothing).
                assert_eq!(best_diff.2, 1, "tsk8s diff exit code");
                eprintln!(
                    "  diff (one rule): {:.3}s, peak RSS {:.1} MiB",
                    best_diff.0, best_diff.1
                );
                if std::env::var_os("TSK8S_BENCH_PHASES").is_some() {
                    // The diff's own parts, in process.
                    let old_tree = tsk8s::cli::output::read_tree(&out).unwrap();
                    let lock_text = std::fs::read_to_string(dir.join("tailnet.lock")).unwrap();
                    let input = input(&changed, &lock_text);
                    let t = Instant::now();
                    let new_tree = tsk8s::build::build(&input).expect("build");
                    let build = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let _ = tsk8s_diff::diff_trees(&old_tree, &new_tree).unwrap();
                    let objects = t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let opts = tsk8s_diff::Options {
                        access: true,
                        tests: None,
                    };
                    let r = tsk8s_diff::diff_trees_with(&old_tree, &new_tree, &opts).unwrap();
                    let with_access = t.elapsed().as_secs_f64();
                    let a = r.access.unwrap_or_default();
                    eprintln!(
                        "  diff in-process: build {build:.3}s, objects {objects:.3}s, objects + access {with_access:.3}s ({} gained, {} lost)",
                        a.gained.len(),
                        a.lost.len()
                    );
                }
            }
            if std::env::var_os("TSK8S_BENCH_PHASES").is_some() {
                let lock_text = std::fs::read_to_string(dir.join("tailnet.lock")).unwrap();
                let input = input(&text, &lock_text);
                let t = Instant::now();
                let _ = tsk8s::build::front("tailnet.kdl", &text);
                let front = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let _ = tsk8s::build::load(&input);
                let load = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let _ = tsk8s::build::build(&input);
                let build = t.elapsed().as_secs_f64();
                eprintln!("  in-process: front {front:.3}s, load {load:.3}s, build {build:.3}s");
            }
            println!(
                "{:>9} {:>9} {:>6} {:>9} {:>8} {:>10.3} {:>12.1} {:>9.1} {:>11.1} {:>12.1}  {}",
                clusters,
                clusters * 10,
                rules,
                text.len() / 1024,
                files.len(),
                best.0,
                best.0 * 1e6 / (clusters * 10) as f64,
                best.1,
                total as f64 / (1024.0 * 1024.0),
                largest.0 as f64 / 1024.0,
                largest.1
            );
            keep_alive.push(tmp);
        }
    }
}
