//! Compiler benchmark (not a test): generated specs of 10, 100 and 1,000 clusters × 10
//! exposures. For each size it writes the spec and its lock to a temp dir, runs the release
//! `tsk8s build` as a child process, and reports wall time and peak RSS (from wait4's rusage).
//!
//! Run: `cargo bench --bench build` (builds the release binary first).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

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
            "cluster \"c{c}\" endpoint=\"{{node}}.wg.c{c}.bench.example\" image=\"ghcr.io/bench/tsk8s-runtime:1.0.0\" {{"
        );
        for p in 0..6 {
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

/// Run a child; return (wall seconds, peak RSS in MiB, exit code).
fn measure(cmd: &mut Command) -> (f64, f64, i32) {
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed().as_secs_f64();
    (
        wall,
        ru.ru_maxrss as f64 / 1024.0,
        libc::WEXITSTATUS(status),
    )
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("cargo")
        .args(["build", "--release", "--bin", "tsk8s"])
        .current_dir(root)
        .status()
        .expect("cargo");
    assert!(st.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("release/tsk8s");
    println!(
        "{:>9} {:>9} {:>10} {:>10} {:>12} {:>14} {:>12}",
        "clusters", "nodes", "spec KiB", "files", "build s", "ms/1k nodes", "peak RSS MiB"
    );
    // Every run writes a fresh output dir, and nothing is deleted until the end: on ext4
    // without a journal, creating files right after deleting many scans past the recently
    // deleted inodes, which would measure the previous run's cleanup. TSK8S_BENCH_TMP picks
    // the filesystem (e.g. /dev/shm to leave the disk out).
    let base = std::env::var_os("TSK8S_BENCH_TMP").map(std::path::PathBuf::from);
    let mut keep_alive = Vec::new();
    // TSK8S_BENCH_SIZES=1000 runs one size; TSK8S_BENCH_KEEP=DIR keeps the inputs there
    // (for profiling: `perf record tsk8s build DIR/tailnet.kdl -o DIR/out`).
    let sizes: Vec<usize> = std::env::var("TSK8S_BENCH_SIZES")
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![10, 100, 1000]);
    for clusters in sizes {
        let tmp = match &base {
            Some(b) => tempfile::tempdir_in(b).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let keep = std::env::var_os("TSK8S_BENCH_KEEP")
            .map(|d| std::path::PathBuf::from(d).join(clusters.to_string()));
        let dir_path = match &keep {
            Some(k) => {
                std::fs::create_dir_all(k).unwrap();
                k.clone()
            }
            None => tmp.path().to_path_buf(),
        };
        let dir = &dir_path;
        let text = spec(clusters);
        std::fs::write(dir.join("tailnet.kdl"), &text).unwrap();
        std::fs::write(dir.join("tailnet.lock"), lock(&text)).unwrap();
        let mut out = dir.join("out");
        let mut best = (f64::MAX, 0.0);
        for run in 0..3 {
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
        let files = tsk8s::cli::output::list_files(&out).unwrap().len();
        {
            // The access matrix (policy flows and their WireGuard paths), in process.
            let lock_text = std::fs::read_to_string(dir.join("tailnet.lock")).unwrap();
            let input = tsk8s::build::Input {
                spec_file: "tailnet.kdl",
                spec: &text,
                lock_file: "tailnet.lock",
                lock: Some(&lock_text),
                sources: Default::default(),
            };
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
        if std::env::var_os("TSK8S_BENCH_PHASES").is_some() {
            let lock_text = std::fs::read_to_string(dir.join("tailnet.lock")).unwrap();
            let input = tsk8s::build::Input {
                spec_file: "tailnet.kdl",
                spec: &text,
                lock_file: "tailnet.lock",
                lock: Some(&lock_text),
                sources: Default::default(),
            };
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
            "{:>9} {:>9} {:>10} {:>10} {:>12.3} {:>14.1} {:>12.1}",
            clusters,
            clusters * 10,
            text.len() / 1024,
            files,
            best.0,
            best.0 * 1e6 / (clusters * 10) as f64,
            best.1
        );
        keep_alive.push(tmp);
    }
}
