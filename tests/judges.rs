//! Outside judges: tools we did not write must agree that what `tsk8s build` emits is valid and
//! safe. Every example (`examples/`, `examples/*/`) and every golden spec (`testdata/specs/*/`)
//! with a `tailnet.kdl` is built with the real binary into a temp dir, then judged:
//!
//! - `kubectl kustomize` renders every dir holding a Kustomization, and every kustomize
//!   Component through a small generated test app that includes it (a workload named as the
//!   Component's patch target). The Component must add the runtime container (a plain one or
//!   a native sidecar, leaving the app's container first) and leave the app's pod-level
//!   settings alone; a tsk8s-runtime Component pins a Deployment to `replicas: 1` and
//!   `strategy: Recreate` (the test app starts with 2 replicas and a rolling update).
//! - `kubernetes-validate --strict` (pinned, `.venv/bin/`, see `scripts/judges-setup.sh`)
//!   passes on every object of a built-in kind.
//! - Custom resources (ExternalSecret, SealedSecret, Argo CD Application/ApplicationSet, Flux
//!   Kustomization) validate against their published CRD schemas in `schema/crds/`, closed the
//!   way the API server's strict field validation closes them (unknown fields are errors). A
//!   SOPS-encrypted Secret is validated in its decrypted form (structurally: `sops` metadata
//!   dropped, `ENC[…]` values replaced by values of their declared type).
//! - `checkov --framework kubernetes` passes on all of it in one run, skipping only the checks
//!   listed with reasons in `CHECKOV_SKIPS.md`; no skip that applies to the tsk8s-runtime target
//!   may concern privileges, capabilities, root, host namespaces, a writable root filesystem or
//!   secret handling.
//! - Pod Security Standards `restricted` (checked here in Rust) for every Pod template of the
//!   tsk8s-runtime target, plus a numeric non-root UID and a read-only root filesystem; every
//!   Namespace tsk8s emits for that target is labelled `enforce: restricted`.
//!
//! A judge that is not installed is skipped with a printed reason, unless
//! `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` or `CI=true`, when that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tsk8s");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------------------
// Environment

