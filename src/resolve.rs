//! Stage 2 — resolve and validate: syntax tree → [`Tailnet`] model.
//!
//! Checks names (Kubernetes and DNS rules, lengths including generated prefixes and suffixes),
//! references (tags, groups, users, hosts, devices, clusters), CIDRs and ports, duplicates.
//! Every problem is reported with its span; all of them come out in one run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use miette::SourceSpan;

use crate::diag::{Diagnostic, Diagnostics, suggest};
use crate::model::*;
use crate::syntax::{self, PropValue, Sp, SpStr, Spec};
use tsk8s_policy::policy::{
    DST_AUTOGROUPS, OWNER_AUTOGROUPS, SRC_AUTOGROUPS, check_tag, parse_ports,
    split_destination_and_port,
};

/// Why a host alias, a device and an exposure may not share a name (said in the clash help).
const NAMESPACE_NOTE: &str = "host aliases, devices and exposures share one namespace (a device's .hosts file maps each name to one address)";

/// The help of a tailnet name clash: what holds the name first, and how to fix this one.
fn clash_help(first: &str, line: usize, this: &str, fix: &str) -> String {
    if first == this {
        format!("the {first} on line {line} has this name: {fix}")
    } else {
        format!("the {first} on line {line} has this name; {NAMESPACE_NOTE}: {fix}")
    }
}

/// Prefix of every object tsk8s names after an exposure.
pub const OBJECT_PREFIX: &str = "tsk8s-";
/// Longest exposure name: `tsk8s-<name>` must stay a 63-character RFC 1035 label (Services).
pub const MAX_EXPOSURE_NAME: usize = 63 - OBJECT_PREFIX.len();

/// Spans of things later stages may need to point at.
#[derive(Clone, Debug, Default)]
pub struct Spans {
    pub tailnet: Option<SourceSpan>,
    pub exposures: BTreeMap<String, SourceSpan>,
    pub routes: BTreeMap<(String, IpNet), SourceSpan>,
    pub devices: BTreeMap<String, SourceSpan>,
    pub clusters: BTreeMap<String, SourceSpan>,
    pub tests: Vec<SourceSpan>,
    /// Policy entries in spec order (`acl`, `grant`, `ssh`), tags and `verbatim` sections by
    /// name: where a problem with the generated policy is reported.
    pub acls: Vec<SourceSpan>,
    pub grants: Vec<SourceSpan>,
    pub ssh: Vec<SourceSpan>,
    pub tags: BTreeMap<String, SourceSpan>,
    pub verbatim: BTreeMap<String, SourceSpan>,
}

pub fn resolve(spec: &Spec, d: &mut Diagnostics) -> (Option<Tailnet>, Spans) {
    let mut r = Resolver {
        d,
        spans: Spans::default(),
        seen: Seen::default(),
    };
    let t = r.tailnet(spec);
    (t, r.spans)
}

struct Resolver<'d> {
    d: &'d mut Diagnostics,
    spans: Spans,
    seen: Seen,
}

/// Names given so far, each with where it was first given (for duplicate and clash messages).
#[derive(Default)]
struct Seen {
    clusters: BTreeMap<String, SourceSpan>,
    /// Exposure ids (one per node: a StatefulSet sidecar's pods each have one).
    exposures: BTreeMap<String, SourceSpan>,
    /// Tailnet names (hosts, devices and exposures) share one namespace: a device's hosts
    /// file maps each name to one address, and the policy reads a name as the host first.
    /// Each name with where it was first given and what it names (for the clash message).
    tailnet: BTreeMap<String, (SourceSpan, &'static str)>,
}

/// What a cluster's exposures may refer to: rule names, host aliases and devices.
struct Known<'a> {
    names: &'a Names,
    hosts: &'a [(String, IpNet)],
    devices: &'a [Device],
}

/// The names a rule may refer to.
struct Names {
    users: BTreeSet<String>,
    groups: BTreeSet<String>,
    tags: BTreeSet<String>,
    hosts: BTreeSet<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
    Owner,
}

/// The items `f` resolves, in order; those it refuses (`None`, with a diagnostic) left out.
fn resolved<T, U>(items: &[T], f: impl FnMut(&T) -> Option<U>) -> Vec<U> {
    items.iter().filter_map(f).collect()
}

fn err(span: SourceSpan, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::new(span, msg)
}

