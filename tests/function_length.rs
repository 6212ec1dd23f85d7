//! No non-test function over 120 lines (issue 18, ARCHITECTURE.md "Testing"): every Rust file
//! of the workspace's sources (`src/`, `crates/*/src/`, `runtime/src/`; not the vendored
//! smoltcp, not tests, benches or fuzz targets) is read with its comments and literals blanked,
//! `#[cfg(test)]` modules (inline or in their own file) and `#[test]` functions left out, and
//! each function with a body measured from its `fn` line to its closing brace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 120;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `text` with comments, string, byte-string, raw-string and char literals replaced by
/// spaces (newlines kept, so line numbers stay).
fn blank_literals(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, cs: &[char]| {
        for &c in cs {
            out.push(if c == '\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let prev_ident = i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_');
        let end = if c == '/' && next == Some('/') {
            // A line comment, up to its newline.
            (i..b.len()).find(|&j| b[j] == '\n').unwrap_or(b.len())
        } else if c == '/' && next == Some('*') {
            let (mut j, mut depth) = (i + 2, 1);
            while j < b.len() && depth > 0 {
                if b[j] == '/' && b.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 1;
                } else if b[j] == '*' && b.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 1;
                }
                j += 1;
            }
            j
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let s = if c == 'b' { i + 2 } else { i + 1 };
            let h = (s..b.len()).take_while(|&j| b[j] == '#').count();
            b.get(s + h) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br#"…"#.
            let s = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = (s..b.len()).take_while(|&j| b[j] == '#').count();
            let mut j = s + hashes + 1;
            loop {
                if j >= b.len() {
                    break b.len();
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    break j + hashes + 1;
                }
                j += 1;
            }
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{…}'.
            (i + 2..b.len())
                .find(|&j| b[j] == '\'')
                .map_or(b.len(), |j| j + 1)
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        let end = end.min(b.len());
        blank(&mut out, &b[i..end]);
        i = end;
    }
    out
}

/// The index of the brace closing the one at `open`.
fn matching_brace(b: &[u8], open: usize) -> usize {
    let mut depth = 0usize;
    for (j, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    b.len()
}

fn line_of(b: &[u8], at: usize) -> usize {
    b[..at].iter().filter(|&&c| c == b'\n').count() + 1
}

/// What follows an attribute at `at` (its `]`), past whitespace and further attributes.
fn after_attrs(b: &[u8], mut at: usize) -> usize {
    loop {
        while at < b.len() && b[at].is_ascii_whitespace() {
            at += 1;
        }
        if b[at..].starts_with(b"#[") {
            at = (at..b.len())
                .find(|&j| b[j] == b']')
                .map_or(b.len(), |j| j + 1);
        } else {
            return at;
        }
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Functions of one file over [`MAX_LINES`]: `(line, name, lines)`; and the modules it
/// declares under `#[cfg(test)]` in their own files (`mod tree;`).
fn long_functions(text: &str) -> (Vec<(usize, String, usize)>, Vec<String>) {
    let code = blank_literals(text);
    let b = code.as_bytes();
    let mut skip: Vec<(usize, usize)> = Vec::new();
    let mut test_mods = Vec::new();
    for (at, attr) in code
        .match_indices("#[cfg(test)]")
        .chain(code.match_indices("#[test]"))
    {
        let item = after_attrs(b, at + attr.len());
        let rest = &code[item..];
        let header_end = rest.find(['{', ';']).map_or(b.len(), |k| item + k);
        if b.get(header_end) == Some(&b'{') {
            skip.push((item, matching_brace(b, header_end)));
        } else if let Some(name) = rest.strip_prefix("mod ") {
            test_mods.push(name.chars().take_while(|&c| c != ';').collect());
        }
    }
    let mut long = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        if (at > 0 && is_ident(b[at - 1])) || skip.iter().any(|&(s, e)| at >= s && at <= e) {
            continue;
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|&c| c.is_alphanumeric() || c == '_')
            .collect();
        if name.is_empty() {
            continue; // `fn(` types
        }
        // The body: the first `{` outside parentheses and brackets, unless a `;` ends the
        // declaration first.
        let (mut depth, mut j) = (0i32, at);
        let open = loop {
            match b.get(j) {
                None => break None,
                Some(b'(' | b'[') => depth += 1,
                Some(b')' | b']') => depth -= 1,
                Some(b';') if depth == 0 => break None,
                Some(b'{') if depth == 0 => break Some(j),
                _ => {}
            }
            j += 1;
        };
        let Some(open) = open else { continue };
        let (first, last) = (line_of(b, at), line_of(b, matching_brace(b, open)));
        if last - first + 1 > MAX_LINES {
            long.push((first, name, last - first + 1));
        }
    }
    (long, test_mods)
}

#[test]
fn no_non_test_function_is_over_120_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("runtime/src"), &mut files);
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else {
        panic!("no crates/ dir");
    };
    for c in crates.flatten() {
        if c.file_name() != "smoltcp" {
            rust_files(&c.path().join("src"), &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    // Files that are `#[cfg(test)]` modules of their parent: `<dir>/<name>.rs` or
    // `<dir>/<name>/mod.rs`, where `<dir>` is the parent's own directory.
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let (long, test_mods) = long_functions(&text);
        let stem = f.file_stem().unwrap_or_default();
        let dir = match f.parent() {
            Some(p) if stem == "lib" || stem == "main" || stem == "mod" => p.to_path_buf(),
            Some(p) => p.join(stem),
            None => continue,
        };
        for m in test_mods {
            test_only.insert(dir.join(format!("{m}.rs")));
            test_only.insert(dir.join(&m).join("mod.rs"));
        }
        found.push((f, long));
    }
    let mut problems = Vec::new();
    for (f, long) in found {
        if test_only.contains(f) {
            continue;
        }
        for (line, name, n) in long {
            problems.push(format!(
                "{}:{line}: fn {name} is {n} lines (at most {MAX_LINES})",
                f.strip_prefix(root).unwrap_or(f).display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_measure_sees_through_literals_and_test_code() {
    let body = "    let x = 1;\n".repeat(130);
    let text = format!(
        "fn short() {{ let s = \"}}\"; let c = '{{'; let r = r#\"}}\"#; }}\n\
         // fn commented() {{\n\
         trait T {{ fn decl(&self); }}\n\
         fn long() {{\n{body}}}\n\
         #[cfg(test)]\nmod tests {{\n    fn also_long() {{\n{body}    }}\n}}\n\
         #[cfg(test)]\nmod tree;\n"
    );
    let (long, test_mods) = long_functions(&text);
    assert_eq!(long, vec![(4, "long".to_string(), 132)]);
    assert_eq!(test_mods, vec!["tree".to_string()]);
}