fn required() -> bool {
    std::env::var("TSK8S_REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A missing judge: skip with a reason, or fail when judges are required.
fn missing(what: &str) {
    if required() {
        panic!(
            "judge not available: {what} (required because TSK8S_REQUIRE_PRIVILEGED_TESTS=1 or CI=true); run scripts/judges-setup.sh"
        );
    }
    eprintln!("SKIP: judge not available: {what}; run scripts/judges-setup.sh to install it");
}

fn venv_bin(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TSK8S_JUDGES_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join(".venv"));
    let p = dir.join("bin").join(name);
    p.is_file().then_some(p)
}

fn kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temp dir whose path has no hidden component (checkov skips hidden dirs).
fn judges_tempdir() -> Result<tempfile::TempDir, std::io::Error> {
    tempfile::Builder::new().prefix("tsk8s-judges-").tempdir()
}

/// Objects are handed to the judges as JSON (valid YAML with no YAML 1.1 ambiguity), so the
/// judges see exactly the values kustomize rendered.
fn to_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Specs and builds

/// One spec dir found in the repo.
struct SpecDir {
    /// e.g. `examples` or `testdata/specs/sidecar`.
    name: String,
    dir: PathBuf,
}

fn spec_dirs() -> Vec<SpecDir> {
    let root = Path::new(ROOT);
    tsk8s_test_support::spec_dirs(root)
        .into_iter()
        .map(|d| SpecDir {
            name: d
                .strip_prefix(root)
                .unwrap_or(&d)
                .to_string_lossy()
                .into_owned(),
            dir: d,
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let rd = fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for e in rd.flatten() {
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            fs::copy(&p, &t).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

/// Which runtime a path of the output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// tsk8s-runtime: the strict rules apply.
    Runtime,
    /// The official Tailscale image (documents what it needs beyond `restricted`).
    TailscaleImage,
}

/// One object the build emits (after kustomize rendering where there is a kustomization).
#[derive(Clone, Debug)]
struct Object {
    /// Where it came from, for messages: `<spec>:<path>#<doc>`.
    origin: String,
    target: Target,
    value: Value,
}

struct Built {
    spec: String,
    /// Cluster name → runtime target.
    targets: BTreeMap<String, Target>,
    /// Objects that are applied to clusters (rendered kustomizations, rendered test apps, and
    /// plain YAML files outside kustomization dirs).
    objects: Vec<Object>,
    /// Problems found while building and rendering (kustomize failures etc.).
    problems: Vec<String>,
    /// The emitted YAML files that are whole objects (not kustomize files or patches, not
    /// SOPS-encrypted), as written, with their origin: judged byte for byte too, since a
    /// YAML 1.1 reader (`kubectl apply -f`) must read them as meant.
    raw: Vec<(PathBuf, String)>,
}

struct Judged {
    _tmp: tempfile::TempDir,
    built: Vec<Built>,
    /// Specs that were not judged, with the reason.
    skipped: Vec<String>,
}

static JUDGED: OnceLock<Judged> = OnceLock::new();

fn judged() -> &'static Judged {
    JUDGED.get_or_init(build_all)
}

fn build_all() -> Judged {
    let tmp = match judges_tempdir() {
        Ok(t) => t,
        Err(e) => panic!("tempdir: {e}"),
    };
    let kubectl = kubectl();
    if kubectl.is_none() {
        missing("kubectl (for `kubectl kustomize`)");
    }
    let mut built = Vec::new();
    let mut skipped = Vec::new();
    for (i, s) in spec_dirs().into_iter().enumerate() {
        let work = tmp.path().join(format!("{i}"));
        let src = work.join("spec");
        copy_dir(&s.dir, &src);
        // Never judge a stale output dir that happens to sit in the spec dir.
        let _ = fs::remove_dir_all(src.join("out"));
        let spec_path = src.join("tailnet.kdl");
        let spec_text = fs::read_to_string(&spec_path).unwrap_or_default();
        let targets = match tsk8s::build::front("tailnet.kdl", &spec_text) {
            Ok(f) => f
                .tailnet
                .clusters
                .iter()
                .map(|c| {
                    let t = match c.runtime {
                        tsk8s::model::RuntimeKind::Tsk8s => Target::Runtime,
                        tsk8s::model::RuntimeKind::Tailscale => Target::TailscaleImage,
                    };
                    (c.name.clone(), t)
                })
                .collect(),
            Err(f) => {
                assert!(
                    s.name.starts_with("testdata/"),
                    "{}: the example does not compile:\n{}",
                    s.name,
                    f.text
                );
                skipped.push(format!("{}: an error case (does not compile)", s.name));
                continue;
            }
        };
        if !src.join("tailnet.lock").exists() {
            // The real `lock` logic, on the temp copy, with throwaway keys.
            let o = run(Command::new(BIN)
                .arg("lock")
                .arg(&spec_path)
                .arg("--keys-dir")
                .arg(work.join("keys")));
            if !o.status.success() {
                skipped.push(format!(
                    "{}: no tailnet.lock and `tsk8s lock` failed: {}",
                    s.name,
                    text(&o.stderr).trim()
                ));
                continue;
            }
        }
        let out = work.join("out");
        let o = run(Command::new(BIN)
            .arg("build")
            .arg(&spec_path)
            .arg("-o")
            .arg(&out));
        if !o.status.success() {
            assert!(
                s.name.starts_with("testdata/"),
                "{}: `tsk8s build` failed:\n{}",
                s.name,
                text(&o.stderr)
            );
            skipped.push(format!("{}: an error case (build fails)", s.name));
            continue;
        }
        built.push(collect(&s.name, &work, &out, targets, kubectl.as_deref()));
    }
    for s in &skipped {
        eprintln!("not judged: {s}");
    }
    Judged {
        _tmp: tmp,
        built,
        skipped,
    }
}

fn target_of(rel: &str, targets: &BTreeMap<String, Target>) -> Target {
    let mut parts = rel.split('/');
    match (parts.next(), parts.next()) {
        (Some("clusters"), Some(c)) => targets.get(c).copied().unwrap_or(Target::Runtime),
        _ => Target::Runtime,
    }
}

fn yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn all_files(dir: &Path) -> Vec<String> {
    // Sorted: read_tree's map is ordered by path.
    tsk8s_test_support::read_tree(dir)
        .map(|t| t.into_keys().collect())
        .unwrap_or_default()
}

fn is_yaml(rel: &str) -> bool {
    rel.ends_with(".yaml") || rel.ends_with(".yml")
}

fn kind_of(v: &Value) -> (&str, &str) {
    (
        v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
        v.get("kind").and_then(Value::as_str).unwrap_or(""),
    )
}

/// Render every Kustomization and Component of one output tree; gather the objects.
fn collect(
    spec: &str,
    work: &Path,
    out: &Path,
    targets: BTreeMap<String, Target>,
    kubectl: Option<&Path>,
) -> Built {
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    let files = all_files(out);
    // Dirs that hold a kustomization.yaml, with its kind.
    let mut kdirs: BTreeMap<String, String> = BTreeMap::new();
    for rel in &files {
        let Some(dir) = rel.strip_suffix("kustomization.yaml") else {
            continue;
        };
        if !(dir.is_empty() || dir.ends_with('/')) {
            continue;
        }
        let text = fs::read_to_string(out.join(rel)).unwrap_or_default();
        let kind = yaml_docs(&text)
            .ok()
            .and_then(|d| d.into_iter().next())
            .map(|v| kind_of(&v).1.to_string())
            .unwrap_or_default();
        kdirs.insert(dir.trim_end_matches('/').to_string(), kind);
    }
    let under_kdir = |rel: &str| {
        kdirs
            .keys()
            .any(|d| d.is_empty() || rel.starts_with(&format!("{d}/")))
    };
    // Plain YAML files outside any kustomization dir are applied as they are.
    for rel in files.iter().filter(|r| is_yaml(r) && !under_kdir(r)) {
        let t = fs::read_to_string(out.join(rel)).unwrap_or_default();
        match yaml_docs(&t) {
            Ok(docs) => {
                for (i, v) in docs.into_iter().enumerate() {
                    objects.push(Object {
                        origin: format!("{spec}:{rel}#{i}"),
                        target: target_of(rel, &targets),
                        value: v,
                    });
                }
            }
            Err(e) => problems.push(format!("{spec}:{rel}: not valid YAML: {e}")),
        }
    }
    for (dir, kind) in &kdirs {
        // A Component nested in a Kustomization's dir is rendered through its test app only.
        let target = target_of(&format!("{dir}/x"), &targets);
        match kind.as_str() {
            "Kustomization" => {
                let Some(k) = kubectl else {
                    // No kustomize: judge the raw files the kustomization lists.
                    raw_resources(spec, out, dir, target, &mut objects, &mut problems);
                    continue;
                };
                let o = run(Command::new(k).arg("kustomize").arg(out.join(dir)));
                if !o.status.success() {
                    problems.push(format!(
                        "{spec}: `kubectl kustomize {dir}` failed:\n{}",
                        text(&o.stderr)
                    ));
                    continue;
                }
                match yaml_docs(&text(&o.stdout)) {
                    Ok(docs) => {
                        if docs.is_empty() {
                            problems.push(format!("{spec}: `kubectl kustomize {dir}` is empty"));
                        }
                        for (i, v) in docs.into_iter().enumerate() {
                            objects.push(Object {
                                origin: format!("{spec}:kustomize {dir}#{i}"),
                                target,
                                value: v,
                            });
                        }
                    }
                    Err(e) => problems.push(format!(
                        "{spec}: `kubectl kustomize {dir}` printed invalid YAML: {e}"
                    )),
                }
            }
            "Component" => {
                let Some(k) = kubectl else { continue };
                match render_component(spec, work, out, dir, k, target) {
                    Ok(docs) => {
                        for (i, v) in docs.into_iter().enumerate() {
                            objects.push(Object {
                                origin: format!("{spec}:test app with component {dir}#{i}"),
                                target,
                                value: v,
                            });
                        }
                    }
                    Err(e) => problems.push(e),
                }
            }
            other => problems.push(format!(
                "{spec}:{dir}/kustomization.yaml: unexpected kind {other:?}"
            )),
        }
    }
    let mut raw = Vec::new();
    for rel in files.iter().filter(|r| is_yaml(r)) {
        let t = fs::read_to_string(out.join(rel)).unwrap_or_default();
        let docs = yaml_docs(&t).unwrap_or_default();
        let whole = !docs.is_empty()
            && !rel.ends_with("kustomization.yaml")
            && !docs.iter().any(|d| is_kustomize_file(d) || is_sops(d))
            && !kdirs
                .iter()
                .any(|(d, k)| k == "Component" && rel.starts_with(&format!("{d}/patch")));
        if whole {
            raw.push((out.join(rel), format!("{spec}:{rel}")));
        }
    }
    Built {
        spec: spec.to_string(),
        targets,
        objects,
        problems,
        raw,
    }
}

fn raw_resources(
    spec: &str,
    out: &Path,
    dir: &str,
    target: Target,
    objects: &mut Vec<Object>,
    problems: &mut Vec<String>,
) {
    let k = fs::read_to_string(out.join(dir).join("kustomization.yaml")).unwrap_or_default();
    let docs = yaml_docs(&k).unwrap_or_default();
    let resources = docs
        .first()
        .and_then(|v| v.get("resources"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in resources.iter().filter_map(Value::as_str) {
        let p = out.join(dir).join(r);
        if p.is_dir() {
            continue;
        }
        match fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| yaml_docs(&t))
        {
            Ok(docs) => {
                for (i, v) in docs.into_iter().enumerate() {
                    objects.push(Object {
                        origin: format!("{spec}:{dir}/{r}#{i}"),
                        target,
                        value: v,
                    });
                }
            }
            Err(e) => problems.push(format!("{spec}:{dir}/{r}: {e}")),
        }
    }
}

/// A user's workload as the test app has it before the Component is applied. A Deployment
/// runs 2 replicas with a rolling update: the tsk8s-runtime Component must pin it to one pod.
fn app_workload(kind: &str, name: &str, namespace: &str, target: Target) -> Value {
    let labels = json!({ "app.kubernetes.io/name": name });
    let pod = json!({
        "metadata": { "labels": labels },
        "spec": {
            "serviceAccountName": "app",
            "securityContext": { "fsGroup": 10001 },
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": [{
                "name": "app",
                "image": "registry.example/app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "imagePullPolicy": "Always",
                "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "privileged": false,
                    "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "capabilities": { "drop": ["ALL"] },
                    "seccompProfile": { "type": "RuntimeDefault" }
                },
                "readinessProbe": { "httpGet": { "path": "/", "port": "http" } },
                "livenessProbe": { "httpGet": { "path": "/", "port": "http" } },
                "resources": {
                    "requests": { "cpu": "10m", "memory": "16Mi" },
                    "limits": { "cpu": "100m", "memory": "64Mi" }
                }
            }]
        }
    });
    let mut spec = json!({
        "selector": { "matchLabels": labels },
        "template": pod,
    });
    match kind {
        "StatefulSet" => {
            spec["serviceName"] = json!(name);
            spec["replicas"] = json!(1);
        }
        "Deployment" if target == Target::Runtime => {
            spec["replicas"] = json!(2);
            spec["strategy"] = json!({
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 }
            });
        }
        "Deployment" => {
            spec["replicas"] = json!(1);
        }
        _ => {}
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": spec,
    })
}

