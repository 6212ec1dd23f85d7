//! Kubernetes objects for a cluster on the tsk8s runtime, as typed `k8s-openapi` values.
//!
//! Per cluster: Namespace (Pod Security `restricted`), ServiceAccount (no token), the shared
//! mesh as ConfigMaps `tsk8s-mesh-<n>` (one per shard, mounted through one projected volume).
//! Per node: its ConfigMap, a one-replica `Recreate` Deployment running
//! tsk8s-runtime (non-root, read-only root filesystem, no capabilities, seccomp
//! RuntimeDefault, probes, requests and limits, config mounted as whole volumes so updates
//! arrive), its UDP Service and a NetworkPolicy. Per sidecar: a kustomize Component.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceFieldSelector, ResourceRequirements,
    SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Sysctl, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tsk8s_policy::runtime_config::{NODE_FILE, NodeConfig, PRIVATE_KEY_FILE, mesh_shard_file};

use super::mesh::ADMIN_PORT;
use crate::model::{Cluster, Exposure, ExposureKind, GATEWAY_NAME, Port, Proto, Publish};

pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tsk8s");
pub const NODE_LABEL: &str = "tsk8s.dev/node";
pub const RUNTIME_UID: i64 = 65532;
pub const SERVICE_ACCOUNT: &str = "tsk8s";
/// The cluster's mesh ConfigMaps are `tsk8s-mesh-<n>`, one per shard.
pub const MESH_CONFIGMAP: &str = "tsk8s-mesh";
/// The projected volume that brings every mesh shard into [`MESH_DIR`].
pub const MESH_VOLUME: &str = "tsk8s-mesh";
pub const CONTAINER_NAME: &str = "tsk8s-runtime";
pub const NODE_DIR: &str = "/etc/tsk8s/node";
pub const MESH_DIR: &str = "/etc/tsk8s/mesh";
pub const KEY_DIR: &str = "/var/run/secrets/tsk8s";

pub fn object_name(id: &str) -> String {
    format!("tsk8s-{id}")
}

pub fn key_secret_name(id: &str) -> String {
    format!("tsk8s-{id}-key")
}

/// Labels of every object tsk8s owns; nodes add `app.kubernetes.io/name: <app>` and their id.
pub fn labels_for(app: &str, id: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    l.insert("app.kubernetes.io/part-of".to_string(), "tsk8s".to_string());
    if let Some(id) = id {
        l.insert("app.kubernetes.io/name".to_string(), app.to_string());
        l.insert("app.kubernetes.io/instance".to_string(), id.to_string());
        l.insert(NODE_LABEL.to_string(), id.to_string());
    }
    l
}

fn labels(id: Option<&str>) -> BTreeMap<String, String> {
    labels_for(CONTAINER_NAME, id)
}

/// Object metadata with tsk8s's labels for a workload of `app`.
pub fn meta_for(app: &str, name: &str, namespace: Option<&str>, id: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels_for(app, id)),
        ..Default::default()
    }
}

pub fn meta(name: &str, namespace: Option<&str>, id: Option<&str>) -> ObjectMeta {
    meta_for(CONTAINER_NAME, name, namespace, id)
}

/// The pod selector of a node's workload.
pub fn selector(id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(NODE_LABEL.to_string(), id.to_string())])
}

pub fn namespace(c: &Cluster) -> Namespace {
    let mut m = meta(&c.namespace, None, None);
    if let Some(l) = m.labels.as_mut() {
        for mode in ["enforce", "audit", "warn"] {
            l.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".to_string(),
            );
        }
    }
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

pub fn service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(SERVICE_ACCOUNT, Some(namespace), None),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// A Kubernetes object (or a part of one) as a JSON value. Every k8s-openapi type serializes:
/// string keys, no non-finite floats (a `Null` was put in its place before).
pub fn json_value<T: serde::Serialize + ?Sized>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("k8s-openapi objects always serialize to JSON (string keys)")
}

fn json_pretty<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("string-keyed JSON always serializes");
    s.push('\n');
    s
}

/// The name of shard `n`'s ConfigMap of the mesh whose ConfigMaps are `<prefix>-<n>`.
pub fn mesh_shard_name(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n}")
}

