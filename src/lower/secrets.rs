//! Secret backends: the objects that put a node's private key (or a Tailscale credential) into
//! the Secret its pod mounts, without anything secret in the build output.
//!
//! | backend | what `build` writes | where the secret comes from |
//! | --- | --- | --- |
//! | `existing` | nothing (the workload only references the Secret) | `kubectl create secret` by hand |
//! | `external-secrets` | an `ExternalSecret` (`external-secrets.io/v1`) | the store, at `<key-prefix><cluster>/<remote>`, one property per Secret key |
//! | `sops` | the committed SOPS file, copied byte for byte | `tsk8s lock` (node keys) or `sops --encrypt` (other credentials), under `<dir>/<remote>.sops.yaml` |
//! | `sealed-secrets` | the committed `SealedSecret`, copied byte for byte | `kubeseal --scope strict`, under `<dir>/<remote>.yaml` |
//!
//! `build` stays pure: it reads committed sources ([`crate::build::Input::sources`]) and checks
//! them (encrypted, for the right Secret name and namespace, for the spec's recipients), but
//! never encrypts, so ciphertext changes only when `tsk8s lock` re-encrypts (a new or rotated
//! key, or changed recipients).
//!
//! With Argo CD, SOPS files are not listed as resources: a KSOPS generator (`viaduct.ai/v1`
//! `ksops`, run by kustomize as an exec KRM function) decrypts them in the repo server. With
//! Flux (or no GitOps node) they are plain resources that kustomize-controller decrypts
//! (`spec.decryption`, written by [`super::gitops`]). See docs/secrets.md.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use serde_yaml_ng::Value as Yaml;

use super::k8s;
use crate::emit;
use crate::model::{Cluster, Exposure, ExposureKind, GitopsFlavour, SecretBackend, Tailnet};

/// The key a node's private key has in its Secret, and the property it has in an external store.
pub const PRIVATE_KEY: &str = tsk8s_policy::runtime_config::PRIVATE_KEY_FILE;
/// The generator file (kustomize `generators:`) that runs KSOPS, with Argo CD and SOPS.
pub const KSOPS_GENERATOR: &str = "ksops.yaml";
pub const SEALED_API_VERSION: &str = "bitnami.com/v1alpha1";
pub const EXTERNAL_SECRETS_API_VERSION: &str = "external-secrets.io/v1";
/// Annotations that widen a SealedSecret's scope beyond one name in one namespace.
pub const SEALED_SCOPE_ANNOTATIONS: [&str; 2] = [
    "sealedsecrets.bitnami.com/cluster-wide",
    "sealedsecrets.bitnami.com/namespace-wide",
];

/// One Secret a workload mounts or reads, delivered by the cluster's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// The Kubernetes Secret's name.
    pub name: String,
    pub namespace: String,
    /// Names the secret in the backend: the external store's key `<key-prefix><cluster>/<remote>`
    /// and the source file `<dir>/<remote>.sops.yaml` / `<dir>/<remote>.yaml`. A node's id for
    /// node keys.
    pub remote: String,
    /// The Secret's keys; in an external store, the properties of the same names.
    pub keys: Vec<String>,
    /// The node whose WireGuard key this is (`None` for other credentials): `tsk8s lock` makes
    /// its sources, and the objects carry the node's labels.
    pub node: Option<String>,
}

impl SecretRef {
    /// The Secret holding a tsk8s-runtime node's private key: `tsk8s-<id>-key` with key
    /// `private-key`, in the cluster's namespace, or the workload's for a sidecar.
    pub fn node_key(c: &Cluster, e: &Exposure) -> SecretRef {
        SecretRef {
            name: k8s::key_secret_name(&e.id),
            namespace: key_namespace(c, e).to_string(),
            remote: e.id.clone(),
            keys: vec![PRIVATE_KEY.to_string()],
            node: Some(e.id.clone()),
        }
    }