/// RFC 1035 label: lowercase letter first, then `[a-z0-9-]`, alphanumeric last, ≤ 63.
pub fn check_rfc1035_label(s: &str, max: usize) -> Result<(), String> {
    check_label(s, max)?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter (RFC 1035 label)".into());
    }
    Ok(())
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, ≤ 63.
pub fn check_label(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > max {
        return Err(format!(
            "is {} characters long; the limit here is {max}",
            s.len()
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("may contain only lowercase letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// DNS-1123 subdomain: dot-separated labels, ≤ 253.
pub fn check_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 {
        return Err(format!("is {} characters long; the limit is 253", s.len()));
    }
    for label in s.split('.') {
        check_label(label, 63).map_err(|e| format!("label `{label}` {e}"))?;
    }
    Ok(())
}

/// An exposure (node) name: it names `tsk8s-<name>` Services, so an RFC 1035 label of at most
/// [`MAX_EXPOSURE_NAME`] characters. The spec and `tailnet.lock` both check through this.
pub fn check_exposure_name(s: &str) -> Result<(), String> {
    check_rfc1035_label(s, MAX_EXPOSURE_NAME)
}

/// A device name: a DNS-1123 label. The spec and `tailnet.lock` both check through this.
pub fn check_device_name(s: &str) -> Result<(), String> {
    check_label(s, 63)
}

/// A cluster name: a DNS-1123 label. The spec and `tailnet.lock` both check through this.
pub fn check_cluster_name(s: &str) -> Result<(), String> {
    check_label(s, 63)
}

/// `tag:x` from `x` or `tag:x`.
fn norm(prefix: &str, s: &str) -> String {
    if s.starts_with(prefix) {
        s.to_string()
    } else {
        format!("{prefix}{s}")
    }
}

/// Tailscale's port syntax (`*`, `22`, `80,443`, `1000-2000`), checked by the policy crate's
/// grammar; the message is Tailscale's `port range "<part>": <reason>`.
fn check_ports(ports: &str) -> Result<(), String> {
    parse_ports(ports).map(drop).map_err(|e| e.to_string())
}

/// The help under a bad port list (Tailscale's message names the part, not the grammar).
const PORTS_HELP: &str = "a port is a number 1-65535: write 443, 80,443, 1000-2000 or *";

fn parse_wg_key(s: &str) -> bool {
    use base64::Engine;
    matches!(base64::engine::general_purpose::STANDARD.decode(s.trim()), Ok(k) if k.len() == 32)
}

impl Resolver<'_> {
    fn push(&mut self, d: Diagnostic) {
        self.d.push(d);
    }

    fn tailnet(&mut self, spec: &Spec) -> Option<Tailnet> {
        let mut ok = true;
        let (name, domain, ipv4_pool, magicdns_suffix) = match &spec.tailnet {
            Some(t) => {
                self.spans.tailnet = Some(t.span);
                let domain = self.domain(t);
                let pool = self.ipv4_pool(t);
                let suffix = self.magicdns_suffix(t);
                (t.name.v.clone(), domain, pool, suffix)
            }
            None => {
                self.push(
                    err(SourceSpan::from(0..0), "the spec has no `tailnet` node")
                        .help("start with: tailnet \"acme\" domain=\"acme.example\""),
                );
                ok = false;
                (String::new(), String::new(), CGNAT, None)
            }
        };

        let users = self.users(spec);
        let (groups, group_names) = self.groups(spec);
        let tag_names = self.tag_names(spec);
        let (hosts, host_names) = self.hosts(spec);
        let names = Names {
            users: users.clone(),
            groups: group_names,
            tags: tag_names,
            hosts: host_names,
        };
        let tags = self.tag_owners(spec, &names);

        // Host aliases come first in the tailnet namespace (see [`Seen::tailnet`]).
        for h in &spec.hosts {
            self.seen
                .tailnet
                .entry(h.name.v.clone())
                .or_insert((h.name.span, "host alias"));
        }
        let devices: Vec<Device> = spec
            .devices
            .iter()
            .map(|dv| self.device(dv, &names))
            .collect();

        // Clusters and exposures.
        let known = Known {
            names: &names,
            hosts: &hosts,
            devices: &devices,
        };
        let mut clusters = Vec::new();
        for c in &spec.clusters {
            if let Some(cl) = self.cluster(c, &known) {
                clusters.push(cl);
            } else {
                ok = false;
            }
        }
        self.check_egress_targets(spec, &clusters, &known, magicdns_suffix.as_deref());

        // Each rule resolved on its own; a bad one is left out (its diagnostics say why).
        let acls = resolved(&spec.acls, |a| self.acl(&names, a));
        let grants = resolved(&spec.grants, |g| self.grant(&names, g));
        let tests = resolved(&spec.tests, |t| self.test(&names, t));
        let ssh = resolved(&spec.ssh, |s| self.ssh(&names, s));
        let gitops = spec.gitops.as_ref().and_then(|g| self.gitops(g));
        if gitops.is_none() {
            self.check_no_cluster_gitops(spec);
        }

        let verbatim = crate::verbatim::resolve_verbatim(&spec.verbatim, self.d);
        for (section, json) in &spec.verbatim {
            self.spans
                .verbatim
                .entry(section.v.clone())
                .or_insert(json.span);
        }
        if !ok {
            return None;
        }
        Some(Tailnet {
            name,
            domain,
            magicdns_suffix,
            ipv4_pool,
            users: users.into_iter().collect(),
            groups,
            tags,
            hosts,
            devices,
            clusters,
            acls,
            grants,
            tests,
            ssh,
            gitops,
            verbatim,
            lookup: Default::default(),
        })
    }

    /// The tailnet's `domain=` (nodes are named `<name>.<domain>`).
    fn domain(&mut self, t: &syntax::TailnetDecl) -> String {
        match &t.domain {
            Some(dm) => {
                if let Err(e) = check_subdomain(&dm.v) {
                    self.push(
                        err(dm.span, format!("domain {:?} {e}", dm.v)).label("not a DNS name"),
                    );
                }
                dm.v.clone()
            }
            None => {
                self.push(
                    err(t.name.span, "the tailnet needs a DNS suffix")
                        .help("add domain=\"example.com\": nodes are named <name>.<domain>"),
                );
                String::new()
            }
        }
    }

    /// The tailnet's `ipv4-pool=`: a network inside 100.64.0.0/10, the whole range by default.
    fn ipv4_pool(&mut self, t: &syntax::TailnetDecl) -> Ipv4Net {
        let cgnat = CGNAT;
        match &t.ipv4_pool {
            Some(p) => match p.v.parse::<Ipv4Net>() {
                Ok(net) if cgnat.contains(&net) && net.trunc() == net => net,
                Ok(_) => {
                    self.push(
                        err(
                            p.span,
                            format!("ipv4-pool {:?} must be a network inside 100.64.0.0/10", p.v),
                        )
                        .label("outside the tailnet range"),
                    );
                    cgnat
                }
                Err(_) => {
                    self.push(err(p.span, format!("invalid CIDR {:?}", p.v)).label("not a CIDR"));
                    cgnat
                }
            },
            None => cgnat,
        }
    }

    /// The tailnet's `magicdns-suffix=`, if given.
    fn magicdns_suffix(&mut self, t: &syntax::TailnetDecl) -> Option<String> {
        t.magicdns_suffix.as_ref().map(|m| {
            // A trailing dot is how MagicDNS writes names; the suffix is kept without.
            let v = m.v.strip_suffix('.').unwrap_or(&m.v).to_string();
            if let Err(e) = check_subdomain(&v) {
                self.push(
                    err(m.span, format!("magicdns-suffix {:?} {e}", m.v))
                        .label("not a DNS name")
                        .help("the tailnet's MagicDNS suffix, e.g. \"tail1234.ts.net\" (Tailscale admin console → DNS) or headscale's base_domain"),
                );
            }
            v
        })
    }

    /// Users: declared, group members, device owners.
    fn users(&mut self, spec: &Spec) -> BTreeSet<String> {
        let mut users: BTreeSet<String> = BTreeSet::new();
        let mut seen_users: BTreeMap<String, SourceSpan> = BTreeMap::new();
        for u in &spec.users {
            self.check_email(u);
            if seen_users.insert(u.v.clone(), u.span).is_some() {
                self.push(err(u.span, format!("user {:?} declared twice", u.v)).label("duplicate"));
            }
            users.insert(u.v.clone());
        }
        for g in &spec.groups {
            for m in &g.members {
                if m.v.contains('@') {
                    users.insert(m.v.clone());
                }
            }
        }
        for dv in &spec.devices {
            if let Some(u) = &dv.user
                && u.v.contains('@')
            {
                users.insert(u.v.clone());
            }
        }
        users
    }

    /// Groups with their members, and the set of group names.
    fn groups(&mut self, spec: &Spec) -> (Vec<(String, Vec<String>)>, BTreeSet<String>) {
        let mut groups = Vec::new();
        let mut group_names: BTreeMap<String, SourceSpan> = BTreeMap::new();
        for g in &spec.groups {
            let name = norm("group:", &g.name.v);
            let bare = &name["group:".len()..];
            if bare.is_empty()
                || !bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                self.push(
                    err(g.name.span, format!("invalid group name {:?}", g.name.v))
                        .label("letters, digits, '-', '_' and '.' only"),
                );
            }
            if group_names.insert(name.clone(), g.name.span).is_some() {
                self.push(
                    err(g.name.span, format!("group {name:?} declared twice")).label("duplicate"),
                );
            }
            let members = self.group_members(g);
            groups.push((name, members));
        }
        (groups, group_names.into_keys().collect())
    }

    /// A group's members: users only (no nested groups, tags or autogroups).
    fn group_members(&mut self, g: &syntax::GroupDecl) -> Vec<String> {
        let mut members = Vec::new();
        for m in &g.members {
            if m.v.starts_with("group:") {
                self.push(
                    err(m.span, format!("{:?}: groups cannot contain groups", m.v))
                        .label("nested group")
                        .help("list the users themselves; Tailscale does not allow nested groups"),
                );
            } else if m.v.starts_with("tag:") || m.v.starts_with("autogroup:") {
                self.push(
                    err(m.span, format!("{:?}: a group member must be a user", m.v))
                        .label("not a user"),
                );
            } else {
                self.check_email(m);
                members.push(m.v.clone());
            }
        }
        members
    }

    /// Tag names (owners are resolved by [`Self::tag_owners`] once all names are known).
    fn tag_names(&mut self, spec: &Spec) -> BTreeSet<String> {
        let mut tag_names: BTreeMap<String, SourceSpan> = BTreeMap::new();
        for t in &spec.tags {
            let name = norm("tag:", &t.name.v);
            self.spans.tags.entry(name.clone()).or_insert(t.name.span);
            if let Err(e) = check_tag(&name) {
                self.push(
                    err(t.name.span, format!("invalid tag {:?}: {e}", t.name.v)).label("bad tag"),
                );
            }
            if tag_names.insert(name.clone(), t.name.span).is_some() {
                self.push(
                    err(t.name.span, format!("tag {name:?} declared twice")).label("duplicate"),
                );
            }
        }
        tag_names.into_keys().collect()
    }

    /// Host aliases with their networks, and the set of host names.
    fn hosts(&mut self, spec: &Spec) -> (Vec<(String, IpNet)>, BTreeSet<String>) {
        let mut hosts = Vec::new();
        let mut host_names: BTreeSet<String> = BTreeSet::new();
        for h in &spec.hosts {
            if h.name.v.contains('@') || h.name.v.contains(':') || h.name.v.is_empty() {
                self.push(
                    err(h.name.span, format!("invalid host name {:?}", h.name.v))
                        .label("host names contain no '@' or ':'"),
                );
            }
            if !host_names.insert(h.name.v.clone()) {
                self.push(
                    err(h.name.span, format!("host {:?} declared twice", h.name.v))
                        .label("duplicate"),
                );
            }
            match parse_ip_or_cidr(&h.addr.v) {
                Some(net) => hosts.push((h.name.v.clone(), net)),
                None => self.push(
                    err(
                        h.addr.span,
                        format!("invalid IP address or CIDR {:?}", h.addr.v),
                    )
                    .label("not an IP or CIDR"),
                ),
            }
        }
        (hosts, host_names)
    }

    /// Each tag with its owners (checked against all names).
    fn tag_owners(&mut self, spec: &Spec, names: &Names) -> Vec<(String, Vec<String>)> {
        let mut tags = Vec::new();
        for t in &spec.tags {
            let name = norm("tag:", &t.name.v);
            self.spans.tags.entry(name.clone()).or_insert(t.name.span);
            let mut owners = Vec::new();
            for o in &t.owners {
                if self.check_alias(names, o, &o.v, Side::Owner) {
                    owners.push(o.v.clone());
                }
            }
            tags.push((name, owners));
        }
        tags
    }

    /// One device: its name (in the tailnet namespace), owner, key and key path.
    fn device(&mut self, dv: &syntax::DeviceDecl, names: &Names) -> Device {
        self.spans.devices.insert(dv.name.v.clone(), dv.name.span);
        if let Err(e) = check_device_name(&dv.name.v) {
            self.push(
                err(dv.name.span, format!("device name {:?} {e}", dv.name.v))
                    .label("not a DNS label"),
            );
        }
        if let Some((prev, kind)) = self
            .seen
            .tailnet
            .insert(dv.name.v.clone(), (dv.name.span, "device"))
        {
            let line = self.d.line(prev.offset());
            self.push(
                err(
                    dv.name.span,
                    format!("tailnet name {:?} is already taken", dv.name.v),
                )
                .label("duplicate name")
                .help(clash_help(kind, line, "device", "rename this device")),
            );
        }
        let user = dv.user.as_ref().map(|u| {
            self.check_email(u);
            u.v.clone()
        });
        let mut dtags = Vec::new();
        for t in &dv.tags {
            let tag = norm("tag:", &t.v);
            if self.check_tag_ref(names, t, &tag) {
                dtags.push(tag);
            }
        }
        if user.is_none() && dtags.is_empty() {
            self.push(
                err(
                    dv.name.span,
                    format!("device {:?} needs an owner", dv.name.v),
                )
                .help("give user=\"…\" or a tag"),
            );
        }
        let public_key = self.device_public_key(dv);
        let key_path = self.device_key_path(dv);
        Device {
            name: dv.name.v.clone(),
            user,
            public_key,
            key_path,
            tags: dtags,
        }
    }

    /// A device's `public-key=`: required, a WireGuard key.
    fn device_public_key(&mut self, dv: &syntax::DeviceDecl) -> String {
        match &dv.public_key {
            Some(k) if parse_wg_key(&k.v) => k.v.trim().to_string(),
            Some(k) => {
                self.push(
                    err(k.span, "public-key is not a WireGuard key")
                        .label("expected 44 characters of base64 (32 bytes)")
                        .help("print it on the device with: wg pubkey < private.key"),
                );
                String::new()
            }
            None => {
                self.push(
                    err(
                        dv.name.span,
                        format!("device {:?} needs public-key", dv.name.v),
                    )
                    .help("the device keeps its private key; put its public key here"),
                );
                String::new()
            }
        }
    }

    /// A device's `key-path=`, `/etc/wireguard/<name>.key` by default.
    fn device_key_path(&mut self, dv: &syntax::DeviceDecl) -> String {
        match &dv.key_path {
            Some(p) if !p.v.is_empty() && !p.v.contains(char::is_whitespace) => p.v.clone(),
            Some(p) => {
                self.push(err(p.span, "key-path must be a path without spaces").label("bad path"));
                String::new()
            }
            None => format!("/etc/wireguard/{}.key", dv.name.v),
        }
    }

    /// Egress targets that name an exposure (known once all clusters are resolved).
    fn check_egress_targets(
        &mut self,
        spec: &Spec,
        clusters: &[Cluster],
        known: &Known,
        magicdns_suffix: Option<&str>,
    ) {
        let (devices, hosts) = (known.devices, known.hosts);
        let exposure_set: BTreeSet<String> = clusters
            .iter()
            .flat_map(|c| c.exposures.iter().map(|e| e.id.clone()))
            .collect();
        for c in &spec.clusters {
            for e in &c.exposures {
                if let Some(t) = &e.target {
                    let is_device = devices.iter().any(|d| d.name == t.v);
                    let is_host = hosts.iter().any(|(h, _)| *h == t.v);
                    if !is_device && !is_host && !exposure_set.contains(&t.v) {
                        let cands: Vec<&str> = devices
                            .iter()
                            .map(|d| d.name.as_str())
                            .chain(hosts.iter().map(|(h, _)| h.as_str()))
                            .chain(exposure_set.iter().map(String::as_str))
                            .collect();
                        let mut diag = err(t.span, format!("unknown egress target {:?}", t.v))
                            .label("not a device, host or exposure");
                        if let Some(h) = suggest(&t.v, cands) {
                            diag = diag.help(h);
                        }
                        self.push(diag);
                    } else if !is_host
                        && magicdns_suffix.is_none()
                        && c.runtime.as_ref().is_some_and(|r| r.v == "tailscale")
                    {
                        // containerboot finds the target by its MagicDNS name, which ends in
                        // the tailnet's suffix (not the spec's `domain` on Tailscale SaaS).
                        self.push(
                            err(
                                t.span,
                                format!(
                                    "egress {:?} reaches {:?} by name, which needs the tailnet's MagicDNS suffix",
                                    e.name.v, t.v
                                ),
                            )
                            .label("no MagicDNS suffix known")
                            .help("add magicdns-suffix=\"tail1234.ts.net\" to the `tailnet` node (Tailscale admin console → DNS; headscale: base_domain), or target a host alias with one address"),
                        );
                    }
                }
            }
        }
    }

    /// Without a top-level `gitops` node, no cluster may carry gitops settings.
    fn check_no_cluster_gitops(&mut self, spec: &Spec) {
        for c in &spec.clusters {
            if let Some(g) = &c.gitops {
                self.push(
                    err(
                        g.span,
                        "cluster gitops settings need a top-level `gitops` node",
                    )
                    .help("add: gitops \"argocd\" repo=\"…\" path=\"…\""),
                );
            }
        }
    }

    fn check_email(&mut self, u: &SpStr) {
        let ok = match u.v.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty() && !domain.is_empty() && !u.v.contains(char::is_whitespace)
            }
            None => false,
        };
        if !ok {
            self.push(
                err(
                    u.span,
                    format!("{:?} is not a user (an email like alice@example.com)", u.v),
                )
                .label("not an email"),
            );
        }
    }

    fn check_tag_ref(&mut self, names: &Names, at: &SpStr, tag: &str) -> bool {
        if let Err(e) = check_tag(tag) {
            self.push(err(at.span, format!("invalid tag {:?}: {e}", at.v)).label("bad tag"));
            return false;
        }
        if !names.tags.contains(tag) {
            let mut diag = err(at.span, format!("unknown tag {tag:?}")).label("not declared");
            if let Some(h) = suggest(tag, names.tags.iter().map(String::as_str)) {
                diag = diag.help(h);
            } else {
                diag = diag.help(format!(
                    "declare it: tag {:?} owner=\"…\"",
                    &tag["tag:".len()..]
                ));
            }
            self.push(diag);
            return false;
        }
        true
    }

    /// Check one alias (no port part). Reports and returns false when it is not valid.
    fn check_alias(&mut self, names: &Names, at: &SpStr, alias: &str, side: Side) -> bool {
        if alias == "*" {
            if side == Side::Owner {
                self.push(err(at.span, "\"*\" cannot own a tag").label("not an owner"));
                return false;
            }
            return true;
        }
        if alias.starts_with("autogroup:") {
            let allowed: &[&str] = match side {
                Side::Src => &SRC_AUTOGROUPS,
                Side::Dst => &DST_AUTOGROUPS,
                Side::Owner => &OWNER_AUTOGROUPS,
            };
            if allowed.contains(&alias) {
                return true;
            }
            let msg = if alias == "autogroup:self" && side == Side::Src {
                "\"autogroup:self\" not valid on the src side of a rule".to_string()
            } else if SRC_AUTOGROUPS.contains(&alias) || DST_AUTOGROUPS.contains(&alias) {
                let where_ = match side {
                    Side::Src => "the src side of a rule",
                    Side::Dst => "the dst side of a rule",
                    Side::Owner => "tagOwners",
                };
                format!("{alias:?} not valid on {where_}")
            } else {
                format!("unknown autogroup {alias:?}")
            };
            let mut diag = err(at.span, msg).label("autogroup not allowed here");
            if let Some(h) = suggest(alias, allowed.iter().copied()) {
                diag = diag.help(h);
            }
            self.push(diag);
            return false;
        }
        if alias.starts_with("group:") {
            if names.groups.contains(alias) {
                return true;
            }
            let mut diag = err(at.span, format!("unknown group {alias:?}")).label("not declared");
            if let Some(h) = suggest(alias, names.groups.iter().map(String::as_str)) {
                diag = diag.help(h);
            }
            self.push(diag);
            return false;
        }
        if alias.starts_with("tag:") {
            return self.check_tag_ref(names, at, alias);
        }
        if alias.contains('@') {
            if names.users.contains(alias) {
                return true;
            }
            let mut diag = err(at.span, format!("unknown user {alias:?}")).label("not declared");
            if let Some(h) = suggest(alias, names.users.iter().map(String::as_str)) {
                diag = diag.help(h);
            } else {
                diag = diag.help(format!("declare it: user {alias:?}"));
            }
            self.push(diag);
            return false;
        }
        if names.hosts.contains(alias) {
            return true;
        }
        if side != Side::Owner
            && let Some(net) = parse_ip_or_cidr(alias)
        {
            if side == Side::Dst && net.prefix_len() == 0 {
                self.push(
                        err(at.span, format!("dst {alias:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\""))
                            .label("catch-all CIDR"),
                    );
                return false;
            }
            return true;
        }
        let cands = names
            .hosts
            .iter()
            .chain(names.groups.iter())
            .chain(names.tags.iter())
            .map(String::as_str);
        let mut diag = err(at.span, format!("unknown name {alias:?}"))
            .label("not a user, group, tag, host, autogroup, IP or CIDR");
        if let Some(h) = suggest(alias, cands) {
            diag = diag.help(h);
        }
        self.push(diag);
        false
    }

    /// A destination `alias:ports`.
    fn check_dst(&mut self, names: &Names, at: &SpStr) -> bool {
        let split = split_destination_and_port(&at.v)
            .ok()
            .filter(|(alias, _)| !matches!(alias.as_str(), "tag" | "group" | "autogroup"));
        let Some((alias, ports)) = split else {
            self.push(
                err(at.span, format!("dst {:?} needs ports", at.v))
                    .label("missing :ports")
                    .help("write alias:port, alias:80,443, alias:1000-2000 or alias:*"),
            );
            return false;
        };
        let ok = self.check_alias(names, at, &alias, Side::Dst);
        if let Err(e) = check_ports(&ports) {
            self.push(err(at.span, e).label("bad ports").help(PORTS_HELP));
            return false;
        }
        ok
    }

    fn check_proto(&mut self, p: &SpStr) -> bool {
        const NAMES: &[&str] = &[
            "tcp",
            "udp",
            "icmp",
            "ipv6-icmp",
            "sctp",
            "igmp",
            "ipv4",
            "ip-in-ip",
            "egp",
            "igp",
            "gre",
            "esp",
            "ah",
        ];
        let ok = NAMES.contains(&p.v.as_str()) || p.v.parse::<u8>().is_ok();
        if !ok {
            let mut diag =
                err(p.span, format!("unknown protocol {:?}", p.v)).label("not a protocol");
            if let Some(h) = suggest(&p.v, NAMES.iter().copied()) {
                diag = diag.help(h);
            }
            self.push(diag);
        }
        ok
    }

    fn acl(&mut self, names: &Names, a: &syntax::AclDecl) -> Option<Acl> {
        self.spans.acls.push(a.span);
        let mut ok = true;
        if a.action.v != "accept" {
            let msg = if a.action.v.eq_ignore_ascii_case("accept") {
                format!("{:?} is not a valid action", a.action.v)
            } else {
                format!("action={:?} is not supported", a.action.v)
            };
            self.push(
                err(a.action.span, msg)
                    .label("only `accept` rules exist")
                    .help("Tailscale policies are default-deny: list what is allowed"),
            );
            ok = false;
        }
        if a.src.is_empty() || a.dst.is_empty() {
            self.push(
                err(a.span, "a rule needs at least one src and one dst").label("incomplete rule"),
            );
            ok = false;
        }
        for s in &a.src {
            ok &= self.check_alias(names, s, &s.v, Side::Src);
        }
        for s in &a.dst {
            ok &= self.check_dst(names, s);
        }
        if let Some(p) = &a.proto {
            ok &= self.check_proto(p);
        }
        ok.then(|| Acl {
            src: a.src.iter().map(|s| s.v.clone()).collect(),
            dst: a.dst.iter().map(|s| s.v.clone()).collect(),
            proto: a.proto.as_ref().map(|p| p.v.clone()),
        })
    }

    fn grant(&mut self, names: &Names, g: &syntax::GrantDecl) -> Option<Grant> {
        self.spans.grants.push(g.span);
        let mut ok = true;
        if g.src.is_empty() || g.dst.is_empty() {
            self.push(
                err(g.span, "a grant needs at least one src and one dst").label("incomplete grant"),
            );
            ok = false;
        }
        if g.ip.is_empty() && g.app.is_empty() {
            self.push(err(g.span, "ip and app can not both be empty").label("grant gives nothing"));
            ok = false;
        }
        for s in &g.src {
            ok &= self.check_alias(names, s, &s.v, Side::Src);
        }
        for s in &g.dst {
            ok &= self.check_alias(names, s, &s.v, Side::Dst);
        }
        for v in &g.via {
            if !v.v.starts_with("tag:") {
                self.push(err(v.span, "via can only be a tag").label("not a tag"));
                ok = false;
            } else {
                ok &= self.check_tag_ref(names, v, &v.v);
            }
        }
        for ip in &g.ip {
            let ports = match ip.v.split_once(':') {
                Some((proto, ports)) => {
                    ok &= self.check_proto(&Sp::new(proto.to_string(), ip.span));
                    ports
                }
                None => ip.v.as_str(),
            };
            if let Err(e) = check_ports(ports) {
                self.push(err(ip.span, e).label("bad ports").help(PORTS_HELP));
                ok = false;
            }
        }
        let mut app: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
        for (name, json) in &g.app {
            let Some((domain, _)) = name
                .v
                .split_once('/')
                .filter(|(domain, path)| !domain.is_empty() && !path.is_empty())
            else {
                self.push(
                    err(
                        name.span,
                        "capability name must have the form {domain}/{path}",
                    )
                    .label("bad capability"),
                );
                ok = false;
                continue;
            };
            if domain == "tailscale.com" || domain.ends_with(".tailscale.com") {
                self.push(
                    err(
                        name.span,
                        "capability name must not be in the tailscale.com domain",
                    )
                    .label("reserved domain"),
                );
                ok = false;
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&json.v) {
                Ok(v @ serde_json::Value::Object(_)) => {
                    match app.iter_mut().find(|(n, _)| *n == name.v) {
                        Some((_, vals)) => vals.push(v),
                        None => app.push((name.v.clone(), vec![v])),
                    }
                }
                Ok(_) => {
                    self.push(
                        err(json.span, "a capability value must be a JSON object")
                            .label("not an object"),
                    );
                    ok = false;
                }
                Err(e) => {
                    self.push(err(json.span, format!("invalid JSON: {e}")).label("not JSON"));
                    ok = false;
                }
            }
        }
        ok.then(|| Grant {
            src: g.src.iter().map(|s| s.v.clone()).collect(),
            dst: g.dst.iter().map(|s| s.v.clone()).collect(),
            ip: g.ip.iter().map(|s| s.v.clone()).collect(),
            via: g.via.iter().map(|s| s.v.clone()).collect(),
            app,
        })
    }

    fn test(&mut self, names: &Names, t: &syntax::TestDecl) -> Option<AclTest> {
        self.spans.tests.push(t.span);
        let mut ok = self.check_alias(names, &t.src, &t.src.v, Side::Src);
        if t.accept.is_empty() && t.deny.is_empty() {
            self.push(err(t.span, "a test needs `accept` or `deny`").label("tests nothing"));
            ok = false;
        }
        for d in t.accept.iter().chain(&t.deny) {
            match split_destination_and_port(&d.v) {
                Ok((alias, port)) => {
                    ok &= self.check_alias(names, d, &alias, Side::Dst);
                    if port.parse::<u16>().map_or(true, |p| p == 0) {
                        self.push(
                            err(
                                d.span,
                                format!("test destination {:?} needs one port (1-65535)", d.v),
                            )
                            .label("one port per destination"),
                        );
                        ok = false;
                    }
                }
                Err(_) => {
                    self.push(
                        err(d.span, format!("test destination {:?} needs a port", d.v))
                            .label("missing :port"),
                    );
                    ok = false;
                }
            }
        }
        if let Some(p) = &t.proto {
            ok &= self.check_proto(p);
        }
        if let Some(c) = &t.check
            && c.v != "policy"
        {
            self.push(
                err(
                    c.span,
                    format!("test check {:?} must be \"policy\"", c.v),
                )
                .label("unknown check")
                .help("check=\"policy\" judges the test by the policy alone; leave it out to check the emitted network too"),
            );
            ok = false;
        }
        ok.then(|| AclTest {
            src: t.src.v.clone(),
            proto: t.proto.as_ref().map(|p| p.v.clone()),
            policy_only: t.check.is_some(),
            accept: t.accept.iter().map(|s| s.v.clone()).collect(),
            deny: t.deny.iter().map(|s| s.v.clone()).collect(),
        })
    }

    fn ssh(&mut self, names: &Names, s: &syntax::SshDecl) -> Option<SshRule> {
        self.spans.ssh.push(s.span);
        let mut ok = true;
        if s.action.v != "accept" && s.action.v != "check" {
            self.push(
                err(
                    s.action.span,
                    format!(
                        "ssh action {:?} must be \"accept\" or \"check\"",
                        s.action.v
                    ),
                )
                .label("bad action"),
            );
            ok = false;
        }
        if s.src.is_empty() || s.dst.is_empty() || s.users.is_empty() {
            self.push(err(s.span, "an ssh rule needs src, dst and users").label("incomplete rule"));
            ok = false;
        }
        for a in &s.src {
            ok &= self.check_alias(names, a, &a.v, Side::Src);
        }
        for a in &s.dst {
            ok &= self.check_alias(names, a, &a.v, Side::Dst);
        }
        ok.then(|| SshRule {
            action: s.action.v.clone(),
            src: s.src.iter().map(|x| x.v.clone()).collect(),
            dst: s.dst.iter().map(|x| x.v.clone()).collect(),
            users: s.users.iter().map(|x| x.v.clone()).collect(),
            check_period: s.check_period.as_ref().map(|x| x.v.clone()),
        })
    }

    fn gitops(&mut self, g: &syntax::GitopsDecl) -> Option<Gitops> {
        let mut props = Props::new(&g.props);
        let repo_url = props.str(self, "repo");
        let revision = props.str(self, "revision").unwrap_or_else(|| "main".into());
        let path = props.str(self, "path").unwrap_or_default();
        let namespace = props.str(self, "namespace");
        let flavour = match g.flavour.v.as_str() {
            "argocd" => {
                let application_set = props.bool(self, "application-set").unwrap_or(false);
                let project = props
                    .str(self, "project")
                    .unwrap_or_else(|| "default".into());
                GitopsFlavour::ArgoCd {
                    application_set,
                    project,
                    namespace: namespace.unwrap_or_else(|| "argocd".into()),
                }
            }
            "flux" => {
                let interval = props.str(self, "interval").unwrap_or_else(|| "10m".into());
                GitopsFlavour::Flux {
                    namespace: namespace.unwrap_or_else(|| "flux-system".into()),
                    interval,
                }
            }
            other => {
                self.push(
                    err(g.flavour.span, format!("unknown gitops flavour {other:?}"))
                        .help("use \"argocd\" or \"flux\""),
                );
                props.finish(self);
                return None;
            }
        };
        props.finish(self);
        if path.starts_with('/') || path.split('/').any(|s| s == "..") {
            self.push(err(
                g.span,
                format!(
                    "gitops path {path:?} must be relative to the repository root, without '..'"
                ),
            ));
        }
        let Some(repo_url) = repo_url else {
            self.push(err(g.flavour.span, "gitops needs repo=\"<git URL>\"").label("repo missing"));
            return None;
        };
        Some(Gitops {
            flavour,
            repo_url,
            revision,
            path: path.trim_end_matches('/').to_string(),
        })
    }

    fn cluster(&mut self, c: &syntax::ClusterDecl, known: &Known) -> Option<Cluster> {
        self.cluster_name(c);
        let namespace = self.cluster_namespace(c);
        let pod_cidr = self.cluster_cidr(&c.pod_cidr, "pod-cidr");
        let service_cidr = self.cluster_cidr(&c.service_cidr, "service-cidr");
        let runtime = self.runtime_kind(c);
        let endpoint = self.endpoint(c, runtime);
        let publish = self.publish(c);
        let gateway_port = self.gateway_port(c, publish);
        let sidecar_style = self.sidecar_style(c);
        let services = self.service_options(c);
        let image = self.cluster_image(c, runtime);
        let health_port = self.health_port(c, runtime);
        let (secrets, auth) = self.secrets(c, runtime);
        let gitops = c
            .gitops
            .as_ref()
            .map(|g| self.cluster_gitops(g))
            .unwrap_or_default();

        let mut exposures = Vec::new();
        for e in &c.exposures {
            if let Some(x) = self.exposure(e, known) {
                exposures.extend(self.expand_set(x, e, runtime));
            }
        }
        if runtime == RuntimeKind::Tsk8s {
            self.check_publishing(c, publish, &exposures);
            if publish == Publish::Gateway {
                self.check_gateway(c, gateway_port, &exposures);
            }
            if c.pod_cidr.is_none()
                && let Some(svc) = service_cidr
            {
                self.check_router_pod_cidr(c, svc, &exposures);
            }
        }
        Some(Cluster {
            name: c.name.v.clone(),
            namespace,
            pod_cidr,
            service_cidr,
            endpoint,
            publish,
            gateway_port,
            services,
            sidecar_style,
            image,
            runtime,
            health_port,
            secrets,
            auth,
            gitops,
            exposures,
        })
    }

    /// A cluster's name: a DNS-1123 label, unique.
    fn cluster_name(&mut self, c: &syntax::ClusterDecl) {
        self.spans.clusters.insert(c.name.v.clone(), c.name.span);
        if let Err(e) = check_cluster_name(&c.name.v) {
            self.push(
                err(c.name.span, format!("cluster name {:?} {e}", c.name.v))
                    .label("not a DNS-1123 label"),
            );
        }
        if let Some(prev) = self.seen.clusters.insert(c.name.v.clone(), c.name.span) {
            let line = self.d.line_col(prev.offset()).0;
            self.push(
                err(
                    c.name.span,
                    format!("cluster {:?} declared twice", c.name.v),
                )
                .label("duplicate")
                .help(format!("first declared on line {line}")),
            );
        }
    }

    /// A cluster's `namespace=`, `tailscale` by default.
    fn cluster_namespace(&mut self, c: &syntax::ClusterDecl) -> String {
        match &c.namespace {
            Some(ns) => {
                if let Err(e) = check_label(&ns.v, 63) {
                    self.push(
                        err(ns.span, format!("namespace {:?} {e}", ns.v))
                            .label("not a DNS-1123 label"),
                    );
                }
                ns.v.clone()
            }
            None => "tailscale".to_string(),
        }
    }

    /// A cluster's `pod-cidr=` or `service-cidr=` (`what`): a network address.
    fn cluster_cidr(&mut self, v: &Option<SpStr>, what: &str) -> Option<IpNet> {
        let v = v.as_ref()?;
        match v.v.parse::<IpNet>() {
            Ok(n) if n.trunc() == n => Some(n),
            Ok(n) => {
                self.push(
                    err(v.span, format!("{what} {:?} has host bits set", v.v))
                        .label("not a network address")
                        .help(format!("did you mean `{}`?", n.trunc())),
                );
                None
            }
            Err(_) => {
                self.push(
                    err(v.span, format!("invalid CIDR {:?} for {what}", v.v)).label("not a CIDR"),
                );
                None
            }
        }
    }

    /// A cluster's `runtime=`: tsk8s (default) or tailscale.
    fn runtime_kind(&mut self, c: &syntax::ClusterDecl) -> RuntimeKind {
        match c.runtime.as_ref().map(|r| r.v.as_str()) {
            None | Some("tsk8s") => RuntimeKind::Tsk8s,
            Some("tailscale") => RuntimeKind::Tailscale,
            Some(other) => {
                let at = c.runtime.as_ref().map(|r| r.span).unwrap_or(c.span);
                self.push(
                    err(at, format!("unknown runtime {other:?}"))
                        .help("use \"tsk8s\" (default) or \"tailscale\""),
                );
                RuntimeKind::Tsk8s
            }
        }
    }

    /// A cluster's `endpoint=`: a host name or IP address, `{node}` standing for each node.
    fn endpoint(&mut self, c: &syntax::ClusterDecl, runtime: RuntimeKind) -> String {
        match &c.endpoint {
            Some(e) => {
                // `{node}` stands for each node's tailnet name (a DNS label); the lengths are
                // checked per node below.
                let sample = e.v.replace(NODE_PLACEHOLDER, "n");
                let host_ok = if e.v.contains(NODE_PLACEHOLDER) {
                    check_subdomain(&sample.to_ascii_lowercase()).is_ok()
                } else {
                    e.v.parse::<IpAddr>().is_ok()
                        || check_subdomain(&e.v.to_ascii_lowercase()).is_ok()
                };
                if !host_ok && (sample.contains('{') || sample.contains('}')) {
                    self.push(
                        err(
                            e.span,
                            format!("endpoint {:?} has a placeholder other than {{node}}", e.v),
                        )
                        .label("unknown placeholder")
                        .help("{node} stands for each node's tailnet name, e.g. endpoint=\"{node}.wg.example.com\""),
                    );
                } else if !host_ok {
                    self.push(
                        err(
                            e.span,
                            format!("endpoint {:?} is not a host name or IP address", e.v),
                        )
                        .label("bad endpoint")
                        .help("give the host only; tsk8s lock assigns each node its UDP port"),
                    );
                }
                e.v.clone()
            }
            None if runtime == RuntimeKind::Tsk8s => {
                self.push(
                    err(c.name.span, format!("cluster {:?} needs an endpoint", c.name.v))
                        .help("endpoint=\"wg.example.com\": the host devices reach this cluster's nodes on"),
                );
                String::new()
            }
            None => String::new(),
        }
    }

    /// A cluster's `publish=`: gateway (default), load-balancer or node-port.
    fn publish(&mut self, c: &syntax::ClusterDecl) -> Publish {
        match c.publish.as_ref().map(|p| p.v.as_str()) {
            None | Some("gateway") => Publish::Gateway,
            Some("load-balancer") => Publish::LoadBalancer,
            Some("node-port") => Publish::NodePort,
            Some(other) => {
                let at = c.publish.as_ref().map(|p| p.span).unwrap_or(c.span);
                self.push(
                    err(at, format!("unknown publish mode {other:?}"))
                        .help("use \"gateway\", \"load-balancer\" or \"node-port\""),
                );
                Publish::LoadBalancer
            }
        }
    }

    /// A cluster's `sidecar-style=`: native (default) or container.
    fn sidecar_style(&mut self, c: &syntax::ClusterDecl) -> SidecarStyle {
        match c.sidecar_style.as_ref().map(|s| s.v.as_str()) {
            None | Some("native") => SidecarStyle::Native,
            Some("container") => SidecarStyle::Container,
            Some(other) => {
                let at = c.sidecar_style.as_ref().map(|s| s.span).unwrap_or(c.span);
                self.push(
                    err(at, format!("unknown sidecar style {other:?}"))
                        .label("not a sidecar style")
                        .help("use \"native\" (default: an init container with restartPolicy: Always, Kubernetes 1.29+) or \"container\" (a plain container, for older clusters)"),
                );
                SidecarStyle::Native
            }
        }
    }

    /// A cluster's `image=`: required and pinned.
    fn cluster_image(&mut self, c: &syntax::ClusterDecl, runtime: RuntimeKind) -> String {
        let image = match &c.image {
            Some(i) => {
                if let Err(e) = check_image(&i.v) {
                    self.push(
                        err(i.span, format!("image {:?} {e}", i.v))
                            .label("unpinned image")
                            .help("pin a tag (repo:1.2.3) or a digest (repo@sha256:…)"),
                    );
                }
                i.v.clone()
            }
            None => {
                self.push(
                    err(
                        c.name.span,
                        format!("cluster {:?} needs image=\"…\"", c.name.v),
                    )
                    .help("the runtime image is never defaulted: pin it with a tag or digest"),
                );
                String::new()
            }
        };
        if runtime == RuntimeKind::Tailscale
            && let Some(i) = &c.image
        {
            self.check_tailscale_image(i);
        }
        image
    }

    /// A NetworkPolicy sees a packet to a Service address after DNAT, at a pod address: a
    /// router into the Service CIDR must be let out to the pods too, so the cluster needs its
    /// pod CIDR.
    fn check_router_pod_cidr(
        &mut self,
        c: &syntax::ClusterDecl,
        svc: IpNet,
        exposures: &[Exposure],
    ) {
        for e in exposures {
            let ExposureKind::SubnetRouter { routes } = &e.kind else {
                continue;
            };
            if let Some(r) = routes.iter().find(|r| r.contains(&svc) || svc.contains(*r)) {
                self.push(
                    err(
                        c.name.span,
                        format!(
                            "cluster {:?} needs pod-cidr=\"…\": subnet router {:?} routes {r}, which covers its service-cidr {svc}",
                            c.name.v, e.id
                        ),
                    )
                    .label("pod-cidr missing")
                    .help("packets to a Service address reach the pod after DNAT, and the router's NetworkPolicy must let them out to the pod CIDR: add pod-cidr=\"10.244.0.0/16\" (your cluster's)"),
                );
            }
        }
    }

    /// Whether the cluster's nodes can be reached where `endpoint` says, the way `publish`
    /// publishes them.
    fn check_publishing(
        &mut self,
        c: &syntax::ClusterDecl,
        publish: Publish,
        exposures: &[Exposure],
    ) {
        let Some(ep) = &c.endpoint else { return };
        let per_node = ep.v.contains(NODE_PLACEHOLDER);
        let plain_ok =
            ep.v.parse::<IpAddr>().is_ok() || check_subdomain(&ep.v.to_ascii_lowercase()).is_ok();
        if !per_node && !plain_ok {
            // Reported where the endpoint is read.
            return;
        }
        if per_node {
            for e in exposures {
                let host = ep.v.replace(NODE_PLACEHOLDER, &e.hostname);
                if let Err(msg) = check_subdomain(&host.to_ascii_lowercase()) {
                    self.push(
                        err(
                            ep.span,
                            format!(
                                "endpoint of node {:?} would be {host:?}, which {msg}",
                                e.hostname
                            ),
                        )
                        .label("too long for this node")
                        .help("shorten the endpoint template or the node's hostname"),
                    );
                }
            }
        }
        match publish {
            Publish::Gateway => {
                if per_node {
                    self.push(
                        err(ep.span, format!("endpoint {:?} names a host per node, but publish=\"gateway\" publishes every node of the cluster on one address", ep.v))
                            .label("one host for the gateway")
                            .help(format!(
                                "give the gateway's host: endpoint=\"{}\"; or publish=\"load-balancer\" (one LoadBalancer Service per node)",
                                ep.v.replace(&format!("{NODE_PLACEHOLDER}."), "")
                            )),
                    );
                }
            }
            Publish::NodePort => {
                if per_node {
                    self.push(
                        err(ep.span, format!("endpoint {:?} names a host per node, but publish=\"node-port\" publishes every node on every cluster node", ep.v))
                            .label("a per-node endpoint needs publish=\"load-balancer\"")
                            .help("with node-port, give any of the cluster's nodes (or a name for all of them): endpoint=\"nodes.wg.example.com\""),
                    );
                }
                let given = [
                    ("shared-ip", c.shared_ip.as_ref()),
                    ("load-balancer-class", c.load_balancer_class.as_ref()),
                    (
                        "load-balancer-source-ranges",
                        c.load_balancer_source_ranges.first(),
                    ),
                ];
                for (key, v) in given {
                    if let Some(v) = v {
                        self.push(
                            err(v.span, format!("`{key}` applies to LoadBalancer Services, but this cluster publishes NodePorts"))
                                .label("only with publish=\"gateway\" or \"load-balancer\""),
                        );
                    }
                }
            }
            Publish::LoadBalancer => {
                if let (true, Some(ip)) = (per_node, &c.shared_ip) {
                    self.push(
                        err(ip.span, "shared-ip gives every node one address, but the endpoint names a host per node")
                            .label("one of the two")
                            .help("keep the {node} endpoint (one LoadBalancer address per node) or give one host with shared-ip"),
                    );
                }
                let n = exposures.len();
                if !per_node && c.shared_ip.is_none() && n > 1 {
                    self.push(
                        err(
                            ep.span,
                            format!(
                                "endpoint {:?} is one host, but the cluster's {n} nodes each get their own LoadBalancer Service, and each LoadBalancer gets its own address",
                                ep.v
                            ),
                        )
                        .label("one host for several load balancers")
                        .help(format!(
                            "give each node its own name: endpoint=\"{{node}}.{}\" (each Service carries an external-dns hostname annotation); or, with MetalLB, share one address: shared-ip=\"…\"; or publish=\"node-port\"",
                            ep.v
                        )),
                    );
                }
            }
        }
    }

    /// A StatefulSet sidecar with `replicas=N` (N ≥ 2) becomes N nodes `<name>-0` …
    /// `<name>-N-1` (hostnames `<hostname>-<i>`), each checked as a name of its own.
    fn expand_set(
        &mut self,
        x: Exposure,
        decl: &syntax::ExposureDecl,
        runtime: RuntimeKind,
    ) -> Vec<Exposure> {
        let ExposureKind::Sidecar { set: Some(set), .. } = &x.kind else {
            return vec![x];
        };
        let at = decl
            .replicas
            .as_ref()
            .map(|r| r.span)
            .unwrap_or(decl.name.span);
        if runtime == RuntimeKind::Tailscale {
            self.push(
                err(
                    at,
                    format!(
                        "replicas={} on a StatefulSet sidecar needs the tsk8s runtime",
                        set.replicas
                    ),
                )
                    .label("runtime=\"tailscale\" cluster")
                    .help("on the Tailscale image each pod needs a state Secret of its own; give the workload one replica or use a proxy"),
            );
            return Vec::new();
        }
        let n = set.replicas;
        let mut out = Vec::new();
        for i in 0..n {
            let id = format!("{}-{i}", x.id);
            let hostname = format!("{}-{i}", x.hostname);
            let mut bad = false;
            if let Err(msg) = check_exposure_name(&id) {
                self.push(
                    err(at, format!("sidecar {:?} with {n} replicas names node {id:?}, which {msg}", x.id))
                        .label("names too long")
                        .help(format!("each pod is node `<name>-<ordinal>`; it names Services `{OBJECT_PREFIX}<name>-<ordinal>`: shorten the name")),
                );
                bad = true;
            } else if let Err(msg) = check_label(&hostname, 63) {
                self.push(
                    err(
                        at,
                        format!(
                            "sidecar {:?} with {n} replicas names node {hostname:?}, which {msg}",
                            x.id
                        ),
                    )
                    .label("hostname too long"),
                );
                bad = true;
            }
            let taken = [
                self.seen
                    .exposures
                    .insert(id.clone(), decl.name.span)
                    .map(|p| (p, &id)),
                self.seen
                    .tailnet
                    .insert(hostname.clone(), (decl.name.span, "exposure"))
                    .map(|(p, _)| (p, &hostname)),
            ];
            for (prev, what) in taken.into_iter().flatten() {
                {
                    let line = self.d.line(prev.offset());
                    self.push(
                        err(at, format!("sidecar {:?} with {n} replicas names node {what:?}, which is already taken", x.id))
                            .label("one node per pod")
                            .help(format!("first used on line {line}; rename one of them")),
                    );
                    bad = true;
                }
            }
            if bad {
                return Vec::new();
            }
            self.spans.exposures.insert(id.clone(), decl.name.span);
            let mut e = x.clone();
            e.id = id;
            e.hostname = hostname;
            if let ExposureKind::Sidecar { set: Some(s), .. } = &mut e.kind {
                s.ordinal = i;
            }
            out.push(e);
        }
        out
    }

    /// `gateway-port=`: only under `publish="gateway"`, 1-65535.
    fn gateway_port(&mut self, c: &syntax::ClusterDecl, publish: Publish) -> u16 {
        let Some(p) = &c.gateway_port else {
            return DEFAULT_GATEWAY_PORT;
        };
        if publish != Publish::Gateway {
            self.push(
                err(p.span, "gateway-port is the port of publish=\"gateway\"")
                    .label("no gateway in this cluster")
                    .help("remove it, or set publish=\"gateway\" (`tsk8s lock` gives each node of the other modes its own port)"),
            );
            return DEFAULT_GATEWAY_PORT;
        }
        self.port_number(p, "gateway-port")
            .unwrap_or(DEFAULT_GATEWAY_PORT)
    }

    /// The nodes a gateway terminates share one pod: its WireGuard port, its admin port and
    /// every egress node's listeners must not collide, and no exposure may take the gateway's
    /// object names.
    fn check_gateway(&mut self, c: &syntax::ClusterDecl, port: u16, exposures: &[Exposure]) {
        let wg_at = c
            .gateway_port
            .as_ref()
            .map(|p| p.span)
            .or(c.publish.as_ref().map(|p| p.span))
            .unwrap_or(c.name.span);
        let mut taken: BTreeMap<(Proto, u16), String> = BTreeMap::new();
        taken.insert(
            (Proto::Udp, port),
            format!("the gateway's WireGuard port (gateway-port={port})"),
        );
        taken.insert(
            (Proto::Tcp, ADMIN_PORT),
            format!("the gateway's admin server ({})", ADMIN_PORT),
        );
        let decls = |id: &str| c.exposures.iter().find(|d| d.name.v == id);
        for e in exposures {
            if e.id == GATEWAY_NAME {
                let at = decls(&e.id).map(|d| d.name.span).unwrap_or(c.name.span);
                self.push(
                    err(at, format!("exposure name {GATEWAY_NAME:?} is taken by the cluster's gateway (its objects are named tsk8s-{GATEWAY_NAME})"))
                        .label("reserved under publish=\"gateway\"")
                        .help("rename the exposure (hostname=\"gateway\" keeps its tailnet name)"),
                );
            }
            let ExposureKind::Egress { ports, .. } = &e.kind else {
                continue;
            };
            for p in ports {
                let what = format!(
                    "port {}/{} of egress {:?}",
                    p.port,
                    p.protocol.as_str(),
                    e.id
                );
                if let Some(prev) = taken.get(&(p.protocol, p.port)) {
                    let at = decls(&e.id)
                        .and_then(|d| d.ports.iter().find(|pd| pd.port.v == i128::from(p.port)))
                        .map(|pd| pd.port.span)
                        .unwrap_or(wg_at);
                    self.push(
                        err(
                            at,
                            format!(
                                "{what} collides with {prev}: under publish=\"gateway\" they listen in one pod"
                            ),
                        )
                        .label("port taken in the gateway")
                        .help("give this egress another port, or move the gateway (gateway-port=<a free port> on the cluster)"),
                    );
                } else {
                    taken.insert((p.protocol, p.port), what);
                }
            }
        }
    }

    /// `service-annotations`, `load-balancer-class`, `load-balancer-source-ranges`, `shared-ip`.
    fn service_options(&mut self, c: &syntax::ClusterDecl) -> ServiceOptions {
        let mut o = ServiceOptions::default();
        let mut seen: BTreeMap<&str, SourceSpan> = BTreeMap::new();
        for (k, v) in &c.service_annotations {
            if let Err(e) = check_annotation_key(&k.v) {
                self.push(
                    err(k.span, format!("annotation key {:?} {e}", k.v))
                        .label("not an annotation key"),
                );
                continue;
            }
            if seen.insert(k.v.as_str(), k.span).is_some() {
                self.push(
                    err(k.span, format!("annotation {:?} given twice", k.v))
                        .label("duplicate annotation"),
                );
                continue;
            }
            o.annotations.push((k.v.clone(), v.v.clone()));
        }
        if let Some(class) = &c.load_balancer_class {
            if let Err(e) = check_annotation_key(&class.v) {
                self.push(
                    err(class.span, format!("load-balancer-class {:?} {e}", class.v))
                        .label("not a class name")
                        .help("a label-style name such as \"service.k8s.aws/nlb\""),
                );
            } else {
                o.load_balancer_class = Some(class.v.clone());
            }
        }
        for r in &c.load_balancer_source_ranges {
            match r.v.parse::<IpNet>() {
                Ok(n) if n.trunc() == n => o.load_balancer_source_ranges.push(n),
                Ok(n) => self.push(
                    err(r.span, format!("source range {:?} has host bits set", r.v))
                        .label("not a network address")
                        .help(format!("did you mean `{}`?", n.trunc())),
                ),
                Err(_) => self.push(
                    err(
                        r.span,
                        format!("invalid CIDR {:?} for load-balancer-source-ranges", r.v),
                    )
                    .label("not a CIDR"),
                ),
            }
        }
        if let Some(ip) = &c.shared_ip {
            match ip.v.parse::<IpAddr>() {
                Ok(a) => o.shared_ip = Some(a),
                Err(_) => self.push(
                    err(ip.span, format!("shared-ip {:?} is not an IP address", ip.v))
                        .label("not an IP address")
                        .help("the address from your MetalLB pool that all of the cluster's LoadBalancer Services share"),
                ),
            }
        }
        o
    }

    /// A Tailscale image whose tag names a version older than the output needs.
    fn check_tailscale_image(&mut self, image: &SpStr) {
        let Some(v) = tailscale_image_version(&image.v) else {
            return;
        };
        if v < MIN_TAILSCALE_IMAGE {
            let (a, b, c) = MIN_TAILSCALE_IMAGE;
            self.push(
                err(
                    image.span,
                    format!(
                        "image {:?} is Tailscale {}.{}.{}; the output needs v{a}.{b}.{c} or newer",
                        image.v, v.0, v.1, v.2
                    ),
                )
                .label("too old")
                .help(format!(
                    "containerboot serves /healthz with TS_ENABLE_HEALTH_CHECK and TS_LOCAL_ADDR_PORT from v{a}.{b}.{c}: pin ghcr.io/tailscale/tailscale:v{a}.{b}.{c} or later"
                )),
            );
        }
    }

    /// `health-port=` (Tailscale image only; default 9002), which must not be a port the
    /// cluster's sidecars forward to: the sidecar shares the workload's network namespace,
    /// and containerboot exits when it cannot listen.
    fn health_port(&mut self, c: &syntax::ClusterDecl, runtime: RuntimeKind) -> u16 {
        let port = match &c.health_port {
            None => DEFAULT_HEALTH_PORT,
            Some(p) if runtime != RuntimeKind::Tailscale => {
                self.push(
                    err(
                        p.span,
                        "health-port is a property of runtime=\"tailscale\" clusters",
                    )
                    .label("not used by this runtime")
                    .help("remove it, or set runtime=\"tailscale\""),
                );
                return DEFAULT_HEALTH_PORT;
            }
            Some(p) => match self.port_number(p, "health-port") {
                Some(v) => v,
                None => return DEFAULT_HEALTH_PORT,
            },
        };
        if runtime != RuntimeKind::Tailscale {
            return port;
        }
        for e in c
            .exposures
            .iter()
            .filter(|e| e.kind == syntax::ExposureKind::Sidecar)
        {
            for p in &e.ports {
                let target = p.target.as_ref().unwrap_or(&p.port);
                let tcp = p.protocol.as_ref().is_none_or(|s| s.v == "tcp");
                if tcp && target.v == i128::from(port) {
                    let given = if c.health_port.is_some() {
                        format!("health-port={port}")
                    } else {
                        format!("the default health-port, {port}")
                    };
                    self.push(
                        err(
                            target.span,
                            format!(
                                "sidecar {:?} forwards to port {port} of its workload, where the tailscale container's health check listens ({given})",
                                e.name.v
                            ),
                        )
                        .label("port taken by the health check")
                        .help(format!(
                            "the containers of a pod share its ports: set health-port=<a free port> on cluster {:?}",
                            c.name.v
                        )),
                    );
                }
            }
        }
        port
    }

    fn secrets(
        &mut self,
        c: &syntax::ClusterDecl,
        runtime: RuntimeKind,
    ) -> (SecretBackend, TailscaleAuth) {
        let Some(s) = &c.secrets else {
            return (
                SecretBackend::Existing,
                TailscaleAuth {
                    ephemeral: true,
                    reusable: true,
                },
            );
        };
        let mut props = Props::new(&s.props);
        let mut auth = TailscaleAuth {
            ephemeral: true,
            reusable: true,
        };
        if runtime == RuntimeKind::Tailscale {
            auth.ephemeral = props.bool(self, "ephemeral").unwrap_or(true);
            auth.reusable = props.bool(self, "reusable").unwrap_or(true);
        }
        let backend = match s.backend.v.as_str() {
            "existing" => SecretBackend::Existing,
            "external-secrets" => {
                let store = props.str(self, "store");
                let store_kind = props
                    .str(self, "store-kind")
                    .unwrap_or_else(|| "ClusterSecretStore".into());
                if store_kind != "SecretStore" && store_kind != "ClusterSecretStore" {
                    self.push(err(
                        s.span,
                        format!(
                            "store-kind {store_kind:?} must be SecretStore or ClusterSecretStore"
                        ),
                    ));
                }
                let key_prefix = props
                    .str(self, "key-prefix")
                    .unwrap_or_else(|| "tsk8s/".into());
                let refresh_interval = props
                    .str(self, "refresh-interval")
                    .unwrap_or_else(|| "1h".into());
                match store {
                    Some(store) => SecretBackend::ExternalSecrets {
                        store,
                        store_kind,
                        key_prefix,
                        refresh_interval,
                    },
                    None => {
                        self.push(
                            err(
                                s.backend.span,
                                "external-secrets needs store=\"<SecretStore name>\"",
                            )
                            .label("store missing"),
                        );
                        SecretBackend::Existing
                    }
                }
            }
            "sops" => {
                let source_dir = props
                    .str(self, "dir")
                    .unwrap_or_else(|| format!("secrets/{}", c.name.v));
                if s.recipients.is_empty() {
                    self.push(
                        err(s.backend.span, "sops needs at least one age recipient")
                            .help("add a child: age-recipient \"age1…\""),
                    );
                }
                for r in &s.recipients {
                    if !r.v.starts_with("age1") || r.v.len() < 20 {
                        self.push(
                            err(r.span, format!("{:?} is not an age recipient (age1…)", r.v))
                                .label("bad recipient"),
                        );
                    }
                }
                check_rel_dir(self, &source_dir, s.span);
                SecretBackend::Sops {
                    recipients: s.recipients.iter().map(|r| r.v.clone()).collect(),
                    source_dir,
                }
            }
            "sealed-secrets" => {
                let source_dir = props
                    .str(self, "dir")
                    .unwrap_or_else(|| format!("sealed/{}", c.name.v));
                check_rel_dir(self, &source_dir, s.span);
                SecretBackend::SealedSecrets { source_dir }
            }
            other => {
                self.push(
                    err(s.backend.span, format!("unknown secret backend {other:?}"))
                        .help("use existing, external-secrets, sops or sealed-secrets"),
                );
                SecretBackend::Existing
            }
        };
        if !matches!(backend, SecretBackend::Sops { .. }) && !s.recipients.is_empty() {
            self.push(err(s.span, "age-recipient is only for the sops backend"));
        }
        props.finish(self);
        (backend, auth)
    }

    fn cluster_gitops(&mut self, g: &syntax::ClusterGitopsDecl) -> ClusterGitops {
        let mut props = Props::new(&g.props);
        let out = ClusterGitops {
            argocd_server: props.str(self, "server"),
            argocd_name: props.str(self, "name"),
            flux_source: props.str(self, "source"),
            flux_namespace: props.str(self, "source-namespace"),
        };
        props.finish(self);
        out
    }

    fn exposure(&mut self, e: &syntax::ExposureDecl, known: &Known) -> Option<Exposure> {
        let mut ok = true;
        let hostname = self.exposure_name(e, &mut ok);
        let tags = self.exposure_tags(e, known.names, &mut ok);
        let ports = self.ports(e, &mut ok);
        let kind = match e.kind {
            syntax::ExposureKind::Proxy => self.proxy(e, ports, &mut ok),
            syntax::ExposureKind::Sidecar => self.sidecar(e, ports, &mut ok),
            syntax::ExposureKind::SubnetRouter => self.subnet_router(e, &mut ok),
            syntax::ExposureKind::Egress => self.egress(e, known, ports, &mut ok),
        };
        ok.then(|| Exposure {
            id: e.name.v.clone(),
            hostname: hostname.v,
            tags,
            kind,
        })
    }

    /// An exposure's id and tailnet name (`hostname=`, the id by default): valid and unique.
    fn exposure_name(&mut self, e: &syntax::ExposureDecl, ok: &mut bool) -> SpStr {
        self.spans.exposures.insert(e.name.v.clone(), e.name.span);
        if let Err(msg) = check_exposure_name(&e.name.v) {
            self.push(
                err(e.name.span, format!("exposure name {:?} {msg}", e.name.v))
                    .label("bad name")
                    .help(format!("it names Services `{OBJECT_PREFIX}<name>` (RFC 1035, at most 63 characters), so at most {MAX_EXPOSURE_NAME} characters")),
            );
            *ok = false;
        }
        let duplicate = self.seen.exposures.contains_key(&e.name.v);
        if let Some(prev) = self.seen.exposures.insert(e.name.v.clone(), e.name.span) {
            let line = self.d.line(prev.offset());
            self.push(
                err(
                    e.name.span,
                    format!("exposure {:?} declared twice", e.name.v),
                )
                .label("duplicate exposure")
                .help(format!(
                    "first declared on line {line}; exposure names are unique across all clusters"
                )),
            );
            *ok = false;
        }
        let hostname = match &e.hostname {
            Some(h) => {
                if let Err(msg) = check_label(&h.v, 63) {
                    self.push(
                        err(h.span, format!("hostname {:?} {msg}", h.v)).label("not a DNS label"),
                    );
                    *ok = false;
                }
                h.clone()
            }
            None => e.name.clone(),
        };
        if let Some((prev, kind)) = self
            .seen
            .tailnet
            .insert(hostname.v.clone(), (hostname.span, "exposure"))
            && !duplicate
        {
            let line = self.d.line(prev.offset());
            self.push(
                err(
                    hostname.span,
                    format!("tailnet name {:?} is already taken", hostname.v),
                )
                .label(if kind == "exposure" {
                    "two nodes with one name"
                } else {
                    "name already taken"
                })
                .help(clash_help(
                    kind,
                    line,
                    "exposure",
                    "set hostname=\"…\" to give this exposure another name",
                )),
            );
            *ok = false;
        }
        hostname
    }

    /// An exposure's tags (at least one; declared; each once).
    fn exposure_tags(
        &mut self,
        e: &syntax::ExposureDecl,
        names: &Names,
        ok: &mut bool,
    ) -> Vec<String> {
        let mut tags = Vec::new();
        for t in &e.tags {
            let tag = norm("tag:", &t.v);
            if self.check_tag_ref(names, t, &tag) {
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            } else {
                *ok = false;
            }
        }
        if e.tags.is_empty() {
            self.push(
                err(
                    e.name.span,
                    format!("{} {:?} needs a tag", e.kind.keyword(), e.name.v),
                )
                .help("nodes in clusters are tagged devices: add tag=\"…\""),
            );
            *ok = false;
        }
        tags
    }

    /// A proxy: the Service it forwards to.
    fn proxy(&mut self, e: &syntax::ExposureDecl, ports: Vec<Port>, ok: &mut bool) -> ExposureKind {
        let (namespace, service) = self.ns_name(
            e.service.as_ref(),
            e,
            "service",
            "\"monitoring/grafana\"",
            true,
            ok,
        );
        ExposureKind::Proxy {
            namespace,
            service,
            ports,
        }
    }

    /// A sidecar: the workload it joins (a Deployment, or a StatefulSet with a node per pod).
    fn sidecar(
        &mut self,
        e: &syntax::ExposureDecl,
        ports: Vec<Port>,
        ok: &mut bool,
    ) -> ExposureKind {
        let (namespace, workload) = self.ns_name(
            e.workload.as_ref(),
            e,
            "workload",
            "\"shop/web\"",
            false,
            ok,
        );
        let workload_kind = match e.workload_kind.as_ref().map(|k| k.v.as_str()) {
            None | Some("Deployment") => "Deployment".to_string(),
            Some("StatefulSet") => "StatefulSet".to_string(),
            Some(other) => {
                let at = e.workload_kind.as_ref().map(|k| k.span).unwrap_or(e.span);
                self.push(
                    err(
                        at,
                        format!("sidecar kind {other:?} must be Deployment or StatefulSet"),
                    )
                    .label("unsupported kind"),
                );
                *ok = false;
                String::new()
            }
        };
        let mut replicas = 1;
        if let Some(r) = &e.replicas {
            if workload_kind == "StatefulSet" {
                match u32::try_from(r.v) {
                    Ok(n) if (1..=MAX_SIDECAR_REPLICAS).contains(&n) => replicas = n,
                    _ => {
                        self.push(
                            err(r.span, format!("sidecar {:?} is declared with {} replicas", e.name.v, r.v))
                                .label(format!("1 to {MAX_SIDECAR_REPLICAS}"))
                                .help(format!("each pod of a StatefulSet sidecar is a node of its own (key, addresses, lock entry, Service) and every pod mounts all of them: give 1 to {MAX_SIDECAR_REPLICAS} replicas")),
                        );
                        *ok = false;
                    }
                }
            } else if r.v != 1 {
                self.push(
                    err(r.span, format!("sidecar {:?} is declared with {} replicas", e.name.v, r.v))
                        .label("one key, one pod")
                        .help("a Deployment's pods are interchangeable, so its sidecar has one WireGuard key and one address and the Component pins replicas: 1; use kind=\"StatefulSet\" (one node per pod) or a proxy for replicated workloads"),
                );
                *ok = false;
            }
        }
        ExposureKind::Sidecar {
            namespace,
            workload,
            workload_kind,
            ports,
            set: (replicas > 1).then(|| SidecarSet {
                base: e.name.v.clone(),
                ordinal: 0,
                replicas,
            }),
        }
    }

    /// A subnet router: its routes, each a routable network outside the tailnet's range.
    fn subnet_router(&mut self, e: &syntax::ExposureDecl, ok: &mut bool) -> ExposureKind {
        let mut routes = Vec::new();
        if e.routes.is_empty() {
            self.push(
                err(e.name.span, "a subnet router needs at least one route")
                    .help("route=\"10.96.0.0/12\""),
            );
            *ok = false;
        }
        for r in &e.routes {
            match r.v.parse::<IpNet>() {
                Ok(n) if n.trunc() == n => {
                    if n.prefix_len() == 0 {
                        self.push(
                            err(r.span, "a subnet router cannot advertise a default route")
                                .label("use an exit node instead"),
                        );
                        *ok = false;
                    } else if overlaps_tailnet(&n) {
                        self.push(
                            err(
                                r.span,
                                format!("route {n} overlaps the tailnet's own address range"),
                            )
                            .label("overlaps 100.64.0.0/10 or fd7a:115c:a1e0::/48"),
                        );
                        *ok = false;
                    } else if let Some((range, what)) = unroutable(&n) {
                        self.push(
                            err(
                                r.span,
                                if range.contains(&n) {
                                    format!("route {n} lies in the {what} range {range}")
                                } else {
                                    format!("route {n} covers the {what} range {range}")
                                },
                            )
                            .label("not routable through a subnet router")
                            .help(UNROUTABLE_HELP),
                        );
                        *ok = false;
                    } else {
                        self.spans.routes.insert((e.name.v.clone(), n), r.span);
                        routes.push(n);
                    }
                }
                Ok(n) => {
                    self.push(
                        err(r.span, format!("route {:?} has host bits set", r.v))
                            .label("not a network address")
                            .help(format!("did you mean `{}`?", n.trunc())),
                    );
                    *ok = false;
                }
                Err(_) => {
                    self.push(err(r.span, format!("invalid CIDR {:?}", r.v)).label("not a CIDR"));
                    *ok = false;
                }
            }
        }
        ExposureKind::SubnetRouter { routes }
    }

    /// An egress: its target, a device, a host alias with one address, or an exposure.
    fn egress(
        &mut self,
        e: &syntax::ExposureDecl,
        known: &Known,
        ports: Vec<Port>,
        ok: &mut bool,
    ) -> ExposureKind {
        let target = match &e.target {
            Some(t) => {
                if known.devices.iter().any(|d| d.name == t.v) {
                    EgressTarget::Device(t.v.clone())
                } else if let Some((h, net)) = known.hosts.iter().find(|(h, _)| *h == t.v) {
                    let single = (net.prefix_len() == net.max_prefix_len()).then(|| net.addr());
                    match single {
                        Some(ip) => EgressTarget::Host(h.clone(), ip),
                        None => {
                            self.push(
                                err(
                                    t.span,
                                    format!("host {:?} is a network, not one address", t.v),
                                )
                                .label("egress needs one address"),
                            );
                            *ok = false;
                            EgressTarget::Node(String::new())
                        }
                    }
                } else {
                    // An exposure (checked once all clusters are known).
                    EgressTarget::Node(t.v.clone())
                }
            }
            None => {
                self.push(
                    err(
                        e.name.span,
                        "egress needs target=\"<device, host or exposure>\"",
                    )
                    .label("target missing"),
                );
                *ok = false;
                EgressTarget::Node(String::new())
            }
        };
        ExposureKind::Egress { target, ports }
    }

    /// A port number (1-65535), or a located error naming it as `what` ("port", "target
    /// port", "pod port").
    fn port_number(&mut self, n: &Sp<i128>, what: &str) -> Option<u16> {
        match u16::try_from(n.v) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                self.push(
                    err(n.span, format!("{what} {} is out of range (1-65535)", n.v))
                        .label("bad port"),
                );
                None
            }
        }
    }

    fn ports(&mut self, e: &syntax::ExposureDecl, ok: &mut bool) -> Vec<Port> {
        let mut out: Vec<Port> = Vec::new();
        if e.kind != syntax::ExposureKind::SubnetRouter && e.ports.is_empty() {
            self.push(
                err(
                    e.name.span,
                    format!("{} {:?} needs a port", e.kind.keyword(), e.name.v),
                )
                .help("port=80, or children: port 53 protocol=\"udp\""),
            );
            *ok = false;
        }
        for p in &e.ports {
            let Some(port) = self.port_number(&p.port, "port") else {
                *ok = false;
                continue;
            };
            let target = match &p.target {
                Some(t) => match self.port_number(t, "target port") {
                    Some(v) => v,
                    None => {
                        *ok = false;
                        continue;
                    }
                },
                None => port,
            };
            let protocol = match p.protocol.as_ref().map(|s| s.v.as_str()) {
                None | Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some(other) => {
                    let at = p.protocol.as_ref().map(|s| s.span).unwrap_or(p.span);
                    self.push(
                        err(at, format!("protocol {other:?} must be \"tcp\" or \"udp\""))
                            .label("bad protocol"),
                    );
                    *ok = false;
                    continue;
                }
            };
            if out.iter().any(|o| o.port == port && o.protocol == protocol) {
                self.push(
                    err(
                        p.span,
                        format!("port {port}/{} given twice", protocol.as_str()),
                    )
                    .label("duplicate port"),
                );
                *ok = false;
                continue;
            }
            if e.kind == syntax::ExposureKind::Egress && port < 1024 {
                self.push(
                    err(
                        p.port.span,
                        format!("egress listens on port {port} in the cluster, which needs root"),
                    )
                    .label("privileged port")
                    .help("listen on 1024 or above; use `port 5432 target=…` style to map"),
                );
                *ok = false;
                continue;
            }
            let pod_port = match &p.pod_port {
                Some(pp) => match self.port_number(pp, "pod port") {
                    Some(v) => Some(v),
                    None => {
                        *ok = false;
                        continue;
                    }
                },
                None => None,
            };
            out.push(Port {
                protocol,
                port,
                target,
                pod_port,
            });
        }
        out
    }

    fn ns_name(
        &mut self,
        v: Option<&SpStr>,
        e: &syntax::ExposureDecl,
        what: &str,
        example: &str,
        service: bool,
        ok: &mut bool,
    ) -> (String, String) {
        let Some(v) = v else {
            self.push(
                err(
                    e.name.span,
                    format!("{} {:?} needs {what}={example}", e.kind.keyword(), e.name.v),
                )
                .label(format!("{what} missing")),
            );
            *ok = false;
            return Default::default();
        };
        let Some((ns, name)) = v.v.split_once('/') else {
            self.push(
                err(v.span, format!("{what} {:?} must be namespace/name", v.v))
                    .label("missing namespace")
                    .help(format!("e.g. {what}={example}")),
            );
            *ok = false;
            return Default::default();
        };
        if let Err(msg) = check_label(ns, 63) {
            self.push(err(v.span, format!("namespace {ns:?} {msg}")).label("not a DNS-1123 label"));
            *ok = false;
        }
        let name_check = if service {
            check_rfc1035_label(name, 63)
        } else {
            check_subdomain(name)
        };
        if let Err(msg) = name_check {
            let rule = if service {
                "Service names are RFC 1035 labels"
            } else {
                "workload names are DNS-1123 subdomains"
            };
            self.push(err(v.span, format!("{what} name {name:?} {msg}")).label(rule));
            *ok = false;
        }
        (ns.to_string(), name.to_string())
    }
}

