//! The one entry point of the compiler core (in the spirit of kustomize's `krusty`): spec text
//! and lock text in, output files out, a batch at a time, to a sink ([`emit::Sink`]). One data
//! structure, [`Loaded`], is carried through the stages. No I/O: the CLI reads the inputs and
//! gives the sink that writes the files.

use std::collections::{BTreeMap, BTreeSet};

use tsk8s_policy::policy::Policy;

use crate::diag::{Diagnostic, Diagnostics};
use crate::emit::{self, Tree};
use crate::lockfile::{self, Lock};
use crate::lower::{self, net};
use crate::model::{ExposureKind, Publish, RuntimeKind, Tailnet};
use crate::resolve::{self, Spans};
use crate::syntax;

/// Inputs of one compiler run.
#[derive(Clone, Debug, Default)]
pub struct Input<'a> {
    /// Name shown in diagnostics, e.g. `tailnet.kdl`.
    pub spec_file: &'a str,
    pub spec: &'a str,
    pub lock_file: &'a str,
    /// `None` when there is no lock yet.
    pub lock: Option<&'a str>,
    /// Files beside the spec that the build reads (committed SOPS / SealedSecret sources),
    /// by path relative to the spec's directory.
    pub sources: BTreeMap<String, Vec<u8>>,
}

/// Why a run failed: rendered diagnostics, ready for stderr. Exit code 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub text: String,
}

impl Failure {
    fn from_diags(d: &Diagnostics) -> Failure {
        Failure { text: d.render() }
    }
}

/// The spec, resolved and validated.
pub struct Front {
    pub tailnet: Tailnet,
    pub spans: Spans,
    pub diags: Diagnostics,
}

/// Parse and resolve the spec. All problems come out together.
pub fn front(spec_file: &str, spec: &str) -> Result<Front, Failure> {
    front_diags(spec_file, spec).map_err(|d| Failure::from_diags(&d))
}

/// [`front`] with the problems as diagnostics, not yet rendered (sorted by position).
pub fn front_diags(spec_file: &str, spec: &str) -> Result<Front, Diagnostics> {
    let (tree, mut diags) = syntax::parse(spec_file, spec);
    if !diags.is_empty() && tree.tailnet.is_none() && tree.clusters.is_empty() {
        diags.sort();
        return Err(diags);
    }
    let (tailnet, spans) = resolve::resolve(&tree, &mut diags);
    diags.sort();
    match tailnet {
        Some(t) if diags.is_empty() => Ok(Front {
            tailnet: t,
            spans,
            diags,
        }),
        _ => Err(diags),
    }
}

pub fn parse_lock(input: &Input) -> Result<Lock, Failure> {
    match input.lock {
        None => Ok(Lock::default()),
        Some(text) => lockfile::parse(input.lock_file, text).map_err(|mut d| {
            d.sort();
            Failure::from_diags(&d)
        }),
    }
}

/// [`front`] and [`parse_lock`] of `input` at once, on two threads: neither needs the other,
/// and a large tailnet's lock takes about half its spec's parse time.
pub fn front_and_lock(input: &Input) -> (Result<Front, Failure>, Result<Lock, Failure>) {
    std::thread::scope(|s| {
        let lock = s.spawn(|| parse_lock(input));
        let front = front(input.spec_file, input.spec);
        let lock = lock
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (front, lock)
    })
}

/// Everything later stages need, checked.
pub struct Loaded {
    pub tailnet: Tailnet,
    pub spans: Spans,
    pub lock: Lock,
    /// `policy.hujson`.
    pub policy_text: String,
    /// The policy it holds, validated.
    pub policy: Policy,
}

/// Front end + lock check + policy validation by the engine.
pub fn load(input: &Input) -> Result<Loaded, Failure> {
    load_from(input, front(input.spec_file, input.spec)?)
}

/// [`load`] for a caller that already ran [`front`] on `input.spec` (the CLI does, to learn
/// which source files to read), so the spec is parsed once.
pub fn load_from(input: &Input, front: Front) -> Result<Loaded, Failure> {
    load_parsed(input, front, parse_lock(input)?)
}