    /// A credential that is not a node key (e.g. a Tailscale auth key: `keys = ["TS_AUTHKEY"]`,
    /// or an OAuth client: `["client_id", "client_secret"]`), named `remote` in the backend.
    pub fn credential(name: &str, namespace: &str, remote: &str, keys: &[&str]) -> SecretRef {
        SecretRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
            remote: remote.to_string(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            node: None,
        }
    }
}

/// The namespace a node's key Secret lives in: the workload's for sidecars.
pub fn key_namespace<'a>(c: &'a Cluster, e: &'a Exposure) -> &'a str {
    match &e.kind {
        ExposureKind::Sidecar { namespace, .. } => namespace,
        _ => &c.namespace,
    }
}

/// Files for one kustomization dir (a cluster dir or a sidecar's Component dir).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretFiles {
    /// (path relative to the dir, text): write each.
    pub files: Vec<(String, String)>,
    /// Of those, what the dir's kustomization lists under `resources:`.
    pub resources: Vec<String>,
    /// … and under `generators:` (the KSOPS generator, with Argo CD and SOPS).
    pub generators: Vec<String>,
}

/// Why a secret's objects could not be made: `subject` is the node id (or the Secret name for
/// other credentials), so the caller can point at the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    pub subject: String,
    pub message: String,
    /// The command or step that fixes it.
    pub help: String,
}

/// (what is wrong, how to fix it)
type Bad = (String, String);

/// Normalised path of a source file beside the spec: `<dir>/<file>` without `.` segments. The
/// CLI keys [`crate::build::Input::sources`] the same way.
pub fn source_path(dir: &str, file: &str) -> String {
    let mut parts: Vec<&str> = dir
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    parts.push(file);
    parts.join("/")
}

/// Source dir of a backend that reads committed files (SOPS, SealedSecrets).
pub fn source_dir(b: &SecretBackend) -> Option<&str> {
    match b {
        SecretBackend::Sops { source_dir, .. } | SecretBackend::SealedSecrets { source_dir } => {
            Some(source_dir)
        }
        _ => None,
    }
}

/// Where a secret's committed source lives (relative to the spec's dir), for SOPS and
/// SealedSecrets.
pub fn source_file(c: &Cluster, remote: &str) -> Option<String> {
    match &c.secrets {
        SecretBackend::Sops { source_dir, .. } => {
            Some(source_path(source_dir, &format!("{remote}.sops.yaml")))
        }
        SecretBackend::SealedSecrets { source_dir } => {
            Some(source_path(source_dir, &format!("{remote}.yaml")))
        }
        _ => None,
    }
}

/// True when SOPS files go through a KSOPS generator rather than `resources:` (Argo CD).
pub fn uses_ksops(t: &Tailnet, c: &Cluster) -> bool {
    matches!(c.secrets, SecretBackend::Sops { .. })
        && matches!(
            t.gitops.as_ref().map(|g| &g.flavour),
            Some(GitopsFlavour::ArgoCd { .. })
        )
}

