//! The Tailscale policy file as a typed model, parsed from HuJSON and validated with Tailscale's
//! semantics and wording.
//!
//! Messages are Tailscale's own where known (captured from its API, as recorded in headscale's
//! compatibility tables); where Tailscale's wording is not known, headscale's
//! (`hscontrol/policy/v2`) is used. Only the first problem is reported, as Tailscale does.
//!
//! Validation happens in two passes, like Tailscale/headscale: first the document is decoded in
//! key order (syntax of each value: actions, aliases, ports, protocols, group recursion, tag
//! names), then references and combinations are checked section by section (`acls`, `ssh`,
//! `grants`, `nodeAttrs`, `tagOwners`, `autoApprovers`).
//!
//! Malformed `tests` entries do not make the policy invalid: Tailscale answers them with
//! `test(s) failed`, so they are kept (with [`AclTest::problem`]) and reported by the test run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::filter::PortRange;
use crate::hujson;

/// Why a policy is invalid. `Display` is the message alone (Tailscale's wording).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub message: String,
    /// 1-based line and column, for HuJSON syntax errors.
    pub position: Option<(usize, usize)>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "line {l}, column {c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

fn err<T>(message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError {
        message: message.into(),
        position: None,
    })
}

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

/// Role autogroups: valid in src/dst/tagOwners/autoApprovers; a topology has no roles, so they
/// resolve to no addresses.
pub const ROLE_AUTOGROUPS: [&str; 6] = [
    "autogroup:admin",
    "autogroup:owner",
    "autogroup:auditor",
    "autogroup:billing-admin",
    "autogroup:it-admin",
    "autogroup:network-admin",
];

fn is_role_autogroup(s: &str) -> bool {
    ROLE_AUTOGROUPS.contains(&s)
}

/// Parse one alias the way Tailscale reads `src` entries (an IP/CIDR first, then by prefix).
pub fn parse_alias(s: &str) -> Result<Alias, PolicyError> {
    let s = s.trim();
    if let Some(p) = parse_prefix(s) {
        return Ok(Alias::Prefix(p));
    }
    if s == "*" {
        return Ok(Alias::Wildcard);
    }
    if s.contains('@') {
        return Ok(Alias::User(s.to_string()));
    }
    if s.starts_with("group:") {
        return Ok(Alias::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        return Ok(Alias::Tag(s.to_string()));
    }
    if s.starts_with("autogroup:") {
        return Ok(Alias::AutoGroup(s.to_string()));
    }
    if s.starts_with("ipset:") {
        return Ok(Alias::IpSet(s.to_string()));
    }
    if !s.is_empty() && !s.contains(':') {
        if !s
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return err(format!("{s:?}: invalid address"));
        }
        return Ok(Alias::Host(s.to_string()));
    }
    err(format!("invalid alias format: {s:?}"))
}

/// An IP address (as a host prefix) or a CIDR.
pub fn parse_prefix(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok()
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

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

const TOP_LEVEL: [&str; 16] = [
    "acls",
    "grants",
    "groups",
    "hosts",
    "tagOwners",
    "autoApprovers",
    "ssh",
    "nodeAttrs",
    "tests",
    "sshTests",
    "postures",
    "ipsets",
    "derpMap",
    "disableIPv4",
    "OneCGNATRoute",
    "randomizeClientPort",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn want_object<'a>(
    v: &'a Value,
    what: &str,
) -> Result<Option<&'a Map<String, Value>>, PolicyError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(m)),
        other => err(format!(
            "{what}: cannot unmarshal {} into an object",
            type_name(other)
        )),
    }
}

fn want_array<'a>(v: &'a Value, what: &str) -> Result<Option<&'a Vec<Value>>, PolicyError> {
    match v {
        Value::Null => Ok(None),
        Value::Array(a) => Ok(Some(a)),
        other => err(format!(
            "{what}: cannot unmarshal {} into an array",
            type_name(other)
        )),
    }
}

fn want_string<'a>(v: &'a Value, what: &str) -> Result<&'a str, PolicyError> {
    match v {
        Value::String(s) => Ok(s),
        other => err(format!(
            "{what}: cannot unmarshal {} into a string",
            type_name(other)
        )),
    }
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| want_string(x, what).map(str::to_string))
            .collect(),
        other => err(format!(
            "{what}: cannot unmarshal {} into an array of strings",
            type_name(other)
        )),
    }
}

fn alias_list(v: &Value, what: &str) -> Result<Vec<Alias>, PolicyError> {
    string_list(v, what)?
        .iter()
        .map(|s| parse_alias(s))
        .collect()
}

fn unknown_field(name: &str) -> PolicyError {
    PolicyError {
        message: format!("unknown field: {name:?}"),
        position: None,
    }
}