/// Pod-level settings of a workload the Component must leave alone: everything in the pod
/// spec except containers, init containers and volumes, and the workload's own spec minus its
/// template (and minus `replicas` and `strategy` of a Deployment, which a tsk8s-runtime
/// Component pins; checked apart).
fn pod_level(v: &Value) -> Value {
    let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let mut pod = spec
        .get("template")
        .and_then(|t| t.get("spec"))
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(o) = pod.as_object_mut() {
        o.remove("containers");
        o.remove("initContainers");
        o.remove("volumes");
    }
    if let Some(o) = spec.as_object_mut() {
        o.remove("template");
        if kind_of(v).1 == "Deployment" {
            o.remove("replicas");
            o.remove("strategy");
        }
    }
    json!({ "workload": spec, "pod": pod })
}

fn render_component(
    spec: &str,
    work: &Path,
    out: &Path,
    dir: &str,
    kubectl: &Path,
    target: Target,
) -> Result<Vec<Value>, String> {
    let comp_text = fs::read_to_string(out.join(dir).join("kustomization.yaml"))
        .map_err(|e| format!("{spec}:{dir}: {e}"))?;
    let comp = yaml_docs(&comp_text)
        .map_err(|e| format!("{spec}:{dir}/kustomization.yaml: {e}"))?
        .into_iter()
        .next()
        .unwrap_or(Value::Null);
    let targets: Vec<&Value> = comp
        .get("patches")
        .and_then(Value::as_array)
        .map(|p| p.iter().filter_map(|p| p.get("target")).collect())
        .unwrap_or_default();
    if targets.is_empty() {
        return Err(format!(
            "{spec}:{dir}/kustomization.yaml: a Component without a patch target"
        ));
    }
    let app = work.join("apps").join(dir.replace('/', "_"));
    fs::create_dir_all(&app).map_err(|e| e.to_string())?;
    let mut workloads = Vec::new();
    for t in &targets {
        let kind = t
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("Deployment");
        let name = t.get("name").and_then(Value::as_str).unwrap_or("app");
        let ns = t
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        workloads.push(app_workload(kind, name, ns, target));
    }
    // The app's own NetworkPolicy (a user's concern, not the Component's: a policy the
    // Component brought would newly deny the app's other ingress).
    let mut app_objects = workloads.clone();
    for w in &workloads {
        app_objects.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": { "name": w["metadata"]["name"], "namespace": w["metadata"]["namespace"] },
            "spec": {
                "podSelector": { "matchLabels": w["spec"]["selector"]["matchLabels"] },
                "policyTypes": ["Ingress"],
                "ingress": [{}],
            },
        }));
    }
    let docs: Vec<String> = app_objects.iter().map(to_json).collect();
    fs::write(app.join("workload.yaml"), docs.join("\n---\n")).map_err(|e| e.to_string())?;
    let rel_comp = pathdiff(&out.join(dir), &app);
    let k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["workload.yaml"],
        "components": [rel_comp],
    });
    fs::write(app.join("kustomization.yaml"), to_json(&k)).map_err(|e| e.to_string())?;
    let o = run(Command::new(kubectl).arg("kustomize").arg(&app));
    if !o.status.success() {
        return Err(format!(
            "{spec}: `kubectl kustomize` of a test app including {dir} failed:\n{}",
            text(&o.stderr)
        ));
    }
    let rendered =
        yaml_docs(&text(&o.stdout)).map_err(|e| format!("{spec}: test app for {dir}: {e}"))?;
    // The Component adds the runtime container and leaves pod-level settings alone.
    for w in &workloads {
        let (_, kind) = kind_of(w);
        let name = w["metadata"]["name"].as_str().unwrap_or("");
        let Some(r) = rendered
            .iter()
            .find(|r| kind_of(r).1 == kind && r["metadata"]["name"].as_str() == Some(name))
        else {
            return Err(format!(
                "{spec}: test app for {dir}: {kind} {name} missing from the render"
            ));
        };
        let names = |key: &str| -> Vec<&str> {
            r["spec"]["template"]["spec"][key]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default()
        };
        let containers = names("containers");
        // A native sidecar: an init container that keeps running.
        let native: Vec<&str> = r["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter(|c| c["restartPolicy"] == "Always")
                    .filter_map(|c| c["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let added = match target {
            Target::Runtime => {
                containers.contains(&"tsk8s-runtime") || native.contains(&"tsk8s-runtime")
            }
            Target::TailscaleImage => containers.len() > 1 || !native.is_empty(),
        };
        if !containers.contains(&"app") || !added {
            return Err(format!(
                "{spec}: test app for {dir} ({target:?}): the Component did not add its container beside the app's: containers {containers:?}, native sidecars {native:?}"
            ));
        }
        if containers.first() != Some(&"app")
            && target == Target::Runtime
            && native.contains(&"tsk8s-runtime")
        {
            return Err(format!(
                "{spec}: test app for {dir}: the app's container is not the pod's first (kubectl's default): {containers:?}"
            ));
        }
        if kind == "Deployment" && target == Target::Runtime {
            let s = &r["spec"];
            if s["replicas"] != 1 || s["strategy"] != json!({ "type": "Recreate" }) {
                return Err(format!(
                    "{spec}: the Component {dir} does not pin Deployment {name} to one pod replaced by Recreate: replicas {}, strategy {}",
                    s["replicas"], s["strategy"]
                ));
            }
        }
        if pod_level(r) != pod_level(w) {
            return Err(format!(
                "{spec}: the Component {dir} changed pod-level settings of {kind} {name}:\nbefore: {}\nafter:  {}",
                pod_level(w),
                pod_level(r)
            ));
        }
    }
    Ok(rendered)
}

/// `to` relative to `from` (both absolute, in the same temp dir).
fn pathdiff(to: &Path, from: &Path) -> String {
    let t: Vec<_> = to.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); f.len() - common];
    parts.extend(
        t[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

// ---------------------------------------------------------------------------------------------
// Object classes

/// Custom resources we know the schema of: (apiVersion, kind) → file in schema/crds/.
const CRDS: &[(&str, &str, &str)] = &[
    (
        "external-secrets.io/v1",
        "ExternalSecret",
        "external-secrets.io_externalsecret_v1.json",
    ),
    (
        "bitnami.com/v1alpha1",
        "SealedSecret",
        "bitnami.com_sealedsecret_v1alpha1.json",
    ),
    (
        "argoproj.io/v1alpha1",
        "Application",
        "argoproj.io_application_v1alpha1.json",
    ),
    (
        "argoproj.io/v1alpha1",
        "ApplicationSet",
        "argoproj.io_applicationset_v1alpha1.json",
    ),
    (
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        "kustomize.toolkit.fluxcd.io_kustomization_v1.json",
    ),
];

fn crd_file(v: &Value) -> Option<&'static str> {
    let (api, kind) = kind_of(v);
    CRDS.iter()
        .find(|(a, k, _)| *a == api && *k == kind)
        .map(|(_, _, f)| *f)
}

/// Objects that are not Kubernetes API objects at all (kustomize's own files).
fn is_kustomize_file(v: &Value) -> bool {
    kind_of(v).0.starts_with("kustomize.config.k8s.io/")
}

fn is_sops(v: &Value) -> bool {
    v.get("sops").is_some_and(Value::is_object)
}

/// A SOPS-encrypted object in its decrypted shape: metadata dropped, each `ENC[…,type:T]`
/// replaced by a value of type T (base64 for Secret `data`).
fn sops_decrypted_shape(v: &Value) -> Value {
    fn walk(v: &Value, in_data: bool) -> Value {
        match v {
            Value::String(s) if s.starts_with("ENC[") && s.ends_with(']') => {
                let ty = s
                    .rsplit(',')
                    .next()
                    .and_then(|t| t.strip_prefix("type:"))
                    .map(|t| t.trim_end_matches(']'))
                    .unwrap_or("str");
                match ty {
                    "int" => json!(0),
                    "float" => json!(0.0),
                    "bool" => json!(true),
                    _ if in_data => json!("eA=="),
                    _ => json!("x"),
                }
            }
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter(|(k, _)| k.as_str() != "sops")
                    .map(|(k, x)| (k.clone(), walk(x, in_data || k == "data")))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, in_data)).collect()),
            other => other.clone(),
        }
    }
    walk(v, false)
}

