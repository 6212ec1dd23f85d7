//! Decoding, the first pass: the HuJSON document into the typed model, key by key in document
//! order, with the syntax of each value checked on the way (aliases, ports, protocols, tags,
//! group recursion). Decoding ends with the second pass, validation.

use std::collections::BTreeMap;
use std::net::IpAddr;

use indexmap::IndexMap;
use ipnet::IpNet;
use serde_json::{Map, Value};

use super::model::*;
use super::{PolicyError, err};
use crate::filter::PortRange;
use crate::hujson;

/// Parse one alias the way Tailscale reads `src` entries (an IP/CIDR first, then by prefix).
pub fn parse_alias(s: &str) -> Result<Alias, PolicyError> {
    let s = s.trim();
    if let Some(p) = parse_prefix(s) {
        return Ok(Alias::Prefix(p));
    }
    if s == "*" {
        return Ok(Alias::Wildcard);
    }
    if let Some(a) = principal(s) {
        return Ok(a);
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

/// A port list that does not parse: the comma-separated part at fault and why. `Display` is
/// Tailscale's `port range "<part>": <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("port range {part:?}: {reason}")]
pub struct PortsError {
    pub part: String,
    pub reason: &'static str,
}

/// Parse a port list: `*`, `22`, `80,443`, `1000-2000`. The one owner of Tailscale's port
/// grammar (the spec's `dst` and `ip` values are checked through it too). As in Tailscale, the
/// first port of every part must be >0, ranges included (`0-10` is refused).
pub fn parse_ports(def: &str) -> Result<Vec<PortRange>, PortsError> {
    if def == "*" {
        return Ok(vec![PortRange::ANY]);
    }
    def.split(',')
        .map(|part| {
            parse_port_range(part).map_err(|reason| PortsError {
                part: part.to_string(),
                reason,
            })
        })
        .collect()
}

/// One part of a port list: `22` or `1000-2000`.
fn parse_port_range(part: &str) -> Result<PortRange, &'static str> {
    let (first, last) = if part.contains('-') {
        let pieces: Vec<&str> = part.split('-').filter(|p| !p.is_empty()).collect();
        let [a, b] = pieces.as_slice() else {
            return Err("invalid port range format");
        };
        (parse_port(a)?, parse_port(b)?)
    } else {
        let p = parse_port(part)?;
        (p, p)
    };
    if first < 1 {
        return Err("first port must be >0, or use '*' for wildcard");
    }
    if first > last {
        return Err("invalid port range: first port is greater than last port");
    }
    Ok(PortRange { first, last })
}

fn parse_port(s: &str) -> Result<u16, &'static str> {
    // Go's strconv.Atoi: optional sign, decimal digits.
    let digits = s.strip_prefix('+').unwrap_or(s);
    let (neg, digits) = match digits.strip_prefix('-') {
        Some(d) if !s.starts_with('+') => (true, d),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("invalid first integer");
    }
    let v: u64 = match digits.parse() {
        Ok(v) => v,
        Err(_) => return Err("port number out of range"),
    };
    if neg && v > 0 {
        return Err("port number out of range");
    }
    u16::try_from(v).map_err(|_| "port number out of range")
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
    let ports = parse_ports(&ports).map_err(|e| PolicyError {
        message: format!("dst={s:?}: {e}"),
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

pub(super) fn supports_ports(protos: &[u8]) -> bool {
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
        let ports = parse_ports(s).map_err(|e| PolicyError {
            message: e.to_string(),
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
    let ports = parse_ports(ports).map_err(|e| PolicyError {
        message: e.to_string(),
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
            p.decode_section(key, val)?;
        }
        p.validate()?;
        Ok(p)
    }

    /// Decode one top-level section into this policy (syntax only; [`Policy::check`]
    /// validates the whole). A section replaces what the policy held, except `autoApprovers`,
    /// which is merged ([`AutoApprovers::merge`]) with approvers already there.
    pub fn decode_section(&mut self, key: &str, val: &Value) -> Result<(), PolicyError> {
        let p = self;
        match key {
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
            "autoApprovers" => p.auto_approvers.merge(decode_auto_approvers(val)?),
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
        Ok(())
    }
}

/// A `proto` value as written: its protocol numbers, and the text lower-cased (`None` when
/// empty).
fn decode_proto(val: &Value) -> Result<String, PolicyError> {
    match val {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => err(format!(
            "proto: cannot unmarshal {} into a string",
            type_name(other)
        )),
    }
}

fn written(raw: &str) -> Option<String> {
    (!raw.is_empty()).then(|| raw.to_lowercase())
}

/// Each written value through `parse` (the first failure wins).
fn each<T>(
    list: &[String],
    parse: impl Fn(&str) -> Result<T, PolicyError>,
) -> Result<Vec<T>, PolicyError> {
    list.iter().map(|s| parse(s)).collect()
}

impl Acl {
    /// An `accept` rule from its written values: sources, `alias:ports` destinations and the
    /// protocol (the spec's `acl` node and the file's entries decode alike).
    pub fn accept(src: &[String], dst: &[String], proto: Option<&str>) -> Result<Acl, PolicyError> {
        let raw = proto.unwrap_or("");
        Ok(Acl {
            action: "accept".into(),
            src: each(src, parse_alias)?,
            dst: each(dst, parse_alias_with_ports)?,
            proto: written(raw),
            protos: parse_protocol(raw).map_err(PolicyError::from)?,
            src_posture: Vec::new(),
        })
    }
}

impl Grant {
    /// A grant from its written values (`app`: capability → values, in the order written).
    pub fn new(
        src: &[String],
        dst: &[String],
        ip: &[String],
        via: &[String],
        app: Option<IndexMap<String, Vec<Value>>>,
    ) -> Result<Grant, PolicyError> {
        Ok(Grant {
            src: each(src, parse_alias)?,
            dst: each(dst, parse_alias)?,
            ip: each(ip, parse_ip_entry)?,
            app,
            via: each(via, via_tag)?,
            src_posture: Vec::new(),
        })
    }
}

fn via_tag(s: &str) -> Result<String, PolicyError> {
    if !s.starts_with("tag:") {
        return err("via can only be a tag");
    }
    Ok(s.to_string())
}

impl SshRule {
    /// An SSH rule from its written values.
    pub fn new(
        action: &str,
        src: &[String],
        dst: &[String],
        users: &[String],
        check_period: Option<&str>,
    ) -> Result<SshRule, PolicyError> {
        Ok(SshRule {
            action: ssh_action(action)?,
            src: src
                .iter()
                .map(|s| parse_alias(s))
                .collect::<Result<_, _>>()?,
            dst: dst
                .iter()
                .map(|s| parse_alias(s))
                .collect::<Result<_, _>>()?,
            users: users.iter().map(|s| s.trim().to_string()).collect(),
            check_period: check_period.map(str::to_string),
            accept_env: Vec::new(),
        })
    }
}

fn ssh_action(a: &str) -> Result<String, PolicyError> {
    let a = a.trim();
    if !matches!(a, "" | "accept" | "check") {
        return err(format!("{a:?} is not a valid action"));
    }
    Ok(a.to_string())
}

impl AclTest {
    /// A test entry from its written values; what makes it impossible to evaluate is kept in
    /// [`AclTest::problem`], as for a file's entry.
    pub fn new(src: &str, proto: Option<&str>, accept: &[String], deny: &[String]) -> AclTest {
        let mut t = AclTest {
            src: src.trim().to_string(),
            proto: None,
            protos: Vec::new(),
            accept: accept.to_vec(),
            deny: deny.to_vec(),
            problem: None,
        };
        if let Some(raw) = proto {
            t.set_proto(raw);
        }
        t.finish(true)
    }

    fn set_proto(&mut self, raw: &str) {
        self.proto = written(raw);
        match parse_protocol(raw) {
            Ok(p) => {
                if !p.is_empty() && !p.iter().all(|n| matches!(n, 6 | 17 | 132)) {
                    self.problem.get_or_insert_with(|| {
                        format!("test protocol must be tcp, udp, sctp, or empty: {raw:?}")
                    });
                }
                self.protos = p;
            }
            Err(m) => {
                self.problem.get_or_insert(m);
            }
        }
    }

    /// The checks on the whole entry, once its fields are in (`has_src`: a `src` was given).
    fn finish(mut self, has_src: bool) -> AclTest {
        if !has_src || self.src.is_empty() {
            self.problem
                .get_or_insert_with(|| "test entry must have a non-empty src".to_string());
        }
        if self.accept.is_empty() && self.deny.is_empty() {
            self.problem.get_or_insert_with(|| {
                "test entry must have at least one of \"accept\" or \"deny\"".to_string()
            });
        }
        self
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
                let raw = decode_proto(val)?;
                acl.protos = parse_protocol(&raw).map_err(PolicyError::from)?;
                acl.proto = written(&raw);
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
                    let mut app = IndexMap::new();
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
                    g.via.push(via_tag(&s)?);
                }
            }
            "srcPosture" | "dstPosture" => g.src_posture.extend(string_list(val, k)?),
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(g)
}

fn decode_groups(v: &Value) -> Result<IndexMap<String, Vec<String>>, PolicyError> {
    let Some(m) = want_object(v, "groups")? else {
        return Ok(IndexMap::new());
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
    // Checked in sorted order (Tailscale's); kept in the order written.
    Ok(m.keys().filter_map(|k| raw.remove_entry(k)).collect())
}

fn decode_hosts(v: &Value) -> Result<IndexMap<String, IpNet>, PolicyError> {
    let Some(m) = want_object(v, "hosts")? else {
        return Ok(IndexMap::new());
    };
    let mut out = IndexMap::new();
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

/// A tag owner or an auto-approver: a user, group, tag or autogroup; `what` names the
/// position in the message ("owner", "auto approver").
pub fn parse_principal(s: &str, what: &str) -> Result<Alias, PolicyError> {
    let s = s.trim();
    principal(s).map_or_else(|| err(format!("invalid {what} format: {s:?}")), Ok)
}

/// A user (`…@…`), group, tag or autogroup, by its form.
fn principal(s: &str) -> Option<Alias> {
    let s = s.to_string();
    Some(if s.contains('@') {
        Alias::User(s)
    } else if s.starts_with("group:") {
        Alias::Group(s)
    } else if s.starts_with("tag:") {
        Alias::Tag(s)
    } else if s.starts_with("autogroup:") {
        Alias::AutoGroup(s)
    } else {
        return None;
    })
}

fn decode_tag_owners(v: &Value) -> Result<IndexMap<String, Vec<Alias>>, PolicyError> {
    let Some(m) = want_object(v, "tagOwners")? else {
        return Ok(IndexMap::new());
    };
    let mut out = IndexMap::new();
    for (k, val) in m {
        check_tag(k).map_err(|e| PolicyError {
            message: format!("tagOwners[{k:?}]: {e}"),
            position: None,
        })?;
        let owners = string_list(val, "tagOwners")?
            .iter()
            .map(|s| parse_principal(s, "owner"))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(k.clone(), owners);
    }
    Ok(out)
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
                            .map(|s| parse_principal(s, "auto approver"))
                            .collect::<Result<Vec<_>, _>>()?;
                        out.routes.push((net, list));
                    }
                }
            }
            "exitNode" => {
                out.exit_node = string_list(val, "exitNode")?
                    .iter()
                    .map(|s| parse_principal(s, "auto approver"))
                    .collect::<Result<Vec<_>, _>>()?;
            }
            "services" => {
                if want_object(val, "services")?.is_some() {
                    out.services = Some(val.clone());
                }
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
            "action" => r.action = ssh_action(want_string(val, "action")?)?,
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
            "proto" => t.set_proto(&decode_proto(val)?),
            "accept" | "allow" => t.accept.extend(string_list(val, k)?),
            "deny" => t.deny.extend(string_list(val, k)?),
            "srcPostureAttrs" => {
                want_object(val, k)?;
            }
            _ => return Err(unknown_field(k)),
        }
    }
    Ok(t.finish(has_src))
}
