//! The official `tailscale/tailscale` image as a target (`cluster … runtime="tailscale"`).
//!
//! Each exposure becomes one node run by containerboot, configured only with its documented
//! environment (cmd/containerboot/main.go, settings.go). Tailscale assigns addresses and keys,
//! so these nodes take no lock entries. The choices (see docs/tailscale-target.md):
//!
//! - **proxy**: userspace mode (`TS_USERSPACE=true`) with `TS_SERVE_CONFIG`, a serve config
//!   (ipn.ServeConfig JSON) in a ConfigMap that forwards each TCP port to
//!   `<service>.<namespace>.svc:<target>`. containerboot refuses `TS_DEST_IP` with userspace
//!   mode; the serve config needs no privileges. Serve forwards TCP only: UDP ports are an error.
//! - **subnet router**: userspace mode with `TS_ROUTES` (netstack routes subnets unprivileged).
//! - **egress**: `TS_TAILNET_TARGET_IP` / `TS_TAILNET_TARGET_FQDN` (a MagicDNS name with its
//!   trailing dot), which containerboot only supports in kernel mode (it installs DNAT rules):
//!   a privileged container with `TS_USERSPACE=false`, `TS_DEBUG_FIREWALL_MODE=auto` and the
//!   `sysctler` init container of tailscale's docs/k8s/proxy.yaml. The DNAT rule also takes
//!   the kubelet's probes to the pod IP, so `/healthz` is on loopback and probed by `exec`.
//!   The namespace then needs Pod Security `privileged`.
//! - **sidecar**: a kustomize Component adding a userspace `tailscale` container with a serve
//!   config forwarding to `127.0.0.1:<target>`. It cannot use the user's service account, so
//!   its state lives in an `emptyDir` (`TS_KUBE_SECRET=""`, `TS_STATE_DIR`): use a reusable,
//!   ephemeral auth key. `KUBERNETES_SERVICE_HOST=""` keeps containerboot off the API (the
//!   workload may mount no token).
//! - **state**: one Secret per node (`TS_KUBE_SECRET`), emitted empty by tsk8s with Argo CD
//!   `Prune=false` and Flux `ssa: IfNotPresent`, so the Role needs no `create` (which
//!   `resourceNames` cannot restrict): `get, update, patch` on exactly that Secret.
//! - **auth key**: `TS_AUTHKEY` from a `secretKeyRef` to the cluster's auth-key Secret (kubelet
//!   resolves it; the pod needs no RBAC for it). With `external-secrets`, tsk8s emits the
//!   ExternalSecret that creates it; otherwise the Secret is provided by the backend.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Namespace, ObjectFieldSelector, PodSecurityContext,
    PodSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, Service, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Map, Value, json};

use super::k8s::{self, object_name, proto_name};
use super::secrets::{self, SecretRef};
use crate::emit;
use crate::model::{Cluster, EgressTarget, Exposure, ExposureKind, Proto, Tailnet};

/// The auth-key Secret every Tailscale-image node of a cluster reads `TS_AUTHKEY` from.
pub const AUTHKEY_SECRET: &str = "tsk8s-tailscale-authkey";
pub const AUTHKEY_KEY: &str = "TS_AUTHKEY";
pub const CONTAINER_NAME: &str = "tailscale";
/// UID/GID of the unprivileged (userspace) containers, as in tailscale's userspace-sidecar.yaml.
pub const TAILSCALE_UID: i64 = 1000;
/// What the kubelet runs in a kernel-mode (egress) container to probe `/healthz`: the
/// image is Alpine-based (Dockerfile.base: `FROM alpine`), so busybox's `wget` is there. It
/// exits non-zero on a refused connection or an HTTP error (503 until the node has a tailnet IP).
pub const EXEC_PROBE_TOOL: &str = "wget";
pub const SERVE_DIR: &str = "/etc/tsk8s/serve";
pub const SERVE_FILE: &str = "serve.json";
/// containerboot keeps the tailscaled socket and (with a kube Secret) its state dir in `/tmp`.
pub const TMP_DIR: &str = "/tmp";