fn want_bool(v: &Value, what: &str) -> Result<bool, PolicyError> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        other => err(format!(
            "{what}: cannot unmarshal {} into a boolean",
            type_name(other)
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// ports and protocols

/// Parse a port list: `*`, `22`, `80,443`, `1000-2000`.
pub fn parse_ports(def: &str) -> Result<Vec<PortRange>, String> {
    if def == "*" {
        return Ok(vec![PortRange::ANY]);
    }
    let mut out = Vec::new();
    for part in def.split(',') {
        if part.contains('-') {
            let pieces: Vec<&str> = part.split('-').filter(|p| !p.is_empty()).collect();
            let [a, b] = pieces.as_slice() else {
                return Err("invalid port range format".into());
            };
            let first = parse_port(a)?;
            let last = parse_port(b)?;
            if first > last {
                return Err("invalid port range: first port is greater than last port".into());
            }
            out.push(PortRange { first, last });
        } else {
            let p = parse_port(part)?;
            if p < 1 {
                return Err("first port must be >0, or use '*' for wildcard".into());
            }
            out.push(PortRange { first: p, last: p });
        }
    }
    Ok(out)
}

fn parse_port(s: &str) -> Result<u16, String> {
    // Go's strconv.Atoi: optional sign, decimal digits.
    let digits = s.strip_prefix('+').unwrap_or(s);
    let (neg, digits) = match digits.strip_prefix('-') {
        Some(d) if !s.starts_with('+') => (true, d),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid first integer".into());
    }
    let v: u64 = match digits.parse() {
        Ok(v) => v,
        Err(_) => return Err("port number out of range".into()),
    };
    if neg && v > 0 {
        return Err("port number out of range".into());
    }
    u16::try_from(v).map_err(|_| "port number out of range".into())
}

/// Split `host:ports` at the last colon; `[v6]:ports` for IPv6 addresses.
pub fn split_destination_and_port(input: &str) -> Result<(String, String), String> {
    let mut input = input.to_string();
    if input.starts_with('[') {
        let Some(close) = input.find(']') else {
            return Err("square brackets are only valid around IPv6 addresses".into());
        };
        let host = input.get(1..close).unwrap_or("").to_string();
        if !matches!(host.parse::<IpAddr>(), Ok(IpAddr::V6(_))) {
            return Err(format!(
                "square brackets are only valid around IPv6 addresses: {host:?}"
            ));
        }
        let rest = input.get(close + 1..).unwrap_or("").to_string();
        if !(rest.starts_with(':') || rest.starts_with('/')) {
            return Err(format!(
                "square brackets are only valid around IPv6 addresses: {input:?}"
            ));
        }
        input = format!("{host}{rest}");
    }
    let Some(i) = input.rfind(':') else {
        return Err("input must contain a colon character separating destination and port".into());
    };
    if i == 0 {
        return Err("input cannot start with a colon character".into());
    }
    if i == input.len() - 1 {
        return Err("input cannot end with a colon character".into());
    }
    Ok((
        input.get(..i).unwrap_or("").to_string(),
        input.get(i + 1..).unwrap_or("").to_string(),
    ))
}

/// Parse an ACL destination `alias:ports`.
pub fn parse_alias_with_ports(s: &str) -> Result<AliasWithPorts, PolicyError> {
    if !s.contains(':') {
        return err("hostport must contain a colon");
    }
    let (host, ports) = split_destination_and_port(s).map_err(|m| PolicyError {
        message: m,
        position: None,
    })?;
    let ports = parse_ports(&ports).map_err(|m| PolicyError {
        message: format!("dst={s:?}: port range {ports:?}: {m}"),
        position: None,
    })?;
    let alias = parse_alias(&host)?;
    Ok(AliasWithPorts { alias, ports })
}

/// Protocol names Tailscale accepts, with their numbers.
pub const PROTOCOL_NAMES: [(&str, u8); 14] = [
    ("icmp", 1),
    ("igmp", 2),
    ("ipv4", 4),
    ("ip-in-ip", 4),
    ("tcp", 6),
    ("egp", 8),
    ("igp", 9),
    ("udp", 17),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("ipv6-icmp", 58),
    ("sctp", 132),
    ("fc", 133),
];

/// Parse a protocol (`tcp`, `6`, …) into its number(s).
pub fn parse_protocol(raw: &str) -> Result<Vec<u8>, String> {
    let p = raw.to_lowercase();
    if p.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == p) {
        return Ok(vec![*n]);
    }
    if p == "*" {
        return Err(
            "proto name \"*\" not known; use protocol number 0-255 or protocol name (icmp, tcp, udp, etc.)"
                .into(),
        );
    }
    if p == "0" || (p.len() > 1 && p.starts_with('0')) {
        return Err(format!("leading 0 not permitted in protocol number: {p:?}"));
    }
    let Ok(n) = p.parse::<i64>() else {
        return Err(format!(
            "invalid protocol number: {p:?} must be a known protocol name or valid protocol number 0-255"
        ));
    };
    match u8::try_from(n) {
        Ok(n) => Ok(vec![n]),
        Err(_) => Err(format!("protocol number out of range (0-255): {n}")),
    }
}

fn supports_ports(protos: &[u8]) -> bool {
    protos.is_empty() || protos.iter().all(|p| matches!(p, 6 | 17 | 132))
}

/// Parse a grant `ip` entry: `*`, `22`, `80-443`, `tcp:443`, `icmp:*`.
pub fn parse_ip_entry(s: &str) -> Result<ProtoPorts, PolicyError> {
    if s == "*" {
        return Ok(ProtoPorts {
            protos: Vec::new(),
            ports: vec![PortRange::ANY],
        });
    }
    if !s.contains(':') {
        let ports = parse_ports(s).map_err(|m| PolicyError {
            message: format!("port range {s:?}: {m}"),
            position: None,
        })?;
        return Ok(ProtoPorts {
            protos: Vec::new(),
            ports,
        });
    }
    let parts: Vec<&str> = s.split(':').collect();
    let [proto, ports] = parts.as_slice() else {
        return err(format!(
            "expected only one colon in Internet protocol and port type, got: [{}]({})",
            parts.join(" "),
            parts.len()
        ));
    };
    let protos = parse_protocol(proto).map_err(|m| PolicyError {
        message: m,
        position: None,
    })?;
    if protos.is_empty() && proto.is_empty() {
        // ":80" — protocol name missing
        return err(format!(
            "invalid protocol number: {:?} must be a known protocol name or valid protocol number 0-255",
            proto
        ));
    }
    let ports = parse_ports(ports).map_err(|m| PolicyError {
        message: format!("port range {ports:?}: {m}"),
        position: None,
    })?;
    Ok(ProtoPorts { protos, ports })
}

/// `tailcfg.CheckTag`.
pub fn check_tag(tag: &str) -> Result<(), &'static str> {
    let Some(name) = tag.strip_prefix("tag:") else {
        return Err("tags must start with 'tag:'");
    };
    let Some(first) = name.bytes().next() else {
        return Err("tag names must not be empty");
    };
    if !first.is_ascii_alphabetic() {
        return Err("tag names must start with a letter, after 'tag:'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("tag names can only contain numbers, letters, or dashes");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// decoding

impl Policy {
    /// Parse and validate a policy file.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let v = hujson::parse(text).map_err(|e| PolicyError {
            message: e.message.clone(),
            position: Some((e.line, e.column)),
        })?;
        Policy::from_value(&v)
    }

    /// Decode and validate an already parsed JSON value.
    pub fn from_value(v: &Value) -> Result<Policy, PolicyError> {
        let Some(top) = want_object(v, "policy")? else {
            return err("policy: cannot unmarshal null into an object");
        };
        let mut p = Policy::default();
        for (key, val) in top {
            if !TOP_LEVEL.contains(&key.as_str()) {
                return Err(unknown_field(key));
            }
            match key.as_str() {
                "acls" => {
                    p.acls = want_array(val, "acls")?
                        .map(|a| a.iter().map(decode_acl).collect::<Result<Vec<_>, _>>())
                        .transpose()?;
                }
                "grants" => {
                    p.grants = want_array(val, "grants")?
                        .map(|a| a.iter().map(decode_grant).collect::<Result<Vec<_>, _>>())
                        .transpose()?;
                }
                "groups" => p.groups = decode_groups(val)?,
                "hosts" => p.hosts = decode_hosts(val)?,
                "tagOwners" => p.tag_owners = decode_tag_owners(val)?,
                "autoApprovers" => p.auto_approvers = decode_auto_approvers(val)?,
                "ssh" => {
                    if let Some(a) = want_array(val, "ssh")? {
                        p.ssh = a.iter().map(decode_ssh).collect::<Result<_, _>>()?;
                    }
                }
                "nodeAttrs" => {
                    if let Some(a) = want_array(val, "nodeAttrs")? {
                        p.node_attrs = a.iter().map(decode_node_attr).collect::<Result<_, _>>()?;
                    }
                }
                "tests" => {
                    if let Some(a) = want_array(val, "tests")? {
                        p.tests = a.iter().map(decode_test).collect::<Result<_, _>>()?;
                    }
                }
                "sshTests" => {
                    if let Some(a) = want_array(val, "sshTests")? {
                        for t in a {
                            want_object(t, "sshTests")?;
                        }
                        p.ssh_tests = a.clone();
                    }
                }
                "postures" => {
                    if let Some(m) = want_object(val, "postures")? {
                        for (k, v) in m {
                            if !k.starts_with("posture:") {
                                return err(format!(
                                    "postures: {k:?}: posture names must start with 'posture:'"
                                ));
                            }
                            p.postures.insert(k.clone(), string_list(v, "postures")?);
                        }
                    }
                }
                "ipsets" => p.ipsets = decode_ipsets(val)?,
                "derpMap" => {
                    want_object(val, "derpMap")?;
                    p.derp_map = Some(val.clone());
                }
                "disableIPv4" => p.disable_ipv4 = want_bool(val, "disableIPv4")?,
                "OneCGNATRoute" => p.one_cgnat_route = Some(val.clone()),
                "randomizeClientPort" => {
                    p.randomize_client_port = want_bool(val, "randomizeClientPort")?
                }
                _ => return Err(unknown_field(key)),
            }
        }
        p.validate()?;
        Ok(p)
    }
}

