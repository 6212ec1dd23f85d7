//! The typed policy model: aliases, the autogroup names, one struct per section, and the views
//! the compiler reads (allow-all, ACLs as grants).
//!
//! The model is `Serialize`: a policy serializes as the policy file's JSON, sections and fields
//! in the order `tsk8s build` writes them (groups, tagOwners, hosts, autoApprovers, acls,
//! grants, ssh, tests, then the sections the spec does not generate), maps in insertion order,
//! empty sections left out (`acls` and `grants` are written when present, even empty). Values
//! are written in their canonical form: aliases as [`Alias`] displays them, ports as `80`,
//! `1000-2000` or `*`, a protocol number under its name (`tcp:443`).

use std::collections::BTreeMap;
use std::fmt;

use indexmap::IndexMap;
use ipnet::IpNet;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use crate::filter::PortRange;

/// One element of a `src`/`dst`/owner list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alias {
    /// `*`
    Wildcard,
    /// `alice@example.com` (or `alice@` for a bare login name)
    User(String),
    /// `group:name`
    Group(String),
    /// `tag:name`
    Tag(String),
    /// A name from `hosts`.
    Host(String),
    /// An IP address or CIDR.
    Prefix(IpNet),
    /// `autogroup:name`
    AutoGroup(String),
    /// `ipset:name`
    IpSet(String),
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alias::Wildcard => f.write_str("*"),
            Alias::User(s)
            | Alias::Group(s)
            | Alias::Tag(s)
            | Alias::Host(s)
            | Alias::AutoGroup(s)
            | Alias::IpSet(s) => f.write_str(s),
            Alias::Prefix(p) => f.write_str(&crate::ipset::net_string(p)),
        }
    }
}

impl Serialize for Alias {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `80`, `1000-2000`, or `*` for every port.
pub(crate) fn write_ports(f: &mut fmt::Formatter<'_>, ports: &[PortRange]) -> fmt::Result {
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        match *p {
            PortRange::ANY => f.write_str("*")?,
            PortRange { first, last } if first == last => write!(f, "{first}")?,
            PortRange { first, last } => write!(f, "{first}-{last}")?,
        }
    }
    Ok(())
}

pub const AUTOGROUP_INTERNET: &str = "autogroup:internet";
pub const AUTOGROUP_SELF: &str = "autogroup:self";
pub const AUTOGROUP_MEMBER: &str = "autogroup:member";
pub const AUTOGROUP_TAGGED: &str = "autogroup:tagged";
pub const AUTOGROUP_DANGER_ALL: &str = "autogroup:danger-all";
pub const AUTOGROUP_NONROOT: &str = "autogroup:nonroot";
pub const AUTOGROUP_SHARED: &str = "autogroup:shared";

/// The role autogroups (admin … network-admin): valid in sources, destinations and
/// tagOwners; a topology has no roles, so they resolve to no addresses.
pub const ROLE_AUTOGROUPS: [&str; 6] = [
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:auditor",
    "autogroup:billing-admin",
    "autogroup:it-admin",
    "autogroup:network-admin",
];

/// `before`, the role autogroups, then `after` (the lists below, each in its own order).
const fn with_roles<const A: usize, const B: usize, const N: usize>(
    before: [&'static str; A],
    after: [&'static str; B],
) -> [&'static str; N] {
    assert!(A + ROLE_AUTOGROUPS.len() + B == N);
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < A {
            before[i]
        } else if i < A + ROLE_AUTOGROUPS.len() {
            ROLE_AUTOGROUPS[i - A]
        } else {
            after[i - A - ROLE_AUTOGROUPS.len()]
        };
        i += 1;
    }
    out
}

/// Every autogroup valid in a source (`src` of acls and grants): the one owner of this list.
pub const SRC_AUTOGROUPS: [&str; 10] = with_roles(
    [AUTOGROUP_MEMBER, AUTOGROUP_TAGGED],
    [AUTOGROUP_SHARED, AUTOGROUP_DANGER_ALL],
);

/// Every autogroup valid in a destination (`dst` of acls and grants).
pub const DST_AUTOGROUPS: [&str; 10] = with_roles(
    [
        AUTOGROUP_MEMBER,
        AUTOGROUP_TAGGED,
        AUTOGROUP_SELF,
        AUTOGROUP_INTERNET,
    ],
    [],
);

/// Every autogroup valid as a tag owner (`tagOwners`), an SSH source, a `nodeAttrs` target or
/// the source of an ACL test: member, tagged and the roles.
pub const OWNER_AUTOGROUPS: [&str; 8] = with_roles([AUTOGROUP_MEMBER, AUTOGROUP_TAGGED], []);

/// A destination with its ports (`tag:web:80,443`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasWithPorts {
    pub alias: Alias,
    pub ports: Vec<PortRange>,
}