fn check_rel_dir(r: &mut Resolver<'_>, dir: &str, span: SourceSpan) {
    if dir.is_empty() || dir.starts_with('/') || dir.split('/').any(|s| s == ".." || s.is_empty()) {
        r.push(err(
            span,
            format!("dir {dir:?} must be a relative path beside the spec, without '..'"),
        ));
    }
}

/// Ranges no subnet route may overlap (lie inside or contain): addresses that mean the router's
/// own host (unspecified, loopback, link-local), that are not unicast (multicast, the IPv4
/// broadcast address) or that stand for IPv4 inside IPv6 (IPv4-mapped). Default routes
/// (`0.0.0.0/0`, `::/0`) are refused before this (subnet routers are not exit nodes).
const UNROUTABLE: &[(&str, &str)] = &[
    ("0.0.0.0/32", "unspecified"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

const UNROUTABLE_HELP: &str = "a subnet router forwards to unicast addresses on its cluster's network; unspecified, loopback, link-local, multicast, broadcast and IPv4-mapped ranges are refused";

/// The first [`UNROUTABLE`] range `n` overlaps, with its kind.
pub fn unroutable(n: &IpNet) -> Option<(IpNet, &'static str)> {
    UNROUTABLE
        .iter()
        .filter_map(|(net, what)| Some((net.parse::<IpNet>().ok()?, *what)))
        .find(|(r, _)| r.contains(n) || n.contains(r))
}

fn overlaps_tailnet(n: &IpNet) -> bool {
    [IpNet::V4(CGNAT), IpNet::V6(TAILNET_V6)]
        .iter()
        .any(|t| t.contains(n) || n.contains(t))
}

/// The oldest `tailscale/tailscale` release the `runtime="tailscale"` output works with:
/// containerboot reads `TS_ENABLE_HEALTH_CHECK` and `TS_LOCAL_ADDR_PORT` from v1.78.0
/// (cmd/containerboot/settings.go; v1.76.x has neither, so `/healthz` would never answer).
pub const MIN_TAILSCALE_IMAGE: (u32, u32, u32) = (1, 78, 0);

/// The release an image tag names (`v1.90.6`, `1.90`, `unstable-v1.91.12`, `v1.90.6@sha256:…`),
/// or `None` when the tag is not a version (a digest only, a mirror's own tag).
pub fn tailscale_image_version(image: &str) -> Option<(u32, u32, u32)> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    let tag = tag.strip_prefix("unstable-").unwrap_or(tag);
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let core = tag.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let mut num = |required: bool| -> Option<u32> {
        match parts.next() {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.len() <= 9 => {
                p.parse().ok()
            }
            None if !required => Some(0),
            _ => None,
        }
    };
    let v = (num(true)?, num(true)?, num(false)?);
    parts.next().is_none().then_some(v)
}

/// An image reference pinned by tag or digest.
/// A Kubernetes annotation (or label) key: an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters (alphanumerics, `-`, `_`, `.`, alphanumeric at both ends).
pub fn check_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_subdomain(p).map_err(|e| format!("has a prefix that {e}"))?;
    }
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !ok_end(name.chars().next())
        || !ok_end(name.chars().last())
    {
        return Err("is not a valid key: a name of at most 63 letters, digits, '-', '_' or '.' (letter or digit at both ends), after an optional DNS prefix and '/'".to_string());
    }
    Ok(())
}

