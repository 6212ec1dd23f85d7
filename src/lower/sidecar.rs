//! Sidecars: a kustomize `Component` that the user's own kustomization includes. It adds the
//! runtime container, its volumes and one pod label to their workload with a strategic-merge
//! patch, and brings the node's ConfigMap and UDP Service. It never touches pod-level settings
//! (security context, service account, replicas): the container carries its own security
//! context.

use serde_json::{Value, json};
use tsk8s_policy::runtime_config::{MeshConfig, NodeConfig};

use super::k8s::{self, NODE_DIR, RUNTIME_UID};
use crate::model::{Cluster, Exposure, ExposureKind};

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
    let service = k8s::wireguard_service(c, namespace, &e.id, node.listen_port);
    let patch = k8s::sidecar_patch(
        workload_kind,
        workload,
        namespace,
        &e.id,
        &container,
        &volumes,
    );
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": ["resources.yaml"],
        "patches": [{ "path": "patch.yaml", "target": { "kind": workload_kind, "name": workload, "namespace": namespace } }],
    });
    Some(SidecarComponent {
        kustomization,
        resources: vec![
            serde_json::to_value(&configmap).unwrap_or(Value::Null),
            serde_json::to_value(&service).unwrap_or(Value::Null),
        ],
        patch,
    })
}
