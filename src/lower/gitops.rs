//! `DIR/gitops/`: the objects Argo CD or Flux need to pick up `DIR/clusters/<cluster>/` with no
//! hand-written glue. These CRDs are not in k8s-openapi, so they are built as JSON values with
//! a fixed key order.
//!
//! - Argo CD (one instance manages every cluster): `gitops/argocd/<cluster>.yaml`, one
//!   `Application` per cluster, or with `application-set=#true` one
//!   `gitops/argocd/applicationset.yaml` with a list generator over all clusters; plus
//!   `gitops/argocd/kustomization.yaml` listing them (point an app-of-apps at the dir).
//! - Flux (each cluster runs its own controllers): `gitops/flux/<cluster>/tsk8s.yaml`, one
//!   `Kustomization` per cluster, with SOPS `decryption` when the cluster's secret backend is
//!   `sops`; plus `gitops/flux/<cluster>/kustomization.yaml`, so the cluster's bootstrap
//!   Kustomization can include `./<path>/gitops/flux/<cluster>`.
//!
//! Objects carry `app.kubernetes.io/managed-by: tsk8s` (no version: no churn on upgrades).

use serde_json::{Map, Value, json};

use crate::emit::{self, Tree};
use crate::model::{Cluster, Gitops, GitopsFlavour, SecretBackend, Tailnet};

/// Argo CD's name for the cluster it runs in.
pub const IN_CLUSTER_SERVER: &str = "https://kubernetes.default.svc";
/// The GitRepository `flux bootstrap` creates.
pub const FLUX_DEFAULT_SOURCE: &str = "flux-system";
/// The Secret holding the age identity Flux decrypts SOPS files with.
pub const SOPS_AGE_SECRET: &str = "sops-age";

fn labels() -> Value {
    json!({ "app.kubernetes.io/managed-by": "tsk8s" })
}

/// Name of the Argo CD Application / Flux Kustomization for a cluster.
pub fn object_name(cluster: &str) -> String {
    format!("tsk8s-{cluster}")
}

/// A DNS-1123 label from the tailnet's name (which is free text): lowercase, runs of other
/// characters → `-`, at most 57 characters (`tsk8s-` + 57 = 63).
pub fn label_of(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(57).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("tailnet");
    }
    out
}

/// Path of a cluster's output dir inside the GitOps repository.
pub fn cluster_path(g: &Gitops, cluster: &str) -> String {
    if g.path.is_empty() {
        format!("clusters/{cluster}")
    } else {
        format!("{}/clusters/{cluster}", g.path)
    }
}

/// Argo CD destination for a cluster: `("name", …)` or `("server", …)` (default: in-cluster).
fn argocd_destination(c: &Cluster) -> (&'static str, String) {
    match (&c.gitops.argocd_name, &c.gitops.argocd_server) {
        (Some(n), _) => ("name", n.clone()),
        (None, Some(s)) => ("server", s.clone()),
        (None, None) => ("server", IN_CLUSTER_SERVER.to_string()),
    }
}

fn sync_policy() -> Value {
    json!({
        "automated": { "prune": true, "selfHeal": true },
        // tsk8s emits the Namespace itself (with its Pod Security labels). Server-side apply:
        // client-side apply keeps a copy of each object in an annotation capped at 256 KiB,
        // which a cluster's mesh ConfigMap can outgrow.
        "syncOptions": ["CreateNamespace=false", "ServerSideApply=true"],
    })
}

/// An `Application`'s spec (and an `ApplicationSet` template's): the repository's `path` at
/// the configured revision, synced to `destination`.
fn application_spec(
    g: &Gitops,
    project: &str,
    path: &str,
    destination: Map<String, Value>,
) -> Value {
    json!({
        "project": project,
        "source": {
            "repoURL": g.repo_url,
            "targetRevision": g.revision,
            "path": path,
        },
        "destination": Value::Object(destination),
        "syncPolicy": sync_policy(),
    })
}

/// One Argo CD `Application` for a cluster.
pub fn argocd_application(g: &Gitops, project: &str, namespace: &str, c: &Cluster) -> Value {
    let (key, dest) = argocd_destination(c);
    let mut destination = Map::new();
    destination.insert(key.into(), Value::String(dest));
    destination.insert("namespace".into(), Value::String(c.namespace.clone()));
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": object_name(&c.name),
            "namespace": namespace,
            "labels": labels(),
        },
        "spec": application_spec(g, project, &cluster_path(g, &c.name), destination),
    })
}

