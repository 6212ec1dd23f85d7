//! Crash-safe output: `tsk8s build` is SIGKILLed at random points while it writes a large tree
//! (one cluster, 200 exposures). After every kill the output dir must hold exactly the complete
//! old tree or the complete new tree: never a partial tree, never a missing dir (once one
//! existed). The kill points come from a PRNG with a fixed seed, spread over the time one
//! whole build takes here.
//!
//! Concurrent builds into one dir take turns (the output lock): every one succeeds, none
//! leaves a temp dir behind, and the dir always holds one whole tree.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tsk8s");
const EXPOSURES: usize = 200;
const KILLS: usize = 40;

type Tree = BTreeMap<String, Vec<u8>>;

use tsk8s_test_support::Rng;

fn spec(image_tag: &str) -> String {
    let mut s = String::from(
        "tailnet \"bulk\" domain=\"bulk.example\"\n\
         group \"sre\" {\n    member \"alice@bulk.example\"\n}\n\
         tag \"web\" owner=\"group:sre\"\n\
         device \"alice-laptop\" user=\"alice@bulk.example\" public-key=\"5+xckeyTJiqAoa4VHxEMZncZon9+ESGIAPov5rj2owo=\"\n",
    );
    s.push_str(&format!(
        "cluster \"prod\" namespace=\"tailscale\" pod-cidr=\"10.244.0.0/16\" service-cidr=\"10.96.0.0/12\" publish=\"load-balancer\" endpoint=\"{{node}}.wg.prod.bulk.example\" image=\"ghcr.io/bulk/tsk8s-runtime:{image_tag}\" {{\n    secrets \"existing\"\n"
    ));
    for i in 0..EXPOSURES {
        s.push_str(&format!(
            "    proxy \"web-{i:03}\" service=\"apps/web-{i:03}\" port=80 tag=\"web\"\n"
        ));
    }
    s.push_str("}\nacl {\n    accept src=\"group:sre\" dst=\"tag:web:80\"\n}\n");
    s
}

fn read_tree(dir: &Path) -> Option<Tree> {
    tsk8s_test_support::read_tree(dir)
}

