//! Diagnostics: every error carries a span into one named source; all errors of a run are
//! collected and rendered together (miette, plain text, deterministic).

use std::fmt::Write as _;

use miette::{
    Diagnostic as MietteDiagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, SourceSpan,
};

/// One problem in one input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub span: SourceSpan,
    pub label: String,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(span: SourceSpan, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span,
            label: "here".into(),
            help: None,
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
}

/// At most this many diagnostics of one file are printed; the rest are counted.
pub const MAX_PRINTED: usize = 50;
/// Source lines in a snippet are cut to about this many characters around the span.
pub const SNIPPET_WIDTH: usize = 240;
/// A span over more lines than this is shown by its first line only.
pub const MAX_SNIPPET_LINES: usize = 100;
/// A message or label longer than this many characters keeps its head and tail.
pub const MAX_TEXT: usize = 400;
/// The same for a help text: ours carry commands to copy whole (the `kubeseal` line is about
/// 500 characters), so the cap is well above them and bounds only user text echoed into one.
pub const MAX_HELP: usize = 2_000;
/// Hard cap on one rendering (the caps above keep it far below: about 2 MB at most).
pub const MAX_RENDERED_BYTES: usize = 10 << 20;
/// Stored diagnostics beyond which the list is trimmed to the earliest ones (memory bound).
const TRIM_AT: usize = 8192;

/// A set of diagnostics against one source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub items: Vec<Diagnostic>,
    /// Diagnostics dropped (beyond the earliest [`MAX_PRINTED`]) to bound memory; counted in
    /// the summary.
    dropped: usize,
    /// Once trimmed: the offset of the last diagnostic kept. One that starts past it can never
    /// be printed (at least [`MAX_PRINTED`] come before it), so [`Diagnostics::beyond_cap`]
    /// counts it without its being built.
    /// (`usize::MAX` until then).
    cutoff: usize,
    lines: LineIndex,
}

impl Diagnostics {
    pub fn new(file: &str, source: &str) -> Diagnostics {
        Diagnostics {
            file: file.to_string(),
            source: source.to_string(),
            items: Vec::new(),
            dropped: 0,
            cutoff: usize::MAX,
            lines: LineIndex::default(),
        }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
        if self.items.len() >= TRIM_AT {
            self.trim();
        }
    }

    /// Keep the earliest [`MAX_PRINTED`] (by position; all that can be printed), count the rest.
    fn trim(&mut self) {
        self.sort_items();
        if self.items.len() > MAX_PRINTED {
            self.dropped += self.items.len() - MAX_PRINTED;
            self.items.truncate(MAX_PRINTED);
            self.cutoff = self.items.last().map_or(usize::MAX, |d| d.span.offset());
        }
    }

