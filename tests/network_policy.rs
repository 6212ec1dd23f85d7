//! NetworkPolicy semantics, judged the way CNIs apply them: to the packet after the Service's
//! DNAT, at the destination pod's address and port.
//!
//! A small evaluator of `networking.k8s.io/v1` egress (pod selectors, namespace selectors,
//! ipBlock with `except`, ports with protocol and `endPort`) decides, given the NetworkPolicy
//! objects a build emits, whether a packet from a node's pod is admitted. It runs in two
//! flavours, because NetworkPolicy leaves undefined whether `ipBlock` matches pod addresses:
//! Calico-like (it does) and Cilium-like (it does not; only selectors reach pods).
//!
//! For every proxy and subnet router of every example and golden spec on the tsk8s runtime:
//! - a proxy's packet to its target's pods (in the Service's namespace, at the pod port) is
//!   admitted, and the same packet to a pod of another namespace is not;
//! - a router's packet to an address of each route is admitted; where a route covers the
//!   Service CIDR, so is its packet to a pod (the Service's DNAT target) at any port;
//!   a packet to an address outside its routes and the cluster is not;
//! - under `publish="gateway"` the gateway's pod is the source of every node it terminates
//!   (its egress is their union: a proxy's other-namespace check is left out, and counted,
//!   where a router of the same gateway reaches every pod), it may send UDP to each relayed
//!   sidecar's pod at its relay port, and that pod admits it (tsk8s never isolates an app's pod).

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Value, json};
use tsk8s::build;
use tsk8s::model::{Cluster, ExposureKind, Proto, Publish, RuntimeKind};

// ---------------------------------------------------------------------------------------------
// The evaluator

/// Whether `ipBlock` matches pod addresses (Calico) or only addresses outside the cluster's
/// pods (Cilium).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    IpBlockMatchesPods,
    IpBlockExternalOnly,
}

const FLAVOURS: [Flavour; 2] = [Flavour::IpBlockMatchesPods, Flavour::IpBlockExternalOnly];

/// The source pod of a packet.
struct Pod {
    namespace: String,
    labels: BTreeMap<String, String>,
}

/// Where a packet goes, after DNAT.
#[derive(Clone, Debug)]
enum Dest {
    Pod {
        ip: IpAddr,
        namespace: String,
        labels: BTreeMap<String, String>,
    },
    External {
        ip: IpAddr,
    },
}

impl Dest {
    fn ip(&self) -> IpAddr {
        match self {
            Dest::Pod { ip, .. } | Dest::External { ip } => *ip,
        }
    }
}

