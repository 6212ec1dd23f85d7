//! The `tsk8s policy check` / `tsk8s policy filter` commands as pure functions (the binary
//! prints the outcome and exits with its code).

use std::collections::BTreeMap;

use crate::acltest::{TESTS_FAILED, malformed_tests, run_tests};
use crate::compile::compile_all;
use crate::policy::Policy;
use crate::topology::Topology;

/// What a command prints and its exit code (0 ok, 1 tests failed, 2 bad input).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CliOutcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn bad_input(msg: impl std::fmt::Display) -> CliOutcome {
    CliOutcome {
        code: 2,
        stdout: String::new(),
        // Messages quote the input: bounded (a string value may be megabytes) and neutralized.
        stderr: format!(
            "{}\n",
            crate::text::neutralize(&crate::text::bounded(&msg.to_string(), 1000))
        ),
    }
}

fn tests_failed(failures: &[String]) -> CliOutcome {
    let mut stderr = format!("{TESTS_FAILED}\n");
    for f in failures {
        stderr.push_str("  ");
        stderr.push_str(&crate::text::escape(f));
        stderr.push('\n');
    }
    let stderr = crate::text::neutralize(&stderr).into_owned();
    CliOutcome {
        code: 1,
        stdout: String::new(),
        stderr,
    }
}

/// `tsk8s policy check POLICY [--nodes TOPOLOGY.json]`: 0 valid (and, with a topology, every
/// test passes); 2 invalid (Tailscale's message on stderr); 1 tests failed (each failure listed
/// after the verdict `test(s) failed`).
pub fn policy_check(policy_text: &str, nodes_text: Option<&str>) -> CliOutcome {
    let policy = match Policy::parse(policy_text) {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let failures = match nodes_text {
        Some(t) => match Topology::parse(t) {
            Ok(topo) => {
                if let Err(e) = policy.validate_against(&topo) {
                    return bad_input(e);
                }
                run_tests(&policy, &topo).failures
            }
            Err(e) => return bad_input(e),
        },
        None => malformed_tests(&policy),
    };
    if !failures.is_empty() {
        return tests_failed(&failures);
    }
    let stdout = match nodes_text {
        Some(_) => format!("policy is valid; {} test(s) passed\n", policy.tests.len()),
        None => "policy is valid\n".to_string(),
    };
    CliOutcome {
        code: 0,
        stdout,
        stderr: String::new(),
    }
}

/// `tsk8s policy filter POLICY --nodes TOPOLOGY.json`: `{"<node>": [FilterRule, …]}` (pretty
/// JSON, nodes sorted) on stdout; 2 on bad input.
pub fn policy_filter(policy_text: &str, nodes_text: &str) -> CliOutcome {
    let policy = match Policy::parse(policy_text) {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let topo = match Topology::parse(nodes_text) {
        Ok(t) => t,
        Err(e) => return bad_input(e),
    };
    if let Err(e) = policy.validate_against(&topo) {
        return bad_input(e);
    }
    let filters: BTreeMap<_, _> = compile_all(&policy, &topo);
    match serde_json::to_string_pretty(&filters) {
        Ok(s) => CliOutcome {
            code: 0,
            stdout: crate::text::neutralize_json(&s).into_owned() + "\n",
            stderr: String::new(),
        },
        Err(e) => bad_input(e),
    }
}