impl fmt::Display for AliasWithPorts {
    /// `alias:ports`; an IPv6 address in brackets (`[fd7a::1]:80`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.alias {
            Alias::Prefix(p @ IpNet::V6(_)) if p.prefix_len() == p.max_prefix_len() => {
                write!(f, "[{}]:", p.addr())?
            }
            a => write!(f, "{a}:")?,
        }
        write_ports(f, &self.ports)
    }
}

impl Serialize for AliasWithPorts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Protocols and ports of a grant's `ip` entry (or an ACL's `proto` + dst ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoPorts {
    /// IANA protocol numbers; empty means the default set (TCP, UDP, ICMPv4, ICMPv6).
    pub protos: Vec<u8>,
    pub ports: Vec<PortRange>,
}

impl fmt::Display for ProtoPorts {
    /// A grant's `ip` entry: `*`, `443`, `tcp:443`, `icmp:*` (a number without a name as the
    /// number).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.protos.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match super::decode::PROTOCOL_NAMES.iter().find(|(_, p)| p == n) {
                Some((name, _)) => f.write_str(name)?,
                None => write!(f, "{n}")?,
            }
        }
        if !self.protos.is_empty() {
            f.write_str(":")?;
        }
        write_ports(f, &self.ports)
    }
}

impl Serialize for ProtoPorts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Acl {
    pub action: String,
    pub src: Vec<Alias>,
    pub dst: Vec<AliasWithPorts>,
    /// `proto` as written (lower-cased), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip)]
    pub protos: Vec<u8>,
    #[serde(rename = "srcPosture", skip_serializing_if = "Vec::is_empty")]
    pub src_posture: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Grant {
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<ProtoPorts>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// Capability name → values (`app`), in the order written; `None` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<IndexMap<String, Vec<Value>>>,
    #[serde(rename = "srcPosture", skip_serializing_if = "Vec::is_empty")]
    pub src_posture: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AutoApprovers {
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "serialize_routes"
    )]
    pub routes: Vec<(IpNet, Vec<Alias>)>,
    #[serde(rename = "exitNode", skip_serializing_if = "Vec::is_empty")]
    pub exit_node: Vec<Alias>,
    /// `services`, kept as written (validated for shape only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<Value>,
}

impl AutoApprovers {
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.exit_node.is_empty() && self.services.is_none()
    }

    /// Add `other`'s approvers: per route and for exit nodes the union (own approvers first,
    /// new routes after), `services` when this has none.
    pub fn merge(&mut self, other: AutoApprovers) {
        for (net, approvers) in other.routes {
            match self.routes.iter_mut().find(|(n, _)| *n == net) {
                Some((_, own)) => push_new(own, approvers),
                None => self.routes.push((net, approvers)),
            }
        }
        push_new(&mut self.exit_node, other.exit_node);
        if self.services.is_none() {
            self.services = other.services;
        }
    }
}

fn push_new(own: &mut Vec<Alias>, more: Vec<Alias>) {
    for a in more {
        if !own.contains(&a) {
            own.push(a);
        }
    }
}

