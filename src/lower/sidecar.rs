//! Sidecars: a kustomize `Component` that the user's own kustomization includes. It adds the
//! runtime container, its volumes and one pod label to their workload with a strategic-merge
//! patch, and brings the node's ConfigMap and UDP Service (`resources.yaml`) and the node's own
//! mesh (`mesh::node_mesh`: only its peers, rules and DNS records), not the cluster's, as shard
//! ConfigMaps `tsk8s-<node>-mesh-<n>` (`mesh-<n>.yaml`, one per file, mounted through one
//! projected volume), so a Component grows with that sidecar's peers. It never touches pod-level settings
//! (security context, service account): the container carries its own security context.
//!
//! The runtime is a native sidecar by default (`sidecar-style="native"`): an init container
//! with `restartPolicy: Always` (Kubernetes 1.29+) and a startup probe, so it is up before the
//! app's containers start and `kubectl logs/exec` default to the app, not to it.
//! `sidecar-style="container"` keeps a plain container for older clusters.
//!
//! A sidecar node has one key and one address, so its workload runs one pod: for a Deployment
//! the patch pins `replicas: 1` and `strategy: Recreate` (a rolling update would run two pods
//! with one key for a while).

use serde_json::{Value, json};
use tsk8s_policy::runtime_config::NodeConfig;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, ProjectedVolumeSource, SecretProjection, Volume, VolumeProjection,
};
use tsk8s_policy::runtime_config::{NODE_FILE, PRIVATE_KEY_FILE, mesh_shard_file};

use super::k8s::{self, KEY_DIR, MESH_DIR, MESH_VOLUME, NODE_DIR, RUNTIME_UID};
use crate::model::{Cluster, Exposure, ExposureKind, SidecarStyle};

pub struct SidecarComponent {
    pub kustomization: Value,
    pub resources: Vec<Value>,
    /// The shard ConfigMaps of the nodes' meshes, one per file: (file name, object).
    pub mesh: Vec<(String, Value)>,
    pub patch: Value,
}

/// The name prefix of a sidecar node's mesh ConfigMaps (`tsk8s-<node>-mesh-<n>`).
pub fn mesh_prefix(id: &str) -> String {
    format!("{}-mesh", k8s::object_name(id))
}

/// The Component of one sidecar node, or of the N nodes of a StatefulSet sidecar with
/// `replicas=N` (`members` in ordinal order, their meshes' shards beside them): then every pod mounts all N
/// node configs and keys (projected volumes, `<ordinal>/…`) and picks its own by its ordinal,
/// `apps.kubernetes.io/pod-index` through the downward API and `$(TSK8S_POD_INDEX)` in the
/// container's args; each node gets a Service selecting its pod by name.
pub fn component(
    c: &Cluster,
    members: &[(&Exposure, &NodeConfig)],
    meshes: &[Vec<String>],
) -> Option<SidecarComponent> {
    let (e, node) = *members.first()?;
    let ExposureKind::Sidecar {
        namespace,
        workload,
        workload_kind,
        set,
        ..
    } = &e.kind
    else {
        return None;
    };
    let native = c.sidecar_style == SidecarStyle::Native;
    let mut container = sidecar_container(&c.image, node, native);
    let mut volumes = sidecar_volumes(e, meshes);
    let label = match set {
        Some(s) => {
            pick_by_ordinal(&mut container, &mut volumes, members, meshes);
            s.base.clone()
        }
        None => e.id.clone(),
    };
    let (resources, mesh) = node_objects(c, namespace, members, meshes);
    let e_id = label;
    let mut patch = k8s::sidecar_patch(
        workload_kind,
        workload,
        namespace,
        &e_id,
        &container,
        &volumes,
    );
    if native {
        as_init_containers(&mut patch);
    }
    if workload_kind == "Deployment" {
        pin_one_replica(&mut patch);
    }
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": std::iter::once("resources.yaml")
            .chain(mesh.iter().map(|(f, _)| f.as_str()))
            .collect::<std::collections::BTreeSet<_>>(),
        "patches": [{ "path": "patch.yaml", "target": { "kind": workload_kind, "name": workload, "namespace": namespace } }],
    });
    Some(SidecarComponent {
        kustomization,
        resources,
        mesh,
        patch,
    })
}