#[derive(Clone, Debug)]
struct Packet {
    dest: Dest,
    protocol: &'static str,
    port: u16,
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A `LabelSelector` against a label set (`{}` selects everything).
fn selects(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in labels_of(&sel["matchLabels"]) {
        if labels.get(&k) != Some(&v) {
            return false;
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let have = labels.get(key).map(String::as_str);
        let ok = match e["operator"].as_str().unwrap_or_default() {
            "In" => have.is_some_and(|h| values.contains(&h)),
            "NotIn" => !have.is_some_and(|h| values.contains(&h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            other => panic!("unknown selector operator {other:?}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn in_cidr(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<IpNet>()
        .unwrap_or_else(|e| panic!("bad CIDR {cidr:?} in a NetworkPolicy: {e}"))
        .contains(&ip)
}

fn peer_matches(peer: &Value, policy_ns: &str, d: &Dest, flavour: Flavour) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        if matches!(d, Dest::Pod { .. }) && flavour == Flavour::IpBlockExternalOnly {
            return false;
        }
        let ip = d.ip();
        let cidr = block["cidr"].as_str().unwrap_or_default();
        let except = block["except"].as_array().into_iter().flatten();
        return in_cidr(cidr, ip) && !except.filter_map(Value::as_str).any(|c| in_cidr(c, ip));
    }
    let Dest::Pod {
        namespace, labels, ..
    } = d
    else {
        // Selectors select pods only.
        return false;
    };
    let ns_ok = match peer.get("namespaceSelector") {
        Some(sel) => {
            let ns_labels =
                BTreeMap::from([("kubernetes.io/metadata.name".to_string(), namespace.clone())]);
            selects(sel, &ns_labels)
        }
        None => namespace == policy_ns,
    };
    let pod_ok = match peer.get("podSelector") {
        Some(sel) => selects(sel, labels),
        None => true,
    };
    ns_ok && pod_ok
}

fn port_matches(p: &Value, pkt: &Packet) -> bool {
    if p["protocol"].as_str().unwrap_or("TCP") != pkt.protocol {
        return false;
    }
    match &p["port"] {
        Value::Null => true,
        Value::Number(n) => {
            let lo = n.as_u64().unwrap_or(0);
            let hi = p["endPort"].as_u64().unwrap_or(lo);
            (lo..=hi).contains(&u64::from(pkt.port))
        }
        // Named ports are resolved against the destination pod's container ports; tsk8s emits
        // none, so a named port here is a finding, not a match.
        other => panic!("named port {other} in an egress rule"),
    }
}

/// Is `pkt` from `src` let out by `policies` (all NetworkPolicy objects of the cluster)?
fn egress_admitted(policies: &[Value], src: &Pod, pkt: &Packet, flavour: Flavour) -> bool {
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"].as_str() == Some(src.namespace.as_str()))
        .filter(|p| selects(&p["spec"]["podSelector"], &src.labels))
        .filter(|p| match p["spec"]["policyTypes"].as_array() {
            Some(t) => t.iter().any(|t| t == "Egress"),
            None => p["spec"].get("egress").is_some(),
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|p| {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        p["spec"]["egress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let to_ok = match rule["to"].as_array() {
                    None => true,
                    Some(peers) if peers.is_empty() => true,
                    Some(peers) => peers
                        .iter()
                        .any(|peer| peer_matches(peer, ns, &pkt.dest, flavour)),
                };
                let ports_ok = match rule["ports"].as_array() {
                    None => true,
                    Some(ports) if ports.is_empty() => true,
                    Some(ports) => ports.iter().any(|p| port_matches(p, pkt)),
                };
                to_ok && ports_ok
            })
    })
}

/// Is `pkt` (from `src`, to pod `dst` at `pkt.port`) let in by `policies`?
fn ingress_admitted(
    policies: &[Value],
    dst: &Pod,
    src: &Dest,
    pkt: &Packet,
    flavour: Flavour,
) -> bool {
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"].as_str() == Some(dst.namespace.as_str()))
        .filter(|p| selects(&p["spec"]["podSelector"], &dst.labels))
        .filter(|p| match p["spec"]["policyTypes"].as_array() {
            Some(t) => t.iter().any(|t| t == "Ingress"),
            None => true,
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|p| {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or_default();
        p["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let from_ok = match rule["from"].as_array() {
                    None => true,
                    Some(peers) if peers.is_empty() => true,
                    Some(peers) => peers
                        .iter()
                        .any(|peer| peer_matches(peer, ns, src, flavour)),
                };
                let ports_ok = match rule["ports"].as_array() {
                    None => true,
                    Some(ports) if ports.is_empty() => true,
                    Some(ports) => ports.iter().any(|p| port_matches(p, pkt)),
                };
                from_ok && ports_ok
            })
    })
}

// ---------------------------------------------------------------------------------------------
// The evaluator on hand-written policies: it catches the bugs this file guards against.

fn pod_dest(ip: &str, namespace: &str) -> Dest {
    Dest::Pod {
        ip: ip.parse().unwrap(),
        namespace: namespace.into(),
        labels: BTreeMap::from([("app".into(), "target".into())]),
    }
}

fn src_pod() -> Pod {
    Pod {
        namespace: "tailscale".into(),
        labels: BTreeMap::from([("tsk8s.dev/node".into(), "n".into())]),
    }
}

fn policy(egress: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": "p", "namespace": "tailscale" },
        "spec": {
            "podSelector": { "matchLabels": { "tsk8s.dev/node": "n" } },
            "policyTypes": ["Ingress", "Egress"],
            "egress": egress,
        }
    })
}

#[test]
fn evaluator_blocks_the_service_port_after_dnat() {
    let ns_peer = json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "monitoring" } } });
    // The old proxy rule: the Service port (80) to the target namespace.
    let old = [policy(
        json!([{ "to": [ns_peer], "ports": [{ "protocol": "TCP", "port": 80 }] }]),
    )];
    let to_pod = |port| Packet {
        dest: pod_dest("10.244.1.5", "monitoring"),
        protocol: "TCP",
        port,
    };
    for f in FLAVOURS {
        assert!(!egress_admitted(&old, &src_pod(), &to_pod(3000), f));
        assert!(egress_admitted(&old, &src_pod(), &to_pod(80), f));
    }
    // Any TCP port to pods of the namespace; nothing elsewhere, nothing over UDP.
    let any = [policy(
        json!([{ "to": [ns_peer], "ports": [{ "protocol": "TCP" }] }]),
    )];
    for f in FLAVOURS {
        assert!(egress_admitted(&any, &src_pod(), &to_pod(3000), f));
        let other_ns = Packet {
            dest: pod_dest("10.244.1.5", "shop"),
            protocol: "TCP",
            port: 3000,
        };
        assert!(!egress_admitted(&any, &src_pod(), &other_ns, f));
        let udp = Packet {
            protocol: "UDP",
            ..to_pod(3000)
        };
        assert!(!egress_admitted(&any, &src_pod(), &udp, f));
    }
    // No policy selects the pod: everything goes.
    let other_pod = Pod {
        namespace: "tailscale".into(),
        labels: BTreeMap::new(),
    };
    assert!(egress_admitted(
        &old,
        &other_pod,
        &to_pod(3000),
        Flavour::IpBlockExternalOnly
    ));
}

