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