fn fields<'a>(
    v: &'a Value,
    what: &str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a Value)>, PolicyError> {
    let Some(m) = want_object(v, what)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (k, val) in m {
        if k.starts_with('#') {
            continue; // comment keys
        }
        if !allowed.contains(&k.as_str()) {
            return Err(unknown_field(k));
        }
        out.push((k.as_str(), val));
    }
    Ok(out)
}

fn decode_acl(v: &Value) -> Result<Acl, PolicyError> {
    let f = fields(
        v,
        "acls",
        &[
            "action",
            "src",
            "dst",
            "proto",
            "users",
            "ports",
            "srcPosture",
        ],
    )?;
    let mut acl = Acl {
        action: String::new(),
        proto: None,
        protos: Vec::new(),
        src: Vec::new(),
        dst: Vec::new(),
        src_posture: Vec::new(),
    };
    let (mut has_src, mut has_users, mut has_dst, mut has_ports) = (false, false, false, false);
    let mut action_seen = false;
    for (k, val) in f {
        match k {
            "action" => {
                let a = want_string(val, "action")?;
                if a != "accept" {
                    return err(format!("action={a:?} is not supported"));
                }
                action_seen = true;
                acl.action = a.to_string();
            }
            "src" | "users" => {
                if k == "src" {
                    has_src = true;
                } else {
                    has_users = true;
                }
                acl.src.extend(alias_list(val, k)?);
            }
            "dst" | "ports" => {
                if k == "dst" {
                    has_dst = true;
                } else {
                    has_ports = true;
                }
                for s in string_list(val, k)? {
                    acl.dst.push(parse_alias_with_ports(&s)?);
                }
            }
            "proto" => {
                let raw = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return err(format!(
                            "proto: cannot unmarshal {} into a string",
                            type_name(other)
                        ));
                    }
                };
                acl.protos = parse_protocol(&raw).map_err(|m| PolicyError {
                    message: m,
                    position: None,
                })?;
                if !raw.is_empty() {
                    acl.proto = Some(raw.to_lowercase());
                }
            }
            "srcPosture" => acl.src_posture = string_list(val, k)?,
            _ => return Err(unknown_field(k)),
        }
    }
    if !action_seen {
        return err("action=\"\" is not supported");
    }
    if has_src && has_users {
        return err("acl: \"src\" and \"users\" cannot both be set");
    }
    if has_dst && has_ports {
        return err("acl: \"dst\" and \"ports\" cannot both be set");
    }
    Ok(acl)
}

fn decode_grant(v: &Value) -> Result<Grant, PolicyError> {
    let f = fields(
        v,
        "grants",
        &["src", "dst", "ip", "app", "via", "srcPosture", "dstPosture"],
    )?;
    let mut g = Grant {
        src: Vec::new(),
        dst: Vec::new(),
        ip: Vec::new(),
        app: None,
        via: Vec::new(),
        src_posture: Vec::new(),
    };
    for (k, val) in f {
        match k {
            "src" => g.src = alias_list(val, k)?,
            "dst" => g.dst = alias_list(val, k)?,
            "ip" => {
                for s in string_list(val, k)? {
                    g.ip.push(parse_ip_entry(&s)?);
                }
            }
            "app" => {
                if let Some(m) = want_object(val, "app")? {
                    let mut app = BTreeMap::new();
                    for (name, vals) in m {
                        let list = match vals {
                            Value::Array(a) => a.clone(),
                            Value::Null => Vec::new(),
                            other => {
                                return err(format!(
                                    "app[{name:?}]: cannot unmarshal {} into an array",
                                    type_name(other)
                                ));
                            }
                        };
                        app.insert(name.clone(), list);
                    }
                    g.app = Some(app);
                }
            }
            "via" => {
                for s in string_list(val, k)? {
                    if !s.starts_with("tag:") {
                        return err("via can only be a tag");
                    }
                    g.via.push(s);
                }
            }
            "srcPosture" | "dstPosture" => g.src_posture.extend(string_list(val, k)?),
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(g)
}

fn decode_groups(v: &Value) -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
    let Some(m) = want_object(v, "groups")? else {
        return Ok(BTreeMap::new());
    };
    for key in m.keys() {
        if !key.starts_with("group:") {
            return err(format!("group must start with 'group:', got: {key:?}"));
        }
    }
    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, val) in m {
        let members = match val {
            Value::Array(a) => {
                let mut out = Vec::new();
                for item in a {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            return err(format!(
                                "invalid group member type: group {key:?} expected string but got {}",
                                type_name(other)
                            ));
                        }
                    }
                }
                out
            }
            Value::String(s) => {
                return err(format!(
                    "group value must be an array of users: group {key:?} got string: {s:?}"
                ));
            }
            Value::Null => Vec::new(),
            other => {
                return err(format!(
                    "group value must be an array of users: group {key:?} got {}",
                    type_name(other)
                ));
            }
        };
        raw.insert(key.clone(), members);
    }
    // Tailscale reports recursion for the last group name (in sorted order) first.
    for (key, members) in raw.iter().rev() {
        for u in members {
            if u.starts_with("group:") {
                return err(format!(
                    "groups[{key:?}]: {u:?}: group members cannot be recursive"
                ));
            }
        }
    }
    for members in raw.values() {
        for u in members {
            if !u.contains('@') {
                return err(format!("username must contain @, got: {u:?}"));
            }
        }
    }
    Ok(raw)
}