/// The ConfigMaps of a mesh's shards (`tsk8s_policy::runtime_config::shard_mesh`): shard `n`
/// is ConfigMap `<prefix>-<n>` holding the file `mesh-<n>.jsonl`.
pub fn mesh_configmaps(
    prefix: &str,
    namespace: &str,
    shards: &[String],
    id: Option<&str>,
) -> Vec<ConfigMap> {
    shards
        .iter()
        .enumerate()
        .map(|(n, text)| ConfigMap {
            metadata: meta(&mesh_shard_name(prefix, n), Some(namespace), id),
            data: Some(BTreeMap::from([(
                mesh_shard_file(u32::try_from(n).unwrap_or(u32::MAX)),
                text.clone(),
            )])),
            ..Default::default()
        })
        .collect()
}

pub fn node_configmap(namespace: &str, id: &str, node: &NodeConfig) -> ConfigMap {
    ConfigMap {
        metadata: meta(&object_name(id), Some(namespace), Some(id)),
        data: Some(BTreeMap::from([(NODE_FILE.to_string(), json_pretty(node))])),
        ..Default::default()
    }
}

/// Seccomp `RuntimeDefault`, as Pod Security `restricted` requires.
pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    }
}

/// A container security context that meets Pod Security `restricted` (plus a read-only root
/// filesystem), running as `uid`.
pub fn restricted_security(uid: i64) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// A strategic-merge patch that adds `container`, `volumes` and the node label to a user's
/// workload, leaving its pod-level settings alone (sidecars of both targets).
pub fn sidecar_patch(
    kind: &str,
    workload: &str,
    namespace: &str,
    id: &str,
    container: &Container,
    volumes: &[Volume],
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": { "name": workload, "namespace": namespace },
        "spec": { "template": {
            "metadata": { "labels": { NODE_LABEL: id } },
            "spec": {
                "containers": [json_value(container)],
                "volumes": json_value(volumes),
            }
        }}
    })
}