/// `routes` as an object: prefix → approvers.
fn serialize_routes<S: Serializer>(
    routes: &[(IpNet, Vec<Alias>)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(routes.len()))?;
    for (net, approvers) in routes {
        m.serialize_entry(&net.to_string(), approvers)?;
    }
    m.end()
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SshRule {
    pub action: String,
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    pub users: Vec<String>,
    #[serde(rename = "checkPeriod", skip_serializing_if = "Option::is_none")]
    pub check_period: Option<String>,
    #[serde(rename = "acceptEnv", skip_serializing_if = "Vec::is_empty")]
    pub accept_env: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeAttr {
    pub target: Vec<Alias>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attr: Vec<Value>,
    #[serde(rename = "ipPool", skip_serializing_if = "Vec::is_empty")]
    pub ip_pool: Vec<String>,
}

/// One entry of `tests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AclTest {
    pub src: String,
    /// `proto` as written (lower-cased), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Protocol numbers to try; empty means TCP, UDP, ICMPv4 and ICMPv6 (any of them).
    #[serde(skip)]
    pub protos: Vec<u8>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Why this entry cannot be evaluated (Tailscale fails the whole run with `test(s) failed`).
    #[serde(skip)]
    pub problem: Option<String>,
}

/// A whole policy file. Maps keep the order they were written or built in.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Policy {
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub groups: IndexMap<String, Vec<String>>,
    #[serde(rename = "tagOwners", skip_serializing_if = "IndexMap::is_empty")]
    pub tag_owners: IndexMap<String, Vec<Alias>>,
    #[serde(
        skip_serializing_if = "IndexMap::is_empty",
        serialize_with = "serialize_hosts"
    )]
    pub hosts: IndexMap<String, IpNet>,
    #[serde(
        rename = "autoApprovers",
        skip_serializing_if = "AutoApprovers::is_empty"
    )]
    pub auto_approvers: AutoApprovers,
    /// `None` when the section is absent (no `acls` and no `grants` means allow-all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acls: Option<Vec<Acl>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<SshRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<AclTest>,
    #[serde(rename = "nodeAttrs", skip_serializing_if = "Vec::is_empty")]
    pub node_attrs: Vec<NodeAttr>,
    /// `sshTests`, kept as written (validated for shape only).
    #[serde(rename = "sshTests", skip_serializing_if = "Vec::is_empty")]
    pub ssh_tests: Vec<Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub postures: BTreeMap<String, Vec<String>>,
    /// `ipsets`: name → entries (`add`/`remove` prefixes stripped into `(remove, alias)`).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "serialize_ipsets"
    )]
    pub ipsets: BTreeMap<String, Vec<(bool, Alias)>>,
    #[serde(rename = "derpMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<Value>,
    #[serde(rename = "disableIPv4", skip_serializing_if = "std::ops::Not::not")]
    pub disable_ipv4: bool,
    #[serde(rename = "OneCGNATRoute", skip_serializing_if = "Option::is_none")]
    pub one_cgnat_route: Option<Value>,
    #[serde(
        rename = "randomizeClientPort",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub randomize_client_port: bool,
}

/// `hosts`: an address bare, a network as a CIDR.
fn serialize_hosts<S: Serializer>(
    hosts: &IndexMap<String, IpNet>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(hosts.len()))?;
    for (name, net) in hosts {
        m.serialize_entry(name, &crate::ipset::net_string(net))?;
    }
    m.end()
}

/// `ipsets`: each entry with its `remove ` prefix when it removes.
fn serialize_ipsets<S: Serializer>(
    sets: &BTreeMap<String, Vec<(bool, Alias)>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(sets.len()))?;
    for (name, entries) in sets {
        let entries: Vec<String> = entries
            .iter()
            .map(|(remove, a)| {
                if *remove {
                    format!("remove {a}")
                } else {
                    a.to_string()
                }
            })
            .collect();
        m.serialize_entry(name, &entries)?;
    }
    m.end()
}

impl Policy {
    /// Does the policy have neither `acls` nor `grants` (allow-all)?
    pub fn allows_all(&self) -> bool {
        self.acls.is_none() && self.grants.is_none()
    }

    /// ACLs as grants (one grant per destination, `autogroup:self` destinations last when mixed),
    /// after the policy's own grants.
    pub fn effective_grants(&self) -> Vec<Grant> {
        let mut out: Vec<Grant> = self.grants.clone().unwrap_or_default();
        for acl in self.acls.iter().flatten() {
            let is_self = |d: &AliasWithPorts| d.alias == Alias::AutoGroup(AUTOGROUP_SELF.into());
            let mut ordered: Vec<&AliasWithPorts> =
                acl.dst.iter().filter(|d| !is_self(d)).collect();
            ordered.extend(acl.dst.iter().filter(|d| is_self(d)));
            for d in ordered {
                out.push(Grant {
                    src: acl.src.clone(),
                    dst: vec![d.alias.clone()],
                    ip: vec![ProtoPorts {
                        protos: acl.protos.clone(),
                        ports: d.ports.clone(),
                    }],
                    app: None,
                    via: Vec::new(),
                    src_posture: acl.src_posture.clone(),
                });
            }
        }
        out
    }
}
