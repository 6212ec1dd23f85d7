//! Hostile-input benchmark (not a test): how long `tsk8s check` takes, how much memory and
//! how much stderr it uses, to reject generated bad specs:
//!
//! - 16 KiB, 64 KiB and 20 MiB of unknown properties on one line (`bad=1 bad=1 …`),
//! - a million lines of an unknown node,
//! - a 60 MiB spec with one syntax error at its end (the largest accepted size, rejected),
//! - under the node limit: 240,000 unknown nodes, 99 nodes of 9,999 unknown properties, and
//!   syntax errors at the end of 60 MiB of comments and of 240,000 valid nodes (parsed by
//!   `kdl` in a window),
//! - a 100 MiB spec (refused by its size before it is read).
//!
//! Each runs the release binary as a child; wall time and peak RSS come from wait4's rusage.
//! Run: `cargo bench --bench hostile` (builds the release binary first).

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// A valid spec (the README's example), the base of every case.
fn base() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("testdata/bad/spec/long-line/tailnet.kdl"))
        .expect("read the base spec");
    text.lines()
        .map(|l| {
            if l.starts_with("host \"office\"") {
                "host \"office\" \"192.168.10.0/24\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// A named generator of one spec.
type Case<'a> = (&'a str, Box<dyn Fn() -> String + 'a>);

/// Run a child; (wall seconds, peak RSS in MiB, exit code, stderr bytes).
fn measure(cmd: &mut Command) -> (f64, f64, i32, usize) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut n = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = err.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let (wall, rss, code) = common::wait_measured(child, start);
    let bytes = reader.join().unwrap_or(0);
    (wall, rss, code, bytes)
}

fn main() {
    let bin = common::release_bin();
    let base = base();
    let host = "host \"office\" \"192.168.10.0/24\"\n";
    let props = |n: usize| {
        let extra = " bad=1".repeat(n / 6);
        base.replace(
            host,
            &format!("host \"office\" \"192.168.10.0/24\"{extra}\n"),
        )
    };
    let cases: Vec<Case> = vec![
        (
            "16 KiB of bad properties, one line",
            Box::new(|| props(16 << 10)),
        ),
        (
            "64 KiB of bad properties, one line",
            Box::new(|| props(64 << 10)),
        ),
        (
            "20 MiB of bad properties, one line",
            Box::new(|| props(20 << 20)),
        ),
        (
            "1,000,000 lines of an unknown node",
            Box::new(|| {
                base.replace(
                    host,
                    &format!("{}{host}", "bogus \"x\"\n".repeat(1_000_000)),
                )
            }),
        ),
        (
            "60 MiB spec, one syntax error at the end",
            Box::new(|| {
                let line = "tag \"t\" owner=\"group:sre\"\n";
                let mut s = base.clone();
                s.push_str(&line.repeat((60 << 20) / line.len()));
                s.push_str("tag \"unclosed\n");
                s
            }),
        ),
        (
            "240,000 lines of an unknown node",
            Box::new(|| base.replace(host, &format!("{}{host}", "bogus \"x\"\n".repeat(240_000)))),
        ),
        (
            "99 nodes x 9,999 unknown properties",
            Box::new(|| {
                let nodes: String = (0..99)
                    .map(|i| format!("host \"h{i}\" \"10.0.0.1\"{}\n", " bad=1".repeat(9_999)))
                    .collect();
                base.replace(host, &format!("{nodes}{host}"))
            }),
        ),
        (
            "60 MiB of comments, then an unclosed string",
            Box::new(|| {
                let mut s = base.clone();
                s.push_str(&"// padding\n".repeat((60 << 20) / 11));
                s.push_str("tag \"unclosed\n");
                s
            }),
        ),
        (
            "240,000 valid nodes, then an unclosed string",
            Box::new(|| {
                let mut s = base.clone();
                s.push_str(&"tag \"t\" owner=\"group:sre\"\n".repeat(240_000));
                s.push_str("tag \"unclosed\n");
                s
            }),
        ),
        (
            "100 MiB spec (refused by size)",
            Box::new(|| {
                let mut s = base.clone();
                s.push_str(&"// padding\n".repeat((100 << 20) / 11));
                s
            }),
        ),
    ];
    println!(
        "{:<42} {:>10} {:>8} {:>10} {:>13} {:>5}",
        "input", "spec MiB", "time s", "peak MiB", "stderr bytes", "exit"
    );
    for (name, make) in &cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = make();
        std::fs::write(dir.path().join("tailnet.kdl"), &spec).expect("write spec");
        let (wall, rss, code, bytes) = measure(
            Command::new(&bin)
                .args(["check", "tailnet.kdl"])
                .current_dir(dir.path()),
        );
        println!(
            "{:<42} {:>10.2} {:>8.2} {:>10.1} {:>13} {:>5}",
            name,
            spec.len() as f64 / (1 << 20) as f64,
            wall,
            rss,
            bytes,
            code
        );
    }
}
