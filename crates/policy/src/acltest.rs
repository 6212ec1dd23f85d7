//! Offline evaluation of a policy's `tests` against a topology.
//!
//! Every `accept` destination must be reachable and every `deny` destination unreachable from
//! every address of `src` (per address family), on the test's protocol (TCP or UDP when `proto`
//! is omitted). A `src` or destination that resolves to no
//! address fails: a test never passes vacuously. Malformed entries fail too (Tailscale answers
//! them with `test(s) failed`).
//!
//! Rules are indexed once ([`Matcher`] over the tailnet-wide rules), so each check is a lookup.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::compile::{Compiled, Resolver};
use crate::ipset::IpSet;
use crate::matcher::{Matcher, PROTO_TCP, PROTO_UDP};
use crate::policy::{
    AUTOGROUP_SELF, AclTest, Alias, OWNER_AUTOGROUPS, Policy, check_test_destination, parse_alias,
};
use crate::topology::Topology;

/// Tailscale's verdict when any test fails.
pub const TESTS_FAILED: &str = "test(s) failed";

/// Outcome of a `tests` run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestReport {
    /// Number of `tests` entries.
    pub total: usize,
    /// Number of entries with at least one failure.
    pub failed_entries: usize,
    /// One line per failure, e.g. `alice@example.com -> tag:db:5432: expected ALLOWED, got DENIED`.
    pub failures: Vec<String>,
    /// For each line of `failures`, the index of its `tests` entry (to locate it).
    pub failure_entries: Vec<usize>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// `Some("test(s) failed")` when anything failed.
    pub fn verdict(&self) -> Option<&'static str> {
        (!self.passed()).then_some(TESTS_FAILED)
    }
}

fn proto_suffix(t: &AclTest) -> String {
    t.proto
        .as_ref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default()
}

/// Is `alias` something the policy defines (or needs no definition)?
fn check_defined(policy: &Policy, alias: &Alias) -> Result<(), String> {
    match alias {
        Alias::Group(g) if !policy.groups.contains_key(g) => {
            Err(format!("group not defined in policy: {g:?}"))
        }
        Alias::Tag(t) if !policy.tag_owners.contains_key(t) => Err(format!("tag not found: {t:?}")),
        Alias::Host(h) if !policy.hosts.contains_key(h) => {
            Err(format!("host not defined in policy: {h:?}"))
        }
        Alias::IpSet(s) if !policy.ipsets.contains_key(s) => {
            Err(format!("ipset not defined in policy: {s:?}"))
        }
        Alias::AutoGroup(ag) => match ag.as_str() {
            a if OWNER_AUTOGROUPS.contains(&a) => Ok(()),
            a => Err(format!("autogroup {a:?} not valid in tests")),
        },
        _ => Ok(()),
    }
}

/// Test evaluator for the entries of one policy's `tests`, on one topology. Its matcher
/// holds only the rules' destinations that the entries' destinations overlap (on dense
/// policies the whole tailnet's rules would be most of a build's memory), so it answers
/// for those entries only.
struct TestRunner<'a> {
    policy: &'a Policy,
    resolver: Resolver<'a>,
    matcher: Matcher,
    cache: HashMap<String, Result<IpSet, String>>,
}

