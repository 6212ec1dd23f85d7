//! The command line: the only module that touches the filesystem, the environment, the
//! clock or randomness. Exit codes: 0 ok, 1 differences or failed tests, 2 bad input or error.

pub mod access;
pub mod import;
pub mod output;
pub mod secrets;

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::build::{self, Failure, Input};
use crate::lockfile::{self, LockOptions, NewKey};
use crate::model::{ExposureKind, SecretBackend, Tailnet};

#[derive(Parser, Debug)]
#[command(
    name = "tsk8s",
    version,
    about = "Compile one tailnet.kdl into a Tailscale policy file and GitOps-ready Kubernetes manifests"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every check `build` runs (the spec, its lock, secret sources, the spec's tests);
    /// write nothing. Exit 0 valid, 1 failed tests, 2 invalid.
    Check {
        #[arg(default_value = "tailnet.kdl")]
        spec: PathBuf,
    },
    /// Compile the spec into the output dir (policy.hujson, clusters/, devices/, gitops/).
    Build {
        #[arg(default_value = "tailnet.kdl")]
        spec: PathBuf,
        /// Output dir, owned wholly by tsk8s.
        #[arg(short = 'o', long = "out", default_value = "out")]
        out: PathBuf,
        /// Write nothing; exit 1 if the output dir differs from a fresh build.
        #[arg(long)]
        check: bool,
        /// Build even if the spec's tests fail (by default a failing test is exit 1 and
        /// nothing is written).
        #[arg(long)]
        no_tests: bool,
        /// Flush the new tree to disk before swapping it in, so it also survives a power loss
        /// (the swap is atomic against a killed process either way).
        #[arg(long, conflicts_with = "check")]
        fsync: bool,
        /// How long to wait for another build writing the same output dir (each build holds
        /// an exclusive lock on `.<DIR>.tsk8s-lock` beside it from its first file, written as
        /// it compiles, to the swap); then exit 2.
        #[arg(
            long,
            value_name = "SECS",
            default_value_t = 60,
            conflicts_with = "check"
        )]
        lock_timeout: u64,
        /// Refuse (exit 2, nothing written) to replace or remove a file edited by hand since
        /// tsk8s wrote it (its sha256 no longer matches `.tsk8s-manifest`). Without it such
        /// files are named on stderr and replaced (exit 0).
        #[arg(long, conflicts_with = "check")]
        refuse_edited: bool,
    },
    /// Assign addresses, ports and keys to new nodes in tailnet.lock (the only writer of it).
    Lock {
        #[arg(default_value = "tailnet.kdl")]
        spec: PathBuf,
        /// Where new private keys go (mode 0600), for backends that load them by hand
        /// (existing, external-secrets, sealed-secrets). Must be outside the output dir.
        #[arg(long)]
        keys_dir: Option<PathBuf>,
        /// Replace this node's key (repeatable).
        #[arg(long, value_name = "NODE")]
        rotate: Vec<String>,
        /// Tombstone this node (already deleted from the spec) (repeatable).
        #[arg(long, value_name = "NODE")]
        remove: Vec<String>,
    },
    /// Show what the spec changes in the output dir (as committed at --base), by object.
    /// Exit 0 no differences, 1 differences, 2 bad input.
    Diff {
        #[arg(default_value = "tailnet.kdl")]
        spec: PathBuf,
        /// The output dir (as in `build -o`).
        #[arg(short = 'o', long = "out", default_value = "out")]
        out: PathBuf,
        /// Compare with the output dir as committed at this git ref (a ref only, never a
        /// directory). Default: the output dir in the working tree.
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// Compare with this directory instead.
        #[arg(long, value_name = "DIR", conflicts_with = "base")]
        base_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run the spec's ACL tests against the topology it defines. Exit 1 on failures.
    Test {
        #[arg(default_value = "tailnet.kdl")]
        spec: PathBuf,
    },
    /// Turn an existing Tailscale policy file into a spec. Exit 2 naming what it cannot express.
    Import {
        policy: PathBuf,
        /// Write the spec here instead of stdout.
        #[arg(short = 'o', long = "out")]
        out: Option<PathBuf>,
        #[arg(long, default_value = "imported")]
        name: String,
        #[arg(long, default_value = "example.ts.net")]
        domain: String,
    },
    /// Which users, devices and nodes may reach TARGET[:PORT] (a node, device, host alias or
    /// IP), the rule that allows each, and the WireGuard path that carries it. Exit 0 some
    /// source can reach it, 1 none can, 2 bad input.
    WhoCanReach {
        target: String,
        #[arg(long, default_value = "tailnet.kdl")]
        spec: PathBuf,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: access::Proto,
        #[arg(long, value_enum, default_value = "text")]
        format: access::AccessFormat,
    },
    /// May SRC (a user email, device or node) reach DST:PORT? Allow/deny with the rule and the
    /// WireGuard path (or why none carries it). Exit 0 allowed, 1 denied, 2 bad input.
    Can {
        src: String,
        dst: String,
        #[arg(long, default_value = "tailnet.kdl")]
        spec: PathBuf,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: access::Proto,
        #[arg(long, value_enum, default_value = "text")]
        format: access::AccessFormat,
    },
    /// Work with a Tailscale policy file directly.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a policy file; with --nodes, also run its tests.
    Check {
        policy: PathBuf,
        #[arg(long)]
        nodes: Option<PathBuf>,
    },
    /// Print each node's packet filter as JSON.
    Filter {
        policy: PathBuf,
        #[arg(long)]
        nodes: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

/// Run the CLI; returns the process exit code.
pub fn main() -> ExitCode {
    // For tests only (undocumented in `--help`; see docs/deploying.md): shard meshes within
    // this many bytes per ConfigMap so a small spec yields several shards.
    if let Some(n) = std::env::var("TSK8S_MESH_SHARD_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        crate::lower::mesh::set_shard_bytes(n.max(1024));
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ExitCode::from(run(cli))
}

fn fail(msg: impl std::fmt::Display) -> u8 {
    let text = format!("error: {msg}\n");
    let _ = std::io::stderr().write_all(tsk8s_policy::text::neutralize(&text).as_bytes());
    2
}

/// The largest input file (spec, lock, policy, topology, import input) read: anything larger
/// is refused before it is read whole (no honest spec comes near it).
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Read an input file as UTF-8 text, refusing one over [`MAX_INPUT_BYTES`] (by its size, and
/// by reading at most one byte more, for files that grow or do not know their size).
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let name = crate::diag::escape(&path.display().to_string()).into_owned();
    let too_large =
        |size: &str| format!("{name}: too large ({size} bytes; input files are limited to 64 MiB)");
    let f = fs::File::open(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_INPUT_BYTES {
        return Err(too_large(&len.to_string()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{name}: cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(too_large("more than 67108864"));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{name}: not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Paths and texts for one spec.
struct Loaded {
    spec_path: PathBuf,
    spec_dir: PathBuf,
    spec_name: String,
    spec: String,
    lock_path: PathBuf,
    lock_name: String,
    lock: Option<String>,
    /// Committed secret sources (SOPS, SealedSecret files) the spec's backends read.
    sources: BTreeMap<String, Vec<u8>>,
    /// The spec through the front end (run once: finding the sources needs it too).
    front: Option<Result<build::Front, build::Failure>>,
    /// The lock parsed beside the front end ([`build::front_and_lock`]).
    parsed_lock: Option<Result<crate::lockfile::Lock, build::Failure>>,
}

fn load(spec: &Path) -> Result<Loaded, String> {
    if fs::symlink_metadata(spec).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return Err(format!(
            "{}: no such file; pass the spec's path (e.g. `tsk8s check path/to/tailnet.kdl`) or run in the spec's directory",
            crate::diag::escape(&spec.display().to_string())
        ));
    }
    let text = read_text(spec)?;
    let spec_dir = spec
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let lock_path = spec_dir.join("tailnet.lock");
    let lock = if lock_path.exists() {
        Some(read_text(&lock_path)?)
    } else {
        None
    };
    let spec_name = spec.display().to_string();
    let lock_name = lock_path.display().to_string();
    let (front, parsed_lock) = build::front_and_lock(&build::Input {
        spec_file: &spec_name,
        spec: &text,
        lock_file: &lock_name,
        lock: lock.as_deref(),
        sources: BTreeMap::new(),
    });
    let sources = match &front {
        Ok(f) => crate::cli::secrets::read_sources_for(&spec_dir, &f.tailnet),
        Err(_) => BTreeMap::new(),
    };
    Ok(Loaded {
        sources,
        spec_name,
        spec_path: spec.to_path_buf(),
        spec_dir,
        spec: text,
        lock_name,
        lock_path,
        lock,
        front: Some(front),
        parsed_lock: Some(parsed_lock),
    })
}

impl Loaded {
    /// The spec loaded for the compiler core (front end result reused, not recomputed).
    fn loaded(&mut self) -> Result<build::Loaded, build::Failure> {
        let front = match self.front.take() {
            Some(f) => f?,
            None => build::front(&self.spec_name, &self.spec)?,
        };
        let lock = match self.parsed_lock.take() {
            Some(l) => l?,
            None => build::parse_lock(&self.input())?,
        };
        build::load_parsed(&self.input(), front, lock)
    }

    fn input(&self) -> Input<'_> {
        Input {
            spec_file: &self.spec_name,
            spec: &self.spec,
            lock_file: &self.lock_name,
            lock: self.lock.as_deref(),
            sources: self.sources.clone(),
        }
    }
}

fn report(f: &Failure) -> u8 {
    let _ = std::io::stderr().write_all(tsk8s_policy::text::neutralize(&f.text).as_bytes());
    2
}

impl Loaded {
    /// The spec through [`build::compile`] (the one path of check, build, diff and lock),
    /// its files to `sink`.
    fn compile(
        &mut self,
        checks: build::Checks,
        sink: &mut dyn crate::emit::Sink,
    ) -> Result<build::Compiled, Failure> {
        let loaded = self.loaded()?;
        build::compile(&self.input(), loaded, checks, sink)
    }
}

/// Print a compile's warnings; on failed tests print them and give exit 1.
fn tests_gate(c: &build::Compiled) -> Option<u8> {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(c.warnings.as_bytes());
    let f = c.test_failures.as_ref()?;
    let _ = err.write_all(f.as_bytes());
    Some(1)
}

pub fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Check { spec } => check(&spec),
        Command::Build {
            spec,
            out,
            check,
            no_tests,
            fsync,
            lock_timeout,
            refuse_edited,
        } => build(
            &spec,
            &out,
            &BuildFlags {
                check,
                no_tests,
                fsync,
                lock_timeout,
                refuse_edited,
            },
        ),
        Command::Diff {
            spec,
            out,
            base,
            base_dir,
            format,
        } => {
            let base = match (base, base_dir) {
                (Some(r), _) => Base::Ref(r),
                (None, Some(d)) => Base::Dir(d),
                (None, None) => Base::Out,
            };
            diff(&spec, &out, &base, format)
        }
        Command::Lock {
            spec,
            keys_dir,
            rotate,
            remove,
        } => lock(&spec, keys_dir.as_deref(), rotate, remove),
        Command::Test { spec } => test(&spec),
        Command::Import {
            policy,
            out,
            name,
            domain,
        } => import::run(&policy, out.as_deref(), &name, &domain),
        Command::WhoCanReach {
            target,
            spec,
            proto,
            format,
        } => access::who_can_reach(&spec, &target, proto, format),
        Command::Can {
            src,
            dst,
            spec,
            proto,
            format,
        } => access::can(&spec, &src, &dst, proto, format),
        Command::Policy { command } => policy(command),
    }
}

/// `tsk8s check`: compile with every check; one summary line.
fn check(spec: &Path) -> u8 {
    let mut l = match load(spec) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let (clusters, nodes, devices) = match &l.front {
        Some(Ok(f)) => (
            f.tailnet.clusters.len(),
            f.tailnet.exposures().count(),
            f.tailnet.devices.len(),
        ),
        _ => (0, 0, 0),
    };
    match l.compile(build::Checks::ALL, &mut crate::emit::Discard) {
        Ok(c) => {
            if let Some(code) = tests_gate(&c) {
                return code;
            }
            eprintln!(
                "{}: ok ({clusters} cluster(s), {nodes} exposure(s), {devices} device(s))",
                crate::diag::escape(&l.spec_name),
            );
            0
        }
        Err(f) => report(&f),
    }
}

/// `tsk8s build`'s flags.
struct BuildFlags {
    check: bool,
    no_tests: bool,
    fsync: bool,
    lock_timeout: u64,
    refuse_edited: bool,
}

/// `tsk8s build`: compile, then compare with (`--check`) or write the output dir. The files
/// go to the sink as they are compiled (a [`output::DirWriter`] writing the temp dir, or the
/// hashes `--check` compares), so the tree is never held in memory whole.
fn build(spec: &Path, out: &Path, flags: &BuildFlags) -> u8 {
    let mut l = match load(spec) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let checks = build::Checks {
        tests: !flags.no_tests,
        sources: true,
    };
    let mut hashes = output::Hashes::default();
    let mut writer = output::DirWriter::new(
        out,
        if flags.fsync {
            output::Durability::Flushed
        } else {
            output::Durability::Atomic
        },
        std::time::Duration::from_secs(flags.lock_timeout),
    );
    let sink: &mut dyn crate::emit::Sink = match flags.check {
        true => &mut hashes,
        false => &mut writer,
    };
    // On any failure the writer is dropped unfinished: its temp dir goes, nothing changes.
    let c = match l.compile(checks, sink) {
        Ok(c) => c,
        Err(f) => return report(&f),
    };
    if let Some(code) = tests_gate(&c) {
        eprintln!(
            "{}: wrote nothing (tests failed)",
            crate::diag::escape(&out.display().to_string())
        );
        return code;
    }
    for (path, len) in &c.large_objects {
        eprintln!(
            "warning: {path}: {len} bytes, over 200 KiB: close to Kubernetes' 1 MiB limit for one ConfigMap or Secret, and over what a client-side apply can keep in its last-applied annotation (256 KiB; Argo CD Applications from tsk8s use server-side apply)"
        );
    }
    // One line on stdout: what the output costs in cloud load balancers.
    println!("{} LoadBalancer Service(s)", c.load_balancers);
    if flags.check {
        return match output::stale(out, &hashes.0) {
            Ok(s) => check_tree(out, &s),
            Err(e) => fail(e),
        };
    }
    match writer.finish(flags.refuse_edited) {
        Ok(w) if w.changed => {
            for f in &w.edited {
                eprintln!(
                    "warning: {}: edited by hand since tsk8s wrote it; replaced by the build (change the spec instead)",
                    crate::diag::escape(&out.join(f).display().to_string())
                );
            }
            eprintln!("wrote {} file(s) to {}", c.files, out.display());
            0
        }
        Ok(_) => {
            eprintln!("{} is up to date ({} file(s))", out.display(), c.files);
            0
        }
        Err(e) => fail(e),
    }
}

/// `tsk8s test`: run the spec's tests.
fn test(spec: &Path) -> u8 {
    let mut l = match load(spec) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    match l
        .loaded()
        .map(|loaded| build::test_loaded_with_notes(&loaded))
    {
        Ok((r, notes)) => {
            for n in &notes {
                eprintln!("note: {n}");
            }
            if r.passed() {
                eprintln!(
                    "{}: {} test(s) passed",
                    crate::diag::escape(&l.spec_name),
                    r.total
                );
                0
            } else {
                let mut text = String::new();
                for f in &r.failures {
                    text.push_str(&crate::diag::escape(f));
                    text.push('\n');
                }
                let text = tsk8s_policy::text::neutralize(&text);
                let _ = std::io::stdout().write_all(text.as_bytes());
                eprintln!(
                    "{}: {}",
                    crate::diag::escape(&l.spec_name),
                    tsk8s_policy::acltest::TESTS_FAILED
                );
                1
            }
        }
        Err(f) => report(&f),
    }
}

/// `tsk8s policy check|filter`: the policy crate's commands on files.
fn policy(command: PolicyCommand) -> u8 {
    let (outcome, _) = match command {
        PolicyCommand::Check { policy, nodes } => {
            let p = match read_text(&policy) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let n = match nodes.as_deref().map(read_text).transpose() {
                Ok(n) => n,
                Err(e) => return fail(e),
            };
            (tsk8s_policy::cli::policy_check(&p, n.as_deref()), ())
        }
        PolicyCommand::Filter { policy, nodes } => {
            let (p, n) = match (read_text(&policy), read_text(&nodes)) {
                (Ok(p), Ok(n)) => (p, n),
                (Err(e), _) | (_, Err(e)) => return fail(e),
            };
            (tsk8s_policy::cli::policy_filter(&p, &n), ())
        }
    };
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    u8::try_from(outcome.code).unwrap_or(2)
}

/// `build --check`'s verdict on the dir ([`output::stale`]): exit 0 up to date, 1 stale.
fn check_tree(out: &Path, s: &output::Stale) -> u8 {
    let (added, changed, removed) = (&s.added, &s.changed, &s.removed);
    if added.is_empty() && changed.is_empty() && removed.is_empty() {
        eprintln!("{} is up to date", out.display());
        return 0;
    }
    eprintln!(
        "{} is stale: {} file(s) to add, {} to change, {} to remove; run `tsk8s build` and commit the result",
        out.display(),
        added.len(),
        changed.len(),
        removed.len()
    );
    for (mark, list) in [("+", &added), ("~", &changed), ("-", &removed)] {
        for p in list.iter().take(50) {
            eprintln!("  {mark} {p}");
        }
    }
    1
}

fn keygen() -> (String, String) {
    use base64::Engine;
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    let b64 = base64::engine::general_purpose::STANDARD;
    (b64.encode(secret.to_bytes()), b64.encode(public.as_bytes()))
}

/// Namespace the node's key Secret lives in (the workload's, for sidecars).
fn key_namespace(t: &Tailnet, cluster: &str, node: &str) -> String {
    let Some(c) = t.cluster(cluster) else {
        return String::new();
    };
    match c.exposures.iter().find(|e| e.id == node).map(|e| &e.kind) {
        Some(ExposureKind::Sidecar { namespace, .. }) => namespace.clone(),
        _ => c.namespace.clone(),
    }
}

fn lock(spec: &Path, keys_dir: Option<&Path>, rotate: Vec<String>, remove: Vec<String>) -> u8 {
    match lock_steps(spec, keys_dir, LockOptions { rotate, remove }) {
        Ok(code) | Err(code) => code,
    }
}

/// `tsk8s lock`; `Err` is the exit code of a failed step.
fn lock_steps(spec: &Path, keys_dir: Option<&Path>, opts: LockOptions) -> Result<u8, u8> {
    let mut l = load(spec).map_err(fail)?;
    let front = match l.front.take() {
        Some(Ok(f)) => f,
        Some(Err(f)) => return Err(report(&f)),
        None => build::front(&l.spec_name, &l.spec).map_err(|f| report(&f))?,
    };
    let old = build::parse_lock(&l.input()).map_err(|f| report(&f))?;
    let upd = lockfile::update(&front.tailnet, &old, &opts, &mut keygen).map_err(fail)?;
    let t = &front.tailnet;
    // Every write is staged and made only once all of them are known and the new lock passes
    // the checks `build` runs: a failed `lock` changes no file.
    let mut stage = Stage::default();
    let delivered = stage_new_keys(&l, t, &old, &upd, keys_dir, &mut stage)?;
    let text = lockfile::render(&upd.lock);
    check_new_lock(&l, &stage, &text)?;
    if l.lock.as_deref() != Some(text.as_str()) {
        stage.write(&l.lock_path, text.into_bytes(), 0o644, None);
    } else if stage.is_empty() {
        eprintln!("{} is up to date", l.lock_name);
        return Ok(0);
    }
    // Keys and SOPS files first, the lock last: if a write fails, the lock is as it was.
    stage.commit().map_err(fail)?;
    // Everything printed from here holds user text (names, paths, store keys): one text,
    // each value escaped where it is put in, the whole neutralized.
    let mut said = String::new();
    for (k, key, json) in &delivered {
        key_instructions(&mut said, t, k, key, json.as_deref());
    }
    for c in &upd.changes {
        said.push_str(&format!(
            "  {}\n",
            tsk8s_policy::text::escape(&c.to_string())
        ));
    }
    said.push_str(&format!(
        "wrote {}; run `tsk8s build` and commit both\n",
        crate::diag::escape(&l.lock_name)
    ));
    crate::cli::secrets::reapply(&mut said, &l.spec_dir, t, &old, &upd);
    let _ = std::io::stderr().write_all(tsk8s_policy::text::neutralize(&said).as_bytes());
    let _ = &l.spec_path;
    Ok(0)
}

/// A key delivered to `--keys-dir`: the key file, and for external-secrets the store's JSON.
type Delivered<'a> = (&'a NewKey, PathBuf, Option<PathBuf>);

/// Stage the new keys: to `--keys-dir` (every backend but sops, the dir checked before
/// anything is written) or into the SOPS files, with the SOPS files' upkeep.
fn stage_new_keys<'a>(
    l: &Loaded,
    t: &Tailnet,
    old: &lockfile::Lock,
    upd: &'a lockfile::LockUpdate,
    keys_dir: Option<&Path>,
    stage: &mut Stage,
) -> Result<Vec<Delivered<'a>>, u8> {
    let is_sops = |k: &NewKey| {
        matches!(
            t.cluster(&k.cluster).map(|c| &c.secrets),
            Some(SecretBackend::Sops { .. })
        )
    };
    let needs_dir: Vec<&NewKey> = upd.new_keys.iter().filter(|k| !is_sops(k)).collect();
    let keys_dir = match (needs_dir.is_empty(), keys_dir) {
        (true, _) => None,
        (false, None) => {
            return Err(fail(format!(
                "{} new private key(s) to deliver; pass --keys-dir DIR (outside the output dir, never committed) to receive them",
                needs_dir.len()
            )));
        }
        (false, Some(dir)) => {
            let clusters: std::collections::BTreeSet<&str> =
                needs_dir.iter().map(|k| k.cluster.as_str()).collect();
            let clusters: Vec<&str> = clusters.into_iter().collect();
            crate::cli::secrets::check_keys_dir(dir, &clusters).map_err(fail)?;
            Some(dir)
        }
    };
    crate::cli::secrets::sops_upkeep(&l.spec_dir, t, old, &upd.new_keys, stage).map_err(fail)?;
    let mut delivered: Vec<Delivered> = Vec::new();
    if let Some(dir) = keys_dir {
        for k in needs_dir {
            let (key, json) = stage_key(stage, dir, t, k);
            delivered.push((k, key, json));
        }
    }
    for k in upd.new_keys.iter().filter(|k| is_sops(k)) {
        crate::cli::secrets::deliver_sops(&l.spec_dir, t, k, stage).map_err(fail)?;
    }
    Ok(delivered)
}

/// The checks of `build`, against the new lock and the staged SOPS files (secret sources
/// are lock's to write or the user's to add after it, so they are not checked here).
fn check_new_lock(l: &Loaded, stage: &Stage, text: &str) -> Result<(), u8> {
    let mut sources = l.sources.clone();
    for (path, bytes) in stage.under(&l.spec_dir) {
        sources.insert(path, bytes.to_vec());
    }
    let input = Input {
        spec_file: &l.spec_name,
        spec: &l.spec,
        lock_file: &l.lock_name,
        lock: Some(text),
        sources,
    };
    let checked = build::front(&l.spec_name, &l.spec)
        .and_then(|f| build::load_from(&input, f))
        .and_then(|loaded| build::check_lock(&input, loaded));
    match checked {
        Ok(warnings) => {
            let _ = std::io::stderr().write_all(warnings.as_bytes());
            Ok(())
        }
        Err(f) => {
            eprintln!(
                "{}: not changed (the spec would not build)",
                crate::diag::escape(&l.lock_name)
            );
            Err(report(&f))
        }
    }
}

/// Stage a node's private key as `DIR/<cluster>/<node>.key`, and for external-secrets the
/// store's JSON `DIR/<cluster>/<node>.json`; both are written at commit through the one
/// private-file writer ([`crate::cli::secrets::write_private`]).
fn stage_key(stage: &mut Stage, dir: &Path, t: &Tailnet, k: &NewKey) -> (PathBuf, Option<PathBuf>) {
    let key = stage.write_private(
        dir,
        &k.cluster,
        &format!("{}.key", k.node),
        format!("{}\n", k.private_key).into_bytes(),
    );
    let json = match t.cluster(&k.cluster).map(|c| &c.secrets) {
        Some(SecretBackend::ExternalSecrets { .. }) => Some(stage.write_private(
            dir,
            &k.cluster,
            &format!("{}.json", k.node),
            crate::cli::secrets::store_json(k).into_bytes(),
        )),
        _ => None,
    };
    (key, json)
}

/// The writes of one command, made only when all of them are known and it has succeeded.
/// Later writes of a path replace earlier ones; notes are printed as files are written.
#[derive(Default)]
pub struct Stage {
    files: Vec<Staged>,
    /// Position of each path in `files` (`lock` stages a key file per new node: 10,000 and
    /// more).
    at: std::collections::HashMap<PathBuf, usize>,
}

struct Staged {
    path: PathBuf,
    bytes: Vec<u8>,
    how: Target,
    note: Option<String>,
}

enum Target {
    /// A committed file (lock, SOPS files), written atomically with this mode.
    Plain(u32),
    /// A private file under `--keys-dir`: `DIR`, the sub dir and the name.
    Private(PathBuf, String, String),
}

impl Stage {
    /// Stage `bytes` for `path` (mode `mode`), with a note printed when it is written.
    pub fn write(&mut self, path: &Path, bytes: Vec<u8>, mode: u32, note: Option<String>) {
        self.put(Staged {
            path: path.to_path_buf(),
            bytes,
            how: Target::Plain(mode),
            note,
        });
    }

    fn write_private(&mut self, dir: &Path, sub: &str, name: &str, bytes: Vec<u8>) -> PathBuf {
        let path = dir.join(sub).join(name);
        self.put(Staged {
            path: path.clone(),
            bytes,
            how: Target::Private(dir.to_path_buf(), sub.to_string(), name.to_string()),
            note: None,
        });
        path
    }

    fn put(&mut self, f: Staged) {
        match self.at.get(&f.path).and_then(|&i| self.files.get_mut(i)) {
            Some(g) => *g = f,
            None => {
                self.at.insert(f.path.clone(), self.files.len());
                self.files.push(f);
            }
        }
    }

    /// What `path` will hold: the staged bytes, else the file as it is.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        match self.at.get(path).and_then(|&i| self.files.get(i)) {
            Some(g) => Some(g.bytes.clone()),
            None => fs::read(path).ok(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Staged committed files under `dir`, by path relative to it.
    fn under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (String, &'a [u8])> + 'a {
        self.files.iter().filter_map(move |g| {
            if !matches!(g.how, Target::Plain(_)) {
                return None;
            }
            let rel = g.path.strip_prefix(dir).ok()?;
            Some((rel.to_string_lossy().into_owned(), g.bytes.as_slice()))
        })
    }

    /// Write every staged file (each atomically, in staging order). Private files are not
    /// synced one by one: before the next committed file (the lock comes last) and at the end,
    /// one `syncfs` per keys dir makes all of them durable (`lock` of 10,000 new nodes waited
    /// seconds on an fsync per file).
    pub fn commit(self) -> Result<(), String> {
        // A committed file's path that is a symbolic link is refused before anything is
        // written (a failed command writes nothing).
        for f in &self.files {
            if matches!(f.how, Target::Plain(_)) {
                check_write_target(&f.path)?;
            }
        }
        let mut unsynced: Vec<PathBuf> = Vec::new();
        let sync = |unsynced: &mut Vec<PathBuf>| -> Result<(), String> {
            for dir in unsynced.drain(..) {
                crate::cli::secrets::sync_private(&dir)?;
            }
            Ok(())
        };
        for f in self.files {
            match &f.how {
                Target::Plain(mode) => {
                    sync(&mut unsynced)?;
                    if let Some(dir) = f.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        fs::create_dir_all(dir)
                            .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
                    }
                    write_atomic(&f.path, &f.bytes, Some(*mode))?;
                }
                Target::Private(dir, sub, name) => {
                    crate::cli::secrets::write_private(dir, sub, name, &f.bytes)?;
                    if !unsynced.contains(dir) {
                        unsynced.push(dir.clone());
                    }
                }
            }
            if let Some(n) = &f.note {
                eprintln!("{n}");
            }
        }
        sync(&mut unsynced)
    }
}

/// How to load a delivered key, appended to `out` (printed through
/// `tsk8s_policy::text::neutralize`; every user-provided value is escaped with
/// `tsk8s_policy::text::escape`, so none can break a line or start a CI command).
fn key_instructions(out: &mut String, t: &Tailnet, k: &NewKey, path: &Path, json: Option<&Path>) {
    use std::fmt::Write as _;
    use tsk8s_policy::text::escape;
    let shown = |p: &Path| escape(&p.display().to_string()).into_owned();
    let path_shown = shown(path);
    let ns = escape(&key_namespace(t, &k.cluster, &k.node)).into_owned();
    let secret = crate::lower::k8s::key_secret_name(&k.node);
    let what = if k.rotated { "rotated key" } else { "new key" };
    let backend = t.cluster(&k.cluster).map(|c| c.secrets.clone());
    let _ = writeln!(
        out,
        "{what} for \"{}\" (cluster \"{}\") written to {path_shown}",
        escape(&k.node),
        escape(&k.cluster),
    );
    match backend {
        Some(SecretBackend::ExternalSecrets { key_prefix, .. }) => {
            let remote = escape(&format!("{key_prefix}{}/{}", k.cluster, k.node)).into_owned();
            let _ = writeln!(
                out,
                "  load it into your secret store under key \"{remote}\", property \"private-key\", e.g.:"
            );
            let _ = writeln!(
                out,
                "    vault kv put -mount=<the store's KV mount (spec.provider.vault.path)> {remote} private-key=@{}",
                path_shown
            );
            if let Some(json) = json {
                let _ = writeln!(
                    out,
                    "    aws secretsmanager create-secret --name {remote} --secret-string file://{}   (put-secret-value --secret-id {remote} … for an existing secret)",
                    shown(json)
                );
            }
        }
        Some(SecretBackend::SealedSecrets { source_dir }) => {
            let source_dir = escape(&source_dir);
            let _ = writeln!(
                out,
                "  seal it (strict scope) into {source_dir}/{}.yaml:",
                escape(&k.node)
            );
            let _ = writeln!(
                out,
                "    kubectl -n {ns} create secret generic {secret} --from-file=private-key={} --dry-run=client -o yaml | kubeseal --scope strict -o yaml > {source_dir}/{}.yaml",
                path_shown,
                escape(&k.node)
            );
        }
        _ => {
            let _ = writeln!(out, "  load it into the cluster (then delete the file):");
            let _ = writeln!(
                out,
                "    kubectl -n {ns} create secret generic {secret} --from-file=private-key={}",
                path_shown
            );
        }
    }
}

/// Refuse to write `path` when it is a symbolic link (tsk8s neither writes through nor
/// replaces one) or something other than a regular file.
pub fn check_write_target(path: &Path) -> Result<(), String> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: cannot stat: {e}", path.display())),
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "{}: is a symbolic link; tsk8s neither writes through nor replaces one: make it a regular file (or remove it) and run again",
            path.display()
        )),
        Ok(m) if !m.is_file() => Err(format!(
            "{}: exists and is not a regular file",
            path.display()
        )),
        Ok(_) => Ok(()),
    }
}

