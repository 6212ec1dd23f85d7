//! The CLI side of the secret backends (filesystem, clock, environment): reading committed
//! sources for `build`, delivering new and rotated keys as SOPS files in `lock`, keeping those
//! files and their `.sops.yaml` in step with the spec's recipients, and telling the user what
//! to re-apply after a rotation or removal. See docs/secrets.md.
//!
//! Private keys are never passed in argv nor printed: they go into SOPS ciphertext, or into
//! files under `--keys-dir` written only by [`write_private`] (fresh 0600 files in a dir only
//! the user can access; see docs/secrets.md).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::Stage;
use crate::lockfile::{Lock, LockUpdate, NewKey};
use crate::lower::secrets::{self, SecretRef};
use crate::model::{Cluster, SecretBackend, Tailnet};

/// Largest source file read for `build` (a Secret is at most 1 MiB in Kubernetes).
const MAX_SOURCE: u64 = 2 * 1024 * 1024;

/// The committed sources `build` reads: every regular file directly under each SOPS or
/// SealedSecrets source dir, keyed by [`secrets::source_path`]. A spec that does not parse
/// gives none (the build reports its errors).
pub fn read_sources(spec_dir: &Path, spec_name: &str, spec: &str) -> BTreeMap<String, Vec<u8>> {
    match crate::build::front(spec_name, spec) {
        Ok(front) => read_sources_for(spec_dir, &front.tailnet),
        Err(_) => BTreeMap::new(),
    }
}

/// [`read_sources`] for a spec already through the front end.
pub fn read_sources_for(spec_dir: &Path, tailnet: &Tailnet) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let dirs: BTreeSet<&str> = tailnet
        .clusters
        .iter()
        .filter_map(|c| secrets::source_dir(&c.secrets))
        .collect();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(spec_dir.join(dir)) else {
            continue;
        };
        for entry in rd.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            let Ok(md) = fs::metadata(&path) else {
                continue;
            };
            if !md.is_file() || md.len() > MAX_SOURCE || name.starts_with('.') {
                continue;
            }
            if let Ok(bytes) = fs::read(&path) {
                out.insert(secrets::source_path(dir, &name), bytes);
            }
        }
    }
    out
}

/// Now, as RFC 3339 UTC (`lastmodified` of SOPS files; only `lock` writes it).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    tsk8s_sops::rfc3339_from_unix_seconds(secs)
}

fn node_labels(node: &str) -> BTreeMap<String, String> {
    crate::lower::k8s::meta("x", None, Some(node))
        .labels
        .unwrap_or_default()
}

fn node_ref(t: &Tailnet, cluster: &str, node: &str) -> Option<(Cluster, SecretRef)> {
    let c = t.cluster(cluster)?;
    let e = c.exposures.iter().find(|e| e.id == node)?;
    Some((c.clone(), SecretRef::node_key(c, e)))
}

/// Keep `<source_dir>/.sops.yaml` equal to the creation rules for the spec's recipients
/// (staged).
fn write_creation_rules(
    stage: &mut Stage,
    spec_dir: &Path,
    source_dir: &str,
    recipients: &[String],
) {
    let path = spec_dir.join(secrets::source_path(source_dir, ".sops.yaml"));
    let text = secrets::sops_creation_rules(recipients);
    if stage.read(&path).as_deref() == Some(text.as_bytes()) {
        return;
    }
    let note = format!("wrote {} (SOPS creation rules)", path.display());
    stage.write(&path, text.into_bytes(), 0o644, Some(note));
}