impl<'a> TestRunner<'a> {
    fn new(policy: &'a Policy, topo: &'a Topology) -> TestRunner<'a> {
        let mut resolver = Resolver::new(policy, topo);
        // Every address an entry tests (a destination that does not resolve is reported by
        // `eval`, which needs no rule for it).
        let mut tested = IpSet::new();
        for t in &policy.tests {
            for dst in t.accept.iter().chain(&t.deny) {
                if let Ok(awp) = check_test_destination(policy, dst) {
                    tested.add_set(&resolver.resolve(&awp.alias));
                }
            }
        }
        let compiled = Compiled::new(policy, topo);
        let matcher = Matcher::new(&compiled.global_rules_within(Some(&tested)));
        TestRunner {
            policy,
            resolver,
            matcher,
            cache: HashMap::new(),
        }
    }

    fn resolve_src(&mut self, src: &str) -> Result<IpSet, String> {
        if let Some(r) = self.cache.get(src) {
            return r.clone();
        }
        let r = match parse_alias(src) {
            Err(e) => Err(format!("failed to resolve source {src:?}: {}", e.message)),
            Ok(a) => match check_defined(self.policy, &a) {
                Err(e) => Err(format!("failed to resolve source {src:?}: {e}")),
                Ok(()) => {
                    let s = self.resolver.resolve(&a);
                    if s.is_empty() {
                        Err(format!("source {src:?} resolved to no IP addresses"))
                    } else {
                        Ok(s)
                    }
                }
            },
        };
        self.cache.insert(src.to_string(), r.clone());
        r
    }

    /// Is `dst` reached from every address of `src`? `Ok(None)` when no address pair of the
    /// same family exists.
    fn eval(&mut self, src: &IpSet, dst: &str, protos: &[u8]) -> Result<(bool, bool), String> {
        let awp = check_test_destination(self.policy, dst)?;
        if awp.alias == Alias::AutoGroup(AUTOGROUP_SELF.into()) {
            return Err("autogroup:self not valid as a test destination".into());
        }
        check_defined(self.policy, &awp.alias)?;
        let port = awp.ports.first().map(|p| p.first).unwrap_or(0);
        let dst_set = self.resolver.resolve(&awp.alias);
        let Some(addrs) = dst_set.addresses(4096) else {
            return Err(format!("destination {dst:?} is not a single host"));
        };
        if addrs.is_empty() {
            return Err(format!("destination resolved to no IP addresses: {dst:?}"));
        }
        // Without `proto`: TCP or UDP (port-bearing protocols).
        let protos: &[u8] = if protos.is_empty() {
            &[PROTO_TCP, PROTO_UDP]
        } else {
            protos
        };
        let mut evaluated = false;
        let mut all_allowed = true;
        let mut any_allowed = false;
        for d in addrs {
            let fam = src.family(matches!(d, IpAddr::V6(_)));
            if fam.is_empty() {
                continue;
            }
            evaluated = true;
            let mut admitted = IpSet::new();
            for &p in protos {
                admitted.add_set(&self.matcher.sources_for(d, p, port));
            }
            if !admitted.is_superset_of(&fam) {
                all_allowed = false;
            }
            if admitted.overlaps(&fam) {
                any_allowed = true;
            }
        }
        if !evaluated {
            return Err(format!(
                "no address of {dst:?} has the address family of the source"
            ));
        }
        Ok((all_allowed, any_allowed))
    }

    /// Run one entry; failure lines are appended to `out`. Returns whether it passed.
    fn run_one(&mut self, t: &AclTest, out: &mut Vec<String>) -> bool {
        let sfx = proto_suffix(t);
        if let Some(p) = &t.problem {
            out.push(format!("{}{sfx}: {p}", t.src));
            return false;
        }
        let src = match self.resolve_src(&t.src) {
            Ok(s) => s,
            Err(e) => {
                out.push(format!("{}{sfx}: {e}", t.src));
                return false;
            }
        };
        let mut ok = true;
        for (dsts, want) in [(&t.accept, true), (&t.deny, false)] {
            for dst in dsts {
                match self.eval(&src, dst, &t.protos) {
                    Err(e) => {
                        ok = false;
                        out.push(format!("{}{sfx}: error testing {dst:?}: {e}", t.src));
                    }
                    Ok((all, any)) => {
                        if want && !all {
                            ok = false;
                            out.push(format!(
                                "{} -> {dst}{sfx}: expected ALLOWED, got DENIED",
                                t.src
                            ));
                        } else if !want && any {
                            ok = false;
                            out.push(format!(
                                "{} -> {dst}{sfx}: expected DENIED, got ALLOWED",
                                t.src
                            ));
                        }
                    }
                }
            }
        }
        ok
    }
}

/// Evaluate every entry of the policy's `tests`.
pub fn run_tests(policy: &Policy, topo: &Topology) -> TestReport {
    let mut report = TestReport {
        total: policy.tests.len(),
        ..TestReport::default()
    };
    if policy.tests.is_empty() {
        return report;
    }
    let mut runner = TestRunner::new(policy, topo);
    for (i, t) in policy.tests.iter().enumerate() {
        if !runner.run_one(t, &mut report.failures) {
            report.failed_entries += 1;
        }
        report.failure_entries.resize(report.failures.len(), i);
    }
    report
}

/// Entries that cannot be evaluated whatever the topology (malformed), as failure lines.
pub fn malformed_tests(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for t in &policy.tests {
        let sfx = proto_suffix(t);
        if let Some(p) = &t.problem {
            out.push(format!("{}{sfx}: {p}", t.src));
            continue;
        }
        if let Err(e) = parse_alias(&t.src)
            .map_err(|e| e.message)
            .and_then(|a| check_defined(policy, &a))
        {
            out.push(format!(
                "{}{sfx}: failed to resolve source {:?}: {e}",
                t.src, t.src
            ));
        }
        for dst in t.accept.iter().chain(&t.deny) {
            let r = check_test_destination(policy, dst).and_then(|awp| {
                if awp.alias == Alias::AutoGroup(AUTOGROUP_SELF.into()) {
                    return Err("autogroup:self not valid as a test destination".to_string());
                }
                check_defined(policy, &awp.alias)
            });
            if let Err(e) = r {
                out.push(format!("{}{sfx}: error testing {dst:?}: {e}", t.src));
            }
        }
    }
    out
}
