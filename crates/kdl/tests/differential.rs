//! Differential tests: `parse_fast` must be `None` or identical (spans included) to
//! `kdl::KdlDocument::parse_v2`, on the repository's spec and lock files, on hand-written
//! snippets, and on many thousands of deterministic mutants of both.
//!
//! `TSK8S_KDL_MUTANTS` sets the number of random mutants (default 40000 in release builds,
//! 10000 unoptimized, where `parse_v2` is ~10× slower).

use std::path::{Path, PathBuf};

use kdl::KdlDocument;
use tsk8s_kdl::parse_fast;

const DEFAULT_MUTANTS: usize = if cfg!(debug_assertions) {
    10_000
} else {
    40_000
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `parse_v2` recurses deeply on nested input: run checks on a big stack.
fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1 << 30)
        .spawn(f)
        .expect("spawn test thread")
        .join()
        .expect("test thread panicked")
}

// ---------------------------------------------------------------------------------------------
// Comparison of everything a consumer reads.

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    inputs: usize,
    v2_ok: usize,
    fast_some: usize,
}

/// The differential check on one input: `Err` with a description on a mismatch.
fn check(text: &str, tally: &mut Tally) -> Result<(), String> {
    tally.inputs += 1;
    let fast = parse_fast(text);
    let slow = KdlDocument::parse_v2(text);
    if slow.is_ok() {
        tally.v2_ok += 1;
    }
    if fast.is_some() {
        tally.fast_some += 1;
    }
    match (fast, slow) {
        (None, _) => Ok(()),
        (Some(_), Err(e)) => Err(format!("fast path accepted input parse_v2 rejects: {e:?}")),
        (Some(fast), Ok(slow)) => tsk8s_kdl::compare::documents("", &fast, &slow),
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs.

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn is_kdl(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("kdl" | "lock"))
}

/// Every file the differential test reads, and whether it must take the fast path.
fn corpus_files() -> Vec<(PathBuf, bool)> {
    let root = repo();
    let mut files = Vec::new();
    let mut all = Vec::new();
    walk(&root.join("testdata"), &mut all);
    for p in all {
        let rel = p
            .strip_prefix(&root)
            .unwrap_or(&p)
            .to_string_lossy()
            .replace('\\', "/");
        let bad = rel.starts_with("testdata/bad/spec/") || rel.starts_with("testdata/bad/lock/");
        if is_kdl(&p) || bad {
            files.push((p, rel.starts_with("testdata/specs/")));
        }
    }
    let mut ex = Vec::new();
    walk(&root.join("examples"), &mut ex);
    files.extend(ex.into_iter().filter(|p| is_kdl(p)).map(|p| (p, true)));
    for seeds in ["fuzz/seeds/spec", "fuzz/seeds/lock"] {
        let mut s = Vec::new();
        walk(&root.join(seeds), &mut s);
        files.extend(s.into_iter().map(|p| (p, false)));
    }
    files
}

/// The valid spec and lock files (the mutation bases).
fn valid_texts() -> Vec<String> {
    corpus_files()
        .into_iter()
        .filter(|(_, must)| *must)
        .filter_map(|(p, _)| std::fs::read_to_string(p).ok())
        .collect()
}

/// Hand-written snippets covering the syntax the fast path handles (and some it does not).
const SNIPPETS: &[&str] = &[
    "",
    "\n\n",
    "a",
    "a\n",
    "a;b;c",
    "a; b ;c;",
    "  a  ;  b  \n",
    "a {}",
    "a { }",
    "a{}",
    "a {\n}\n",
    "a {\n    b\n}\n",
    "a {b; c {d}}; e",
    "a { b } ; c",
    "a {}\nb {} // x\n",
    "a \"x\\n\\t\\\\\\\"\\b\\f\\s\\r\\u{1F600}\\u{0}\\u{10FFFF}\" b",
    "a \"ws escape \\   x\" \"\\\n   y\" \"\\\t\\\r\\\n\"",
    "a #\"raw \"q\" \\n\"# ##\"x\"#\"## #\"\"# ##\"\"##",
    "a b=#true c=#false d=#null #true #false #null",
    "a 1 -2 +3 1_000 1_ -0 170141183460469231731687303715884105727 -170141183460469231731687303715884105727",
    "a 170141183460469231731687303715884105728",
    "a 1.5 2e3 0x1f 0o7 0b1 #inf #-inf #nan",
    "a /-b c /-d=1 e=2 /-{x} {y} /-{z}",
    "a /-b /-c",
    "a /- b\nc",
    "a /-\n  b c",
    "a /-{x} /-{y} {z} /-{w} /-{v}",
    "a /-b /-{x} {y}",
    "a /-b {y}",
    "a {y} /-b",
    "/-a b\nc",
    "/- a {b}\nc",
    "/-a;b",
    "a\n/-b\n",
    "x { /-a }",
    "x { a; /-b }",
    "/-a\n/-b",
    "a /* c /* nested */ */ b // comment\nc",
    "a /**/ b /*/ x */ c",
    "/* top */ a /* mid */ ; /* x */ b",
    "// only a comment",
    "// c\n",
    "(t)a (u)1 k=(v)\"s\" (w)#true",
    "( t )a ( \"u\" )b (#\"r\"#)c",
    "(t) a (u) 1",
    "\"quoted name\" \"k\"=1 #\"raw key\"#=2",
    "a k = 1 j= 2 l =3",
    "a k=v=w",
    "a 1=2",
    "a\u{a0}b\u{3000}c\u{2000}d",
    "a\u{2028}b\u{2029}c\u{85}d\u{0B}e\u{0C}f\r\ng\rh",
    "\u{feff}a 1",
    "a \u{feff}",
    "a \"\u{200e}\"",
    "-a +b . .a -.a +.b - + -_1 a,b <x> ¡ünïcödé! +.",
    "a true",
    "a -inf +inf inf nan",
    "a .5 -.5 +.5",
    "a \"\"\"\nx\n\"\"\"",
    "a #\"\"\"#",
    "a b\\\n  c",
    "a \"unterminated",
    "a {",
    "a }",
    "}",
    "{}",
    "a \"x\"y",
    "a #truex",
    "a #true{}",
    "a 1{}",
    "a b{}",
    "a \u{7f}b \"\u{7f}\"",
    "tailnet \"bench\" domain=\"bench.example\"\ngroup \"team0\" { member \"u0@bench.example\"; }\ntag \"app0\" owner=\"group:team0\"\ndevice \"laptop0\" user=\"u0@bench.example\" public-key=\"abc+/==\"\ncluster \"c0\" endpoint=\"wg.c0.bench.example\" image=\"ghcr.io/bench/tsk8s-runtime:1.0.0\" {\n    proxy \"c0-p0\" service=\"ns0/svc0\" port=8000 tag=\"app0\"\n    subnet-router \"c0-r\" route=\"10.0.0.0/24\" tag=\"app0\"\n}\nacl {\n    accept src=\"group:team0\" dst=\"tag:app0:*\"\n}\n",
];

/// Snippets the fast path must accept (a sample of what it claims to handle).
const MUST_ACCEPT: &[&str] = &[
    "a;b;c",
    "a {b; c {d}}; e",
    "a \"x\\n\\t\\\\\\\"\\b\\f\\s\\r\\u{1F600}\\u{0}\\u{10FFFF}\" b",
    "a \"ws escape \\   x\" \"\\\n   y\" \"\\\t\\\r\\\n\"",
    "a #\"raw \"q\" \\n\"# ##\"x\"#\"## #\"\"# ##\"\"##",
    "a b=#true c=#false d=#null #true #false #null",
    "a 1 -2 +3 1_000 1_ -0 170141183460469231731687303715884105727 -170141183460469231731687303715884105727",
    "a /-b c /-d=1 e=2 /-{x} {y} /-{z}",
    "/- a {b}\nc",
    "a /* c /* nested */ */ b // comment\nc",
    "(t)a (u)1 k=(v)\"s\" (w)#true",
    "\"quoted name\" \"k\"=1 #\"raw key\"#=2",
    "a k = 1 j= 2 l =3",
    "\u{feff}a 1",
];

// ---------------------------------------------------------------------------------------------
// Deterministic mutation.

use tsk8s_test_support::Rng;

const TOKENS: &[&str] = &[
    "{",
    "}",
    ";",
    "=",
    "\"",
    "#",
    "/",
    "-",
    "*",
    "\\",
    "(",
    ")",
    "[",
    "]",
    ".",
    "+",
    "_",
    "0",
    "1",
    "9",
    "e",
    "E",
    "x",
    "a",
    " ",
    "  ",
    "\t",
    "\n",
    "\r",
    "\r\n",
    ",",
    "<",
    "'",
    "/-",
    "//",
    "/*",
    "*/",
    "#\"",
    "\"#",
    "##",
    "\\u{",
    "\\u{41}",
    "\\n",
    "\\s",
    "\\ ",
    "\\\n",
    "#true",
    "#false",
    "#null",
    "#inf",
    "#nan",
    "true",
    "null",
    "inf",
    "-inf",
    "\"\"\"",
    "(t)",
    "{}",
    " /- ",
    "\u{85}",
    "\u{a0}",
    "\u{2028}",
    "\u{2029}",
    "\u{200e}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "\u{b}",
    "\u{c}",
    "\u{1}",
    "\u{3000}",
    "é",
    "\u{1F600}",
    "0x1",
    "1.5",
    "1e3",
    "=1",
    " =",
    "= ",
    "k=",
    "\"k\"=",
    "#\"r\"#",
    " 1",
    " -1",
    " a",
    "\"s\"",
    "}\n",
    "{\n",
    "/-{}",
    " { }",
];

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn random_pos(rng: &mut Rng, s: &str) -> usize {
    floor_boundary(s, rng.below(s.len() + 1))
}

/// A window of whole lines of `s` (sometimes all of it).
fn window(rng: &mut Rng, s: &str) -> String {
    if rng.below(8) == 0 {
        return s.to_string();
    }
    let lines: Vec<&str> = s.split_inclusive('\n').collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = rng.below(lines.len());
    let n = 1 + rng.below(12);
    lines[start..(start + n).min(lines.len())].concat()
}

fn mutate(rng: &mut Rng, s: &mut String, others: &[String]) {
    let pos = random_pos(rng, s);
    match rng.below(7) {
        0 => {
            // delete one char
            if let Some(c) = s[pos..].chars().next() {
                s.replace_range(pos..pos + c.len_utf8(), "");
            }
        }
        1 | 2 => s.insert_str(pos, TOKENS[rng.below(TOKENS.len())]),
        3 => {
            // replace one char
            let tok = TOKENS[rng.below(TOKENS.len())];
            if let Some(c) = s[pos..].chars().next() {
                s.replace_range(pos..pos + c.len_utf8(), tok);
            } else {
                s.push_str(tok);
            }
        }
        4 => {
            // delete a range
            let end = floor_boundary(s, pos + 1 + rng.below(12));
            s.replace_range(pos..end.max(pos), "");
        }
        5 => {
            // duplicate a range elsewhere
            let end = floor_boundary(s, pos + 1 + rng.below(24));
            let piece = s[pos..end.max(pos)].to_string();
            let at = random_pos(rng, s);
            s.insert_str(at, &piece);
        }
        _ => {
            // splice in a line from another base
            let other = &others[rng.below(others.len())];
            let piece = window(rng, other);
            let piece: String = piece.lines().next().unwrap_or("").to_string();
            s.insert_str(pos, &piece);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn differential_on_repository_files() {
    big_stack(|| {
        let files = corpus_files();
        let (mut tally, mut non_utf8, mut must) = (Tally::default(), 0usize, 0usize);
        let mut failures = Vec::new();
        for (path, must_fast) in &files {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let Ok(text) = String::from_utf8(bytes) else {
                non_utf8 += 1;
                continue;
            };
            let slow_ok = KdlDocument::parse_v2(&text).is_ok();
            if let Err(e) = check(&text, &mut tally) {
                failures.push(format!("{}: {e}", path.display()));
            }
            if *must_fast {
                must += 1;
                assert!(slow_ok, "{}: parse_v2 rejects a valid file", path.display());
                if parse_fast(&text).is_none() {
                    failures.push(format!("{}: valid file fell back", path.display()));
                }
            }
        }
        eprintln!(
            "repository files: {} read ({} not UTF-8, skipped), {} must take the fast path; \
             parse_v2 ok on {}, parse_fast Some on {}",
            tally.inputs, non_utf8, must, tally.v2_ok, tally.fast_some
        );
        assert!(
            tally.inputs >= 150,
            "corpus unexpectedly small: {}",
            tally.inputs
        );
        assert!(must >= 10, "too few valid files: {must}");
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    });
}

#[test]
fn differential_on_snippets() {
    big_stack(|| {
        let mut tally = Tally::default();
        let mut failures = Vec::new();
        for s in SNIPPETS {
            if let Err(e) = check(s, &mut tally) {
                failures.push(format!("{s:?}: {e}"));
            }
        }
        for s in MUST_ACCEPT {
            assert!(KdlDocument::parse_v2(s).is_ok(), "{s:?}: parse_v2 rejects");
            if parse_fast(s).is_none() {
                failures.push(format!("{s:?}: fell back"));
            }
        }
        // Every single-char deletion and every token insertion at every char position.
        for s in SNIPPETS.iter().filter(|s| s.len() <= 120) {
            let positions: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
            for &i in &positions {
                if let Some(c) = s[i..].chars().next() {
                    let mut m = s.to_string();
                    m.replace_range(i..i + c.len_utf8(), "");
                    if let Err(e) = check(&m, &mut tally) {
                        failures.push(format!("{m:?}: {e}"));
                    }
                }
                for tok in TOKENS {
                    let mut m = s.to_string();
                    m.insert_str(i, tok);
                    if let Err(e) = check(&m, &mut tally) {
                        failures.push(format!("{m:?}: {e}"));
                    }
                }
            }
        }
        eprintln!(
            "snippets and their exhaustive mutants: {} inputs; parse_v2 ok on {}, parse_fast Some on {}",
            tally.inputs, tally.v2_ok, tally.fast_some
        );
        failures.truncate(40);
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    });
}

#[test]
fn differential_on_mutants() {
    big_stack(|| {
        let n: usize = std::env::var("TSK8S_KDL_MUTANTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MUTANTS);
        let mut bases = valid_texts();
        assert!(!bases.is_empty());
        bases.extend(SNIPPETS.iter().map(|s| s.to_string()));
        let mut rng = Rng(0x7534_6b38_735f_6b64);
        let mut tally = Tally::default();
        let mut failures = Vec::new();
        for _ in 0..n {
            let base = &bases[rng.below(bases.len())];
            let mut m = window(&mut rng, base);
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut m, &bases);
            }
            if let Err(e) = check(&m, &mut tally) {
                failures.push(format!("{m:?}: {e}"));
            }
        }
        eprintln!(
            "mutants: {} inputs; parse_v2 ok on {}, parse_fast Some on {}",
            tally.inputs, tally.v2_ok, tally.fast_some
        );
        failures.truncate(40);
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    });
}

/// A random KDL document from a small grammar: mostly valid, with every construct the fast path
/// handles and some it falls back on.
fn gen_doc(rng: &mut Rng, out: &mut String, depth: usize) {
    fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
        xs[rng.below(xs.len())]
    }
    const NAMES: &[&str] = &[
        "a",
        "node",
        "-",
        "+",
        ".",
        "-x",
        "+.y",
        ".z",
        "a,b",
        "<x>",
        "é",
        "\"q\"",
        "\"\"",
        "\"k y\"",
        "#\"r\"#",
        "##\"r\"#\"##",
        "\"e\\n\\u{41}\\s\"",
        "x1",
        "true1",
        "_",
    ];
    const VALUES: &[&str] = &[
        "1",
        "-2",
        "+3",
        "1_000",
        "0",
        "-0",
        "#true",
        "#false",
        "#null",
        "v",
        "\"s\"",
        "\"\"",
        "\"a\\\"b\\\\c\\t\\b\\f\\r\"",
        "\"\\u{1F600}\\u{0}\"",
        "\"ws \\   esc\"",
        "\"ws\\\n  esc\"",
        "#\"raw \\n\"#",
        "(t)1",
        "(t)\"s\"",
        "( t )#null",
        "(\"u\")v",
        "1.5",
        "0x1f",
        "#inf",
        "\"\u{a0}\"",
        "-x",
        "+.y",
    ];
    const SPACE: &[&str] = &[
        " ",
        " ",
        " ",
        "  ",
        "\t",
        " /* c */ ",
        "\u{a0}",
        " /*/**/*/ ",
    ];
    const LINE: &[&str] = &[
        "\n",
        "\n",
        "\n\n",
        "\r\n",
        "// c\n",
        "\n  ",
        "\n/* c */\n",
        "\u{2028}",
    ];
    const TERM: &[&str] = &[
        "\n", "\n", ";", " ;", "; ", "// c\n", "\r\n", "\n\n", " // x\n", "\u{85}",
    ];
    for _ in 0..rng.below(if depth == 0 { 5 } else { 4 }) {
        if rng.below(4) == 0 {
            out.push_str(pick(rng, LINE));
        }
        if rng.below(8) == 0 {
            out.push_str(pick(rng, &["/-", "/- ", "/-\n"]));
            out.push_str(pick(rng, NAMES));
            out.push_str(pick(rng, &["", " 1", " k=v", " {x}", " { y 1 }"]));
            out.push_str(pick(rng, LINE));
        }
        if rng.below(10) == 0 {
            out.push_str(pick(rng, &["(t)", "( t )", "(\"u\") "]));
        }
        out.push_str(pick(rng, NAMES));
        for _ in 0..rng.below(5) {
            out.push_str(pick(rng, SPACE));
            match rng.below(10) {
                0 => {
                    out.push_str(pick(rng, &["/-", "/- "]));
                    out.push_str(pick(rng, VALUES));
                    out.push_str(pick(rng, SPACE));
                }
                1 => out.push_str(pick(rng, &["/-{}", "/- { z }"])),
                _ => {}
            }
            if rng.below(2) == 0 {
                out.push_str(pick(rng, &["k", "key", "\"k\"", "#\"k\"#", "-k", ".k"]));
                out.push_str(pick(rng, &["=", "=", " =", "= ", " = "]));
            }
            out.push_str(pick(rng, VALUES));
        }
        if rng.below(8) == 0 {
            out.push_str(pick(rng, &[" /-a", " /-k=1", " /-{x}", " /-a /-{x}"]));
        }
        if depth < 3 && rng.below(3) == 0 {
            out.push_str(pick(rng, &[" ", "", "  ", " /-{s} "]));
            out.push('{');
            out.push_str(pick(rng, &["", " ", "\n", "\n    "]));
            gen_doc(rng, out, depth + 1);
            out.push_str(pick(rng, &["", " ", "\n"]));
            out.push('}');
            if rng.below(6) == 0 {
                out.push_str(pick(rng, &[" /-{t}", " /-{} /-{u}"]));
            }
        }
        if rng.below(3) == 0 {
            out.push_str(pick(rng, SPACE));
        }
        out.push_str(pick(rng, TERM));
    }
    if rng.below(4) == 0 {
        out.push_str(pick(rng, &["/-last", "// end", "/* end */", "\n"]));
    }
}

#[test]
fn differential_on_generated_documents() {
    big_stack(|| {
        let n: usize = std::env::var("TSK8S_KDL_MUTANTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_MUTANTS * 3 / 4, |n: usize| n * 3 / 4);
        let mut rng = Rng(0x6765_6e64_6f63);
        let mut tally = Tally::default();
        let mut failures = Vec::new();
        let others: Vec<String> = SNIPPETS.iter().map(|s| s.to_string()).collect();
        for i in 0..n {
            let mut s = String::new();
            gen_doc(&mut rng, &mut s, 0);
            if i % 3 == 0 {
                mutate(&mut rng, &mut s, &others);
            }
            if let Err(e) = check(&s, &mut tally) {
                failures.push(format!("{s:?}: {e}"));
            }
        }
        eprintln!(
            "generated documents: {} inputs; parse_v2 ok on {}, parse_fast Some on {}",
            tally.inputs, tally.v2_ok, tally.fast_some
        );
        failures.truncate(40);
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    });
}

#[test]
fn deep_input_never_overflows() {
    // Within MAX_DEPTH: handled on a small stack, and equal to parse_v2.
    let depth = tsk8s_kdl::MAX_DEPTH as usize - 1;
    let nested = format!("{}{}", "a {\n".repeat(depth), "}\n".repeat(depth));
    let shallow = nested.clone();
    // 512 KiB in release; unoptimized frames are several times larger.
    let stack = if cfg!(debug_assertions) {
        8 << 20
    } else {
        512 << 10
    };
    let fast = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(move || parse_fast(&shallow).is_some())
        .expect("spawn")
        .join()
        .expect("parse_fast overflowed its stack at MAX_DEPTH");
    assert!(fast);
    big_stack(move || {
        let mut t = Tally::default();
        check(&nested, &mut t).unwrap();
    });
    // Far deeper: falls back (None) instead of overflowing the default test stack.
    for deep in [
        "a {".repeat(100_000),
        format!("{}{}", "a {\n".repeat(100_000), "}\n".repeat(100_000)),
        "a /-".repeat(100_000) + "b",
        "/*".repeat(100_000),
        format!("a {}b{}", "/*".repeat(100_000), "*/".repeat(100_000)),
    ] {
        let _ = parse_fast(&deep);
    }
    assert!(
        parse_fast(&format!(
            "a {}b{} c",
            "/*".repeat(10_000),
            "*/".repeat(10_000)
        ))
        .is_some()
    );
}

#[test]
fn fallback_api_matches_parse_v2() {
    big_stack(|| {
        for s in ["a 1.5", "a \"\"\"\nx\n\"\"\"", "a b", "a {"] {
            let got = tsk8s_kdl::parse(s);
            let want = KdlDocument::parse_v2(s);
            assert_eq!(got.is_ok(), want.is_ok(), "{s:?}");
            if let (Ok(g), Ok(w)) = (&got, &want) {
                tsk8s_kdl::compare::documents("", g, w).unwrap();
            }
        }
    });
}

/// `kdl` 6.7.1's error recovery doubles its work and its (duplicate) diagnostics for every
/// slashdashed block around an error. `parse` keeps it bounded: checked by the number of
/// diagnostics (a deterministic stand-in for time), which must stay within the text's length.
#[test]
fn error_recovery_is_bounded() {
    let mut texts: Vec<(String, String)> = Vec::new();
    let dir = repo().join("fuzz/regressions/spec");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("kdl-recovery-blowup")
        {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            texts.push((path.display().to_string(), text));
        }
    }
    assert!(
        texts.len() >= 3,
        "reproducers missing under {}",
        dir.display()
    );
    for (name, text) in [
        ("slashdashed blocks with strings", "/-{\"\n".repeat(24)),
        ("slashdashed nodes and blocks", "/-a /-{\"\n".repeat(16)),
        // The copy without slashdashes is valid: only a dangling `/-` is wrong.
        (
            "dangling slashdash",
            format!("a {}/- {}\n", "/-{ b ".repeat(24), "}".repeat(24)),
        ),
        ("dangling slashdashes", "/-a /- \n".repeat(16)),
    ] {
        texts.push((name.into(), text));
    }
    big_stack(move || {
        for (name, text) in &texts {
            let err = tsk8s_kdl::parse(text).expect_err(name);
            let n = err.diagnostics.len();
            assert!(n >= 1 && n <= text.len(), "{name}: {n} diagnostics");
            let mut seen = std::collections::HashSet::new();
            for d in &err.diagnostics {
                assert!(
                    seen.insert((d.span.offset(), d.span.len(), d.message.clone())),
                    "{name}: duplicate diagnostic {d:?}"
                );
                assert!(
                    d.span.offset() + d.span.len() <= text.len(),
                    "{name}: {d:?}"
                );
                assert_eq!(
                    d.input.as_str(),
                    text.as_str(),
                    "{name}: source is the text"
                );
            }
        }
        // The dangling one is found and named.
        let text = format!("a {}/- {}\n", "/-{ b ".repeat(24), "}".repeat(24));
        let err = tsk8s_kdl::parse(&text).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1);
        assert_eq!(err.diagnostics[0].span.offset(), text.rfind("/-").unwrap());
        // A valid document with many slashdashes and syntax outside the fast path still parses
        // (step 3), exactly as parse_v2 parses it.
        let text = format!("{}a 1.5\n", "/-b {\n}\n".repeat(12));
        let got = tsk8s_kdl::parse(&text).unwrap();
        tsk8s_kdl::compare::documents("", &got, &KdlDocument::parse_v2(&text).unwrap()).unwrap();
    });
}

/// Up to `SLASHDASH_LIMIT` slashdashes, errors are `parse_v2`'s, deduplicated.
#[test]
fn errors_are_parse_v2s_deduplicated() {
    big_stack(|| {
        for s in [
            "a {",
            "a \"",
            "/-{\"\n/-{\"\n/-{\"\n",
            "a b=",
            "a (t",
            "a }\nb {",
        ] {
            let got = tsk8s_kdl::parse(s).unwrap_err();
            let want = KdlDocument::parse_v2(s).unwrap_err();
            let mut seen = std::collections::HashSet::new();
            let want: Vec<_> = want
                .diagnostics
                .into_iter()
                .filter(|d| seen.insert((d.span.offset(), d.span.len(), d.message.clone())))
                .collect();
            assert_eq!(got.diagnostics, want, "{s:?}");
        }
    });
}