/// Encrypt a node's key Secret for its cluster's recipients and write it to
/// `<spec dir>/<source_dir>/<node>.sops.yaml` (with the dir's `.sops.yaml`), staged.
pub fn deliver_sops(
    spec_dir: &Path,
    t: &Tailnet,
    k: &NewKey,
    stage: &mut Stage,
) -> Result<(), String> {
    let (c, r) = node_ref(t, &k.cluster, &k.node)
        .ok_or_else(|| format!("node {:?} is not in cluster {:?}", k.node, k.cluster))?;
    let SecretBackend::Sops {
        recipients,
        source_dir,
    } = &c.secrets
    else {
        return Err(format!(
            "cluster {:?} does not use the sops backend",
            c.name
        ));
    };
    write_creation_rules(stage, spec_dir, source_dir, recipients);
    let data = BTreeMap::from([(
        secrets::PRIVATE_KEY.to_string(),
        format!("{}\n", k.private_key).into_bytes(),
    )]);
    let text = tsk8s_sops::encrypt_secret(
        &r.name,
        &r.namespace,
        &data,
        &node_labels(&k.node),
        recipients,
        &now_rfc3339(),
    )
    .map_err(|e| {
        format!(
            "cluster {:?}: cannot encrypt the key of {:?}: {e}",
            c.name, k.node
        )
    })?;
    let rel = secrets::source_file(&c, &r.remote).unwrap_or_default();
    let path = spec_dir.join(&rel);
    let note = format!(
        "{} key for {:?} (cluster {:?}) encrypted for {} age recipient(s) into {}; commit it",
        if k.rotated { "rotated" } else { "new" },
        k.node,
        k.cluster,
        recipients.len(),
        path.display()
    );
    stage.write(&path, text.into_bytes(), 0o644, Some(note));
    Ok(())
}

