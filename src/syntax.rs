//! Stage 1 — parse: KDL v2 text → a typed syntax tree with spans.
//!
//! This stage knows the shape of the language (which nodes, arguments and properties exist and
//! their value types) and nothing about meaning: references, CIDRs, names and duplicates are
//! checked by `resolve`. Every problem becomes a [`Diagnostic`]; parsing goes on after an error
//! so one run reports everything.

use kdl::{KdlDocument, KdlNode, KdlValue};
use miette::SourceSpan;

use crate::diag::{Diagnostic, Diagnostics, suggest};

/// A value with the span it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sp<T> {
    pub v: T,
    pub span: SourceSpan,
}

impl<T> Sp<T> {
    pub fn new(v: T, span: SourceSpan) -> Sp<T> {
        Sp { v, span }
    }
}

pub type SpStr = Sp<String>;

#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub tailnet: Option<TailnetDecl>,
    pub users: Vec<SpStr>,
    pub groups: Vec<GroupDecl>,
    pub tags: Vec<TagDecl>,
    pub hosts: Vec<HostDecl>,
    pub devices: Vec<DeviceDecl>,
    pub clusters: Vec<ClusterDecl>,
    pub acls: Vec<AclDecl>,
    pub grants: Vec<GrantDecl>,
    pub tests: Vec<TestDecl>,
    pub ssh: Vec<SshDecl>,
    pub gitops: Option<GitopsDecl>,
    /// `verbatim "<section>" "<JSON>"`: policy sections carried through (see `import`).
    pub verbatim: Vec<(SpStr, SpStr)>,
}