/// One Argo CD `ApplicationSet` over all clusters (list generator, Go templates).
pub fn argocd_application_set(t: &Tailnet, g: &Gitops, project: &str, namespace: &str) -> Value {
    let elements: Vec<Value> = t
        .clusters
        .iter()
        .map(|c| {
            let (key, dest) = argocd_destination(c);
            json!({
                "cluster": c.name,
                "namespace": c.namespace,
                "path": cluster_path(g, &c.name),
                "destinationKind": key,
                "destination": dest,
            })
        })
        .collect();
    let kinds: Vec<&str> = t.clusters.iter().map(|c| argocd_destination(c).0).collect();
    let uniform = kinds.windows(2).all(|w| w.first() == w.last());
    let first_kind = kinds.first().copied().unwrap_or("server");
    let mut destination = Map::new();
    if uniform {
        destination.insert(first_kind.into(), json!("{{ .destination }}"));
    }
    destination.insert("namespace".into(), json!("{{ .namespace }}"));
    let mut spec = Map::new();
    spec.insert("goTemplate".into(), json!(true));
    spec.insert("goTemplateOptions".into(), json!(["missingkey=error"]));
    spec.insert(
        "generators".into(),
        json!([{ "list": { "elements": elements } }]),
    );
    spec.insert(
        "template".into(),
        json!({
            "metadata": {
                "name": "tsk8s-{{ .cluster }}",
                "labels": labels(),
            },
            "spec": application_spec(g, project, "{{ .path }}", destination),
        }),
    );
    if !uniform {
        // Some clusters are named, others addressed by server URL: a destination carries
        // exactly one of the two.
        spec.insert(
            "templatePatch".into(),
            json!(
                "spec:\n  destination:\n    {{ .destinationKind }}: {{ .destination | quote }}\n"
            ),
        );
    }
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "ApplicationSet",
        "metadata": {
            "name": object_name(&label_of(&t.name)),
            "namespace": namespace,
            "labels": labels(),
        },
        "spec": Value::Object(spec),
    })
}

/// One Flux `Kustomization` for a cluster.
pub fn flux_kustomization(g: &Gitops, namespace: &str, interval: &str, c: &Cluster) -> Value {
    let mut source = Map::new();
    source.insert("kind".into(), json!("GitRepository"));
    source.insert(
        "name".into(),
        json!(
            c.gitops
                .flux_source
                .clone()
                .unwrap_or_else(|| FLUX_DEFAULT_SOURCE.into())
        ),
    );
    if let Some(ns) = &c.gitops.flux_namespace {
        source.insert("namespace".into(), json!(ns));
    }
    let mut spec = Map::new();
    spec.insert("interval".into(), json!(interval));
    spec.insert(
        "path".into(),
        json!(format!("./{}", cluster_path(g, &c.name))),
    );
    spec.insert("prune".into(), json!(true));
    spec.insert("sourceRef".into(), Value::Object(source));
    if matches!(c.secrets, SecretBackend::Sops { .. }) {
        spec.insert(
            "decryption".into(),
            json!({ "provider": "sops", "secretRef": { "name": SOPS_AGE_SECRET } }),
        );
    }
    json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {
            "name": object_name(&c.name),
            "namespace": namespace,
            "labels": labels(),
        },
        "spec": Value::Object(spec),
    })
}

/// Write `gitops/` into the tree (nothing when the spec has no `gitops` node).
pub fn write(tree: &mut Tree, t: &Tailnet) {
    let Some(g) = &t.gitops else {
        return;
    };
    match &g.flavour {
        GitopsFlavour::ArgoCd {
            application_set,
            project,
            namespace,
        } => {
            let mut resources = Vec::new();
            if *application_set {
                if !t.clusters.is_empty() {
                    let name = "applicationset.yaml".to_string();
                    emit::put(
                        tree,
                        format!("gitops/argocd/{name}"),
                        emit::yaml(&argocd_application_set(t, g, project, namespace)),
                    );
                    resources.push(name);
                }
            } else {
                for c in &t.clusters {
                    let name = format!("{}.yaml", c.name);
                    emit::put(
                        tree,
                        format!("gitops/argocd/{name}"),
                        emit::yaml(&argocd_application(g, project, namespace, c)),
                    );
                    resources.push(name);
                }
            }
            emit::put(
                tree,
                "gitops/argocd/kustomization.yaml".into(),
                emit::yaml(&emit::kustomization(&resources)),
            );
        }
        GitopsFlavour::Flux {
            namespace,
            interval,
        } => {
            for c in &t.clusters {
                let dir = format!("gitops/flux/{}", c.name);
                emit::put(
                    tree,
                    format!("{dir}/tsk8s.yaml"),
                    emit::yaml(&flux_kustomization(g, namespace, interval, c)),
                );
                emit::put(
                    tree,
                    format!("{dir}/kustomization.yaml"),
                    emit::yaml(&emit::kustomization(&["tsk8s.yaml".to_string()])),
                );
            }
        }
    }
}
