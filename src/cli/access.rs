//! `tsk8s who-can-reach` and `tsk8s can`: questions to the access model (see `crate::access`).
//! Exit 0 allowed / some source can reach, 1 denied / none can, 2 bad input.

use std::path::Path;

use clap::ValueEnum;
use serde_json::json;

use crate::access::{Answer, Path as NetPath, View};
use crate::lower::net;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AccessFormat {
    Text,
    Json,
}

fn proto_number(p: Proto, v6: bool) -> u8 {
    match p {
        Proto::Tcp => tsk8s_policy::matcher::PROTO_TCP,
        Proto::Udp => tsk8s_policy::matcher::PROTO_UDP,
        Proto::Icmp if v6 => tsk8s_policy::matcher::PROTO_ICMPV6,
        Proto::Icmp => tsk8s_policy::matcher::PROTO_ICMP,
    }
}

fn answer_json(a: &Answer) -> serde_json::Value {
    json!({
        "source": a.source,
        "kind": a.kind,
        "address": a.address.to_string(),
        "allowed_by_policy": a.allowed,
        "rule": a.rule,
        "carried": a.path.as_ref().map(|p| !matches!(p, NetPath::NotCarried(_))),
        "path": a.path.as_ref().map(|p| p.to_string()),
        "reaches": a.reaches(),
    })
}

fn answer_text(a: &Answer) -> String {
    let verdict = if a.reaches() {
        "allow"
    } else if a.allowed {
        "allowed by policy, not carried"
    } else {
        "deny"
    };
    let mut s = format!("{}: {verdict}", a.kind);
    if let Some(r) = &a.rule {
        s.push_str(&format!("\n    rule: {r}"));
    }
    match &a.path {
        Some(NetPath::Carried { .. }) => s.push_str(&format!(
            "\n    path: {}",
            a.path.as_ref().map(|p| p.to_string()).unwrap_or_default()
        )),
        Some(p) => s.push_str(&format!("\n    path: none: {p}")),
        None => {}
    }
    s
}

/// Run `f` on the spec's access view; spec errors are reported as `check` reports them.
fn with_view(spec: &Path, f: impl FnOnce(&View<'_>, &tsk8s_policy::policy::Policy) -> u8) -> u8 {
    let mut l = match super::load(spec) {
        Ok(l) => l,
        Err(e) => return super::fail(e),
    };
    let loaded = match l.loaded() {
        Ok(x) => x,
        Err(fl) => return super::report(&fl),
    };
    let netw = net::build_net(&loaded.tailnet, &loaded.lock);
    let reach = net::reach(&loaded.policy, &netw);
    let view = View::new(&loaded.tailnet, &loaded.lock, &loaded.policy, &netw, &reach);
    f(&view, &loaded.policy)
}

pub fn who_can_reach(spec: &Path, target: &str, proto: Proto, format: AccessFormat) -> u8 {
    with_view(spec, |view, policy| {
        let t = match view.target(policy, target) {
            Ok(t) => t,
            Err(e) => return super::fail(e),
        };
        // One address answers for the target (the IPv4 one when it has both: the policy
        // treats both families alike).
        let mut answers = Vec::new();
        if let Some(&d) = t.addrs.first() {
            let p = proto_number(proto, d.is_ipv6());
            answers.extend(view.who_can_reach(d, p, t.port));
        }
        let code = if answers.iter().any(Answer::reaches) {
            0
        } else {
            1
        };
        match format {
            AccessFormat::Json => {
                let v = json!({
                    "target": t.text,
                    "what": t.what,
                    "addresses": t.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "port": t.port,
                    "sources": answers.iter().map(answer_json).collect::<Vec<_>>(),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("string-keyed JSON always serializes")
                );
            }
            AccessFormat::Text => {
                let port = t.port.map(|p| format!(" port {p}")).unwrap_or_default();
                println!("{}{port}:", t.what);
                if answers.is_empty() {
                    println!("  no source may reach it");
                }
                for a in &answers {
                    println!("  {}", answer_text(a).replace('\n', "\n  "));
                }
            }
        }
        code
    })
}

pub fn can(spec: &Path, src: &str, dst: &str, proto: Proto, format: AccessFormat) -> u8 {
    with_view(spec, |view, policy| {
        let t = match view.target(policy, dst) {
            Ok(t) => t,
            Err(e) => return super::fail(e),
        };
        let Some(port) = t.port.or(matches!(proto, Proto::Icmp).then_some(0)) else {
            return super::fail(format!("{dst:?}: give a port (DST:PORT)"));
        };
        let (what, nodes) = match view.source(src) {
            Ok(x) => x,
            Err(e) => return super::fail(e),
        };
        let mut answers = Vec::new();
        let mut policy_only = None;
        if nodes.is_empty() {
            // A user without a device: the policy alone answers.
            let d = t.addrs[0];
            let p = proto_number(proto, d.is_ipv6());
            let user = what.trim_start_matches("user ");
            policy_only = Some(
                view.access
                    .rule_for(tsk8s_policy::access::Who::User(user), d, p, port)
                    .map(|r| r.to_string()),
            );
        }
        for &i in &nodes {
            for &d in &t.addrs {
                let p = proto_number(proto, d.is_ipv6());
                if let Some(a) = view.answer(i, d, p, port) {
                    answers.push(a);
                    break;
                }
            }
        }
        let allowed = match &policy_only {
            Some(rule) => rule.is_some(),
            None => answers.iter().any(Answer::reaches),
        };
        match format {
            AccessFormat::Json => {
                let v = json!({
                    "source": src,
                    "what": what,
                    "target": t.text,
                    "target_what": t.what,
                    "allowed": allowed,
                    "policy_only": policy_only.is_some(),
                    "rule": policy_only.clone().flatten(),
                    "answers": answers.iter().map(answer_json).collect::<Vec<_>>(),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("string-keyed JSON always serializes")
                );
            }
            AccessFormat::Text => {
                println!(
                    "{} {what} -> {} port {port}",
                    if allowed { "allow:" } else { "deny:" },
                    t.what
                );
                if let Some(rule) = &policy_only {
                    println!("  judged by policy only: {what} has no device");
                    match rule {
                        Some(r) => println!("  rule: {r}"),
                        None => println!("  no rule allows it"),
                    }
                }
                for a in &answers {
                    println!("  {}", answer_text(a).replace('\n', "\n  "));
                }
            }
        }
        if allowed { 0 } else { 1 }
    })
}
