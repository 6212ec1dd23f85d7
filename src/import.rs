//! `tsk8s import POLICY.hujson`: an existing Tailscale policy file → a `tailnet.kdl` whose
//! build gives a semantically equal policy.
//!
//! What the spec language expresses is written as spec nodes: `groups` → `group`, `tagOwners`
//! → `tag`, `hosts` → `host`, `acls` → `acl { accept … }`, `grants` → `grant`, `tests` →
//! `test`, `ssh` → `ssh`, and a `user` for every email referenced. Every other top-level
//! section (`nodeAttrs`, `postures`, `ipsets`, `sshTests`, `derpMap`, `autoApprovers`, …) is
//! carried through with a `verbatim "<section>" #"<JSON>"#` node: `build` copies it into the
//! policy unchanged (`autoApprovers` is merged with the route approvers subnet routers
//! generate). Fields inside the generated sections that the spec cannot express (`srcPosture`
//! on a rule, `acceptEnv` on an ssh rule, …) are errors naming each one (exit 2).
//!
//! After writing the spec, import builds it and compares the resulting policy with the input
//! section by section; any difference is reported as a warning.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::verbatim::GENERATED;

// ---------------------------------------------------------------------------------------------
// Import

#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Tailnet name for the `tailnet` line.
    pub name: String,
    /// DNS suffix for the `tailnet` line.
    pub domain: String,
    /// Shown in the header comment (e.g. the policy file's name).
    pub source: String,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: "imported".into(),
            domain: "example.ts.net".into(),
            source: "policy.hujson".into(),
        }
    }
}

/// Why a policy cannot be imported; `tsk8s import` words its message by the variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The input is not a valid policy file.
    #[error("{0}")]
    Invalid(String),
    /// Parts the spec cannot express, each named by its JSON path (e.g. `acls[2].srcPosture`).
    #[error("{}", unsupported(.0))]
    Unsupported(Vec<String>),
}

/// The unsupported parts, one a line, bounded whatever the policy holds.
fn unsupported(list: &[String]) -> String {
    let mut s = format!(
        "the spec cannot express {} part(s) of this policy:\n",
        list.len()
    );
    for p in list.iter().take(50) {
        s.push_str(&format!("  {p}\n"));
    }
    if list.len() > 50 {
        s.push_str(&format!("  … and {} more\n", list.len() - 50));
    }
    s
}

#[derive(Clone, Debug)]
pub struct Imported {
    /// The spec text (`tailnet.kdl`).
    pub spec: String,
    /// Sections whose rebuilt policy differs from the input (should be empty).
    pub warnings: Vec<String>,
}

/// A KDL v2 string: plain quoted when that needs no escapes, raw (`#"…"#`) when only quotes or
/// backslashes are in the way, else quoted with escapes.
pub fn kdl_str(s: &str) -> String {
    use crate::syntax::kdl_special;
    if !s.chars().any(|c| kdl_special(c) || c == '"' || c == '\\') {
        return format!("\"{s}\"");
    }
    if !s.chars().any(kdl_special) {
        let mut hashes = String::from("#");
        while s.contains(&format!("\"{hashes}")) {
            hashes.push('#');
        }
        return format!("{hashes}\"{s}\"{hashes}");
    }
    crate::syntax::kdl_quoted(s)
}

fn strings(v: &Value, path: &str, bad: &mut Vec<String>) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                Value::String(s) => Some(s.clone()),
                _ => {
                    bad.push(format!("{path}[{i}] (not a string)"));
                    None
                }
            })
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => {
            bad.push(format!("{path} (not a list of strings)"));
            Vec::new()
        }
    }
}

fn entries<'a>(v: &'a Value, path: &str, bad: &mut Vec<String>) -> Vec<&'a Map<String, Value>> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                Value::Object(m) => Some(m),
                _ => {
                    bad.push(format!("{path}[{i}] (not an object)"));
                    None
                }
            })
            .collect(),
        _ => {
            bad.push(format!("{path} (not a list)"));
            Vec::new()
        }
    }
}

/// Is this alias a user (an email), not a group, tag, autogroup, host or address?
fn user_of(alias: &str) -> Option<&str> {
    let a = alias;
    (a.contains('@')
        && !a.starts_with("group:")
        && !a.starts_with("tag:")
        && !a.starts_with("autogroup:"))
    .then_some(a)
}

/// The alias of a destination `alias:ports` (the destination itself when it has no ports).
fn alias_part(dst: &str) -> String {
    tsk8s_policy::policy::split_destination_and_port(dst)
        .map_or_else(|_| dst.to_string(), |(a, _)| a)
}

fn note_user(a: &str, users: &mut BTreeSet<String>) {
    if let Some(u) = user_of(a) {
        users.insert(u.to_string());
    }
}

