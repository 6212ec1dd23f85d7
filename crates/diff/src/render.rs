//! Renderers: text (optionally ANSI-coloured), markdown (PR comments, split into parts), JSON,
//! and the `build --check` summary. Templates live in the crate's `templates/` directory.

use minijinja::value::Serde;
use minijinja::{Environment, context};
use serde::Serialize;

use crate::{Action, Change, Counts, FileStatus, Format, Group, GroupKind, GroupStatus, Report};

/// GitHub's limit for one comment body, in bytes. Every markdown part is strictly smaller.
pub const MAX_COMMENT_BYTES: usize = 65_536;

/// Hidden marker on the first line of every markdown part, so CI can find and update the
/// comment(s) in place. Split output also carries `<!-- tsk8s-diff-part N/M -->` on line 2.
/// Concatenated parts can be split again at lines equal to this marker.
pub const MARKER: &str = "<!-- tsk8s-diff -->";

const TXT: &str = include_str!("../templates/diff.txt.j2");
const MD: &str = include_str!("../templates/diff.md.j2");
const MD_OBJECT: &str = include_str!("../templates/diff_object.md.j2");
const CHECK: &str = include_str!("../templates/check.txt.j2");

/// Room left for differences between the size estimate and the real part.
const SAFETY_MARGIN: usize = 256;

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, src) in [
        ("diff.txt.j2", TXT),
        ("diff.md.j2", MD),
        ("diff_object.md.j2", MD_OBJECT),
        ("check.txt.j2", CHECK),
    ] {
        // Templates are compiled in; a syntax error is caught by the tests.
        let _ = env.add_template(name, src);
    }
    env
}

fn render_tpl(env: &Environment<'_>, name: &str, ctx: minijinja::Value) -> String {
    env.get_template(name)
        .and_then(|t| t.render(ctx))
        .unwrap_or_else(|e| format!("tsk8s-diff: internal template error in {name}: {e}\n"))
}

/// The markdown table's Status: what happened to the group.
fn table_status(g: &Group) -> &'static str {
    match g.status {
        GroupStatus::Added => "added",
        GroupStatus::Removed => "removed",
        GroupStatus::Present if g.counts.total() == 0 => "unchanged",
        GroupStatus::Present => "changed",
    }
}

fn status_str(s: GroupStatus) -> &'static str {
    match s {
        GroupStatus::Present => "present",
        GroupStatus::Added => "added",
        GroupStatus::Removed => "removed",
    }
}

// ---------------------------------------------------------------------------------------------
// text

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";

/// Replaces control characters (other than tab and newline) so that file content cannot drive
/// the terminal (e.g. an ESC sequence inside an unknown text file).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