/// The runtime container of a sidecar: no admin port, exec probes, our UID; a native
/// sidecar restarts always and has a startup probe.
fn sidecar_container(image: &str, node: &NodeConfig, native: bool) -> Container {
    let mut container = k8s::runtime_container(image, node, &[]);
    // Its admin server listens on 127.0.0.1 only (any pod may reach the app pod's IP): no
    // admin port, probes run the binary's own health check inside the container.
    if let Some(ports) = container.ports.as_mut() {
        ports.retain(|p| p.name.as_deref() != Some("admin"));
    }
    container.readiness_probe = Some(k8s::exec_probe(5));
    container.liveness_probe = Some(k8s::exec_probe(20));
    if native {
        container.restart_policy = Some("Always".into());
        // The app's containers start once this succeeds (the runtime's config is loaded and
        // its UDP socket bound); up to a minute.
        let mut startup = k8s::exec_probe(1);
        startup.failure_threshold = Some(60);
        container.startup_probe = Some(startup);
    }
    if let Some(sc) = container.security_context.as_mut() {
        sc.run_as_user = Some(RUNTIME_UID);
        sc.run_as_group = Some(RUNTIME_UID);
    }
    container
}

/// The runtime's volumes in the user's pod, the key readable without an fsGroup.
fn sidecar_volumes(e: &Exposure, meshes: &[Vec<String>]) -> Vec<Volume> {
    let mut volumes = k8s::runtime_volumes(
        &e.id,
        &mesh_prefix(&e.id),
        meshes.first().map_or(1, Vec::len),
    );
    // No fsGroup of ours in their pod: the key file must be readable by our UID without it.
    // Only our container mounts this volume.
    for v in &mut volumes {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode = Some(0o444);
        }
    }
    volumes
}

/// Each node's ConfigMap and UDP Service (`resources.yaml`), and its mesh shard ConfigMaps
/// with their file names.
fn node_objects(
    c: &Cluster,
    namespace: &str,
    members: &[(&Exposure, &NodeConfig)],
    meshes: &[Vec<String>],
) -> (Vec<Value>, Vec<(String, Value)>) {
    let mut resources = Vec::new();
    let mut mesh = Vec::new();
    for ((me, mnode), shards) in members.iter().zip(meshes) {
        resources.push(k8s::json_value(&k8s::node_configmap(
            namespace, &me.id, mnode,
        )));
        for (n, cm) in k8s::mesh_configmaps(&mesh_prefix(&me.id), namespace, shards, Some(&me.id))
            .iter()
            .enumerate()
        {
            let file = match &me.kind {
                ExposureKind::Sidecar { set: Some(s), .. } => {
                    format!("mesh-{}-{n}.yaml", s.ordinal)
                }
                _ => format!("mesh-{n}.yaml"),
            };
            mesh.push((file, k8s::json_value(cm)));
        }
        resources.push(k8s::json_value(&k8s::wireguard_service(
            c,
            namespace,
            me,
            mnode.listen_port,
        )));
        // Relayed by the gateway. No NetworkPolicy selects the app's pod: the first one would
        // isolate it for all ingress (its ingress controller included). WireGuard on this
        // port admits only peers with a key; docs/deploying.md says what to add in a
        // default-deny namespace.
    }
    (resources, mesh)
}

/// A native sidecar: the patch's container goes under `initContainers`.
fn as_init_containers(patch: &mut Value) {
    if let Some(pod) = patch
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
    {
        *pod = std::mem::take(pod)
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "containers" => ("initContainers".to_string(), v),
                _ => (k, v),
            })
            .collect();
    }
}

