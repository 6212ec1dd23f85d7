//! Writing the output dir: owned wholly by tsk8s, swapped in atomically.
//!
//! The new tree is written to a sibling temp dir (same filesystem), then exchanged with the
//! old dir in one `renameat2(RENAME_EXCHANGE)` on Linux, so a reader or a killed process sees
//! either the complete old tree or the complete new one. With [`Durability::Flushed`]
//! (`build --fsync`) the new tree is also on disk before the swap, so a power loss keeps that
//! promise too. The old tree (now at the temp path) is removed afterwards; leftovers of an
//! interrupted run are removed on the next.
//!
//! Builds into one dir take turns: each holds an exclusive `flock` on `.<name>.tsk8s-lock`
//! beside the dir for its whole write (the next waits, up to `build --lock-timeout`).
//! Readers (`build --check`, `diff`) take no lock and write nothing; they read again when
//! the dir was swapped while they read. No tree is read through a symbolic link, and an
//! output dir that is a link is refused, never replaced.

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

/// What is at `dir`, the final component not followed: `Ok(false)` nothing, `Ok(true)` a
/// directory. A symbolic link is refused (tsk8s neither reads through nor replaces one), and
/// so is anything else that is not a directory.
pub fn probe_dir(dir: &Path) -> Result<bool, OutputError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(dir, "cannot stat", e)),
        Ok(m) if m.file_type().is_symlink() => Err(OutputError(format!(
            "{}: is a symbolic link; tsk8s neither follows nor replaces one: name the directory it points to instead",
            dir.display()
        ))),
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(OutputError(format!(
            "{}: exists and is not a directory",
            dir.display()
        ))),
    }
}

fn symlink_inside(p: &Path) -> OutputError {
    OutputError(format!(
        "{}: is a symbolic link; tsk8s does not follow links inside a tree it reads: remove it",
        p.display()
    ))
}

/// Every regular file under `dir`, as `/`-separated relative paths. Links are never
/// followed: `dir` itself or anything under it being a symbolic link is an error naming it,
/// and so is anything that is neither a file nor a directory (a FIFO would block a reader).
pub fn list_files(dir: &Path) -> Result<BTreeSet<String>, OutputError> {
    if !probe_dir(dir)? {
        return Err(OutputError(format!("{}: no such directory", dir.display())));
    }
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
            // `DirEntry::file_type` does not follow links.
            let ft = entry
                .file_type()
                .map_err(|e| io(&entry.path(), "cannot stat", e))?;
            if ft.is_symlink() {
                return Err(symlink_inside(&entry.path()));
            } else if ft.is_dir() {
                stack.push((entry.path(), rel));
            } else if ft.is_file() {
                out.insert(rel);
            } else {
                return Err(OutputError(format!(
                    "{}: is neither a regular file nor a directory; tsk8s reads only those",
                    entry.path().display()
                )));
            }
        }
    }
    Ok(out)
}

/// Read one regular file without following a link at its last component (`O_NOFOLLOW`;
/// `O_NONBLOCK` so that a FIFO put there after listing cannot block).
fn read_file(p: &Path) -> Result<Vec<u8>, OutputError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                symlink_inside(p)
            } else {
                io(p, "cannot read", e)
            }
        })?;
    let m = f.metadata().map_err(|e| io(p, "cannot stat", e))?;
    if !m.is_file() {
        return Err(OutputError(format!(
            "{}: is not a regular file; tsk8s reads only regular files",
            p.display()
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)
        .map_err(|e| io(p, "cannot read", e))?;
    Ok(bytes)
}

/// Device and inode of what is at `dir` (not following a link).
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    fs::symlink_metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Read a tree (the output dir for `build --check` and `diff`, or `diff --base-dir`),
/// never following a link (see [`list_files`]). A missing dir is empty. The read takes no
/// lock: a build swapping the dir in meanwhile (the path then names another inode) makes
/// it read again, so the tree returned is one whole tree, never a mix of two.
pub fn read_tree(dir: &Path) -> Result<Tree, OutputError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        if !probe_dir(dir)? {
            return Ok(Tree::new());
        }
        let before = identity(dir);
        let mut tree = Tree::new();
        for rel in list_files(dir)? {
            let p = dir.join(&rel);
            tree.insert(rel, read_file(&p)?);
        }
        if identity(dir) == before {
            return Ok(tree);
        }
    }
    Err(OutputError(format!(
        "{}: replaced {ATTEMPTS} times while being read (builds running into it); try again",
        dir.display()
    )))
}