/// A list field: `key="one"` as a property when there is one value, else a child line.
struct Fields {
    props: String,
    children: Vec<String>,
}

impl Fields {
    fn new() -> Fields {
        Fields {
            props: String::new(),
            children: Vec::new(),
        }
    }

    fn list(&mut self, key: &str, values: &[String]) {
        match values {
            [] => {}
            [one] => {
                let _ = write!(self.props, " {key}={}", kdl_str(one));
            }
            many => {
                let vals: Vec<String> = many.iter().map(|s| kdl_str(s)).collect();
                self.children.push(format!("{key} {}", vals.join(" ")));
            }
        }
    }

    fn scalar(&mut self, key: &str, value: &str) {
        let _ = write!(self.props, " {key}={}", kdl_str(value));
    }

    fn child(&mut self, line: String) {
        self.children.push(line);
    }

    fn render(&self, out: &mut String, indent: &str, name: &str) {
        let _ = write!(out, "{indent}{name}{}", self.props);
        if self.children.is_empty() {
            out.push('\n');
            return;
        }
        out.push_str(" {\n");
        for c in &self.children {
            let _ = writeln!(out, "{indent}    {c}");
        }
        let _ = writeln!(out, "{indent}}}");
    }
}

fn check_keys(m: &Map<String, Value>, allowed: &[&str], path: &str, bad: &mut Vec<String>) {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            bad.push(format!("{path}.{k}"));
        }
    }
}

fn opt_str(m: &Map<String, Value>, key: &str, path: &str, bad: &mut Vec<String>) -> Option<String> {
    match m.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            bad.push(format!("{path}.{key} (not a string)"));
            None
        }
    }
}

/// Turn policy text into spec text. Pure: no I/O.
pub fn import(policy_text: &str, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let value = tsk8s_policy::hujson::parse(policy_text)
        .map_err(|e| ImportError::Invalid(format!("not a HuJSON policy: {e}")))?;
    tsk8s_policy::policy::Policy::from_value(&value)
        .map_err(|e| ImportError::Invalid(format!("not a valid policy: {e}")))?;
    let Value::Object(root) = &value else {
        return Err(ImportError::Invalid(
            "the policy is not a JSON object".into(),
        ));
    };
    let mut w = SpecWriter::default();
    if let Some(v) = root.get("groups") {
        w.groups(v);
    }
    if let Some(v) = root.get("tagOwners") {
        w.tag_owners(v);
    }
    if let Some(v) = root.get("hosts") {
        w.hosts(v);
    }
    w.acls(root.get("acls"), root.get("grants").is_some());
    if let Some(v) = root.get("grants") {
        w.grants(v);
    }
    if let Some(v) = root.get("ssh") {
        w.ssh(v);
    }
    if let Some(v) = root.get("tests") {
        w.tests(v);
    }
    let verbatim = verbatim_nodes(root);
    if !w.bad.is_empty() {
        return Err(ImportError::Unsupported(w.bad));
    }
    let spec = render_spec(opts, &w.users, &w.body, &verbatim);
    let warnings = self_check(&spec, &value)?;
    Ok(Imported { spec, warnings })
}

/// The spec being written from the policy's generated sections.
#[derive(Default)]
struct SpecWriter {
    /// What the spec cannot express, by JSON path.
    bad: Vec<String>,
    /// Every email referenced (a `user` node each).
    users: BTreeSet<String>,
    /// The spec nodes after the `tailnet` and `user` lines.
    body: String,
}

