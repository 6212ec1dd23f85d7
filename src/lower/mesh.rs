//! Runtime configuration: one mesh (JSON Lines shards) per cluster and one `node.json` per node
//! (the contract in `tsk8s_policy::runtime_config`).

use std::net::IpAddr;

use ipnet::IpNet;
use tsk8s_policy::compile::merge_rules;
use tsk8s_policy::runtime_config::{
    DEFAULT_MTU, DnsRecord, MESH_SHARD_BYTES, MeshConfig, Mode, NodeConfig, Peer, PortMap,
    Protocol, shard_mesh_with,
};

use super::net::{Member, Net, Reach};
use crate::lockfile::Lock;
use crate::model::{Cluster, EgressTarget, ExposureKind, Proto, Tailnet};

/// Port of the runtime's `/healthz` and `/metrics` server inside the pod (the model owns it:
/// `resolve` checks ports against it).
pub use crate::model::ADMIN_PORT;

/// The shard budget [`shard_bytes`] returns instead of the default, when set (0: unset).
static SHARD_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// For tests only: shard every mesh within about `bytes` per ConfigMap object file instead of
/// [`MESH_SHARD_BYTES`], so a small spec yields several shards. The CLI sets it from the hidden
/// environment variable `TSK8S_MESH_SHARD_BYTES`; the setting is process-wide.
pub fn set_shard_bytes(bytes: usize) {
    SHARD_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// The budget of one mesh shard's ConfigMap object file.
pub fn shard_bytes() -> usize {
    match SHARD_BYTES.load(std::sync::atomic::Ordering::Relaxed) {
        0 => MESH_SHARD_BYTES,
        n => n,
    }
}

/// A mesh as the texts of its shards (`mesh-<n>.jsonl`); each peer's line written once per
/// build ([`Net::peer_line`]), not once per mesh that lists it.
pub fn shards(mesh: &MeshConfig, net: &Net) -> Vec<String> {
    shard_mesh_with(mesh, shard_bytes(), &|p| net.peer_line(p))
}

pub struct ClusterRuntime {
    pub mesh: MeshConfig,
    /// (exposure id, node.json)
    pub nodes: Vec<(String, NodeConfig)>,
}

fn port_maps(ports: &[crate::model::Port]) -> Vec<PortMap> {
    ports
        .iter()
        .map(|p| PortMap {
            protocol: match p.protocol {
                Proto::Tcp => Protocol::Tcp,
                Proto::Udp => Protocol::Udp,
            },
            listen: p.port,
            target: p.target,
        })
        .collect()
}

fn fqdn(t: &Tailnet, host: &str) -> String {
    format!("{host}.{}", t.domain)
}

/// The peers of the nodes `own` (topology indexes), ascending by index, and their entries sorted
/// by name (what a mesh lists: the runtimes of `own` talk to exactly these). `egress` as for
/// [`mesh_of`].
fn mesh_peers(
    t: &Tailnet,
    egress: &[&crate::model::Exposure],
    net: &Net,
    reach: &Reach,
    own: &[usize],
) -> (Vec<usize>, Vec<Peer>) {
    let mut peer_idx: Vec<usize> = Vec::new();
    for &n in own {
        peer_idx.extend(reach.peers(n));
    }
    peer_idx.sort_unstable();
    peer_idx.dedup();
    // A cluster's own nodes are peers of each other only where the policy says so (above).
    let mut peers: Vec<Peer> = peer_idx
        .iter()
        .filter_map(|&i| net.peer(i).cloned())
        .collect();

    // Egress to a host behind a subnet router: route that address to the router peer.
    for e in egress {
        if let ExposureKind::Egress {
            target: EgressTarget::Host(_, ip),
            ..
        } = &e.kind
        {
            for (_, re) in t.exposures() {
                if let ExposureKind::SubnetRouter { routes } = &re.kind
                    && routes.iter().any(|r| r.contains(ip))
                {
                    let host = IpNet::from(*ip);
                    // The router's peer entry is named by its hostname.
                    if let Some(p) = peers.iter_mut().find(|p| p.name == re.hostname)
                        && !p.allowed_ips.contains(&host)
                    {
                        p.allowed_ips.push(host);
                    }
                }
            }
        }
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    (peer_idx, peers)
}

/// The mesh of the nodes `own` (topology indexes): the union of their peers, their rules
/// merged, DNS records for the peers and for `names` (the cluster's own nodes). `egress` are
/// the exposures whose egress to a host behind a subnet router adds that host to the router
/// peer.
fn mesh_of(
    t: &Tailnet,
    egress: &[&crate::model::Exposure],
    net: &Net,
    reach: &Reach,
    own: &[usize],
    names: &[usize],
) -> MeshConfig {
    let (peer_idx, peers) = mesh_peers(t, egress, net, reach, own);
    let mut rules = Vec::new();
    for &n in own {
        if let Some(f) = reach.filters.get(n) {
            rules.extend(f.iter().cloned());
        }
    }

    let mut dns: Vec<DnsRecord> = Vec::new();
    let mut names_idx: Vec<usize> = peer_idx;
    names_idx.extend(names.iter().copied());
    names_idx.sort_unstable();
    names_idx.dedup();
    for i in names_idx {
        let (Some(member), Some(host), Some((ipv4, ipv6))) =
            (net.member(i), net.host(i), net.addrs(i))
        else {
            continue;
        };
        if matches!(member, Member::StandIn { .. }) {
            continue;
        }
        dns.push(DnsRecord {
            name: fqdn(t, host),
            ipv4,
            ipv6,
        });
    }
    dns.sort_by(|a, b| a.name.cmp(&b.name));
    MeshConfig {
        domain: t.domain.clone(),
        peers,
        filter: merge_rules(rules),
        dns,
    }
}

/// The mesh of one sidecar: only that node's peers and rules, and DNS records for its peers
/// and the cluster's own nodes (a device told to ask it answers for its neighbours), so a
/// sidecar's Component grows with its own peers, not with the cluster's.
pub fn node_mesh(
    t: &Tailnet,
    c: &Cluster,
    e: &crate::model::Exposure,
    net: &Net,
    reach: &Reach,
) -> MeshConfig {
    let own: Vec<usize> = reach.index(&e.id).into_iter().collect();
    mesh_of(t, &[e], net, reach, &own, &cluster_nodes(c, reach))
}

fn cluster_nodes(c: &Cluster, reach: &Reach) -> Vec<usize> {
    c.exposures
        .iter()
        .filter_map(|e| reach.index(&e.id))
        .collect()
}

/// The nodes of cluster `c` that run in their own pods (every exposure but the sidecars) and
/// their topology indexes: the nodes its shared mesh serves.
fn pod_nodes<'c>(c: &'c Cluster, reach: &Reach) -> (Vec<&'c crate::model::Exposure>, Vec<usize>) {
    let pods: Vec<&crate::model::Exposure> = c
        .exposures
        .iter()
        .filter(|e| !matches!(e.kind, ExposureKind::Sidecar { .. }))
        .collect();
    let own = pods.iter().filter_map(|e| reach.index(&e.id)).collect();
    (pods, own)
}

/// The peers of cluster `c`'s shared mesh, exactly as [`cluster_runtime`] lists them (without
/// building the rest of the mesh): what `tsk8s test` and the access review check paths against.
pub fn cluster_mesh_peers(t: &Tailnet, c: &Cluster, net: &Net, reach: &Reach) -> Vec<Peer> {
    let (pods, own) = pod_nodes(c, reach);
    mesh_peers(t, &pods, net, reach, &own).1
}

/// The peers of sidecar `e`'s own mesh, exactly as [`node_mesh`] lists them.
pub fn node_mesh_peers(
    t: &Tailnet,
    e: &crate::model::Exposure,
    net: &Net,
    reach: &Reach,
) -> Vec<Peer> {
    let own: Vec<usize> = reach.index(&e.id).into_iter().collect();
    mesh_peers(t, &[e], net, reach, &own).1
}

/// The cluster's shared mesh (`mesh-<n>.yaml`), for the nodes that run in their own pods: their
/// peers and rules, DNS records for those peers and all the cluster's nodes. A sidecar carries
/// its own ([`node_mesh`]).
pub fn cluster_runtime(
    t: &Tailnet,
    c: &Cluster,
    lock: &Lock,
    net: &Net,
    reach: &Reach,
) -> ClusterRuntime {
    let (pods, own) = pod_nodes(c, reach);
    let mesh = mesh_of(t, &pods, net, reach, &own, &cluster_nodes(c, reach));

    let mut nodes = Vec::new();
    for e in &c.exposures {
        let Some(entry) = lock.nodes.get(&e.id) else {
            continue;
        };
        let mode = match &e.kind {
            ExposureKind::Proxy {
                namespace,
                service,
                ports,
            } => Mode::Proxy {
                target_host: format!("{service}.{namespace}.svc"),
                ports: port_maps(ports),
            },
            ExposureKind::Sidecar { ports, .. } => Mode::Sidecar {
                ports: port_maps(ports),
            },
            ExposureKind::SubnetRouter { routes } => Mode::SubnetRouter {
                routes: routes.clone(),
            },
            ExposureKind::Egress { target, ports } => {
                let target_ip = match target {
                    EgressTarget::Host(_, ip) => Some(*ip),
                    EgressTarget::Device(name) => {
                        lock.devices.get(name).map(|d| IpAddr::V4(d.ipv4))
                    }
                    EgressTarget::Node(id) => lock.nodes.get(id).map(|n| IpAddr::V4(n.ipv4)),
                };
                let Some(target_ip) = target_ip else { continue };
                Mode::Egress {
                    target_ip,
                    ports: port_maps(ports),
                }
            }
        };
        nodes.push((
            e.id.clone(),
            NodeConfig {
                name: e.hostname.clone(),
                public_key: entry.public_key.clone(),
                ipv4: entry.ipv4,
                ipv6: entry.ipv6,
                // A node inside the gateway binds nothing itself: the gateway's port is its
                // port. A sidecar (relayed under a gateway) binds its own in its pod.
                listen_port: if c.in_gateway(e) {
                    c.gateway_port
                } else {
                    entry.port
                },
                mtu: DEFAULT_MTU,
                // A sidecar shares the app's pod: its admin port stays on loopback (probed by
                // an `exec` probe); the runtime's own pods answer httpGet probes on the pod IP.
                admin_listen: if matches!(mode, Mode::Sidecar { .. }) {
                    format!("127.0.0.1:{ADMIN_PORT}")
                } else {
                    format!("0.0.0.0:{ADMIN_PORT}")
                },
                mode,
            },
        ));
    }
    ClusterRuntime { mesh, nodes }
}
