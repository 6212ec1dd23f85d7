//! The compiler core does no I/O and calls no CLI code (ARCHITECTURE.md, "The core does no
//! I/O"): every module outside `src/cli/` (and `main.rs`) is read, its test module left out,
//! and must not name the CLI, the filesystem, the environment, processes, the clock,
//! randomness or the standard streams.

use std::path::{Path, PathBuf};

/// What the core may not name, each with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("crate::cli", "CLI code"),
    ("std::fs", "the filesystem"),
    ("std::env", "the environment"),
    ("std::process", "processes"),
    ("SystemTime", "the clock"),
    ("Instant::now", "the clock"),
    ("rand::", "randomness"),
    ("getrandom", "randomness"),
    ("stdout()", "the standard streams"),
    ("stderr()", "the standard streams"),
    ("print!(", "the standard streams"),
    ("println!(", "the standard streams"),
    ("eprint!(", "the standard streams"),
    ("eprintln!(", "the standard streams"),
];

fn core_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "cli") {
                core_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs")
            && p.file_name().is_some_and(|n| n != "main.rs")
        {
            out.push(p);
        }
    }
}

/// The file without its `#[cfg(test)]` module and without comments.
fn non_test_code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .enumerate()
        .position(|(i, l)| {
            l.trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim_start().starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .map(|l| l.split_once("//").map_or(*l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_core_does_no_io_and_calls_no_cli_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    core_files(&src, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let mut problems = Vec::new();
    for f in &files {
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        for (name, what) in FORBIDDEN {
            if code.contains(name) {
                problems.push(format!(
                    "{}: names `{name}` ({what}); that belongs under src/cli/",
                    f.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The core's top-level module of a file under `src/` (`lower/mesh.rs` → `lower`).
fn top_module(src: &Path, f: &Path) -> String {
    let rel = f.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The modules `code` names as `crate::<module>`.
fn named_modules(code: &str) -> std::collections::BTreeSet<String> {
    code.match_indices("crate::")
        .map(|(i, m)| {
            code[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn the_core_modules_form_no_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    core_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = top_module(&src, f);
        if from == "lib" {
            continue;
        }
        let code = non_test_code(&std::fs::read_to_string(f).unwrap());
        let to = named_modules(&code);
        let edges = graph.entry(from.clone()).or_default();
        edges.extend(to.into_iter().filter(|m| *m != from));
    }
    assert!(graph.len() > 10, "found only {graph:?}");
    // Depth-first search; a back edge is a cycle, reported as its path.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_string());
            cycles.push(c.join(" -> "));
            return;
        }
        if done.contains(m) {
            return;
        }
        path.push(m.to_string());
        for n in graph.get(m).into_iter().flatten() {
            if graph.contains_key(n) {
                visit(n, graph, path, done, cycles);
            }
        }
        path.pop();
        done.insert(m.to_string());
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(
        cycles.is_empty(),
        "module cycles in the core (ARCHITECTURE.md: the module graph has no cycle):\n{}",
        cycles.join("\n")
    );
}