fn decode_hosts(v: &Value) -> Result<BTreeMap<String, IpNet>, PolicyError> {
    let Some(m) = want_object(v, "hosts")? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        if k.contains('@') || k.contains(':') || k.is_empty() {
            return err(format!("invalid hostname: {k:?}"));
        }
        let s = want_string(val, "hosts")?;
        let Some(p) = parse_prefix(s) else {
            return err(format!(
                "hostname contains invalid IP address: hostname {k:?} address {s:?}"
            ));
        };
        out.insert(k.clone(), p);
    }
    Ok(out)
}

fn parse_owner(s: &str) -> Result<Alias, PolicyError> {
    let s = s.trim();
    if s.contains('@') {
        return Ok(Alias::User(s.to_string()));
    }
    if s.starts_with("group:") {
        return Ok(Alias::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        return Ok(Alias::Tag(s.to_string()));
    }
    if s.starts_with("autogroup:") {
        return Ok(Alias::AutoGroup(s.to_string()));
    }
    err(format!("invalid owner format: {s:?}"))
}

fn decode_tag_owners(v: &Value) -> Result<BTreeMap<String, Vec<Alias>>, PolicyError> {
    let Some(m) = want_object(v, "tagOwners")? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        check_tag(k).map_err(|e| PolicyError {
            message: format!("tagOwners[{k:?}]: {e}"),
            position: None,
        })?;
        let owners = string_list(val, "tagOwners")?
            .iter()
            .map(|s| parse_owner(s))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(k.clone(), owners);
    }
    Ok(out)
}

