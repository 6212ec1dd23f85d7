//! The GitOps wiring (`gitops/`) and the Tailscale-image target (`runtime="tailscale"`).
//!
//! - Golden snapshots of `gitops/` for Argo CD (Applications; ApplicationSet) and Flux (with and
//!   without SOPS decryption), and of the Tailscale-image cluster dirs.
//! - `kubectl kustomize` renders every Tailscale-image cluster dir, and every sidecar Component
//!   through a small app that includes it (skipped when kubectl is missing, unless
//!   `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` or `CI=true`).
//! - Every Tailscale-image container uses only containerboot's documented environment, in
//!   combinations containerboot accepts (the table [`RULES`], from `cmd/containerboot`'s
//!   `settings.validate()` and the doc comment of `main.go`), and gets what its mode needs.
//!   The rules were read from tailscale/tailscale at tag v1.90.6 (the image the examples pin);
//!   each cites the file it comes from.
//! - The CI examples' diff line compares with the git base, never a committed directory.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tsk8s::build;
use tsk8s::emit::Tree;
use tsk8s::model::RuntimeKind;

use tsk8s_test_support::repo_root as root;

fn required() -> bool {
    std::env::var("TSK8S_REQUIRE_PRIVILEGED_TESTS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

fn build_text(spec: &str, lock: Option<&str>) -> Result<Tree, build::Failure> {
    common::build_with(spec, lock, BTreeMap::new())
}

fn build_dir(dir: &Path) -> Tree {
    let spec = std::fs::read_to_string(dir.join("tailnet.kdl")).unwrap();
    let lock = std::fs::read_to_string(dir.join("tailnet.lock")).ok();
    build_text(&spec, lock.as_deref())
        .unwrap_or_else(|f| panic!("{}: build failed:\n{}", dir.display(), f.text))
}

fn spec(name: &str) -> PathBuf {
    root().join("testdata/specs").join(name)
}

// ---------------------------------------------------------------------------------------------
// Golden output

#[test]
fn argocd_applications() {
    let tree = build_dir(&spec("gitops-argocd"));
    insta::assert_snapshot!("argocd_applications", common::render_tree(&tree, "gitops/"));
}

#[test]
fn argocd_application_set() {
    let tree = build_dir(&spec("gitops-appset"));
    insta::assert_snapshot!(
        "argocd_application_set",
        common::render_tree(&tree, "gitops/")
    );
}

#[test]
fn flux_without_sops() {
    let tree = build_dir(&spec("gitops-flux"));
    let out = common::render_tree(&tree, "gitops/");
    assert!(!out.contains("decryption"), "no SOPS, no decryption");
    insta::assert_snapshot!("flux_without_sops", out);
}

#[test]
fn flux_with_sops() {
    let tree = build_dir(&spec("gitops-flux-sops"));
    let prod = common::render_tree(&tree, "gitops/flux/prod/");
    let lab = common::render_tree(&tree, "gitops/flux/lab/");
    assert!(prod.contains("provider: sops"), "{prod}");
    assert!(!lab.contains("decryption"), "{lab}");
    insta::assert_snapshot!("flux_with_sops", common::render_tree(&tree, "gitops/"));
}

#[test]
fn tailscale_image_output() {
    let tree = build_dir(&spec("tailscale-image"));
    insta::assert_snapshot!(
        "tailscale_image_clusters",
        common::render_tree(&tree, "clusters/")
    );
}

#[test]
fn no_gitops_node_no_gitops_dir() {
    let tree = build_text(
        "tailnet \"a\" domain=\"a.example\"\ncluster \"c\" image=\"ghcr.io/tailscale/tailscale:v1.90.6\" runtime=\"tailscale\"\nacl { accept src=\"*\" dst=\"*:*\"; }\n",
        None,
    )
    .unwrap_or_else(|f| panic!("{}", f.text));
    assert!(tree.keys().all(|k| !k.starts_with("gitops/")));
    assert!(tree.contains_key("clusters/c/kustomization.yaml"));
}

#[test]
fn gitops_objects_are_labelled_and_have_no_version() {
    for name in [
        "gitops-argocd",
        "gitops-appset",
        "gitops-flux",
        "gitops-flux-sops",
    ] {
        let tree = build_dir(&spec(name));
        for (path, bytes) in tree.iter().filter(|(p, _)| p.starts_with("gitops/")) {
            let v: Value = serde_yaml_ng::from_slice(bytes).unwrap();
            if v["kind"] == "Kustomization" && v["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
            {
                continue;
            }
            assert_eq!(
                v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "tsk8s",
                "{name}: {path}"
            );
        }
    }
}

#[test]
fn tailscale_udp_proxy_is_an_error() {
    let spec = r#"tailnet "a" domain="a.example"
tag "dns"
cluster "c" image="ghcr.io/tailscale/tailscale:v1.90.6" runtime="tailscale" {
    proxy "coredns" service="kube-system/kube-dns" tag="dns" {
        port 53 protocol="udp"
    }
}
"#;
    let err = build_text(spec, None).expect_err("must fail");
    assert!(err.text.contains("UDP port(s) 53"), "{}", err.text);
    assert!(err.text.contains("TCP only"), "{}", err.text);
}

// ---------------------------------------------------------------------------------------------
// Every Tailscale-image spec we ship

/// Spec dirs (examples, examples/*, testdata/specs/*) with at least one Tailscale-image cluster.
fn tailscale_specs() -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    for d in tsk8s_test_support::spec_dirs(&root()) {
        let Ok(text) = std::fs::read_to_string(d.join("tailnet.kdl")) else {
            continue;
        };
        let Ok(front) = build::front("tailnet.kdl", &text) else {
            continue;
        };
        let clusters: Vec<String> = front
            .tailnet
            .clusters
            .iter()
            .filter(|c| c.runtime == RuntimeKind::Tailscale && !c.exposures.is_empty())
            .map(|c| c.name.clone())
            .collect();
        if !clusters.is_empty() {
            out.push((d, clusters));
        }
    }
    assert!(
        out.iter().any(|(d, _)| d.ends_with("examples/tailscale")),
        "examples/tailscale must be among them"
    );
    out
}

fn yaml_docs(bytes: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(bytes);
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}:\n{d}")))
        .collect()
}

/// One container of a Tailscale-image pod, with what the rules need to know about its pod.
struct Pod {
    origin: String,
    env: BTreeMap<String, String>,
    privileged: bool,
    has_sysctler: bool,
    /// For Deployments: the Role rules of the pod's service account (resourceNames → verbs).
    role: Option<Vec<(Vec<String>, Vec<String>)>>,
    /// State Secrets emitted in the same file.
    secrets: Vec<String>,
    /// Mount paths.
    mounts: Vec<String>,
    /// Readiness and liveness probes.
    probes: Vec<ProbeKind>,
    /// Declared container ports: (name, number).
    ports: Vec<(Option<String>, u16)>,
    /// The pod's `automountServiceAccountToken` (None: not set by us, as in a Component).
    automount: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
enum ProbeKind {
    /// `httpGet` on a port (name or number) and path: the kubelet connects to the pod IP.
    HttpGet(String, String),
    /// `tcpSocket`: the kubelet connects to the pod IP.
    TcpSocket,
    /// `exec`: runs inside the container.
    Exec(Vec<String>),
}

fn probe_kind(p: &Value) -> Option<ProbeKind> {
    if p.is_null() {
        return None;
    }
    if let Some(h) = p.get("httpGet") {
        let port = match &h["port"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        return Some(ProbeKind::HttpGet(
            port,
            h["path"].as_str().unwrap_or("/").to_string(),
        ));
    }
    if p.get("tcpSocket").is_some() {
        return Some(ProbeKind::TcpSocket);
    }
    let cmd = p["exec"]["command"].as_array()?;
    Some(ProbeKind::Exec(
        cmd.iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect(),
    ))
}

fn container_env(c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (&e["value"], &e["valueFrom"]) {
            (Value::String(s), _) => s.clone(),
            (_, Value::Object(_)) => "<valueFrom>".to_string(),
            _ => String::new(),
        };
        assert!(
            env.insert(name.clone(), value).is_none(),
            "{name} given twice"
        );
    }
    env
}

fn tailscale_pods() -> Vec<Pod> {
    let mut pods = Vec::new();
    for (dir, clusters) in tailscale_specs() {
        let tree = build_dir(&dir);
        for cl in &clusters {
            let prefix = format!("clusters/{cl}/");
            for (path, bytes) in tree.range(prefix.clone()..) {
                if !path.starts_with(&prefix) {
                    break;
                }
                let docs = yaml_docs(bytes);
                let origin = format!("{}:{path}", dir.display());
                let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
                let secrets: Vec<String> = docs
                    .iter()
                    .filter(|d| d["kind"] == "Secret")
                    .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
                    .collect();
                for d in &docs {
                    let is_deploy = d["kind"] == "Deployment" && path.ends_with(".yaml");
                    let pod = &d["spec"]["template"]["spec"];
                    let Some(containers) = pod["containers"].as_array() else {
                        continue;
                    };
                    let has_sysctler = pod["initContainers"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|c| c["name"] == "sysctler"));
                    for c in containers.iter().filter(|c| c["name"] == "tailscale") {
                        let role = (is_deploy && !path.contains("/components/")).then(|| {
                            roles
                                .iter()
                                .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
                                .map(|rule| {
                                    let names = rule["resourceNames"]
                                        .as_array()
                                        .map(|a| {
                                            a.iter()
                                                .map(|x| x.as_str().unwrap().to_string())
                                                .collect()
                                        })
                                        .unwrap_or_default();
                                    let verbs = rule["verbs"]
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .map(|x| x.as_str().unwrap().to_string())
                                        .collect();
                                    (names, verbs)
                                })
                                .collect()
                        });
                        pods.push(Pod {
                            origin: origin.clone(),
                            env: container_env(c),
                            privileged: c["securityContext"]["privileged"] == true,
                            has_sysctler,
                            role,
                            secrets: secrets.clone(),
                            mounts: c["volumeMounts"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|m| m["mountPath"].as_str().unwrap().to_string())
                                .collect(),
                            probes: ["readinessProbe", "livenessProbe"]
                                .iter()
                                .map(|k| probe_kind(&c[*k]).expect("every node has both probes"))
                                .collect(),
                            ports: c["ports"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|p| {
                                    (
                                        p["name"].as_str().map(String::from),
                                        u16::try_from(p["containerPort"].as_u64().unwrap())
                                            .unwrap(),
                                    )
                                })
                                .collect(),
                            automount: pod["automountServiceAccountToken"].as_bool(),
                        });
                    }
                }
            }
        }
    }
    assert!(!pods.is_empty());
    pods
}

/// containerboot's documented environment (the doc comment of cmd/containerboot/main.go, minus
/// the deprecated TS_HEALTHCHECK_ADDR_PORT and the experimental/operator-only variables), plus
/// the downward-API variables and TS_DEBUG_FIREWALL_MODE of tailscale's docs/k8s manifests
/// (read by util/linuxfw/detector.go), and KUBERNETES_SERVICE_HOST, which
/// cmd/containerboot/settings.go reads to decide `InKubernetes` (only ever emptied: see RULES).
const DOCUMENTED: &[&str] = &[
    "TS_AUTHKEY",
    "TS_AUTH_KEY",
    "TS_CLIENT_ID",
    "TS_CLIENT_SECRET",
    "TS_ID_TOKEN",
    "TS_AUDIENCE",
    "TS_HOSTNAME",
    "TS_ROUTES",
    "TS_DEST_IP",
    "TS_TAILNET_TARGET_IP",
    "TS_TAILNET_TARGET_FQDN",
    "TS_TAILSCALED_EXTRA_ARGS",
    "TS_EXTRA_ARGS",
    "TS_USERSPACE",
    "TS_STATE_DIR",
    "TS_ACCEPT_DNS",
    "TS_KUBE_SECRET",
    "TS_SOCKS5_SERVER",
    "TS_OUTBOUND_HTTP_PROXY_LISTEN",
    "TS_SOCKET",
    "TS_AUTH_ONCE",
    "TS_SERVE_CONFIG",
    "TS_LOCAL_ADDR_PORT",
    "TS_ENABLE_METRICS",
    "TS_ENABLE_HEALTH_CHECK",
    "POD_NAME",
    "POD_UID",
    "TS_DEBUG_FIREWALL_MODE",
    "KUBERNETES_SERVICE_HOST",
];

/// Boolean variables (parsed with Go's strconv.ParseBool).
const BOOLS: &[&str] = &[
    "TS_USERSPACE",
    "TS_AUTH_ONCE",
    "TS_ACCEPT_DNS",
    "TS_ENABLE_METRICS",
    "TS_ENABLE_HEALTH_CHECK",
];

fn set(p: &Pod, k: &str) -> bool {
    p.env.get(k).is_some_and(|v| !v.is_empty())
}

/// TS_USERSPACE defaults to true.
fn userspace(p: &Pod) -> bool {
    p.env
        .get("TS_USERSPACE")
        .is_none_or(|v| matches!(v.as_str(), "1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// What containerboot refuses (settings.validate, main.go) and what each mode needs.
/// Each rule returns true when the pod breaks it.
#[allow(clippy::type_complexity)]
const RULES: &[(&str, fn(&Pod) -> bool)] = &[
    ("TS_DEST_IP is not supported with TS_USERSPACE", |p| {
        set(p, "TS_DEST_IP") && userspace(p)
    }),
    (
        "TS_TAILNET_TARGET_IP is not supported with TS_USERSPACE",
        |p| set(p, "TS_TAILNET_TARGET_IP") && userspace(p),
    ),
    (
        "TS_TAILNET_TARGET_FQDN is not supported with TS_USERSPACE",
        |p| set(p, "TS_TAILNET_TARGET_FQDN") && userspace(p),
    ),
    (
        "Both TS_TAILNET_TARGET_IP and TS_TAILNET_FQDN cannot be set",
        |p| set(p, "TS_TAILNET_TARGET_IP") && set(p, "TS_TAILNET_TARGET_FQDN"),
    ),
    ("TS_SERVE_CONFIG cannot be used with TS_DEST_IP", |p| {
        set(p, "TS_SERVE_CONFIG") && set(p, "TS_DEST_IP")
    }),
    (
        "TS_AUTHKEY cannot be used with TS_CLIENT_ID, TS_CLIENT_SECRET, TS_ID_TOKEN, or TS_AUDIENCE",
        |p| {
            (set(p, "TS_AUTHKEY") || set(p, "TS_AUTH_KEY"))
                && [
                    "TS_CLIENT_ID",
                    "TS_CLIENT_SECRET",
                    "TS_ID_TOKEN",
                    "TS_AUDIENCE",
                ]
                .iter()
                .any(|k| set(p, k))
        },
    ),
    ("TS_ID_TOKEN is set but TS_CLIENT_ID is not set", |p| {
        set(p, "TS_ID_TOKEN") && !set(p, "TS_CLIENT_ID")
    }),
    ("TS_AUDIENCE is set but TS_CLIENT_ID is not set", |p| {
        set(p, "TS_AUDIENCE") && !set(p, "TS_CLIENT_ID")
    }),
    ("boolean variables must parse (strconv.ParseBool)", |p| {
        BOOLS.iter().any(|k| {
            p.env.get(*k).is_some_and(|v| {
                !matches!(
                    v.as_str(),
                    "1" | "t"
                        | "T"
                        | "TRUE"
                        | "true"
                        | "True"
                        | "0"
                        | "f"
                        | "F"
                        | "FALSE"
                        | "false"
                        | "False"
                )
            })
        })
    }),
    // settings.go validate(): netip.ParseAddrPort(TS_LOCAL_ADDR_PORT) when health is enabled.
    ("TS_LOCAL_ADDR_PORT must be an addr:port", |p| {
        p.env
            .get("TS_LOCAL_ADDR_PORT")
            .is_some_and(|v| v.parse::<std::net::SocketAddr>().is_err())
    }),
    // main.go: /healthz is served only with TS_ENABLE_HEALTH_CHECK (localHealthEnabled), on
    // TS_LOCAL_ADDR_PORT (default [::]:9002, settings.go); kube/health/healthz.go answers
    // 200 once the node has a tailnet IP, 503 before.
    (
        "both probes reach /healthz where containerboot serves it (TS_ENABLE_HEALTH_CHECK=true, TS_LOCAL_ADDR_PORT)",
        |p| {
            let Some(addr) = p
                .env
                .get("TS_LOCAL_ADDR_PORT")
                .map_or(Some("[::]:9002"), |v| Some(v.as_str()))
                .and_then(|v| v.parse::<std::net::SocketAddr>().ok())
            else {
                return true;
            };
            p.env.get("TS_ENABLE_HEALTH_CHECK").map(String::as_str) != Some("true")
                || p.probes.len() != 2
                || p.probes.iter().any(|pr| match pr {
                    ProbeKind::HttpGet(port, path) => {
                        let number = p
                            .ports
                            .iter()
                            .find(|(n, num)| n.as_deref() == Some(port) || num.to_string() == *port)
                            .map(|(_, num)| *num);
                        path != "/healthz"
                            || !addr.ip().is_unspecified()
                            || number != Some(addr.port())
                    }
                    ProbeKind::Exec(cmd) => {
                        let host = if addr.ip().is_unspecified() {
                            format!("127.0.0.1:{}", addr.port())
                        } else {
                            addr.to_string()
                        };
                        cmd.last() != Some(&format!("http://{host}/healthz"))
                    }
                    ProbeKind::TcpSocket => true,
                })
        },
    ),
    // forwarding.go installEgressForwardingRule → util/linuxfw (iptables_runner.go,
    // nftables_runner.go) DNATNonTailscaleTraffic: `-t nat -I PREROUTING 1 ! -i tailscale0 -j
    // DNAT --to-destination <target>` takes everything that enters the pod from outside,
    // the kubelet's httpGet/tcpSocket probes to the pod IP too. An exec probe uses loopback,
    // which PREROUTING does not DNAT (tests/tailscale_image.rs shows both in a netns).
    (
        "kernel-mode egress (TS_TAILNET_TARGET_*) probes from inside the pod (exec), not through the pod IP",
        |p| {
            !userspace(p)
                && (set(p, "TS_TAILNET_TARGET_IP") || set(p, "TS_TAILNET_TARGET_FQDN"))
                && p.probes.iter().any(|pr| !matches!(pr, ProbeKind::Exec(_)))
        },
    ),
    // The exec probe runs busybox wget: the image is built FROM alpine (Dockerfile.base).
    (
        "an exec probe runs busybox wget on loopback, quietly",
        |p| {
            p.probes.iter().any(|pr| match pr {
                ProbeKind::Exec(cmd) => {
                    cmd.len() != 5
                        || cmd[..4] != ["wget", "-q", "-O", "/dev/null"]
                        || !cmd[4].starts_with("http://127.0.0.1:")
                }
                _ => false,
            })
        },
    ),
    // main.go: `strings.EqualFold(n.Name(), cfg.TailnetTargetFQDN)` over the netmap's peers,
    // whose names end in a dot (tailcfg.Node.Name); without the dot no peer ever matches.
    (
        "TS_TAILNET_TARGET_FQDN is a full MagicDNS name with its trailing dot",
        |p| {
            p.env.get("TS_TAILNET_TARGET_FQDN").is_some_and(|f| {
                !f.ends_with('.')
                    || f.trim_end_matches('.').split('.').count() < 3
                    || f.trim_end_matches('.')
                        .split('.')
                        .any(|l| l.is_empty() || l.len() > 63)
            })
        },
    ),
    // util/linuxfw/detector.go: without TS_DEBUG_FIREWALL_MODE containerboot picks iptables
    // (even on nftables-only nodes); `auto` picks from the rules the node has (docs/k8s/*.yaml).
    ("kernel mode sets TS_DEBUG_FIREWALL_MODE=auto", |p| {
        !userspace(p) && p.env.get("TS_DEBUG_FIREWALL_MODE").map(String::as_str) != Some("auto")
    }),
    ("TS_DEBUG_FIREWALL_MODE only in kernel mode", |p| {
        userspace(p) && p.env.contains_key("TS_DEBUG_FIREWALL_MODE")
    }),
    // settings.go: InKubernetes = KUBERNETES_SERVICE_HOST != ""; main.go then calls
    // newKubeClient (kube.go → kube/kubeclient/client.go New, which reads the service
    // account's namespace and ca.crt) even with TS_KUBE_SECRET="", and exits when that fails.
    (
        "containerboot reaches the API only with a token: KUBERNETES_SERVICE_HOST emptied unless the pod mounts our service account's token",
        |p| {
            let in_kube = !p.env.contains_key("KUBERNETES_SERVICE_HOST");
            let emptied_only = p
                .env
                .get("KUBERNETES_SERVICE_HOST")
                .is_some_and(|v| !v.is_empty());
            emptied_only || (in_kube && p.automount != Some(true))
        },
    ),
    ("every node authenticates with TS_AUTHKEY", |p| {
        p.env.get("TS_AUTHKEY").map(String::as_str) != Some("<valueFrom>")
    }),
    ("TS_EXTRA_ARGS only advertises valid tags", |p| {
        let Some(v) = p.env.get("TS_EXTRA_ARGS") else {
            return true;
        };
        let Some(tags) = v.strip_prefix("--advertise-tags=") else {
            return true;
        };
        tags.is_empty()
            || tags
                .split(',')
                .any(|t| tsk8s_policy::policy::check_tag(t).is_err())
    }),
    (
        "TS_AUTH_ONCE=true (log in only when the state holds no login)",
        |p| p.env.get("TS_AUTH_ONCE").map(String::as_str) != Some("true"),
    ),
    (
        "kernel mode (TS_USERSPACE=false) needs a privileged container (TUN since runc 1.2)",
        |p| !userspace(p) && !p.privileged,
    ),
    ("userspace mode needs no privileges", |p| {
        userspace(p) && p.privileged
    }),
    (
        "egress (TS_TAILNET_TARGET_*) needs IP forwarding: the sysctler init container",
        |p| (set(p, "TS_TAILNET_TARGET_IP") || set(p, "TS_TAILNET_TARGET_FQDN")) && !p.has_sysctler,
    ),
    (
        "a node forwards somewhere: TS_SERVE_CONFIG, TS_ROUTES or TS_TAILNET_TARGET_*",
        |p| {
            ![
                "TS_SERVE_CONFIG",
                "TS_ROUTES",
                "TS_TAILNET_TARGET_IP",
                "TS_TAILNET_TARGET_FQDN",
            ]
            .iter()
            .any(|k| set(p, k))
        },
    ),
    ("TS_SERVE_CONFIG lives in a mounted dir (watched)", |p| {
        p.env.get("TS_SERVE_CONFIG").is_some_and(|f| {
            !p.mounts
                .iter()
                .any(|m| Path::new(f).parent() == Some(Path::new(m)))
        })
    }),
    ("the socket and state dir (/tmp) are writable", |p| {
        !p.mounts.iter().any(|m| m == "/tmp")
    }),
    (
        "TS_KUBE_SECRET names a Secret tsk8s emits, and the Role allows exactly get, update, patch on it",
        |p| {
            let Some(role) = &p.role else {
                // A sidecar: no API access, state in the emptyDir.
                return p.env.get("TS_KUBE_SECRET").map(String::as_str) != Some("")
                    || !set(p, "TS_STATE_DIR");
            };
            let Some(secret) = p.env.get("TS_KUBE_SECRET").filter(|s| !s.is_empty()) else {
                return true;
            };
            let verbs = vec!["get".to_string(), "update".to_string(), "patch".to_string()];
            !p.secrets.contains(secret) || role != &vec![(vec![secret.clone()], verbs)]
        },
    ),
];

#[test]
fn tailscale_pods_use_only_documented_variables_in_allowed_combinations() {
    let pods = tailscale_pods();
    let mut problems = Vec::new();
    for p in &pods {
        for k in p.env.keys() {
            if !DOCUMENTED.contains(&k.as_str()) {
                problems.push(format!(
                    "{}: {k} is not a documented containerboot variable",
                    p.origin
                ));
            }
        }
        for (rule, broken) in RULES {
            if broken(p) {
                problems.push(format!("{}: {rule} (env: {:?})", p.origin, p.env));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The table is exercised: each mode appears.
    for k in [
        "TS_SERVE_CONFIG",
        "TS_ROUTES",
        "TS_TAILNET_TARGET_IP",
        "TS_TAILNET_TARGET_FQDN",
    ] {
        assert!(pods.iter().any(|p| set(p, k)), "no pod with {k}");
    }
    assert!(pods.iter().any(|p| p.role.is_none()), "no sidecar");
}

#[test]
fn rules_catch_bad_combinations() {
    let good = Pod {
        origin: "hand-made".into(),
        env: BTreeMap::from([
            ("TS_AUTHKEY".into(), "<valueFrom>".into()),
            ("TS_AUTH_ONCE".into(), "true".into()),
            ("TS_EXTRA_ARGS".into(), "--advertise-tags=tag:a".into()),
            ("TS_SERVE_CONFIG".into(), "/etc/s/serve.json".into()),
            ("TS_KUBE_SECRET".into(), "st".into()),
            ("TS_ENABLE_HEALTH_CHECK".into(), "true".into()),
            ("TS_LOCAL_ADDR_PORT".into(), "[::]:9002".into()),
        ]),
        privileged: false,
        has_sysctler: false,
        role: Some(vec![(
            vec!["st".into()],
            vec!["get".into(), "update".into(), "patch".into()],
        )]),
        secrets: vec!["st".into()],
        mounts: vec!["/tmp".into(), "/etc/s".into()],
        probes: vec![
            ProbeKind::HttpGet("ts-health".into(), "/healthz".into()),
            ProbeKind::HttpGet("ts-health".into(), "/healthz".into()),
        ],
        ports: vec![(Some("ts-health".into()), 9002)],
        automount: Some(true),
    };
    let broken = |p: &Pod| -> Vec<&str> {
        RULES
            .iter()
            .filter(|(_, f)| f(p))
            .map(|(r, _)| *r)
            .collect()
    };
    assert!(broken(&good).is_empty(), "{:?}", broken(&good));
    let mut p = Pod {
        origin: good.origin.clone(),
        env: good.env.clone(),
        role: good.role.clone(),
        secrets: good.secrets.clone(),
        mounts: good.mounts.clone(),
        probes: good.probes.clone(),
        ports: good.ports.clone(),
        ..good
    };
    p.env.insert("TS_DEST_IP".into(), "10.0.0.1".into());
    let b = broken(&p);
    assert!(
        b.contains(&"TS_DEST_IP is not supported with TS_USERSPACE"),
        "{b:?}"
    );
    assert!(
        b.contains(&"TS_SERVE_CONFIG cannot be used with TS_DEST_IP"),
        "{b:?}"
    );
    p.env.remove("TS_DEST_IP");
    p.env
        .insert("TS_TAILNET_TARGET_FQDN".into(), "x.ts.net".into());
    p.env.insert("TS_USERSPACE".into(), "false".into());
    let b = broken(&p);
    assert!(b.iter().any(|r| r.starts_with("kernel mode")), "{b:?}");
    assert!(b.iter().any(|r| r.starts_with("egress")), "{b:?}");
    // Kernel-mode egress with an httpGet probe (DNATed), a dotless FQDN, no firewall mode.
    assert!(
        b.iter().any(|r| r.starts_with("kernel-mode egress")),
        "{b:?}"
    );
    assert!(
        b.iter().any(|r| r.starts_with("TS_TAILNET_TARGET_FQDN is")),
        "{b:?}"
    );
    assert!(b.iter().any(|r| r.starts_with("kernel mode sets")), "{b:?}");
    p.env
        .insert("TS_TAILNET_TARGET_FQDN".into(), "x.tail1.ts.net.".into());
    p.env.insert("TS_DEBUG_FIREWALL_MODE".into(), "auto".into());
    p.env
        .insert("TS_LOCAL_ADDR_PORT".into(), "127.0.0.1:9002".into());
    let wget = |url: &str| -> ProbeKind {
        ProbeKind::Exec(
            ["wget", "-q", "-O", "/dev/null", url]
                .map(String::from)
                .to_vec(),
        )
    };
    p.probes = vec![wget("http://127.0.0.1:9002/healthz"); 2];
    let b = broken(&p);
    assert!(
        !b.iter().any(|r| r.starts_with("kernel-mode egress")),
        "{b:?}"
    );
    assert!(!b.iter().any(|r| r.starts_with("both probes")), "{b:?}");
    assert!(
        !b.iter().any(|r| r.starts_with("TS_TAILNET_TARGET_FQDN is")),
        "{b:?}"
    );
    p.probes = vec![wget("http://127.0.0.1:9003/healthz"); 2];
    assert!(broken(&p).iter().any(|r| r.starts_with("both probes")));
    p.role = Some(vec![(vec![], vec!["create".into()])]);
    assert!(broken(&p).iter().any(|r| r.starts_with("TS_KUBE_SECRET")));
    // A sidecar in a pod without a token that leaves KUBERNETES_SERVICE_HOST alone.
    let mut side = Pod {
        env: good.env.clone(),
        role: None,
        automount: None,
        ..good
    };
    side.env.insert("TS_KUBE_SECRET".into(), String::new());
    side.env.insert("TS_STATE_DIR".into(), "/tmp".into());
    assert!(
        broken(&side)
            .iter()
            .any(|r| r.starts_with("containerboot reaches the API"))
    );
    side.env
        .insert("KUBERNETES_SERVICE_HOST".into(), String::new());
    assert!(broken(&side).is_empty(), "{:?}", broken(&side));
    // The health probe on another port than the one containerboot listens on.
    side.env
        .insert("TS_LOCAL_ADDR_PORT".into(), "[::]:9003".into());
    assert!(broken(&side).iter().any(|r| r.starts_with("both probes")));
}

// ---------------------------------------------------------------------------------------------
// kubectl kustomize

fn kubectl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

fn write_tree(dir: &Path, tree: &Tree) {
    for (p, b) in tree {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    }
}

fn kustomize(kubectl: &Path, dir: &Path) -> Vec<Value> {
    let o = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    yaml_docs(&o.stdout)
}

#[test]
fn kubectl_kustomize_renders_tailscale_cluster_dirs() {
    let Some(kubectl) = kubectl() else {
        assert!(!required(), "kubectl is required");
        eprintln!("SKIP: kubectl not found");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (i, (dir, clusters)) in tailscale_specs().into_iter().enumerate() {
        let out = tmp.path().join(i.to_string());
        let tree = build_dir(&dir);
        write_tree(&out, &tree);
        for c in clusters {
            let cdir = out.join("clusters").join(&c);
            let objs = kustomize(&kubectl, &cdir);
            assert!(
                objs.iter().any(|o| o["kind"] == "Namespace"),
                "{}: {c}",
                dir.display()
            );
            // Sidecar Components, through an app that includes each.
            let Ok(rd) = std::fs::read_dir(cdir.join("components")) else {
                continue;
            };
            for comp in rd.flatten() {
                let patch: Value = serde_yaml_ng::from_slice(
                    &std::fs::read(comp.path().join("patch.yaml")).unwrap(),
                )
                .unwrap();
                let comp_name = comp.file_name().to_string_lossy().into_owned();
                let app = tmp.path().join(format!("app-{i}-{c}-{comp_name}"));
                std::fs::create_dir_all(&app).unwrap();
                let name = patch["metadata"]["name"].as_str().unwrap();
                let ns = patch["metadata"]["namespace"].as_str().unwrap();
                let kind = patch["kind"].as_str().unwrap();
                std::fs::write(
                    app.join("app.yaml"),
                    format!(
                        "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      serviceAccountName: mine\n      automountServiceAccountToken: false\n      securityContext: {{runAsUser: 4242}}\n      containers: [{{name: app, image: 'nginx:1.27'}}]\n"
                    ),
                )
                .unwrap();
                std::fs::write(
                    app.join("kustomization.yaml"),
                    format!(
                        "resources: [app.yaml]\ncomponents: [../{i}/clusters/{c}/components/{comp_name}]\n"
                    ),
                )
                .unwrap();
                let objs = kustomize(&kubectl, &app);
                let w = objs
                    .iter()
                    .find(|o| o["kind"] == kind)
                    .expect("the workload");
                let pod = &w["spec"]["template"]["spec"];
                let names: Vec<&str> = pod["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                let mut sorted = names.clone();
                sorted.sort();
                assert_eq!(sorted, ["app", "tailscale"], "{}", comp.path().display());
                assert_eq!(pod["serviceAccountName"], "mine");
                assert_eq!(pod["securityContext"]["runAsUser"], 4242);
                // The workload keeps its `false`; the sidecar does not need the API.
                assert_eq!(pod["automountServiceAccountToken"], false);
                let ts = pod["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == "tailscale")
                    .unwrap();
                assert_eq!(
                    container_env(ts)
                        .get("KUBERNETES_SERVICE_HOST")
                        .map(String::as_str),
                    Some(""),
                    "{}",
                    comp.path().display()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CI examples: one PR comment per diff, updated in place, parts created/updated/deleted.

/// Diff output in three parts, as `tsk8s diff --format markdown` prints a split comment.
fn parts(n: usize, tag: &str) -> String {
    let mut s = String::new();
    for i in 1..=n {
        if n == 1 {
            s.push_str(&format!(
                "<!-- tsk8s-diff -->\n**tsk8s** {tag}\n\nbody {i}\n"
            ));
        } else {
            s.push_str(&format!(
                "<!-- tsk8s-diff -->\n<!-- tsk8s-diff-part {i}/{n} -->\n**tsk8s** {tag} (part {i}/{n})\n\nbody {i}\n"
            ));
        }
    }
    s
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Our comments (marker first) in part order, and the others, as (id, body).
fn ours_and_others(comments: &[(u64, String)]) -> (Vec<String>, Vec<(u64, String)>) {
    let mut ours: Vec<(usize, u64, String)> = comments
        .iter()
        .filter(|(_, b)| b.starts_with("<!-- tsk8s-diff -->"))
        .map(|(id, b)| {
            let part = b
                .split("<!-- tsk8s-diff-part ")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            (part, *id, b.clone())
        })
        .collect();
    ours.sort();
    let others = comments
        .iter()
        .filter(|(_, b)| !b.starts_with("<!-- tsk8s-diff -->"))
        .cloned()
        .collect();
    (ours.into_iter().map(|(_, _, b)| b).collect(), others)
}

fn split_bodies(diff: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in diff.split_inclusive('\n') {
        if line.trim_end() == "<!-- tsk8s-diff -->" || out.is_empty() {
            out.push(String::new());
        }
        if let Some(last) = out.last_mut() {
            last.push_str(line);
        }
    }
    out
}

/// Run the GitHub Actions example's github-script step under node with a fake `github`.
fn run_github_script(comments: &[(u64, String)], diff: &str) -> Vec<(u64, String)> {
    let wf: Value = serde_yaml_ng::from_slice(
        &std::fs::read(root().join("examples/ci/github-actions.yml")).unwrap(),
    )
    .unwrap();
    let script = wf["jobs"]["check"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/github-script"))
        })
        .and_then(|s| s["with"]["script"].as_str())
        .expect("a github-script step")
        .to_string();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("script.js"), script).unwrap();
    std::fs::write(tmp.path().join("diff.md"), diff).unwrap();
    let state: Vec<Value> = comments
        .iter()
        .map(|(id, b)| serde_json::json!({"id": id, "body": b, "user": {"type": "Bot"}}))
        .collect();
    std::fs::write(
        tmp.path().join("state.json"),
        serde_json::to_string(&state).unwrap(),
    )
    .unwrap();
    let harness = r#"
const fs = require('fs');
const script = fs.readFileSync(process.argv[2], 'utf8');
let comments = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
let nextId = 1000;
const github = {
  paginate: async (fn, params) => (await fn(params)).data,
  rest: { issues: {
    listComments: async () => ({ data: comments.map(c => ({ ...c })) }),
    updateComment: async ({ comment_id, body }) => { comments.find(c => c.id === comment_id).body = body; },
    createComment: async ({ body }) => { comments.push({ id: nextId++, body, user: { type: 'Bot' } }); },
    deleteComment: async ({ comment_id }) => { comments = comments.filter(c => c.id !== comment_id); },
  } },
};
const context = { repo: { owner: 'o', repo: 'r' }, issue: { number: 7 } };
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction('require', 'github', 'context', script)(require, github, context)
  .then(() => process.stdout.write(JSON.stringify(comments)))
  .catch(e => { console.error(e); process.exit(1); });
"#;
    std::fs::write(tmp.path().join("harness.js"), harness).unwrap();
    let o = Command::new("node")
        .arg(tmp.path().join("harness.js"))
        .arg(tmp.path().join("script.js"))
        .arg(tmp.path().join("state.json"))
        .env("DIFF_FILE", tmp.path().join("diff.md"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    v.iter()
        .map(|c| {
            (
                c["id"].as_u64().unwrap(),
                c["body"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn github_actions_example_updates_one_comment_in_place() {
    if !tool("node") {
        assert!(!required(), "node is required");
        eprintln!("SKIP: node not found");
        return;
    }
    let unrelated = (5, "LGTM".to_string());
    // Yesterday: three parts, stored out of order.
    let old = split_bodies(&parts(3, "old"));
    let start = vec![
        unrelated.clone(),
        (11, old[1].clone()),
        (12, old[0].clone()),
        (13, old[2].clone()),
    ];
    // Today: two parts → parts 1 and 2 updated in place (same ids), part 3 deleted.
    let after = run_github_script(&start, &parts(2, "new"));
    let (ours, others) = ours_and_others(&after);
    assert_eq!(ours, split_bodies(&parts(2, "new")));
    assert_eq!(others, vec![unrelated.clone()]);
    let ids: Vec<u64> = after.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [5, 11, 12], "updated in place, surplus deleted");
    // Tomorrow: one body, then four parts (created beyond the existing one).
    let after = run_github_script(&after, &parts(1, "one"));
    assert_eq!(ours_and_others(&after).0, split_bodies(&parts(1, "one")));
    assert_eq!(after.len(), 2);
    let after = run_github_script(&after, &parts(4, "four"));
    assert_eq!(ours_and_others(&after).0, split_bodies(&parts(4, "four")));
    assert_eq!(after.len(), 5);
    // From nothing.
    let after = run_github_script(&[], &parts(2, "fresh"));
    assert_eq!(ours_and_others(&after).0, split_bodies(&parts(2, "fresh")));
}

type Notes = std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>;

/// A GitLab notes API on loopback, enough for gitlab-note.sh.
fn fake_gitlab(notes: Vec<(u64, String)>) -> (String, Notes) {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};
    let state = Arc::new(Mutex::new(notes));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v4", listener.local_addr().unwrap());
    let st = state.clone();
    std::thread::spawn(move || {
        let mut next = 1000u64;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let target = parts.next().unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("expect: 100-continue") {
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let path = target.split('?').next().unwrap_or("");
            let query = target.split('?').nth(1).unwrap_or("");
            let id: Option<u64> = path.rsplit('/').next().and_then(|s| s.parse().ok());
            let mut notes = st.lock().unwrap();
            let reply = match method.as_str() {
                "GET" => {
                    if query.contains("page=1&") || query.ends_with("page=1") {
                        serde_json::to_string(
                            &notes
                                .iter()
                                .map(|(id, b)| serde_json::json!({"id": id, "body": b, "system": false}))
                                .collect::<Vec<_>>(),
                        )
                        .unwrap()
                    } else {
                        "[]".into()
                    }
                }
                "PUT" | "POST" => {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let b = v["body"].as_str().unwrap().to_string();
                    match (method.as_str(), id) {
                        ("PUT", Some(id)) => {
                            if let Some(n) = notes.iter_mut().find(|(i, _)| *i == id) {
                                n.1 = b;
                            }
                        }
                        _ => {
                            notes.push((next, b));
                            next += 1;
                        }
                    }
                    "{}".into()
                }
                "DELETE" => {
                    notes.retain(|(i, _)| Some(*i) != id);
                    "{}".into()
                }
                _ => "{}".into(),
            };
            drop(notes);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
        }
    });
    (url, state)
}

fn run_gitlab_note(url: &str, diff: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("diff.md");
    std::fs::write(&f, diff).unwrap();
    let o = Command::new("sh")
        .arg(root().join("examples/ci/gitlab-note.sh"))
        .arg(&f)
        .env("CI_API_V4_URL", url)
        .env("CI_PROJECT_ID", "1")
        .env("CI_MERGE_REQUEST_IID", "7")
        .env("TSK8S_NOTE_TOKEN", "test-token")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gitlab-note.sh: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn gitlab_example_updates_one_note_in_place() {
    if !(tool("curl") && tool("jq")) {
        assert!(!required(), "curl and jq are required");
        eprintln!("SKIP: curl or jq not found");
        return;
    }
    let old = split_bodies(&parts(3, "old"));
    let (url, state) = fake_gitlab(vec![
        (5, "LGTM".into()),
        (11, old[1].clone()),
        (12, old[0].clone()),
        (13, old[2].clone()),
    ]);
    run_gitlab_note(&url, &parts(2, "new"));
    let now = state.lock().unwrap().clone();
    let (ours, others) = ours_and_others(&now);
    assert_eq!(ours, split_bodies(&parts(2, "new")));
    assert_eq!(others, vec![(5, "LGTM".to_string())]);
    assert_eq!(now.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5, 11, 12]);
    run_gitlab_note(&url, &parts(3, "three"));
    let now = state.lock().unwrap().clone();
    assert_eq!(ours_and_others(&now).0, split_bodies(&parts(3, "three")));
    assert_eq!(now.len(), 4);
    run_gitlab_note(&url, &parts(1, "one"));
    let now = state.lock().unwrap().clone();
    assert_eq!(ours_and_others(&now).0, split_bodies(&parts(1, "one")));
    assert_eq!(now.len(), 2);
}

#[test]
fn application_set_name_is_a_dns_label() {
    use tsk8s::lower::gitops::label_of;
    assert_eq!(label_of("acme"), "acme");
    assert_eq!(label_of("Acme Corp.example"), "acme-corp-example");
    assert_eq!(label_of("--"), "tailnet");
    let long = label_of(&"x-".repeat(100));
    assert!(long.len() <= 57 && !long.ends_with('-'), "{long}");
}

#[test]
fn tailscale_auth_key_comes_from_the_secret_backend() {
    // sealed-secrets: the committed SealedSecret is required, and its absence is named.
    let spec = r#"tailnet "a" domain="a.example"
tag "web"
cluster "c" image="ghcr.io/tailscale/tailscale:v1.90.6" runtime="tailscale" {
    secrets "sealed-secrets"
    proxy "web" service="shop/web" port=80 tag="web"
}
"#;
    let err = build_text(spec, None).expect_err("no SealedSecret source");
    assert!(err.text.contains("tailscale-authkey"), "{}", err.text);
    // external-secrets: an ExternalSecret per auth-key Secret (the cluster's, each sidecar's).
    let spec = r#"tailnet "a" domain="a.example"
tag "web"
cluster "c" image="ghcr.io/tailscale/tailscale:v1.90.6" runtime="tailscale" {
    secrets "external-secrets" store="vault"
    proxy "web" service="shop/web" port=80 tag="web"
    sidecar "api" workload="shop/api" port=8080 tag="web"
}
"#;
    let tree = build_text(spec, None).unwrap_or_else(|f| panic!("{}", f.text));
    let cluster: Value =
        serde_yaml_ng::from_slice(&tree["clusters/c/tailscale-authkey.externalsecret.yaml"])
            .unwrap();
    assert_eq!(cluster["spec"]["target"]["name"], "tsk8s-tailscale-authkey");
    assert_eq!(cluster["metadata"]["namespace"], "tailscale");
    let sidecar: Value = serde_yaml_ng::from_slice(
        &tree["clusters/c/components/api/api-authkey.externalsecret.yaml"],
    )
    .unwrap();
    assert_eq!(sidecar["spec"]["target"]["name"], "tsk8s-api-authkey");
    assert_eq!(sidecar["metadata"]["namespace"], "shop");
    let k = String::from_utf8_lossy(&tree["clusters/c/components/api/kustomization.yaml"]);
    assert!(k.contains("api-authkey.externalsecret.yaml"), "{k}");
}

/// The diff line of each CI example, as the CI runs it, on a pull request that commits a
/// directory `origin/main/` holding a copy of its own output (to make the comment say "no
/// changes"): the base still comes from git, and the ACL change shows (exit 1).
#[test]
fn ci_examples_diff_the_git_base_not_a_committed_dir() {
    let git = tsk8s_test_support::git;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_tsk8s"));
    let tsk8s = |d: &Path, args: &[&str]| {
        let o = Command::new(&bin)
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}");
    };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for f in ["tailnet.kdl", "tailnet.lock"] {
        std::fs::copy(spec("proxy-basic").join(f), d.join(f)).unwrap();
    }
    git(d, &["init", "-q", "-b", "main"]);
    git(d, &["config", "user.email", "ci@example.com"]);
    git(d, &["config", "user.name", "ci"]);
    tsk8s(d, &["build"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "base"]);
    git(d, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
    git(d, &["checkout", "-q", "-b", "pr"]);
    let text = std::fs::read_to_string(d.join("tailnet.kdl")).unwrap();
    std::fs::write(
        d.join("tailnet.kdl"),
        text.replace("dst=\"tag:web:8080\"", "dst=\"tag:web:8080-8081\""),
    )
    .unwrap();
    tsk8s(d, &["build"]);
    tsk8s(d, &["build", "-o", "origin/main"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "pr"]);
    for example in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(root().join("examples/ci").join(example)).unwrap();
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("tsk8s diff "))
            .unwrap_or_else(|| panic!("{example}: no `tsk8s diff` line"))
            .replace("${{ github.base_ref }}", "main");
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = Command::new("sh")
            .args(["-c", &line])
            .current_dir(d)
            .env("PATH", path)
            .env("SPEC", "tailnet.kdl")
            .env("OUT", "out")
            .env("RUNNER_TEMP", d)
            .env("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main")
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{example}: {line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // `$RUNNER_TEMP/tsk8s-diff.md` and `tsk8s-diff.md` are the same file here.
        let comment = std::fs::read_to_string(d.join("tsk8s-diff.md")).unwrap();
        assert!(comment.contains("8080-8081"), "{example}: {comment}");
        std::fs::remove_file(d.join("tsk8s-diff.md")).unwrap();
    }
}

/// The GitHub example runs as written: `paths:` covers every input `build` reads (spec, lock,
/// SOPS and SealedSecret source dirs of every example, the output dir), the job runs `check`,
/// `test` and `build --check`, and steps that need a Tailscale account are skipped unless
/// their secret is set.
#[test]
fn github_example_paths_and_steps() {
    let text = std::fs::read_to_string(root().join("examples/ci/github-actions.yml")).unwrap();
    let wf: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    // Every source dir any example's backend reads.
    let mut dirs = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(root().join("examples"))
        .unwrap()
        .flatten()
    {
        let spec = e.path().join("tailnet.kdl");
        let Ok(text) = std::fs::read_to_string(&spec) else {
            continue;
        };
        let front = tsk8s::build::front("tailnet.kdl", &text)
            .unwrap_or_else(|f| panic!("{}: {}", spec.display(), f.text));
        for c in &front.tailnet.clusters {
            if let Some(d) = tsk8s::lower::secrets::source_dir(&c.secrets) {
                dirs.insert(d.split('/').next().unwrap_or(d).to_string());
            }
        }
    }
    assert!(!dirs.is_empty());
    for event in ["pull_request", "push"] {
        let paths: Vec<String> = wf["on"][event]["paths"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{event}: no paths"))
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect();
        let mut want: Vec<String> =
            vec!["tailnet.kdl".into(), "tailnet.lock".into(), "out/**".into()];
        want.extend(dirs.iter().map(|d| format!("{d}/**")));
        for w in &want {
            assert!(paths.contains(w), "{event}: paths {paths:?} leave out {w}");
        }
    }
    let runs: Vec<&str> = wf["jobs"]["check"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    // GitLab: the same inputs in `rules: changes:`, the same commands.
    let gl_text = std::fs::read_to_string(root().join("examples/ci/gitlab-ci.yml")).unwrap();
    let gl: serde_yaml_ng::Value = serde_yaml_ng::from_str(&gl_text).unwrap();
    let changes: Vec<String> = gl["tsk8s-check"]["rules"][0]["changes"]
        .as_sequence()
        .unwrap_or_else(|| panic!("gitlab: no rules changes"))
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let mut want: Vec<String> = vec![
        "tailnet.kdl".into(),
        "tailnet.lock".into(),
        "out/**/*".into(),
    ];
    want.extend(dirs.iter().map(|d| format!("{d}/**/*")));
    for w in &want {
        assert!(
            changes.contains(w),
            "gitlab: changes {changes:?} leave out {w}"
        );
    }
    for cmd in ["tsk8s check ", "tsk8s test ", "tsk8s build --check "] {
        assert!(gl_text.contains(cmd), "gitlab: no `{cmd}`");
    }
    // Forks cannot comment: their diff goes to the job summary instead.
    let steps = wf["jobs"]["check"]["steps"].as_sequence().unwrap();
    let own = "github.event.pull_request.head.repo.full_name == github.repository";
    let fork = "github.event.pull_request.head.repo.full_name != github.repository";
    let cond = |s: &serde_yaml_ng::Value| s["if"].as_str().unwrap_or("").to_string();
    assert!(steps.iter().any(|s| {
        s["uses"]
            .as_str()
            .is_some_and(|u| u.starts_with("actions/github-script"))
            && cond(s).contains(own)
    }));
    assert!(steps.iter().any(|s| {
        cond(s).contains(fork)
            && s["run"]
                .as_str()
                .is_some_and(|r| r.contains("GITHUB_STEP_SUMMARY"))
    }));
    // A failed test or a stale out/ still gets its diff comment (the job still fails): every
    // step after `check` up to the comment runs unless cancelled, gated on `check` (a valid
    // spec) or on the diff step, never on the steps between.
    let check_at = steps
        .iter()
        .position(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("tsk8s check "))
        })
        .expect("a check step");
    assert_eq!(steps[check_at]["id"].as_str(), Some("check"));
    let comment_at = steps
        .iter()
        .position(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/github-script"))
        })
        .unwrap();
    for s in &steps[check_at + 1..=comment_at] {
        let c = cond(s);
        assert!(
            c.contains("!cancelled()")
                && (c.contains("steps.check.outcome == 'success'")
                    || c.contains("steps.diff.outcome == 'success'")),
            "step {:?} would not run after a failed test: if: {c:?}",
            s["name"]
        );
    }
    // GitLab: the note is posted before a failed test or stale output fails the job.
    let script: Vec<&str> = gl["tsk8s-check"]["script"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    let at = |needle: &str| {
        script
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("gitlab: no {needle:?} in {script:?}"))
    };
    assert!(script[at("tsk8s test ")].contains("|| failed="));
    assert!(script[at("tsk8s build --check ")].contains("|| failed="));
    assert!(at("NOTE_SCRIPT") < at("exit 1"));
    for cmd in ["tsk8s check ", "tsk8s test ", "tsk8s build --check "] {
        assert!(runs.iter().any(|r| r.contains(cmd)), "no `{cmd}` step");
    }
    for job in ["check", "apply"] {
        for s in wf["jobs"][job]["steps"].as_sequence().unwrap() {
            if s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("tailscale/"))
            {
                assert_eq!(s["if"].as_str(), Some("env.TS_OAUTH_ID != ''"), "{job}");
            }
        }
        assert!(wf["jobs"][job]["env"]["TS_OAUTH_ID"].is_string(), "{job}");
    }
}