/// The backend objects for `secrets`, all in one kustomization dir; their files go under
/// `subdir` (e.g. `"secrets/"`, or `""`). Every problem is reported, not just the first.
///
/// - `existing`: nothing.
/// - `external-secrets`: `<subdir><remote>.externalsecret.yaml`, one `ExternalSecret`.
/// - `sops`: `<subdir><remote>.sops.yaml`, the committed file verbatim; with Argo CD also
///   `ksops.yaml` (at the dir's root) listing them, as a generator instead of resources.
/// - `sealed-secrets`: `<subdir><remote>.sealedsecret.yaml`, the committed file verbatim.
pub fn secret_objects(
    t: &Tailnet,
    c: &Cluster,
    secrets: &[SecretRef],
    subdir: &str,
    sources: &BTreeMap<String, Vec<u8>>,
) -> Result<SecretFiles, Vec<SecretProblem>> {
    let mut out = SecretFiles::default();
    let mut problems = Vec::new();
    let mut ksops_files = Vec::new();
    for s in secrets {
        let problem = |(message, help): Bad| SecretProblem {
            subject: s.node.clone().unwrap_or_else(|| s.name.clone()),
            message,
            help,
        };
        match &c.secrets {
            SecretBackend::Existing => {}
            SecretBackend::ExternalSecrets {
                store,
                store_kind,
                key_prefix,
                refresh_interval,
            } => {
                let name = format!("{subdir}{}.externalsecret.yaml", s.remote);
                let es = external_secret(
                    s,
                    store,
                    store_kind,
                    &remote_key(key_prefix, &c.name, &s.remote),
                    refresh_interval,
                );
                out.files.push((name.clone(), emit::yaml(&es)));
                out.resources.push(name);
            }
            SecretBackend::Sops { recipients, .. } => {
                let path = source_file(c, &s.remote).unwrap_or_default();
                match check_sops(s, &path, sources.get(&path), recipients) {
                    Ok(text) => {
                        let name = format!("{subdir}{}.sops.yaml", s.remote);
                        out.files.push((name.clone(), text));
                        if uses_ksops(t, c) {
                            ksops_files.push(format!("./{name}"));
                        } else {
                            out.resources.push(name);
                        }
                    }
                    Err(m) => problems.push(problem(m)),
                }
            }
            SecretBackend::SealedSecrets { .. } => {
                let path = source_file(c, &s.remote).unwrap_or_default();
                match check_sealed(c, s, &path, sources.get(&path)) {
                    Ok(text) => {
                        let name = format!("{subdir}{}.sealedsecret.yaml", s.remote);
                        out.files.push((name.clone(), text));
                        out.resources.push(name);
                    }
                    Err(m) => problems.push(problem(m)),
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if !ksops_files.is_empty() {
        ksops_files.sort();
        out.files.push((
            KSOPS_GENERATOR.to_string(),
            emit::yaml(&ksops_generator(&c.name, &ksops_files)),
        ));
        out.generators.push(KSOPS_GENERATOR.to_string());
    }
    Ok(out)
}

/// The node key Secrets of `nodes` (one dir's worth): [`secret_objects`] over
/// [`SecretRef::node_key`].
pub fn node_key_objects(
    t: &Tailnet,
    c: &Cluster,
    nodes: &[&Exposure],
    subdir: &str,
    sources: &BTreeMap<String, Vec<u8>>,
) -> Result<SecretFiles, Vec<SecretProblem>> {
    let refs: Vec<SecretRef> = nodes.iter().map(|e| SecretRef::node_key(c, e)).collect();
    secret_objects(t, c, &refs, subdir, sources)
}

/// Add `generators:` to a kustomization (or Component) built by [`emit::kustomization`].
pub fn add_generators(kustomization: &mut Value, generators: &[String]) {
    if generators.is_empty() {
        return;
    }
    if let Some(obj) = kustomization.as_object_mut() {
        let mut g: Vec<&String> = generators.iter().collect();
        g.sort();
        obj.insert("generators".into(), json!(g));
    }
}

/// The remote key an ExternalSecret reads: `<key-prefix><cluster>/<remote>`.
pub fn remote_key(key_prefix: &str, cluster: &str, remote: &str) -> String {
    format!("{key_prefix}{cluster}/{remote}")
}

fn external_secret(
    s: &SecretRef,
    store: &str,
    store_kind: &str,
    key: &str,
    refresh_interval: &str,
) -> Value {
    let meta = k8s::json_value(&k8s::meta(&s.name, Some(&s.namespace), s.node.as_deref()));
    let data: Vec<Value> = s
        .keys
        .iter()
        .map(|k| json!({ "secretKey": k, "remoteRef": { "key": key, "property": k } }))
        .collect();
    json!({
        "apiVersion": EXTERNAL_SECRETS_API_VERSION,
        "kind": "ExternalSecret",
        "metadata": meta,
        "spec": {
            "refreshInterval": refresh_interval,
            "secretStoreRef": { "name": store, "kind": store_kind },
            "target": { "name": s.name, "creationPolicy": "Owner" },
            "data": data,
        },
    })
}

fn ksops_generator(cluster: &str, files: &[String]) -> Value {
    json!({
        "apiVersion": "viaduct.ai/v1",
        "kind": "ksops",
        "metadata": {
            "name": format!("tsk8s-{cluster}-secrets"),
            "annotations": {
                "config.kubernetes.io/function": "exec:\n  path: ksops\n",
            },
        },
        "files": files,
    })
}

/// How to (re)make a missing or wrong source.
fn sops_fix(s: &SecretRef, path: &str) -> String {
    match &s.node {
        Some(node) => format!(
            "run `tsk8s lock` (it writes {path} for a new node; for a node already in tailnet.lock, `tsk8s lock --rotate {node}`)"
        ),
        None => format!(
            "write it with `kubectl -n {} create secret generic {} {} --dry-run=client -o yaml > {path}` then `sops --encrypt --in-place {path}` (the .sops.yaml that `tsk8s lock` writes in that dir has the recipients)",
            s.namespace,
            s.name,
            from_files(s)
        ),
    }
}

fn sealed_fix(s: &SecretRef, path: &str) -> String {
    let files = match &s.node {
        Some(_) => format!("--from-file={PRIVATE_KEY}=<KEYS_DIR>/<cluster>/<node>.key"),
        None => from_files(s),
    };
    let mut m = format!(
        "seal it: `kubectl -n {} create secret generic {} {files} --dry-run=client -o yaml | kubeseal --scope strict -o yaml > {path}`",
        s.namespace, s.name
    );
    if let Some(node) = &s.node {
        m.push_str(&format!(
            " (`tsk8s lock --keys-dir KEYS_DIR` writes the key and prints this command for a new node; `--rotate {node}` for a node already in tailnet.lock)"
        ));
    }
    m
}

fn from_files(s: &SecretRef) -> String {
    s.keys
        .iter()
        .map(|k| format!("--from-file={k}=./{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn str_at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

fn text_of<'a>(
    path: &str,
    bytes: Option<&'a Vec<u8>>,
    fix: &dyn Fn() -> String,
) -> Result<&'a str, Bad> {
    let bytes = bytes.ok_or_else(|| (format!("{path} is missing"), fix()))?;
    std::str::from_utf8(bytes).map_err(|_| (format!("{path} is not UTF-8 text"), fix()))
}

fn parse_one(path: &str, text: &str, fix: &dyn Fn() -> String) -> Result<Yaml, Bad> {
    let v: Yaml = serde_yaml_ng::from_str(text).map_err(|e| {
        // serde_yaml_ng's messages quote no values, only positions and expectations.
        (format!("{path} is not one YAML document ({e})"), fix())
    })?;
    if !v.is_mapping() {
        return Err((format!("{path} is not a YAML mapping"), fix()));
    }
    Ok(v)
}

fn check_identity(
    path: &str,
    v: &Yaml,
    what: (&str, &str),
    s: &SecretRef,
    fix: &dyn Fn() -> String,
) -> Result<(), Bad> {
    let (api, kind) = (
        str_at(v, &["apiVersion"]).unwrap_or(""),
        str_at(v, &["kind"]).unwrap_or(""),
    );
    if (api, kind) != what {
        return Err((
            format!(
                "{path} is a {kind:?} of {api:?}, not a {} {}",
                what.0, what.1
            ),
            fix(),
        ));
    }
    let name = str_at(v, &["metadata", "name"]).unwrap_or("");
    let ns = str_at(v, &["metadata", "namespace"]).unwrap_or("");
    if name != s.name || ns != s.namespace {
        return Err((
            format!(
                "{path} is for Secret {name:?} in namespace {ns:?}, but the workload mounts {:?} in namespace {:?}",
                s.name, s.namespace
            ),
            fix(),
        ));
    }
    Ok(())
}

/// The project's no-plaintext rule for a committed SOPS Secret, whatever the file's own
/// `sops` settings select for encryption: every value under `data` and `stringData` is an
/// `ENC[…]` value (or empty / null). The first offending value is named (its key, never its
/// value).
fn check_sops_plaintext(
    s: &SecretRef,
    path: &str,
    text: &str,
    fix: &dyn Fn() -> String,
) -> Result<(), Bad> {
    let leaked = tsk8s_sops::plaintext_secret_values(text).map_err(|e| {
        (
            format!("{path} is not a SOPS-encrypted Secret ({e})"),
            fix(),
        )
    })?;
    let Some(first) = leaked.first() else {
        return Ok(());
    };
    let at = match first.path.as_slice() {
        [field] => format!("{field:?}"),
        [field, keys @ ..] => format!("{field} key {:?}", keys.join(".")),
        [] => String::new(),
    };
    let more = match leaked.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let help = match &s.node {
        Some(node) => format!(
            "if the file was ever committed or shared, the key has leaked: give the node a new one with `tsk8s lock --rotate {node}` (it writes {path} with `encrypted_regex: ^(data|stringData)$`)"
        ),
        None => format!(
            "if the file was ever committed or shared, the value has leaked: revoke it and make a new one; {}",
            fix()
        ),
    };
    Err((
        format!(
            "{path} is not SOPS-encrypted: {at} is {}{more}; every value under data and stringData must be an ENC[…] value, whatever the file's own sops settings (encrypted_regex, unencrypted_suffix, …) select",
            first.found
        ),
        help,
    ))
}

/// Check a committed SOPS file and return it verbatim.
fn check_sops(
    s: &SecretRef,
    path: &str,
    bytes: Option<&Vec<u8>>,
    recipients: &[String],
) -> Result<String, Bad> {
    let fix = || sops_fix(s, path);
    let text = text_of(path, bytes, &fix)?;
    let v = parse_one(path, text, &fix)?;
    check_sops_plaintext(s, path, text, &fix)?;
    check_identity(path, &v, ("v1", "Secret"), s, &fix)?;
    if !tsk8s_sops::is_sops_encrypted(text) {
        return Err((
            format!(
                "{path} is not SOPS-encrypted (no valid `sops` metadata, or a `data`/`stringData` value in plaintext)"
            ),
            fix(),
        ));
    }
    // Keys with a value (`sops` leaves an empty string as it is: no key in it).
    let mut have = BTreeSet::new();
    for field in ["data", "stringData"] {
        if let Some(Yaml::Mapping(m)) = v.get(field) {
            have.extend(
                m.iter()
                    .filter(|(_, v)| v.as_str().is_some_and(|v| !v.is_empty()))
                    .filter_map(|(k, _)| k.as_str()),
            );
        }
    }
    let missing: Vec<&str> = s
        .keys
        .iter()
        .map(String::as_str)
        .filter(|k| !have.contains(k))
        .collect();
    if !missing.is_empty() {
        return Err((
            format!("{path} has no value for key {} in data", missing.join(", ")),
            fix(),
        ));
    }
    let got: BTreeSet<String> = tsk8s_sops::recipients_of(text)
        .map_err(|e| (format!("{path}: {e}"), fix()))?
        .into_iter()
        .map(|r| r.trim().to_string())
        .collect();
    let want: BTreeSet<String> = recipients.iter().map(|r| r.trim().to_string()).collect();
    if got != want {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        let how = match &s.node {
            Some(node) => format!(
                "run `tsk8s lock` to re-encrypt it (it needs an age identity of a current recipient in SOPS_AGE_KEY_FILE), or `tsk8s lock --rotate {node}`"
            ),
            None => format!("run `sops updatekeys {path}` from {path}'s directory"),
        };
        return Err((
            format!(
                "{path} is encrypted for age recipients [{}], but the spec names [{}]",
                list(&got),
                list(&want)
            ),
            how,
        ));
    }
    Ok(text.to_string())
}

/// The first value a SealedSecret carries outside `spec.encryptedData`: a key (or a non-empty
/// scalar) under `data` or `stringData` (any letter case) at the top level, in `spec` or in
/// `spec.template`, named by its place. `spec.data` (the legacy whole-Secret ciphertext) is
/// ciphertext, not checked.
fn sealed_plaintext(v: &Yaml) -> Option<String> {
    let spec = v.get("spec");
    let template = spec.and_then(|s| s.get("template"));
    let places: [(&str, Option<&Yaml>, &[&str]); 3] = [
        ("", Some(v), &["data", "stringData"]),
        ("spec.", spec, &["stringData"]),
        ("spec.template.", template, &["data", "stringData"]),
    ];
    for (prefix, at, fields) in places {
        let Some(Yaml::Mapping(m)) = at else {
            continue;
        };
        for (k, val) in m {
            let Some(field) = k
                .as_str()
                .filter(|k| fields.iter().any(|f| k.eq_ignore_ascii_case(f)))
            else {
                continue;
            };
            match val {
                Yaml::Null => {}
                Yaml::Mapping(entries) => {
                    if let Some((key, _)) = entries.iter().next() {
                        // A key that is no string is named by its YAML; one that does not
                        // even serialize is said to be so rather than named "".
                        let key = match key.as_str() {
                            Some(k) => k.to_string(),
                            None => match serde_yaml_ng::to_string(key) {
                                Ok(k) => k,
                                Err(_) => {
                                    return Some(format!(
                                        "{prefix}{field} (a key that is not a string)"
                                    ));
                                }
                            },
                        };
                        return Some(format!("{prefix}{field} key {:?}", key.trim_end()));
                    }
                }
                Yaml::String(t) if t.is_empty() => {}
                _ => return Some(format!("{prefix}{field}")),
            }
        }
    }
    None
}

/// Check a committed SealedSecret (strict scope, right name and namespace) and return it
/// verbatim.
fn check_sealed(
    _c: &Cluster,
    s: &SecretRef,
    path: &str,
    bytes: Option<&Vec<u8>>,
) -> Result<String, Bad> {
    let fix = || sealed_fix(s, path);
    let text = text_of(path, bytes, &fix)?;
    let v = parse_one(path, text, &fix)?;
    check_identity(path, &v, (SEALED_API_VERSION, "SealedSecret"), s, &fix)?;
    let scoped = |meta: Option<&Yaml>| -> Option<&'static str> {
        let ann = meta?.get("annotations")?;
        SEALED_SCOPE_ANNOTATIONS.into_iter().find(|a| {
            ann.get(*a)
                .is_some_and(|v| v.as_str() == Some("true") || v.as_bool() == Some(true))
        })
    };
    let template_meta = v
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"));
    if let Some(a) = scoped(v.get("metadata")).or_else(|| scoped(template_meta)) {
        return Err((
            format!(
                "{path} is sealed with {a}: \"true\", so it could be unsealed under another name or namespace"
            ),
            format!("reseal it with strict scope: {}", fix()),
        ));
    }
    if let Some(tm) = template_meta.filter(|m| !m.is_null()) {
        for (field, want) in [("name", &s.name), ("namespace", &s.namespace)] {
            if let Some(got) = tm.get(field).and_then(|x| x.as_str())
                && got != want
            {
                return Err((
                    format!(
                        "{path}: spec.template.metadata.{field} is {got:?}, but the workload mounts {want:?}"
                    ),
                    fix(),
                ));
            }
        }
    }
    if let Some(at) = sealed_plaintext(&v) {
        let leaked = match &s.node {
            Some(node) => format!("give the node a new key with `tsk8s lock --rotate {node}`"),
            None => "revoke it and make a new one".to_string(),
        };
        return Err((
            format!(
                "{path}: {at} is plaintext in git; a SealedSecret may carry its values only in spec.encryptedData"
            ),
            format!(
                "if the file was ever committed or shared, the value has leaked: {leaked}; put every value in spec.encryptedData: {}",
                fix()
            ),
        ));
    }
    let enc = v
        .get("spec")
        .and_then(|s| s.get("encryptedData"))
        .and_then(|d| d.as_mapping());
    let missing: Vec<&str> = s
        .keys
        .iter()
        .map(String::as_str)
        .filter(|k| {
            enc.and_then(|m| m.get(*k))
                .and_then(|x| x.as_str())
                .is_none_or(|x| x.trim().is_empty())
        })
        .collect();
    if !missing.is_empty() {
        return Err((
            format!(
                "{path} has no spec.encryptedData value for {}",
                missing.join(", ")
            ),
            fix(),
        ));
    }
    Ok(text.to_string())
}

/// `.sops.yaml` creation rules for a cluster's SOPS source dir (written there by `tsk8s lock`):
/// every `*.sops.yaml` file in that dir is encrypted for the cluster's recipients, `data` and
/// `stringData` only. `sops` looks for `.sops.yaml` from the working directory upwards, so run
/// `sops` from that dir (or pass `--config <dir>/.sops.yaml`).
pub fn sops_creation_rules(recipients: &[String]) -> String {
    let mut s = String::from(
        "# Written by `tsk8s lock` from the spec's age recipients; edit the spec, not this file.\n",
    );
    s.push_str(&tsk8s_sops::creation_rules_yaml(&[(
        r"(^|/)[^./][^/]*\.sops\.yaml$".to_string(),
        recipients.to_vec(),
    )]));
    s
}

/// Report secret problems against the spec: at the node's exposure when there is one, else at
/// the cluster.
pub fn push_problems(
    d: &mut crate::diag::Diagnostics,
    spans: &crate::resolve::Spans,
    cluster: &str,
    problems: Vec<SecretProblem>,
) {
    for p in problems {
        let span = spans
            .exposures
            .get(&p.subject)
            .or_else(|| spans.clusters.get(cluster))
            .copied()
            .unwrap_or_else(|| (0..0).into());
        d.push(
            crate::diag::Diagnostic::new(span, p.message)
                .label("its key Secret")
                .help(p.help),
        );
    }
}

/// Build hook, per tsk8s-runtime cluster: write the key Secrets' backend objects of its
/// non-sidecar nodes under `<dir>/secrets/`, add them to `resources`, and return the
/// kustomization's generators (KSOPS). Problems go to `diags`.
#[allow(clippy::too_many_arguments)]
pub fn write_cluster_keys(
    tree: &mut emit::Tree,
    dir: &str,
    t: &Tailnet,
    c: &Cluster,
    resources: &mut Vec<String>,
    sources: &BTreeMap<String, Vec<u8>>,
    diags: &mut crate::diag::Diagnostics,
    spans: &crate::resolve::Spans,
) -> Vec<String> {
    let nodes: Vec<&Exposure> = c
        .exposures
        .iter()
        .filter(|e| !matches!(e.kind, ExposureKind::Sidecar { .. }))
        .collect();
    match node_key_objects(t, c, &nodes, "secrets/", sources) {
        Ok(f) => {
            for (name, text) in f.files {
                emit::put(tree, format!("{dir}/{name}"), text);
            }
            resources.extend(f.resources);
            f.generators
        }
        Err(p) => {
            push_problems(diags, spans, &c.name, p);
            Vec::new()
        }
    }
}

/// Build hook, per sidecar: write its key Secret's backend objects into its Component dir
/// `cdir` and list them in the Component's `kustomization` (resources, or generators).
#[allow(clippy::too_many_arguments)]
pub fn write_component_key(
    tree: &mut emit::Tree,
    cdir: &str,
    t: &Tailnet,
    c: &Cluster,
    e: &Exposure,
    kustomization: &mut Value,
    sources: &BTreeMap<String, Vec<u8>>,
    diags: &mut crate::diag::Diagnostics,
    spans: &crate::resolve::Spans,
) {
    match node_key_objects(t, c, &[e], "", sources) {
        Ok(f) => {
            for (name, text) in f.files {
                emit::put(tree, format!("{cdir}/{name}"), text);
            }
            if let Some(Value::Array(r)) = kustomization.get_mut("resources") {
                r.extend(f.resources.into_iter().map(Value::String));
            }
            add_generators(kustomization, &f.generators);
        }
        Err(p) => push_problems(diags, spans, &c.name, p),
    }
}