pub fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.contains(char::is_whitespace) {
        return Err("is not an image reference".into());
    }
    if let Some((_, digest)) = image.split_once('@') {
        return if digest.starts_with("sha256:") && digest.len() == 7 + 64 {
            Ok(())
        } else {
            Err("has a malformed digest".into())
        };
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) => Err("uses the moving tag `latest`".into()),
        Some((_, tag)) if !tag.is_empty() => Ok(()),
        _ => Err("has no tag or digest".into()),
    }
}

pub fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return (n.trunc() == n).then_some(n);
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Free-form `key=value` properties of a node whose keys depend on an argument.
struct Props<'a> {
    props: &'a [(SpStr, Sp<PropValue>)],
    used: Vec<&'static str>,
}

impl<'a> Props<'a> {
    fn new(props: &'a [(SpStr, Sp<PropValue>)]) -> Props<'a> {
        Props {
            props,
            used: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Sp<PropValue>> {
        self.used.push(key);
        self.props
            .iter()
            .rev()
            .find(|(k, _)| k.v == key)
            .map(|(_, v)| v)
    }

    fn str(&mut self, r: &mut Resolver<'_>, key: &'static str) -> Option<String> {
        match self.get(key) {
            Some(Sp {
                v: PropValue::Str(s),
                ..
            }) => Some(s.clone()),
            Some(v) => {
                r.push(err(v.span, format!("`{key}` must be a string")).label("wrong type"));
                None
            }
            None => None,
        }
    }

    fn bool(&mut self, r: &mut Resolver<'_>, key: &'static str) -> Option<bool> {
        match self.get(key) {
            Some(Sp {
                v: PropValue::Bool(b),
                ..
            }) => Some(*b),
            Some(v) => {
                r.push(err(v.span, format!("`{key}` must be #true or #false")).label("wrong type"));
                None
            }
            None => None,
        }
    }

    fn finish(self, r: &mut Resolver<'_>) {
        let mut seen: Vec<&str> = Vec::new();
        for (k, _) in self.props {
            if !self.used.contains(&k.v.as_str()) {
                let mut diag =
                    err(k.span, format!("unknown property `{}`", k.v)).label("not understood here");
                if let Some(h) = suggest(&k.v, self.used.iter().copied()) {
                    diag = diag.help(h);
                }
                r.push(diag);
            } else if seen.contains(&k.v.as_str()) {
                r.push(
                    err(k.span, format!("property `{}` given twice", k.v))
                        .label("duplicate property"),
                );
            }
            seen.push(&k.v);
        }
    }
}