impl SpecWriter {
    /// `groups` → `group` nodes.
    fn groups(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (name, members) in m {
                    let bare = name.strip_prefix("group:").unwrap_or(name);
                    let ms = strings(members, &format!("groups.{name}"), &mut self.bad);
                    for u in &ms {
                        note_user(u, &mut self.users);
                    }
                    let _ = write!(self.body, "group {}", kdl_str(bare));
                    if ms.is_empty() {
                        self.body.push('\n');
                    } else {
                        let vals: Vec<String> = ms.iter().map(|s| kdl_str(s)).collect();
                        let _ = writeln!(self.body, " {{\n    member {}\n}}", vals.join(" "));
                    }
                }
                self.body.push('\n');
            }
            _ => self.bad.push("groups (not an object)".into()),
        }
    }

    /// `tagOwners` → `tag` nodes.
    fn tag_owners(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (name, owners) in m {
                    let bare = name.strip_prefix("tag:").unwrap_or(name);
                    let os = strings(owners, &format!("tagOwners.{name}"), &mut self.bad);
                    for o in &os {
                        note_user(o, &mut self.users);
                    }
                    let mut f = Fields::new();
                    f.list("owner", &os);
                    f.render(&mut self.body, "", &format!("tag {}", kdl_str(bare)));
                }
                self.body.push('\n');
            }
            _ => self.bad.push("tagOwners (not an object)".into()),
        }
    }

    /// `hosts` → `host` nodes.
    fn hosts(&mut self, v: &Value) {
        match v {
            Value::Object(m) => {
                for (name, addr) in m {
                    match addr {
                        Value::String(a) => {
                            let _ = writeln!(self.body, "host {} {}", kdl_str(name), kdl_str(a));
                        }
                        _ => self.bad.push(format!("hosts.{name} (not a string)")),
                    }
                }
                self.body.push('\n');
            }
            _ => self.bad.push("hosts (not an object)".into()),
        }
    }

    /// `acls` → an `acl` node of `accept` lines. Always written: an absent `acls` with no
    /// grants means allow-all in Tailscale, while a spec without rules denies everything.
    fn acls(&mut self, acls: Option<&Value>, has_grants: bool) {
        match acls {
            Some(v) => {
                let list = entries(v, "acls", &mut self.bad);
                if !list.is_empty() {
                    self.body.push_str("acl {\n");
                    for (i, m) in list.iter().enumerate() {
                        let path = format!("acls[{i}]");
                        check_keys(
                            m,
                            &["action", "src", "dst", "proto", "users", "ports"],
                            &path,
                            &mut self.bad,
                        );
                        let action = opt_str(m, "action", &path, &mut self.bad).unwrap_or_default();
                        if action != "accept" {
                            self.bad.push(format!(
                                "{path}.action ({action:?}, only \"accept\" exists)"
                            ));
                        }
                        let mut src = Vec::new();
                        let mut dst = Vec::new();
                        for k in ["src", "users"] {
                            if let Some(v) = m.get(k) {
                                src.extend(strings(v, &format!("{path}.{k}"), &mut self.bad));
                            }
                        }
                        for k in ["dst", "ports"] {
                            if let Some(v) = m.get(k) {
                                dst.extend(strings(v, &format!("{path}.{k}"), &mut self.bad));
                            }
                        }
                        for a in &src {
                            note_user(a, &mut self.users);
                        }
                        for a in &dst {
                            note_user(&alias_part(a), &mut self.users);
                        }
                        let mut f = Fields::new();
                        f.list("src", &src);
                        f.list("dst", &dst);
                        if let Some(p) = opt_str(m, "proto", &path, &mut self.bad) {
                            f.scalar("proto", &p);
                        }
                        f.render(&mut self.body, "    ", "accept");
                    }
                    self.body.push_str("}\n\n");
                }
            }
            None if !has_grants => {
                self.body.push_str(
                    "// The policy had no `acls` and no `grants`, which Tailscale reads as allow-all.\nacl {\n    accept src=\"*\" dst=\"*:*\"\n}\n\n",
                );
            }
            None => {}
        }
    }

    /// `grants` → `grant` nodes.
    fn grants(&mut self, v: &Value) {
        for (i, m) in entries(v, "grants", &mut self.bad).iter().enumerate() {
            let path = format!("grants[{i}]");
            check_keys(m, &["src", "dst", "ip", "via", "app"], &path, &mut self.bad);
            let mut f = Fields::new();
            for k in ["src", "dst", "ip", "via"] {
                if let Some(v) = m.get(k) {
                    let vals = strings(v, &format!("{path}.{k}"), &mut self.bad);
                    if k == "src" || k == "dst" {
                        for a in &vals {
                            note_user(a, &mut self.users);
                        }
                    }
                    // Always the child form: grants read better one field per line.
                    if !vals.is_empty() {
                        let q: Vec<String> = vals.iter().map(|s| kdl_str(s)).collect();
                        f.child(format!("{k} {}", q.join(" ")));
                    }
                }
            }
            match m.get("app") {
                None => {}
                Some(Value::Object(app)) => {
                    for (cap, vals) in app {
                        match vals {
                            Value::Array(a) => {
                                for (j, x) in a.iter().enumerate() {
                                    if x.is_object() {
                                        let json = serde_json::to_string(x)
                                            .expect("a JSON value always serializes (string keys, finite numbers)");
                                        f.child(format!("app {} {}", kdl_str(cap), kdl_str(&json)));
                                    } else {
                                        self.bad
                                            .push(format!("{path}.app.{cap}[{j}] (not an object)"));
                                    }
                                }
                            }
                            _ => self.bad.push(format!("{path}.app.{cap} (not a list)")),
                        }
                    }
                }
                Some(_) => self.bad.push(format!("{path}.app (not an object)")),
            }
            f.render(&mut self.body, "", "grant");
        }
        self.body.push('\n');
    }

    /// `ssh` → `ssh` nodes.
    fn ssh(&mut self, v: &Value) {
        for (i, m) in entries(v, "ssh", &mut self.bad).iter().enumerate() {
            let path = format!("ssh[{i}]");
            check_keys(
                m,
                &["action", "src", "dst", "users", "checkPeriod"],
                &path,
                &mut self.bad,
            );
            let mut f = Fields::new();
            if let Some(a) = opt_str(m, "action", &path, &mut self.bad) {
                f.scalar("action", &a);
            }
            for k in ["src", "dst", "users"] {
                if let Some(v) = m.get(k) {
                    let vals = strings(v, &format!("{path}.{k}"), &mut self.bad);
                    if k != "users" {
                        for a in &vals {
                            note_user(a, &mut self.users);
                        }
                    }
                    f.list(k, &vals);
                }
            }
            if let Some(p) = opt_str(m, "checkPeriod", &path, &mut self.bad) {
                f.scalar("check-period", &p);
            }
            f.render(&mut self.body, "", "ssh");
        }
        self.body.push('\n');
    }

    /// `tests` → `test` nodes.
    fn tests(&mut self, v: &Value) {
        for (i, m) in entries(v, "tests", &mut self.bad).iter().enumerate() {
            let path = format!("tests[{i}]");
            check_keys(m, &["src", "proto", "accept", "deny"], &path, &mut self.bad);
            let mut f = Fields::new();
            if let Some(s) = opt_str(m, "src", &path, &mut self.bad) {
                note_user(&s, &mut self.users);
                f.scalar("src", &s);
            }
            if let Some(p) = opt_str(m, "proto", &path, &mut self.bad) {
                f.scalar("proto", &p);
            }
            for k in ["accept", "deny"] {
                if let Some(v) = m.get(k) {
                    let vals = strings(v, &format!("{path}.{k}"), &mut self.bad);
                    for a in &vals {
                        note_user(&alias_part(a), &mut self.users);
                    }
                    f.list(k, &vals);
                }
            }
            f.render(&mut self.body, "", "test");
        }
        self.body.push('\n');
    }
}

