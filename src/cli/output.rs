//! Writing the output dir: owned wholly by tsk8s, swapped in atomically.
//!
//! The new tree is written to a sibling temp dir (same filesystem) as the compiler hands over
//! its files ([`DirWriter`], a batch at a time), then exchanged with the old dir in one `renameat2(RENAME_EXCHANGE)` on Linux, so a reader or a killed process sees
//! either the complete old tree or the complete new one. With [`Durability::Flushed`]
//! (`build --fsync`) the new tree is also on disk before the swap, so a power loss keeps that
//! promise too. The old tree (now at the temp path) is removed afterwards; leftovers of an
//! interrupted run are removed on the next.
//!
//! Builds into one dir take turns: each holds an exclusive `flock` on `.<name>.tsk8s-lock`
//! beside the dir from its first file to its swap (the next waits, up to
//! `build --lock-timeout`).
//! Readers (`build --check`, `diff`) take no lock and write nothing; when the dir was swapped
//! while they read, `build --check` reads it again and `diff` ([`TreeReader`]) fails asking
//! to try again. No tree is read through a symbolic link, and an
//! output dir that is a link is refused, never replaced.

use std::collections::{BTreeMap, BTreeSet};
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
        let r = TreeReader::open(dir)?;
        let tree: Result<Tree, OutputError> = r
            .paths()
            .iter()
            .filter_map(|rel| r.read(rel).transpose().map(|b| Ok((rel.clone(), b?))))
            .collect();
        // A read that failed because the dir was swapped is tried again, like a swap seen
        // after the last file.
        if r.done().is_ok() {
            return tree;
        }
    }
    Err(OutputError(format!(
        "{}: replaced {ATTEMPTS} times while being read (builds running into it); try again",
        dir.display()
    )))
}

/// A tree read a file at a time (`diff`'s base dir, compared as the build streams): listed
/// once, each file read when asked for, never through a link (as [`read_tree`]). A missing
/// dir is empty. A build swapping the dir in meanwhile makes a read (or [`TreeReader::done`])
/// fail asking to try again: the files compared are one whole tree, never a mix of two.
pub struct TreeReader {
    dir: PathBuf,
    files: BTreeSet<String>,
    identity: Option<(u64, u64)>,
}

impl TreeReader {
    pub fn open(dir: &Path) -> Result<TreeReader, OutputError> {
        let (files, identity) = if probe_dir(dir)? {
            let identity = identity(dir);
            (list_files(dir)?, identity)
        } else {
            (BTreeSet::new(), None)
        };
        Ok(TreeReader {
            dir: dir.to_path_buf(),
            files,
            identity,
        })
    }

    /// Every file of the tree, by relative path.
    pub fn paths(&self) -> &BTreeSet<String> {
        &self.files
    }

    /// The file at `rel`, `None` when the tree has none.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, OutputError> {
        if !self.files.contains(rel) {
            return Ok(None);
        }
        match read_file(&self.dir.join(rel)) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                self.done()?;
                Err(e)
            }
        }
    }

    /// Whether the dir is still the one listed.
    pub fn done(&self) -> Result<(), OutputError> {
        if self.identity.is_some() && identity(&self.dir) != self.identity {
            return Err(OutputError(format!(
                "{}: replaced while being read (a build ran into it); try again",
                self.dir.display()
            )));
        }
        Ok(())
    }
}

/// Refuse to replace a dir that holds files tsk8s did not write (or any symbolic link).
pub fn check_owned(dir: &Path) -> Result<(), OutputError> {
    owned_files(dir).map(|_| ())
}

