//! Sidecars: a kustomize `Component` that the user's own kustomization includes. It adds the
//! runtime container, its volumes and one pod label to their workload with a strategic-merge
//! patch, and brings the node's ConfigMap and UDP Service. Its ConfigMap carries the node's own
//! mesh (`mesh::node_mesh`: only its peers, rules and DNS records), not the cluster's, so a
//! Component grows with that sidecar's peers. It never touches pod-level settings
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
use tsk8s_policy::runtime_config::{MeshConfig, NodeConfig};

use super::k8s::{self, NODE_DIR, RUNTIME_UID};
use crate::model::{Cluster, Exposure, ExposureKind, Publish, SidecarStyle};

pub struct SidecarComponent {
    pub kustomization: Value,
    pub resources: Vec<Value>,
    pub patch: Value,
}

pub fn component(
    c: &Cluster,
    e: &Exposure,
    node: &NodeConfig,
    mesh: &MeshConfig,
) -> Option<SidecarComponent> {
    let ExposureKind::Sidecar {
        namespace,
        workload,
        workload_kind,
        ..
    } = &e.kind
    else {
        return None;
    };
    let mut container = k8s::runtime_container(&c.image, node, NODE_DIR, &[]);
    // Its admin server listens on 127.0.0.1 only (any pod may reach the app pod's IP): no
    // admin port, probes run the binary's own health check inside the container.
    if let Some(ports) = container.ports.as_mut() {
        ports.retain(|p| p.name.as_deref() != Some("admin"));
    }
    container.readiness_probe = Some(k8s::exec_probe(5));
    container.liveness_probe = Some(k8s::exec_probe(20));
    let native = c.sidecar_style == SidecarStyle::Native;
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
    let mut volumes = k8s::runtime_volumes(&e.id, false);
    // No fsGroup of ours in their pod: the key file must be readable by our UID without it.
    // Only our container mounts this volume.
    for v in &mut volumes {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode = Some(0o444);
        }
    }
    let configmap = k8s::node_configmap(namespace, &e.id, node, Some(mesh));
    let service = k8s::wireguard_service(c, namespace, e, node.listen_port);
    // Relayed by the gateway: its WireGuard port from the gateway's pod.
    let policy = (c.publish == Publish::Gateway)
        .then(|| k8s::sidecar_network_policy(c, namespace, &e.id, node.listen_port));
    let mut patch = k8s::sidecar_patch(
        workload_kind,
        workload,
        namespace,
        &e.id,
        &container,
        &volumes,
    );
    if native
        && let Some(pod) = patch
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
    if workload_kind == "Deployment"
        && let Some(spec) = patch.pointer_mut("/spec").and_then(Value::as_object_mut)
    {
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
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["resources.yaml"],
        "patches": [{ "path": "patch.yaml", "target": { "kind": workload_kind, "name": workload, "namespace": namespace } }],
    });
    Some(SidecarComponent {
        kustomization,
        resources: [
            serde_json::to_value(&configmap),
            serde_json::to_value(&service),
        ]
        .into_iter()
        .chain(policy.iter().map(serde_json::to_value))
        .map(|v| v.unwrap_or(Value::Null))
        .collect(),
        patch,
    })
}