/// A Deployment's sidecar node has one key: the patch pins one pod, replaced (not rolled).
fn pin_one_replica(patch: &mut Value) {
    if let Some(spec) = patch.pointer_mut("/spec").and_then(Value::as_object_mut) {
        let mut pinned = serde_json::Map::new();
        pinned.insert("replicas".into(), json!(1));
        // `rollingUpdate: null` deletes the user's rolling-update settings, which the API
        // server rejects beside `type: Recreate`.
        pinned.insert(
            "strategy".into(),
            json!({ "type": "Recreate", "rollingUpdate": null }),
        );
        pinned.extend(std::mem::take(spec));
        *spec = pinned;
    }
}

/// Environment variable holding the pod's ordinal in a StatefulSet sidecar's container.
pub const POD_INDEX_ENV: &str = "TSK8S_POD_INDEX";
/// The label Kubernetes (1.28+) puts on each StatefulSet pod with its ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// Every node of the set in the pod (configs and keys under `<ordinal>/`); the container's
/// args pick its own through `$(TSK8S_POD_INDEX)`, which the kubelet expands.
fn pick_by_ordinal(
    container: &mut Container,
    volumes: &mut [Volume],
    members: &[(&Exposure, &NodeConfig)],
    meshes: &[Vec<String>],
) {
    let ordinal = |e: &Exposure| match &e.kind {
        ExposureKind::Sidecar { set: Some(s), .. } => s.ordinal,
        _ => 0,
    };
    let own = format!("$({POD_INDEX_ENV})");
    container.args = Some(vec![
        "--node".into(),
        format!("{NODE_DIR}/{own}/{NODE_FILE}"),
        "--mesh".into(),
        format!("{MESH_DIR}/{own}"),
        "--private-key-file".into(),
        format!("{KEY_DIR}/{own}/{PRIVATE_KEY_FILE}"),
    ]);
    container.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: POD_INDEX_ENV.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: format!("metadata.labels['{POD_INDEX_LABEL}']"),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Each pod binds only its own node's port; all are listed.
    container.ports = Some(
        members
            .iter()
            .map(|(e, n)| ContainerPort {
                name: Some(format!("wireguard-{}", ordinal(e))),
                container_port: i32::from(n.listen_port),
                protocol: Some("UDP".into()),
                ..Default::default()
            })
            .collect(),
    );
    let item = |key: &str, path: String| KeyToPath {
        key: key.into(),
        path,
        ..Default::default()
    };
    let configs: Vec<VolumeProjection> = members
        .iter()
        .map(|(e, _)| VolumeProjection {
            config_map: Some(ConfigMapProjection {
                name: k8s::object_name(&e.id),
                items: Some(vec![item(NODE_FILE, format!("{}/{NODE_FILE}", ordinal(e)))]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let keys: Vec<VolumeProjection> = members
        .iter()
        .map(|(e, _)| VolumeProjection {
            secret: Some(SecretProjection {
                name: k8s::key_secret_name(&e.id),
                items: Some(vec![item(
                    PRIVATE_KEY_FILE,
                    format!("{}/{PRIVATE_KEY_FILE}", ordinal(e)),
                )]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    // Every node's mesh shards under `<ordinal>/mesh-<n>.jsonl`, in the one mesh volume.
    let mut shards: Vec<VolumeProjection> = Vec::new();
    for ((e, _), texts) in members.iter().zip(meshes) {
        for n in 0..texts.len() {
            let file = mesh_shard_file(u32::try_from(n).unwrap_or(u32::MAX));
            shards.push(VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: k8s::mesh_shard_name(&mesh_prefix(&e.id), n),
                    items: Some(vec![item(&file, format!("{}/{file}", ordinal(e)))]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }
    for v in volumes.iter_mut() {
        if v.name == MESH_VOLUME {
            v.projected = Some(ProjectedVolumeSource {
                sources: Some(shards.clone()),
                default_mode: None,
            });
        } else if v.config_map.is_some() {
            v.config_map = None;
            v.projected = Some(ProjectedVolumeSource {
                sources: Some(configs.clone()),
                default_mode: None,
            });
        } else if v.secret.is_some() {
            v.secret = None;
            v.projected = Some(ProjectedVolumeSource {
                sources: Some(keys.clone()),
                // Readable by our UID without an fsGroup of ours (only our container mounts it).
                default_mode: Some(0o444),
            });
        }
    }
}