    /// For checks that may fire millions of times on hostile input: true (and the problem
    /// counted) when a diagnostic at `span` could not be printed, so the caller need not build
    /// it (its message, its did-you-mean).
    pub fn beyond_cap(&mut self, span: SourceSpan) -> bool {
        if span.offset() > self.cutoff {
            self.dropped += 1;
            true
        } else {
            false
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of problems: those kept and those dropped.
    pub fn len(&self) -> usize {
        self.items.len() + self.dropped
    }

    /// 1-based line and column (in characters) of a byte offset. The line comes from an index
    /// of line starts built once per source; the column counts the characters of its line.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let (line, start) = self.line_start(offset);
        let offset = floor_boundary(&self.source, offset.min(self.source.len()));
        let col = self
            .source
            .get(start..offset)
            .map_or(0, |s| s.chars().count())
            + 1;
        (line, col)
    }

    /// 1-based line of a byte offset (binary search in the line index).
    pub fn line(&self, offset: usize) -> usize {
        self.line_start(offset).0
    }

    /// The 1-based line holding `offset` and the byte offset of that line's start.
    fn line_start(&self, offset: usize) -> (usize, usize) {
        let starts = self.lines.get(&self.source);
        let offset = offset.min(self.source.len());
        // `starts[0] == 0`, so the partition point is at least 1.
        let i = starts.partition_point(|&s| s as usize <= offset).max(1);
        (i, starts[i - 1] as usize)
    }

    /// Byte range of a 1-based line, without its `\n`.
    fn line_range(&self, line: usize) -> (usize, usize) {
        let starts = self.lines.get(&self.source);
        let start = starts
            .get(line - 1)
            .map_or(self.source.len(), |&s| s as usize);
        let end = starts
            .get(line)
            .map_or(self.source.len(), |&s| s as usize - 1);
        (start, end)
    }

    fn line_count(&self) -> usize {
        self.lines.get(&self.source).len()
    }

    fn sort_items(&mut self) {
        self.items.sort_by_key(|d| (d.span.offset(), d.span.len()));
        self.items.dedup();
    }

    /// Sort by position (stable for equal positions) so output does not depend on check order.
    pub fn sort(&mut self) {
        self.sort_items();
    }

    /// Render all diagnostics: a `file:line:col: error: message` line for grep-friendly CI logs,
    /// then miette's snippet (once: its header, which repeats the message, is left out). No colours, no terminal-width dependence. At most
    /// [`MAX_PRINTED`] are shown (then `… and N more errors`); snippets show a window of at
    /// most [`SNIPPET_WIDTH`] characters of each line; user text and source lines are escaped
    /// and the whole text neutralized ([`tsk8s_policy::text`]), so the output is bounded and
    /// safe for terminals and CI logs whatever the input.
    pub fn render(&self) -> String {
        self.render_as("error")
    }

    /// [`Diagnostics::render`] for problems that do not stop the run (`warning:`).
    pub fn render_warnings(&self) -> String {
        self.render_as("warning")
    }

    fn render_as(&self, severity: &str) -> String {
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
        let file = escape(&self.file).into_owned();
        let items = &self.items[..self.items.len().min(MAX_PRINTED)];
        for d in items {
            if out.len() > MAX_RENDERED_BYTES {
                break;
            }
            let (line, col) = self.line_col(d.span.offset());
            let message = bounded(&d.message);
            let _ = writeln!(out, "{file}:{line}:{col}: {severity}: {message}");
            let report = Rendered {
                message,
                help: d.help.as_deref().map(|h| bounded_to(h, MAX_HELP)),
                label: LabeledSpan::new_with_span(None, SourceSpan::new(0.into(), 0)),
                src: Window::default(),
            };
            let report = self.snippet(report, d, &file);
            let mut snippet = String::new();
            if handler.render_report(&mut snippet, &report).is_ok() {
                // Miette's header (`  × message`, wrapped) precedes the first `╭` or `help:`.
                let mut body = false;
                for l in snippet.split_inclusive('\n') {
                    let t = l.trim_start();
                    body = body || t.starts_with('╭') || t.starts_with("help:");
                    if body {
                        out.push_str(l);
                    }
                }
            }
            out.push('\n');
        }
        let n = self.len();
        if n > items.len() {
            let more = n - items.len();
            let _ = writeln!(
                out,
                "… and {more} more {severity}{} in {file} (the first {} are shown)\n",
                if more == 1 { "" } else { "s" },
                items.len()
            );
        }
        let _ = writeln!(
            out,
            "{n} {severity}{} in {file}",
            if n == 1 { "" } else { "s" }
        );
        tsk8s_policy::text::neutralize(&out).into_owned()
    }

    /// The report for `d` with its snippet: the lines miette shows (the span's, one before,
    /// one after), each cut to a window around the span and escaped.
    fn snippet(&self, mut report: Rendered, d: &Diagnostic, file: &str) -> Rendered {
        let src = &self.source;
        let start = floor_boundary(src, d.span.offset().min(src.len()));
        let mut end = floor_boundary(src, (d.span.offset() + d.span.len()).min(src.len()));
        let (l1, _) = self.line_start(start);
        let mut l2 = self.line(end.saturating_sub(1).max(start));
        let mut label = bounded(&d.label);
        if l2 - l1 >= MAX_SNIPPET_LINES {
            // Show the first line of the span only.
            end = self.line_range(l1).1.max(start);
            l2 = l1;
            label = format!(
                "{label} (through line {})",
                self.line(d.span.offset() + d.span.len())
            );
        }
        let first = l1.saturating_sub(2).max(1);
        let last = (l2 + 2).min(self.line_count());
        // Columns (in chars) of the span's ends on their lines, for the windows.
        let col_of = |line: usize, at: usize| {
            let (ls, _) = self.line_range(line);
            src.get(ls..at.max(ls)).map_or(0, |s| s.chars().count())
        };
        let scol = col_of(l1, start);
        let ecol = col_of(l2, end);
        let l1_len = {
            let (ls, le) = self.line_range(l1);
            src.get(ls..le)
                .map_or(0, |s| s.trim_end_matches('\r').chars().count())
        };
        // The window of the span's first line; context lines share it.
        let a1 = scol
            .saturating_sub(60)
            .min(l1_len.saturating_sub(SNIPPET_WIDTH));
        let mut text = String::new();
        let (mut s_at, mut e_at) = (None, None);
        for line in first..=last {
            let (ls, le) = self.line_range(line);
            let content = src.get(ls..le).unwrap_or("");
            let (content, cr) = match content.strip_suffix('\r') {
                Some(c) => (c, true),
                None => (content, false),
            };
            let len = content.chars().count();
            let a = if len <= SNIPPET_WIDTH {
                0
            } else if line == l2 && l2 != l1 {
                (ecol + 60).clamp(SNIPPET_WIDTH, len) - SNIPPET_WIDTH
            } else if l1 < line && line < l2 {
                0
            } else {
                a1.min(len - SNIPPET_WIDTH)
            };
            let b = (a + SNIPPET_WIDTH).min(len);
            if a > 0 {
                text.push('…');
            }
            let ends = ((line == l1).then_some(start), (line == l2).then_some(end));
            let marks = (&mut s_at, &mut e_at);
            let pos = push_window(src, &mut text, (content, ls), a..b, ends, marks);
            // Offsets at the end of the window or of the content.
            if s_at.is_none() && line == l1 && start <= pos {
                s_at = Some(text.len());
            }
            if e_at.is_none() && line == l2 && end <= pos {
                e_at = Some(text.len());
            }
            if b < len {
                text.push('…');
            }
            if cr {
                text.push('\r');
            }
            if s_at.is_none() && line == l1 && start <= le {
                s_at = Some(text.len());
            }
            if e_at.is_none() && line == l2 && end <= le {
                e_at = Some(text.len());
            }
            if le < src.len() {
                text.push('\n');
                if e_at.is_none() && line == l2 {
                    e_at = Some(text.len());
                }
            }
        }
        let s_at = s_at.unwrap_or(text.len());
        let e_at = e_at.unwrap_or(text.len()).max(s_at);
        report.label =
            LabeledSpan::new_with_span(Some(label), SourceSpan::new(s_at.into(), e_at - s_at));
        // miette's header column counts bytes from the line start (a `\r` also starts a line).
        let (ls1, _) = self.line_range(l1);
        let line_start = src
            .get(ls1..start)
            .and_then(|b| b.rfind('\r'))
            .map_or(ls1, |i| ls1 + i + 1);
        report.src = Window {
            name: file.to_string(),
            text,
            first_line: first - 1,
            label_at: s_at,
            label_column: start - line_start.min(start),
        };
        report
    }
}

/// Push the chars `window` (char indices) of one source line, `content`, starting at byte `ls`
/// of `src`, to `text`, escaped for a terminal; record in `marks` where the span's `ends` (byte
/// offsets, `None` when not on this line) land in `text`. Returns the byte offset after the
/// last char read.
fn push_window(
    src: &str,
    text: &mut String,
    (content, ls): (&str, usize),
    window: std::ops::Range<usize>,
    ends: (Option<usize>, Option<usize>),
    marks: (&mut Option<usize>, &mut Option<usize>),
) -> usize {
    let mut pos = ls;
    let mut prev = '\0';
    for (i, c) in content.chars().enumerate() {
        if i >= window.end {
            break;
        }
        if i >= window.start {
            if ends.0 == Some(pos) {
                *marks.0 = Some(text.len());
            }
            if ends.1 == Some(pos) {
                *marks.1 = Some(text.len());
            }
            if c != '\t' && tsk8s_policy::text::is_unsafe(c) {
                tsk8s_policy::text::push_escaped(text, c);
            } else if c == '#' && prev == '#' && src.as_bytes().get(pos + 1) == Some(&b'[') {
                // `##[`: a CI log command anywhere in a line (see `text::neutralize`).
                tsk8s_policy::text::push_escaped(text, c);
            } else {
                text.push(c);
            }
        }
        prev = c;
        pos += c.len_utf8();
    }
    pos
}

/// Byte offsets of line starts, built on first use (inputs are at most 64 MB, so `u32`).
#[derive(Clone, Debug, Default)]
struct LineIndex(std::sync::OnceLock<Vec<u32>>);

impl LineIndex {
    fn get(&self, source: &str) -> &[u32] {
        self.0.get_or_init(|| {
            let mut v = vec![0u32];
            v.extend(
                source
                    .bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| u32::try_from(i + 1).unwrap_or(u32::MAX)),
            );
            v
        })
    }
}

