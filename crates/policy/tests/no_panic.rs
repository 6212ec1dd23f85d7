//! Mutated inputs never panic (a cheap stand-in until real fuzzers run).

use std::path::Path;

use tsk8s_policy::cli::{policy_check, policy_filter};
use tsk8s_policy::hujson;
use tsk8s_policy::policy::Policy;

use tsk8s_test_support::Rng;

const PIECES: [&str; 24] = [
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "/*",
    "//",
    "\n",
    "*",
    "tag:",
    "group:",
    "autogroup:self",
    "autogroup:",
    "@",
    "-",
    "0",
    "65536",
    "[::1]:",
    "/0",
    "\\u",
    "\u{1F600}",
    "null",
];

#[test]
fn mutated_policies_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/policy");
    let topo = std::fs::read_to_string(root.join("topology.json")).unwrap();
    let mut seeds = Vec::new();
    for dir in ["valid", "invalid", "tests-fail"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            seeds.push(std::fs::read_to_string(e.path()).unwrap());
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let seed = &seeds[round % seeds.len()];
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 if !chars.is_empty() => {
                    let end = (pos + rng.below(8)).min(chars.len());
                    chars.drain(pos.min(chars.len())..end);
                }
                1 => {
                    let piece = PIECES[rng.below(PIECES.len())];
                    for (i, c) in piece.chars().enumerate() {
                        chars.insert((pos + i).min(chars.len()), c);
                    }
                }
                _ => {
                    if pos < chars.len() {
                        chars[pos] = char::from(32 + rng.below(95) as u8);
                    }
                }
            }
        }
        let text: String = chars.into_iter().collect();
        let _ = hujson::parse(&text);
        let _ = Policy::parse(&text);
        if round % 10 == 0 {
            let _ = policy_check(&text, Some(&topo));
            let _ = policy_filter(&text, &topo);
        }
    }
}

#[test]
fn pathological_inputs() {
    for text in [
        "".to_string(),
        "[".repeat(1_000_000),
        "{\"a\":".repeat(100_000),
        "\"".to_string(),
        "/*".to_string(),
        "\u{feff}{}".to_string(),
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"[\"]}]}".to_string(),
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"[::1\"]}]}".to_string(),
        "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\":\"]}]}".to_string(),
        "{\"grants\": [{\"src\": [\"*\"], \"dst\": [\"*\"], \"ip\": [\":::\"]}]}".to_string(),
        "{\"ipsets\": {\"ipset:a\": [\"ipset:b\"], \"ipset:b\": [\"ipset:a\"]}}".to_string(),
        "{\"ssh\": [{\"action\": \"check\", \"src\": [\"*\"], \"dst\": [\"*\"], \"users\": [\"root\"], \"checkPeriod\": \"9999999999999999999999h\"}]}".to_string(),
    ] {
        let _ = Policy::parse(&text);
        let _ = policy_check(&text, Some("{\"nodes\": {}}"));
        let _ = policy_filter(&text, "{}");
    }
    assert_eq!(policy_filter("{}", "not json").code, 2);
}