/// age identities for re-encrypting, where `sops` looks for them: `SOPS_AGE_KEY`,
/// `SOPS_AGE_KEY_FILE`, then `$XDG_CONFIG_HOME/sops/age/keys.txt` (`~/.config/…`).
fn age_identities() -> String {
    let mut ids = String::new();
    if let Ok(k) = std::env::var("SOPS_AGE_KEY") {
        ids.push_str(&k);
        ids.push('\n');
    }
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(f) = std::env::var_os("SOPS_AGE_KEY_FILE") {
        files.push(PathBuf::from(f));
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(c) = config {
        files.push(c.join("sops/age/keys.txt"));
    }
    for f in files {
        if let Ok(t) = fs::read_to_string(&f) {
            ids.push_str(&t);
            ids.push('\n');
        }
    }
    ids
}

/// Before `lock` delivers keys: for every SOPS cluster, keep `.sops.yaml` current, and check
/// the file of every locked node that gets no new key. A missing file is an error naming
/// `--rotate`; a file for other recipients is re-encrypted (same key) when an identity of a
/// current recipient is at hand, else an error. `fresh` are the nodes getting new keys now.
pub fn sops_upkeep(
    spec_dir: &Path,
    t: &Tailnet,
    lock: &Lock,
    fresh: &[NewKey],
    stage: &mut Stage,
) -> Result<(), String> {
    let fresh: BTreeSet<&str> = fresh.iter().map(|k| k.node.as_str()).collect();
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut identities: Option<String> = None;
    for c in &t.clusters {
        let SecretBackend::Sops {
            recipients,
            source_dir,
        } = &c.secrets
        else {
            continue;
        };
        write_creation_rules(stage, spec_dir, source_dir, recipients);
        let want: BTreeSet<&str> = recipients.iter().map(|r| r.trim()).collect();
        for e in &c.exposures {
            if fresh.contains(e.id.as_str()) || !lock.nodes.contains_key(&e.id) {
                continue;
            }
            let r = SecretRef::node_key(c, e);
            let rel = secrets::source_file(c, &r.remote).unwrap_or_default();
            let path = spec_dir.join(&rel);
            let Ok(text) = fs::read_to_string(&path) else {
                missing.push(e.id.clone());
                continue;
            };
            let Ok(got) = tsk8s_sops::recipients_of(&text) else {
                problems.push(format!(
                    "{}: not a SOPS file; replace it with `tsk8s lock --rotate {}`",
                    path.display(),
                    e.id
                ));
                continue;
            };
            let got: BTreeSet<&str> = got.iter().map(|r| r.trim()).collect();
            if got == want {
                continue;
            }
            let ids = identities.get_or_insert_with(age_identities);
            let data = match tsk8s_sops::decrypt_secret_data(&text, ids) {
                Ok(d) => d,
                Err(_) => {
                    problems.push(format!(
                        "{}: encrypted for other age recipients than the spec names, and no identity of a current recipient is available to re-encrypt it; set SOPS_AGE_KEY_FILE to one, or give the node a new key with `tsk8s lock --rotate {}`",
                        path.display(),
                        e.id
                    ));
                    continue;
                }
            };
            let text = tsk8s_sops::encrypt_secret(
                &r.name,
                &r.namespace,
                &data,
                &node_labels(&e.id),
                recipients,
                &now_rfc3339(),
            )
            .map_err(|e| format!("{}: cannot re-encrypt: {e}", path.display()))?;
            let note = format!(
                "re-encrypted {} for the spec's {} age recipient(s) (same key); commit it",
                path.display(),
                recipients.len()
            );
            stage.write(&path, text.into_bytes(), 0o644, Some(note));
        }
    }
    if !missing.is_empty() {
        let rotate: Vec<String> = missing.iter().map(|n| format!("--rotate {n}")).collect();
        problems.push(format!(
            "node(s) {} use the sops backend but have no SOPS file (tsk8s never stores private keys, so it cannot write one for an existing key); give them new keys: `tsk8s lock {}`",
            missing.join(", "),
            rotate.join(" ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// For the external-secrets backend: the store's secret value `{"private-key": "…"}`, written
/// as `<keys dir>/<cluster>/<node>.json` (for `aws secretsmanager … file://…`).
pub fn store_json(k: &NewKey) -> String {
    let json = serde_json::json!({ secrets::PRIVATE_KEY: format!("{}\n", k.private_key) });
    format!("{json}\n")
}

// ---------------------------------------------------------------------------------------------
// Private files under `--keys-dir`: the one writer of private keys and store files.

/// The current user, as the kernel sees it for file ownership.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn c_name(name: &std::ffi::OsStr) -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(name.as_bytes()).map_err(|_| format!("{name:?}: NUL in a file name"))
}

/// The way a keys dir (or one of its cluster dirs) is unfit for private keys, from its
/// `lstat`/`fstat`; `None` when it is a real dir owned by the current user that no one else
/// can enter or read.
fn unsafe_dir(st: &libc::stat) -> Option<String> {
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return Some("is a symlink (give the real directory)".into());
    }
    if kind != libc::S_IFDIR {
        return Some("is not a directory".into());
    }
    let me = euid();
    if st.st_uid != me {
        return Some(format!(
            "is owned by uid {}, not by you (uid {me}): someone else can read or swap the keys",
            st.st_uid
        ));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "has mode {mode:04o}: group or others can enter it; private keys need a directory only you can access (`chmod 700` it)"
        ));
    }
    None
}

/// `lstat` of `name` in `dir` (`AT_FDCWD` for a path), `None` when it does not exist.
fn lstat_at(dir: libc::c_int, name: &std::ffi::CStr) -> std::io::Result<Option<libc::stat>> {
    // SAFETY: an all-zero `stat` is a valid value of the plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is NUL-terminated and `st` is a valid, writable `stat`.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        return Ok(Some(st));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `DIR` as given, without a trailing `/` or `.` (which would make the kernel follow a
/// symlink that `O_NOFOLLOW` is meant to refuse).
fn plain_dir(dir: &Path) -> PathBuf {
    let p: PathBuf = dir.components().collect();
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

fn refuse(what: &Path, why: &str) -> String {
    format!("keys dir {what:?} {why}; nothing was written")
}

/// Before `lock` writes anything: `--keys-dir DIR` and the `DIR/<sub>` it will write into, where
/// they exist, must each be a real directory (not a symlink) owned by the current user with no
/// group or other access. Changes nothing.
pub fn check_keys_dir(dir: &Path, subdirs: &[&str]) -> Result<(), String> {
    let dir = plain_dir(dir);
    let Some(st) =
        lstat_at(libc::AT_FDCWD, &c_name(dir.as_os_str())?).map_err(|e| format!("{dir:?}: {e}"))?
    else {
        return Ok(()); // made 0700 when the first key is written
    };
    if let Some(why) = unsafe_dir(&st) {
        return Err(refuse(&dir, &why));
    }
    for sub in subdirs {
        let path = dir.join(sub);
        if let Some(st) = lstat_at(libc::AT_FDCWD, &c_name(path.as_os_str())?)
            .map_err(|e| format!("{path:?}: {e}"))?
            && let Some(why) = unsafe_dir(&st)
        {
            return Err(refuse(&path, &why));
        }
    }
    Ok(())
}

/// Open (making it, mode 0700, when missing) the directory `name` in `parent` without following
/// a symlink, and check it is fit for private keys.
fn open_private_dir(
    parent: libc::c_int,
    name: &std::ffi::CStr,
    shown: &Path,
) -> Result<std::os::fd::OwnedFd, String> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: `name` is NUL-terminated.
    if unsafe { libc::mkdirat(parent, name.as_ptr(), 0o700) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("{shown:?}: cannot create: {e}"));
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `name` is NUL-terminated; the result is checked before use.
    let fd = unsafe { libc::openat(parent, name.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if let Ok(Some(st)) = lstat_at(parent, name)
            && let Some(why) = unsafe_dir(&st)
        {
            return Err(refuse(shown, &why));
        }
        return Err(format!("{shown:?}: cannot open: {e}"));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero `stat` is valid; `fd` is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut st) } != 0 {
        return Err(format!(
            "{shown:?}: cannot stat: {}",
            std::io::Error::last_os_error()
        ));
    }
    if let Some(why) = unsafe_dir(&st) {
        return Err(refuse(shown, &why));
    }
    Ok(fd)
}

/// Write a private key or a store file: `DIR/<sub>/<name>` with mode 0600, whatever was there.
///
/// `DIR` and `DIR/<sub>` are opened without following symlinks (made 0700 when missing) and
/// must be real dirs owned by the current user with no group or other access. The bytes go
/// into a fresh temp file beside the target, created `O_CREAT|O_EXCL|O_NOFOLLOW` under an
/// unpredictable name (so nothing already there, a file of another mode or a symlink planted
/// under a guessable name, is ever opened), `fchmod` 0600 before the first byte, and renamed
/// over `name` (which replaces a symlink or a file of another mode rather than writing through
/// it). Returns the target's path. Nothing is synced here: after the last file, the caller
/// makes them all durable at once with [`sync_private`] (one `syncfs` instead of two fsyncs
/// per file: `lock` of 10,000 new nodes waited seconds on them).
pub fn write_private(dir: &Path, sub: &str, name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    use std::os::unix::fs::PermissionsExt as _;
    for part in [sub, name] {
        if part.is_empty() || part == "." || part == ".." || part.contains('/') {
            return Err(format!("{part:?}: not a file name"));
        }
    }
    let dir = plain_dir(dir);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt as _;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("{parent:?}: cannot create: {e}"))?;
    }
    let top = open_private_dir(libc::AT_FDCWD, &c_name(dir.as_os_str())?, &dir)?;
    let sub_path = dir.join(sub);
    let cdir = open_private_dir(top.as_raw_fd(), &c_name(sub.as_ref())?, &sub_path)?;
    let target = sub_path.join(name);
    let dfd = cdir.as_raw_fd();
    let (tmp, file) = {
        use rand_core::RngCore as _;
        let mut tries = 0;
        loop {
            let tmp = c_name(format!(".{name}.{:016x}.tmp", rand_core::OsRng.next_u64()).as_ref())?;
            let flags =
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            // SAFETY: `tmp` is NUL-terminated; the mode is passed as the variadic argument.
            let fd = unsafe { libc::openat(dfd, tmp.as_ptr(), flags, 0o600 as libc::c_uint) };
            if fd >= 0 {
                // SAFETY: `fd` is a fresh descriptor that nothing else owns.
                break (tmp, unsafe { fs::File::from_raw_fd(fd) });
            }
            let e = std::io::Error::last_os_error();
            tries += 1;
            if e.kind() != std::io::ErrorKind::AlreadyExists || tries >= 16 {
                return Err(format!("{:?}: cannot create a temp file: {e}", sub_path));
            }
        }
    };
    let unlink = || {
        // SAFETY: `tmp` is NUL-terminated; a failure leaves only a 0600 temp file.
        unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
    };
    let written = (|| -> std::io::Result<()> {
        let mut file = file;
        file.set_permissions(fs::Permissions::from_mode(0o600))?; // fchmod, before any byte
        file.write_all(bytes)
    })();
    if let Err(e) = written {
        unlink();
        return Err(format!("{target:?}: cannot write: {e}"));
    }
    // SAFETY: both names are NUL-terminated and relative to the open dir.
    if unsafe { libc::renameat(dfd, tmp.as_ptr(), dfd, c_name(name.as_ref())?.as_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        unlink();
        return Err(format!("{target:?}: cannot replace: {e}"));
    }
    Ok(target)
}

/// Make every file [`write_private`] wrote under `dir` durable (contents and renames): one
/// `syncfs` of the filesystem holding `dir`, opened without following a symlink.
pub fn sync_private(dir: &Path) -> Result<(), String> {
    let dir = plain_dir(dir);
    let fd = open_private_dir(libc::AT_FDCWD, &c_name(dir.as_os_str())?, &dir)?;
    // SAFETY: `fd` is an open directory.
    if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fd)) } != 0 {
        return Err(format!(
            "{dir:?}: cannot sync: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// After `lock` wrote the lock: what must be re-applied for rotated keys and removed nodes,
/// appended to `out` (which the caller prints through `tsk8s_policy::text::neutralize`; user
/// values are escaped with `tsk8s_policy::text::escape`, so none can break a line).
pub fn reapply(out: &mut String, spec_dir: &Path, t: &Tailnet, old: &Lock, upd: &LockUpdate) {
    use std::fmt::Write as _;
    use tsk8s_policy::text::escape;
    let rotated: Vec<&NewKey> = upd.new_keys.iter().filter(|k| k.rotated).collect();
    let removed: Vec<(&String, &crate::lockfile::NodeEntry)> = old
        .nodes
        .iter()
        .filter(|(n, _)| !upd.lock.nodes.contains_key(*n))
        .collect();
    if rotated.is_empty() && removed.is_empty() {
        return;
    }
    let _ = writeln!(out, "to re-apply:");
    for k in &rotated {
        let Some((c, r)) = node_ref(t, &k.cluster, &k.node) else {
            continue;
        };
        let how = match &c.secrets {
            SecretBackend::Existing => format!(
                "replace Secret {}/{} with the new key file (`kubectl -n {} create secret generic {} --from-file={}=<file> --dry-run=client -o yaml | kubectl apply -f -`)",
                r.namespace,
                r.name,
                r.namespace,
                r.name,
                secrets::PRIVATE_KEY
            ),
            SecretBackend::ExternalSecrets { key_prefix, .. } => format!(
                "put the new key into the store at {:?} (property {:?}); the ExternalSecret refreshes Secret {}/{} within its refresh interval (or annotate it `force-sync=$(date +%s)`)",
                secrets::remote_key(key_prefix, &c.name, &r.remote),
                secrets::PRIVATE_KEY,
                r.namespace,
                r.name
            ),
            SecretBackend::Sops { .. } => format!(
                "commit {} (re-encrypted); the GitOps controller decrypts it into Secret {}/{}",
                secrets::source_file(&c, &r.remote).unwrap_or_default(),
                r.namespace,
                r.name
            ),
            SecretBackend::SealedSecrets { .. } => format!(
                "reseal the new key into {} (command above) and commit it",
                secrets::source_file(&c, &r.remote).unwrap_or_default()
            ),
        };
        let _ = writeln!(out, "  rotated \"{}\": {}.", escape(&k.node), escape(&how));
        let _ = writeln!(
            out,
            "    Then `tsk8s build`: peers' configs change only in \"{}\"'s public key (`tsk8s diff` lists them); re-import devices/<device>.conf on devices that reach it. The runtime reloads the key when the Secret volume updates.",
            escape(&k.node)
        );
    }
    for (node, entry) in removed {
        let c = t.cluster(&entry.cluster);
        let how = match c.map(|c| &c.secrets) {
            Some(SecretBackend::Sops { source_dir, .. }) => {
                let rel = secrets::source_path(source_dir, &format!("{node}.sops.yaml"));
                match remove_confined(spec_dir, &rel) {
                    Ok(()) => format!(
                        "removed {}; commit the deletion",
                        spec_dir.join(&rel).display()
                    ),
                    Err(why) => format!("delete {rel} if it is still there ({why})"),
                }
            }
            Some(SecretBackend::SealedSecrets { source_dir }) => format!(
                "delete {}",
                secrets::source_path(source_dir, &format!("{node}.yaml"))
            ),
            Some(SecretBackend::ExternalSecrets { key_prefix, .. }) => format!(
                "delete {:?} from the store (the ExternalSecret and its Secret go with the next build)",
                secrets::remote_key(key_prefix, &entry.cluster, node)
            ),
            _ => format!(
                "delete Secret {} (`kubectl delete secret {} -n <namespace>`)",
                crate::lower::k8s::key_secret_name(node),
                crate::lower::k8s::key_secret_name(node)
            ),
        };
        let _ = writeln!(
            out,
            "  removed \"{}\" (cluster \"{}\"): {}. Then `tsk8s build`: its workload and every peer entry for it go away; re-import devices/<device>.conf on devices that reached it.",
            escape(node),
            escape(&entry.cluster),
            escape(&how)
        );
    }
}

/// Remove the regular file `rel` (a relative path of plain names) under `dir`, confined to it:
/// each directory on the way is opened relative to the one before with `O_NOFOLLOW`, and the
/// last name is unlinked from the directory that was opened, only if it is a regular file (not
/// a symlink). So a `..`, an absolute path or a symlink anywhere below `dir` can never make this
/// remove something outside it; those are refused and nothing is removed. (A name check before
/// the walk would leave a gap between check and use; opening each step closes it.)
pub fn remove_confined(dir: &Path, rel: &str) -> Result<(), String> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;

    let parts: Vec<&str> = rel.split('/').collect();
    let Some((file, dirs)) = parts.split_last() else {
        return Err("empty path".into());
    };
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return Err(format!("{rel:?} is not a plain relative path"));
    }
    let open = |at: libc::c_int, name: &[u8], follow: bool| -> Result<OwnedFd, String> {
        let c = CString::new(name).map_err(|_| "a name holds NUL".to_string())?;
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned below.
        let fd = unsafe {
            libc::openat(
                at,
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | nofollow | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // O_NOFOLLOW | O_DIRECTORY on a symlink fails with ELOOP or ENOTDIR.
            return Err(
                if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
                    format!(
                        "{} is a symlink or not a directory; not followed",
                        String::from_utf8_lossy(name)
                    )
                } else {
                    format!("{}: {e}", String::from_utf8_lossy(name))
                },
            );
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // `dir` itself is the user's choice (it may be a symlink); below it nothing is followed.
    let top = match dir.as_os_str().as_bytes() {
        b"" => b".".as_slice(),
        d => d,
    };
    let mut cur = open(libc::AT_FDCWD, top, true)?;
    for d in dirs {
        cur = open(cur.as_raw_fd(), d.as_bytes(), false)?;
    }
    let name = CString::new(file.as_bytes()).map_err(|_| "a name holds NUL".to_string())?;
    // SAFETY: an all-zero `stat` is a valid value for fstatat to fill in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dir fd, NUL-terminated name, `st` is writable.
    if unsafe {
        libc::fstatat(
            cur.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(format!("{file}: {}", std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!(
            "{file} is not a regular file (a symlink is never removed through)"
        ));
    }
    // SAFETY: valid dir fd and NUL-terminated name; flags 0 unlinks a file, never a dir.
    if unsafe { libc::unlinkat(cur.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        return Err(format!("{file}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_confined_stays_inside_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("repo");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(top.join("secrets/prod")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("x.sops.yaml"), "keep").unwrap();

        // A regular file inside: removed.
        fs::write(top.join("secrets/prod/a.sops.yaml"), "a").unwrap();
        remove_confined(&top, "secrets/prod/a.sops.yaml").unwrap();
        assert!(!top.join("secrets/prod/a.sops.yaml").exists());

        // `..`, absolute and empty components: refused before anything is opened.
        for rel in [
            "secrets/prod/../../../outside/x.sops.yaml",
            "/outside/x.sops.yaml",
            "secrets//x.sops.yaml",
            "./x.sops.yaml",
            "",
        ] {
            assert!(remove_confined(&top, rel).is_err(), "{rel:?}");
        }

        // A symlinked dir on the way: refused, its target untouched.
        std::os::unix::fs::symlink(&outside, top.join("secrets/link")).unwrap();
        let e = remove_confined(&top, "secrets/link/x.sops.yaml").unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        // The file itself a symlink: refused, the link and its target kept.
        let file = top.join("secrets/prod/x.sops.yaml");
        std::os::unix::fs::symlink(outside.join("x.sops.yaml"), &file).unwrap();
        let e = remove_confined(&top, "secrets/prod/x.sops.yaml").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(fs::symlink_metadata(&file).is_ok());
        assert_eq!(
            fs::read_to_string(outside.join("x.sops.yaml")).unwrap(),
            "keep"
        );
        // A dir in the file's place is never removed.
        fs::create_dir(top.join("secrets/prod/d.sops.yaml")).unwrap();
        assert!(remove_confined(&top, "secrets/prod/d.sops.yaml").is_err());
        assert!(top.join("secrets/prod/d.sops.yaml").is_dir());
        // A missing file: an error, nothing else happens.
        assert!(remove_confined(&top, "secrets/prod/none.sops.yaml").is_err());
    }
}
