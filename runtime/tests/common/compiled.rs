//! The real path from spec to packets: run `tsk8s lock` + `tsk8s build` on a testdata spec, read
//! the emitted manifests and device configs, and lay the ConfigMap/Secret data out as the kubelet
//! mounts it (`..data` symlink to a timestamped dir, one symlink per key).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// The spec fixture directory (`testdata/runtime/e2e`).
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/runtime/e2e")
}

/// The workspace root (where `cargo build --bin tsk8s` runs).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Newest modification time of any file under `dir` (recursively).
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if let Ok(m) = md.modified() {
                newest = Some(newest.map_or(m, |n: std::time::SystemTime| n.max(m)));
            }
        }
    }
    newest
}

/// The `tsk8s` compiler binary.
///
/// `TSK8S_BIN` wins. Otherwise the binary next to this test's `deps/` dir (built by
/// `cargo test --workspace`, as CI runs it, because the `tsk8s` package's own tests need it), if
/// it is newer than the compiler's sources; else `cargo build -p tsk8s --bin tsk8s` in the same
/// profile and target dir, and the path cargo reports.
pub fn tsk8s_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let p = find_tsk8s_bin();
        eprintln!("using the compiler at {}", p.display());
        p
    })
    .clone()
}

fn find_tsk8s_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TSK8S_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/e2e-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let candidate = profile_dir.join("tsk8s");
    let root = workspace_root();
    let sources = [
        root.join("src"),
        root.join("crates/policy/src"),
        root.join("Cargo.lock"),
    ];
    let newest_src = sources
        .iter()
        .filter_map(|p| {
            if p.is_dir() {
                newest_mtime(p)
            } else {
                fs::metadata(p).and_then(|m| m.modified()).ok()
            }
        })
        .max();
    if let (Ok(bin_time), Some(src_time)) = (
        fs::metadata(&candidate).and_then(|m| m.modified()),
        newest_src,
    ) && bin_time >= src_time
    {
        return candidate;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let target_dir = profile_dir.parent().expect("target dir");
    eprintln!(
        "building tsk8s ({} is missing or older than its sources)",
        candidate.display()
    );
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "tsk8s",
            "--bin",
            "tsk8s",
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics"])
        .output()
        .expect("run cargo build --bin tsk8s");
    assert!(
        out.status.success(),
        "cargo build --bin tsk8s failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "tsk8s"
            && let Some(exe) = v["executable"].as_str()
        {
            return PathBuf::from(exe);
        }
    }
    panic!("cargo build did not report the tsk8s executable");
}