/// Argo CD: never prune an object a controller writes to at run time.
pub const ARGOCD_SYNC_OPTIONS: (&str, &str) = ("argocd.argoproj.io/sync-options", "Prune=false");
/// Flux: create the object once and then leave it alone.
pub const FLUX_SSA: (&str, &str) = ("kustomize.toolkit.fluxcd.io/ssa", "IfNotPresent");

/// Something the Tailscale image cannot do for an exposure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub exposure: String,
    pub message: String,
    pub help: String,
}

/// A kustomization dir's worth of files (a cluster dir, or a sidecar's Component dir).
#[derive(Clone, Debug, Default)]
pub struct Dir {
    /// (path relative to the dir, text).
    pub files: Vec<(String, String)>,
    /// What its kustomization lists under `resources:` …
    pub resources: Vec<String>,
    /// … and under `generators:` (KSOPS).
    pub generators: Vec<String>,
}

impl Dir {
    fn add(&mut self, name: &str, text: String, resource: bool) {
        self.files.push((name.to_string(), text));
        if resource {
            self.resources.push(name.to_string());
        }
    }

    /// The auth key's backend objects (ExternalSecret, SOPS or SealedSecret file), if any.
    fn add_authkey(
        &mut self,
        t: &Tailnet,
        c: &Cluster,
        cred: SecretRef,
        sources: &BTreeMap<String, Vec<u8>>,
        problems: &mut Vec<Problem>,
    ) {
        match secrets::secret_objects(t, c, &[cred], "", sources) {
            Ok(f) => {
                self.files.extend(f.files);
                self.resources.extend(f.resources);
                self.generators.extend(f.generators);
            }
            Err(ps) => problems.extend(ps.into_iter().map(|p| Problem {
                exposure: p.subject,
                message: p.message,
                help: p.help,
            })),
        }
    }
}

/// The Secret a node reads `TS_AUTHKEY` from: the cluster's shared one, or for a sidecar its
/// own, in the workload's namespace (each Component brings its own, so two never collide).
pub fn authkey_secret_name(e: &Exposure) -> String {
    match e.kind {
        ExposureKind::Sidecar { .. } => format!("tsk8s-{}-authkey", e.id),
        _ => AUTHKEY_SECRET.to_string(),
    }
}

/// The auth-key credential in the secret backend: `tailscale-authkey` for the cluster's nodes,
/// `<sidecar>-authkey` for a sidecar (the remote secret's name, or the source file's).
pub fn authkey_credential(c: &Cluster, e: Option<&Exposure>) -> SecretRef {
    match e.map(|e| (e, &e.kind)) {
        Some((e, ExposureKind::Sidecar { namespace, .. })) => SecretRef::credential(
            &authkey_secret_name(e),
            namespace,
            &format!("{}-authkey", e.id),
            &[AUTHKEY_KEY],
        ),
        _ => SecretRef::credential(
            AUTHKEY_SECRET,
            &c.namespace,
            "tailscale-authkey",
            &[AUTHKEY_KEY],
        ),
    }
}

pub fn state_secret_name(id: &str) -> String {
    format!("tsk8s-{id}-state")
}

pub fn serve_configmap_name(id: &str) -> String {
    format!("tsk8s-{id}-serve")
}

/// Does this exposure need kernel networking (a privileged container)?
pub fn needs_kernel_mode(e: &Exposure) -> bool {
    matches!(e.kind, ExposureKind::Egress { .. })
}