#[test]
fn evaluator_blocks_a_router_limited_to_the_service_cidr() {
    let old = [policy(
        json!([{ "to": [{ "ipBlock": { "cidr": "10.96.0.0/12" } }] }]),
    )];
    let after_dnat = Packet {
        dest: pod_dest("10.244.3.9", "monitoring"),
        protocol: "TCP",
        port: 3000,
    };
    for f in FLAVOURS {
        assert!(!egress_admitted(&old, &src_pod(), &after_dnat, f));
    }
    // ipBlock over the pod CIDR: Calico admits, Cilium does not; a selector of all pods does.
    let by_block = [policy(
        json!([{ "to": [{ "ipBlock": { "cidr": "10.244.0.0/16" } }] }]),
    )];
    assert!(egress_admitted(
        &by_block,
        &src_pod(),
        &after_dnat,
        Flavour::IpBlockMatchesPods
    ));
    assert!(!egress_admitted(
        &by_block,
        &src_pod(),
        &after_dnat,
        Flavour::IpBlockExternalOnly
    ));
    let by_selector = [policy(json!([{ "to": [{ "namespaceSelector": {} }] }]))];
    for f in FLAVOURS {
        assert!(egress_admitted(&by_selector, &src_pod(), &after_dnat, f));
    }
    // `except` carves addresses out; endPort spans a range.
    let carved = [policy(json!([{
        "to": [{ "ipBlock": { "cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"] } }],
        "ports": [{ "protocol": "TCP", "port": 1000, "endPort": 2000 }]
    }]))];
    let ext = |ip: &str, port| Packet {
        dest: Dest::External {
            ip: ip.parse().unwrap(),
        },
        protocol: "TCP",
        port,
    };
    assert!(egress_admitted(
        &carved,
        &src_pod(),
        &ext("192.0.2.1", 1500),
        Flavour::IpBlockExternalOnly
    ));
    assert!(!egress_admitted(
        &carved,
        &src_pod(),
        &ext("192.0.2.200", 1500),
        Flavour::IpBlockExternalOnly
    ));
    assert!(!egress_admitted(
        &carved,
        &src_pod(),
        &ext("192.0.2.1", 2001),
        Flavour::IpBlockExternalOnly
    ));
}

// ---------------------------------------------------------------------------------------------
// Every example and golden spec

use tsk8s_test_support::repo_root as root;