fn build(spec: &Path, out: &Path) {
    let o = Command::new(BIN)
        .arg("build")
        .arg(spec)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.status.success(),
        "build {} failed:\n{}",
        spec.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A short description of how a tree differs from the two allowed ones.
fn describe(got: &Tree, a: &Tree, b: &Tree) -> String {
    let diff = |x: &Tree| {
        let missing = x.keys().filter(|k| !got.contains_key(*k)).count();
        let extra = got.keys().filter(|k| !x.contains_key(*k)).count();
        let changed = x
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .count();
        format!("{missing} missing, {extra} extra, {changed} differing")
    };
    format!("vs old: {}; vs new: {}", diff(a), diff(b))
}

/// Two specs with the same nodes (so one lock serves both) whose every workload differs,
/// their reference trees (built into `ref-0`, `ref-1`), and how long one whole build takes.
fn two_specs(root: &Path) -> (Vec<PathBuf>, Vec<Tree>, Duration) {
    let dirs: Vec<PathBuf> = ["a", "b"].iter().map(|n| root.join(n)).collect();
    for (d, tag) in dirs.iter().zip(["1.0.0", "1.0.1"]) {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        fs::write(d.join("tailnet.kdl"), spec(tag)).unwrap_or_else(|e| panic!("{e}"));
    }
    let lock = Command::new(BIN)
        .arg("lock")
        .arg(dirs[0].join("tailnet.kdl"))
        .arg("--keys-dir")
        .arg(root.join("keys"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        lock.status.success(),
        "lock failed:\n{}",
        String::from_utf8_lossy(&lock.stderr)
    );
    fs::copy(dirs[0].join("tailnet.lock"), dirs[1].join("tailnet.lock"))
        .unwrap_or_else(|e| panic!("{e}"));
    let specs: Vec<PathBuf> = dirs.iter().map(|d| d.join("tailnet.kdl")).collect();

    let mut refs: Vec<Tree> = Vec::new();
    let mut full = Duration::ZERO;
    for (i, s) in specs.iter().enumerate() {
        let out = root.join(format!("ref-{i}"));
        let t0 = Instant::now();
        build(s, &out);
        full = full.max(t0.elapsed());
        refs.push(read_tree(&out).unwrap_or_default());
    }
    assert_ne!(refs[0], refs[1]);
    assert!(
        refs[0].len() > EXPOSURES,
        "expected a large tree, got {} files",
        refs[0].len()
    );
    (specs, refs, full)
}

#[test]
fn sigkill_during_build_leaves_old_or_new_tree() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path();
    let (specs, refs, full) = two_specs(root);
    let window_us = (full.as_micros() as u64).saturating_mul(6) / 5 + 1;
    eprintln!(
        "one build: {full:?}, {} files; killing within {window_us} µs",
        refs[0].len()
    );

    let out = root.join("out");
    let mut rng = Rng(0x7453_6b38_2d6b_696c); // "tSk8-kil"
    let mut current: Option<usize> = None; // which reference `out` holds
    let (mut saw_old, mut saw_new) = (0, 0);
    for round in 0..KILLS {
        let next = current.map_or(0, |c| 1 - c);
        let delay = Duration::from_micros(rng.next_u64() % window_us.max(1));
        let mut child = Command::new(BIN)
            .arg("build")
            .arg(&specs[next])
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let got = read_tree(&out);
        match (&got, current) {
            (None, None) => saw_old += 1,
            (None, Some(c)) => panic!(
                "round {round}: after SIGKILL at {delay:?} the output dir is missing (it held tree {c})"
            ),
            (Some(t), _) if *t == refs[next] => {
                saw_new += 1;
                current = Some(next);
            }
            (Some(t), Some(c)) if *t == refs[c] => saw_old += 1,
            (Some(t), _) => panic!(
                "round {round}: after SIGKILL at {delay:?} the output dir is neither the old nor the new tree ({} files; {})",
                t.len(),
                describe(t, current.map_or(&Tree::new(), |c| &refs[c]), &refs[next])
            ),
        }
    }
    eprintln!("{KILLS} kills: {saw_old} left the old tree, {saw_new} the new one");

    // A build that finds the tree up to date still removes what the killed ones left.
    if let Some(c) = current {
        build(&specs[c], &out);
        assert_eq!(read_tree(&out).as_ref(), Some(&refs[c]));
        assert_no_leftovers(root);
    }
    // A build after all those kills succeeds, gives the right tree, and leaves no leftovers.
    let last = current.map_or(0, |c| 1 - c);
    build(&specs[last], &out);
    assert_eq!(read_tree(&out).as_ref(), Some(&refs[last]));
    assert_no_leftovers(root);
}

fn assert_no_leftovers(root: &Path) {
    let leftovers: Vec<String> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out."))
        .collect();
    assert!(leftovers.is_empty(), "leftovers remain: {leftovers:?}");
}

/// Two builds of different specs started together into one dir, several rounds: both
/// succeed every time (the second waits for the first's lock), no temp dir is left behind,
/// and the dir holds one of the two whole trees.
#[test]
fn concurrent_builds_into_one_dir_take_turns() {
    const ROUNDS: usize = 8;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = tmp.path();
    let (specs, refs, _) = two_specs(root);
    let out = root.join("out");
    for round in 0..ROUNDS {
        // Alternate which spec starts first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let children: Vec<_> = order
            .iter()
            .map(|&i| {
                Command::new(BIN)
                    .arg("build")
                    .arg(&specs[i])
                    .arg("-o")
                    .arg(&out)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
            assert!(
                o.status.success(),
                "round {round}: a concurrent build failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let got = read_tree(&out).unwrap_or_else(|| panic!("round {round}: no output dir"));
        assert!(
            got == refs[0] || got == refs[1],
            "round {round}: the output dir is neither tree ({})",
            describe(&got, &refs[0], &refs[1])
        );
        assert_no_leftovers(root);
    }
}