/// The Pod Security level the cluster's namespace needs.
pub fn pod_security_level(c: &Cluster) -> &'static str {
    if c.exposures.iter().any(needs_kernel_mode) {
        "privileged"
    } else {
        "restricted"
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn authkey_env(secret: &str) -> EnvVar {
    EnvVar {
        name: "TS_AUTHKEY".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: AUTHKEY_KEY.into(),
                // Once logged in (state in the Secret), the key is not needed any more.
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The MagicDNS name of a node or device, with its trailing dot: containerboot v1.90.x finds
/// the target with `strings.EqualFold(peer.Name(), TS_TAILNET_TARGET_FQDN)`, and peer names end
/// in a dot (cmd/containerboot/main.go; from v1.94 it adds the dot itself, so it works on both).
/// resolve refuses a name target without `magicdns-suffix`.
fn fqdn(t: &Tailnet, name: &str) -> String {
    let suffix = t.magicdns_suffix.as_deref().unwrap_or(&t.domain);
    format!("{name}.{suffix}.")
}

/// `TS_LOCAL_ADDR_PORT`: all addresses for userspace pods (the kubelet probes the pod IP);
/// loopback for kernel-mode pods, whose DNAT rule takes everything that arrives from outside.
pub fn local_addr_port(c: &Cluster, e: &Exposure) -> String {
    if needs_kernel_mode(e) {
        format!("127.0.0.1:{}", c.health_port)
    } else {
        format!("[::]:{}", c.health_port)
    }
}

/// The serve config (ipn.ServeConfig) forwarding TCP ports to `dest(port)`.
pub fn serve_config(ports: &[(u16, String)]) -> Value {
    let mut tcp = Map::new();
    for (port, dest) in ports {
        tcp.insert(port.to_string(), json!({ "TCPForward": dest }));
    }
    json!({ "TCP": Value::Object(tcp) })
}

fn tcp_only(e: &Exposure, ports: &[crate::model::Port], problems: &mut Vec<Problem>) -> bool {
    let udp: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == Proto::Udp)
        .map(|p| p.port.to_string())
        .collect();
    if udp.is_empty() {
        return true;
    }
    problems.push(Problem {
        exposure: e.id.clone(),
        message: format!(
            "{} {:?} forwards UDP port(s) {}, which the Tailscale image's serve config cannot",
            e.kind.keyword(),
            e.id,
            udp.join(", ")
        ),
        help: "containerboot's TS_SERVE_CONFIG forwards TCP only; use runtime \"tsk8s\" for UDP"
            .into(),
    });
    false
}

/// The containerboot environment of one node, in a fixed order.
fn node_env(t: &Tailnet, c: &Cluster, e: &Exposure, kube_state: bool) -> Vec<EnvVar> {
    let mut v = vec![
        authkey_env(&authkey_secret_name(e)),
        env("TS_AUTH_ONCE", "true"),
    ];
    if kube_state {
        v.push(env("TS_KUBE_SECRET", state_secret_name(&e.id)));
    } else {
        v.push(env("TS_KUBE_SECRET", ""));
        v.push(env("TS_STATE_DIR", TMP_DIR));
        // containerboot builds a Kubernetes client whenever KUBERNETES_SERVICE_HOST is set,
        // even with TS_KUBE_SECRET="" (cmd/containerboot/settings.go `InKubernetes`, main.go
        // `newKubeClient`), and that fails without the service-account files
        // (kube/kubeclient/client.go reads namespace and ca.crt), e.g. in a workload with
        // automountServiceAccountToken: false. The sidecar needs no API: hide it. A variable
        // of the container's own wins over the one the kubelet injects (kubernetes
        // pkg/kubelet/kubelet_pods.go makeEnvironmentVariables: service variables are added
        // only when the container does not define the name).
        v.push(env("KUBERNETES_SERVICE_HOST", ""));
    }
    v.push(env("TS_HOSTNAME", e.hostname.clone()));
    v.push(env(
        "TS_EXTRA_ARGS",
        format!("--advertise-tags={}", e.tags.join(",")),
    ));
    v.push(env(
        "TS_USERSPACE",
        if needs_kernel_mode(e) {
            "false"
        } else {
            "true"
        },
    ));
    if needs_kernel_mode(e) {
        // Let linuxfw pick iptables or nftables from the rules the node has (as tailscale's
        // docs/k8s manifests do); unset, it uses iptables even on nftables-only nodes
        // (util/linuxfw/detector.go).
        v.push(env("TS_DEBUG_FIREWALL_MODE", "auto"));
    }
    match &e.kind {
        ExposureKind::Proxy { .. } | ExposureKind::Sidecar { .. } => {
            v.push(env("TS_SERVE_CONFIG", format!("{SERVE_DIR}/{SERVE_FILE}")));
        }
        ExposureKind::SubnetRouter { routes } => {
            let r: Vec<String> = routes.iter().map(ToString::to_string).collect();
            v.push(env("TS_ROUTES", r.join(",")));
        }
        ExposureKind::Egress { target, .. } => match target {
            EgressTarget::Host(_, ip) => v.push(env("TS_TAILNET_TARGET_IP", ip.to_string())),
            EgressTarget::Device(name) => v.push(env("TS_TAILNET_TARGET_FQDN", fqdn(t, name))),
            EgressTarget::Node(id) => {
                let host = t
                    .exposures()
                    .find(|(_, x)| x.id == *id)
                    .map(|(_, x)| x.hostname.clone())
                    .unwrap_or_else(|| id.clone());
                v.push(env("TS_TAILNET_TARGET_FQDN", fqdn(t, &host)));
            }
        },
    }
    v.push(env("TS_ENABLE_HEALTH_CHECK", "true"));
    v.push(env("TS_LOCAL_ADDR_PORT", local_addr_port(c, e)));
    v.push(env_field("POD_NAME", "metadata.name"));
    v.push(env_field("POD_UID", "metadata.uid"));
    v
}

fn seccomp() -> SeccompProfile {
    k8s::runtime_default_seccomp()
}

fn unprivileged_security() -> SecurityContext {
    k8s::restricted_security(TAILSCALE_UID)
}

fn privileged_security() -> SecurityContext {
    // Since runc 1.2, /dev/net/tun needs `privileged`, not just NET_ADMIN (tailscale docs/k8s).
    SecurityContext {
        privileged: Some(true),
        ..Default::default()
    }
}

fn resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".into(), Quantity("1".into())),
            ("memory".into(), Quantity("256Mi".into())),
        ])),
        ..Default::default()
    }
}

