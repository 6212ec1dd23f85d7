//! What the compiler's integration tests share (each test binary includes it as `mod common`;
//! not every binary uses every helper).
#![allow(dead_code)]

use std::collections::BTreeMap;

use tsk8s::build::{self, Input};
use tsk8s::emit::Tree;

/// Build `spec` (as `tailnet.kdl`) with `lock` (as `tailnet.lock`) and the committed secret
/// `sources`, in memory.
pub fn build_with(
    spec: &str,
    lock: Option<&str>,
    sources: BTreeMap<String, Vec<u8>>,
) -> Result<Tree, build::Failure> {
    build::build(&Input {
        spec_file: "tailnet.kdl",
        spec,
        lock_file: "tailnet.lock",
        lock,
        sources,
    })
}

/// The files of `tree` under `prefix` as one text: `=== <path>` then the file, each ending in
/// a newline (what the snapshots pin).
pub fn render_tree(tree: &Tree, prefix: &str) -> String {
    let mut s = String::new();
    for (path, bytes) in tree.range(prefix.to_string()..) {
        if !path.starts_with(prefix) {
            break;
        }
        s.push_str(&format!("=== {path}\n"));
        s.push_str(&String::from_utf8_lossy(bytes));
        if !s.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}