/// [`load_from`] for a caller that already parsed the lock ([`front_and_lock`]).
pub fn load_parsed(input: &Input, front: Front, lock: Lock) -> Result<Loaded, Failure> {
    let problems = lockfile::check(&front.tailnet, &lock);
    if input.lock.is_none() && !problems.is_empty() {
        // First run: one line, not one "not in the lock" per node.
        return Err(Failure {
            text: format!(
                "{}: error: no lock yet; run `tsk8s lock` to give the spec's {} node(s) and {} device(s) their addresses, ports and keys\n",
                input.lock_file,
                front.tailnet.runtime_nodes().count(),
                front.tailnet.devices.len()
            ),
        });
    }
    if !problems.is_empty() {
        let mut d = Diagnostics::new(input.spec_file, input.spec);
        let mut in_lock = Diagnostics::new(input.lock_file, input.lock.unwrap_or_default());
        let mut plain = String::new();
        for p in &problems {
            let span = p.subject.as_ref().and_then(|s| {
                front
                    .spans
                    .exposures
                    .get(s)
                    .or_else(|| front.spans.devices.get(s))
            });
            match (span, p.at) {
                (Some(span), _) => {
                    d.push(Diagnostic::new(*span, p.message.clone()).label("not in the lock"))
                }
                (None, Some(at)) if input.lock.is_some() => {
                    in_lock.push(Diagnostic::new(at, p.message.clone()))
                }
                _ => plain.push_str(&format!("{}: error: {}\n", input.lock_file, p.message)),
            }
        }
        let mut text = String::new();
        for mut diags in [d, in_lock] {
            if !diags.is_empty() {
                diags.sort();
                text.push_str(&diags.render());
            }
        }
        text.push_str(&plain);
        return Err(Failure { text });
    }
    let file = lower::policy::policy_file(&front.tailnet).map_err(|p| {
        let mut d = Diagnostics::new(input.spec_file, input.spec);
        d.push(policy_problem(&front.spans, p));
        Failure::from_diags(&d)
    })?;
    Ok(Loaded {
        tailnet: front.tailnet,
        spans: front.spans,
        lock,
        policy_text: file.text,
        policy: file.policy,
    })
}

/// A generated policy Tailscale would refuse (a backstop: `resolve` checks what the spec
/// writes), located at the spec node the problem comes from, or at the tailnet.
fn policy_problem(spans: &Spans, p: lower::policy::Problem) -> Diagnostic {
    use lower::policy::Origin;
    let tailnet = spans.tailnet.unwrap_or_else(|| (0..0).into());
    let (span, label) = match &p.origin {
        Origin::Acl(i) => (spans.acls.get(*i), "in this rule"),
        Origin::Grant(i) => (spans.grants.get(*i), "in this grant"),
        Origin::Ssh(i) => (spans.ssh.get(*i), "in this ssh rule"),
        Origin::Tag(t) => (spans.tags.get(t), "in this tag's owners"),
        Origin::Verbatim(s) => (spans.verbatim.get(s), "in this section"),
        Origin::Tailnet => (None, "in this tailnet"),
    };
    let (span, label) = match span {
        Some(s) => (*s, label),
        None => (tailnet, "in this tailnet"),
    };
    Diagnostic::new(
        span,
        format!("the generated policy is invalid: {}", p.error),
    )
    .label(label)
}

/// `tsk8s build` into memory: the whole output tree (tests and the bench; the CLI streams).
pub fn build(input: &Input) -> Result<Tree, Failure> {
    build_loaded(input, load(input)?)
}

/// What [`compile`] checks besides the spec, the lock and the output itself.
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    /// Run the spec's tests (`build --no-tests` skips them).
    pub tests: bool,
    /// Check the committed secret sources (SOPS, SealedSecret files; Tailscale-image
    /// clusters). `lock` leaves them out: it writes or asks for them.
    pub sources: bool,
}

impl Checks {
    pub const ALL: Checks = Checks {
        tests: true,
        sources: true,
    };
}

/// The outcome of [`compile`] for an input that is not bad (its files went to the sink).
pub struct Compiled {
    /// How many files went to the sink, the manifest included.
    pub files: usize,
    /// Kubernetes object files over [`emit::OBJECT_FILE_WARN`] (path, bytes), in path order:
    /// `build` warns about each.
    pub large_objects: Vec<(String, usize)>,
    /// The spec's tests (`None` when skipped).
    pub tests: Option<tsk8s_policy::acltest::TestReport>,
    /// One located diagnostic per failing test (rendered), if any failed: `build` refuses
    /// the tree then (exit 1).
    pub test_failures: Option<String>,
    /// Warnings (rendered), for stderr; they do not stop the run.
    pub warnings: String,
    /// How many `type: LoadBalancer` Services the tree holds ([`load_balancer_services`]).
    pub load_balancers: usize,
}