/// Refuse to replace a dir that holds files tsk8s did not write (or any symbolic link).
pub fn check_owned(dir: &Path) -> Result<(), OutputError> {
    if !probe_dir(dir)? {
        return Ok(());
    }
    let files = list_files(dir)?;
    if files.is_empty() {
        return Ok(());
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest = read_file(&manifest_path)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            OutputError(format!(
                "{}: is not empty and was not written by tsk8s (no {MANIFEST}); tsk8s owns its output dir wholly: choose another -o or empty it",
                dir.display()
            ))
        })?;
    let owned = crate::emit::manifest_entries(&manifest);
    let foreign: Vec<&String> = files
        .iter()
        .filter(|f| f.as_str() != MANIFEST && !owned.contains_key(f.as_str()))
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

/// `(parent, ".<name>.tsk8s-")`: where the siblings of `dir` (temp trees, the lock) live.
fn sibling_prefix(dir: &Path) -> Result<(PathBuf, String), OutputError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .ok_or_else(|| OutputError(format!("{}: not a directory name", dir.display())))?;
    Ok((
        parent.to_path_buf(),
        format!(".{}.tsk8s-", name.to_string_lossy()),
    ))
}

/// Tags of the temp trees beside the output dir: `.<name>.tsk8s-<tag>-<pid>`.
const TEMP_TAGS: [&str; 2] = ["new", "old"];

fn temp_sibling(dir: &Path, tag: &str) -> Result<PathBuf, OutputError> {
    let (parent, prefix) = sibling_prefix(dir)?;
    Ok(parent.join(format!("{prefix}{tag}-{}", std::process::id())))
}

/// Remove the temp trees of interrupted runs (`.<name>.tsk8s-new-<pid>` and `-old-<pid>`
/// beside the dir). Called under the output lock only, so none of them belongs to a live
/// build.
fn clean_leftovers(dir: &Path) -> Result<(), OutputError> {
    let (parent, prefix) = sibling_prefix(dir)?;
    let rd = match fs::read_dir(&parent) {
        Ok(rd) => rd,
        Err(e) => return Err(io(&parent, "cannot read directory", e)),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let is_temp = TEMP_TAGS.iter().any(|tag| {
            rest.strip_prefix(tag)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        });
        // Only directories (never through a link: `file_type` does not follow one).
        if is_temp && e.file_type().is_ok_and(|t| t.is_dir()) {
            let p = e.path();
            fs::remove_dir_all(&p).map_err(|err| io(&p, "cannot remove a leftover", err))?;
        }
    }
    Ok(())
}

/// The exclusive lock of one output dir: `flock` on `.<name>.tsk8s-lock` beside it, held for
/// the whole write (cleaning leftovers, the ownership and up-to-date checks, the swap).
/// The file is removed while still locked when the build ends; a waiter that then gets the
/// lock on the removed file notices (the path names another inode, or none) and starts over.
struct OutputLock {
    path: PathBuf,
    _file: fs::File,
}

