//! The contract between the compiler (`tsk8s build`) and the data plane (`tsk8s-runtime`).
//!
//! `build` writes, per cluster, one shared `mesh.json` (ConfigMap `tsk8s-mesh`) and, per node,
//! one small `node.json` (ConfigMap `tsk8s-<node>`). The private key is a separate file mounted
//! from a Secret; it never appears here. Sizes grow with nodes + rules, never nodes × rules:
//! the mesh file carries the cluster's packet filter once (rules whose destinations are in this
//! cluster), and each runtime keeps the rules whose `DstPorts` cover its own addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::filter::FilterRule;

/// File name of the per-node config inside its mounted ConfigMap.
pub const NODE_FILE: &str = "node.json";
/// File name of the per-cluster mesh inside its mounted ConfigMap.
pub const MESH_FILE: &str = "mesh.json";
/// Key of the private key inside the node's Secret (base64 WireGuard key, one line).
pub const PRIVATE_KEY_FILE: &str = "private-key";
/// Default tunnel MTU.
pub const DEFAULT_MTU: u16 = 1280;

/// `node.json`: who this node is and what it forwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NodeConfig {
    /// Tailnet name of the node (one DNS label), e.g. `grafana`.
    pub name: String,
    /// WireGuard public key of this node (base64); the runtime checks that its private key matches.
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// UDP port the runtime binds (inside the pod; the Service maps the published port onto it).
    pub listen_port: u16,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Address of the local HTTP server for `/healthz` and `/metrics`.
    pub admin_listen: String,
    pub mode: Mode,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// What the node does with traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Mode {
    /// Tailnet `node:listen` → `target_host:target` (a Service DNS name or ClusterIP).
    Proxy {
        target_host: String,
        ports: Vec<PortMap>,
    },
    /// Tailnet `node:listen` → `127.0.0.1:target` inside the pod.
    Sidecar { ports: Vec<PortMap> },
    /// Any destination inside `routes` → a kernel socket to that destination.
    SubnetRouter { routes: Vec<IpNet> },
    /// Kernel listener on `0.0.0.0:listen` → tailnet `target_ip:target` through the tunnel.
    Egress {
        target_ip: IpAddr,
        ports: Vec<PortMap>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMap {
    pub protocol: Protocol,
    pub listen: u16,
    pub target: u16,
}

/// `mesh.json`: everything a cluster's runtimes share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct MeshConfig {
    /// DNS suffix, e.g. `acme.example`; names are `<name>.<domain>`.
    pub domain: String,
    /// Every peer any node of this cluster may exchange packets with (devices and other nodes,
    /// including this cluster's own nodes). A runtime skips the entry with its own public key.
    pub peers: Vec<Peer>,
    /// Packet filter (Tailscale `FilterRule` shape) for all destinations in this cluster.
    pub filter: Vec<FilterRule>,
    /// Names answered by the node's DNS server.
    pub dns: Vec<DnsRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Peer {
    pub name: String,
    /// base64 WireGuard public key.
    pub public_key: String,
    /// Inner source addresses accepted from this peer and destinations routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// `host:port`; absent for roaming devices (learned from their handshakes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// Fully qualified, without the trailing dot: `grafana.acme.example`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// File name of the per-cluster gateway config inside its mounted ConfigMap (`publish="gateway"`).
pub const GATEWAY_FILE: &str = "gateway.json";
/// Directory (inside the gateway pod) under which each terminated node's Secret is mounted as
/// `<dir>/<node>/private-key` (one projected volume).
pub const GATEWAY_KEY_DIR: &str = "/var/run/secrets/tsk8s/nodes";

/// `gateway.json`: one runtime process that owns a cluster's single public WireGuard UDP port.
///
/// It terminates WireGuard for every node in `nodes` (each keeps its own key, addresses, filter
/// and lock entry; the cluster's `mesh.json` is shared) and relays the datagrams of every sidecar
/// in `relays`, unchanged, to that sidecar's pod. A handshake initiation is dispatched by its
/// MAC1 (keyed by the responder's public key, so no DH per identity); every later message by its
/// receiver index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GatewayConfig {
    /// The one UDP port the gateway binds (the cluster's LoadBalancer Service targets it).
    pub listen_port: u16,
    /// Address of the local HTTP server for `/healthz` and `/metrics` (all identities).
    pub admin_listen: String,
    /// Nodes terminated in this process. Their `listen_port` is `listen_port` above and their
    /// private key is `<GATEWAY_KEY_DIR>/<name>/private-key`.
    pub nodes: Vec<NodeConfig>,
    /// Sidecars whose WireGuard datagrams the gateway relays to their pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<Relay>,
}

/// A sidecar node behind the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Relay {
    /// Tailnet name of the sidecar node.
    pub name: String,
    /// Its WireGuard public key (base64): initiations whose MAC1 is keyed by it go to `target`.
    pub public_key: String,
    /// `host:port` of the sidecar's WireGuard socket inside the cluster (its per-pod Service).
    pub target: String,
}