fn spec_dirs() -> Vec<PathBuf> {
    tsk8s_test_support::spec_dirs(&root())
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// A host address inside `net` (its second address: not the network address of an IPv4 /31+).
fn host_in(net: &IpNet) -> IpAddr {
    net.hosts()
        .nth(1)
        .or_else(|| net.hosts().next())
        .unwrap_or(net.addr())
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

/// A pod address of the cluster (a stand-in when the spec gives no pod CIDR).
fn pod_ip(c: &Cluster) -> IpAddr {
    let pods = c
        .pod_cidr
        .unwrap_or_else(|| "10.244.0.0/16".parse().unwrap());
    host_in(&pods)
}

#[derive(Default)]
struct Covered {
    proxies: usize,
    proxies_with_other_pod_port: usize,
    routers: usize,
    routers_over_service_cidr: usize,
    /// Sidecars relayed by a gateway (judged both ways).
    relays: usize,
    /// Of those, pods of a StatefulSet sidecar with replicas.
    relayed_set_pods: usize,
    /// Proxy checks skipped: in a gateway with a router into the cluster.
    proxies_sharing_a_router: usize,
}

fn judge_spec(dir: &Path, covered: &mut Covered) {
    let name = dir
        .strip_prefix(root())
        .unwrap_or(dir)
        .display()
        .to_string();
    let spec = std::fs::read_to_string(dir.join("tailnet.kdl")).unwrap();
    let Ok(front) = build::front("tailnet.kdl", &spec) else {
        return;
    };
    let Ok(lock) = std::fs::read_to_string(dir.join("tailnet.lock")) else {
        return;
    };
    let sources = tsk8s::cli::secrets::read_sources(dir, "tailnet.kdl", &spec);
    let tree = common::build_with(&spec, Some(&lock), sources)
        .unwrap_or_else(|f| panic!("{name}: build failed:\n{}", f.text));
    for c in &front.tailnet.clusters {
        if c.runtime != RuntimeKind::Tsk8s {
            continue;
        }
        let prefix = format!("clusters/{}/", c.name);
        let docs: Vec<Value> = tree
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix) && p.ends_with(".yaml"))
            .flat_map(|(_, b)| yaml_docs(&String::from_utf8_lossy(b)))
            .collect();
        let policies: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .cloned()
            .collect();
        for e in &c.exposures {
            let at = format!(
                "{name}: cluster {}: {} {:?}",
                c.name,
                e.kind.keyword(),
                e.id
            );
            // Under publish="gateway" the gateway's pod carries every node but the sidecars.
            let workload = if c.in_gateway(e) {
                "tsk8s-gateway".to_string()
            } else {
                format!("tsk8s-{}", e.id)
            };
            let deployment = docs
                .iter()
                .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == workload);
            if let ExposureKind::Sidecar {
                namespace,
                workload,
                set,
                ..
            } = &e.kind
                && c.publish == Publish::Gateway
            {
                // The sidecar's pod: the Component's label (the set's for a StatefulSet with
                // replicas, with Kubernetes' pod-name label) and the app's own.
                let mut labels = BTreeMap::from([("app".to_string(), "user-app".to_string())]);
                match set {
                    Some(s) => {
                        labels.insert("tsk8s.dev/node".into(), s.base.clone());
                        labels.insert(
                            "statefulset.kubernetes.io/pod-name".into(),
                            format!("{workload}-{}", s.ordinal),
                        );
                        covered.relayed_set_pods += 1;
                    }
                    None => {
                        labels.insert("tsk8s.dev/node".into(), e.id.clone());
                    }
                }
                judge_relay(&at, c, &docs, &policies, &e.id, namespace, labels);
                covered.relays += 1;
                continue;
            }
            let src = match (&e.kind, deployment) {
                (ExposureKind::Proxy { .. } | ExposureKind::SubnetRouter { .. }, Some(d)) => Pod {
                    namespace: d["metadata"]["namespace"].as_str().unwrap().to_string(),
                    labels: labels_of(&d["spec"]["template"]["metadata"]["labels"]),
                },
                (ExposureKind::Proxy { .. } | ExposureKind::SubnetRouter { .. }, None) => {
                    panic!("{at}: no Deployment")
                }
                _ => continue,
            };
            let admitted = |pkt: &Packet, f: Flavour| egress_admitted(&policies, &src, pkt, f);
            match &e.kind {
                ExposureKind::Proxy {
                    namespace, ports, ..
                } => {
                    covered.proxies += 1;
                    let target_labels = BTreeMap::from([("app".to_string(), "target".to_string())]);
                    for p in ports {
                        if p.pod_port.is_some_and(|pp| pp != p.target) {
                            covered.proxies_with_other_pod_port += 1;
                        }
                        // Without pod-port, the pod's port is unknown: try the Service's and
                        // another.
                        let pod_ports: Vec<u16> = match p.pod_port {
                            Some(pp) => vec![pp],
                            None => vec![p.target, p.target.wrapping_add(1000).max(1)],
                        };
                        for port in pod_ports {
                            for f in FLAVOURS {
                                let to_target = Packet {
                                    dest: Dest::Pod {
                                        ip: pod_ip(c),
                                        namespace: namespace.clone(),
                                        labels: target_labels.clone(),
                                    },
                                    protocol: proto_name(p.protocol),
                                    port,
                                };
                                assert!(
                                    admitted(&to_target, f),
                                    "{at}: a packet to its target's pod at {}:{port}/{} is dropped ({f:?})",
                                    pod_ip(c),
                                    p.protocol.as_str()
                                );
                                let elsewhere = Packet {
                                    dest: Dest::Pod {
                                        ip: pod_ip(c),
                                        namespace: format!("not-{namespace}"),
                                        labels: target_labels.clone(),
                                    },
                                    ..to_target.clone()
                                };
                                // A gateway's pod may go where any of its nodes may: a router
                                // into the cluster lets it reach every pod.
                                if c.in_gateway(e) && gateway_reaches_pods(c) {
                                    covered.proxies_sharing_a_router += 1;
                                    continue;
                                }
                                assert!(
                                    !admitted(&elsewhere, f),
                                    "{at}: a packet to a pod of another namespace is let out ({f:?})"
                                );
                            }
                        }
                    }
                }
                ExposureKind::SubnetRouter { routes } => {
                    covered.routers += 1;
                    for r in routes {
                        for f in FLAVOURS {
                            let ext = Packet {
                                dest: Dest::External { ip: host_in(r) },
                                protocol: "TCP",
                                port: 443,
                            };
                            let in_cluster =
                                c.service_cidr.is_some_and(|s| s.contains(&ext.dest.ip()))
                                    || c.pod_cidr.is_some_and(|p| p.contains(&ext.dest.ip()));
                            if !in_cluster {
                                assert!(
                                    admitted(&ext, f),
                                    "{at}: a packet to {} in route {r} is dropped ({f:?})",
                                    ext.dest.ip()
                                );
                            }
                        }
                        let over_services = c
                            .service_cidr
                            .is_some_and(|s| r.contains(&s) || s.contains(r));
                        if over_services {
                            covered.routers_over_service_cidr += 1;
                            for f in FLAVOURS {
                                for (proto, port) in [("TCP", 3000), ("UDP", 53), ("TCP", 8443)] {
                                    let after_dnat = Packet {
                                        dest: Dest::Pod {
                                            ip: pod_ip(c),
                                            namespace: "monitoring".into(),
                                            labels: BTreeMap::from([(
                                                "app".into(),
                                                "grafana".into(),
                                            )]),
                                        },
                                        protocol: proto,
                                        port,
                                    };
                                    assert!(
                                        admitted(&after_dnat, f),
                                        "{at}: route {r} covers the Service CIDR, but a packet DNATed to pod {}:{port}/{proto} is dropped ({f:?})",
                                        pod_ip(c)
                                    );
                                }
                            }
                        }
                    }
                    // Outside its routes and the cluster: not let out.
                    let outside: IpAddr = "198.51.100.7".parse().unwrap();
                    if !routes.iter().any(|r| r.contains(&outside)) {
                        let pkt = Packet {
                            dest: Dest::External { ip: outside },
                            protocol: "TCP",
                            port: 22,
                        };
                        for f in FLAVOURS {
                            assert!(
                                !admitted(&pkt, f),
                                "{at}: a packet to {outside}:22 outside its routes is let out ({f:?})"
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Whether a router inside the cluster's gateway routes into the cluster (its pod or Service
/// CIDR): the gateway's pod may then reach every pod, whichever node sends.
fn gateway_reaches_pods(c: &Cluster) -> bool {
    c.exposures.iter().any(|e| {
        let ExposureKind::SubnetRouter { routes } = &e.kind else {
            return false;
        };
        c.in_gateway(e)
            && routes.iter().any(|r| {
                [c.service_cidr, c.pod_cidr]
                    .into_iter()
                    .flatten()
                    .any(|n| r.contains(&n) || n.contains(r))
            })
    })
}

/// A sidecar the gateway relays to: the gateway's pod may send UDP to the sidecar's pod at the
/// port of its relay Service, and the sidecar's pod admits it (no tsk8s policy isolates the
/// app's pod).
fn judge_relay(
    at: &str,
    c: &Cluster,
    docs: &[Value],
    policies: &[Value],
    id: &str,
    ns: &str,
    side_labels: BTreeMap<String, String>,
) {
    let svc = docs
        .iter()
        .find(|d| {
            d["kind"] == "Service"
                && d["metadata"]["name"] == format!("tsk8s-{id}")
                && d["metadata"]["namespace"] == ns
        })
        .unwrap_or_else(|| panic!("{at}: no relay Service"));
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{at}: relay Service type");
    let port = u16::try_from(svc["spec"]["ports"][0]["targetPort"].as_u64().unwrap()).unwrap();
    let gateway = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "tsk8s-gateway")
        .unwrap_or_else(|| panic!("{at}: no gateway Deployment"));
    let gw_pod = Pod {
        namespace: c.namespace.clone(),
        labels: labels_of(&gateway["spec"]["template"]["metadata"]["labels"]),
    };
    let side_pod = Pod {
        namespace: ns.to_string(),
        labels: side_labels.clone(),
    };
    let pkt = Packet {
        dest: Dest::Pod {
            ip: pod_ip(c),
            namespace: ns.to_string(),
            labels: side_labels,
        },
        protocol: "UDP",
        port,
    };
    let gw_src = Dest::Pod {
        ip: pod_ip(c),
        namespace: gw_pod.namespace.clone(),
        labels: gw_pod.labels.clone(),
    };
    let other_src = Dest::Pod {
        ip: pod_ip(c),
        namespace: c.namespace.clone(),
        labels: BTreeMap::from([("app".to_string(), "other".to_string())]),
    };
    for f in FLAVOURS {
        assert!(
            egress_admitted(policies, &gw_pod, &pkt, f),
            "{at}: the gateway may not send to the sidecar's pod at {port}/udp ({f:?})"
        );
        assert!(
            ingress_admitted(policies, &side_pod, &gw_src, &pkt, f),
            "{at}: the sidecar's pod does not admit the gateway at {port}/udp ({f:?})"
        );
        // No tsk8s policy selects the app's pod: the first one would isolate it for all
        // ingress (its ingress controller included).
        assert!(
            ingress_admitted(policies, &side_pod, &other_src, &pkt, f),
            "{at}: the sidecar's Component isolates the app's pod ({f:?})"
        );
    }
}

#[test]
fn proxies_and_routers_reach_their_pods_after_dnat() {
    let mut covered = Covered::default();
    for dir in spec_dirs() {
        judge_spec(&dir, &mut covered);
    }
    assert!(covered.proxies > 0 && covered.routers > 0, "nothing judged");
    assert!(
        covered.proxies_with_other_pod_port > 0,
        "no proxy whose Service port differs from its pod port was judged"
    );
    assert!(
        covered.routers_over_service_cidr > 0,
        "no router over a Service CIDR was judged"
    );
    assert!(
        covered.relays > 0,
        "no sidecar relayed by a gateway was judged"
    );
    assert!(
        covered.relayed_set_pods > 1,
        "no StatefulSet sidecar with replicas relayed by a gateway was judged"
    );
    eprintln!(
        "judged {} proxies ({} with a pod port other than the Service's; {} other-namespace checks left out for sharing a gateway with a router into the cluster), {} routers ({} routes over a Service CIDR) and {} relayed sidecars",
        covered.proxies,
        covered.proxies_with_other_pod_port,
        covered.proxies_sharing_a_router,
        covered.routers,
        covered.routers_over_service_cidr,
        covered.relays
    );
}