fn parse_approver(s: &str) -> Result<Alias, PolicyError> {
    let s = s.trim();
    if s.contains('@') {
        return Ok(Alias::User(s.to_string()));
    }
    if s.starts_with("group:") {
        return Ok(Alias::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        return Ok(Alias::Tag(s.to_string()));
    }
    if s.starts_with("autogroup:") {
        return Ok(Alias::AutoGroup(s.to_string()));
    }
    err(format!("invalid auto approver format: {s:?}"))
}

fn decode_auto_approvers(v: &Value) -> Result<AutoApprovers, PolicyError> {
    let mut out = AutoApprovers::default();
    for (k, val) in fields(v, "autoApprovers", &["routes", "exitNode", "services"])? {
        match k {
            "routes" => {
                if let Some(m) = want_object(val, "routes")? {
                    for (route, approvers) in m {
                        let Ok(net) = route.parse::<IpNet>() else {
                            return err(format!("autoApprovers.routes: invalid prefix {route:?}"));
                        };
                        let list = string_list(approvers, "routes")?
                            .iter()
                            .map(|s| parse_approver(s))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.routes.push((net, list));
                    }
                }
            }
            "exitNode" => {
                out.exit_node = string_list(val, "exitNode")?
                    .iter()
                    .map(|s| parse_approver(s))
                    .collect::<Result<Vec<_>, _>>()?;
            }
            "services" => {
                want_object(val, "services")?;
            }
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(out)
}

fn decode_ssh(v: &Value) -> Result<SshRule, PolicyError> {
    let mut r = SshRule {
        action: String::new(),
        src: Vec::new(),
        dst: Vec::new(),
        users: Vec::new(),
        check_period: None,
        accept_env: Vec::new(),
    };
    for (k, val) in fields(
        v,
        "ssh",
        &[
            "action",
            "src",
            "dst",
            "users",
            "checkPeriod",
            "acceptEnv",
            "srcPosture",
        ],
    )? {
        match k {
            "action" => {
                let a = want_string(val, "action")?.trim();
                if !matches!(a, "" | "accept" | "check") {
                    return err(format!("{a:?} is not a valid action"));
                }
                r.action = a.to_string();
            }
            "src" => r.src = alias_list(val, k)?,
            "dst" => r.dst = alias_list(val, k)?,
            "users" => {
                r.users = string_list(val, k)?
                    .into_iter()
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            "checkPeriod" => {
                r.check_period = match val {
                    Value::Null => None,
                    other => Some(want_string(other, k)?.to_string()),
                }
            }
            "acceptEnv" => r.accept_env = string_list(val, k)?,
            "srcPosture" => {
                string_list(val, k)?;
            }
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(r)
}

fn decode_node_attr(v: &Value) -> Result<NodeAttr, PolicyError> {
    let mut n = NodeAttr {
        target: Vec::new(),
        attr: Vec::new(),
        ip_pool: Vec::new(),
    };
    for (k, val) in fields(v, "nodeAttrs", &["target", "attr", "ipPool", "app"])? {
        match k {
            "target" => n.target = alias_list(val, k)?,
            "attr" => {
                if let Some(a) = want_array(val, "attr")? {
                    n.attr = a.clone();
                }
            }
            "ipPool" => n.ip_pool = string_list(val, k)?,
            "app" => {
                want_object(val, "app")?;
            }
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(n)
}

fn decode_ipsets(v: &Value) -> Result<BTreeMap<String, Vec<(bool, Alias)>>, PolicyError> {
    let Some(m) = want_object(v, "ipsets")? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        if !k.starts_with("ipset:") {
            return err(format!(
                "ipsets: {k:?}: ipset names must start with 'ipset:'"
            ));
        }
        let mut entries = Vec::new();
        for s in string_list(val, "ipsets")? {
            let s = s.trim();
            let (remove, rest) = if let Some(r) = s.strip_prefix("remove ") {
                (true, r)
            } else if let Some(r) = s.strip_prefix("add ") {
                (false, r)
            } else {
                (false, s)
            };
            entries.push((remove, parse_alias(rest)?));
        }
        out.insert(k.clone(), entries);
    }
    Ok(out)
}

fn decode_test(v: &Value) -> Result<AclTest, PolicyError> {
    let mut t = AclTest {
        src: String::new(),
        proto: None,
        protos: Vec::new(),
        accept: Vec::new(),
        deny: Vec::new(),
        problem: None,
    };
    let mut has_src = false;
    for (k, val) in fields(
        v,
        "tests",
        &[
            "src",
            "user",
            "proto",
            "accept",
            "allow",
            "deny",
            "srcPostureAttrs",
        ],
    )? {
        match k {
            "src" | "user" => {
                has_src = true;
                t.src = want_string(val, k)?.trim().to_string();
            }
            "proto" => {
                let raw = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return err(format!(
                            "proto: cannot unmarshal {} into a string",
                            type_name(other)
                        ));
                    }
                };
                if !raw.is_empty() {
                    t.proto = Some(raw.to_lowercase());
                }
                match parse_protocol(&raw) {
                    Ok(p) => {
                        if !p.is_empty() && !p.iter().all(|n| matches!(n, 6 | 17 | 132)) {
                            t.problem.get_or_insert_with(|| {
                                format!("test protocol must be tcp, udp, sctp, or empty: {raw:?}")
                            });
                        }
                        t.protos = p;
                    }
                    Err(m) => {
                        t.problem.get_or_insert(m);
                    }
                }
            }
            "accept" | "allow" => t.accept.extend(string_list(val, k)?),
            "deny" => t.deny.extend(string_list(val, k)?),
            "srcPostureAttrs" => {
                want_object(val, k)?;
            }
            _ => return Err(unknown_field(k)),
        }
    }
    if !has_src || t.src.is_empty() {
        t.problem
            .get_or_insert_with(|| "test entry must have a non-empty src".to_string());
    }
    if t.accept.is_empty() && t.deny.is_empty() {
        t.problem.get_or_insert_with(|| {
            "test entry must have at least one of \"accept\" or \"deny\"".to_string()
        });
    }
    Ok(t)
}

// ---------------------------------------------------------------------------------------------
// validation

const SRC_AUTOGROUPS: [&str; 3] = [AUTOGROUP_MEMBER, AUTOGROUP_TAGGED, AUTOGROUP_DANGER_ALL];
const DST_AUTOGROUPS: [&str; 4] = [
    AUTOGROUP_INTERNET,
    AUTOGROUP_MEMBER,
    AUTOGROUP_TAGGED,
    AUTOGROUP_SELF,
];

fn check_src_autogroup(ag: &str) -> Result<(), PolicyError> {
    if ag == AUTOGROUP_INTERNET {
        return err("autogroup:internet can only be used in ACL destinations");
    }
    if ag == AUTOGROUP_SELF {
        return err("\"autogroup:self\" not valid on the src side of a rule");
    }
    if SRC_AUTOGROUPS.contains(&ag) || is_role_autogroup(ag) || ag == AUTOGROUP_SHARED {
        return Ok(());
    }
    err(format!(
        "autogroup not supported for ACL sources: {ag:?}, can be [{}]",
        SRC_AUTOGROUPS.join(" ")
    ))
}

fn check_dst_autogroup(ag: &str) -> Result<(), PolicyError> {
    if ag == AUTOGROUP_DANGER_ALL {
        return err("cannot use autogroup:danger-all as a dst");
    }
    if DST_AUTOGROUPS.contains(&ag) || is_role_autogroup(ag) {
        return Ok(());
    }
    err(format!(
        "autogroup not supported for ACL destinations: {ag:?}, can be [{}]",
        DST_AUTOGROUPS.join(" ")
    ))
}

/// Capability names allowed in the `tailscale.com` domain.
const TAILSCALE_CAP_ALLOWLIST: [&str; 6] = [
    "tailscale.com/cap/drive",
    "tailscale.com/cap/relay",
    "tailscale.com/cap/webui",
    "tailscale.com/cap/kubernetes",
    "tailscale.com/cap/tsidp",
    "tailscale.com/cap/secrets",
];

fn check_cap_name(name: &str) -> Result<(), PolicyError> {
    let form_ok = match name.split_once('/') {
        Some((domain, path)) => {
            !name.contains("://")
                && !domain.is_empty()
                && !path.is_empty()
                && !domain.contains(char::is_whitespace)
        }
        None => false,
    };
    if !form_ok {
        return err("capability name must have the form {domain}/{path}");
    }
    if name.starts_with("tailscale.com/") && !TAILSCALE_CAP_ALLOWLIST.contains(&name) {
        return err("capability name must not be in the tailscale.com domain");
    }
    Ok(())
}

impl Policy {
    fn check_group(&self, g: &str) -> Result<(), PolicyError> {
        if self.groups.contains_key(g) {
            Ok(())
        } else {
            err(format!("group not defined in policy: {g:?}"))
        }
    }

    fn check_host(&self, h: &str) -> Result<(), PolicyError> {
        if self.hosts.contains_key(h) {
            Ok(())
        } else {
            err(format!("host not defined in policy: {h:?}"))
        }
    }

    fn has_tag(&self, t: &str) -> bool {
        self.tag_owners.contains_key(t)
    }

    fn check_ipset(&self, s: &str) -> Result<(), PolicyError> {
        if self.ipsets.contains_key(s) {
            Ok(())
        } else {
            err(format!("ipset not defined in policy: {s:?}"))
        }
    }

    fn check_src_alias(&self, a: &Alias) -> Result<(), PolicyError> {
        match a {
            Alias::Host(h) => self.check_host(h),
            Alias::AutoGroup(ag) => check_src_autogroup(ag),
            Alias::Group(g) => self.check_group(g),
            Alias::Tag(t) if !self.has_tag(t) => err(format!("src=tag not found: {t:?}")),
            Alias::IpSet(s) => self.check_ipset(s),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), PolicyError> {
        for acl in self.acls.iter().flatten() {
            for s in &acl.src {
                self.check_src_alias(s)?;
            }
            for d in &acl.dst {
                match &d.alias {
                    Alias::Host(h) => self.check_host(h)?,
                    Alias::AutoGroup(ag) => check_dst_autogroup(ag)?,
                    Alias::Group(g) => self.check_group(g)?,
                    Alias::Tag(t) if !self.has_tag(t) => {
                        return err(format!("dst={t:?}: tag not found: {t:?}"));
                    }
                    Alias::IpSet(s) => self.check_ipset(s)?,
                    _ => {}
                }
            }
            if !supports_ports(&acl.protos) {
                for d in &acl.dst {
                    if d.ports.iter().any(|p| *p != PortRange::ANY) {
                        return err(format!(
                            "protocol does not support specific ports: {:?}, only \"*\" is allowed",
                            acl.proto.as_deref().unwrap_or("")
                        ));
                    }
                }
            }
            let has_self = acl
                .dst
                .iter()
                .any(|d| d.alias == Alias::AutoGroup(AUTOGROUP_SELF.into()));
            if has_self {
                for s in &acl.src {
                    let ok = match s {
                        Alias::User(_) | Alias::Group(_) | Alias::Wildcard => true,
                        Alias::AutoGroup(ag) => ag == AUTOGROUP_MEMBER,
                        _ => false,
                    };
                    if !ok {
                        return err(
                            "autogroup:self can only be used with users, groups, or supported autogroups",
                        );
                    }
                }
            }
        }

        for ssh in &self.ssh {
            self.validate_ssh(ssh)?;
        }

        for g in self.grants.iter().flatten() {
            self.validate_grant(g)?;
        }

        for na in &self.node_attrs {
            for t in &na.target {
                match t {
                    Alias::Host(h) => self.check_host(h)?,
                    Alias::AutoGroup(ag) => {
                        if ag == AUTOGROUP_SELF {
                            // Tailscale's API answers exactly this.
                            return err("internal server error");
                        }
                        if ag != AUTOGROUP_MEMBER
                            && ag != AUTOGROUP_TAGGED
                            && !is_role_autogroup(ag)
                        {
                            return err(format!(
                                "nodeAttrs target does not support this autogroup: {ag:?}, can be [autogroup:member autogroup:tagged]"
                            ));
                        }
                    }
                    Alias::Group(g) => self.check_group(g)?,
                    Alias::Tag(t) if !self.has_tag(t) => {
                        return err(format!("tag not found: {t:?}"));
                    }
                    _ => {}
                }
            }
        }

        for na in &self.node_attrs {
            for pool in &na.ip_pool {
                let Some(net) = parse_prefix(pool) else {
                    return err(format!("IPPool({pool}): invalid prefix"));
                };
                let set = crate::ipset::IpSet::from_nets([&net]);
                let reserved = ["100.100.100.0/24", "100.115.92.0/23"];
                if reserved
                    .iter()
                    .filter_map(|r| parse_prefix(r))
                    .any(|r| set.overlaps_net(&r))
                {
                    return err(format!(
                        "IPPool({}): network within reserved range",
                        net.trunc()
                    ));
                }
                if !crate::ipset::cgnat().contains(&net) {
                    return err(format!(
                        "IPPool({}): network not within 100.64.0.0/10",
                        net.trunc()
                    ));
                }
            }
        }

        for owners in self.tag_owners.values() {
            for o in owners {
                match o {
                    Alias::Group(g) => self.check_group(g)?,
                    Alias::Tag(t) if !self.has_tag(t) => {
                        return err(format!("tag not found: {t:?}"));
                    }
                    _ => {}
                }
            }
        }

        for approver in self
            .auto_approvers
            .routes
            .iter()
            .flat_map(|(_, a)| a.iter())
            .chain(self.auto_approvers.exit_node.iter())
        {
            match approver {
                Alias::Group(g) => self.check_group(g)?,
                Alias::Tag(t) if !self.has_tag(t) => {
                    return err(format!("tag not found: {t:?}"));
                }
                _ => {}
            }
        }

        for set in self.ipsets.values() {
            for (_, a) in set {
                match a {
                    Alias::Host(h) => self.check_host(h)?,
                    Alias::IpSet(s) => self.check_ipset(s)?,
                    Alias::Prefix(_) => {}
                    other => {
                        return err(format!("ipsets: {} is not an address or a host", other));
                    }
                }
            }
        }
        self.check_ipset_cycles()?;
        Ok(())
    }

    fn check_ipset_cycles(&self) -> Result<(), PolicyError> {
        fn visit(
            p: &Policy,
            name: &str,
            stack: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Result<(), PolicyError> {
            if done.contains(name) {
                return Ok(());
            }
            if stack.iter().any(|s| s == name) || stack.len() > 64 {
                return err(format!("ipsets: {name:?} references itself"));
            }
            stack.push(name.to_string());
            for (_, a) in p.ipsets.get(name).into_iter().flatten() {
                if let Alias::IpSet(inner) = a {
                    visit(p, inner, stack, done)?;
                }
            }
            stack.pop();
            done.insert(name.to_string());
            Ok(())
        }
        let mut done = BTreeSet::new();
        for name in self.ipsets.keys() {
            visit(self, name, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }

    fn validate_grant(&self, g: &Grant) -> Result<(), PolicyError> {
        let has_app = g.app.as_ref().is_some_and(|a| !a.is_empty());
        if g.ip.is_empty() && !has_app {
            return err("ip and app can not both be empty");
        }
        for name in g.app.iter().flat_map(|a| a.keys()) {
            check_cap_name(name)?;
        }
        if has_app
            && g.dst
                .iter()
                .any(|d| *d == Alias::AutoGroup(AUTOGROUP_INTERNET.into()))
        {
            return err("cannot use app grants with autogroup:internet");
        }
        for d in &g.dst {
            if let Alias::Prefix(p) = d
                && p.prefix_len() == 0
            {
                return err(format!(
                    "dst {:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\"",
                    p.trunc().to_string()
                ));
            }
        }
        for s in &g.src {
            self.check_src_alias(s)?;
        }
        for d in &g.dst {
            match d {
                Alias::Host(h) => self.check_host(h)?,
                Alias::AutoGroup(ag) => check_dst_autogroup(ag)?,
                Alias::Group(gr) => self.check_group(gr)?,
                Alias::Tag(t) if !self.has_tag(t) => {
                    return err(format!("tag not found: {t:?}"));
                }
                Alias::IpSet(s) => self.check_ipset(s)?,
                _ => {}
            }
        }
        for v in &g.via {
            if !self.has_tag(v) {
                return err(format!("tag {v:?} not found"));
            }
        }
        if g.dst
            .iter()
            .any(|d| *d == Alias::AutoGroup(AUTOGROUP_SELF.into()))
        {
            for s in &g.src {
                let ok = match s {
                    Alias::User(_) | Alias::Group(_) => true,
                    Alias::AutoGroup(ag) => ag == AUTOGROUP_MEMBER,
                    _ => false,
                };
                if !ok {
                    return err(
                        "autogroup:self can only be used with users, groups, or supported autogroups",
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_ssh(&self, ssh: &SshRule) -> Result<(), PolicyError> {
        if ssh.action.is_empty() {
            return err("action must be specified");
        }
        if ssh.users.is_empty() {
            return err("users must be specified");
        }
        for u in &ssh.users {
            if u.is_empty() || u == "*" {
                return err(format!("user {u:?} is not valid"));
            }
        }
        for e in &ssh.accept_env {
            if e.is_empty() {
                return err("acceptEnv values cannot be empty");
            }
        }
        for s in &ssh.src {
            match s {
                Alias::AutoGroup(ag) => {
                    if ag == AUTOGROUP_INTERNET {
                        return err("autogroup:internet can only be used in ACL destinations");
                    }
                    if ag != AUTOGROUP_MEMBER && ag != AUTOGROUP_TAGGED && !is_role_autogroup(ag) {
                        return err(format!(
                            "autogroup not supported for SSH sources: {ag:?}, can be [autogroup:member autogroup:tagged]"
                        ));
                    }
                }
                Alias::Group(g) => self.check_group(g)?,
                Alias::Tag(t) if !self.has_tag(t) => {
                    return err(format!("tag not found: {t:?}"));
                }
                _ => {}
            }
        }
        for d in &ssh.dst {
            match d {
                Alias::AutoGroup(ag) => {
                    if ag == AUTOGROUP_INTERNET {
                        return err("autogroup:internet can only be used in ACL destinations");
                    }
                    if ag != AUTOGROUP_MEMBER && ag != AUTOGROUP_TAGGED && ag != AUTOGROUP_SELF {
                        return err(format!(
                            "autogroup not supported for SSH destinations: {ag:?}, can be [autogroup:member autogroup:tagged autogroup:self]"
                        ));
                    }
                }
                Alias::Tag(t) if !self.has_tag(t) => {
                    return err(format!("tag not found: {t:?}"));
                }
                Alias::Host(h) => return err(format!("invalid dst {h:?}")),
                Alias::Group(g) => self.check_group(g)?,
                _ => {}
            }
        }
        let src_tagged = ssh
            .src
            .iter()
            .any(|s| matches!(s, Alias::Tag(_)) || *s == Alias::AutoGroup(AUTOGROUP_TAGGED.into()));
        if src_tagged && ssh.dst.contains(&Alias::AutoGroup(AUTOGROUP_SELF.into())) {
            return err(
                "autogroup:self destination requires source to contain only users or groups, not tags or autogroup:tagged",
            );
        }
        if let Some(cp) = &ssh.check_period {
            if ssh.action != "check" {
                return err("checkPeriod is only valid with action \"check\"");
            }
            if cp != "always" {
                let d = go_duration::parse(cp)?;
                if d < 0 {
                    return err(format!(
                        "checkPeriod {} must be a positive duration",
                        go_duration::format(d)
                    ));
                }
                if d > 168 * 3600 * 1_000_000_000 {
                    return err(format!(
                        "checkPeriod {} is above the max (168h)",
                        go_duration::format(d)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that need the tailnet: `user:*@<domain>` and `localpart:*@<domain>` must name the
    /// tailnet's domain (the domain of its first user, the owner).
    pub fn validate_against(&self, topo: &crate::topology::Topology) -> Result<(), PolicyError> {
        let Some(owner) = topo.users.first() else {
            return Ok(());
        };
        let Some((_, domain)) = owner.email.rsplit_once('@') else {
            return Ok(());
        };
        let check = |d: &str, prefix: &str| -> Result<(), PolicyError> {
            if d == domain || d.is_empty() {
                Ok(())
            } else {
                err(format!(
                    "{prefix}{d} is not associated with this Tailnet and cannot be used in user:*@<domain> expressions"
                ))
            }
        };
        let user_domain = |a: &Alias| match a {
            Alias::User(u) => u.strip_prefix("user:*@").map(str::to_string),
            _ => None,
        };
        for acl in self.acls.iter().flatten() {
            for a in acl.src.iter().chain(acl.dst.iter().map(|d| &d.alias)) {
                if let Some(d) = user_domain(a) {
                    check(&d, "")?;
                }
            }
        }
        for g in self.grants.iter().flatten() {
            for a in g.src.iter().chain(&g.dst) {
                if let Some(d) = user_domain(a) {
                    check(&d, "")?;
                }
            }
        }
        for r in &self.ssh {
            for a in r.src.iter().chain(&r.dst) {
                if let Some(d) = user_domain(a) {
                    check(&d, "[ssh] ")?;
                }
            }
            for u in &r.users {
                if let Some(d) = u.strip_prefix("localpart:*@") {
                    check(d, "")?;
                }
            }
        }
        Ok(())
    }

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

/// Go's `time.ParseDuration` / `Duration.String`, for `checkPeriod` messages.
pub mod go_duration {
    use super::PolicyError;

    /// Nanoseconds.
    pub fn parse(s: &str) -> Result<i128, PolicyError> {
        let bad = || PolicyError {
            message: format!("time: invalid duration {s:?}"),
            position: None,
        };
        let (neg, mut rest) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        if rest == "0" {
            return Ok(0);
        }
        if rest.is_empty() {
            return Err(bad());
        }
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let int_end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let int_part = rest.get(..int_end).unwrap_or("");
            rest = rest.get(int_end..).unwrap_or("");
            let mut frac_part = "";
            if let Some(r) = rest.strip_prefix('.') {
                let fe = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                frac_part = r.get(..fe).unwrap_or("");
                rest = r.get(fe..).unwrap_or("");
            }
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(bad());
            }
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = rest.get(..unit_end).unwrap_or("");
            rest = rest.get(unit_end..).unwrap_or("");
            let mult: i128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(bad()),
            };
            let int: i128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| bad())?
            };
            let mut v = int.checked_mul(mult).ok_or_else(bad)?;
            let mut scale = mult;
            for c in frac_part.chars().take(30) {
                scale /= 10;
                v += i128::from(c.to_digit(10).unwrap_or(0) as u8) * scale;
            }
            total = total.checked_add(v).ok_or_else(bad)?;
            if total > i128::from(i64::MAX) {
                return Err(bad());
            }
        }
        Ok(if neg { -total } else { total })
    }

    fn frac(v: i128, digits: u32) -> String {
        // v has `digits` fractional digits; print trimmed
        let p = 10i128.pow(digits);
        let (i, f) = (v / p, v % p);
        if f == 0 {
            return i.to_string();
        }
        let fs = format!("{:0width$}", f, width = digits as usize);
        format!("{i}.{}", fs.trim_end_matches('0'))
    }

    /// Format like Go's `Duration.String` (`168h0m1s`, `-1m0s`, `1.5s`, `300ms`).
    pub fn format(d: i128) -> String {
        if d == 0 {
            return "0s".into();
        }
        let neg = d < 0;
        let u = d.abs();
        let body = if u < 1_000 {
            format!("{u}ns")
        } else if u < 1_000_000 {
            format!("{}\u{b5}s", frac(u, 3))
        } else if u < 1_000_000_000 {
            format!("{}ms", frac(u, 6))
        } else {
            let h = u / 3_600_000_000_000;
            let rem = u % 3_600_000_000_000;
            let m = rem / 60_000_000_000;
            let s = rem % 60_000_000_000;
            let secs = format!("{}s", frac(s, 9));
            if h > 0 {
                format!("{h}h{m}m{secs}")
            } else if m > 0 {
                format!("{m}m{secs}")
            } else {
                secs
            }
        };
        if neg { format!("-{body}") } else { body }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn roundtrip() {
            for (s, f) in [
                ("168h", "168h0m0s"),
                ("168h0m1s", "168h0m1s"),
                ("-1m", "-1m0s"),
                ("200h", "200h0m0s"),
                ("1.5s", "1.5s"),
                ("300ms", "300ms"),
                ("30s", "30s"),
            ] {
                assert_eq!(super::format(super::parse(s).unwrap()), f);
            }
            assert_eq!(
                super::parse("abc").unwrap_err().message,
                "time: invalid duration \"abc\""
            );
            assert!(super::parse("").is_err());
            assert!(super::parse("1").is_err());
            assert!(super::parse("99999999999999999999h").is_err());
        }
    }
}

/// Check a `tests` destination (`host:port`, exactly one port, a single address).
pub fn check_test_destination(policy: &Policy, dst: &str) -> Result<AliasWithPorts, String> {
    let awp = parse_alias_with_ports(dst).map_err(|e| e.message)?;
    if awp.alias == Alias::AutoGroup(AUTOGROUP_INTERNET.into()) {
        return Err("autogroup:internet not valid as a test destination".into());
    }
    let [p] = awp.ports.as_slice() else {
        return Err("test destination port must be a single port".into());
    };
    if p.first != p.last {
        return Err("test destination port must be a single port".into());
    }
    if let Alias::Prefix(_) = awp.alias
        && dst.contains('/')
    {
        return Err("test destination must be a single host, not a CIDR range".into());
    }
    if let Alias::Host(h) = &awp.alias
        && let Some(net) = policy.hosts.get(h)
        && net.prefix_len() < net.max_prefix_len()
    {
        return Err("test destination must be a single host, not a CIDR range".into());
    }
    Ok(awp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> String {
        match Policy::parse(text) {
            Ok(_) => "OK".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("*").unwrap(), vec![PortRange::ANY]);
        assert_eq!(
            parse_ports("22,80-90").unwrap(),
            vec![
                PortRange {
                    first: 22,
                    last: 22
                },
                PortRange {
                    first: 80,
                    last: 90
                }
            ]
        );
        assert_eq!(
            parse_ports("0").unwrap_err(),
            "first port must be >0, or use '*' for wildcard"
        );
        assert_eq!(parse_ports("ssh").unwrap_err(), "invalid first integer");
        assert_eq!(
            parse_ports("99999").unwrap_err(),
            "port number out of range"
        );
        assert_eq!(parse_ports("-1").unwrap_err(), "invalid port range format");
        assert_eq!(
            parse_ports("90-80").unwrap_err(),
            "invalid port range: first port is greater than last port"
        );
        assert_eq!(parse_ports("").unwrap_err(), "invalid first integer");
    }

    #[test]
    fn check_tag_messages() {
        assert_eq!(check_tag("server"), Err("tags must start with 'tag:'"));
        assert_eq!(check_tag("tag:"), Err("tag names must not be empty"));
        assert_eq!(
            check_tag("tag:1a"),
            Err("tag names must start with a letter, after 'tag:'")
        );
        assert_eq!(
            check_tag("tag:a_b"),
            Err("tag names can only contain numbers, letters, or dashes")
        );
        assert_eq!(check_tag("tag:web-1"), Ok(()));
    }

    #[test]
    fn messages() {
        assert_eq!(
            msg(r#"{"acls":[{"action":"accept","src":["tag:nonexistent"],"dst":["*:*"]}]}"#),
            r#"src=tag not found: "tag:nonexistent""#
        );
        assert_eq!(
            msg(r#"{"acls":[{"action":"deny","src":["*"],"dst":["*:*"]}]}"#),
            r#"action="deny" is not supported"#
        );
        assert_eq!(msg(r#"{"foo": 1}"#), r#"unknown field: "foo""#);
        assert_eq!(
            msg(r#"{"grants":[{"src":["*"],"dst":["0.0.0.0/0"],"ip":["*"]}]}"#),
            r#"dst "0.0.0.0/0": to allow all IP addresses, use "*" or "autogroup:internet""#
        );
    }
}
