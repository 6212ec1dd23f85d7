//! What tsk8s's tests and benches share, so each concept has one owner there too:
//! [`Rng`] (the one seeded PRNG), [`should_run`] (the privileged-test gate), [`sh`], [`git`],
//! [`repo_root`], [`read_tree`], [`spec_dirs`] and deterministic WireGuard keys
//! ([`test_key`], [`test_keygen`]).
//!
//! Only tests, benches and fuzzers depend on this crate (as a dev-dependency).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one deterministic PRNG of the test suites (splitmix64): same seed, same sequence, on
/// every machine. Not for anything secret.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Test key pair `n`: the private key is `[n; 32]`; (private, public), base64. Deterministic,
/// so never a real key.
pub fn test_key(n: u8) -> (String, String) {
    use base64::Engine as _;
    let secret = x25519_dalek::StaticSecret::from([n; 32]);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(secret.to_bytes()), b64.encode(public.as_bytes()))
}

/// Test keys 1, 2, 3, … ([`test_key`]), as `lockfile::update` draws new keys.
pub fn test_keygen() -> impl FnMut() -> (String, String) {
    let mut n = 0u8;
    move || {
        n = n.wrapping_add(1);
        test_key(n)
    }
}

/// The gate of every test that needs root, namespaces or external binaries: `cannot_run` says
/// why it cannot run (or `None`). Returns false (and says why on stderr) when the test should be
/// skipped; panics instead when `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` (CI), so CI never passes a
/// test that did not run.
pub fn should_run(test: &str, cannot_run: Option<String>) -> bool {
    match cannot_run {
        None => true,
        Some(reason) => {
            if std::env::var("TSK8S_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("{test}: privileged test cannot run: {reason}");
            }
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "skipping {test}: {reason} (set TSK8S_REQUIRE_PRIVILEGED_TESTS=1 to fail instead)"
            );
            false
        }
    }
}

/// The repository's root directory (this crate is `crates/test-support` in it).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .expect("crates/test-support has two parents")
        .to_path_buf()
}

/// Run a command; panic with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `git` in `dir`; panic with its stderr when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("git: {e}"));
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, by `/`-separated relative path (`None` when `dir` does not exist).
pub fn read_tree(dir: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    if !dir.exists() {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.path().is_dir() {
                stack.push((e.path(), rel));
            } else {
                let b = std::fs::read(e.path()).unwrap_or_else(|err| panic!("{rel}: {err}"));
                out.insert(rel, b);
            }
        }
    }
    Some(out)
}

/// Every spec directory of the repository at `root`, sorted: `examples/`, then each
/// `examples/*/` and `testdata/specs/*/` holding a `tailnet.kdl`.
pub fn spec_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("examples")];
    for parent in ["examples", "testdata/specs"] {
        let Ok(rd) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        let mut sub: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("tailnet.kdl").is_file())
            .collect();
        sub.sort();
        dirs.extend(sub);
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_splitmix64() {
        // First outputs of splitmix64 seeded with 0 (the reference implementation's).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.below(0), 0);
        assert!(r.below(7) < 7);
    }
}
