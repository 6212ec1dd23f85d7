//! Validation, the second pass: references (groups, hosts, tags, ipsets) and combinations
//! (autogroups per position, ports per protocol, `autogroup:self`, capability names, IP pools,
//! `checkPeriod`) checked section by section, in Tailscale's order; plus the checks that need the
//! tailnet ([`Policy::validate_against`]) and those of a `tests` destination.

use std::collections::BTreeSet;

use super::decode::*;
use super::go_duration;
use super::model::*;
use super::{Entry, Invalid, PolicyError, err};
use crate::filter::PortRange;

/// The autogroups Tailscale's message names for a source (the valid ones are [`SRC_AUTOGROUPS`]).
const SRC_AUTOGROUPS_NAMED: [&str; 3] = [AUTOGROUP_MEMBER, AUTOGROUP_TAGGED, AUTOGROUP_DANGER_ALL];
/// The autogroups Tailscale's message names for a destination (the valid ones are
/// [`DST_AUTOGROUPS`]).
const DST_AUTOGROUPS_NAMED: [&str; 4] = [
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
    if SRC_AUTOGROUPS.contains(&ag) {
        return Ok(());
    }
    err(format!(
        "autogroup not supported for ACL sources: {ag:?}, can be [{}]",
        SRC_AUTOGROUPS_NAMED.join(" ")
    ))
}

fn check_dst_autogroup(ag: &str) -> Result<(), PolicyError> {
    if ag == AUTOGROUP_DANGER_ALL {
        return err("cannot use autogroup:danger-all as a dst");
    }
    if DST_AUTOGROUPS.contains(&ag) {
        return Ok(());
    }
    err(format!(
        "autogroup not supported for ACL destinations: {ag:?}, can be [{}]",
        DST_AUTOGROUPS_NAMED.join(" ")
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

/// The `ipPool` of one `nodeAttrs` entry: prefixes inside 100.64.0.0/10, outside the reserved
/// ranges.
fn validate_ip_pools(na: &NodeAttr) -> Result<(), PolicyError> {
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

    /// A group must be defined and a tag owned, wherever an alias names one.
    fn check_group_or_tag(&self, a: &Alias) -> Result<(), PolicyError> {
        match a {
            Alias::Group(g) => self.check_group(g),
            Alias::Tag(t) if !self.has_tag(t) => err(format!("tag not found: {t:?}")),
            _ => Ok(()),
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

    pub(super) fn validate(&self) -> Result<(), PolicyError> {
        self.check().map_err(|i| i.error)
    }

    /// The second pass, section by section in Tailscale's order (the first problem wins), on
    /// the typed policy: the problem and the entry it is in.
    pub fn check(&self) -> Result<(), Invalid> {
        let at = |entry: Entry| move |error: PolicyError| Invalid { error, entry };
        for (i, acl) in self.acls.iter().flatten().enumerate() {
            self.validate_acl(acl).map_err(at(Entry::Acl(i)))?;
        }
        for (i, ssh) in self.ssh.iter().enumerate() {
            self.validate_ssh(ssh).map_err(at(Entry::Ssh(i)))?;
        }
        for (i, g) in self.grants.iter().flatten().enumerate() {
            self.validate_grant(g).map_err(at(Entry::Grant(i)))?;
        }
        for (i, na) in self.node_attrs.iter().enumerate() {
            self.validate_node_attr_targets(na)
                .map_err(at(Entry::NodeAttr(i)))?;
        }
        for (i, na) in self.node_attrs.iter().enumerate() {
            validate_ip_pools(na).map_err(at(Entry::NodeAttr(i)))?;
        }
        self.validate_tag_owners()?;
        self.validate_auto_approvers()
            .map_err(at(Entry::AutoApprovers))?;
        self.validate_ipsets().map_err(at(Entry::IpSets))?;
        self.check_ipset_cycles().map_err(at(Entry::IpSets))?;
        Ok(())
    }

    /// One ACL: its sources and destinations, ports against its protocols, `autogroup:self`.
    fn validate_acl(&self, acl: &Acl) -> Result<(), PolicyError> {
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
            // An ACL's `*` source may reach autogroup:self; a grant's may not.
            self_sources_ok(&acl.src, true)?;
        }
        Ok(())
    }

    /// The `target` of one `nodeAttrs` entry.
    fn validate_node_attr_targets(&self, na: &NodeAttr) -> Result<(), PolicyError> {
        for t in &na.target {
            match t {
                Alias::Host(h) => self.check_host(h)?,
                Alias::AutoGroup(ag) => {
                    if ag == AUTOGROUP_SELF {
                        // Tailscale's API answers exactly this.
                        return err("internal server error");
                    }
                    if !OWNER_AUTOGROUPS.contains(&ag.as_str()) {
                        return err(format!(
                            "nodeAttrs target does not support this autogroup: {ag:?}, can be [autogroup:member autogroup:tagged]"
                        ));
                    }
                }
                other => self.check_group_or_tag(other)?,
            }
        }
        Ok(())
    }

    /// The owners in `tagOwners`: groups defined, tags owned (tags in sorted order, as
    /// Tailscale reports them).
    fn validate_tag_owners(&self) -> Result<(), Invalid> {
        let mut tags: Vec<(&String, &Vec<Alias>)> = self.tag_owners.iter().collect();
        tags.sort_unstable_by_key(|(tag, _)| *tag);
        for (tag, owners) in tags {
            let at = |error| Invalid {
                error,
                entry: Entry::TagOwner(tag.clone()),
            };
            for o in owners {
                self.check_group_or_tag(o).map_err(at)?;
            }
        }
        Ok(())
    }

    /// The approvers in `autoApprovers` (routes, then exit nodes).
    fn validate_auto_approvers(&self) -> Result<(), PolicyError> {
        for approver in self
            .auto_approvers
            .routes
            .iter()
            .flat_map(|(_, a)| a.iter())
            .chain(self.auto_approvers.exit_node.iter())
        {
            self.check_group_or_tag(approver)?;
        }
        Ok(())
    }

    /// The entries of `ipsets`: addresses, hosts or other ipsets only.
    fn validate_ipsets(&self) -> Result<(), PolicyError> {
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
        // Capability names in sorted order, as Tailscale checks them.
        let mut names: Vec<&String> = g.app.iter().flat_map(|a| a.keys()).collect();
        names.sort_unstable();
        for name in names {
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
            self_sources_ok(&g.src, false)?;
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
                    if !OWNER_AUTOGROUPS.contains(&ag.as_str()) {
                        return err(format!(
                            "autogroup not supported for SSH sources: {ag:?}, can be [autogroup:member autogroup:tagged]"
                        ));
                    }
                }
                other => self.check_group_or_tag(other)?,
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

/// The sources a rule reaching `autogroup:self` may have: users, groups, `autogroup:member`
/// and, where `wildcard` says so, `*`.
fn self_sources_ok(src: &[Alias], wildcard: bool) -> Result<(), PolicyError> {
    for s in src {
        let ok = match s {
            Alias::User(_) | Alias::Group(_) => true,
            Alias::Wildcard => wildcard,
            Alias::AutoGroup(ag) => ag == AUTOGROUP_MEMBER,
            _ => false,
        };
        if !ok {
            return err(
                "autogroup:self can only be used with users, groups, or supported autogroups",
            );
        }
    }
    Ok(())
}
