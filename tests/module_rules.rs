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