#[derive(Clone, Debug)]
pub struct TailnetDecl {
    pub name: SpStr,
    pub domain: Option<SpStr>,
    pub ipv4_pool: Option<SpStr>,
    /// The tailnet's MagicDNS suffix on Tailscale/headscale (`tail1234.ts.net`), for
    /// Tailscale-image egress to a node by name.
    pub magicdns_suffix: Option<SpStr>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct GroupDecl {
    pub name: SpStr,
    pub members: Vec<SpStr>,
}

#[derive(Clone, Debug)]
pub struct TagDecl {
    pub name: SpStr,
    pub owners: Vec<SpStr>,
}

#[derive(Clone, Debug)]
pub struct HostDecl {
    pub name: SpStr,
    pub addr: SpStr,
}

#[derive(Clone, Debug)]
pub struct DeviceDecl {
    pub name: SpStr,
    pub user: Option<SpStr>,
    pub public_key: Option<SpStr>,
    pub key_path: Option<SpStr>,
    pub tags: Vec<SpStr>,
}

#[derive(Clone, Debug)]
pub struct ClusterDecl {
    pub name: SpStr,
    pub namespace: Option<SpStr>,
    pub pod_cidr: Option<SpStr>,
    pub service_cidr: Option<SpStr>,
    pub endpoint: Option<SpStr>,
    pub publish: Option<SpStr>,
    /// `publish="gateway"`: the gateway's one UDP port.
    pub gateway_port: Option<Sp<i128>>,
    /// MetalLB: the one address all of the cluster's LoadBalancer Services share.
    pub shared_ip: Option<SpStr>,
    pub load_balancer_class: Option<SpStr>,
    pub load_balancer_source_ranges: Vec<SpStr>,
    /// `service-annotations { annotation "key" "value"; }`: on every WireGuard Service.
    pub service_annotations: Vec<(SpStr, SpStr)>,
    /// `native` (an init container with `restartPolicy: Always`) or `container`.
    pub sidecar_style: Option<SpStr>,
    pub image: Option<SpStr>,
    pub runtime: Option<SpStr>,
    /// `runtime="tailscale"`: the port of containerboot's health endpoint in each pod.
    pub health_port: Option<Sp<i128>>,
    pub secrets: Option<SecretsDecl>,
    pub gitops: Option<ClusterGitopsDecl>,
    pub exposures: Vec<ExposureDecl>,
    pub span: SourceSpan,
}

/// `secrets "<backend>" key=value…` — the properties are backend-specific and checked by resolve.
#[derive(Clone, Debug)]
pub struct SecretsDecl {
    pub backend: SpStr,
    pub props: Vec<(SpStr, Sp<PropValue>)>,
    pub recipients: Vec<SpStr>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct ClusterGitopsDecl {
    pub props: Vec<(SpStr, Sp<PropValue>)>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct GitopsDecl {
    pub flavour: SpStr,
    pub props: Vec<(SpStr, Sp<PropValue>)>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PropValue {
    Str(String),
    Int(i128),
    Bool(bool),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExposureKind {
    Proxy,
    Sidecar,
    SubnetRouter,
    Egress,
}

impl ExposureKind {
    pub fn keyword(self) -> &'static str {
        match self {
            ExposureKind::Proxy => "proxy",
            ExposureKind::Sidecar => "sidecar",
            ExposureKind::SubnetRouter => "subnet-router",
            ExposureKind::Egress => "egress",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExposureDecl {
    pub kind: ExposureKind,
    pub name: SpStr,
    pub hostname: Option<SpStr>,
    pub tags: Vec<SpStr>,
    /// proxy: `ns/name` of a Service.
    pub service: Option<SpStr>,
    /// sidecar: `ns/name` of a workload.
    pub workload: Option<SpStr>,
    /// sidecar: Deployment (default) or StatefulSet.
    pub workload_kind: Option<SpStr>,
    pub replicas: Option<Sp<i128>>,
    /// egress: device, host alias or exposure name.
    pub target: Option<SpStr>,
    pub routes: Vec<SpStr>,
    pub ports: Vec<PortDecl>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct PortDecl {
    pub port: Sp<i128>,
    pub target: Option<Sp<i128>>,
    /// proxy: the port the Service's pods listen on (what NetworkPolicy sees after DNAT).
    pub pod_port: Option<Sp<i128>>,
    pub protocol: Option<SpStr>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct AclDecl {
    pub action: SpStr,
    pub src: Vec<SpStr>,
    pub dst: Vec<SpStr>,
    pub proto: Option<SpStr>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct GrantDecl {
    pub src: Vec<SpStr>,
    pub dst: Vec<SpStr>,
    pub ip: Vec<SpStr>,
    pub via: Vec<SpStr>,
    /// capability name → JSON text of one value (an object).
    pub app: Vec<(SpStr, SpStr)>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct TestDecl {
    pub src: SpStr,
    pub proto: Option<SpStr>,
    /// `check="policy"`: judged by the policy alone (not written to policy.hujson).
    pub check: Option<SpStr>,
    pub accept: Vec<SpStr>,
    pub deny: Vec<SpStr>,
    pub span: SourceSpan,
}

#[derive(Clone, Debug)]
pub struct SshDecl {
    pub action: SpStr,
    pub src: Vec<SpStr>,
    pub dst: Vec<SpStr>,
    pub users: Vec<SpStr>,
    pub check_period: Option<SpStr>,
    pub span: SourceSpan,
}

/// Deepest nesting of children blocks (and of block comments) accepted. The KDL parser recurses
/// once per level, so without a bound a hostile file overflows the stack; specs and locks nest
/// a few levels at most.
pub const MAX_NESTING: usize = 64;

/// The byte offset of the first `{` (or `/*`) nested deeper than [`MAX_NESTING`], if any.
/// Strings and comments are skipped; an unterminated one ends the scan (the parser reports it).
pub fn too_deep(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let starts = |i: usize, s: &[u8]| b.get(i..).is_some_and(|r| r.starts_with(s));
    let (mut i, mut depth, mut comments) = (0usize, 0usize, 0usize);
    while let Some(c) = at(i) {
        if comments > 0 {
            if starts(i, b"/*") {
                comments += 1;
                if comments > MAX_NESTING {
                    return Some(i);
                }
                i += 2;
            } else if starts(i, b"*/") {
                comments -= 1;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        match c {
            b'/' if at(i + 1) == Some(b'/') => {
                while at(i).is_some_and(|c| c != b'\n') {
                    i += 1;
                }
            }
            b'/' if at(i + 1) == Some(b'*') => {
                comments = 1;
                i += 2;
            }
            b'#' | b'"' => {
                let hashes = b
                    .get(i..)
                    .map_or(0, |r| r.iter().take_while(|&&c| c == b'#').count());
                let q = i + hashes;
                if at(q) != Some(b'"') {
                    i = q.max(i + 1);
                    continue;
                }
                let quotes = if starts(q, b"\"\"\"") { 3 } else { 1 };
                let mut close = vec![b'"'; quotes];
                close.extend(std::iter::repeat_n(b'#', hashes));
                let mut j = q + quotes;
                loop {
                    match at(j) {
                        None => return None,
                        Some(b'\\') if hashes == 0 => j += 2,
                        // A one-line string ends at a newline (unterminated: kdl reports it
                        // and goes on parsing what follows, braces included).
                        Some(b'\n' | b'\r' | 0x0B | 0x0C) if quotes == 1 => {
                            break;
                        }
                        // U+0085, U+2028, U+2029 start with these bytes in UTF-8.
                        Some(0xC2 | 0xE2)
                            if quotes == 1
                                && (starts(j, "\u{85}".as_bytes())
                                    || starts(j, "\u{2028}".as_bytes())
                                    || starts(j, "\u{2029}".as_bytes())) =>
                        {
                            break;
                        }
                        Some(_) if starts(j, &close) => {
                            j += close.len();
                            break;
                        }
                        Some(_) => j += 1,
                    }
                }
                i = j;
            }
            b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(i);
                }
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// The diagnostic for [`too_deep`].
pub fn too_deep_diagnostic(at: usize) -> Diagnostic {
    Diagnostic::new(
        SourceSpan::from(at..at + 1),
        format!("nested deeper than {MAX_NESTING} levels"),
    )
    .label("too deep")
    .help("blocks nest a few levels at most; this does not look like a file tsk8s reads")
}

/// Fuzzing only: when set, text the fast KDL parser does not take is reported as one generic
/// syntax error instead of going through `kdl`'s parser for its diagnostics. That parser is
/// ~40× slower and would otherwise be most of what a fuzzer measures; the fuzz targets still
/// send a sample of their inputs through it.
#[doc(hidden)]
pub static FAST_KDL_ONLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// KDL text → document, or the syntax errors (spans in `text`).
pub(crate) fn parse_kdl(text: &str) -> Result<kdl::KdlDocument, Vec<Diagnostic>> {
    let result = if FAST_KDL_ONLY.load(std::sync::atomic::Ordering::Relaxed) {
        tsk8s_kdl::parse_fast(text).ok_or(None)
    } else {
        tsk8s_kdl::parse(text).map_err(Some)
    };
    result.map_err(|err| {
        let mut diags = Vec::new();
        for d in err.map(|e| e.diagnostics).unwrap_or_default() {
            let msg = d.message.clone().unwrap_or_else(|| "invalid KDL".into());
            let mut diag = Diagnostic::new(d.span, format!("syntax error: {msg}"));
            if let Some(label) = d.label {
                diag = diag.label(label);
            }
            if let Some(help) = d.help {
                diag = diag.help(help);
            } else if let Some(word) = text
                .get(d.span.offset()..d.span.offset() + d.span.len())
                .filter(|w| matches!(*w, "true" | "false" | "null"))
            {
                diag = diag.help(format!(
                    "KDL v2 writes keywords with `#`: `#{word}` (or \"{word}\" for the string)"
                ));
            }
            diags.push(diag);
        }
        if diags.is_empty() {
            diags.push(Diagnostic::new(
                SourceSpan::from(0..0),
                "syntax error: invalid KDL",
            ));
        }
        diags
    })
}

/// Characters a KDL v2 string may not hold literally on one line: controls (tab, CR and
/// U+0085 included), newlines (U+2028/2029), the byte-order mark and bidirectional-text
/// controls.
pub fn kdl_special(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{feff}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` as a quoted KDL v2 string with escapes: `"` and `\`, `\n` `\r` `\t`, and `\u{…}` for
/// every other [`kdl_special`] character. Parses back to `s`.
pub fn kdl_quoted(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if kdl_special(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parse spec text. Returns the tree (possibly partial) and the diagnostics found.
pub fn parse(file: &str, text: &str) -> (Spec, Diagnostics) {
    let mut diags = Diagnostics::new(file, text);
    if let Some(at) = too_deep(text) {
        diags.push(too_deep_diagnostic(at));
        return (Spec::default(), diags);
    }
    let doc = match parse_kdl(text) {
        Ok(doc) => doc,
        Err(errs) => {
            diags.items.extend(errs);
            return (Spec::default(), diags);
        }
    };
    let mut p = Parser { d: &mut diags };
    let spec = p.document(&doc);
    (spec, diags)
}

const TOP: &[&str] = &[
    "tailnet", "user", "group", "tag", "host", "device", "cluster", "acl", "grant", "test", "ssh",
    "gitops", "verbatim",
];
const CLUSTER_CHILDREN: &[&str] = &[
    "secrets",
    "gitops",
    "service-annotations",
    "load-balancer-source-ranges",
    "proxy",
    "sidecar",
    "subnet-router",
    "egress",
];

struct Parser<'d> {
    d: &'d mut Diagnostics,
}

/// Reads one node: hands out its arguments and properties and, at `finish`, reports whatever
/// was not asked for.
struct Node<'a> {
    node: &'a KdlNode,
    used_props: Vec<String>,
    args_used: usize,
}

impl<'a> Node<'a> {
    fn new(node: &'a KdlNode) -> Node<'a> {
        Node {
            node,
            used_props: Vec::new(),
            args_used: 0,
        }
    }

    fn name(&self) -> &str {
        self.node.name().value()
    }

    fn span(&self) -> SourceSpan {
        self.node.span()
    }

    fn name_span(&self) -> SourceSpan {
        self.node.name().span()
    }

    fn args(&self) -> impl Iterator<Item = &'a kdl::KdlEntry> + use<'a> {
        let node: &'a KdlNode = self.node;
        node.entries().iter().filter(|e| e.name().is_none())
    }

    /// The next positional argument as a string.
    fn arg_str(&mut self, d: &mut Diagnostics, what: &str) -> Option<SpStr> {
        let idx = self.args_used;
        self.args_used += 1;
        match self.args().nth(idx) {
            Some(e) => as_str(d, e.value(), e.span(), what),
            None => {
                d.push(
                    Diagnostic::new(self.name_span(), format!("`{}` needs {what}", self.name()))
                        .label("argument missing"),
                );
                None
            }
        }
    }

    /// All remaining positional arguments as strings (at least one).
    fn rest_str(&mut self, d: &mut Diagnostics, what: &str) -> Vec<SpStr> {
        let out: Vec<SpStr> = self
            .args()
            .skip(self.args_used)
            .filter_map(|e| as_str(d, e.value(), e.span(), what))
            .collect();
        let n = self.args().count();
        if n <= self.args_used {
            d.push(
                Diagnostic::new(self.name_span(), format!("`{}` needs {what}", self.name()))
                    .label("argument missing"),
            );
        }
        self.args_used = n.max(self.args_used);
        out
    }

    fn prop(&mut self, key: &str) -> Option<&'a kdl::KdlEntry> {
        self.used_props.push(key.to_string());
        self.node
            .entries()
            .iter()
            .rev()
            .find(|e| e.name().is_some_and(|n| n.value() == key))
    }

    fn prop_str(&mut self, d: &mut Diagnostics, key: &str) -> Option<SpStr> {
        let e = self.prop(key)?;
        as_str(d, e.value(), e.span(), &format!("`{key}`"))
    }

    fn prop_int(&mut self, d: &mut Diagnostics, key: &str) -> Option<Sp<i128>> {
        let e = self.prop(key)?;
        as_int(d, e.value(), e.span(), &format!("`{key}`"))
    }

    /// Every property not read, and every argument beyond those read, is an error.
    fn finish(self, d: &mut Diagnostics) {
        let known: Vec<&str> = self.used_props.iter().map(String::as_str).collect();
        // A set: a node may carry millions of properties (hostile input).
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for e in self.node.entries() {
            if let Some(n) = e.name() {
                let key = n.value();
                if !known.contains(&key) {
                    if d.beyond_cap(e.span()) {
                        continue;
                    }
                    let mut diag = Diagnostic::new(
                        e.span(),
                        format!("unknown property `{key}` on `{}`", self.name()),
                    )
                    .label("not a property of this node");
                    if let Some(h) = suggest(key, known.iter().copied()) {
                        diag = diag.help(h);
                    } else if !known.is_empty() {
                        diag = diag.help(format!("known properties: {}", known.join(", ")));
                    }
                    d.push(diag);
                } else if seen.contains(key) {
                    d.push(
                        Diagnostic::new(e.span(), format!("property `{key}` given twice"))
                            .label("duplicate property"),
                    );
                }
                seen.insert(key);
            }
        }
        self.extra_args(d);
    }

    /// Every argument no reader took.
    fn extra_args(&self, d: &mut Diagnostics) {
        for e in self.args().skip(self.args_used) {
            d.push(
                Diagnostic::new(
                    e.span(),
                    format!("unexpected argument to `{}`", self.name()),
                )
                .label("extra argument"),
            );
        }
    }

    fn children(&self) -> &'a [KdlNode] {
        self.node.children().map(|c| c.nodes()).unwrap_or(&[])
    }

    fn no_children(&self, d: &mut Diagnostics) {
        if let Some(c) = self.node.children()
            && !c.nodes().is_empty()
        {
            d.push(
                Diagnostic::new(c.span(), format!("`{}` takes no children", self.name()))
                    .label("unexpected block"),
            );
        }
    }
}

fn type_name(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn as_str(d: &mut Diagnostics, v: &KdlValue, span: SourceSpan, what: &str) -> Option<SpStr> {
    match v {
        KdlValue::String(s) => Some(Sp::new(s.clone(), span)),
        other => {
            d.push(
                Diagnostic::new(
                    span,
                    format!("{what} must be a string, found {}", type_name(other)),
                )
                .label("wrong type"),
            );
            None
        }
    }
}

fn as_int(d: &mut Diagnostics, v: &KdlValue, span: SourceSpan, what: &str) -> Option<Sp<i128>> {
    match v {
        KdlValue::Integer(i) => Some(Sp::new(*i, span)),
        other => {
            d.push(
                Diagnostic::new(
                    span,
                    format!("{what} must be an integer, found {}", type_name(other)),
                )
                .label("wrong type"),
            );
            None
        }
    }
}

fn prop_value(d: &mut Diagnostics, e: &kdl::KdlEntry) -> Option<Sp<PropValue>> {
    let v = match e.value() {
        KdlValue::String(s) => PropValue::Str(s.clone()),
        KdlValue::Integer(i) => PropValue::Int(*i),
        KdlValue::Bool(b) => PropValue::Bool(*b),
        other => {
            d.push(
                Diagnostic::new(
                    e.span(),
                    format!(
                        "value must be a string, integer or boolean, found {}",
                        type_name(other)
                    ),
                )
                .label("wrong type"),
            );
            return None;
        }
    };
    Some(Sp::new(v, e.span()))
}

fn unknown_child(d: &mut Diagnostics, node: &KdlNode, parent: &str, known: &[&str]) {
    if d.beyond_cap(node.name().span()) {
        return;
    }
    let name = node.name().value();
    let mut diag = Diagnostic::new(
        node.name().span(),
        format!("unknown node `{name}` in {parent}"),
    )
    .label("not understood here");
    if let Some(h) = suggest(name, known.iter().copied()) {
        diag = diag.help(h);
    } else {
        diag = diag.help(format!("expected one of: {}", known.join(", ")));
    }
    d.push(diag);
}

impl Parser<'_> {
    fn document(&mut self, doc: &KdlDocument) -> Spec {
        let mut spec = Spec::default();
        for node in doc.nodes() {
            match node.name().value() {
                "tailnet" => {
                    let t = self.tailnet(node);
                    if let (Some(prev), Some(t)) = (&spec.tailnet, &t) {
                        self.d.push(
                            Diagnostic::new(t.span, "`tailnet` declared twice")
                                .label("second declaration")
                                .help(format!(
                                    "the first is at line {}",
                                    self.d.line(prev.span.offset())
                                )),
                        );
                    } else if t.is_some() {
                        spec.tailnet = t;
                    }
                }
                "user" => {
                    let mut n = Node::new(node);
                    if let Some(u) = n.arg_str(self.d, "a user's email") {
                        spec.users.push(u);
                    }
                    n.no_children(self.d);
                    n.finish(self.d);
                }
                "group" => spec.groups.extend(self.group(node)),
                "tag" => spec.tags.extend(self.tag(node)),
                "host" => {
                    let mut n = Node::new(node);
                    let name = n.arg_str(self.d, "a host alias name");
                    let addr = n.arg_str(self.d, "an IP address or CIDR");
                    n.no_children(self.d);
                    n.finish(self.d);
                    if let (Some(name), Some(addr)) = (name, addr) {
                        spec.hosts.push(HostDecl { name, addr });
                    }
                }
                "device" => spec.devices.extend(self.device(node)),
                "cluster" => spec.clusters.extend(self.cluster(node)),
                "acl" => self.acl_block(node, &mut spec.acls),
                "grant" => spec.grants.extend(self.grant(node)),
                "test" => spec.tests.extend(self.test(node)),
                "ssh" => spec.ssh.extend(self.ssh(node)),
                "gitops" => {
                    let g = self.gitops(node);
                    if spec.gitops.is_some() {
                        self.d.push(
                            Diagnostic::new(node.name().span(), "`gitops` declared twice")
                                .label("second declaration"),
                        );
                    } else {
                        spec.gitops = g;
                    }
                }
                "verbatim" => {
                    let mut n = Node::new(node);
                    let section = n.arg_str(self.d, "a policy section name");
                    let json = n.arg_str(self.d, "the section's JSON value");
                    n.no_children(self.d);
                    n.finish(self.d);
                    spec.verbatim.extend(section.zip(json));
                }
                _ => unknown_child(self.d, node, "the spec", TOP),
            }
        }
        spec
    }

    fn tailnet(&mut self, node: &KdlNode) -> Option<TailnetDecl> {
        let mut n = Node::new(node);
        let name = n.arg_str(self.d, "the tailnet's name");
        let domain = n.prop_str(self.d, "domain");
        let ipv4_pool = n.prop_str(self.d, "ipv4-pool");
        let magicdns_suffix = n.prop_str(self.d, "magicdns-suffix");
        n.no_children(self.d);
        let span = n.span();
        n.finish(self.d);
        Some(TailnetDecl {
            name: name?,
            domain,
            ipv4_pool,
            magicdns_suffix,
            span,
        })
    }

    /// The property form of a list field (`key="one"`); the child form (`key "a" "b"`) is
    /// read where the children are walked.
    fn list_prop(&mut self, n: &mut Node, key: &str, out: &mut Vec<SpStr>) {
        if let Some(v) = n.prop_str(self.d, key) {
            out.push(v);
        }
    }

    /// A list field given as a child: `key "a" "b"` (one or more string arguments, no block).
    fn list_child(&mut self, c: &KdlNode, what: &str) -> Vec<SpStr> {
        let mut cn = Node::new(c);
        let out = cn.rest_str(self.d, what);
        cn.no_children(self.d);
        cn.finish(self.d);
        out
    }

    /// `NODE "name" key="one"` or `NODE "name" { key "a" "b"; }`: a name and one list.
    fn named_list(
        &mut self,
        node: &KdlNode,
        name_what: &str,
        key: &str,
        parent: &str,
        list_what: &str,
    ) -> Option<(SpStr, Vec<SpStr>)> {
        let mut n = Node::new(node);
        let name = n.arg_str(self.d, name_what);
        let mut list = Vec::new();
        self.list_prop(&mut n, key, &mut list);
        for c in n.children() {
            if c.name().value() == key {
                list.extend(self.list_child(c, list_what));
            } else {
                unknown_child(self.d, c, parent, &[key]);
            }
        }
        n.finish(self.d);
        Some((name?, list))
    }

    fn group(&mut self, node: &KdlNode) -> Option<GroupDecl> {
        let (name, members) = self.named_list(
            node,
            "the group's name",
            "member",
            "a group",
            "one or more user emails",
        )?;
        Some(GroupDecl { name, members })
    }

    fn tag(&mut self, node: &KdlNode) -> Option<TagDecl> {
        let (name, owners) = self.named_list(
            node,
            "the tag's name",
            "owner",
            "a tag",
            "one or more owners",
        )?;
        Some(TagDecl { name, owners })
    }

    fn device(&mut self, node: &KdlNode) -> Option<DeviceDecl> {
        let mut n = Node::new(node);
        let name = n.arg_str(self.d, "the device's name");
        let user = n.prop_str(self.d, "user");
        let public_key = n.prop_str(self.d, "public-key");
        let key_path = n.prop_str(self.d, "key-path");
        let mut tags = Vec::new();
        self.list_prop(&mut n, "tag", &mut tags);
        for c in n.children() {
            match c.name().value() {
                "tag" => {
                    tags.extend(self.list_child(c, "one or more tags"));
                }
                _ => unknown_child(self.d, c, "a device", &["tag"]),
            }
        }
        n.finish(self.d);
        Some(DeviceDecl {
            name: name?,
            user,
            public_key,
            key_path,
            tags,
        })
    }

    fn kv_props(&mut self, node: &KdlNode) -> Vec<(SpStr, Sp<PropValue>)> {
        node.entries()
            .iter()
            .filter_map(|e| {
                let key = e.name()?;
                let v = prop_value(self.d, e)?;
                Some((Sp::new(key.value().to_string(), key.span()), v))
            })
            .collect()
    }

    fn cluster(&mut self, node: &KdlNode) -> Option<ClusterDecl> {
        let mut n = Node::new(node);
        let name = n.arg_str(self.d, "the cluster's name");
        let namespace = n.prop_str(self.d, "namespace");
        let pod_cidr = n.prop_str(self.d, "pod-cidr");
        let service_cidr = n.prop_str(self.d, "service-cidr");
        let endpoint = n.prop_str(self.d, "endpoint");
        let publish = n.prop_str(self.d, "publish");
        let gateway_port = n.prop_int(self.d, "gateway-port");
        let shared_ip = n.prop_str(self.d, "shared-ip");
        let load_balancer_class = n.prop_str(self.d, "load-balancer-class");
        let mut load_balancer_source_ranges = Vec::new();
        self.list_prop(
            &mut n,
            "load-balancer-source-ranges",
            &mut load_balancer_source_ranges,
        );
        let sidecar_style = n.prop_str(self.d, "sidecar-style");
        let image = n.prop_str(self.d, "image");
        let runtime = n.prop_str(self.d, "runtime");
        let health_port = n.prop_int(self.d, "health-port");
        let span = n.span();
        let mut service_annotations: Vec<(SpStr, SpStr)> = Vec::new();
        let mut secrets: Option<SecretsDecl> = None;
        let mut gitops: Option<ClusterGitopsDecl> = None;
        let mut exposures = Vec::new();
        for c in n.children() {
            let kind = match c.name().value() {
                "secrets" => {
                    let s = self.secrets(c);
                    if secrets.is_some() {
                        self.d.push(
                            Diagnostic::new(c.name().span(), "`secrets` given twice in a cluster")
                                .label("second declaration"),
                        );
                    } else {
                        secrets = s;
                    }
                    continue;
                }
                "gitops" => {
                    self.cluster_gitops(c, &mut gitops);
                    continue;
                }
                "load-balancer-source-ranges" => {
                    load_balancer_source_ranges.extend(self.list_child(c, "one or more CIDRs"));
                    continue;
                }
                "service-annotations" => {
                    self.service_annotations(c, &mut service_annotations);
                    continue;
                }
                "proxy" => ExposureKind::Proxy,
                "sidecar" => ExposureKind::Sidecar,
                "subnet-router" => ExposureKind::SubnetRouter,
                "egress" => ExposureKind::Egress,
                _ => {
                    unknown_child(self.d, c, "a cluster", CLUSTER_CHILDREN);
                    continue;
                }
            };
            exposures.extend(self.exposure(c, kind));
        }
        n.finish(self.d);
        Some(ClusterDecl {
            name: name?,
            namespace,
            pod_cidr,
            service_cidr,
            endpoint,
            publish,
            gateway_port,
            shared_ip,
            load_balancer_class,
            load_balancer_source_ranges,
            service_annotations,
            sidecar_style,
            image,
            runtime,
            health_port,
            secrets,
            gitops,
            exposures,
            span,
        })
    }

    /// A cluster's `gitops { … }` (properties only; once per cluster) into `gitops`.
    fn cluster_gitops(&mut self, c: &KdlNode, gitops: &mut Option<ClusterGitopsDecl>) {
        let props = self.kv_props(c);
        let cn = Node::new(c);
        cn.no_children(self.d);
        if Node::new(c).args().next().is_some() {
            self.d.push(
                Diagnostic::new(
                    c.name().span(),
                    "`gitops` in a cluster takes only properties",
                )
                .label("unexpected argument"),
            );
        }
        if gitops.is_some() {
            self.d.push(
                Diagnostic::new(c.name().span(), "`gitops` given twice in a cluster")
                    .label("second declaration"),
            );
        } else {
            *gitops = Some(ClusterGitopsDecl {
                props,
                span: c.span(),
            });
        }
    }

    /// A cluster's `service-annotations { annotation "key" "value" … }`, appended to `out`.
    fn service_annotations(&mut self, c: &KdlNode, out: &mut Vec<(SpStr, SpStr)>) {
        let cn = Node::new(c);
        if cn.args().next().is_some() || c.entries().iter().any(|e| e.name().is_some()) {
            self.d.push(
                Diagnostic::new(
                    c.name().span(),
                    "`service-annotations` takes a block of `annotation \"key\" \"value\"`",
                )
                .label("unexpected arguments"),
            );
        }
        for a in cn.children() {
            if a.name().value() != "annotation" {
                unknown_child(self.d, a, "service-annotations", &["annotation"]);
                continue;
            }
            let mut an = Node::new(a);
            let key = an.arg_str(self.d, "a key and a value");
            let value = if key.is_some() {
                an.arg_str(self.d, "a key and a value")
            } else {
                None
            };
            an.no_children(self.d);
            an.finish(self.d);
            if let (Some(k), Some(v)) = (key, value) {
                out.push((k, v));
            }
        }
    }

    fn secrets(&mut self, node: &KdlNode) -> Option<SecretsDecl> {
        let mut n = Node::new(node);
        let backend = n.arg_str(
            self.d,
            "a backend: existing, external-secrets, sops or sealed-secrets",
        );
        n.finish_args_only(self.d);
        let props = self.kv_props(node);
        let mut recipients = Vec::new();
        for c in n.children() {
            match c.name().value() {
                "age-recipient" => {
                    recipients.extend(self.list_child(c, "one or more age recipients"));
                }
                _ => unknown_child(self.d, c, "secrets", &["age-recipient"]),
            }
        }
        Some(SecretsDecl {
            backend: backend?,
            props,
            recipients,
            span: node.span(),
        })
    }

    fn gitops(&mut self, node: &KdlNode) -> Option<GitopsDecl> {
        let mut n = Node::new(node);
        let flavour = n.arg_str(self.d, "a flavour: argocd or flux");
        n.finish_args_only(self.d);
        n.no_children(self.d);
        let props = self.kv_props(node);
        Some(GitopsDecl {
            flavour: flavour?,
            props,
            span: node.span(),
        })
    }

    fn exposure(&mut self, node: &KdlNode, kind: ExposureKind) -> Option<ExposureDecl> {
        let mut n = Node::new(node);
        let name = n.arg_str(self.d, "the exposure's name");
        let hostname = n.prop_str(self.d, "hostname");
        let mut tags = Vec::new();
        self.list_prop(&mut n, "tag", &mut tags);
        let (mut service, mut workload, mut workload_kind, mut replicas, mut target) =
            (None, None, None, None, None);
        let mut routes = Vec::new();
        let mut ports = Vec::new();
        match kind {
            ExposureKind::Proxy => service = n.prop_str(self.d, "service"),
            ExposureKind::Sidecar => {
                workload = n.prop_str(self.d, "workload");
                workload_kind = n.prop_str(self.d, "kind");
                replicas = n.prop_int(self.d, "replicas");
            }
            ExposureKind::SubnetRouter => self.list_prop(&mut n, "route", &mut routes),
            ExposureKind::Egress => target = n.prop_str(self.d, "target"),
        }
        if kind != ExposureKind::SubnetRouter {
            let port = n.prop_int(self.d, "port");
            let pod_port = match kind {
                ExposureKind::Proxy => n.prop_int(self.d, "pod-port"),
                _ => None,
            };
            match (port, pod_port) {
                (Some(p), pod_port) => {
                    let span = p.span;
                    ports.push(PortDecl {
                        port: p,
                        target: None,
                        pod_port,
                        protocol: None,
                        span,
                    });
                }
                (None, Some(pp)) => {
                    self.d.push(
                        Diagnostic::new(pp.span, "`pod-port` goes with `port=` on the proxy")
                            .label("no port= here")
                            .help("with port children, write it on each: port 80 pod-port=3000"),
                    );
                }
                (None, None) => {}
            }
        }
        let mut known = vec!["tag"];
        match kind {
            ExposureKind::SubnetRouter => known.push("route"),
            _ => known.push("port"),
        }
        for c in n.children() {
            match (c.name().value(), kind) {
                ("tag", _) => {
                    tags.extend(self.list_child(c, "one or more tags"));
                }
                ("route", ExposureKind::SubnetRouter) => {
                    routes.extend(self.list_child(c, "one or more CIDRs"));
                }
                ("port", k) if k != ExposureKind::SubnetRouter => {
                    let mut cn = Node::new(c);
                    let port = match cn.args().next() {
                        Some(e) => {
                            cn.args_used = 1;
                            as_int(self.d, e.value(), e.span(), "a port")
                        }
                        None => {
                            self.d.push(
                                Diagnostic::new(c.name().span(), "`port` needs a port number")
                                    .label("argument missing"),
                            );
                            None
                        }
                    };
                    let target = cn.prop_int(self.d, "target");
                    let pod_port = match kind {
                        ExposureKind::Proxy => cn.prop_int(self.d, "pod-port"),
                        _ => None,
                    };
                    let protocol = cn.prop_str(self.d, "protocol");
                    cn.no_children(self.d);
                    cn.finish(self.d);
                    if let Some(port) = port {
                        ports.push(PortDecl {
                            port,
                            target,
                            pod_port,
                            protocol,
                            span: c.span(),
                        });
                    }
                }
                _ => unknown_child(self.d, c, &format!("a {}", kind.keyword()), &known),
            }
        }
        let span = n.span();
        n.finish(self.d);
        Some(ExposureDecl {
            kind,
            name: name?,
            hostname,
            tags,
            service,
            workload,
            workload_kind,
            replicas,
            target,
            routes,
            ports,
            span,
        })
    }

    fn acl_block(&mut self, node: &KdlNode, out: &mut Vec<AclDecl>) {
        let n = Node::new(node);
        if n.args().next().is_some() || node.entries().iter().any(|e| e.name().is_some()) {
            self.d.push(
                Diagnostic::new(node.name().span(), "`acl` takes a block of rules")
                    .label("unexpected arguments")
                    .help("write `acl { accept src=\"…\" dst=\"…\" }`"),
            );
        }
        for c in n.children() {
            let action = Sp::new(c.name().value().to_string(), c.name().span());
            let (lists, scalars, rest) = read_fields(c, &["src", "dst"], &["proto"], self);
            rest.finish(self.d);
            let mut it = lists.into_iter();
            let src = it.next().unwrap_or_default();
            let dst = it.next().unwrap_or_default();
            let proto = scalars.into_iter().next().flatten();
            out.push(AclDecl {
                action,
                src,
                dst,
                proto,
                span: c.span(),
            });
        }
    }

    fn grant(&mut self, node: &KdlNode) -> Option<GrantDecl> {
        let (lists, _, rest) = read_fields(node, &["src", "dst", "ip", "via"], &[], self);
        let mut app = Vec::new();
        for c in rest.children() {
            if c.name().value() == "app" {
                let mut cn = Node::new(c);
                let name = cn.arg_str(self.d, "a capability name");
                let json = cn.arg_str(self.d, "the capability's JSON value");
                cn.no_children(self.d);
                cn.finish(self.d);
                if let (Some(name), Some(json)) = (name, json) {
                    app.push((name, json));
                }
            }
        }
        rest.finish(self.d);
        let mut it = lists.into_iter();
        Some(GrantDecl {
            src: it.next().unwrap_or_default(),
            dst: it.next().unwrap_or_default(),
            ip: it.next().unwrap_or_default(),
            via: it.next().unwrap_or_default(),
            app,
            span: node.span(),
        })
    }

    fn test(&mut self, node: &KdlNode) -> Option<TestDecl> {
        let (lists, scalars, rest) =
            read_fields(node, &["src", "accept", "deny"], &["proto", "check"], self);
        let span = rest.span();
        let name_span = rest.name_span();
        rest.finish(self.d);
        let mut it = lists.into_iter();
        let mut sc = scalars.into_iter();
        let mut srcs = it.next().unwrap_or_default();
        if srcs.len() != 1 {
            self.d.push(
                Diagnostic::new(name_span, "a test needs exactly one `src`").label(
                    if srcs.is_empty() {
                        "no src"
                    } else {
                        "several src"
                    },
                ),
            );
            return None;
        }
        let src = srcs.remove(0);
        Some(TestDecl {
            src,
            accept: it.next().unwrap_or_default(),
            deny: it.next().unwrap_or_default(),
            proto: sc.next().flatten(),
            check: sc.next().flatten(),
            span,
        })
    }

    fn ssh(&mut self, node: &KdlNode) -> Option<SshDecl> {
        let (lists, scalars, rest) = read_fields(
            node,
            &["src", "dst", "users"],
            &["action", "check-period"],
            self,
        );
        let name_span = rest.name_span();
        rest.finish(self.d);
        let mut it = lists.into_iter();
        let mut sc = scalars.into_iter();
        let action = sc.next().flatten();
        let check_period = sc.next().flatten();
        let Some(action) = action else {
            self.d.push(
                Diagnostic::new(name_span, "an ssh rule needs `action` (accept or check)")
                    .label("no action"),
            );
            return None;
        };
        Some(SshDecl {
            action,
            src: it.next().unwrap_or_default(),
            dst: it.next().unwrap_or_default(),
            users: it.next().unwrap_or_default(),
            check_period,
            span: node.span(),
        })
    }
}

/// Shared by acl/grant/test/ssh: fields that are lists, given as a property (one value) or as
/// child nodes with one or more arguments, and scalars, given as a property or one child.
fn read_fields<'a>(
    node: &'a KdlNode,
    lists: &[&str],
    scalars: &[&str],
    p: &mut Parser<'_>,
) -> (Vec<Vec<SpStr>>, Vec<Option<SpStr>>, Node<'a>) {
    let mut n = Node::new(node);
    let mut out_lists: Vec<Vec<SpStr>> = vec![Vec::new(); lists.len()];
    for (i, key) in lists.iter().enumerate() {
        if let Some(v) = n.prop_str(p.d, key) {
            out_lists[i].push(v);
        }
    }
    let mut out_scalars: Vec<Option<SpStr>> = vec![None; scalars.len()];
    for (i, key) in scalars.iter().enumerate() {
        out_scalars[i] = n.prop_str(p.d, key);
    }
    let mut known: Vec<&str> = lists.iter().chain(scalars.iter()).copied().collect();
    let allow_app = lists.contains(&"ip");
    if allow_app {
        known.push("app");
    }
    for c in n.children() {
        let cname = c.name().value();
        if let Some(i) = lists.iter().position(|k| *k == cname) {
            let mut cn = Node::new(c);
            out_lists[i].extend(cn.rest_str(p.d, "one or more values"));
            cn.no_children(p.d);
            cn.finish(p.d);
        } else if let Some(i) = scalars.iter().position(|k| *k == cname) {
            let mut cn = Node::new(c);
            let v = cn.arg_str(p.d, "a value");
            cn.no_children(p.d);
            cn.finish(p.d);
            if out_scalars[i].is_some() {
                p.d.push(
                    Diagnostic::new(c.name().span(), format!("`{cname}` given twice"))
                        .label("second value"),
                );
            } else {
                out_scalars[i] = v;
            }
        } else if allow_app && cname == "app" {
            // handled by the caller
        } else {
            unknown_child(p.d, c, &format!("`{}`", node.name().value()), &known);
        }
    }
    (out_lists, out_scalars, n)
}

impl Node<'_> {
    /// Like `finish`, but properties are read by the caller as free-form key/values.
    fn finish_args_only(&mut self, d: &mut Diagnostics) {
        self.extra_args(d);
        self.args_used = usize::MAX / 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/lock/deep-braces-after-unterminated-string`): the
    /// depth guard took an unterminated one-line string to run on to the next `"`, so it did
    /// not count the braces after it, which `kdl` parses (recursively) once it has reported
    /// the string.
    #[test]
    fn depth_guard_ends_one_line_strings_at_newlines() {
        let deep = "{".repeat(MAX_NESTING + 1);
        for nl in [
            "\n", "\r", "\u{b}", "\u{c}", "\u{85}", "\u{2028}", "\u{2029}",
        ] {
            let text = format!("a \"open{nl}{deep}\n\"");
            assert!(too_deep(&text).is_some(), "{nl:?}");
        }
        // Braces inside strings do not count: one-line, escaped newline, multi-line, raw.
        for text in [
            format!("a \"{deep}\""),
            format!("a \"x\\\n{deep}\""),
            format!("a \"\"\"\n{deep}\n\"\"\""),
            format!("a #\"{deep}\"#"),
        ] {
            assert_eq!(too_deep(&text), None, "{text:?}");
        }
    }
}
