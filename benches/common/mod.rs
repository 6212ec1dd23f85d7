//! What the compiler's benchmarks share: the release binary they run, and a child's wall time
//! and peak RSS (from wait4's rusage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

/// Build the release `tsk8s` (`cargo build --release --bin tsk8s`) and return its path.
pub fn release_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("cargo")
        .args(["build", "--release", "--bin", "tsk8s"])
        .current_dir(root)
        .status()
        .expect("cargo");
    assert!(st.success());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("release/tsk8s")
}

/// Reap `child` (started at `start`) with wait4: (wall seconds, peak RSS in MiB, exit code).
// The child is reaped by wait4 (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn wait_measured(child: Child, start: Instant) -> (f64, f64, i32) {
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