pub fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("admin".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Probe timeout: the admin server answers within milliseconds even under slow clients.
const PROBE_TIMEOUT_SECONDS: i32 = 3;

/// An `exec` probe running the runtime binary's own health check against its loopback-only
/// admin port (sidecars, whose admin server is not on the pod IP).
pub fn exec_probe(period: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                RUNTIME_BINARY.into(),
                "health".into(),
                "--addr".into(),
                format!("127.0.0.1:{ADMIN_PORT}"),
            ]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// The runtime binary inside its image (`runtime/Dockerfile`).
pub const RUNTIME_BINARY: &str = "/tsk8s-runtime";

/// The ports every runtime container declares: its WireGuard UDP port and the admin port.
pub fn runtime_ports(wireguard: u16) -> Vec<ContainerPort> {
    vec![
        ContainerPort {
            name: Some("wireguard".into()),
            container_port: i32::from(wireguard),
            protocol: Some("UDP".into()),
            ..Default::default()
        },
        ContainerPort {
            name: Some("admin".into()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        },
    ]
}

/// The runtime container: node.json at [`NODE_DIR`], the mesh's shards at [`MESH_DIR`] (one
/// projected volume, [`runtime_volumes`]), the private key at [`KEY_DIR`].
pub fn runtime_container(
    image: &str,
    node: &NodeConfig,
    extra_ports: &[ContainerPort],
) -> Container {
    let mut ports = runtime_ports(node.listen_port);
    ports.extend(extra_ports.iter().cloned());
    let mounts = vec![
        VolumeMount {
            name: "tsk8s-node".into(),
            mount_path: NODE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: MESH_VOLUME.into(),
            mount_path: MESH_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tsk8s-key".into(),
            mount_path: KEY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(image.to_string()),
        image_pull_policy: Some("Always".into()),
        args: Some(vec![
            "--node".into(),
            format!("{NODE_DIR}/{NODE_FILE}"),
            "--mesh".into(),
            MESH_DIR.into(),
            "--private-key-file".into(),
            format!("{KEY_DIR}/{PRIVATE_KEY_FILE}"),
        ]),
        ports: Some(ports),
        env: Some(vec![memory_limit_env()]),
        readiness_probe: Some(http_probe("/healthz", 5)),
        liveness_probe: Some(http_probe("/healthz", 20)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("50m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), Quantity("1".into())),
                ("memory".into(), Quantity("128Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(restricted_security(RUNTIME_UID)),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

/// The mesh's projected volume: its `shards` ConfigMaps `<mesh_prefix>-<n>` in one directory,
/// which the kubelet updates atomically (one `..data` swap for all shards).
pub fn mesh_volume(mesh_prefix: &str, shards: usize) -> Volume {
    Volume {
        name: MESH_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                (0..shards.max(1))
                    .map(|n| VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: mesh_shard_name(mesh_prefix, n),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The runtime's volumes: its node ConfigMap, the mesh ([`mesh_volume`]), its key Secret.
pub fn runtime_volumes(id: &str, mesh_prefix: &str, shards: usize) -> Vec<Volume> {
    vec![
        Volume {
            name: "tsk8s-node".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: object_name(id),
                ..Default::default()
            }),
            ..Default::default()
        },
        mesh_volume(mesh_prefix, shards),
        Volume {
            name: "tsk8s-key".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(key_secret_name(id)),
                // Readable by the runtime's group only (fsGroup), never world-readable.
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// Kubernetes' spelling of a protocol.
pub fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

/// The security context of a pod running `tsk8s-runtime` (per-node pods and the gateway):
/// non-root as [`RUNTIME_UID`], seccomp `RuntimeDefault`. With `pings` (a subnet router in
/// the pod), `net.ipv4.ping_group_range` lets it answer ICMP echo through unprivileged ping
/// sockets (without it, ping depends on the container runtime's default); that sysctl is safe
/// (allowed under Pod Security `restricted`).
pub fn runtime_pod_security(pings: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUNTIME_UID),
        run_as_group: Some(RUNTIME_UID),
        fs_group: Some(RUNTIME_UID),
        seccomp_profile: Some(runtime_default_seccomp()),
        sysctls: pings.then(|| {
            vec![Sysctl {
                name: "net.ipv4.ping_group_range".into(),
                value: format!("{RUNTIME_UID} {RUNTIME_UID}"),
            }]
        }),
        ..Default::default()
    }
}

/// `TSK8S_MEMORY_LIMIT` from the runtime container's own memory limit: the runtime budgets its
/// connection buffers to half of it.
pub fn memory_limit_env() -> EnvVar {
    EnvVar {
        name: "TSK8S_MEMORY_LIMIT".into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(CONTAINER_NAME.into()),
                resource: "limits.memory".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Deployment of exactly one pod, replaced rather than doubled on an update (`Recreate`,
/// one replica): a tailnet node's key and state must never be live in two pods. `id` selects
/// the pod, whose labels are `pod_labels` (they include the selector's).
pub fn single_pod_deployment(
    metadata: ObjectMeta,
    id: &str,
    pod_labels: BTreeMap<String, String>,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector(id)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Deployment of a node in its own pod; `mesh_shards` is how many shards the cluster's mesh
/// has.
pub fn deployment(c: &Cluster, e: &Exposure, node: &NodeConfig, mesh_shards: usize) -> Deployment {
    let id = e.id.as_str();
    let extra_ports: Vec<ContainerPort> = match &e.kind {
        ExposureKind::Egress { ports, .. } => ports
            .iter()
            .map(|p| ContainerPort {
                container_port: i32::from(p.port),
                protocol: Some(proto_name(p.protocol).into()),
                ..Default::default()
            })
            .collect(),
        _ => vec![],
    };
    single_pod_deployment(
        meta(&object_name(id), Some(&c.namespace), Some(id)),
        id,
        labels(Some(id)),
        PodSpec {
            service_account_name: Some(SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(runtime_pod_security(matches!(
                e.kind,
                ExposureKind::SubnetRouter { .. }
            ))),
            containers: vec![runtime_container(&c.image, node, &extra_ports)],
            volumes: Some(runtime_volumes(id, MESH_CONFIGMAP, mesh_shards)),
            ..Default::default()
        },
    )
}

/// external-dns's annotation: the DNS name it points at the Service's load balancer.
pub const EXTERNAL_DNS_HOSTNAME: &str = "external-dns.alpha.kubernetes.io/hostname";
/// MetalLB (0.14.9+; older releases read the `metallb.universe.tf/` prefix): Services with
/// the same sharing key may share an address (on distinct ports, all `Cluster` traffic
/// policy), and the address they ask for.
pub const METALLB_ALLOW_SHARED_IP: &str = "metallb.io/allow-shared-ip";
pub const METALLB_LOAD_BALANCER_IPS: &str = "metallb.io/loadBalancerIPs";

/// The Service that publishes node `e`'s WireGuard UDP port where the cluster's endpoint
/// says: a LoadBalancer (annotated for external-dns with the node's own host when the endpoint
/// is a `{node}` template, for MetalLB with the shared address when `shared-ip` is given) or a
/// NodePort. The user's `service-annotations` come first; tsk8s's own keys win. Under
/// `publish="gateway"` only sidecars have one: a ClusterIP Service the gateway relays to
/// ([`relay_service`]).
pub fn wireguard_service(c: &Cluster, namespace: &str, e: &Exposure, port: u16) -> Service {
    let id = e.id.as_str();
    let meta = meta(&object_name(id), Some(namespace), Some(id));
    match c.publish {
        Publish::Gateway => relay_service(meta, pod_selector(e), port),
        Publish::LoadBalancer | Publish::NodePort => {
            let host = c.endpoint_per_node().then(|| c.endpoint_host(&e.hostname));
            published_service(c, meta, pod_selector(e), port, host)
        }
    }
}

/// Kubernetes' label on each pod of a StatefulSet naming it (`<workload>-<ordinal>`).
pub const STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";

/// The pods of node `e`: its own label, or for one pod of a StatefulSet sidecar with
/// `replicas=N` that pod by name (they share the template, so one label for all).
pub fn pod_selector(e: &Exposure) -> BTreeMap<String, String> {
    match &e.kind {
        ExposureKind::Sidecar {
            workload,
            set: Some(s),
            ..
        } => BTreeMap::from([(
            STATEFULSET_POD_NAME.to_string(),
            format!("{workload}-{}", s.ordinal),
        )]),
        _ => selector(&e.id),
    }
}

/// The cluster's one published Service under `publish="gateway"`: a LoadBalancer on the
/// gateway's port (annotated for external-dns with the endpoint when it is a host name).
pub fn gateway_service(c: &Cluster) -> Service {
    let meta = meta(
        &object_name(GATEWAY_NAME),
        Some(&c.namespace),
        Some(GATEWAY_NAME),
    );
    let host = c
        .endpoint
        .parse::<std::net::IpAddr>()
        .is_err()
        .then(|| c.endpoint.clone());
    published_service(c, meta, selector(GATEWAY_NAME), c.gateway_port, host)
}

/// A UDP Service published outside the cluster the cluster's way (`publish`, the
/// `service-annotations`, class, source ranges, shared address), on `port`; `host` is the name
/// external-dns should point at it.
fn published_service(
    c: &Cluster,
    mut meta: ObjectMeta,
    selector: BTreeMap<String, String>,
    port: u16,
    host: Option<String>,
) -> Service {
    let mut annotations: BTreeMap<String, String> =
        c.services.annotations.iter().cloned().collect();
    let (type_, node_port) = match c.publish {
        Publish::LoadBalancer | Publish::Gateway => ("LoadBalancer", None),
        Publish::NodePort => ("NodePort", Some(i32::from(port))),
    };
    let load_balancer = type_ == "LoadBalancer";
    if let (true, Some(host)) = (load_balancer, host) {
        annotations.insert(EXTERNAL_DNS_HOSTNAME.into(), host);
    }
    if let (true, Some(ip)) = (load_balancer, c.services.shared_ip) {
        annotations.insert(METALLB_ALLOW_SHARED_IP.into(), object_name(&c.name));
        annotations.insert(METALLB_LOAD_BALANCER_IPS.into(), ip.to_string());
    }
    if !annotations.is_empty() {
        meta.annotations = Some(annotations);
    }
    let ranges: Vec<String> = c
        .services
        .load_balancer_source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            // `Local` keeps peers' real source addresses (WireGuard learns roaming endpoints
            // from them); NodePorts and MetalLB sharing need `Cluster` (see docs/deploying.md).
            external_traffic_policy: Some(c.external_traffic_policy().into()),
            load_balancer_class: c
                .services
                .load_balancer_class
                .clone()
                .filter(|_| load_balancer),
            load_balancer_source_ranges: (load_balancer && !ranges.is_empty()).then_some(ranges),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("wireguard".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                node_port,
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ClusterIP Service the gateway relays a sidecar's WireGuard datagrams to (the relay's
/// `target`), on the sidecar's own port.
pub fn relay_service(meta: ObjectMeta, selector: BTreeMap<String, String>, port: u16) -> Service {
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("wireguard".into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("UDP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `host:port` of a sidecar's relay Service, as the gateway dials it.
pub fn relay_target(service: &str, namespace: &str, port: u16) -> String {
    format!("{service}.{namespace}.svc:{port}")
}

/// For egress nodes: the in-cluster Service other workloads connect to (the runtime listens on
/// each `port` itself).
pub fn egress_service(c: &Cluster, e: &Exposure) -> Option<Service> {
    let ExposureKind::Egress { ports, .. } = &e.kind else {
        return None;
    };
    let meta = meta(&e.id, Some(&c.namespace), Some(&e.id));
    // Under a gateway the egress node's listeners are in the gateway's pod.
    let pod = if c.in_gateway(e) { GATEWAY_NAME } else { &e.id };
    Some(cluster_ip_service(
        meta,
        pod,
        ports.iter().map(|p| (p.protocol, p.port, p.port)),
    ))
}

/// A ClusterIP Service selecting node `id`'s pod, with (protocol, port, target port) entries.
pub fn cluster_ip_service(
    meta: ObjectMeta,
    id: &str,
    ports: impl Iterator<Item = (Proto, u16, u16)>,
) -> Service {
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(id)),
            ports: Some(
                ports
                    .map(|(proto, port, target)| ServicePort {
                        name: Some(format!("{}-{port}", proto.as_str())),
                        port: i32::from(port),
                        target_port: Some(IntOrString::Int(i32::from(target))),
                        protocol: Some(proto_name(proto).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn np_port(proto: &str, port: Option<u16>) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(proto.into()),
        port: port.map(|p| IntOrString::Int(i32::from(p))),
        ..Default::default()
    }
}

fn ns_peer(ns: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".into(),
                ns.into(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ip_block_peer(net: &IpNet) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: net.to_string(),
            except: None,
        }),
        ..Default::default()
    }
}

/// The ports a proxy may reach on its target's pods. NetworkPolicy sees the packet after the
/// Service's DNAT, at the pod's port: each `pod-port` given, and any port of a protocol for
/// which some port has none (the Service port alone would block a Service mapping 80 → 3000).
fn proxy_pod_ports(ports: &[Port]) -> Vec<NetworkPolicyPort> {
    let mut any: Vec<Proto> = ports
        .iter()
        .filter(|p| p.pod_port.is_none())
        .map(|p| p.protocol)
        .collect();
    any.sort();
    any.dedup();
    let mut exact: Vec<(Proto, u16)> = ports
        .iter()
        .filter(|p| !any.contains(&p.protocol))
        .filter_map(|p| Some((p.protocol, p.pod_port?)))
        .collect();
    exact.sort();
    exact.dedup();
    any.iter()
        .map(|p| np_port(proto_name(*p), None))
        .chain(exact.iter().map(|(p, n)| np_port(proto_name(*p), Some(*n))))
        .collect()
}

/// Egress to the cluster's DNS.
fn dns_egress() -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".into(),
                    "kube-system".into(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("k8s-app".into(), "kube-dns".into())])),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![np_port("UDP", Some(53)), np_port("TCP", Some(53))]),
    }
}

/// What node `e` needs besides its WireGuard port and DNS: (ingress, egress) rules. Egress is
/// written for packets after Service DNAT (a proxy's target pods at their pod port; a router
/// over the Service CIDR to the pod CIDR).
fn node_rules(
    c: &Cluster,
    e: &Exposure,
) -> (Vec<NetworkPolicyIngressRule>, Vec<NetworkPolicyEgressRule>) {
    let mut ingress = Vec::new();
    let mut egress = Vec::new();
    match &e.kind {
        ExposureKind::Proxy {
            namespace, ports, ..
        } => {
            egress.push(NetworkPolicyEgressRule {
                to: Some(vec![ns_peer(namespace)]),
                ports: Some(proxy_pod_ports(ports)),
            });
        }
        ExposureKind::SubnetRouter { routes } => {
            let mut to: Vec<NetworkPolicyPeer> = routes.iter().map(ip_block_peer).collect();
            // Packets to a Service address are DNATed to a pod address before NetworkPolicy
            // sees them: a route over the Service CIDR (resolve requires pod-cidr then) lets the
            // router out to the pod CIDR. NetworkPolicy leaves it undefined whether ipBlock
            // matches pod addresses (Cilium's does not), so all pods are selected as well.
            let into_cluster = |net: Option<IpNet>| {
                net.is_some_and(|n| routes.iter().any(|r| r.contains(&n) || n.contains(r)))
            };
            if into_cluster(c.service_cidr) || into_cluster(c.pod_cidr) {
                if let Some(pods) = c.pod_cidr
                    && !routes.iter().any(|r| r.contains(&pods))
                {
                    to.push(ip_block_peer(&pods));
                }
                to.push(NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    ..Default::default()
                });
            }
            egress.push(NetworkPolicyEgressRule {
                to: Some(to),
                ports: None,
            });
        }
        ExposureKind::Egress { ports, .. } => {
            ingress.push(NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector::default()),
                    ..Default::default()
                }]),
                ports: Some(
                    ports
                        .iter()
                        .map(|p| np_port(proto_name(p.protocol), Some(p.port)))
                        .collect(),
                ),
            });
        }
        ExposureKind::Sidecar { .. } => {}
    }
    (ingress, egress)
}

/// Egress to peers' published WireGuard ports, anywhere.
fn peers_egress(peer_ports: &[u16]) -> Option<NetworkPolicyEgressRule> {
    if peer_ports.is_empty() {
        return None;
    }
    Some(NetworkPolicyEgressRule {
        to: Some(vec![
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "0.0.0.0/0".into(),
                    except: None,
                }),
                ..Default::default()
            },
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: "::/0".into(),
                    except: None,
                }),
                ..Default::default()
            },
        ]),
        ports: Some(
            peer_ports
                .iter()
                .map(|p| np_port("UDP", Some(*p)))
                .collect(),
        ),
    })
}

fn node_policy(
    namespace: &str,
    id: &str,
    ingress: Vec<NetworkPolicyIngressRule>,
    egress: Vec<NetworkPolicyEgressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(&object_name(id), Some(namespace), Some(id)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(id)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

/// Admit the node's UDP port; let it reach only its targets, its peers' endpoints and DNS.
pub fn network_policy(
    c: &Cluster,
    e: &Exposure,
    node: &NodeConfig,
    peer_ports: &[u16],
) -> NetworkPolicy {
    let (extra_in, extra_out) = node_rules(c, e);
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![np_port("UDP", Some(node.listen_port))]),
        ..Default::default()
    }];
    ingress.extend(extra_in);
    let mut egress = vec![dns_egress()];
    egress.extend(extra_out);
    egress.extend(peers_egress(peer_ports));
    node_policy(&c.namespace, &e.id, ingress, egress)
}

/// A sidecar the gateway relays to: its namespace, pod selector and WireGuard port.
pub struct RelayPod<'a> {
    pub namespace: &'a str,
    pub pods: BTreeMap<String, String>,
    pub port: u16,
}

/// The gateway's pod: its one UDP port in (and its egress nodes' listeners); out, the union of
/// what its nodes need (each rule once), DNS, peers' endpoints and each relayed sidecar's pod
/// at its WireGuard port.
pub fn gateway_network_policy(
    c: &Cluster,
    nodes: &[&Exposure],
    peer_ports: &[u16],
    relays: &[RelayPod],
) -> NetworkPolicy {
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![np_port("UDP", Some(c.gateway_port))]),
        ..Default::default()
    }];
    let mut egress = vec![dns_egress()];
    for e in nodes {
        let (i, o) = node_rules(c, e);
        for r in i {
            if !ingress.contains(&r) {
                ingress.push(r);
            }
        }
        for r in o {
            if !egress.contains(&r) {
                egress.push(r);
            }
        }
    }
    for r in relays {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: ns_peer(r.namespace).namespace_selector,
                pod_selector: Some(LabelSelector {
                    match_labels: Some(r.pods.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ports: Some(vec![np_port("UDP", Some(r.port))]),
        });
    }
    egress.extend(peers_egress(peer_ports));
    node_policy(&c.namespace, GATEWAY_NAME, ingress, egress)
}