/// Write a file atomically, optionally with a mode: a new temp file beside it
/// (`.<name>.tsk8s-tmp-<pid>-<n>`, created with `O_CREAT|O_EXCL|O_NOFOLLOW`, so a file or
/// link already at that name is never opened; the next `n` is tried instead), written,
/// fsynced, renamed over `path`, and the directory fsynced. A `path` that is a symbolic link
/// is refused ([`check_write_target`]); the temp file is removed on any failure.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    check_write_target(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let mut attempts = 0;
    let (tmp, mut f) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tsk8s-tmp-{}-{n}", std::process::id()));
        let mut opts = fs::OpenOptions::new();
        opts.write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        opts.mode(mode.unwrap_or(0o644));
        match opts.open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 100 => {
                attempts += 1;
            }
            Err(e) => return Err(format!("{}: cannot create: {e}", tmp.display())),
        }
    };
    let result = (|| {
        if let Some(m) = mode {
            // The umask may have narrowed the mode given at creation; set it exactly.
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(fs::Permissions::from_mode(m))
                .map_err(|e| format!("{}: cannot set mode: {e}", tmp.display()))?;
        }
        f.write_all(bytes)
            .map_err(|e| format!("{}: cannot write: {e}", tmp.display()))?;
        f.sync_all()
            .map_err(|e| format!("{}: cannot sync: {e}", tmp.display()))?;
        // Checked again just before the rename: a link put there meanwhile is refused too
        // (the rename itself would replace the link, never write through it).
        check_write_target(path)?;
        fs::rename(&tmp, path).map_err(|e| format!("{}: cannot rename: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The spec's test results as the diff's access section shows them.
pub fn diff_tests(r: &tsk8s_policy::acltest::TestReport) -> tsk8s_diff::TestResults {
    tsk8s_diff::TestResults {
        total: r.total,
        failed: r.failed_entries,
        failures: r.failures.clone(),
    }
}

/// What `diff` compares the fresh build with.
enum Base {
    /// The output dir in the working tree.
    Out,
    /// The output dir as committed at a git ref (`--base`).
    Ref(String),
    /// Another directory (`--base-dir`).
    Dir(PathBuf),
}

fn diff(spec: &Path, out: &Path, base: &Base, format: Format) -> u8 {
    let mut l = match load(spec) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    // The base is listed first and read a file at a time as the build hands over its files:
    // a diff holds the files that differ, never both trees (a problem with the base is
    // reported after the spec's own).
    let old = match base {
        Base::Out => output::TreeReader::open(out)
            .map(OldTree::Dir)
            .map_err(|e| e.to_string()),
        Base::Dir(d) => match output::probe_dir(d) {
            Ok(true) => output::TreeReader::open(d)
                .map(OldTree::Dir)
                .map_err(|e| e.to_string()),
            Ok(false) => Err(format!("--base-dir {}: no such directory", d.display())),
            Err(e) => Err(e.to_string()),
        },
        Base::Ref(r) => GitTree::open(r, out).map(OldTree::Git),
    };
    let mut sink = DiffSink {
        old,
        pairs: tsk8s_diff::Pairs::new(),
        seen: std::collections::HashSet::new(),
    };
    // Failed tests are reported, not fatal: diff's exit code says whether the trees differ.
    // Their results also go into the access section.
    let tests = match l.compile(build::Checks::ALL, &mut sink) {
        Ok(c) => {
            if let (Some(_), Some(r)) = (tests_gate(&c), &c.tests) {
                eprintln!(
                    "{}: {} of {} test(s) failed (`tsk8s build` refuses this spec)",
                    crate::diag::escape(&l.spec_name),
                    r.failed_entries,
                    r.total
                );
            }
            c.tests.as_ref().map(diff_tests)
        }
        Err(f) => return report(&f),
    };
    let pairs = match sink.finish() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let opts = tsk8s_diff::Options {
        access: true,
        tests,
    };
    let mut report = match pairs.finish(&opts) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let fmt = match format {
        Format::Text => tsk8s_diff::Format::Text,
        Format::Markdown => tsk8s_diff::Format::Markdown,
        Format::Json => tsk8s_diff::Format::Json,
    };
    if fmt != tsk8s_diff::Format::Json {
        neutralize_report(&mut report);
    }
    let color = std::io::stdout().is_terminal();
    let mut parts = tsk8s_diff::render(&report, fmt, color);
    for p in &mut parts {
        *p = match fmt {
            // serde_json already escapes control characters; `##[` is all that is left.
            tsk8s_diff::Format::Json => tsk8s_policy::text::neutralize_json(p).into_owned(),
            // Escaped values the renderer put at a line start (`::…`); the user text is
            // already free of control characters, so only the renderer's colours (on a
            // terminal) would be touched: they are kept there.
            _ if !color => tsk8s_policy::text::neutralize(p).into_owned(),
            _ => std::mem::take(p),
        };
    }
    let mut stdout = std::io::stdout().lock();
    for p in &parts {
        let _ = stdout.write_all(p.as_bytes());
        if !p.ends_with('\n') {
            let _ = stdout.write_all(b"\n");
        }
    }
    report.exit_code()
}

/// User text in a diff report (object contents, names, descriptions come from the spec, the
/// lock and the trees compared) made safe for a terminal, a CI log and a PR comment before it
/// is rendered: labels and descriptions escaped (one line each), diff text neutralized (no
/// control characters or ESC, no line starting with a GitHub Actions `::command::`, no `##[`).
/// The renderer's own colours are added after, so they survive.
fn neutralize_report(report: &mut tsk8s_diff::Report) {
    use tsk8s_policy::text::{escape, neutralize};
    for g in &mut report.groups {
        for c in &mut g.changes {
            c.label = escape(&c.label).into_owned();
            c.description = escape(&c.description).into_owned();
            c.diff = neutralize(&c.diff).into_owned();
        }
    }
    // The access section reads names, rules and test results from both trees (the base one
    // may come from a pull request).
    if let Some(a) = &mut report.access {
        let e = |s: &mut String| *s = escape(s).into_owned();
        if let Some(x) = a.note.as_mut() {
            e(x);
        }
        for r in a.gained.iter_mut().chain(a.lost.iter_mut()) {
            e(&mut r.who);
            e(&mut r.identity);
            e(&mut r.what);
            if let Some(x) = r.route.as_mut() {
                e(x);
            }
            e(&mut r.ports);
            if let Some(x) = r.rule.as_mut() {
                e(x);
            }
        }
        for l in &mut a.lock {
            e(&mut l.name);
            if let Some(x) = l.cluster.as_mut() {
                e(x);
            }
            e(&mut l.detail);
        }
        if let Some(t) = &mut a.tests {
            t.failures.iter_mut().for_each(e);
        }
    }
}

/// The base tree of `diff`, read a file at a time.
enum OldTree {
    Dir(output::TreeReader),
    Git(GitTree),
}

impl OldTree {
    fn paths(&self) -> Vec<String> {
        match self {
            OldTree::Dir(t) => t.paths().iter().cloned().collect(),
            OldTree::Git(g) => g.blobs.keys().cloned().collect(),
        }
    }

    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            OldTree::Dir(t) => t.read(path).map_err(|e| e.to_string()),
            OldTree::Git(g) => g.read(path),
        }
    }

    fn done(self) -> Result<(), String> {
        match self {
            OldTree::Dir(t) => t.done().map_err(|e| e.to_string()),
            OldTree::Git(g) => g.done(),
        }
    }
}

/// `diff`'s sink: each file of the fresh build compared with the base's file of the same
/// path as it arrives ([`tsk8s_diff::Pairs`] keeps what differs).
struct DiffSink {
    old: Result<OldTree, String>,
    pairs: tsk8s_diff::Pairs,
    /// Paths the build wrote, so the base's other files are known at the end.
    seen: std::collections::HashSet<String>,
}

impl crate::emit::Sink for DiffSink {
    fn put(&mut self, files: Vec<crate::emit::File>) -> std::ops::ControlFlow<()> {
        let Ok(old) = &mut self.old else {
            return std::ops::ControlFlow::Break(());
        };
        for f in files {
            match old.read(&f.path) {
                Ok(o) => self.pairs.add(&f.path, o.as_deref(), Some(&f.bytes)),
                Err(e) => {
                    self.old = Err(e);
                    return std::ops::ControlFlow::Break(());
                }
            }
            self.seen.insert(f.path);
        }
        std::ops::ControlFlow::Continue(())
    }
}

impl DiffSink {
    /// The base's files the build did not write, then the pairs.
    fn finish(self) -> Result<tsk8s_diff::Pairs, String> {
        let DiffSink {
            old,
            mut pairs,
            seen,
        } = self;
        let mut old = old?;
        for path in old.paths() {
            if !seen.contains(&path) {
                let bytes = old.read(&path)?;
                pairs.add(&path, bytes.as_deref(), None);
            }
        }
        old.done()?;
        Ok(pairs)
    }
}

/// The output dir as committed at a git ref, read through `git` (no checkout), a blob at a
/// time through one `git cat-file --batch`. `rev` is a ref only (a directory is
/// `--base-dir`); one that does not name a commit is an error, and so is a symbolic link or
/// a submodule in the tree. Blobs are read raw (`cat-file`, no textconv or filters).
struct GitTree {
    top: PathBuf,
    /// Path relative to the output dir → blob id.
    blobs: BTreeMap<String, String>,
    cat: Option<CatFile>,
}

struct CatFile {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for CatFile {
    fn drop(&mut self) {
        // End of input ends it.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl GitTree {
    fn open(rev: &str, out: &Path) -> Result<GitTree, String> {
        if rev.starts_with('-') || rev.is_empty() {
            return Err(not_a_ref(rev));
        }
        let (top_path, rel) = git_dir(out)?;
        let spec = format!("{rev}^{{commit}}");
        let commit = run_git(
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
            &top_path,
        )
        .map_err(|_| not_a_ref(rev))?;
        let commit = String::from_utf8_lossy(&commit).trim().to_string();
        let mut ls = vec![
            "--literal-pathspecs",
            "ls-tree",
            "-r",
            "-z",
            "--full-tree",
            &commit,
        ];
        if !rel.is_empty() {
            ls.extend(["--", rel.as_str()]);
        }
        let listing = run_git(&ls, &top_path)?;
        let mut blobs = BTreeMap::new();
        for (path, oid) in ls_tree_blobs(rev, &listing)? {
            let key = match path.strip_prefix(&format!("{rel}/")) {
                Some(k) => k.to_string(),
                None if rel.is_empty() => path,
                None => continue,
            };
            blobs.insert(key, oid);
        }
        Ok(GitTree {
            top: top_path,
            blobs,
            cat: None,
        })
    }

    /// The raw contents of the blob at `path`, `None` when the tree has none.
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, String> {
        use std::io::{BufRead as _, Read as _};
        use std::process::{Command as Proc, Stdio};
        let Some(oid) = self.blobs.get(path) else {
            return Ok(None);
        };
        let cat = match &mut self.cat {
            Some(c) => c,
            None => {
                let mut child = Proc::new("git")
                    .args(["cat-file", "--batch"])
                    .current_dir(&self.top)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run git: {e}"))?;
                let stdin = child.stdin.take();
                let stdout = child.stdout.take().ok_or("git cat-file: no output")?;
                self.cat.insert(CatFile {
                    child,
                    stdin,
                    stdout: std::io::BufReader::new(stdout),
                })
            }
        };
        // One request, then its whole answer: neither pipe fills while the other waits.
        let stdin = cat.stdin.as_mut().ok_or("git cat-file: closed")?;
        stdin
            .write_all(format!("{oid}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("git cat-file: {e}"))?;
        let mut header = String::new();
        cat.stdout
            .read_line(&mut header)
            .map_err(|e| format!("git cat-file: {e}"))?;
        let mut f = header.trim_end().split(' ');
        let size = match (f.next(), f.next(), f.next()) {
            (Some(got), Some("blob"), Some(size)) if got == oid => size
                .parse::<usize>()
                .map_err(|_| format!("git cat-file: bad header {header:?}"))?,
            _ => return Err(format!("git cat-file {oid}: {}", header.trim_end())),
        };
        let mut bytes = vec![0; size];
        cat.stdout
            .read_exact(&mut bytes)
            .map_err(|e| format!("git cat-file: {e}"))?;
        let mut nl = [0u8; 1];
        cat.stdout
            .read_exact(&mut nl)
            .map_err(|e| format!("git cat-file: {e}"))?;
        Ok(Some(bytes))
    }

    /// `git cat-file` ended well (or was never needed).
    fn done(mut self) -> Result<(), String> {
        let Some(mut cat) = self.cat.take() else {
            return Ok(());
        };
        drop(cat.stdin.take());
        let status = cat.child.wait().map_err(|e| format!("git cat-file: {e}"))?;
        if !status.success() {
            return Err(format!("git cat-file --batch: {status}"));
        }
        Ok(())
    }
}

/// Run `git ARGS` in `cwd`: its stdout, or an error with its stderr.
fn run_git(args: &[&str], cwd: &Path) -> Result<Vec<u8>, String> {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(o.stdout)
}

/// The message for a `--base` that names no commit.
fn not_a_ref(rev: &str) -> String {
    let mut m =
        format!("--base {rev:?}: not a commit in the git repository (--base takes a git ref only)");
    if Path::new(rev).is_dir() {
        m.push_str(&format!(
            "; to compare with the directory {rev:?}, pass --base-dir {rev:?}"
        ));
    }
    m
}

/// The top of the git repository holding the output dir `out`, and `out` relative to it.
fn git_dir(out: &Path) -> Result<(PathBuf, String), String> {
    // `-o` naming a link is refused here too (it would locate the dir through the link).
    output::probe_dir(out).map_err(|e| e.to_string())?;
    let out_abs = if out.is_absolute() {
        out.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(out)
    };
    // The dir may not exist in the working tree; ask git from its nearest existing ancestor.
    let mut cwd = out_abs.clone();
    while !cwd.is_dir() {
        if !cwd.pop() {
            return Err(format!("{}: no such directory", out.display()));
        }
    }
    let top = String::from_utf8_lossy(&run_git(&["rev-parse", "--show-toplevel"], &cwd)?)
        .trim()
        .to_string();
    let top_path = Path::new(&top).canonicalize().map_err(|e| e.to_string())?;
    let cwd_canon = cwd.canonicalize().map_err(|e| e.to_string())?;
    let rest = out_abs.strip_prefix(&cwd).map_err(|e| e.to_string())?;
    let rel_dir = cwd_canon
        .strip_prefix(&top_path)
        .map_err(|_| format!("{}: not inside the git repository", out.display()))?
        .join(rest);
    let rel = rel_dir.to_string_lossy().trim_end_matches('/').to_string();
    Ok((top_path, rel))
}

/// `(path, object id)` of each blob in `git ls-tree -z` output; a link or a submodule is an
/// error.
fn ls_tree_blobs(rev: &str, listing: &[u8]) -> Result<Vec<(String, String)>, String> {
    // `<mode> <type> <object>\t<path>` per entry.
    let mut blobs: Vec<(String, String)> = Vec::new();
    for entry in listing.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let (meta, path) = entry
            .split_once('\t')
            .ok_or_else(|| format!("git ls-tree: unexpected output {entry:?}"))?;
        let mut fields = meta.split(' ');
        let (mode, oid) = match (fields.next(), fields.next(), fields.next()) {
            (Some(mode), Some(_), Some(oid)) => (mode, oid),
            _ => return Err(format!("git ls-tree: unexpected output {entry:?}")),
        };
        match mode {
            "100644" | "100755" => blobs.push((path.to_string(), oid.to_string())),
            "120000" => {
                return Err(format!(
                    "{rev}:{path}: is a symbolic link; tsk8s does not follow links inside a tree it reads: remove it from the commit"
                ));
            }
            _ => {
                return Err(format!(
                    "{rev}:{path}: is not a regular file (git mode {mode}); tsk8s reads only regular files"
                ));
            }
        }
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_never_follows_a_link() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let victim = d.join("victim");
        fs::write(&victim, "keep\n").unwrap();
        // Links at the temp names this process would try first (a predictable-name attack):
        // each is skipped, never opened.
        for n in 0..20 {
            symlink(
                &victim,
                d.join(format!(".f.tsk8s-tmp-{}-{n}", std::process::id())),
            )
            .unwrap();
        }
        let target = d.join("f");
        write_atomic(&target, b"one\n", Some(0o600)).unwrap();
        write_atomic(&target, b"two\n", None).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "two\n");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(
            !fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        write_atomic(&target, b"three\n", Some(0o640)).unwrap();
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // The target itself a link: refused, located, the link and its target unchanged.
        let link = d.join("link");
        symlink(&victim, &link).unwrap();
        let e = write_atomic(&link, b"x\n", None).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: is a symbolic link", link.display())),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // No temp file is left behind (the planted links are still there, untouched).
        let left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.contains("tsk8s-tmp")
                    && !fs::symlink_metadata(d.join(n))
                        .unwrap()
                        .file_type()
                        .is_symlink()
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