fn colorize_diff(diff: &str) -> String {
    let mut out = String::with_capacity(diff.len() + diff.len() / 4);
    for line in diff.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let color = if body.starts_with("+++") || body.starts_with("---") {
            BOLD
        } else if body.starts_with("@@") {
            CYAN
        } else if body.starts_with('+') {
            GREEN
        } else if body.starts_with('-') {
            RED
        } else {
            ""
        };
        if color.is_empty() {
            out.push_str(line);
        } else {
            out.push_str(color);
            out.push_str(body);
            out.push_str(RESET);
            if line.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    out
}

fn heading(c: &Change, color: bool) -> String {
    let mut h = format!(
        "{} {} {}",
        c.action.sign(),
        c.action.as_str(),
        sanitize(&c.label)
    );
    if !c.description.is_empty() {
        h.push_str(&format!(" ({})", sanitize(&c.description)));
    }
    if color {
        let col = match c.action {
            Action::Added => GREEN,
            Action::Changed => YELLOW,
            Action::Removed => RED,
        };
        format!("{BOLD}{col}{h}{RESET}")
    } else {
        h
    }
}

/// Human-readable report: summary line, per-group counts, then a unified diff per changed entry.
/// `color` adds ANSI colours (the CLI passes "stdout is a TTY").
pub fn render_text(report: &Report, color: bool) -> String {
    #[derive(Serialize)]
    struct G {
        title: String,
        counts: String,
        status: &'static str,
    }
    #[derive(Serialize)]
    struct C {
        heading: String,
        diff: String,
    }
    #[derive(Serialize)]
    struct CG {
        title: String,
        changes: Vec<C>,
    }
    let width = report
        .groups
        .iter()
        .map(|g| g.kind.to_string().chars().count())
        .max()
        .unwrap_or(0);
    let groups: Vec<G> = report
        .groups
        .iter()
        .map(|g| G {
            title: format!("{:<width$}", g.kind.to_string()),
            counts: g.counts.to_string(),
            status: status_str(g.status),
        })
        .collect();
    let changed_groups: Vec<CG> = report
        .groups
        .iter()
        .filter(|g| !g.changes.is_empty())
        .map(|g| CG {
            title: if color {
                format!("{BOLD}{}{RESET}", g.kind)
            } else {
                g.kind.to_string()
            },
            changes: g
                .changes
                .iter()
                .map(|c| C {
                    heading: heading(c, color),
                    diff: if color {
                        colorize_diff(&sanitize(&c.diff))
                    } else {
                        sanitize(&c.diff)
                    },
                })
                .collect(),
        })
        .collect();
    let summary = if color {
        format!("{BOLD}{}{RESET}", report.summary_line())
    } else {
        report.summary_line()
    };
    let access = report
        .access
        .as_ref()
        .map(crate::access::render_text)
        .unwrap_or_default();
    render_tpl(
        &env(),
        "diff.txt.j2",
        context! { summary, access, groups => Serde(&groups), changed_groups => Serde(&changed_groups) },
    )
}

// ---------------------------------------------------------------------------------------------
// markdown

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

fn md_group_title(k: &GroupKind) -> String {
    let raw = match k {
        GroupKind::Cluster(c) => format!("cluster `{c}`"),
        other => other.to_string(),
    };
    raw.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[derive(Serialize)]
struct TableRow {
    title: String,
    status: &'static str,
    counts: Counts,
}

fn render_block(
    env: &Environment<'_>,
    g: &Group,
    c: &Change,
    diff: &str,
    omitted: usize,
) -> String {
    render_tpl(
        env,
        "diff_object.md.j2",
        context! {
            sign => c.action.sign().to_string(),
            action => c.action.as_str(),
            label => html_escape(&c.label),
            group => html_escape(&g.kind.to_string()),
            description => html_escape(&c.description),
            fence => code_fence(diff),
            diff => diff,
            omitted => omitted,
        },
    )
}

/// A backtick fence longer than any run of backticks in `body`, so no line of a diff (which
/// comes from the spec and from the pull request's tree) can close the block and inject
/// markdown into the comment (CommonMark: a closing fence is at least as long as the opening).
fn code_fence(body: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    "`".repeat(longest.max(2) + 1)
}

fn render_frame(
    env: &Environment<'_>,
    report: &Report,
    part: Option<(usize, usize)>,
    table: bool,
    access: &str,
    blocks: &[String],
) -> String {
    let rows: Vec<TableRow> = if table {
        report
            .groups
            .iter()
            .map(|g| TableRow {
                title: md_group_title(&g.kind),
                status: table_status(g),
                counts: g.counts,
            })
            .collect()
    } else {
        Vec::new()
    };
    let (part, parts) = part.unwrap_or((0, 0));
    render_tpl(
        env,
        "diff.md.j2",
        context! {
            marker => MARKER,
            part => part,
            parts => parts,
            summary => report.summary_line(),
            access => access,
            table => Serde(&rows),
            empty => report.is_empty(),
            blocks => Serde(blocks),
        },
    )
}

/// Cuts a diff at a line boundary so that it has at most `max_bytes` bytes; returns the kept text
/// and how many lines were dropped.
fn truncate_lines(diff: &str, max_bytes: usize) -> (String, usize) {
    let mut kept = String::new();
    let mut omitted = 0;
    for line in diff.split_inclusive('\n') {
        if omitted == 0 && kept.len() + line.len() <= max_bytes {
            kept.push_str(line);
        } else {
            omitted += 1;
        }
    }
    if !kept.is_empty() && !kept.ends_with('\n') {
        kept.push('\n');
    }
    (kept, omitted)
}

/// PR comment bodies: see [`render_markdown_with_limit`]; uses [`MAX_COMMENT_BYTES`].
pub fn render_markdown(report: &Report) -> Vec<String> {
    render_markdown_with_limit(report, MAX_COMMENT_BYTES)
}

/// PR comment bodies, each strictly smaller than `limit` bytes (for `limit` ≥ a few KiB).
///
/// One body when it fits: marker, summary line, a table of per-group counts, then one
/// `<details>` block with a fenced `diff` per change. Otherwise numbered parts
/// (`part 1/3` …), cut only between whole blocks; the first part carries the table. A single
/// block that cannot fit into an otherwise empty part is truncated at a line boundary, with a
/// note saying how many lines were left out.
pub fn render_markdown_with_limit(report: &Report, limit: usize) -> Vec<String> {
    let env = env();
    // The access section comes first, in the first part (it is bounded).
    let access = report
        .access
        .as_ref()
        .map(crate::access::render_markdown)
        .unwrap_or_default();
    let pairs: Vec<(&Group, &Change)> = report.changes().collect();
    let blocks: Vec<String> = pairs
        .iter()
        .map(|(g, c)| render_block(&env, g, c, &c.diff, 0))
        .collect();
    let single = render_frame(&env, report, None, true, &access, &blocks);
    if single.len() < limit {
        return vec![single];
    }

    // Sizes of the frames with worst-case part numbers, and what one more block costs beyond
    // its own length (the separator the template puts around it).
    let big = Some((99_999, 99_999));
    let first_overhead = render_frame(&env, report, big, true, &access, &[]).len();
    let other_overhead = render_frame(&env, report, big, false, "", &[]).len();
    let per_block = render_frame(&env, report, big, false, "", &[String::new()])
        .len()
        .saturating_sub(other_overhead);
    // A huge table (thousands of clusters) is dropped rather than starving every block.
    let table_in_first = first_overhead + SAFETY_MARGIN < limit / 2;
    let first_overhead = if table_in_first {
        first_overhead
    } else {
        render_frame(&env, report, big, false, &access, &[]).len()
    };

    let mut parts: Vec<Vec<String>> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut size = first_overhead;
    for (block, (g, c)) in blocks.into_iter().zip(pairs.iter()) {
        let cost = block.len() + per_block;
        if size + cost + SAFETY_MARGIN < limit {
            size += cost;
            current.push(block);
            continue;
        }
        if !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            size = other_overhead;
        }
        if size + cost + SAFETY_MARGIN < limit {
            size += cost;
            current.push(block);
            continue;
        }
        // Too big even alone: truncate this object's diff at a line boundary.
        let block_overhead = render_block(&env, g, c, "", usize::MAX).len();
        let budget = limit.saturating_sub(size + per_block + block_overhead + SAFETY_MARGIN);
        let (kept, omitted) = truncate_lines(&c.diff, budget);
        current.push(render_block(&env, g, c, &kept, omitted.max(1)));
        parts.push(std::mem::take(&mut current));
        size = other_overhead;
    }
    if !current.is_empty() {
        parts.push(current);
    }
    let n = parts.len().max(1);
    let mut out: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, blocks)| {
            render_frame(
                &env,
                report,
                Some((i + 1, n)),
                i == 0 && table_in_first,
                if i == 0 { &access } else { "" },
                blocks,
            )
        })
        .collect();
    if out.is_empty() {
        out.push(render_frame(
            &env,
            report,
            Some((1, 1)),
            false,
            &access,
            &[],
        ));
    }
    // Last guard (only reachable with absurdly small limits): never exceed the limit.
    for body in &mut out {
        if body.len() >= limit {
            let note = "\n\n_Comment truncated to fit the size limit._\n";
            let (mut kept, _) = truncate_lines(body, limit.saturating_sub(note.len() + 1));
            kept.push_str(note);
            if kept.len() >= limit {
                kept = truncate_lines(body, limit.saturating_sub(1)).0;
            }
            *body = kept;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// json

/// Machine-readable report (pretty JSON, deterministic, secrets masked).
pub fn render_json(report: &Report) -> String {
    #[derive(Serialize)]
    struct J<'a> {
        summary: &'a Counts,
        summary_line: String,
        empty: bool,
        up_to_date: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        access: Option<&'a crate::AccessChanges>,
        groups: &'a [Group],
        files: &'a [crate::FileDiff],
    }
    let j = J {
        summary: &report.summary,
        summary_line: report.summary_line(),
        empty: report.is_empty(),
        up_to_date: report.is_up_to_date(),
        access: report.access.as_ref(),
        groups: &report.groups,
        files: &report.files,
    };
    match serde_json::to_string_pretty(&j) {
        Ok(mut s) => {
            s.push('\n');
            s
        }
        Err(e) => format!("{{\"error\": {:?}}}\n", e.to_string()),
    }
}

/// Renders `report` in `format`: one string for text and JSON, one per comment for markdown.
pub fn render(report: &Report, format: Format, color: bool) -> Vec<String> {
    match format {
        Format::Text => vec![render_text(report, color)],
        Format::Markdown => render_markdown(report),
        Format::Json => vec![render_json(report)],
    }
}

// ---------------------------------------------------------------------------------------------
// build --check

const CHECK_LIST_MAX: usize = 20;

/// Short summary for `tsk8s build --check` (old tree = committed DIR, new tree = fresh build):
/// which files are stale, missing or extra, and which objects would change.
pub fn check_summary(report: &Report) -> String {
    #[derive(Serialize)]
    struct F<'a> {
        status: &'static str,
        path: &'a str,
    }
    #[derive(Serialize)]
    struct C {
        sign: String,
        group: String,
        label: String,
    }
    let files: Vec<F<'_>> = report
        .files
        .iter()
        .take(CHECK_LIST_MAX)
        .map(|f| F {
            status: match f.status {
                FileStatus::Added => "missing ",
                FileStatus::Modified => "stale   ",
                FileStatus::Removed => "extra   ",
            },
            path: &f.path,
        })
        .collect();
    let all: Vec<(&Group, &Change)> = report.changes().collect();
    let changes: Vec<C> = all
        .iter()
        .take(CHECK_LIST_MAX)
        .map(|(g, c)| C {
            sign: c.action.sign().to_string(),
            group: g.kind.to_string(),
            label: c.label.clone(),
        })
        .collect();
    render_tpl(
        &env(),
        "check.txt.j2",
        context! {
            up_to_date => report.is_up_to_date(),
            file_count => report.files.len(),
            files => Serde(&files),
            more_files => report.files.len().saturating_sub(CHECK_LIST_MAX),
            summary => report.summary.to_string(),
            changes => Serde(&changes),
            more_changes => all.len().saturating_sub(CHECK_LIST_MAX),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_lines_cuts_at_line_boundary() {
        let (k, o) = truncate_lines("aaa\nbbb\nccc\n", 9);
        assert_eq!((k.as_str(), o), ("aaa\nbbb\n", 1));
        let (k, o) = truncate_lines("aaaaaaaaaa\n", 3);
        assert_eq!((k.as_str(), o), ("", 1));
    }

    #[test]
    fn a_diff_line_cannot_close_its_code_fence() {
        assert_eq!(code_fence("+a\n-b\n"), "```");
        assert_eq!(code_fence(" ```\n+ ````x\n"), "`````");
        let env = env();
        let body = " ```\n+<img src=x onerror=alert(1)>\n";
        let g_fence = code_fence(body);
        let out = env
            .get_template("diff_object.md.j2")
            .unwrap()
            .render(context! {
                sign => "~", action => "changed", label => "l", group => "g",
                description => "", fence => g_fence.clone(), diff => body, omitted => 0,
            })
            .unwrap();
        // The block opens and closes with the long fence, and the body's ``` is inside it.
        let open = out.find(&format!("{g_fence}diff\n")).unwrap();
        let close = out.rfind(&format!("\n{g_fence}\n")).unwrap();
        assert!(open < out.find(" ```\n").unwrap() && out.find(" ```\n").unwrap() < close);
    }

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(sanitize("a\x1b[31mb\tc\r\n"), "a\u{fffd}[31mb\tc\u{fffd}\n");
    }

    #[test]
    fn templates_compile() {
        let env = env();
        for name in [
            "diff.txt.j2",
            "diff.md.j2",
            "diff_object.md.j2",
            "check.txt.j2",
        ] {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }
}
