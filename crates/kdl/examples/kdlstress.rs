//! Random token soup through `tsk8s_kdl::parse`; prints the slowest input:
//! `cargo run --release -p tsk8s-kdl --example kdlstress -- SEED COUNT TOKENS`
use std::time::{Duration, Instant};
fn main() {
    let toks = [
        "/-", "/-", "/-", "{", "{", "}", "\"", "a", "b=", "=", "\n", " ", "(t)", ";", "/*", "*/",
        "1", "#true", "\\", "//", "#\"", "/- ", "a {", "}\n", "/-{", "\"x\"", ")", "(", "]",
    ];
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut rng = tsk8s_test_support::Rng::new(seed);
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100000);
    let len: usize = std::env::args()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut worst = (Duration::ZERO, String::new(), 0usize);
    for _ in 0..n {
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(toks[rng.below(toks.len())]);
        }
        let t = Instant::now();
        let r = tsk8s_kdl::parse(&s);
        let el = t.elapsed();
        let nd = r.err().map(|e| e.diagnostics.len()).unwrap_or(0);
        if el > worst.0 {
            worst = (el, s.clone(), nd);
        }
    }
    println!("worst {:?} diags {} {:?}", worst.0, worst.2, worst.1);
}