/// A cache: equal whatever it holds.
impl PartialEq for LineIndex {
    fn eq(&self, _: &LineIndex) -> bool {
        true
    }
}
impl Eq for LineIndex {}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// User text in a message: escaped, and cut to its head and tail when long.
fn bounded(s: &str) -> String {
    bounded_to(s, MAX_TEXT)
}

fn bounded_to(s: &str, max: usize) -> String {
    tsk8s_policy::text::bounded(&escape(s), max).into_owned()
}

pub use tsk8s_policy::text::escape;

pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// The lines of one snippet (escaped, windowed), standing for the whole source: line numbers
/// shifted by `first_line`, the label's column the real one.
#[derive(Debug, Default)]
struct Window {
    name: String,
    text: String,
    /// 0-based line number of `text`'s first line in the source.
    first_line: usize,
    label_at: usize,
    label_column: usize,
}

impl miette::SourceCode for Window {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = self.text.read_span(span, before, after)?;
        let column = if before == 0 && span.offset() == self.label_at {
            self.label_column
        } else {
            inner.column()
        };
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line() + self.first_line,
            column,
            inner.line_count(),
        )))
    }
}

#[derive(Debug)]
struct Rendered {
    message: String,
    help: Option<String>,
    label: LabeledSpan,
    src: Window,
}

impl std::fmt::Display for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl MietteDiagnostic for Rendered {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(self.label.clone())))
    }
}

/// Did-you-mean: the closest candidate within a small edit distance.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut best: Option<(usize, &str)> = None;
    let n = name.chars().count();
    for c in candidates {
        let limit = (n.max(c.chars().count()) / 3).max(1);
        // The distance is at least the difference in length (and a hostile name may be
        // megabytes long): skip what cannot be within the limit.
        if n.abs_diff(c.chars().count()) > limit {
            continue;
        }
        let d = edit_distance(name, c);
        if d <= limit && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

/// Edit distance counting a swap of two adjacent characters as one edit (`prot` → `port`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            let mut d = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                d = d.min(prev2[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("", 10), (1, 1));
    }

    #[test]
    fn suggest_close_names() {
        assert_eq!(
            suggest("monitorng", ["monitoring", "k8s"]),
            Some("did you mean `monitoring`?".into())
        );
        assert_eq!(suggest("xyz", ["monitoring"]), None);
        assert_eq!(
            suggest("prot", ["port", "pod-port", "tag"]),
            Some("did you mean `port`?".into())
        );
    }
}