/// The `/healthz` probe. Userspace pods: an HTTP GET on the pod IP. Kernel-mode (egress)
/// pods: containerboot inserts `iptables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT
/// --to-destination <target>` (cmd/containerboot/forwarding.go `installEgressForwardingRule`,
/// util/linuxfw `DNATNonTailscaleTraffic`), which also takes the kubelet's probe to the pod IP;
/// so the probe runs inside the container against loopback, which PREROUTING never DNATs
/// (tests/tailscale_image.rs applies the rule in a network namespace and checks both).
fn probe(c: &Cluster, e: &Exposure, period: i32) -> Probe {
    let mut p = Probe {
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    };
    if needs_kernel_mode(e) {
        p.exec = Some(ExecAction {
            command: Some(vec![
                EXEC_PROBE_TOOL.into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                format!("http://127.0.0.1:{}/healthz", c.health_port),
            ]),
        });
        p.timeout_seconds = Some(3);
    } else {
        p.http_get = Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("ts-health".into()),
            ..Default::default()
        });
    }
    p
}

/// The `tailscale` container of one node.
pub fn container(t: &Tailnet, c: &Cluster, e: &Exposure, kube_state: bool) -> Container {
    let kernel = needs_kernel_mode(e);
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: TMP_DIR.into(),
        ..Default::default()
    }];
    if matches!(
        e.kind,
        ExposureKind::Proxy { .. } | ExposureKind::Sidecar { .. }
    ) {
        // A whole-volume mount (no subPath): containerboot watches the dir for updates.
        mounts.push(VolumeMount {
            name: "serve".into(),
            mount_path: SERVE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // Kernel-mode pods serve /healthz on loopback only: no port to declare.
    let mut ports = Vec::new();
    if !kernel {
        ports.push(ContainerPort {
            name: Some("ts-health".into()),
            container_port: i32::from(c.health_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    if let ExposureKind::Egress { ports: ps, .. } = &e.kind {
        for p in ps {
            if !ports
                .iter()
                .any(|x| x.container_port == i32::from(p.target))
            {
                ports.push(ContainerPort {
                    container_port: i32::from(p.target),
                    protocol: Some(proto_name(p.protocol).into()),
                    ..Default::default()
                });
            }
        }
    }
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(c.image.clone()),
        image_pull_policy: Some("Always".into()),
        env: Some(node_env(t, c, e, kube_state)),
        ports: (!ports.is_empty()).then_some(ports),
        readiness_probe: Some(probe(c, e, 5)),
        liveness_probe: Some(Probe {
            // Logging in can take a while on first start.
            initial_delay_seconds: Some(30),
            ..probe(c, e, 20)
        }),
        resources: Some(resources()),
        security_context: Some(if kernel {
            privileged_security()
        } else {
            unprivileged_security()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The privileged init container of tailscale's docs/k8s/proxy.yaml: kernel-mode forwarding
/// needs IP forwarding on in the pod's network namespace.
fn sysctler(image: &str) -> Container {
    Container {
        name: "sysctler".into(),
        image: Some(image.to_string()),
        image_pull_policy: Some("Always".into()),
        command: Some(vec!["/bin/sh".into(), "-c".into()]),
        args: Some(vec![
            "sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1".into(),
        ]),
        security_context: Some(privileged_security()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("1m".into())),
                ("memory".into(), Quantity("1Mi".into())),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// App label of Tailscale-image workloads.
const APP: &str = "tailscale";

fn node_labels(id: &str) -> BTreeMap<String, String> {
    k8s::labels_for(APP, Some(id))
}

/// Object metadata with tsk8s's labels (`app.kubernetes.io/name: tailscale` for nodes).
pub fn meta(name: &str, namespace: Option<&str>, id: Option<&str>) -> ObjectMeta {
    k8s::meta_for(APP, name, namespace, id)
}

fn volumes(e: &Exposure) -> Vec<Volume> {
    let mut v = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    if matches!(
        e.kind,
        ExposureKind::Proxy { .. } | ExposureKind::Sidecar { .. }
    ) {
        v.push(Volume {
            name: "serve".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: serve_configmap_name(&e.id),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    v
}

pub fn deployment(t: &Tailnet, c: &Cluster, e: &Exposure) -> Deployment {
    let id = e.id.as_str();
    let kernel = needs_kernel_mode(e);
    let pod_security = if kernel {
        PodSecurityContext {
            seccomp_profile: Some(seccomp()),
            ..Default::default()
        }
    } else {
        PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(TAILSCALE_UID),
            run_as_group: Some(TAILSCALE_UID),
            fs_group: Some(TAILSCALE_UID),
            seccomp_profile: Some(seccomp()),
            ..Default::default()
        }
    };
    // One state Secret, one pod.
    k8s::single_pod_deployment(
        meta(&object_name(id), Some(&c.namespace), Some(id)),
        id,
        node_labels(id),
        PodSpec {
            service_account_name: Some(object_name(id)),
            // containerboot reads and writes its state Secret through the API.
            automount_service_account_token: Some(true),
            enable_service_links: Some(false),
            security_context: Some(pod_security),
            init_containers: kernel.then(|| vec![sysctler(&c.image)]),
            containers: vec![container(t, c, e, true)],
            volumes: Some(volumes(e)),
            ..Default::default()
        },
    )
}

/// The node's state Secret, created empty by tsk8s and then owned by containerboot.
pub fn state_secret(c: &Cluster, id: &str) -> Secret {
    let mut m = meta(&state_secret_name(id), Some(&c.namespace), Some(id));
    m.annotations = Some(BTreeMap::from([
        (ARGOCD_SYNC_OPTIONS.0.into(), ARGOCD_SYNC_OPTIONS.1.into()),
        (FLUX_SSA.0.into(), FLUX_SSA.1.into()),
    ]));
    Secret {
        metadata: m,
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

pub fn service_account(c: &Cluster, id: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(&object_name(id), Some(&c.namespace), Some(id)),
        ..Default::default()
    }
}

/// `get, update, patch` on exactly the node's state Secret: containerboot checks get and
/// update (required) and patch (to use the Secret as its state store); no `create`, since tsk8s
/// emits the Secret; no events (optional for containerboot, and `create` on events cannot be
/// limited by name).
pub fn role(c: &Cluster, id: &str) -> Role {
    Role {
        metadata: meta(&object_name(id), Some(&c.namespace), Some(id)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(vec![state_secret_name(id)]),
            verbs: vec!["get".into(), "update".into(), "patch".into()],
            ..Default::default()
        }]),
    }
}

pub fn role_binding(c: &Cluster, id: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(&object_name(id), Some(&c.namespace), Some(id)),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: object_name(id),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: object_name(id),
            namespace: Some(c.namespace.clone()),
            ..Default::default()
        }]),
    }
}

pub fn serve_configmap(namespace: &str, id: &str, config: &Value) -> ConfigMap {
    let mut text =
        serde_json::to_string_pretty(config).expect("string-keyed JSON always serializes");
    text.push('\n');
    ConfigMap {
        metadata: meta(&serve_configmap_name(id), Some(namespace), Some(id)),
        data: Some(BTreeMap::from([(SERVE_FILE.to_string(), text)])),
        ..Default::default()
    }
}

/// For egress nodes: the in-cluster Service. containerboot DNATs everything that reaches the
/// pod to the target and keeps the port, so the Service maps `port` to `target`.
pub fn egress_service(c: &Cluster, e: &Exposure) -> Option<Service> {
    let ExposureKind::Egress { ports, .. } = &e.kind else {
        return None;
    };
    let meta = meta(&e.id, Some(&c.namespace), Some(&e.id));
    Some(k8s::cluster_ip_service(
        meta,
        &e.id,
        ports.iter().map(|p| (p.protocol, p.port, p.target)),
    ))
}

pub fn namespace(c: &Cluster) -> Namespace {
    let mut m = meta(&c.namespace, None, None);
    let level = pod_security_level(c);
    if let Some(l) = m.labels.as_mut() {
        for mode in ["enforce", "audit", "warn"] {
            l.insert(format!("pod-security.kubernetes.io/{mode}"), level.into());
        }
    }
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

/// A sidecar: a kustomize Component the user's kustomization includes. It adds the `tailscale`
/// container (userspace, state in an emptyDir) and its volumes to their workload and brings the
/// serve ConfigMap; it does not touch pod-level settings.
fn sidecar_component(
    t: &Tailnet,
    c: &Cluster,
    e: &Exposure,
    sources: &BTreeMap<String, Vec<u8>>,
    problems: &mut Vec<Problem>,
) -> Dir {
    let ExposureKind::Sidecar {
        namespace,
        workload,
        workload_kind,
        ports,
        ..
    } = &e.kind
    else {
        return Dir::default();
    };
    // No service account of ours in their pod: state in the emptyDir, no API access.
    let mut container = container(t, c, e, false);
    if let Some(m) = container.volume_mounts.as_mut() {
        for v in m.iter_mut() {
            v.name = format!("tsk8s-{}", v.name);
        }
    }
    let mut vols = volumes(e);
    for v in &mut vols {
        v.name = format!("tsk8s-{}", v.name);
    }
    let serve = serve_config(
        &ports
            .iter()
            .map(|p| (p.port, format!("127.0.0.1:{}", p.target)))
            .collect::<Vec<_>>(),
    );
    let patch = k8s::sidecar_patch(workload_kind, workload, namespace, &e.id, &container, &vols);
    // The pod reads TS_AUTHKEY from a Secret in its own namespace, which the Component brings
    // (when the backend makes objects).
    let mut d = Dir::default();
    d.add(
        "resources.yaml",
        emit::yaml(&serve_configmap(namespace, &e.id, &serve)),
        true,
    );
    d.add_authkey(t, c, authkey_credential(c, Some(e)), sources, problems);
    let mut kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": d.resources,
        "patches": [{ "path": "patch.yaml", "target": { "kind": workload_kind, "name": workload, "namespace": namespace } }],
    });
    secrets::add_generators(&mut kustomization, &d.generators);
    d.add("kustomization.yaml", emit::yaml(&kustomization), false);
    d.add("patch.yaml", emit::yaml(&patch), false);
    d
}

/// Every file of a Tailscale-image cluster's dir (sidecar Components under
/// `components/<id>/`), or what the image and the secret backend cannot do.
pub fn cluster_files(
    t: &Tailnet,
    c: &Cluster,
    sources: &BTreeMap<String, Vec<u8>>,
) -> Result<Dir, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut dir = Dir::default();
    dir.add("namespace.yaml", emit::yaml(&namespace(c)), true);
    if c.exposures
        .iter()
        .any(|e| !matches!(e.kind, ExposureKind::Sidecar { .. }))
    {
        dir.add_authkey(t, c, authkey_credential(c, None), sources, &mut problems);
    }
    for e in &c.exposures {
        if let ExposureKind::Sidecar { ports, .. } = &e.kind {
            if tcp_only(e, ports, &mut problems) {
                let comp = sidecar_component(t, c, e, sources, &mut problems);
                for (name, text) in comp.files {
                    dir.add(&format!("components/{}/{name}", e.id), text, false);
                }
            }
            continue;
        }
        let id = e.id.as_str();
        let mut docs = vec![
            emit::yaml(&service_account(c, id)),
            emit::yaml(&role(c, id)),
            emit::yaml(&role_binding(c, id)),
            emit::yaml(&state_secret(c, id)),
        ];
        if let ExposureKind::Proxy {
            namespace,
            service,
            ports,
        } = &e.kind
        {
            if !tcp_only(e, ports, &mut problems) {
                continue;
            }
            let serve = serve_config(
                &ports
                    .iter()
                    .map(|p| (p.port, format!("{service}.{namespace}.svc:{}", p.target)))
                    .collect::<Vec<_>>(),
            );
            docs.push(emit::yaml(&serve_configmap(&c.namespace, id, &serve)));
        }
        docs.push(emit::yaml(&deployment(t, c, e)));
        if let Some(s) = egress_service(c, e) {
            docs.push(emit::yaml(&s));
        }
        dir.add(&format!("{id}.yaml"), emit::yaml_docs(&docs), true);
    }
    if problems.is_empty() {
        Ok(dir)
    } else {
        Err(problems)
    }
}

/// Write a Tailscale-image cluster's dir into the tree (the hook `build::build` calls); what
/// cannot be done on the Tailscale image comes back as diagnostics, sorted.
pub fn write(
    tree: &mut emit::Tree,
    t: &Tailnet,
    c: &Cluster,
    spans: &crate::resolve::Spans,
    sources: &std::collections::BTreeMap<String, Vec<u8>>,
    (spec_file, spec): (&str, &str),
) -> Result<(), crate::diag::Diagnostics> {
    let dir_files = match cluster_files(t, c, sources) {
        Ok(f) => f,
        Err(problems) => {
            let mut d = crate::diag::Diagnostics::new(spec_file, spec);
            for p in problems {
                let span = spans
                    .exposures
                    .get(&p.exposure)
                    .or_else(|| spans.clusters.get(&c.name))
                    .copied()
                    .unwrap_or_else(|| (0..0).into());
                d.push(
                    crate::diag::Diagnostic::new(span, p.message)
                        .label("not possible for this Tailscale-image node")
                        .help(p.help),
                );
            }
            d.sort();
            return Err(d);
        }
    };
    let dir = format!("clusters/{}", c.name);
    for (name, text) in dir_files.files {
        emit::put(tree, format!("{dir}/{name}"), text);
    }
    let mut kustomization = emit::kustomization(&dir_files.resources);
    secrets::add_generators(&mut kustomization, &dir_files.generators);
    emit::put(
        tree,
        format!("{dir}/kustomization.yaml"),
        emit::yaml(&kustomization),
    );
    Ok(())
}