fn objects_for_validation() -> Vec<Object> {
    let mut out = Vec::new();
    for b in &judged().built {
        for o in &b.objects {
            if is_kustomize_file(&o.value) {
                continue;
            }
            let mut o = o.clone();
            if is_sops(&o.value) {
                o.value = sops_decrypted_shape(&o.value);
            }
            out.push(o);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Judges

#[test]
fn every_example_builds_and_renders() {
    let j = judged();
    assert!(
        !j.built.is_empty(),
        "no spec was judged (skipped: {:?})",
        j.skipped
    );
    let mut problems = Vec::new();
    for b in &j.built {
        problems.extend(b.problems.iter().cloned());
        if b.objects.is_empty() {
            problems.push(format!("{}: no objects", b.spec));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    for b in &j.built {
        eprintln!(
            "judged {}: {} object(s), clusters {:?}",
            b.spec,
            b.objects.len(),
            b.targets
        );
    }
}

#[test]
fn kubernetes_validate_strict() {
    let Some(kv) = venv_bin("kubernetes-validate") else {
        missing("kubernetes-validate (in .venv)");
        return;
    };
    let tmp = judges_tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut files = Vec::new();
    // Every rendered object of a built-in kind…
    for (i, o) in objects_for_validation()
        .into_iter()
        .filter(|o| crd_file(&o.value).is_none())
        .enumerate()
    {
        let p = tmp.path().join(format!("{i:05}.json"));
        fs::write(&p, to_json(&o.value)).unwrap_or_else(|e| panic!("{e}"));
        files.push((p, o.origin));
    }
    assert!(!files.is_empty(), "no objects to validate");
    // …and every emitted file as written (read as YAML 1.1, the way `kubectl apply -f` reads).
    for b in &judged().built {
        files.extend(b.raw.iter().cloned());
    }
    let o = run(Command::new(&kv)
        .arg("--strict")
        .arg("--kubernetes-version")
        .arg(KUBERNETES_VERSION)
        .args(files.iter().map(|(p, _)| p)));
    let stdout = text(&o.stdout);
    let stderr = text(&o.stderr);
    // Custom resources have no built-in schema: they are judged against schema/crds/.
    let unexpected_warning = |l: &&str| {
        l.contains("Couldn't find schema")
            && !CRDS
                .iter()
                .any(|(api, kind, _)| l.contains(&format!("kind {kind} with api version {api} ")))
    };
    let warned: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(unexpected_warning)
        .collect();
    if !o.status.success() || !warned.is_empty() {
        // Name the object each failing file holds.
        let mut msg = String::new();
        for line in stdout.lines().chain(stderr.lines()) {
            if line.starts_with("INFO ") {
                continue;
            }
            let mut line = line.to_string();
            for (p, origin) in &files {
                let ps = p.to_string_lossy();
                if line.contains(ps.as_ref()) {
                    line = line.replace(ps.as_ref(), origin);
                }
            }
            msg.push_str(&line);
            msg.push('\n');
        }
        panic!("kubernetes-validate --strict failed:\n{msg}");
    }
    eprintln!(
        "kubernetes-validate --strict: {} file(s) valid",
        files.len()
    );
}

/// The Kubernetes version whose schemas objects are validated against (k8s-openapi's `v1_33`).
const KUBERNETES_VERSION: &str = "1.33.0";

/// Close a CRD schema the way strict field validation does: wherever an object lists
/// `properties` and says nothing of `additionalProperties` nor preserves unknown fields,
/// unknown fields are errors. `metadata` of the top level stays open (ObjectMeta).
fn close_schema(v: &mut Value) {
    match v {
        Value::Object(o) => {
            let preserve = o
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if o.contains_key("properties") && !o.contains_key("additionalProperties") && !preserve
            {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, x) in o.iter_mut() {
                if k == "x-kubernetes-preserve-unknown-fields" {
                    continue;
                }
                close_schema(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close_schema),
        _ => {}
    }
}

fn crd_schema(file: &str) -> Value {
    let p = Path::new(ROOT).join("schema/crds").join(file);
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut v: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    close_schema(&mut v);
    // The API server fills apiVersion/kind/metadata itself; ObjectMeta is validated by the
    // server, not the CRD: accept the standard shape.
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    "finalizers": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["name"],
                "additionalProperties": false,
            }),
        );
    }
    v
}

#[test]
fn custom_resources_match_their_crd_schemas() {
    let mut validators: BTreeMap<&str, jsonschema::Validator> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut count = 0;
    for o in objects_for_validation() {
        let Some(file) = crd_file(&o.value) else {
            continue;
        };
        if !validators.contains_key(file) {
            let schema = crd_schema(file);
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft4)
                .build(&schema)
                .unwrap_or_else(|e| panic!("schema/crds/{file}: {e}"));
            validators.insert(file, v);
        }
        count += 1;
        let Some(v) = validators.get(file) else {
            continue;
        };
        let errs: Vec<String> = v
            .iter_errors(&o.value)
            .map(|e| format!("  at {}: {e}", e.instance_path()))
            .collect();
        if !errs.is_empty() {
            failures.push(format!(
                "{} ({}) does not match schema/crds/{file}:\n{}",
                o.origin,
                kind_of(&o.value).1,
                errs.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("CRD schemas: {count} custom resource(s) valid");
}

/// Every object has a judge: a built-in kind (kubernetes-validate) or a CRD schema we hold.
#[test]
fn every_kind_has_a_judge() {
    let builtin_groups = [
        "v1",
        "apps/v1",
        "batch/v1",
        "networking.k8s.io/v1",
        "rbac.authorization.k8s.io/v1",
        "policy/v1",
        "autoscaling/v2",
        "coordination.k8s.io/v1",
        "discovery.k8s.io/v1",
        "scheduling.k8s.io/v1",
        "storage.k8s.io/v1",
    ];
    let mut unknown = BTreeSet::new();
    for o in objects_for_validation() {
        let (api, kind) = kind_of(&o.value);
        if crd_file(&o.value).is_none() && !builtin_groups.contains(&api) {
            unknown.insert(format!("{api} {kind} (e.g. {})", o.origin));
        }
    }
    assert!(
        unknown.is_empty(),
        "objects of kinds no judge knows; add their CRD schema to schema/crds/ and CRDS in tests/judges.rs:\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

// --- checkov ----------------------------------------------------------------------------------

/// One row of CHECKOV_SKIPS.md.
#[derive(Debug)]
struct Skip {
    id: String,
    title: String,
    /// `all` or `tailscale-image`.
    applies_to: String,
    reason: String,
}

fn checkov_skips() -> Vec<Skip> {
    let p = Path::new(ROOT).join("CHECKOV_SKIPS.md");
    let t = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut out = Vec::new();
    for line in t.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 4 || !cells[0].trim_matches('`').starts_with("CKV") {
            continue;
        }
        out.push(Skip {
            id: cells[0].trim_matches('`').to_string(),
            title: cells[1].to_string(),
            applies_to: cells[2].to_string(),
            reason: cells[3].to_string(),
        });
    }
    out
}

/// What no skip for the tsk8s-runtime target may concern (matched against checkov's own title).
const FORBIDDEN_TOPICS: &[&str] = &[
    "privilege",
    "capabilit",
    "root",
    "host",
    "seccomp",
    "secret",
    "service account token",
    "readonly",
    "read-only",
    "read only",
    "runasnonroot",
    "uid",
    "net_raw",
    "sys_admin",
    "apparmor",
    "selinux",
];

#[test]
fn checkov_skips_are_documented_and_allowed() {
    let skips = checkov_skips();
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &skips {
        if !seen.insert(s.id.clone()) {
            bad.push(format!("{}: listed twice", s.id));
        }
        if s.reason.len() < 20 {
            bad.push(format!("{}: the reason is too short to judge", s.id));
        }
        if !matches!(s.applies_to.as_str(), "all" | "tailscale-image") {
            bad.push(format!(
                "{}: applies to {:?}; expected `all` or `tailscale-image`",
                s.id, s.applies_to
            ));
        }
        if s.applies_to == "all" {
            let t = s.title.to_lowercase();
            if let Some(topic) = FORBIDDEN_TOPICS.iter().find(|w| t.contains(*w)) {
                bad.push(format!(
                    "{} ({}): concerns {topic:?}; no such skip may apply to the tsk8s-runtime target",
                    s.id, s.title
                ));
            }
        }
    }
    assert!(bad.is_empty(), "CHECKOV_SKIPS.md:\n{}", bad.join("\n"));
    // The titles must be checkov's own, so the topic check above cannot be dodged.
    let Some(checkov) = venv_bin("checkov") else {
        missing("checkov (in .venv)");
        return;
    };
    let o = run(Command::new(&checkov).args(["--list", "--framework", "kubernetes"]));
    let list = text(&o.stdout);
    for s in &skips {
        let row = list
            .lines()
            .find(|l| l.split('|').any(|c| c.trim() == s.id));
        match row {
            None => bad.push(format!("{}: not a checkov kubernetes check", s.id)),
            Some(r) if !r.contains(s.title.as_str()) => bad.push(format!(
                "{}: title {:?} is not checkov's ({})",
                s.id,
                s.title,
                r.trim()
            )),
            _ => {}
        }
    }
    assert!(bad.is_empty(), "CHECKOV_SKIPS.md:\n{}", bad.join("\n"));
}

fn checkov_run(checkov: &Path, dir: &Path, skips: &[String]) -> Result<usize, String> {
    let mut cmd = Command::new(checkov);
    cmd.arg("-d")
        .arg(dir)
        .args([
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .env("CHECKOV_RUN_SCA_PACKAGE_SCAN_V2", "false");
    if !skips.is_empty() {
        cmd.arg("--skip-check").arg(skips.join(","));
    }
    let o = run(&mut cmd);
    let stdout = text(&o.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
        format!(
            "checkov printed no JSON ({e}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            o.status.code(),
            text(&o.stderr)
        )
    })?;
    // One report, or a list of reports (one per framework).
    let reports: Vec<Value> = match v {
        Value::Array(a) => a,
        other => vec![other],
    };
    let mut failed = Vec::new();
    let mut passed = 0usize;
    for r in &reports {
        passed += r["summary"]["passed"].as_u64().unwrap_or(0) as usize;
        let parse_errors = r["summary"]["parsing_errors"].as_u64().unwrap_or(0);
        if parse_errors > 0 {
            failed.push(format!("  {parse_errors} file(s) checkov could not parse"));
        }
        for f in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            failed.push(format!(
                "  {} {} — {} in {}",
                f["check_id"].as_str().unwrap_or("?"),
                f["check_name"].as_str().unwrap_or("?"),
                f["resource"].as_str().unwrap_or("?"),
                f["file_path"].as_str().unwrap_or("?"),
            ));
        }
    }
    if !failed.is_empty() {
        failed.sort();
        failed.dedup();
        return Err(format!(
            "checkov found {} failed check(s):\n{}",
            failed.len(),
            failed.join("\n")
        ));
    }
    if passed == 0 {
        return Err("checkov checked nothing".into());
    }
    Ok(passed)
}

#[test]
fn checkov_passes() {
    let Some(checkov) = venv_bin("checkov") else {
        missing("checkov (in .venv)");
        return;
    };
    let skips = checkov_skips();
    let tmp = judges_tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut by_target: BTreeMap<Target, usize> = BTreeMap::new();
    let mut index = String::new();
    for o in objects_for_validation() {
        let n = by_target.entry(o.target).or_default();
        let dir = tmp.path().join(format!("{:?}", o.target));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let name = format!("{n:05}.json");
        fs::write(dir.join(&name), to_json(&o.value)).unwrap_or_else(|e| panic!("{e}"));
        index.push_str(&format!("{:?}/{name}: {}\n", o.target, o.origin));
        *n += 1;
    }
    let mut errors = Vec::new();
    for target in by_target.keys() {
        let ids: Vec<String> = skips
            .iter()
            .filter(|s| s.applies_to == "all" || *target == Target::TailscaleImage)
            .map(|s| s.id.clone())
            .collect();
        let dir = tmp.path().join(format!("{target:?}"));
        match checkov_run(&checkov, &dir, &ids) {
            Ok(passed) => eprintln!("checkov ({target:?}): {passed} check(s) passed"),
            Err(e) => errors.push(format!("{target:?}: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{}\nfiles:\n{index}",
        errors.join("\n\n")
    );
}

// --- Pod Security Standards -------------------------------------------------------------------

/// The pod template of a workload (or the pod itself).
fn pod_spec(v: &Value) -> Option<&Value> {
    let (_, kind) = kind_of(v);
    match kind {
        "Pod" => v.get("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            v.get("spec")?.get("template")?.get("spec")
        }
        "CronJob" => v
            .get("spec")?
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("spec"),
        "ReplicationController" => v.get("spec")?.get("template")?.get("spec"),
        _ => None,
    }
}

const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Violations of Pod Security `restricted` (v1.33) plus tsk8s's own rules (numeric UID,
/// read-only root filesystem) in one pod spec.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let t = |x: &Value| x.as_bool() == Some(true);
    for f in ["hostNetwork", "hostPID", "hostIPC", "hostUsers"] {
        let bad = if f == "hostUsers" { false } else { t(&pod[f]) };
        if bad {
            v.push(format!("{f}: true"));
        }
    }
    for vol in pod["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().unwrap_or("?");
        let kinds: Vec<&String> = vol
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").collect())
            .unwrap_or_default();
        for k in kinds {
            if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                v.push(format!("volume {name}: type {k} is not allowed"));
            }
        }
    }
    let psc = &pod["securityContext"];
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&n) {
            v.push(format!("sysctl {n} is not in the safe set"));
        }
    }
    let pod_seccomp = psc["seccompProfile"]["type"].as_str();
    if matches!(pod_seccomp, Some(s) if s != "RuntimeDefault" && s != "Localhost") {
        v.push(format!("pod seccompProfile {pod_seccomp:?}"));
    }
    if psc["runAsNonRoot"].as_bool() == Some(false) {
        v.push("pod runAsNonRoot: false".into());
    }
    if psc["runAsUser"].as_i64() == Some(0) {
        v.push("pod runAsUser: 0".into());
    }
    check_selinux(&psc["seLinuxOptions"], "pod", &mut v);
    if psc["appArmorProfile"]["type"].as_str() == Some("Unconfined") {
        v.push("pod appArmorProfile Unconfined".into());
    }
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        let mut cv = |m: String| v.push(format!("container {name}: {m}"));
        if t(&sc["privileged"]) {
            cv("privileged: true".into());
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            cv("allowPrivilegeEscalation must be false".into());
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !drops.contains(&"ALL") {
            cv("capabilities must drop ALL".into());
        }
        for a in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            if a.as_str() != Some("NET_BIND_SERVICE") {
                cv(format!("adds capability {a}"));
            }
        }
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(psc["runAsNonRoot"].as_bool());
        if non_root != Some(true) {
            cv("runAsNonRoot must be true (pod or container)".into());
        }
        match sc["runAsUser"].as_i64().or(psc["runAsUser"].as_i64()) {
            None => cv("no numeric runAsUser (pod or container)".into()),
            Some(0) => cv("runAsUser: 0".into()),
            Some(_) => {}
        }
        let seccomp = sc["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault") | Some("Localhost")) {
            cv(format!(
                "seccompProfile must be RuntimeDefault (got {seccomp:?})"
            ));
        }
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            cv("readOnlyRootFilesystem must be true".into());
        }
        if let Some(pm) = sc["procMount"].as_str()
            && pm != "Default"
        {
            cv(format!("procMount {pm}"));
        }
        if sc["appArmorProfile"]["type"].as_str() == Some("Unconfined") {
            cv("appArmorProfile Unconfined".into());
        }
        let mut sel = Vec::new();
        check_selinux(&sc["seLinuxOptions"], "container", &mut sel);
        for s in sel {
            cv(s);
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_i64().is_some_and(|h| h != 0) {
                cv(format!("hostPort {}", p["hostPort"]));
            }
        }
    }
    v
}

fn check_selinux(o: &Value, at: &str, v: &mut Vec<String>) {
    if !o.is_object() {
        return;
    }
    if let Some(t) = o["type"].as_str()
        && ![
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
        .contains(&t)
    {
        v.push(format!("{at} seLinuxOptions.type {t}"));
    }
    for f in ["user", "role"] {
        if o[f].as_str().is_some_and(|s| !s.is_empty()) {
            v.push(format!("{at} seLinuxOptions.{f} set"));
        }
    }
}

#[test]
fn pod_security_restricted() {
    let mut failures = Vec::new();
    let mut pods = 0;
    let mut namespaces = 0;
    for b in &judged().built {
        for o in b.objects.iter().filter(|o| o.target == Target::Runtime) {
            let (_, kind) = kind_of(&o.value);
            if kind == "Namespace" {
                namespaces += 1;
                let l = &o.value["metadata"]["labels"];
                if l["pod-security.kubernetes.io/enforce"].as_str() != Some("restricted") {
                    failures.push(format!(
                        "{}: Namespace without pod-security.kubernetes.io/enforce: restricted",
                        o.origin
                    ));
                }
            }
            if let Some(pod) = pod_spec(&o.value) {
                pods += 1;
                for m in restricted_violations(pod) {
                    failures.push(format!("{} ({kind}): {m}", o.origin));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(pods > 0, "no Pod template was checked");
    eprintln!("Pod Security restricted: {pods} pod template(s), {namespaces} namespace(s) ok");
}

/// The PSS checker itself must catch what it claims to.
#[test]
fn restricted_checker_catches_violations() {
    let good = json!({
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "k", "secret": {"secretName": "s"}}],
    });
    assert_eq!(restricted_violations(&good), Vec::<String>::new());
    let cases: &[(&str, Value)] = &[
        ("hostNetwork", json!({"hostNetwork": true})),
        (
            "hostPath",
            json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
        ),
        (
            "root",
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}}),
        ),
        (
            "seccomp",
            json!({"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "Unconfined"}}}),
        ),
    ];
    for (what, patch) in cases {
        let mut p = good.clone();
        if let (Some(o), Some(add)) = (p.as_object_mut(), patch.as_object()) {
            for (k, x) in add {
                o.insert(k.clone(), x.clone());
            }
        }
        assert!(!restricted_violations(&p).is_empty(), "{what} not caught");
    }
    for (field, val) in [
        ("allowPrivilegeEscalation", json!(true)),
        ("readOnlyRootFilesystem", json!(false)),
        ("privileged", json!(true)),
        ("capabilities", json!({"drop": ["NET_RAW"]})),
    ] {
        let mut p = good.clone();
        p["containers"][0]["securityContext"][field] = val;
        assert!(!restricted_violations(&p).is_empty(), "{field} not caught");
    }
}
