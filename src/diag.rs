//! Diagnostics: every error carries a span into one named source; all errors of a run are
//! collected and rendered together (miette, plain text, deterministic).

use std::fmt::Write as _;

use miette::{
    Diagnostic as MietteDiagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan,
    NamedSource, SourceSpan,
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

/// A set of diagnostics against one source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    pub file: String,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &str, source: &str) -> Diagnostics {
        Diagnostics {
            file: file.to_string(),
            source: source.to_string(),
            items: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.source, offset)
    }

    /// Sort by position (stable for equal positions) so output does not depend on check order.
    pub fn sort(&mut self) {
        self.items.sort_by_key(|d| (d.span.offset(), d.span.len()));
        self.items.dedup();
    }

    /// Render all diagnostics: a `file:line:col: error: message` line for grep-friendly CI logs,
    /// then miette's snippet. No colours, no terminal-width dependence.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .with_links(false);
        for d in &self.items {
            let (line, col) = self.line_col(d.span.offset());
            let _ = writeln!(out, "{}:{}:{}: error: {}", self.file, line, col, d.message);
            let report = Rendered {
                message: d.message.clone(),
                help: d.help.clone(),
                label: LabeledSpan::new_with_span(
                    Some(d.label.clone()),
                    clamp(d.span, &self.source),
                ),
                src: NamedSource::new(&self.file, self.source.clone()),
            };
            let mut snippet = String::new();
            if handler.render_report(&mut snippet, &report).is_ok() {
                out.push_str(&snippet);
            }
            out.push('\n');
        }
        let n = self.items.len();
        let _ = writeln!(
            out,
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.file
        );
        out
    }
}

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

fn clamp(span: SourceSpan, source: &str) -> SourceSpan {
    let start = span.offset().min(source.len());
    let end = (span.offset() + span.len()).min(source.len());
    SourceSpan::new(start.into(), end - start)
}

#[derive(Debug)]
struct Rendered {
    message: String,
    help: Option<String>,
    label: LabeledSpan,
    src: NamedSource<String>,
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
    for c in candidates {
        let d = edit_distance(name, c);
        let limit = (name.chars().count().max(c.chars().count()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, bc)| d < bd || (d == bd && c < bc)) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| format!("did you mean `{c}`?"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
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
    }
}