/// [`check_owned`], giving the dir's files and its manifest's text (`None`: no dir, or an
/// empty one).
fn owned_files(dir: &Path) -> Result<Option<(BTreeSet<String>, String)>, OutputError> {
    if !probe_dir(dir)? {
        return Ok(None);
    }
    let files = list_files(dir)?;
    if files.is_empty() {
        return Ok(None);
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
    Ok(Some((files, manifest)))
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

/// How hard [`DirWriter`] works to make the new tree survive a power loss.
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

/// What [`DirWriter::finish`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// False when the dir already held exactly the build's files (nothing was changed).
    pub changed: bool,
    /// Files replaced or removed whose content no longer matched the sha256 the manifest
    /// recorded when tsk8s wrote them: edited by hand since the last build. In path order.
    pub edited: Vec<String>,
}

/// Is the dir's file `path`, holding `old`, one the build replaces (with other bytes) or
/// removes, whose bytes are not what the dir's manifest (`recorded`) says tsk8s wrote? A
/// file the manifest records without a hash (written by an older tsk8s) cannot be judged
/// and is not.
fn is_edited(recorded: &BTreeMap<String, Option<String>>, path: &str, old: &[u8]) -> bool {
    path != MANIFEST
        && recorded
            .get(path)
            .and_then(Option::as_deref)
            .is_some_and(|h| !h.eq_ignore_ascii_case(&crate::emit::sha256_hex(old)))
}

/// The output dir's writer, the sink `build` compiles into: the files go to a sibling temp
/// dir as the compiler hands them over (a batch at a time, written on all cores), each
/// compared as it passes with the dir's file of the same path (read one at a time: the old
/// tree is never held in memory); [`DirWriter::finish`] then swaps the temp dir in, or
/// removes it when the dir already held exactly these files.
///
/// The first batch starts the write, under the dir's exclusive lock (waiting up to
/// `lock_wait` for another build to finish), held until the writer is done: leftovers of
/// interrupted runs are removed, then the ownership check, then the temp dir is created.
/// `dir` being a symbolic link is refused. A writer dropped unfinished (the build failed)
/// removes its temp dir and the parent dirs it created: nothing is changed. An error is
/// kept and returned by [`DirWriter::finish`]; the writer takes no more files after it.
pub struct DirWriter {
    dir: PathBuf,
    durability: Durability,
    lock_wait: std::time::Duration,
    started: Option<Started>,
    error: Option<OutputError>,
    /// Parent dirs of `dir` this writer created (outermost first), removed if it fails.
    created: Vec<PathBuf>,
    /// The new tree is in place (or the dir was up to date): keep `created`.
    done: bool,
}

/// A write under way: the lock held, the temp dir created.
struct Started {
    /// Released after the temp dir is removed (fields drop in order).
    tmp: TempDir,
    _lock: OutputLock,
    /// Did the dir exist (it is exchanged with the temp dir, not renamed over)?
    exists: bool,
    /// The dir's files no file of the build has matched yet: removed by the build.
    old: BTreeSet<String>,
    /// The dir's manifest: path → recorded sha256 (`None`: no manifest to judge edits by).
    recorded: Option<BTreeMap<String, Option<String>>>,
    /// Dirs created in the temp dir.
    dirs: BTreeSet<PathBuf>,
    /// Every file so far is in the dir with the same bytes.
    same: bool,
    edited: Vec<String>,
}

/// A temp dir removed when dropped (after the swap it holds the old tree, or nothing).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl DirWriter {
    /// A writer for `dir`; nothing is touched before the first file.
    pub fn new(dir: &Path, durability: Durability, lock_wait: std::time::Duration) -> Self {
        DirWriter {
            dir: dir.to_path_buf(),
            durability,
            lock_wait,
            started: None,
            error: None,
            created: Vec::new(),
            done: false,
        }
    }

    fn start(&mut self) -> Result<Started, OutputError> {
        let dir = &self.dir;
        probe_dir(dir)?;
        // The dir's parents are created as needed (the lock file lives in its parent).
        let (parent, _) = sibling_prefix(dir)?;
        let mut missing = Vec::new();
        let mut p = parent.as_path();
        while !p.as_os_str().is_empty() && fs::symlink_metadata(p).is_err() {
            missing.push(p.to_path_buf());
            p = p.parent().unwrap_or(Path::new(""));
        }
        fs::create_dir_all(&parent).map_err(|e| io(&parent, "cannot create", e))?;
        missing.reverse();
        self.created = missing;
        let lock = OutputLock::acquire(dir, self.lock_wait)?;
        clean_leftovers(dir)?;
        let owned = owned_files(dir)?;
        let exists = probe_dir(dir)?;
        let (old, recorded) = match owned {
            Some((files, manifest)) => {
                let recorded = crate::emit::manifest_entries(&manifest)
                    .into_iter()
                    .map(|(p, h)| (p.to_string(), h.map(str::to_string)))
                    .collect();
                (files, Some(recorded))
            }
            None => (BTreeSet::new(), None),
        };
        let tmp = temp_sibling(dir, "new")?;
        fs::create_dir(&tmp).map_err(|e| io(&tmp, "cannot create", e))?;
        Ok(Started {
            tmp: TempDir(tmp),
            _lock: lock,
            exists,
            old,
            recorded,
            dirs: BTreeSet::new(),
            same: true,
            edited: Vec::new(),
        })
    }

    fn write(&mut self, files: &[crate::emit::File]) -> Result<(), OutputError> {
        if self.started.is_none() {
            self.started = Some(self.start()?);
        }
        let Some(st) = self.started.as_mut() else {
            return Ok(());
        };
        let tmp = st.tmp.0.clone();
        // Directories first (parents before children), then the files on all cores:
        // creating files is most of the cost of writing a large tree.
        for f in files {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                let d = tmp.join(parent);
                if !st.dirs.contains(&d) {
                    fs::create_dir_all(&d).map_err(|e| io(&d, "cannot create", e))?;
                    st.dirs.insert(d);
                }
            }
        }
        let jobs: Vec<(&crate::emit::File, bool)> =
            files.iter().map(|f| (f, st.old.remove(&f.path))).collect();
        let per_file_sync = self.durability == Durability::Flushed && !cfg!(target_os = "linux");
        let (dir, recorded) = (&self.dir, &st.recorded);
        // Per file: (the dir holds the same bytes, the dir's file was edited by hand).
        let write_one = |(f, had): &(&crate::emit::File, bool)| {
            let p = tmp.join(&f.path);
            let mut w = fs::File::create(&p).map_err(|e| io(&p, "cannot create", e))?;
            w.write_all(&f.bytes)
                .map_err(|e| io(&p, "cannot write", e))?;
            if per_file_sync {
                w.sync_all().map_err(|e| io(&p, "cannot sync", e))?;
            }
            drop(w);
            if !had {
                return Ok((false, false));
            }
            let old = read_file(&dir.join(&f.path))?;
            if old == f.bytes {
                return Ok((true, false));
            }
            let edited = recorded
                .as_ref()
                .is_some_and(|r| is_edited(r, &f.path, &old));
            Ok((false, edited))
        };
        // In the order given, so the error reported is the first of the batch.
        let results = crate::par::map(&jobs, write_one);
        for ((f, _), r) in jobs.iter().zip(results) {
            let (same, edited) = r?;
            st.same &= same;
            if edited {
                st.edited.push(f.path.clone());
            }
        }
        Ok(())
    }

    /// Swap the new tree in, atomically, and say which replaced or removed files had been
    /// edited by hand. With `refuse_edited`, such files make it an error (naming them) and
    /// nothing is changed. The first error met while writing is returned here.
    pub fn finish(mut self, refuse_edited: bool) -> Result<Written, OutputError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.started.is_none() {
            self.started = Some(self.start()?);
        }
        let Some(mut st) = self.started.take() else {
            return Err(OutputError("internal: no write started".into()));
        };
        // The dir's files the build did not write are removed by it.
        if !st.old.is_empty() {
            st.same = false;
        }
        if let Some(recorded) = &st.recorded {
            for rel in &st.old {
                let old = read_file(&self.dir.join(rel))?;
                if is_edited(recorded, rel, &old) {
                    st.edited.push(rel.clone());
                }
            }
        }
        st.edited.sort();
        let dir = self.dir.clone();
        if st.exists && st.same {
            self.done = true;
            return Ok(Written::default());
        }
        if refuse_edited && !st.edited.is_empty() {
            let list: Vec<String> = st
                .edited
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
                st.edited.len(),
                list.join("\n")
            )));
        }
        let tmp = st.tmp.0.clone();
        if self.durability == Durability::Flushed {
            flush(&tmp, &st.dirs)?;
        }
        if st.exists {
            // `tmp` then holds the old tree, removed when `st` is dropped.
            exchange(&tmp, &dir)?;
        } else {
            fs::rename(&tmp, &dir).map_err(|e| io(&dir, "cannot rename into place", e))?;
        }
        self.done = true;
        let edited = std::mem::take(&mut st.edited);
        drop(st);
        if self.durability == Durability::Flushed {
            let (parent, _) = sibling_prefix(&dir)?;
            fsync_dir(&parent);
        }
        Ok(Written {
            changed: true,
            edited,
        })
    }
}

