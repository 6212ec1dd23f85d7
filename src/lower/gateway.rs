//! `publish="gateway"`: per cluster one runtime Deployment, `tsk8s-gateway`, that owns the
//! cluster's single public WireGuard UDP port behind one `LoadBalancer` Service. It terminates
//! WireGuard for every proxy, subnet router and egress node of the cluster (each keeps its own
//! key, addresses, filter and lock entry) and relays the datagrams of every sidecar, unchanged,
//! to the sidecar's pod through a ClusterIP Service (its `relay` target). The contract is
//! `tsk8s_policy::runtime_config::GatewayConfig`: ConfigMap `tsk8s-gateway` holds
//! `gateway.json`, every terminated node's key Secret is projected into one volume at
//! `GATEWAY_KEY_DIR/<node>/private-key`, and the cluster's mesh shards are mounted as for the
//! per-node pods (one projected volume, `k8s::mesh_volume`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, KeyToPath, PodSpec,
    ProjectedVolumeSource, ResourceRequirements, SecretProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tsk8s_policy::runtime_config::{
    GATEWAY_FILE, GATEWAY_KEY_DIR, GatewayConfig, NodeConfig, PRIVATE_KEY_FILE, Relay,
};

use super::k8s::{
    self, CONTAINER_NAME, MESH_CONFIGMAP, MESH_DIR, MESH_VOLUME, RUNTIME_UID, SERVICE_ACCOUNT,
    key_secret_name, meta, object_name,
};
use super::mesh::ADMIN_PORT;
use crate::model::{Cluster, Exposure, ExposureKind, GATEWAY_NAME};

/// Where `gateway.json` is mounted in the gateway's pod.
pub const GATEWAY_DIR: &str = "/etc/tsk8s/gateway";

/// `gateway.json`: the terminated nodes (`nodes`: their `node.json`, listen port already the
/// gateway's) and the relayed sidecars.
pub fn config(c: &Cluster, nodes: Vec<NodeConfig>, relays: Vec<Relay>) -> GatewayConfig {
    GatewayConfig {
        listen_port: c.gateway_port,
        admin_listen: format!("0.0.0.0:{ADMIN_PORT}"),
        nodes,
        relays,
    }
}

pub fn configmap(c: &Cluster, cfg: &GatewayConfig) -> ConfigMap {
    let mut text = serde_json::to_string_pretty(cfg).expect("string-keyed JSON always serializes");
    text.push('\n');
    ConfigMap {
        metadata: meta(
            &object_name(GATEWAY_NAME),
            Some(&c.namespace),
            Some(GATEWAY_NAME),
        ),
        data: Some(BTreeMap::from([(GATEWAY_FILE.to_string(), text)])),
        ..Default::default()
    }
}

/// The gateway's Deployment: one replica (two would fight over the keys' sessions),
/// `Recreate`, the runtime pods' hardening (non-root, read-only root, no capabilities, seccomp
/// RuntimeDefault, no service account token, httpGet probes on the admin port); `mesh_shards` is
/// how many shards the cluster's mesh has.
pub fn deployment(
    c: &Cluster,
    nodes: &[(&Exposure, &NodeConfig)],
    mesh_shards: usize,
) -> Deployment {
    let ports = gateway_ports(c, nodes);
    let volumes = gateway_volumes(nodes, mesh_shards);
    let relays_only = nodes.is_empty();
    let container = gateway_container(c, ports, relays_only);
    // Subnet routers answer ICMP echo through unprivileged ping sockets.
    let routes = nodes
        .iter()
        .any(|(e, _)| matches!(e.kind, ExposureKind::SubnetRouter { .. }));
    k8s::single_pod_deployment(
        meta(
            &object_name(GATEWAY_NAME),
            Some(&c.namespace),
            Some(GATEWAY_NAME),
        ),
        GATEWAY_NAME,
        k8s::labels_for(CONTAINER_NAME, Some(GATEWAY_NAME)),
        PodSpec {
            service_account_name: Some(SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(k8s::runtime_pod_security(routes)),
            containers: vec![container],
            volumes: Some(volumes),
            ..Default::default()
        },
    )
}

/// The gateway's ports: the runtime's, and every egress node's.
fn gateway_ports(c: &Cluster, nodes: &[(&Exposure, &NodeConfig)]) -> Vec<ContainerPort> {
    let mut ports = k8s::runtime_ports(c.gateway_port);
    for (e, _) in nodes {
        if let ExposureKind::Egress { ports: eps, .. } = &e.kind {
            ports.extend(eps.iter().map(|p| ContainerPort {
                container_port: i32::from(p.port),
                protocol: Some(k8s::proto_name(p.protocol).into()),
                ..Default::default()
            }));
        }
    }
    ports
}

/// `gateway.json`, the mesh shards and (unless it only relays) the terminated nodes' keys.
fn gateway_volumes(nodes: &[(&Exposure, &NodeConfig)], mesh_shards: usize) -> Vec<Volume> {
    let keys: Vec<VolumeProjection> = nodes
        .iter()
        .map(|(e, n)| VolumeProjection {
            secret: Some(SecretProjection {
                name: key_secret_name(&e.id),
                items: Some(vec![KeyToPath {
                    key: PRIVATE_KEY_FILE.into(),
                    path: format!("{}/{PRIVATE_KEY_FILE}", n.name),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let relays_only = keys.is_empty();
    let mut volumes = vec![
        Volume {
            name: "tsk8s-gateway".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: object_name(GATEWAY_NAME),
                ..Default::default()
            }),
            ..Default::default()
        },
        k8s::mesh_volume(MESH_CONFIGMAP, mesh_shards),
        Volume {
            name: "tsk8s-keys".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(keys),
                // Readable by the runtime's group only (fsGroup), never world-readable.
                default_mode: Some(0o440),
            }),
            ..Default::default()
        },
    ];
    if relays_only {
        volumes.retain(|v| v.name != "tsk8s-keys");
    }
    volumes
}

/// The gateway's runtime container; `relays_only`: no keys to mount.
fn gateway_container(c: &Cluster, ports: Vec<ContainerPort>, relays_only: bool) -> Container {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(c.image.clone()),
        image_pull_policy: Some("Always".into()),
        args: Some(vec![
            "gateway".into(),
            "--config".into(),
            format!("{GATEWAY_DIR}/{GATEWAY_FILE}"),
            "--mesh".into(),
            MESH_DIR.into(),
        ]),
        ports: Some(ports),
        env: Some(vec![k8s::memory_limit_env()]),
        readiness_probe: Some(k8s::http_probe("/healthz", 5)),
        liveness_probe: Some(k8s::http_probe("/healthz", 20)),
        // One process for all of the cluster's nodes: more room than one node's pod.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("memory".into(), Quantity("512Mi".into())),
            ])),
            ..Default::default()
        }),
        security_context: Some(k8s::restricted_security(RUNTIME_UID)),
        volume_mounts: Some(
            [
                mount("tsk8s-gateway", GATEWAY_DIR),
                mount(MESH_VOLUME, MESH_DIR),
                mount("tsk8s-keys", GATEWAY_KEY_DIR),
            ]
            .into_iter()
            .filter(|m| !(relays_only && m.name == "tsk8s-keys"))
            .collect(),
        ),
        ..Default::default()
    }
}

/// Whether the cluster runs a gateway: `publish="gateway"` and at least one node.
pub fn has_gateway(c: &Cluster) -> bool {
    c.publish == crate::model::Publish::Gateway && !c.exposures.is_empty()
}
