//! The `verbatim "<section>" #"<JSON>"#` node: policy sections the spec language does not
//! model, carried into the policy file unchanged. `resolve` checks them
//! ([`resolve_verbatim`]); `lower::policy` decodes them into the typed policy and writes them
//! after the generated sections, as written (`autoApprovers` merged with the route approvers
//! subnet routers generate, when there are some). `tsk8s import` writes them for every section
//! it does not translate.

use serde_json::Value;

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