fn run_tsk8s(args: &[&str], paths: &[&Path], env: &[(String, String)]) -> String {
    let bin = tsk8s_bin();
    let out = Command::new(&bin)
        .args(args)
        .args(paths)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run tsk8s");
    assert!(
        out.status.success(),
        "{} {args:?} {paths:?} failed ({}):\n{}{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A spec copied into a work dir, locked and built with the real compiler.
pub struct Compiled {
    pub spec: PathBuf,
    pub out: PathBuf,
    pub keys: PathBuf,
    /// Environment of every `tsk8s` run (e.g. `TSK8S_MESH_SHARD_BYTES`).
    pub env: Vec<(String, String)>,
}

impl Compiled {
    /// Copy the fixture spec into `work`, run `tsk8s lock --keys-dir` and `tsk8s build`.
    pub fn new(work: &Path) -> Compiled {
        Compiled::new_with_env(work, &[])
    }

    /// [`Compiled::new`] with `tsk8s` run under `env`.
    pub fn new_with_env(work: &Path, env: &[(&str, &str)]) -> Compiled {
        let dir = work.join("spec");
        fs::create_dir_all(&dir).expect("mkdir spec");
        let spec = dir.join("tailnet.kdl");
        fs::copy(fixture_dir().join("tailnet.kdl"), &spec).expect("copy spec");
        let c = Compiled {
            spec,
            out: work.join("out"),
            keys: work.join("keys"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        run_tsk8s(&["lock", "--keys-dir"], &[&c.keys, &c.spec], &c.env);
        c.build();
        c
    }

    /// `tsk8s build SPEC -o OUT`.
    pub fn build(&self) {
        run_tsk8s(&["build", "-o"], &[&self.out, &self.spec], &self.env);
    }

    /// Edit the spec text, then lock (no-op unless nodes changed) and build again.
    pub fn edit(&self, f: impl FnOnce(String) -> String) {
        let text = fs::read_to_string(&self.spec).expect("read spec");
        let new = f(text.clone());
        assert_ne!(text, new, "the edit changed the spec");
        fs::write(&self.spec, new).expect("write spec");
        run_tsk8s(
            &["lock", "--keys-dir"],
            &[&self.keys, &self.spec],
            &self.env,
        );
        self.build();
    }

    pub fn device_conf(&self, device: &str) -> DeviceConf {
        let p = self.out.join(format!("devices/{device}.conf"));
        DeviceConf::parse(&fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
    }

    pub fn device_hosts(&self, device: &str) -> String {
        let p = self.out.join(format!("devices/{device}.hosts"));
        fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    /// The private key `tsk8s lock` delivered for a node.
    pub fn node_key_file(&self, cluster: &str, node: &str) -> PathBuf {
        self.keys.join(cluster).join(format!("{node}.key"))
    }

    /// Every manifest document under `clusters/<cluster>/` (recursively), as JSON values.
    pub fn documents(&self, cluster: &str) -> Vec<(PathBuf, Value)> {
        let mut files = Vec::new();
        let mut stack = vec![self.out.join("clusters").join(cluster)];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read cluster dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            let text = fs::read_to_string(&f).expect("read yaml");
            for de in serde_yaml_ng::Deserializer::from_str(&text) {
                use serde::Deserialize;
                let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{f:?}: {e}"));
                if !v.is_null() {
                    docs.push((f.clone(), v));
                }
            }
        }
        docs
    }

    /// The workload that runs node `node` of `cluster`: its own Deployment, or the sidecar
    /// Component's patch; with the data of the ConfigMaps and the key its volumes name.
    pub fn workload(&self, cluster: &str, node: &str) -> Workload {
        self.workload_of(cluster, node, node, None)
    }

    /// Pod `ordinal` of the StatefulSet sidecar `base` declared with `replicas=N`: its
    /// Component's patch, every node's config and key mounted (projected), and the args with
    /// `$(TSK8S_POD_INDEX)` expanded the way the kubelet does from the pod's
    /// `apps.kubernetes.io/pod-index` label (the env var must say so).
    pub fn statefulset_pod(&self, cluster: &str, base: &str, ordinal: u32) -> Workload {
        self.workload_of(cluster, base, &format!("{base}-{ordinal}"), Some(ordinal))
    }

    fn workload_of(
        &self,
        cluster: &str,
        file_node: &str,
        node: &str,
        ordinal: Option<u32>,
    ) -> Workload {
        let docs = self.documents(cluster);
        // (namespace, name) → data: a pod mounts ConfigMaps of its own namespace only.
        let mut config_maps: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
        for (_, d) in &docs {
            if d["kind"] == "ConfigMap" {
                let name = d["metadata"]["name"].as_str().expect("ConfigMap name");
                let ns = d["metadata"]["namespace"]
                    .as_str()
                    .expect("ConfigMap namespace");
                let data = d["data"]
                    .as_object()
                    .expect("ConfigMap data")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("string data").to_string()))
                    .collect();
                config_maps.insert((ns.to_string(), name.to_string()), data);
            }
        }
        let cluster_dir = self.out.join("clusters").join(cluster);
        let own = cluster_dir.join(format!("{file_node}.yaml"));
        let patch = cluster_dir.join(format!("components/{file_node}/patch.yaml"));
        let kind = if ordinal.is_some() {
            "StatefulSet"
        } else {
            "Deployment"
        };
        let (file, deploy) = docs
            .iter()
            .find(|(f, d)| (*f == own || *f == patch) && d["kind"] == kind)
            .unwrap_or_else(|| panic!("no Deployment for node {node} in {own:?} or {patch:?}"));
        let pod_ns = deploy["metadata"]["namespace"]
            .as_str()
            .unwrap_or_else(|| panic!("{file:?}: Deployment without namespace"))
            .to_string();
        let pod = &deploy["spec"]["template"]["spec"];
        // A plain container, or a native sidecar (an init container, restartPolicy: Always).
        let container = ["containers", "initContainers"]
            .iter()
            .filter_map(|key| pod[*key].as_array())
            .flatten()
            .find(|c| c["name"] == "tsk8s-runtime")
            .unwrap_or_else(|| panic!("{file:?}: no container tsk8s-runtime"));
        let id = |key: &str| -> Option<u32> {
            container["securityContext"][key]
                .as_u64()
                .or_else(|| pod["securityContext"][key].as_u64())
                .map(|v| u32::try_from(v).expect("uid fits u32"))
        };
        let uid = id("runAsUser").unwrap_or_else(|| panic!("{file:?}: no runAsUser"));
        assert_ne!(uid, 0, "{file:?}: the runtime must not run as root");
        let gid = id("runAsGroup").unwrap_or(uid);
        let fs_group = pod["securityContext"]["fsGroup"]
            .as_u64()
            .map(|v| u32::try_from(v).expect("gid fits u32"));
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap_or_else(|| panic!("{file:?}: container has no args"))
            .iter()
            .map(|a| a.as_str().expect("string arg").to_string())
            .collect();
        assert!(
            container["command"].is_null(),
            "{file:?}: a command would replace the image's entrypoint; the test runs the runtime binary with args"
        );
        let volumes = pod["volumes"].as_array().expect("volumes");
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_array().expect("volumeMounts") {
            let name = m["name"].as_str().expect("mount name");
            assert!(
                m["subPath"].is_null(),
                "{file:?}: subPath mounts never update"
            );
            let vol = volumes
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file:?}: volume {name} not declared"));
            let cm_data = |cm: &str| -> BTreeMap<String, Vec<u8>> {
                config_maps
                    .get(&(pod_ns.clone(), cm.to_string()))
                    .unwrap_or_else(|| {
                        panic!("{file:?}: ConfigMap {pod_ns}/{cm} not in the output")
                    })
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect()
            };
            let source = if let Some(sources) = vol["projected"]["sources"]
                .as_array()
                .filter(|s| s.iter().all(|x| x["configMap"].is_object()))
            {
                // One directory holding every ConfigMap's keys (the mesh's shards).
                let mut data = BTreeMap::new();
                let mut names = Vec::new();
                for src in sources {
                    let cm = src["configMap"]["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{file:?}: projected source {src}"));
                    let all = cm_data(cm);
                    // Items (a StatefulSet sidecar's `<ordinal>/…`), or every key as a file.
                    let files: Vec<(String, Vec<u8>)> = match src["configMap"]["items"].as_array() {
                        Some(items) => items
                            .iter()
                            .map(|item| {
                                let key = item["key"].as_str().expect("item key");
                                let path = item["path"].as_str().expect("item path");
                                let v = all
                                    .get(key)
                                    .unwrap_or_else(|| panic!("{file:?}: {cm} has no {key}"));
                                (path.to_string(), v.clone())
                            })
                            .collect(),
                        None => all.into_iter().collect(),
                    };
                    for (k, v) in files {
                        assert!(
                            data.insert(k.clone(), v).is_none(),
                            "{file:?}: key {k} twice in projected volume {name}"
                        );
                    }
                    names.push(cm.to_string());
                }
                let mode = vol["projected"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                Source::ConfigMap {
                    name: names.join(","),
                    data,
                    mode,
                }
            } else if let Some(cm) = vol["configMap"]["name"].as_str() {
                let data = cm_data(cm);
                let mode = vol["configMap"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                Source::ConfigMap {
                    name: cm.to_string(),
                    data,
                    mode,
                }
            } else if let Some(secret) = vol["secret"]["secretName"].as_str() {
                assert_eq!(
                    secret,
                    format!("tsk8s-{node}-key"),
                    "the Secret `tsk8s lock` told the user to create"
                );
                let key = fs::read(self.node_key_file(cluster, node)).expect("node key");
                let mode = vol["secret"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                let mut data = BTreeMap::new();
                data.insert("private-key".to_string(), key);
                Source::Secret {
                    name: secret.to_string(),
                    data,
                    mode,
                }
            } else if let Some(sources) = vol["projected"]["sources"].as_array() {
                // The gateway's keys: one Secret per terminated node, projected at
                // `<node>/private-key`.
                let mut data = BTreeMap::new();
                let mut config_data = BTreeMap::new();
                for src in sources {
                    // A StatefulSet sidecar's node configs: `<ordinal>/node.json`, … .
                    if let Some(cm) = src["configMap"]["name"].as_str() {
                        let cm_data = config_maps
                            .get(&(pod_ns.clone(), cm.to_string()))
                            .unwrap_or_else(|| {
                                panic!("{file:?}: ConfigMap {pod_ns}/{cm} not in the output")
                            });
                        for item in src["configMap"]["items"].as_array().expect("items") {
                            let key = item["key"].as_str().expect("item key");
                            let path = item["path"].as_str().expect("item path");
                            let v = cm_data
                                .get(key)
                                .unwrap_or_else(|| panic!("{file:?}: {cm} has no {key}"));
                            config_data.insert(path.to_string(), v.clone().into_bytes());
                        }
                        continue;
                    }
                    let secret = src["secret"]["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{file:?}: projected source {src}"));
                    let owner = secret
                        .strip_prefix("tsk8s-")
                        .and_then(|s| s.strip_suffix("-key"))
                        .unwrap_or_else(|| panic!("{file:?}: Secret {secret} is not a node key"));
                    let key = fs::read(self.node_key_file(cluster, owner)).expect("node key");
                    for item in src["secret"]["items"].as_array().expect("items") {
                        assert_eq!(item["key"], "private-key", "{file:?}: {item}");
                        let path = item["path"].as_str().expect("item path");
                        data.insert(path.to_string(), key.clone());
                    }
                }
                let mode = vol["projected"]["defaultMode"].as_u64().unwrap_or(0o644) as u32;
                if !config_data.is_empty() {
                    assert!(data.is_empty(), "{file:?}: a volume of configs and keys");
                    Source::ConfigMap {
                        name: name.to_string(),
                        data: config_data,
                        mode,
                    }
                } else {
                    Source::Secret {
                        name: name.to_string(),
                        data,
                        mode,
                    }
                }
            } else {
                panic!("{file:?}: volume {name}: unsupported source {vol}");
            };
            mounts.push(MountSpec {
                path: m["mountPath"].as_str().expect("mountPath").to_string(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
                volume: name.to_string(),
                source,
            });
        }
        let mut args = args;
        if let Some(i) = ordinal {
            let env = container["env"].as_array().expect("env");
            let index = env
                .iter()
                .find(|e| e["name"] == "TSK8S_POD_INDEX")
                .unwrap_or_else(|| panic!("{file:?}: no TSK8S_POD_INDEX env"));
            assert_eq!(
                index["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.labels['apps.kubernetes.io/pod-index']",
                "{file:?}: the ordinal comes from the pod-index label"
            );
            for a in &mut args {
                *a = a.replace("$(TSK8S_POD_INDEX)", &i.to_string());
            }
        }
        Workload {
            node: node.to_string(),
            container: container.clone(),
            args,
            uid,
            gid,
            fs_group,
            mounts,
        }
    }
}

/// What the runtime container gets.
#[derive(Clone, Debug)]
pub struct Workload {
    pub node: String,
    /// The runtime container as emitted (probes, ports).
    pub container: Value,
    pub args: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub fs_group: Option<u32>,
    pub mounts: Vec<MountSpec>,
}

impl Workload {
    /// The parsed `node.json` this workload mounts.
    pub fn node_json(&self) -> Value {
        // The file `--node` names, inside the volume mounted above it.
        let node_arg = self
            .args
            .iter()
            .position(|a| a == "--node")
            .and_then(|i| self.args.get(i + 1));
        for m in &self.mounts {
            let key = node_arg
                .and_then(|a| a.strip_prefix(&format!("{}/", m.path)))
                .unwrap_or("node.json");
            if let Source::ConfigMap { data, .. } = &m.source
                && let Some(v) = data.get(key)
            {
                return serde_json::from_slice(v).expect("node.json");
            }
        }
        panic!("no node.json mounted");
    }

    /// The parsed `gateway.json` a gateway workload mounts.
    pub fn gateway_config(&self) -> tsk8s_policy::runtime_config::GatewayConfig {
        self.mounts
            .iter()
            .find_map(|m| match &m.source {
                Source::ConfigMap { data, .. } => data.get("gateway.json"),
                _ => None,
            })
            .map(|v| serde_json::from_slice(v).expect("gateway.json"))
            .expect("gateway.json mounted")
    }
}

#[derive(Clone, Debug)]
pub struct MountSpec {
    pub path: String,
    pub read_only: bool,
    pub volume: String,
    pub source: Source,
}

#[derive(Clone, Debug)]
pub enum Source {
    ConfigMap {
        name: String,
        data: BTreeMap<String, Vec<u8>>,
        mode: u32,
    },
    Secret {
        name: String,
        data: BTreeMap<String, Vec<u8>>,
        mode: u32,
    },
}

impl Source {
    pub fn data(&self) -> &BTreeMap<String, Vec<u8>> {
        match self {
            Source::ConfigMap { data, .. } | Source::Secret { data, .. } => data,
        }
    }
    pub fn mode(&self) -> u32 {
        match self {
            Source::ConfigMap { mode, .. } | Source::Secret { mode, .. } => *mode,
        }
    }
}

static GENERATION: AtomicUsize = AtomicUsize::new(0);

/// Write `data` into `dir` the way the kubelet's atomic writer does: the files in a fresh
/// `..<timestamp>` dir, a `..data_tmp` symlink to it renamed over `..data`, one `<key>` →
/// `..data/<key>` symlink per key, then the old timestamped dir removed. Files are owned by
/// root with group `gid` (the pod's fsGroup) and `mode` (the volume's defaultMode).
pub fn atomic_write(dir: &Path, data: &BTreeMap<String, Vec<u8>>, mode: u32, gid: Option<u32>) {
    fs::create_dir_all(dir).expect("mkdir volume");
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod volume");
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst);
    let ts = format!("..2026_01_01_00_00_00.{:09}", generation);
    let ts_dir = dir.join(&ts);
    fs::create_dir(&ts_dir).expect("mkdir timestamped");
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    for (k, v) in data {
        let p = ts_dir.join(k);
        // A projected item's path may have directories (`<node>/private-key`).
        if let Some(parent) = p.parent()
            && parent != ts_dir
        {
            fs::create_dir_all(parent).expect("mkdir item dir");
            fs::set_permissions(parent, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        fs::write(&p, v).expect("write volume file");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some(g) = gid {
            std::os::unix::fs::chown(&p, Some(0), Some(g)).expect("chown");
        }
    }
    let old = fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    symlink(&ts, &tmp).expect("symlink ..data_tmp");
    fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    // One symlink per top-level entry (a key, or the first directory of an item's path).
    let tops: std::collections::BTreeSet<&str> = data
        .keys()
        .map(|k| k.split('/').next().unwrap_or(k))
        .collect();
    for k in &tops {
        let link = dir.join(k);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(k), &link).expect("key symlink");
        }
    }
    // Keys that went away.
    for e in fs::read_dir(dir).expect("read volume").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(name.as_str()) {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        let _ = fs::remove_dir_all(dir.join(old));
    }
}

/// A wg-quick config as `tsk8s build` writes it for a device.
#[derive(Clone, Debug)]
pub struct DeviceConf {
    pub text: String,
    /// `[Interface]` entries in order.
    pub interface: Vec<(String, String)>,
    /// One entry list per `[Peer]`, with the comment line above it (`# <host>: <kind> …`).
    pub peers: Vec<(String, Vec<(String, String)>)>,
}

/// Keys of `[Interface]` that only wg-quick understands (`wg-quick strip` drops them).
const WG_QUICK_ONLY: &[&str] = &[
    "Address",
    "DNS",
    "MTU",
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
];

impl DeviceConf {
    pub fn parse(text: &str) -> DeviceConf {
        let mut interface = Vec::new();
        let mut peers: Vec<(String, Vec<(String, String)>)> = Vec::new();
        let mut section = "";
        let mut last_comment = String::new();
        for line in text.lines() {
            let l = line.trim();
            if let Some(c) = l.strip_prefix('#') {
                last_comment = c.trim().to_string();
                continue;
            }
            if l.is_empty() {
                continue;
            }
            if l == "[Interface]" {
                section = "i";
            } else if l == "[Peer]" {
                section = "p";
                peers.push((std::mem::take(&mut last_comment), Vec::new()));
            } else {
                let (k, v) = l
                    .split_once('=')
                    .unwrap_or_else(|| panic!("device conf: not `key = value`: {l}"));
                let kv = (k.trim().to_string(), v.trim().to_string());
                match section {
                    "i" => interface.push(kv),
                    "p" => peers.last_mut().expect("peer").1.push(kv),
                    _ => panic!("device conf: entry outside a section: {l}"),
                }
            }
        }
        DeviceConf {
            text: text.to_string(),
            interface,
            peers,
        }
    }

    fn iface_values(&self, key: &str) -> Vec<String> {
        self.interface
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn addresses(&self) -> Vec<String> {
        self.iface_values("Address")
    }

    pub fn mtu(&self) -> Option<u16> {
        self.interface
            .iter()
            .find(|(k, _)| k == "MTU")
            .map(|(_, v)| v.parse().expect("MTU"))
    }

    pub fn post_up(&self) -> Vec<String> {
        self.interface
            .iter()
            .filter(|(k, _)| k == "PostUp")
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The config for `wg setconf` (what `wg-quick strip` prints).
    pub fn stripped(&self) -> String {
        let mut s = String::from("[Interface]\n");
        for (k, v) in &self.interface {
            if !WG_QUICK_ONLY.contains(&k.as_str()) {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for (_, p) in &self.peers {
            s.push_str("\n[Peer]\n");
            for (k, v) in p {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    }

    /// Every AllowedIPs entry of every peer (wg-quick adds a route for each).
    pub fn allowed_ips(&self) -> Vec<String> {
        self.peers
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|(k, _)| k == "AllowedIPs")
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The peer whose comment names `host` (`# <host>: <kind> in cluster <c>`).
    pub fn peer(&self, host: &str) -> Option<&Vec<(String, String)>> {
        self.peers
            .iter()
            .find(|(c, _)| c.split(':').next() == Some(host))
            .map(|(_, p)| p)
    }

    pub fn peer_value(&self, host: &str, key: &str) -> Option<String> {
        self.peer(host)?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The DNS server the config suggests (`# … DNS = <ip>, <domain>`).
    pub fn suggested_dns(&self) -> Option<String> {
        self.text.lines().find_map(|l| {
            let rest = l.split_once("DNS = ")?.1;
            Some(rest.split(',').next()?.trim().to_string())
        })
    }
}

/// `<ip> <name> …` lines of a hosts snippet → name → ip.
pub fn parse_hosts(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        let mut it = l.split_whitespace();
        let Some(ip) = it.next() else { continue };
        for name in it {
            m.insert(name.to_string(), ip.to_string());
        }
    }
    m
}