/// Every section the spec does not generate, as `verbatim` nodes.
fn verbatim_nodes(root: &Map<String, Value>) -> String {
    let mut verbatim = String::new();
    for (k, v) in root {
        if GENERATED.contains(&k.as_str()) {
            continue;
        }
        let json = serde_json::to_string(v)
            .expect("a JSON value always serializes (string keys, finite numbers)");
        let _ = writeln!(verbatim, "verbatim {} {}", kdl_str(k), kdl_str(&json));
    }
    verbatim
}

/// The spec text: header, `tailnet` line, users, the generated nodes, then the verbatim ones.
fn render_spec(
    opts: &ImportOptions,
    users: &BTreeSet<String>,
    body: &str,
    verbatim: &str,
) -> String {
    let mut spec = String::new();
    let _ = writeln!(
        spec,
        "// Imported by `tsk8s import` from {}.",
        opts.source.replace(['\n', '\r'], " ")
    );
    let _ = writeln!(
        spec,
        "tailnet {} domain={}\n",
        kdl_str(&opts.name),
        kdl_str(&opts.domain)
    );
    if !users.is_empty() {
        for u in users {
            let _ = writeln!(spec, "user {}", kdl_str(u));
        }
        spec.push('\n');
    }
    spec.push_str(body);
    if !verbatim.is_empty() {
        spec.push_str(
            "// Policy sections the spec language does not model, carried through unchanged.\n",
        );
        spec.push_str(verbatim);
    }
    while spec.ends_with("\n\n") {
        spec.pop();
    }

    spec
}

/// Build the spec and compare its policy with the input, section by section: the names of
/// the sections that differ.
fn self_check(spec: &str, value: &Value) -> Result<Vec<String>, ImportError> {
    match crate::build::load(&crate::build::Input {
        spec_file: "tailnet.kdl",
        spec,
        lock_file: "tailnet.lock",
        lock: None,
        sources: Default::default(),
    }) {
        Ok(l) => {
            let rebuilt = tsk8s_policy::hujson::parse(&l.policy_text)
                .expect("the policy file tsk8s writes is JSON");
            Ok(compare(value, &rebuilt))
        }
        Err(f) => Err(ImportError::Invalid(format!(
            "the imported spec does not build:\n{}",
            f.text
        ))),
    }
}

/// Names of the top-level sections in which two policies differ.
pub fn compare(input: &Value, rebuilt: &Value) -> Vec<String> {
    let empty = Map::new();
    let a = input.as_object().unwrap_or(&empty);
    let b = rebuilt.as_object().unwrap_or(&empty);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k.as_str()), b.get(k.as_str()));
        if x == y {
            continue;
        }
        // An allow-all rule written for a policy without acls.
        if k == "acls" && x.is_none() {
            continue;
        }
        out.push(format!("section `{k}` differs after a rebuild"));
    }
    out
}
