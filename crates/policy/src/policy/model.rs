//! The typed policy model: aliases, the autogroup names, one struct per section, and the views
//! the compiler reads (allow-all, ACLs as grants).

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
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

pub const AUTOGROUP_INTERNET: &str = "autogroup:internet";
pub const AUTOGROUP_SELF: &str = "autogroup:self";
pub const AUTOGROUP_MEMBER: &str = "autogroup:member";
pub const AUTOGROUP_TAGGED: &str = "autogroup:tagged";
pub const AUTOGROUP_DANGER_ALL: &str = "autogroup:danger-all";
pub const AUTOGROUP_NONROOT: &str = "autogroup:nonroot";
pub const AUTOGROUP_SHARED: &str = "autogroup:shared";

/// Every autogroup valid in a source (`src` of acls and grants): the one owner of this list.
/// The role autogroups (admin … network-admin) are valid in sources, destinations and
/// tagOwners; a topology has no roles, so they resolve to no addresses.
pub const SRC_AUTOGROUPS: [&str; 10] = [
    AUTOGROUP_MEMBER,
    AUTOGROUP_TAGGED,
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:auditor",
    "autogroup:billing-admin",
    "autogroup:it-admin",
    "autogroup:network-admin",
    AUTOGROUP_SHARED,
    AUTOGROUP_DANGER_ALL,
];

/// Every autogroup valid in a destination (`dst` of acls and grants).
pub const DST_AUTOGROUPS: [&str; 10] = [
    AUTOGROUP_MEMBER,
    AUTOGROUP_TAGGED,
    AUTOGROUP_SELF,
    AUTOGROUP_INTERNET,
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:auditor",
    "autogroup:billing-admin",
    "autogroup:it-admin",
    "autogroup:network-admin",
];

/// Every autogroup valid as a tag owner (`tagOwners`), an SSH source, a `nodeAttrs` target or
/// the source of an ACL test: member, tagged and the roles.
pub const OWNER_AUTOGROUPS: [&str; 8] = [
    AUTOGROUP_MEMBER,
    AUTOGROUP_TAGGED,
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:auditor",
    "autogroup:billing-admin",
    "autogroup:it-admin",
    "autogroup:network-admin",
];

/// A destination with its ports (`tag:web:80,443`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AliasWithPorts {
    pub alias: Alias,
    pub ports: Vec<PortRange>,
}

/// Protocols and ports of a grant's `ip` entry (or an ACL's `proto` + dst ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoPorts {
    /// IANA protocol numbers; empty means the default set (TCP, UDP, ICMPv4, ICMPv6).
    pub protos: Vec<u8>,
    pub ports: Vec<PortRange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    pub action: String,
    /// `proto` as written (lower-cased), if any.
    pub proto: Option<String>,
    pub protos: Vec<u8>,
    pub src: Vec<Alias>,
    pub dst: Vec<AliasWithPorts>,
    pub src_posture: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    pub ip: Vec<ProtoPorts>,
    /// Capability name → values (`app`); `None` when absent.
    pub app: Option<BTreeMap<String, Vec<Value>>>,
    pub via: Vec<String>,
    pub src_posture: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoApprovers {
    pub routes: Vec<(IpNet, Vec<Alias>)>,
    pub exit_node: Vec<Alias>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SshRule {
    pub action: String,
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    pub users: Vec<String>,
    pub check_period: Option<String>,
    pub accept_env: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeAttr {
    pub target: Vec<Alias>,
    pub attr: Vec<Value>,
    pub ip_pool: Vec<String>,
}

/// One entry of `tests`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclTest {
    pub src: String,
    /// `proto` as written (lower-cased), if any.
    pub proto: Option<String>,
    /// Protocol numbers to try; empty means TCP, UDP, ICMPv4 and ICMPv6 (any of them).
    pub protos: Vec<u8>,
    pub accept: Vec<String>,
    pub deny: Vec<String>,
    /// Why this entry cannot be evaluated (Tailscale fails the whole run with `test(s) failed`).
    pub problem: Option<String>,
}

/// A whole policy file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// `None` when the section is absent (no `acls` and no `grants` means allow-all).
    pub acls: Option<Vec<Acl>>,
    pub grants: Option<Vec<Grant>>,
    pub groups: BTreeMap<String, Vec<String>>,
    pub hosts: BTreeMap<String, IpNet>,
    pub tag_owners: BTreeMap<String, Vec<Alias>>,
    pub auto_approvers: AutoApprovers,
    pub ssh: Vec<SshRule>,
    pub node_attrs: Vec<NodeAttr>,
    pub tests: Vec<AclTest>,
    /// `sshTests`, kept as written (validated for shape only).
    pub ssh_tests: Vec<Value>,
    pub postures: BTreeMap<String, Vec<String>>,
    /// `ipsets`: name → entries (`add`/`remove` prefixes stripped into `(remove, alias)`).
    pub ipsets: BTreeMap<String, Vec<(bool, Alias)>>,
    pub derp_map: Option<Value>,
    pub disable_ipv4: bool,
    pub one_cgnat_route: Option<Value>,
    pub randomize_client_port: bool,
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
