//! Writing the output dir: owned wholly by tsk8s, swapped in atomically.
//!
//! The new tree is written to a sibling temp dir (same filesystem), then exchanged with the
//! old dir in one `renameat2(RENAME_EXCHANGE)` on Linux, so a reader or a killed process sees
//! either the complete old tree or the complete new one. With [`Durability::Flushed`]
//! (`build --fsync`) the new tree is also on disk before the swap, so a power loss keeps that
//! promise too. The old tree (now at the temp path) is removed afterwards; leftovers of an
//! interrupted run are removed on the next.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::emit::{MANIFEST, Tree};

#[derive(Debug)]
pub struct OutputError(pub String);

impl std::fmt::Display for OutputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn io(path: &Path, what: &str, e: std::io::Error) -> OutputError {
    OutputError(format!("{}: {what}: {e}", path.display()))
}

/// Every regular file under `dir`, as `/`-separated relative paths.
pub fn list_files(dir: &Path) -> Result<BTreeSet<String>, OutputError> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| io(&d, "cannot read directory", e))?;
        for entry in rd {
            let entry = entry.map_err(|e| io(&d, "cannot read directory", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(|e| io(&entry.path(), "cannot stat", e))?;
            if ft.is_dir() {
                stack.push((entry.path(), rel));
            } else {
                out.insert(rel);
            }
        }
    }
    Ok(out)
}

/// Read the output dir as a tree (for `build --check` and `diff`). A missing dir is empty.
pub fn read_tree(dir: &Path) -> Result<Tree, OutputError> {
    let mut tree = Tree::new();
    if !dir.exists() {
        return Ok(tree);
    }
    for rel in list_files(dir)? {
        let p = dir.join(&rel);
        let bytes = fs::read(&p).map_err(|e| io(&p, "cannot read", e))?;
        tree.insert(rel, bytes);
    }
    Ok(tree)
}