/// The one path every command takes from a loaded spec to its output: `check`, `build`,
/// `diff` and `lock` (with the new lock) all call it, so they refuse the same inputs with
/// the same diagnostics. The files go to `sink` as they are finished, a few clusters at a
/// time, so memory grows with the largest clusters, not with the tailnet; on `Err` the sink
/// has been given part of the output, which the caller drops.
pub fn compile(
    input: &Input,
    l: Loaded,
    checks: Checks,
    sink: &mut dyn emit::Sink,
) -> Result<Compiled, Failure> {
    // The network and who reaches whom are computed once, for the tests and the output. The
    // policy half of the tests runs beside the filters' compilation: both start with a
    // serial pass over the policy (each its own topology), so together they take one's time.
    let netw = net::build_net(&l.tailnet, &l.lock);
    let (report, reach) = std::thread::scope(|s| {
        let tests = checks.tests.then(|| s.spawn(|| policy_tests(&l, &netw)));
        let reach = net::reach(&l.policy, &netw);
        let report = tests.map(|h| {
            h.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (report, reach)
    });
    // Per-node indexes for devices' AllowedIPs, shared by the tests and the devices' configs;
    // build_checked drops them once the devices are written.
    let any = net::AnyTraffic::new(&reach);
    let report = report.map(|r| dataplane_tests(&l, r, &netw, &reach, &any).0);
    let test_failures = report
        .as_ref()
        .filter(|r| !r.passed())
        .map(|r| render_test_failures(input, &l, r));
    let mut warnings = String::new();
    let load_balancers = load_balancer_services(&l.tailnet);
    let out = Out::new(sink, input.spec_file);
    let emitted = build_checked(
        input,
        &l,
        &netw,
        &reach,
        any,
        checks.sources,
        &mut warnings,
        out,
    )?;
    Ok(Compiled {
        files: emitted.files,
        large_objects: emitted.large_objects,
        tests: report,
        test_failures,
        warnings,
        load_balancers,
    })
}

/// What `lock` checks of a spec loaded with its new lock (the lock itself and the policy were
/// checked by [`load_from`]): what lowering could still refuse, with the warnings it gives.
/// The devices' configs can refuse a lock only where two runtime nodes' prefixes meet
/// ([`lower::devices::prefixes_may_overlap`]); only then is the spec compiled
/// ([`compile`], tests and secret sources left out, output dropped). Object sizes are
/// `build`'s to check: they follow the spec, not the lock. `tsk8s lock` of 10,500 new nodes
/// went from a build's time (30–40 s at cross 1,000 × 10) to seconds.
pub fn check_lock(input: &Input, l: Loaded) -> Result<String, Failure> {
    if !lower::devices::prefixes_may_overlap(&l.tailnet, &l.lock) {
        return Ok(String::new());
    }
    let checks = Checks {
        tests: false,
        sources: false,
    };
    compile(input, l, checks, &mut emit::Discard).map(|c| c.warnings)
}

/// Each failing test as a diagnostic at its `test` node.
fn render_test_failures(
    input: &Input,
    l: &Loaded,
    r: &tsk8s_policy::acltest::TestReport,
) -> String {
    let mut d = Diagnostics::new(input.spec_file, input.spec);
    for (i, f) in r.failures.iter().enumerate() {
        let entry = r.failure_entries.get(i).copied().unwrap_or(usize::MAX);
        let span = l
            .spans
            .tests
            .get(entry)
            .copied()
            .or(l.spans.tailnet)
            .unwrap_or_else(|| (0..0).into());
        d.push(
            Diagnostic::new(span, format!("test failed: {f}"))
                .label("this test")
                .help("fix the rules or the test; `tsk8s build --no-tests` builds anyway"),
        );
    }
    d.sort();
    d.render()
}

/// [`build`] from an already loaded input (every check but the tests), through [`compile`].
pub fn build_loaded(input: &Input, l: Loaded) -> Result<Tree, Failure> {
    let mut tree = Tree::new();
    let checks = Checks {
        tests: false,
        sources: true,
    };
    compile(input, l, checks, &mut tree)?;
    Ok(tree)
}

/// How many clusters (or devices) per thread may be lowered and not yet taken by the sink
/// ([`crate::par::ordered`]'s window): their files are all a build holds at once, so peak
/// memory is about `threads × WINDOW_PER_THREAD` of the largest clusters.
const WINDOW_PER_THREAD: usize = 4;

/// The files of one build on their way to the sink: finished ([`emit::finish_file`], done on
/// the lowering threads), recorded for the manifest and the size checks as they pass. Once
/// the build is known to fail (or the sink stopped), no more files go to the sink, but they
/// are still lowered: every diagnostic comes out as if the whole tree had been built.
struct Out<'s> {
    sink: &'s mut dyn emit::Sink,
    header: String,
    /// (path, sha256) of every file, for the manifest.
    entries: Vec<(String, String)>,
    /// Object files over [`emit::OBJECT_FILE_LIMIT`]: an error.
    over_limit: Vec<(String, usize)>,
    /// Object files over [`emit::OBJECT_FILE_WARN`]: a warning.
    over_warn: Vec<(String, usize)>,
    /// Files not yet given to the sink: it takes them [`SINK_FILES`] or [`SINK_BYTES`] at a
    /// time (its writer spreads a call's files over the cores; a call per cluster of a few
    /// small files cost more in threads than in writes).
    pending: Vec<emit::File>,
    pending_bytes: usize,
    closed: bool,
}

/// How many files, or bytes, [`Out`] gathers before it hands them to the sink.
const SINK_FILES: usize = 256;
const SINK_BYTES: usize = 8 << 20;

/// What [`build_checked`] emitted.
struct Emitted {
    files: usize,
    large_objects: Vec<(String, usize)>,
}

impl<'s> Out<'s> {
    fn new(sink: &'s mut dyn emit::Sink, spec_file: &str) -> Self {
        Out {
            sink,
            header: emit::yaml_header(spec_file),
            entries: Vec::new(),
            over_limit: Vec::new(),
            over_warn: Vec::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            closed: false,
        }
    }

    /// A lowered tree's files, finished (pure; runs on the lowering threads).
    fn finish(header: &str, tree: Tree) -> Vec<emit::File> {
        tree.into_iter()
            .map(|(p, b)| emit::finish_file(header, p, b))
            .collect()
    }

    fn put(&mut self, files: Vec<emit::File>) {
        for f in &files {
            self.entries.push((f.path.clone(), f.sha256.clone()));
            if emit::is_object_file(&f.path) {
                if f.bytes.len() > emit::OBJECT_FILE_LIMIT {
                    self.over_limit.push((f.path.clone(), f.bytes.len()));
                    self.closed = true;
                }
                if f.bytes.len() > emit::OBJECT_FILE_WARN {
                    self.over_warn.push((f.path.clone(), f.bytes.len()));
                }
            }
        }
        if self.closed {
            return;
        }
        self.pending_bytes += files.iter().map(|f| f.bytes.len()).sum::<usize>();
        self.pending.extend(files);
        if self.pending.len() >= SINK_FILES || self.pending_bytes >= SINK_BYTES {
            self.flush();
        }
    }

    /// The gathered files to the sink.
    fn flush(&mut self) {
        let files = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        if !self.closed && !files.is_empty() && self.sink.put(files).is_break() {
            self.closed = true;
        }
    }

    /// The build will fail: the sink gets nothing more.
    fn fail(&mut self) {
        self.closed = true;
        self.pending.clear();
    }

    /// The manifest, last.
    fn close(mut self) -> Emitted {
        debug_assert!(
            {
                let mut paths: Vec<&str> = self.entries.iter().map(|(p, _)| p.as_str()).collect();
                paths.sort_unstable();
                paths.windows(2).all(|w| w[0] != w[1])
            },
            "a path emitted twice"
        );
        let bytes = emit::manifest(&mut self.entries);
        let manifest = emit::finish_file(&self.header, emit::MANIFEST.to_string(), bytes);
        self.put(vec![manifest]);
        self.flush();
        self.over_warn.sort_unstable();
        Emitted {
            files: self.entries.len(),
            large_objects: self.over_warn,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_checked(
    input: &Input,
    l: &Loaded,
    netw: &net::Net,
    reach: &net::Reach,
    any: net::AnyTraffic,
    sources: bool,
    warnings: &mut String,
    mut out: Out,
) -> Result<Emitted, Failure> {
    let t = &l.tailnet;
    let mut top = Tree::new();
    emit::put(&mut top, "policy.hujson".into(), l.policy_text.clone());
    // The topology the policy is compiled against, as `tsk8s policy filter --nodes` reads it.
    emit::put(
        &mut top,
        "topology.json".into(),
        topology_json(&netw.topology),
    );
    out.put(Out::finish(&out.header, top));

    lower_devices(input, l, netw, reach, &any, &mut out, warnings)?;
    drop(any);

    // Clusters are independent: lowered on all cores, their files handed to the sink in
    // spec order as each is done (diagnostics are sorted by position and the manifest by
    // path, so the result depends neither on timing nor on the window).
    let window = crate::par::threads() * WINDOW_PER_THREAD;
    let mut secret_diags = Diagnostics::new(input.spec_file, input.spec);
    let mut failed = None;
    let header = out.header.clone();
    crate::par::ordered(
        &t.clusters,
        window,
        |c| {
            lower_cluster(input, l, c, netw, reach)
                .map(|(tree, diags)| (Out::finish(&header, tree), diags))
        },
        |r| {
            match r {
                Ok((files, diags)) => {
                    if sources && !diags.is_empty() {
                        out.fail();
                    }
                    out.put(files);
                    secret_diags.items.extend(diags);
                }
                // Only Tailscale-image clusters fail here; `lock` assigns them nothing.
                Err(_) if !sources => {}
                Err(f) => {
                    failed = Some(f);
                    return std::ops::ControlFlow::Break(());
                }
            }
            std::ops::ControlFlow::Continue(())
        },
    );
    if let Some(f) = failed {
        return Err(f);
    }
    if !secret_diags.is_empty() && sources {
        secret_diags.sort();
        return Err(Failure::from_diags(&secret_diags));
    }
    let mut gitops = Tree::new();
    lower::gitops::write(&mut gitops, t);
    out.put(Out::finish(&out.header, gitops));
    if !out.over_limit.is_empty() {
        out.over_limit.sort_unstable();
        return Err(check_object_sizes(input, l, &out.over_limit));
    }
    Ok(out.close())
}

/// Every device's wg-quick config and hosts snippet to `out`, a batch of devices at a time.
/// The same prefix routed to two peers of one device is an error; a nested one a warning (in
/// `warnings`).
fn lower_devices(
    input: &Input,
    l: &Loaded,
    netw: &net::Net,
    reach: &net::Reach,
    any: &net::AnyTraffic,
    out: &mut Out,
    warnings: &mut String,
) -> Result<(), Failure> {
    let t = &l.tailnet;
    let mut diags = Diagnostics::new(input.spec_file, input.spec);
    let mut nested = Diagnostics::new(input.spec_file, input.spec);
    let route_span = |o: &lower::devices::Overlap| {
        l.spans
            .routes
            .iter()
            .find(|((id, net), _)| {
                *id == o.second.0 && (net.contains(&o.second.1) || o.second.1.contains(net))
            })
            .map(|(_, s)| *s)
            .or_else(|| l.spans.exposures.get(&o.second.0).copied())
            .unwrap_or_else(|| (0..0).into())
    };
    let header = out.header.clone();
    let may_overlap = lower::devices::prefixes_may_overlap(t, &l.lock);
    crate::par::ordered(
        &t.devices,
        crate::par::threads() * WINDOW_PER_THREAD,
        |d| {
            let files = lower::devices::device_files(t, d, &l.lock, netw, reach, any, may_overlap)?;
            let done = vec![
                emit::finish_file(
                    &header,
                    format!("devices/{}.conf", d.name),
                    files.conf.into_bytes(),
                ),
                emit::finish_file(
                    &header,
                    format!("devices/{}.hosts", d.name),
                    files.hosts.into_bytes(),
                ),
            ];
            Ok((done, files.nested))
        },
        |r| {
            device_result(r, out, &mut diags, &mut nested, &route_span);
            std::ops::ControlFlow::Continue(())
        },
    );
    if !diags.is_empty() {
        diags.sort();
        return Err(Failure::from_diags(&diags));
    }
    if !nested.is_empty() {
        nested.sort();
        warnings.push_str(&nested.render_warnings());
    }
    Ok(())
}

/// One device's lowered files (to `out`) or its overlapping routes (to `diags`, an error) and
/// its nested routes (to `nested`, warnings).
fn device_result(
    r: Result<(Vec<emit::File>, Vec<lower::devices::Overlap>), lower::devices::Overlap>,
    out: &mut Out,
    diags: &mut Diagnostics,
    nested: &mut Diagnostics,
    route_span: &dyn Fn(&lower::devices::Overlap) -> miette::SourceSpan,
) {
    match r {
        Ok((files, overlaps)) => {
            out.put(files);
            for o in &overlaps {
                let (wide, narrow) = if o.first.1.contains(&o.second.1) {
                    (&o.first, &o.second)
                } else {
                    (&o.second, &o.first)
                };
                nested.push(
                    Diagnostic::new(
                        route_span(o),
                        format!(
                            "{} of {:?} lies within {} of {:?}, and device {:?} may reach both",
                            narrow.1, narrow.0, wide.1, wide.0, o.device
                        ),
                    )
                    .label("nested route")
                    .help(format!(
                        "WireGuard routes by longest prefix: from {:?}, {} goes to {:?} only",
                        o.device, narrow.1, narrow.0
                    )),
                );
            }
        }
        Err(o) => {
            out.fail();
            diags.push(
                Diagnostic::new(route_span(&o), format!(
                    "{} of {:?} is also a route of {:?}, and device {:?} may reach both",
                    o.second.1, o.second.0, o.first.0, o.device
                ))
                .label("same route twice")
                .help("WireGuard gives one prefix to one peer of a device: advertise it from one node, or let no device reach both"),
            );
        }
    }
}

/// Kubernetes object files over 1 MiB (`over`: path, bytes), which the API server would
/// refuse: an error, each located at its exposure (a sidecar's Component) or cluster.
fn check_object_sizes(input: &Input, l: &Loaded, over: &[(String, usize)]) -> Failure {
    let mut diags = Diagnostics::new(input.spec_file, input.spec);
    for (path, len) in over {
        let mut parts = path.split('/');
        let cluster = (parts.next() == Some("clusters"))
            .then(|| parts.next())
            .flatten();
        let exposure = (parts.next() == Some("components"))
            .then(|| parts.next())
            .flatten();
        let span = exposure
            .and_then(|e| l.spans.exposures.get(e))
            .or_else(|| cluster.and_then(|c| l.spans.clusters.get(c)))
            .or(l.spans.tailnet.as_ref())
            .copied()
            .unwrap_or_else(|| (0..0).into());
        diags.push(
            Diagnostic::new(
                span,
                format!(
                    "{path} would be {len} bytes, over Kubernetes' limit of {} bytes (1 MiB) for one ConfigMap or Secret",
                    emit::OBJECT_FILE_LIMIT
                ),
            )
            .label(if path.ends_with("/gateway.yaml") {
                "its gateway config is too large"
            } else {
                "an object too large to apply"
            })
            .help(if path.ends_with("/gateway.yaml") {
                "the gateway's ConfigMap holds the config of every node it terminates: split the cluster, or publish=\"load-balancer\" (a ConfigMap per node)"
            } else {
                "meshes are sharded over ConfigMaps of about 192 KiB each; this file is another object: narrow what it lists, or split the cluster"
            }),
        );
    }
    diags.sort();
    Failure::from_diags(&diags)
}

/// `topology.json`: pretty JSON, nodes sorted, one trailing newline.
pub fn topology_json(topo: &tsk8s_policy::topology::Topology) -> String {
    serde_json::to_string_pretty(topo).expect("string-keyed JSON always serializes") + "\n"
}

/// One cluster's files (and the secret-backend problems found on the way).
fn lower_cluster(
    input: &Input,
    l: &Loaded,
    c: &crate::model::Cluster,
    netw: &net::Net,
    reach: &net::Reach,
) -> Result<(Tree, Vec<Diagnostic>), Failure> {
    let t = &l.tailnet;
    let mut tree = Tree::new();
    let mut secret_diags = Diagnostics::new(input.spec_file, "");
    if c.runtime == RuntimeKind::Tailscale {
        lower::tailscale::write(
            &mut tree,
            t,
            c,
            &l.spans,
            &input.sources,
            (input.spec_file, input.spec),
        )
        .map_err(|d| Failure::from_diags(&d))?;
        return Ok((tree, secret_diags.items));
    }
    let dir = format!("clusters/{}", c.name);
    let rt = lower::mesh::cluster_runtime(t, c, &l.lock, netw, reach);
    let mut resources: Vec<String> = Vec::new();
    let mut add = |tree: &mut Tree, name: String, text: String| {
        resources.push(name.clone());
        emit::put(tree, format!("{dir}/{name}"), text);
    };
    add(
        &mut tree,
        "namespace.yaml".into(),
        emit::yaml(&lower::k8s::namespace(c)),
    );
    add(
        &mut tree,
        "serviceaccount.yaml".into(),
        emit::yaml(&lower::k8s::service_account(&c.namespace)),
    );
    let mesh_shards = lower::mesh::shards(&rt.mesh, netw);
    for (n, cm) in
        lower::k8s::mesh_configmaps(lower::k8s::MESH_CONFIGMAP, &c.namespace, &mesh_shards, None)
            .iter()
            .enumerate()
    {
        add(&mut tree, format!("mesh-{n}.yaml"), emit::yaml(cm));
    }
    let peer_ports = peer_ports(&rt.mesh);
    // `publish="gateway"`: the nodes it terminates, the sidecars it relays to.
    let mut gateway = GatewayParts::default();
    for (id, node) in &rt.nodes {
        let Some(e) = c.exposures.iter().find(|e| &e.id == id) else {
            continue;
        };
        if let ExposureKind::Sidecar { namespace, .. } = &e.kind
            && c.publish == Publish::Gateway
        {
            gateway.relay(e, id, namespace, node);
        }
        if c.in_gateway(e) {
            gateway.nodes.push((e, node));
            continue;
        }
        if let ExposureKind::Sidecar { set, .. } = &e.kind {
            // A StatefulSet sidecar with replicas=N: one Component for its N nodes, written
            // at the first.
            if set.as_ref().is_some_and(|s| s.ordinal != 0) {
                continue;
            }
            let cx = SidecarCx {
                input,
                l,
                c,
                netw,
                reach,
                dir: &dir,
            };
            cx.component(&mut tree, &mut secret_diags, e, id, node, &rt);
            continue;
        }
        let text = node_objects(c, e, id, node, mesh_shards.len(), &peer_ports);
        add(&mut tree, format!("{id}.yaml"), text);
    }
    if lower::gateway::has_gateway(c) {
        let text = gateway.objects(c, mesh_shards.len(), &peer_ports);
        add(&mut tree, "gateway.yaml".into(), text);
    }
    let generators = lower::secrets::write_cluster_keys(
        &mut tree,
        &dir,
        t,
        c,
        &mut resources,
        &input.sources,
        &mut secret_diags,
        &l.spans,
    );
    let mut kustomization = emit::kustomization(&resources);
    lower::secrets::add_generators(&mut kustomization, &generators);
    emit::put(
        &mut tree,
        format!("{dir}/kustomization.yaml"),
        emit::yaml(&kustomization),
    );
    Ok((tree, secret_diags.items))
}

/// The WireGuard ports of a mesh's peers (sorted, once each): what a NetworkPolicy lets out.
fn peer_ports(mesh: &tsk8s_policy::runtime_config::MeshConfig) -> Vec<u16> {
    let mut p: Vec<u16> = mesh
        .peers
        .iter()
        .filter_map(|p| p.endpoint.as_ref()?.rsplit(':').next()?.parse().ok())
        .collect();
    p.sort();
    p.dedup();
    p
}

/// A node in its own pod: its ConfigMap, Deployment, WireGuard Service, egress Service and
/// NetworkPolicy, as one multi-document file.
fn node_objects(
    c: &crate::model::Cluster,
    e: &crate::model::Exposure,
    id: &str,
    node: &tsk8s_policy::runtime_config::NodeConfig,
    shards: usize,
    peer_ports: &[u16],
) -> String {
    let mut docs = vec![
        emit::yaml(&lower::k8s::node_configmap(&c.namespace, id, node)),
        emit::yaml(&lower::k8s::deployment(c, e, node, shards)),
        emit::yaml(&lower::k8s::wireguard_service(
            c,
            &c.namespace,
            e,
            node.listen_port,
        )),
    ];
    if let Some(s) = lower::k8s::egress_service(c, e) {
        docs.push(emit::yaml(&s));
    }
    docs.push(emit::yaml(&lower::k8s::network_policy(
        c, e, node, peer_ports,
    )));
    emit::yaml_docs(&docs)
}

/// What a cluster's gateway is made of: the nodes it terminates and the sidecars it relays to.
#[derive(Default)]
struct GatewayParts<'a> {
    nodes: Vec<(
        &'a crate::model::Exposure,
        &'a tsk8s_policy::runtime_config::NodeConfig,
    )>,
    relays: Vec<tsk8s_policy::runtime_config::Relay>,
    relay_pods: Vec<lower::k8s::RelayPod<'a>>,
}

impl<'a> GatewayParts<'a> {
    /// A sidecar the gateway relays to (its datagrams pass unchanged to the sidecar's pod).
    fn relay(
        &mut self,
        e: &'a crate::model::Exposure,
        id: &str,
        namespace: &'a str,
        node: &tsk8s_policy::runtime_config::NodeConfig,
    ) {
        self.relays.push(tsk8s_policy::runtime_config::Relay {
            name: node.name.clone(),
            public_key: node.public_key.clone(),
            target: lower::k8s::relay_target(
                &lower::k8s::object_name(id),
                namespace,
                node.listen_port,
            ),
        });
        self.relay_pods.push(lower::k8s::RelayPod {
            namespace,
            pods: lower::k8s::pod_selector(e),
            port: node.listen_port,
        });
    }

    /// `gateway.yaml`: its ConfigMap, Deployment, Service, the egress Services of its nodes
    /// and its NetworkPolicy.
    fn objects(self, c: &crate::model::Cluster, shards: usize, peer_ports: &[u16]) -> String {
        let nodes: Vec<&crate::model::Exposure> = self.nodes.iter().map(|(e, _)| *e).collect();
        let cfg = lower::gateway::config(
            c,
            self.nodes.iter().map(|(_, n)| (*n).clone()).collect(),
            self.relays,
        );
        let mut docs = vec![
            emit::yaml(&lower::gateway::configmap(c, &cfg)),
            emit::yaml(&lower::gateway::deployment(c, &self.nodes, shards)),
            emit::yaml(&lower::k8s::gateway_service(c)),
        ];
        for e in &nodes {
            if let Some(s) = lower::k8s::egress_service(c, e) {
                docs.push(emit::yaml(&s));
            }
        }
        docs.push(emit::yaml(&lower::k8s::gateway_network_policy(
            c,
            &nodes,
            peer_ports,
            &self.relay_pods,
        )));
        emit::yaml_docs(&docs)
    }
}

/// What a sidecar's Component is lowered from.
struct SidecarCx<'a> {
    input: &'a Input<'a>,
    l: &'a Loaded,
    c: &'a crate::model::Cluster,
    netw: &'a net::Net,
    reach: &'a net::Reach,
    dir: &'a str,
}

impl SidecarCx<'_> {
    /// The Component of sidecar `e` (for a StatefulSet with replicas=N, of all N nodes):
    /// kustomization, resources, patch, its own mesh shards and key references.
    fn component(
        &self,
        tree: &mut Tree,
        secret_diags: &mut Diagnostics,
        e: &crate::model::Exposure,
        id: &str,
        node: &tsk8s_policy::runtime_config::NodeConfig,
        rt: &lower::mesh::ClusterRuntime,
    ) {
        let (t, c) = (&self.l.tailnet, self.c);
        let ExposureKind::Sidecar { set, .. } = &e.kind else {
            return;
        };
        let members: Vec<(
            &crate::model::Exposure,
            &tsk8s_policy::runtime_config::NodeConfig,
        )> = match set {
            None => vec![(e, node)],
            Some(s) => rt
                .nodes
                .iter()
                .filter_map(|(mid, mnode)| {
                    let me = c.exposures.iter().find(|x| &x.id == mid)?;
                    match &me.kind {
                        ExposureKind::Sidecar { set: Some(ms), .. } if ms.base == s.base => {
                            Some((me, mnode))
                        }
                        _ => None,
                    }
                })
                .collect(),
        };
        let meshes: Vec<_> = members
            .iter()
            .map(|(me, _)| {
                lower::mesh::shards(
                    &lower::mesh::node_mesh(t, c, me, self.netw, self.reach),
                    self.netw,
                )
            })
            .collect();
        let Some(mut comp) = lower::sidecar::component(c, &members, &meshes) else {
            return;
        };
        let name = set.as_ref().map_or(id, |s| s.base.as_str());
        let cdir = format!("{}/components/{name}", self.dir);
        for (me, _) in &members {
            lower::secrets::write_component_key(
                tree,
                &cdir,
                t,
                c,
                me,
                &mut comp.kustomization,
                &self.input.sources,
                secret_diags,
                &self.l.spans,
            );
        }
        emit::put(
            tree,
            format!("{cdir}/kustomization.yaml"),
            emit::yaml(&comp.kustomization),
        );
        let docs: Vec<String> = comp.resources.iter().map(emit::yaml).collect();
        emit::put(
            tree,
            format!("{cdir}/resources.yaml"),
            emit::yaml_docs(&docs),
        );
        emit::put(tree, format!("{cdir}/patch.yaml"), emit::yaml(&comp.patch));
        for (file, cm) in &comp.mesh {
            emit::put(tree, format!("{cdir}/{file}"), emit::yaml(cm));
        }
    }
}

/// How many `type: LoadBalancer` Services a build emits (each is a cloud load balancer): one
/// per node of every tsk8s-runtime cluster that publishes with `load-balancer`, one per
/// cluster with a gateway.
pub fn load_balancer_services(t: &Tailnet) -> usize {
    let per_node = t
        .runtime_nodes()
        .filter(|(c, _)| c.publish == Publish::LoadBalancer)
        .count();
    let gateways = t
        .clusters
        .iter()
        .filter(|c| c.runtime == RuntimeKind::Tsk8s && lower::gateway::has_gateway(c))
        .count();
    per_node + gateways
}

/// `tsk8s test`: the spec's tests against the topology it defines (lock addresses; stand-in
/// addresses for Tailscale-image nodes).
pub fn test(input: &Input) -> Result<tsk8s_policy::acltest::TestReport, Failure> {
    Ok(test_loaded(&load(input)?))
}

/// [`test`] from an already loaded input.
pub fn test_loaded(l: &Loaded) -> tsk8s_policy::acltest::TestReport {
    test_loaded_with_notes(l).0
}

/// [`test_loaded`], plus notes on the tests judged by the policy alone. A test whose source is
/// a device or a tsk8s-runtime node also fails when the policy allows an `accept` that the
/// emitted network cannot carry (unless it says `check="policy"`).
pub fn test_loaded_with_notes(l: &Loaded) -> (tsk8s_policy::acltest::TestReport, Vec<String>) {
    let netw = net::build_net(&l.tailnet, &l.lock);
    let report = policy_tests(l, &netw);
    let reach = net::reach(&l.policy, &netw);
    dataplane_tests(l, report, &netw, &reach, &net::AnyTraffic::new(&reach))
}

/// The spec's tests judged by the policy (against [`test_topology`]). Run before the
/// per-node filters are computed: the policy-wide matcher it builds is gone by then, so the
/// two never sit in memory together.
fn policy_tests(l: &Loaded, netw: &net::Net) -> tsk8s_policy::acltest::TestReport {
    tsk8s_policy::acltest::run_tests(&l.policy, &test_topology(l, &netw.topology))
}

/// [`policy_tests`]' report, plus the tests the emitted network fails to carry, and notes.
fn dataplane_tests(
    l: &Loaded,
    mut report: tsk8s_policy::acltest::TestReport,
    netw: &net::Net,
    reach: &net::Reach,
    any: &net::AnyTraffic,
) -> (tsk8s_policy::acltest::TestReport, Vec<String>) {
    if l.tailnet.tests.is_empty() {
        return (report, Vec::new());
    }
    let view = crate::access::View::with_index(&l.tailnet, &l.lock, &l.policy, netw, reach, any);
    let (failures, failed, notes) = crate::access::dataplane_tests(&view, &l.policy);
    // An entry already failed by the policy is counted once (every failed entry has a line).
    let by_policy: BTreeSet<usize> = report.failure_entries.iter().copied().collect();
    report.failed_entries += failed.iter().filter(|k| !by_policy.contains(k)).count();
    // One failure per failed entry, in the same order: each is located at its `test` node.
    debug_assert_eq!(failures.len(), failed.len());
    report.failures.extend(failures);
    report.failure_entries.extend(failed);
    (report, notes)
}

/// The topology the spec's tests run against: the network's, plus a stand-in node for each
/// user with no device in the spec (e.g. on Tailscale, whose devices the spec does not list),
/// so that user's rules are still tested (tests only; never in the output).
fn test_topology(
    l: &Loaded,
    topo: &tsk8s_policy::topology::Topology,
) -> tsk8s_policy::topology::Topology {
    let mut topo = topo.clone();
    let mut stand_in = u32::from(std::net::Ipv4Addr::new(100, 126, 255, 254));
    // The users with a node, found once (not a scan of every node per user).
    let mut has_node: BTreeSet<String> =
        topo.nodes.values().filter_map(|n| n.user.clone()).collect();
    for u in &l.tailnet.users {
        if !has_node.insert(u.clone()) {
            continue;
        }
        let ip = std::net::Ipv4Addr::from(stand_in);
        stand_in -= 1;
        topo.nodes.insert(
            format!("user:{u}"),
            tsk8s_policy::topology::Node {
                ipv4: Some(ip),
                ipv6: Some(lockfile::ipv6_for(ip)),
                user: Some(u.clone()),
                tags: Vec::new(),
                routable_ips: Vec::new(),
                approved_routes: Vec::new(),
            },
        );
    }
    topo
}
