//! Tailscale's packet filter shape (`tailcfg.FilterRule`), as the control plane sends it to nodes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A rule's source list. Shared, not copied: one compiled rule's sources appear in the filter of
/// every node it reaches (on dense policies, thousands), so per-node filters hold a reference.
pub type SrcIps = Arc<[String]>;

/// One rule: packets from any of `SrcIPs` to any of `DstPorts`, with one of `IPProto`, are allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    /// Source addresses: `*`, an IP, a CIDR, or a range `a-b`.
    #[serde(rename = "SrcIPs")]
    pub src_ips: SrcIps,
    #[serde(rename = "DstPorts", default, skip_serializing_if = "Vec::is_empty")]
    pub dst_ports: Vec<NetPortRange>,
    /// IP protocol numbers; empty means TCP, UDP, ICMPv4 and ICMPv6.
    #[serde(rename = "IPProto", default, skip_serializing_if = "Vec::is_empty")]
    pub ip_proto: Vec<u8>,
    #[serde(rename = "CapGrant", default, skip_serializing_if = "Vec::is_empty")]
    pub cap_grant: Vec<CapGrant>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetPortRange {
    /// `*`, an IP or a CIDR.
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "Ports")]
    pub ports: PortRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    #[serde(rename = "First")]
    pub first: u16,
    #[serde(rename = "Last")]
    pub last: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange {
        first: 0,
        last: 65535,
    };
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapGrant {
    /// Destination prefixes the capabilities apply to.
    #[serde(rename = "Dsts")]
    pub dsts: Vec<String>,
    /// Capability name → list of JSON values .
    #[serde(rename = "CapMap")]
    pub cap_map: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}