/// Refuse to replace a dir that holds files tsk8s did not write.
pub fn check_owned(dir: &Path) -> Result<(), OutputError> {
    if !dir.exists() {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(OutputError(format!(
            "{}: exists and is not a directory",
            dir.display()
        )));
    }
    let files = list_files(dir)?;
    if files.is_empty() {
        return Ok(());
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest = fs::read_to_string(&manifest_path).map_err(|_| {
        OutputError(format!(
            "{}: is not empty and was not written by tsk8s (no {MANIFEST}); tsk8s owns its output dir wholly: choose another -o or empty it",
            dir.display()
        ))
    })?;
    let owned: BTreeSet<&str> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let foreign: Vec<&String> = files
        .iter()
        .filter(|f| f.as_str() != MANIFEST && !owned.contains(f.as_str()))
        .collect();
    if !foreign.is_empty() {
        let list: Vec<String> = foreign
            .iter()
            .take(20)
            .map(|f| format!("  {}", dir.join(f).display()))
            .collect();
        return Err(OutputError(format!(
            "{}: holds {} file(s) tsk8s did not write; the output dir is owned wholly by tsk8s:\n{}\nmove them elsewhere (or delete them) and build again",
            dir.display(),
            foreign.len(),
            list.join("\n")
        )));
    }
    Ok(())
}

fn temp_sibling(dir: &Path, tag: &str) -> Result<PathBuf, OutputError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .ok_or_else(|| OutputError(format!("{}: not a directory name", dir.display())))?;
    Ok(parent.join(format!(
        ".{}.tsk8s-{tag}-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Remove leftovers of interrupted runs (`.<name>.tsk8s-*` beside the dir).
fn clean_leftovers(dir: &Path) {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = dir.file_name() else { return };
    let prefix = format!(".{}.tsk8s-", name.to_string_lossy());
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn fsync_dir(p: &Path) {
    if let Ok(f) = fs::File::open(p) {
        let _ = f.sync_all();
    }
}

/// How hard `write_tree` works to make the new tree survive a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Atomic against a killed process and concurrent readers (the swap is one `renameat2`),
    /// but not flushed: after a power loss the tree may need a rebuild (`build --check` tells).
    /// The default: the output is derived, committed by git, and rebuilt in CI.
    Atomic,
    /// Also flushed to disk before and after the swap (`syncfs` on Linux: one flush for all
    /// files instead of one journal commit per file; per-file `fsync` elsewhere).
    Flushed,
}

/// Write `tree` as the new content of `dir`, atomically. Returns false when nothing changed.
pub fn write_tree(dir: &Path, tree: &Tree, durability: Durability) -> Result<bool, OutputError> {
    check_owned(dir)?;
    if dir.exists() && read_tree(dir)? == *tree {
        return Ok(false);
    }
    clean_leftovers(dir);
    let tmp = temp_sibling(dir, "new")?;
    fs::create_dir_all(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
    // Directories first (sorted, so parents come before children), then the files, written
    // on all cores: creating 18,000 files is most of the cost of writing a large tree.
    let parents: BTreeSet<&str> = tree
        .keys()
        .filter_map(|rel| rel.rsplit_once('/').map(|(parent, _)| parent))
        .collect();
    let dirs: BTreeSet<PathBuf> = parents.into_iter().map(|p| tmp.join(p)).collect();
    for d in &dirs {
        fs::create_dir_all(d).map_err(|e| io(d, "cannot create", e))?;
    }
    let per_file_sync = durability == Durability::Flushed && !cfg!(target_os = "linux");
    let files: Vec<(&String, &Vec<u8>)> = tree.iter().collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let write_part = |part: &[(&String, &Vec<u8>)]| -> Result<(), OutputError> {
        for (rel, bytes) in part {
            let p = tmp.join(rel);
            let mut f = fs::File::create(&p).map_err(|e| io(&p, "cannot create", e))?;
            f.write_all(bytes).map_err(|e| io(&p, "cannot write", e))?;
            if per_file_sync {
                f.sync_all().map_err(|e| io(&p, "cannot sync", e))?;
            }
        }
        Ok(())
    };
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| scope.spawn(move || write_part(part)))
            .collect();
        // Joined in order, so the error reported is the first by path.
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(OutputError("a writer thread panicked".into())))
        })
    })?;
    if durability == Durability::Flushed {
        flush(&tmp, &dirs)?;
    }
    if dir.exists() {
        exchange(&tmp, dir)?;
        // `tmp` now holds the old tree.
        let _ = fs::remove_dir_all(&tmp);
    } else {
        fs::rename(&tmp, dir).map_err(|e| io(dir, "cannot rename into place", e))?;
    }
    if durability == Durability::Flushed {
        if let Some(parent) = dir.parent() {
            fsync_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            });
        }
    }
    Ok(true)
}

/// Flush everything written under `tmp` (files and directory entries) to disk.
#[cfg(target_os = "linux")]
fn flush(tmp: &Path, _dirs: &BTreeSet<PathBuf>) -> Result<(), OutputError> {
    use std::os::fd::AsRawFd as _;
    let f = fs::File::open(tmp).map_err(|e| io(tmp, "cannot open", e))?;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io(
            tmp,
            "cannot sync (syncfs)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn flush(tmp: &Path, dirs: &BTreeSet<PathBuf>) -> Result<(), OutputError> {
    for d in dirs.iter().rev() {
        fsync_dir(d);
    }
    fsync_dir(tmp);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<(), OutputError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|_| OutputError(format!("{}: bad path", a.display())))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|_| OutputError(format!("{}: bad path", b.display())))?;
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io(
            b,
            "cannot exchange with the new tree (renameat2)",
            std::io::Error::last_os_error(),
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<(), OutputError> {
    // Not atomic: move the old tree aside, then the new one in.
    let aside = temp_sibling(b, "old")?;
    fs::rename(b, &aside).map_err(|e| io(b, "cannot move aside", e))?;
    fs::rename(a, b).map_err(|e| io(b, "cannot rename into place", e))?;
    fs::rename(&aside, a).map_err(|e| io(a, "cannot rename", e))?;
    Ok(())
}