impl OutputLock {
    fn acquire(dir: &Path, wait: std::time::Duration) -> Result<Self, OutputError> {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
        let (parent, prefix) = sibling_prefix(dir)?;
        let path = parent.join(format!("{prefix}lock"));
        let deadline = std::time::Instant::now() + wait;
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| io(&path, "cannot open the output lock", e))?;
            loop {
                // SAFETY: `file` is an open file descriptor for the duration of the call.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK)
                    && e.kind() != std::io::ErrorKind::Interrupted
                {
                    return Err(io(&path, "cannot lock", e));
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    return Err(OutputError(format!(
                        "{}: another tsk8s build is writing it (it holds {}); gave up after {} s (--lock-timeout)",
                        dir.display(),
                        path.display(),
                        wait.as_secs()
                    )));
                }
                std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(20)));
            }
            let held = file.metadata().map_err(|e| io(&path, "cannot stat", e))?;
            let same = fs::symlink_metadata(&path)
                .is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino());
            if same {
                return Ok(OutputLock { path, _file: file });
            }
            // The previous holder removed the file after we opened it: start over.
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked (the file closes after this), so a waiter on this file
        // sees it gone and locks the new one instead.
        let _ = fs::remove_file(&self.path);
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

/// What [`write_tree`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// False when the dir already held exactly `tree` (nothing was written).
    pub changed: bool,
    /// Files replaced or removed whose content no longer matched the sha256 the manifest
    /// recorded when tsk8s wrote them: edited by hand since the last build. In path order.
    pub edited: Vec<String>,
}

/// Files of `current` (the dir as read) that the new `tree` replaces or removes and whose
/// bytes differ from what the dir's manifest recorded. A file the manifest records without
/// a hash (written by an older tsk8s) cannot be judged and is not named.
pub fn edited_files(current: &Tree, tree: &Tree) -> Vec<String> {
    let Some(manifest) = current
        .get(MANIFEST)
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return Vec::new();
    };
    let recorded = crate::emit::manifest_entries(manifest);
    current
        .iter()
        .filter(|(p, bytes)| is_edited(&recorded, p, bytes, tree))
        .map(|(p, _)| p.clone())
        .collect()
}

/// Is the file `path` of the dir, holding `bytes`, replaced or removed by `tree` while its
/// bytes are not what the manifest (`recorded`) says tsk8s wrote?
fn is_edited(
    recorded: &std::collections::BTreeMap<&str, Option<&str>>,
    path: &str,
    bytes: &[u8],
    tree: &Tree,
) -> bool {
    path != MANIFEST
        && tree.get(path).map(Vec::as_slice) != Some(bytes)
        && recorded
            .get(path)
            .copied()
            .flatten()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&crate::emit::sha256_hex(bytes)))
}

/// The dir against the new tree, read one file at a time, so the old tree is never held in
/// memory beside the new one: (does the dir hold exactly `tree`, [`edited_files`]).
fn compare_dir(dir: &Path, tree: &Tree) -> Result<(bool, Vec<String>), OutputError> {
    let files = list_files(dir)?;
    let manifest = match files.contains(MANIFEST) {
        true => Some(read_file(&dir.join(MANIFEST))?),
        false => None,
    };
    let text = manifest
        .as_deref()
        .and_then(|b| std::str::from_utf8(b).ok());
    let recorded = text.map(crate::emit::manifest_entries).unwrap_or_default();
    let mut same = files.len() == tree.len();
    let mut edited = Vec::new();
    for rel in &files {
        let read;
        let bytes: &[u8] = match (rel.as_str(), &manifest) {
            (MANIFEST, Some(m)) => m,
            _ => {
                read = read_file(&dir.join(rel))?;
                &read
            }
        };
        if tree.get(rel.as_str()).map(Vec::as_slice) != Some(bytes) {
            same = false;
            if text.is_some() && is_edited(&recorded, rel, bytes, tree) {
                edited.push(rel.clone());
            }
        }
    }
    Ok((same, edited))
}