impl crate::emit::Sink for DirWriter {
    fn put(&mut self, files: Vec<crate::emit::File>) -> std::ops::ControlFlow<()> {
        if self.error.is_some() {
            return std::ops::ControlFlow::Break(());
        }
        match self.write(&files) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    }
}

impl Drop for DirWriter {
    fn drop(&mut self) {
        // The temp dir removed, the lock released, then the parents this writer created.
        drop(self.started.take());
        if !self.done {
            for d in self.created.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

/// The sink of `build --check`: the sha256 of every file of the build, by path (the bytes
/// are not kept); [`stale`] compares them with the dir.
#[derive(Debug, Default)]
pub struct Hashes(pub BTreeMap<String, String>);

impl crate::emit::Sink for Hashes {
    fn put(&mut self, files: Vec<crate::emit::File>) -> std::ops::ControlFlow<()> {
        for f in files {
            self.0.insert(f.path, f.sha256);
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// How a dir differs from a build ([`stale`]): paths, each list in path order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stale {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Stale {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// The dir (read one file at a time, never through a link; a missing dir is empty) against
/// the build's files by their sha256 (`fresh`). Like [`read_tree`] it takes no lock and reads
/// again when the dir is swapped while it reads.
pub fn stale(dir: &Path, fresh: &BTreeMap<String, String>) -> Result<Stale, OutputError> {
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut st = Stale::default();
        if !probe_dir(dir)? {
            st.added = fresh.keys().cloned().collect();
            return Ok(st);
        }
        let before = identity(dir);
        let files = list_files(dir)?;
        for (p, h) in fresh {
            if !files.contains(p) {
                st.added.push(p.clone());
            } else if crate::emit::sha256_hex(&read_file(&dir.join(p))?) != *h {
                st.changed.push(p.clone());
            }
        }
        st.removed = files
            .into_iter()
            .filter(|p| !fresh.contains_key(p))
            .collect();
        if identity(dir) == before {
            return Ok(st);
        }
    }
    Err(OutputError(format!(
        "{}: replaced {ATTEMPTS} times while being read (builds running into it); try again",
        dir.display()
    )))
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
    use crate::emit::{Sink as _, Tree};

    fn files(tree: &Tree) -> Vec<crate::emit::File> {
        tree.iter()
            .map(|(p, b)| crate::emit::File {
                path: p.clone(),
                bytes: b.clone(),
                sha256: crate::emit::sha256_hex(b),
            })
            .collect()
    }

    /// Write `tree` to `dir` as the dir's content, file by file (no manifest added).
    fn put_dir(dir: &Path, tree: &Tree) {
        let _ = fs::remove_dir_all(dir);
        for (p, b) in tree {
            let f = dir.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, b).unwrap();
        }
    }

    /// `tree` through a [`DirWriter`] into `dir`, in two batches.
    fn write(dir: &Path, tree: &Tree, refuse_edited: bool) -> Result<Written, OutputError> {
        let mut w = DirWriter::new(dir, Durability::Atomic, std::time::Duration::ZERO);
        let mut all = files(tree);
        let rest = all.split_off(all.len() / 2);
        assert!(w.put(rest).is_continue());
        assert!(w.put(all).is_continue());
        w.finish(refuse_edited)
    }

    #[test]
    fn edited_files_are_replaced_or_removed_files_off_their_recorded_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut old = Tree::new();
        for p in [
            "a.yaml",
            "b.yaml",
            "gone.yaml",
            "gone-edited.yaml",
            "same.yaml",
        ] {
            old.insert(format!("d/{p}"), p.as_bytes().to_vec());
        }
        crate::emit::finish(&mut old, "tailnet.kdl");
        let mut current = old.clone();
        for p in ["d/a.yaml", "d/gone-edited.yaml", "d/same.yaml"] {
            current
                .get_mut(p)
                .unwrap()
                .extend_from_slice(b"# hand edit\n");
        }
        let mut new = old.clone();
        new.remove("d/gone.yaml");
        new.remove("d/gone-edited.yaml");
        new.get_mut("d/b.yaml").unwrap().push(b'!');
        // `same.yaml` was edited into exactly what the new build writes: not replaced.
        new.insert("d/same.yaml".into(), current["d/same.yaml"].clone());
        put_dir(&out, &current);
        let w = write(&out, &new, false).unwrap();
        assert!(w.changed);
        assert_eq!(w.edited, ["d/a.yaml", "d/gone-edited.yaml"]);
        assert_eq!(read_tree(&out).unwrap(), new);
        // Refused: nothing changes.
        put_dir(&out, &current);
        let e = write(&out, &new, true).unwrap_err();
        assert!(e.0.contains("2 file(s) edited by hand"), "{e}");
        assert_eq!(read_tree(&out).unwrap(), current);
        // A manifest from before hashes were recorded judges nothing.
        current.insert(
            MANIFEST.into(),
            b"d/a.yaml\nd/gone-edited.yaml\nd/gone.yaml\nd/b.yaml\nd/same.yaml\n".to_vec(),
        );
        put_dir(&out, &current);
        assert!(write(&out, &new, true).unwrap().edited.is_empty());
        // The same files again: up to date, nothing written.
        assert_eq!(write(&out, &new, true).unwrap(), Written::default());
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"], "no temp dir or lock left");
    }

    #[test]
    fn a_writer_dropped_unfinished_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("new/parents/out");
        let mut tree = Tree::new();
        tree.insert("a/b.yaml".into(), b"x: 1\n".to_vec());
        crate::emit::finish(&mut tree, "tailnet.kdl");
        let mut w = DirWriter::new(&out, Durability::Atomic, std::time::Duration::ZERO);
        assert!(w.put(files(&tree)).is_continue());
        assert!(tmp.path().join("new/parents").is_dir());
        drop(w);
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "parents created are removed"
        );
        // Into an existing dir: the old tree stays, no temp dir is left.
        write(&out, &tree, false).unwrap();
        let mut w = DirWriter::new(&out, Durability::Atomic, std::time::Duration::ZERO);
        let mut other = files(&tree);
        other[0].bytes.push(b'!');
        assert!(w.put(other).is_continue());
        drop(w);
        assert_eq!(read_tree(&out).unwrap(), tree);
        let names: Vec<_> = fs::read_dir(tmp.path().join("new/parents"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn stale_compares_the_dir_with_the_builds_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut tree = Tree::new();
        for p in ["a.yaml", "b.yaml", "c.yaml"] {
            tree.insert(p.into(), p.as_bytes().to_vec());
        }
        let mut h = Hashes::default();
        let _ = h.put(files(&tree));
        let all: Vec<String> = tree.keys().cloned().collect();
        assert_eq!(stale(&out, &h.0).unwrap().added, all);
        put_dir(&out, &tree);
        assert!(stale(&out, &h.0).unwrap().is_empty());
        tree.remove("a.yaml");
        tree.get_mut("b.yaml").unwrap().push(b'!');
        tree.insert("d.yaml".into(), Vec::new());
        put_dir(&out, &tree);
        let s = stale(&out, &h.0).unwrap();
        assert_eq!(
            (s.added, s.changed, s.removed),
            (
                vec!["a.yaml".to_string()],
                vec!["b.yaml".to_string()],
                vec!["d.yaml".to_string()]
            )
        );
    }

    /// A tree read a file at a time: listed once, `None` for a path it does not hold, an
    /// error asking to try again once the dir was swapped; a missing dir is empty.
    #[test]
    fn tree_reader_reads_one_tree_or_says_it_was_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let mut tree = Tree::new();
        tree.insert("a/x.yaml".into(), b"x\n".to_vec());
        tree.insert("b.txt".into(), b"b\n".to_vec());
        put_dir(&out, &tree);
        let r = TreeReader::open(&out).unwrap();
        assert_eq!(r.paths().len(), 2);
        assert_eq!(r.read("a/x.yaml").unwrap(), Some(b"x\n".to_vec()));
        assert_eq!(r.read("nope").unwrap(), None);
        r.done().unwrap();
        // A build swaps another tree in.
        fs::rename(&out, tmp.path().join("old")).unwrap();
        put_dir(&out, &tree);
        let e = r.done().unwrap_err().to_string();
        assert!(e.contains("replaced while being read"), "{e}");
        fs::remove_dir_all(&out).unwrap();
        let e = r.read("b.txt").unwrap_err().to_string();
        assert!(e.contains("replaced while being read"), "{e}");
        let empty = TreeReader::open(&tmp.path().join("none")).unwrap();
        assert!(empty.paths().is_empty());
        empty.done().unwrap();
    }
}
