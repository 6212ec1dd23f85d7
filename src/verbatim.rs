//! The `verbatim "<section>" #"<JSON>"#` node: policy sections the spec language does not
//! model, carried into the policy file unchanged. `resolve` checks them
//! ([`resolve_verbatim`]); `build` adds them after the generated sections ([`apply_verbatim`],
//! `autoApprovers` merged with the route approvers subnet routers generate). `tsk8s import`
//! writes them for every section it does not translate.

use serde_json::{Map, Value};

use crate::diag::{Diagnostic, Diagnostics};
use crate::syntax::SpStr;

/// Sections the spec generates; `verbatim` may not replace them.
pub const GENERATED: &[&str] = &[
    "groups",
    "tagOwners",
    "hosts",
    "acls",
    "grants",
    "ssh",
    "tests",
];
/// A generated section that `verbatim` may extend (merged entry by entry).
pub const MERGED: &str = "autoApprovers";

/// Check `verbatim` nodes: a known-free section name, valid JSON, no duplicates.
pub fn resolve_verbatim(nodes: &[(SpStr, SpStr)], d: &mut Diagnostics) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    for (section, json) in nodes {
        if GENERATED.contains(&section.v.as_str()) {
            d.push(
                Diagnostic::new(
                    section.span,
                    format!(
                        "`{}` is generated from the spec; it cannot be verbatim",
                        section.v
                    ),
                )
                .label("generated section")
                .help("write it with spec nodes (group, tag, host, acl, grant, test, ssh)"),
            );
            continue;
        }
        if section.v.is_empty() {
            d.push(Diagnostic::new(section.span, "empty policy section name").label("no name"));
            continue;
        }
        if out.iter().any(|(s, _)| *s == section.v) {
            d.push(
                Diagnostic::new(
                    section.span,
                    format!("verbatim section `{}` given twice", section.v),
                )
                .label("duplicate section"),
            );
            continue;
        }
        match tsk8s_policy::hujson::parse(&json.v) {
            Ok(v) => {
                if section.v == MERGED && !v.is_object() {
                    d.push(
                        Diagnostic::new(json.span, "autoApprovers must be a JSON object")
                            .label("not an object"),
                    );
                    continue;
                }
                out.push((section.v.clone(), v));
            }
            Err(e) => d.push(
                Diagnostic::new(json.span, format!("invalid JSON in verbatim section: {e}"))
                    .label("not JSON"),
            ),
        }
    }
    out
}

fn push_unique(list: &mut Vec<Value>, v: &Value) {
    if !list.contains(v) {
        list.push(v.clone());
    }
}

/// Merge two autoApprovers objects: per route / for exitNode, the union of approvers
/// (generated first); other keys from `extra` when `base` lacks them.
fn merge_approvers(base: &mut Map<String, Value>, extra: &Map<String, Value>) {
    for (k, v) in extra {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(e)) if k == "routes" => {
                for (route, approvers) in e {
                    match (b.get_mut(route), approvers) {
                        (Some(Value::Array(ba)), Value::Array(ea)) => {
                            for a in ea {
                                push_unique(ba, a);
                            }
                        }
                        (None, _) => {
                            b.insert(route.clone(), approvers.clone());
                        }
                        _ => {}
                    }
                }
            }
            (Some(Value::Array(b)), Value::Array(e)) => {
                for a in e {
                    push_unique(b, a);
                }
            }
            (None, _) => {
                base.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

/// Add the verbatim sections to a generated policy (after the generated ones, in spec order).
pub fn apply_verbatim(policy: &mut Value, verbatim: &[(String, Value)]) {
    let Value::Object(root) = policy else {
        return;
    };
    for (section, v) in verbatim {
        match (root.get_mut(section.as_str()), v) {
            (Some(Value::Object(base)), Value::Object(extra)) if section == MERGED => {
                merge_approvers(base, extra);
            }
            (Some(_), _) => {}
            (None, _) => {
                root.insert(section.clone(), v.clone());
            }
        }
    }
}