/// Write `tree` as the new content of `dir`, atomically, and say which replaced or removed
/// files had been edited by hand ([`edited_files`]). With `refuse_edited`, such files make it
/// an error (naming them) and nothing is written.
///
/// Runs under the dir's exclusive lock (waiting up to `lock_wait` for another build to
/// finish): leftovers of interrupted runs are removed first, on every run, then the
/// ownership and up-to-date checks, then the swap. `dir` being a symbolic link is refused.
pub fn write_tree(
    dir: &Path,
    tree: &Tree,
    durability: Durability,
    lock_wait: std::time::Duration,
    refuse_edited: bool,
) -> Result<Written, OutputError> {
    probe_dir(dir)?;
    // The dir's parents are created as needed (the lock file lives in its parent).
    let (parent, _) = sibling_prefix(dir)?;
    fs::create_dir_all(&parent).map_err(|e| io(&parent, "cannot create", e))?;
    let _lock = OutputLock::acquire(dir, lock_wait)?;
    clean_leftovers(dir)?;
    check_owned(dir)?;
    let exists = probe_dir(dir)?;
    let mut edited = Vec::new();
    if exists {
        let (same, changed) = compare_dir(dir, tree)?;
        if same {
            return Ok(Written::default());
        }
        edited = changed;
        if refuse_edited && !edited.is_empty() {
            let list: Vec<String> = edited
                .iter()
                .map(|f| {
                    format!(
                        "  {}",
                        crate::diag::escape(&dir.join(f).display().to_string())
                    )
                })
                .collect();
            return Err(OutputError(format!(
                "{}: {} file(s) edited by hand since tsk8s wrote them would be replaced (--refuse-edited); wrote nothing:\n{}\nmove the change into the spec (or restore the files) and build again",
                dir.display(),
                edited.len(),
                list.join("\n")
            )));
        }
    }
    let tmp = temp_sibling(dir, "new")?;
    fs::create_dir(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
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
    let write_one = |(rel, bytes): &(&String, &Vec<u8>)| -> Result<(), OutputError> {
        let p = tmp.join(rel);
        let mut f = fs::File::create(&p).map_err(|e| io(&p, "cannot create", e))?;
        f.write_all(bytes).map_err(|e| io(&p, "cannot write", e))?;
        if per_file_sync {
            f.sync_all().map_err(|e| io(&p, "cannot sync", e))?;
        }
        Ok(())
    };
    // In path order, so the error reported is the first by path.
    crate::par::map(&files, write_one)
        .into_iter()
        .collect::<Result<(), OutputError>>()?;
    if durability == Durability::Flushed {
        flush(&tmp, &dirs)?;
    }
    if exists {
        exchange(&tmp, dir)?;
        // `tmp` now holds the old tree.
        let _ = fs::remove_dir_all(&tmp);
    } else {
        fs::rename(&tmp, dir).map_err(|e| io(dir, "cannot rename into place", e))?;
    }
    if durability == Durability::Flushed {
        fsync_dir(&parent);
    }
    Ok(Written {
        changed: true,
        edited,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edited_files_are_replaced_or_removed_files_off_their_recorded_hash() {
        let mut old = Tree::new();
        for p in [
            "a.yaml",
            "b.yaml",
            "gone.yaml",
            "gone-edited.yaml",
            "same.yaml",
        ] {
            old.insert(p.into(), p.as_bytes().to_vec());
        }
        crate::emit::finish(&mut old, "tailnet.kdl");
        let mut current = old.clone();
        for p in ["a.yaml", "gone-edited.yaml", "same.yaml"] {
            current
                .get_mut(p)
                .unwrap()
                .extend_from_slice(b"# hand edit\n");
        }
        let mut new = old.clone();
        new.remove("gone.yaml");
        new.remove("gone-edited.yaml");
        new.get_mut("b.yaml").unwrap().push(b'!');
        // `same.yaml` was edited into exactly what the new build writes: not replaced.
        new.insert("same.yaml".into(), current["same.yaml"].clone());
        assert_eq!(edited_files(&current, &new), ["a.yaml", "gone-edited.yaml"]);
        // A manifest from before hashes were recorded judges nothing.
        current.insert(MANIFEST.into(), b"a.yaml\ngone-edited.yaml\n".to_vec());
        assert!(edited_files(&current, &new).is_empty());
    }
}
