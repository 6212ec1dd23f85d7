//! A fast path for parsing KDL v2 into [`kdl::KdlDocument`].
//!
//! `kdl` 6.7's `KdlDocument::parse_v2` is correct but slow (about 1.2 µs per byte). This crate
//! parses the subset of KDL v2 that tsk8s specs and lock files use with a hand-written,
//! byte-level recursive-descent parser that mirrors the structure of `kdl`'s own v2 grammar
//! (`kdl-6.7.1/src/v2_parser.rs`), so that it builds *the same* document.
//!
//! # Contract
//!
//! [`parse_fast`] returns `Some(doc)` only when `doc` equals what `parse_v2` returns (`Ok`) in
//! everything a consumer reads: node names, type annotations, entries in order (argument or
//! property, name, value and its `KdlValue` variant), children (`Some(empty)` for `a {}` versus
//! `None`), and every span (document, node, entry, node name, property name, type annotation).
//! Formatting is *not* reproduced: nodes, entries, identifiers and documents carry no format
//! or `repr`, so `to_string()` autoformats instead of echoing the input.
//!
//! It returns `None` when the input is invalid KDL, or uses something the fast path does not
//! handle; the caller then calls `parse_v2` itself (for its result or its diagnostics). [`parse`]
//! does exactly that. The fast path never panics and has no `unsafe`.
//!
//! # Handled
//!
//! Bare identifiers (with the v2 rules: not number-like, not `true`/`false`/`null`/`inf`/`nan`,
//! none of `\/(){}[];"#=`, no spaces, newlines or disallowed code points), quoted strings with
//! every v2 escape (`\n \r \t \\ \" \b \f \s \u{…}` and `\` + whitespace), single-line raw
//! strings `#"…"#`, decimal integers (sign, `_` separators, `i128`), `#true` `#false` `#null`,
//! type annotations `(t)`, `//` and nested `/* */` comments, `/-` on nodes, entries and children
//! blocks, `;` and every v2 newline as terminators, nested children blocks, properties
//! (`key=value`, also `"key"=value` and `key = value` as `parse_v2` allows), the v2 Unicode
//! spaces and newlines, and a leading BOM.
//!
//! # Falls back (returns `None`)
//!
//! Multi-line strings (`"""`, `#"""`), floats, hex/octal/binary integers, integers outside
//! `i128`, `#inf` `#-inf` `#nan`, the identifiers `-inf`/`+inf`, line continuations (`\` outside
//! a string), nesting deeper than [`MAX_DEPTH`] blocks or slashdashes, and every invalid input
//! (unbalanced braces, disallowed code points, bad escapes, unterminated strings or comments, …).

#![forbid(unsafe_code)]

pub mod compare;

use kdl::{KdlDocument, KdlEntry, KdlError, KdlIdentifier, KdlNode, KdlValue};

/// Blocks (`{`) and chained slashdashed entries nested deeper than this fall back.
pub const MAX_DEPTH: u32 = 128;

/// Parse `text` as KDL v2. `Some(doc)` only when the result is identical to what
/// `kdl::KdlDocument::parse_v2(text)` returns (`Ok`), spans included (formatting excluded);
/// `None` when the input is invalid or uses anything the fast path does not handle — the caller
/// then calls `parse_v2` itself (for its diagnostics) — or is over one of the [`Limits`]. Never
/// panics on any input.
pub fn parse_fast(text: &str) -> Option<KdlDocument> {
    parse_fast_checked(text).ok()
}

/// Most nodes (children and slashdashed ones included) the fast path builds for one text.
/// A tsk8s spec or lock has a few per exposure, and a node costs about half a kilobyte in
/// `kdl`'s document.
pub const MAX_NODES: usize = 250_000;
/// Most entries (arguments and properties) of one node.
pub const MAX_NODE_ENTRIES: usize = 100_000;
/// Most entries in all (about 300 bytes each in `kdl`'s document).
pub const MAX_ENTRIES: usize = 1_000_000;

/// Why [`parse_fast_checked`] did not give a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Over a limit ([`MAX_NODES`], [`MAX_NODE_ENTRIES`], [`MAX_ENTRIES`]): `what` is the
    /// message, `at` the byte offset of the node or entry that went over.
    Limit { what: &'static str, at: usize },
    /// Invalid, or outside the fast path's subset. `far` is the furthest byte the parser looked
    /// at (where the problem is, or just past it); `top` the end of the last complete top-level
    /// node before it (a place where a document may start).
    Syntax { far: usize, top: usize },
}

/// [`parse_fast`], saying why not.
pub fn parse_fast_checked(text: &str) -> Result<KdlDocument, Rejected> {
    let mut blank = KdlNode::new("");
    blank.clear_format();
    let mut p = Parser {
        s: text,
        b: text.as_bytes(),
        depth: 0,
        blank,
        entries: Vec::with_capacity(32),
        nodes: Vec::with_capacity(64),
        far: std::cell::Cell::new(0),
        top: 0,
        node_count: 0,
        entry_count: 0,
        over: None,
    };
    match p.document() {
        Ok(doc) => Ok(doc),
        Err(_) => Err(match p.over {
            Some((what, at)) => Rejected::Limit { what, at },
            None => Rejected::Syntax {
                far: p.far.get().min(text.len()),
                top: p.top,
            },
        }),
    }
}

/// Texts the fast path rejects up to this size go to `parse_v2` whole (about 1.2 µs per byte:
/// about a second); larger ones only in a window around the fast path's error.
pub const FALLBACK_WHOLE: usize = 1 << 20;
/// The window's reach before and after the line of the error, for larger texts.
pub const FALLBACK_WINDOW: usize = 128 << 10;

/// Slashdashes (`/-`) in a text the fast path rejected beyond which [`parse`] does not hand the
/// text to `parse_v2` as is. See [`parse`].
pub const SLASHDASH_LIMIT: usize = 8;

/// [`parse_fast`], falling back to `kdl::KdlDocument::parse_v2`, with `parse_v2`'s error
/// recovery kept from blowing up.
///
/// A document is always exactly `parse_v2`'s. Errors differ from `parse_v2`'s in two ways:
///
/// - Diagnostics are deduplicated (same span and message; first occurrence and order kept).
/// - `kdl` 6.7.1's error recovery doubles its work and its (duplicate) diagnostics for every
///   slashdashed block enclosing an error: `/-{"` on twelve lines gives 20,475 diagnostics, and
///   1 KB of such text takes seconds and a million diagnostics. So a rejected text with more
///   than [`SLASHDASH_LIMIT`] slashdashes is not given to `parse_v2` as is:
///   1. `parse_v2` sees a copy with every `/-` replaced by two spaces (same length, so spans
///      still point into `text`). Slashdashed text must be valid KDL too, so the copy's errors
///      are errors of `text`; they are reported. (Errors that only slashdashes cause, such as a
///      dangling `/-`, show up once those are fixed.)
///   2. If the copy is valid and the fast path takes it, `text` is invalid only because of
///      where its slashdashes stand. The fast path, run with the first `k` slashdashes real
///      and the rest blanked, finds the first one that breaks it (binary search, linear
///      passes), and that slashdash is reported.
///   3. Otherwise (the copy is valid but uses syntax outside the fast path: floats, multi-line
///      strings, …) `text` goes to `parse_v2` as is.
///
/// Bounded at any size: a text over one of the [`Limits`](MAX_NODES) is refused at the node or
/// entry that goes over (one diagnostic, `parse_v2` not called), and a rejected text over
/// [`FALLBACK_WHOLE`] goes to `parse_v2` only in a window (see [`parse_window`]).
pub fn parse(text: &str) -> Result<KdlDocument, KdlError> {
    match parse_fast_checked(text) {
        Ok(doc) => Ok(doc),
        Err(Rejected::Limit { what, at }) => Err(one_error(
            text,
            at,
            what.to_string(),
            "over the limit",
            "a tsk8s spec or lock file holds a few nodes per exposure; this does not look like one",
        )),
        Err(Rejected::Syntax { far, top }) if text.len() > FALLBACK_WHOLE => {
            Err(parse_window(text, far, top))
        }
        Err(Rejected::Syntax { .. }) => parse_small(text),
    }
}

/// One error at byte `at` of `text`.
fn one_error(text: &str, at: usize, message: String, label: &str, help: &str) -> KdlError {
    let input = std::sync::Arc::new(text.to_owned());
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let len = text[at..].chars().next().map_or(0, char::len_utf8);
    KdlError {
        input: input.clone(),
        diagnostics: vec![kdl::KdlDiagnostic {
            input,
            span: (at, len).into(),
            message: Some(message),
            label: Some(label.into()),
            help: Some(help.into()),
            severity: miette::Severity::Error,
        }],
    }
}

/// The errors of a rejected text over [`FALLBACK_WHOLE`], in bounded time: `parse_v2` reads
/// only `text[start..end]`, from the end of the last complete top-level node before the fast
/// path's furthest point `far` (or [`FALLBACK_WINDOW`] before `far`'s line, at a line start,
/// when that node is longer) to [`FALLBACK_WINDOW`] past `far`'s line (at a line end). Its
/// errors up to the end of `far`'s line are reported, moved to their place in `text` (errors
/// further on may come from cutting the text). If it reports none there (the window is valid, or
/// uses syntax the fast path leaves to `parse_v2`: floats, multi-line strings, `\` line
/// continuations), one error at `far` says so.
pub fn parse_window(text: &str, far: usize, top: usize) -> KdlError {
    let b = text.as_bytes();
    let far = far.min(text.len());
    let line_start = |p: usize| {
        b[..p]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1)
    };
    let line_end = |p: usize| {
        b[p..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(text.len(), |i| p + i + 1)
    };
    let far_line = line_start(far);
    let far_end = line_end(far);
    let mut start = top.min(far_line);
    if far_line - start > FALLBACK_WINDOW {
        start = line_start(far_line - FALLBACK_WINDOW);
    }
    let end = line_end((far_end + FALLBACK_WINDOW).min(text.len()));
    // Line starts and ends are ASCII boundaries; `top` is the end of a node: char boundaries.
    let window = text.get(start..end).unwrap_or_default();
    let cut = end < text.len();
    let mut kept = Vec::new();
    if let Err(err) = parse_small(window) {
        for mut d in err.diagnostics {
            let at = start + d.span.offset();
            if cut && at >= far_end {
                continue;
            }
            d.span = (at, d.span.len()).into();
            kept.push(d);
        }
    }
    if kept.is_empty() {
        return one_error(
            text,
            far,
            "invalid KDL, or KDL that files over 1 MiB may not use".into(),
            "here",
            "files over 1 MiB are read by tsk8s's own KDL parser only: no floats, multi-line strings or `\\` line continuations",
        );
    }
    let input = std::sync::Arc::new(text.to_owned());
    for d in &mut kept {
        d.input = input.clone();
    }
    KdlError {
        input,
        diagnostics: kept,
    }
}

/// `parse_v2` for a text the fast path rejected (with the slashdash guard; see [`parse`]).
fn parse_small(text: &str) -> Result<KdlDocument, KdlError> {
    let dashes: Vec<usize> = text.match_indices("/-").map(|(i, _)| i).collect();
    let result = if dashes.len() > SLASHDASH_LIMIT {
        parse_many_slashdashes(text, &dashes)
    } else {
        KdlDocument::parse_v2(text)
    };
    result.map_err(|mut err| {
        let mut seen = std::collections::HashSet::new();
        err.diagnostics
            .retain(|d| seen.insert((d.span.offset(), d.span.len(), d.message.clone())));
        err
    })
}

/// `text` with the slashdashes at `dashes[keep..]` replaced by two spaces.
fn blank_slashdashes(text: &str, dashes: &[usize], keep: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for &at in dashes.get(keep..).unwrap_or_default() {
        if let Some(d) = bytes.get_mut(at..at + 2) {
            d.copy_from_slice(b"  ");
        }
    }
    String::from_utf8(bytes).expect("only ASCII `/-` became ASCII spaces: still UTF-8")
}

/// Steps 1–3 of [`parse`] for a rejected text with many slashdashes at `dashes`.
fn parse_many_slashdashes(text: &str, dashes: &[usize]) -> Result<KdlDocument, KdlError> {
    let input = std::sync::Arc::new(text.to_owned());
    let blanked = blank_slashdashes(text, dashes, 0);
    match KdlDocument::parse_v2(&blanked) {
        Err(mut err) => {
            for d in &mut err.diagnostics {
                d.input = input.clone();
            }
            err.input = input;
            return Err(err);
        }
        Ok(_) if parse_fast(&blanked).is_none() => return KdlDocument::parse_v2(text),
        Ok(_) => {}
    }
    // With the first `lo` slashdashes real the fast path succeeds, with the first `hi` it fails.
    let (mut lo, mut hi) = (0, dashes.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if parse_fast(&blank_slashdashes(text, dashes, mid)).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let at = dashes.get(hi - 1).copied().unwrap_or(0);
    Err(KdlError {
        input: input.clone(),
        diagnostics: vec![kdl::KdlDiagnostic {
            input,
            span: (at, 2).into(),
            message: Some("misplaced slashdash: nothing it may comment out follows it".into()),
            label: Some("this `/-`".into()),
            help: Some(
                "`/-` comments out the node, argument, property or children block right after it"
                    .into(),
            ),
            severity: miette::Severity::Error,
        }],
    })
}

/// Why a sub-parser did not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// Not this construct here; the caller may try something else (a winnow backtrack in
    /// `kdl`'s parser, on a path that can still succeed).
    Back,
    /// Invalid, unsupported or doubtful: give up and let `parse_v2` decide.
    Bail,
}
use Fail::{Back, Bail};

type R<T> = Result<T, Fail>;

/// Characters `kdl` treats as `unicode-space`.
fn is_unicode_space(c: char) -> bool {
    matches!(
        c,
        '\t' | ' ' | '\u{A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

/// Characters that start a `newline` (`\r\n` is one newline).
fn is_newline(c: char) -> bool {
    matches!(
        c,
        '\r' | '\n' | '\u{85}' | '\u{0B}' | '\u{0C}' | '\u{2028}' | '\u{2029}'
    )
}

/// `kdl`'s `is_disallowed_unicode` (note: it allows U+007F).
fn is_disallowed(c: char) -> bool {
    matches!(c,
        '\u{0000}'..='\u{0008}'
        | '\u{000E}'..='\u{001F}'
        | '\u{200E}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{FEFF}'
    )
}

/// `identifier-char`.
fn is_ident_char(c: char) -> bool {
    !(is_unicode_space(c)
        || is_newline(c)
        || is_disallowed(c)
        || matches!(
            c,
            '\\' | '/' | '(' | ')' | '{' | '}' | '[' | ']' | ';' | '"' | '#' | '='
        ))
}

/// `is_ident_char` for ASCII, as a table.
const ASCII_IDENT: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = i >= 0x21
            && !matches!(
                i as u8,
                b'\\' | b'/' | b'(' | b')' | b'{' | b'}' | b'[' | b']' | b';' | b'"' | b'#' | b'='
            );
        i += 1;
    }
    t
};

/// The items pushed on `stack` since it had `mark` items, in an exactly-sized vector moved in one
/// copy (`split_off`). Never panics: a mark past the end (impossible) bails.
fn take_from<T>(stack: &mut Vec<T>, mark: usize) -> R<Vec<T>> {
    if mark > stack.len() {
        return Err(Bail);
    }
    Ok(stack.split_off(mark))
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    depth: u32,
    /// A node without format, cloned for each node (`KdlNode::new` allocates a format).
    blank: KdlNode,
    /// Scratch stacks of finished entries and nodes, moved into exactly-sized vectors when
    /// their node or document is complete (kdl's entries and nodes are large structs).
    entries: Vec<KdlEntry>,
    nodes: Vec<KdlNode>,
    /// The furthest byte looked at (for locating a rejection).
    far: std::cell::Cell<usize>,
    /// End of the last complete top-level node.
    top: usize,
    node_count: usize,
    entry_count: usize,
    /// The limit that stopped the parse, and where.
    over: Option<(&'static str, usize)>,
}

impl Parser<'_> {
    #[inline]
    fn look(&self, p: usize) {
        if p > self.far.get() {
            self.far.set(p);
        }
    }

    #[inline]
    fn at(&self, p: usize) -> Option<u8> {
        self.look(p);
        self.b.get(p).copied()
    }

    #[inline]
    fn starts(&self, p: usize, pat: &[u8]) -> bool {
        self.look(p);
        self.b.get(p..).is_some_and(|r| r.starts_with(pat))
    }

    /// The char at byte `p` (None at the end or off a char boundary).
    #[inline]
    fn ch(&self, p: usize) -> Option<char> {
        self.look(p);
        self.s.get(p..)?.chars().next()
    }

    /// Stop at a limit (the parse bails; [`parse_fast_checked`] reports it).
    fn over(&mut self, what: &'static str, at: usize) -> Fail {
        self.over.get_or_insert((what, at));
        Bail
    }

    fn is_digit(&self, p: usize) -> bool {
        self.at(p).is_some_and(|c| c.is_ascii_digit())
    }

    /// Length of a `unicode-space` at `p`, 0 if none.
    #[inline]
    fn space_len(&self, p: usize) -> usize {
        match self.at(p) {
            Some(b' ' | b'\t') => 1,
            Some(c) if c >= 0x80 => match self.ch(p) {
                Some(c) if is_unicode_space(c) => c.len_utf8(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Length of a `newline` at `p`, 0 if none.
    #[inline]
    fn newline_len(&self, p: usize) -> usize {
        match self.at(p) {
            Some(b'\r') => {
                if self.at(p + 1) == Some(b'\n') {
                    2
                } else {
                    1
                }
            }
            Some(b'\n' | 0x0B | 0x0C) => 1,
            Some(c) if c >= 0x80 => match self.ch(p) {
                Some(c @ ('\u{85}' | '\u{2028}' | '\u{2029}')) => c.len_utf8(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// `multi-line-comment` starting at `p` (which holds `/*`); returns its end.
    fn block_comment(&self, p: usize) -> R<usize> {
        let mut i = p + 2;
        let mut depth = 1usize;
        loop {
            let rest = self.b.get(i..).ok_or(Bail)?;
            let off = rest
                .iter()
                .position(|&c| c == b'*' || c == b'/')
                .ok_or(Bail)?;
            let q = i + off;
            match (self.at(q), self.at(q + 1)) {
                (Some(b'*'), Some(b'/')) => {
                    depth -= 1;
                    i = q + 2;
                    if depth == 0 {
                        return Ok(i);
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    depth += 1;
                    i = q + 2;
                }
                _ => i = q + 1,
            }
        }
    }

    /// `single-line-comment` starting at `p` (which holds `//`); returns its end (after the
    /// newline, if any).
    fn line_comment(&self, p: usize) -> usize {
        let mut i = p + 2;
        loop {
            match self.at(i) {
                None => return i,
                Some(b'\n' | 0x0B | 0x0C | b'\r' | 0xC2 | 0xE2) => {
                    let n = self.newline_len(i);
                    if n > 0 {
                        return i + n;
                    }
                    i += 1;
                }
                Some(_) => i += 1,
            }
        }
    }

    /// One `ws` (unicode-space or multi-line comment) at `p`: its length, 0 if none.
    #[inline]
    fn ws(&self, p: usize) -> R<usize> {
        let n = self.space_len(p);
        if n > 0 {
            return Ok(n);
        }
        if self.starts(p, b"/*") {
            return Ok(self.block_comment(p)? - p);
        }
        Ok(0)
    }

    /// `node-space*`. A `\` here would be a line continuation (escline): unsupported.
    fn node_space0(&self, mut p: usize) -> R<usize> {
        loop {
            let n = self.ws(p)?;
            if n == 0 {
                if self.at(p) == Some(b'\\') {
                    return Err(Bail);
                }
                return Ok(p);
            }
            p += n;
        }
    }

    /// `line-space*`.
    fn line_space0(&self, mut p: usize) -> R<usize> {
        loop {
            let n = self.ws(p)?;
            if n > 0 {
                p += n;
                continue;
            }
            let n = self.newline_len(p);
            if n > 0 {
                p += n;
                continue;
            }
            if self.starts(p, b"//") {
                p = self.line_comment(p);
                continue;
            }
            if self.at(p) == Some(b'\\') {
                return Err(Bail);
            }
            return Ok(p);
        }
    }

    /// `node-terminator` (`;`, newline or single-line comment; not eof): its end.
    fn node_terminator(&self, p: usize) -> Option<usize> {
        if self.at(p) == Some(b';') {
            return Some(p + 1);
        }
        let n = self.newline_len(p);
        if n > 0 {
            return Some(p + n);
        }
        if self.starts(p, b"//") {
            return Some(self.line_comment(p));
        }
        None
    }

    /// `slashdash := '/-' line-space*`.
    fn slashdash(&self, p: usize) -> R<usize> {
        if !self.starts(p, b"/-") {
            return Err(Back);
        }
        self.line_space0(p + 2)
    }

    /// `kdl`'s `value_terminator_check` after strings and numbers: the next thing must be eof,
    /// `=`, `)`, `{`, `}`, node-space or a node terminator.
    fn value_term(&self, p: usize) -> R<()> {
        match self.at(p) {
            None | Some(b'=' | b')' | b'{' | b'}' | b';') => Ok(()),
            Some(b'/') => match self.at(p + 1) {
                Some(b'/') => Ok(()),
                Some(b'*') => self.block_comment(p).map(|_| ()),
                _ => Err(Bail),
            },
            Some(_) => {
                if self.space_len(p) > 0 || self.newline_len(p) > 0 {
                    Ok(())
                } else {
                    Err(Bail)
                }
            }
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail);
        }
        Ok(())
    }

    /// `document := bom? nodes`, then end of input.
    fn document(&mut self) -> R<KdlDocument> {
        let start = if self.s.starts_with('\u{FEFF}') { 3 } else { 0 };
        let (doc, end) = self.nodes(start)?;
        if end != self.b.len() {
            return Err(Bail);
        }
        Ok(doc)
    }

    /// `nodes`: leading line-space and slashdashed nodes, nodes separated by terminators, an
    /// optional terminator, trailing line-space and slashdashed nodes. The document's span runs
    /// from the first node to the end of the last one.
    fn nodes(&mut self, p: usize) -> R<(KdlDocument, usize)> {
        let start = self.leading(p)?;
        let mark = self.nodes.len();
        let mut end = start;
        match self.node(start) {
            Ok(q) => {
                end = q;
                if self.depth == 0 {
                    self.top = end;
                }
                while let Some(q) = self.node_terminator(end) {
                    match self.node(q) {
                        Ok(q) => {
                            end = q;
                            if self.depth == 0 {
                                self.top = end;
                            }
                        }
                        Err(Back) => break,
                        Err(Bail) => return Err(Bail),
                    }
                }
            }
            Err(Back) => {}
            Err(Bail) => return Err(Bail),
        }
        let mut doc = KdlDocument::new();
        // `split_off` allocates exactly and moves the structs in one copy.
        *doc.nodes_mut() = take_from(&mut self.nodes, mark)?;
        doc.set_span(start..end);
        let mut p = end;
        if let Some(q) = self.node_terminator(p) {
            p = q;
        }
        let p = self.leading(p)?;
        Ok((doc, p))
    }

    /// `(line-space | slashdash base-node)*`.
    fn leading(&mut self, mut p: usize) -> R<usize> {
        loop {
            p = self.line_space0(p)?;
            if !self.starts(p, b"/-") {
                return Ok(p);
            }
            let q = self.slashdash(p)?;
            // A slashdash not followed by a node is an error.
            p = self.base_node(q, false).map_err(|_| Bail)?;
        }
    }

    /// `node`: leading line-space and slashdashed nodes, then a node (pushed on `self.nodes`).
    fn node(&mut self, p: usize) -> R<usize> {
        let p = self.leading(p)?;
        self.base_node(p, true)
    }

    /// `base-node`. `Back` only at `}` or eof. The span runs from the type annotation or name
    /// through entries, children and trailing node-space, excluding the terminator. Pushed on
    /// `self.nodes` when `keep` (not slashdashed).
    fn base_node(&mut self, start: usize, keep: bool) -> R<usize> {
        match self.at(start) {
            None | Some(b'}') => return Err(Back),
            Some(b'{') => return Err(Bail),
            _ => {}
        }
        let mut p = start;
        let ty = if self.at(p) == Some(b'(') {
            let (t, q) = self.ty(p)?;
            p = q;
            Some(t)
        } else {
            None
        };
        p = self.node_space0(p)?;
        let (name, q) = self.identifier(p).map_err(|_| Bail)?;
        p = q;
        self.node_count += 1;
        if self.node_count > MAX_NODES {
            return Err(self.over("more than 250,000 nodes", start));
        }
        let mut node = self.blank.clone();
        node.set_name(name);
        if let Some(t) = ty {
            node.set_ty(t);
        }
        // (node-space+ node-prop-or-arg)*
        let mark = self.entries.len();
        loop {
            let q = self.node_space0(p)?;
            if q == p {
                break;
            }
            match self.node_entry(q, true) {
                Ok(r) => {
                    self.entry_count += 1;
                    if self.entries.len() - mark > MAX_NODE_ENTRIES {
                        return Err(self.over("more than 100,000 entries in one node", q));
                    }
                    if self.entry_count > MAX_ENTRIES {
                        return Err(self.over("more than 1,000,000 entries", q));
                    }
                    p = r
                }
                Err(Back) => break,
                Err(Bail) => return Err(Bail),
            }
        }
        *node.entries_mut() = take_from(&mut self.entries, mark)?;
        let q = self.before_node_children(p)?;
        if self.at(q) == Some(b'{') {
            let (kids, r) = self.node_children(q)?;
            node.set_children(kids);
            p = r;
            match self.slashdashed_children(p) {
                Ok(r) => p = r,
                Err(Back) => {}
                Err(Bail) => return Err(Bail),
            }
        } else {
            p = q;
        }
        p = self.node_space0(p)?;
        node.set_span(start..p);
        if keep {
            self.nodes.push(node);
        }
        Ok(p)
    }

    /// `kdl`'s `before_node_children`: trailing slashdashed entries and/or slashdashed children
    /// blocks, then node-space.
    fn before_node_children(&mut self, p: usize) -> R<usize> {
        let p1 = self.node_space0(p)?;
        if p1 > p {
            match self.slashdashed_entries(p1) {
                Ok(p2) => {
                    let p3 = self.node_space0(p2)?;
                    if p3 > p2 {
                        match self.slashdashed_children(p3) {
                            Ok(p4) => return self.node_space0(p4),
                            Err(Back) => {}
                            Err(Bail) => return Err(Bail),
                        }
                    }
                    return self.node_space0(p2);
                }
                Err(Back) => match self.slashdashed_children(p1) {
                    Ok(p2) => return self.node_space0(p2),
                    Err(Back) => {}
                    Err(Bail) => return Err(Bail),
                },
                Err(Bail) => return Err(Bail),
            }
        }
        Ok(p1)
    }

    /// `slashdash node-entry (node-space+ slashdash node-entry)*`, results discarded.
    fn slashdashed_entries(&mut self, p: usize) -> R<usize> {
        self.enter()?;
        let r = self.slashdashed_entries_inner(p);
        self.depth -= 1;
        r
    }

    fn slashdashed_entries_inner(&mut self, p: usize) -> R<usize> {
        let q = self.slashdash(p)?;
        let mut p = self.node_entry(q, false)?;
        loop {
            let q = self.node_space0(p)?;
            if q == p || !self.starts(q, b"/-") {
                return Ok(p);
            }
            let r = self.slashdash(q)?;
            match self.node_entry(r, false) {
                Ok(r) => p = r,
                Err(Back) => return Ok(p),
                Err(Bail) => return Err(Bail),
            }
        }
    }

    /// `node-space* slashdash node-children (node-space+ slashdash node-children)*`, discarded.
    fn slashdashed_children(&mut self, p: usize) -> R<usize> {
        let q = self.node_space0(p)?;
        let q = self.slashdash(q)?;
        if self.at(q) != Some(b'{') {
            return Err(Back);
        }
        let (_, mut p) = self.node_children(q)?;
        loop {
            let q = self.node_space0(p)?;
            if q == p || !self.starts(q, b"/-") {
                return Ok(p);
            }
            let r = self.slashdash(q)?;
            if self.at(r) != Some(b'{') {
                return Ok(p);
            }
            let (_, r) = self.node_children(r)?;
            p = r;
        }
    }

    /// `node-children := '{' nodes '}'` at `p` (which holds `{`).
    fn node_children(&mut self, p: usize) -> R<(KdlDocument, usize)> {
        self.enter()?;
        let (doc, q) = self.nodes(p + 1)?;
        self.depth -= 1;
        if self.at(q) != Some(b'}') {
            return Err(Bail);
        }
        Ok((doc, q + 1))
    }

    /// `node-entry`: node-space, optional slashdashed entries (followed by node-space), then a
    /// property or an argument. The span excludes everything before the key or value. Pushed on
    /// `self.entries` when `keep` (not slashdashed).
    fn node_entry(&mut self, p: usize, keep: bool) -> R<usize> {
        let mut p = self.node_space0(p)?;
        if self.starts(p, b"/-") {
            match self.slashdashed_entries(p) {
                Ok(q) => {
                    let r = self.node_space0(q)?;
                    if r > q {
                        p = r;
                    }
                }
                Err(Back) => {}
                Err(Bail) => return Err(Bail),
            }
        }
        let start = p;
        let (name, ty, value, end) = match self.string(p) {
            Ok((key, q)) => {
                let r = self.node_space0(q)?;
                if self.at(r) == Some(b'=') {
                    let v = self.node_space0(r + 1)?;
                    let (ty, value, end) = self.value(v).map_err(|_| Bail)?;
                    let mut key = KdlIdentifier::from(key);
                    key.set_span(start..q);
                    (Some(key), ty, value, end)
                } else {
                    (None, None, KdlValue::String(key), q)
                }
            }
            Err(Back) => {
                let (ty, value, end) = self.value(p)?;
                (None, ty, value, end)
            }
            Err(Bail) => return Err(Bail),
        };
        if keep {
            let mut e = KdlEntry::new(value);
            if name.is_some() {
                e.set_name(name);
            }
            if let Some(t) = ty {
                e.set_ty(t);
            }
            e.set_span(start..end);
            self.entries.push(e);
        }
        Ok(end)
    }

    /// `value := type? node-space* (keyword | number | string)`; the span includes the type.
    fn value(&mut self, start: usize) -> R<(Option<KdlIdentifier>, KdlValue, usize)> {
        let mut p = start;
        let ty = if self.at(p) == Some(b'(') {
            let (t, q) = self.ty(p)?;
            p = self.node_space0(q)?;
            Some(t)
        } else {
            None
        };
        let (v, end) = match self.bare_value(p) {
            Ok(x) => x,
            Err(Back) if ty.is_some() => return Err(Bail),
            Err(e) => return Err(e),
        };
        Ok((ty, v, end))
    }

    fn bare_value(&self, p: usize) -> R<(KdlValue, usize)> {
        match self.at(p) {
            Some(b'#') if !matches!(self.at(p + 1), Some(b'#' | b'"')) => {
                // Keywords have no terminator check in `kdl`.
                if self.starts(p, b"#true") {
                    Ok((KdlValue::Bool(true), p + 5))
                } else if self.starts(p, b"#false") {
                    Ok((KdlValue::Bool(false), p + 6))
                } else if self.starts(p, b"#null") {
                    Ok((KdlValue::Null, p + 5))
                } else {
                    Err(Bail) // #inf, #-inf, #nan (floats) or an invalid keyword
                }
            }
            Some(b'0'..=b'9') => self.integer(p),
            Some(b'+' | b'-') if self.is_digit(p + 1) => self.integer(p),
            _ => self.string(p).map(|(s, q)| (KdlValue::String(s), q)),
        }
    }

    /// `sign? digit (digit | '_')*`, then a value terminator. Floats, radix prefixes and
    /// overflow bail.
    fn integer(&self, mut p: usize) -> R<(KdlValue, usize)> {
        let neg = match self.at(p) {
            Some(b'-') => {
                p += 1;
                true
            }
            Some(b'+') => {
                p += 1;
                false
            }
            _ => false,
        };
        if !self.is_digit(p) {
            return Err(Bail);
        }
        if self.at(p) == Some(b'0')
            && matches!(
                self.at(p + 1),
                Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
            )
        {
            return Err(Bail);
        }
        let mut v: i128 = 0;
        while let Some(c) = self.at(p) {
            match c {
                b'0'..=b'9' => {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(i128::from(c - b'0')))
                        .ok_or(Bail)?;
                }
                b'_' => {}
                _ => break,
            }
            p += 1;
        }
        if matches!(self.at(p), Some(b'.' | b'e' | b'E')) {
            return Err(Bail);
        }
        self.value_term(p)?;
        Ok((KdlValue::Integer(if neg { -v } else { v }), p))
    }

    /// `type := '(' node-space* string node-space* ')'` at `p` (which holds `(`).
    fn ty(&self, p: usize) -> R<(KdlIdentifier, usize)> {
        let p = self.node_space0(p + 1)?;
        let (t, q) = self.identifier(p).map_err(|_| Bail)?;
        if self.at(q) != Some(b')') && self.ws(q)? == 0 {
            return Err(Bail);
        }
        let r = self.node_space0(q)?;
        if self.at(r) != Some(b')') {
            return Err(Bail);
        }
        Ok((t, r + 1))
    }

    fn identifier(&self, p: usize) -> R<(KdlIdentifier, usize)> {
        let (s, q) = self.string(p)?;
        let mut id = KdlIdentifier::from(s);
        id.set_span(p..q);
        Ok((id, q))
    }

    /// `string := identifier-string | raw-string | quoted-string`, followed by a value
    /// terminator. `Back` when nothing string-like starts here (or it is a number).
    fn string(&self, p: usize) -> R<(String, usize)> {
        let (s, q) = match self.at(p) {
            Some(b'"') => self.quoted(p)?,
            Some(b'#') => {
                if !matches!(self.at(p + 1), Some(b'#' | b'"')) {
                    return Err(Back);
                }
                self.raw(p)?
            }
            _ => {
                let q = self.ident_end(p);
                if q == p {
                    return Err(Back);
                }
                let r = self.b.get(p..q).ok_or(Bail)?;
                let second_is_digit = r.get(1).is_some_and(|c| c.is_ascii_digit());
                match r.first().copied().unwrap_or(0) {
                    b'0'..=b'9' => return Err(Back),
                    b'+' | b'-' => {
                        if second_is_digit {
                            return Err(Back);
                        }
                        if r.get(1) == Some(&b'.') && r.get(2).is_some_and(|c| c.is_ascii_digit()) {
                            return Err(Bail);
                        }
                    }
                    b'.' if second_is_digit => return Err(Bail),
                    _ => {}
                }
                if matches!(
                    r,
                    b"true" | b"false" | b"null" | b"inf" | b"-inf" | b"+inf" | b"nan"
                ) {
                    return Err(Bail);
                }
                (self.s.get(p..q).ok_or(Bail)?.to_string(), q)
            }
        };
        self.value_term(q)?;
        Ok((s, q))
    }

    /// End of the run of `identifier-char`s starting at `p`.
    fn ident_end(&self, mut p: usize) -> usize {
        loop {
            match self.at(p) {
                Some(c) if c < 0x80 && ASCII_IDENT[usize::from(c)] => p += 1,
                Some(c) if c < 0x80 => return p,
                Some(_) => match self.ch(p) {
                    Some(c) if is_ident_char(c) => p += c.len_utf8(),
                    _ => return p,
                },
                None => return p,
            }
        }
    }

    /// Single-line quoted string at `p` (which holds `"`): value and end.
    fn quoted(&self, p: usize) -> R<(String, usize)> {
        if self.at(p + 1) == Some(b'"') && self.at(p + 2) == Some(b'"') {
            return Err(Bail); // multi-line string (or `"""`, an error)
        }
        let body = p + 1;
        let mut seg = body;
        let mut out: Option<String> = None;
        let mut i = body;
        loop {
            // Skip plain printable ASCII in a tight loop.
            i += self
                .b
                .get(i..)
                .ok_or(Bail)?
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x7F).contains(&c))
                .ok_or(Bail)?;
            let c = self.at(i).ok_or(Bail)?;
            match c {
                b'"' => break,
                b'\\' => {
                    let buf = out.get_or_insert_with(String::new);
                    buf.push_str(self.s.get(seg..i).ok_or(Bail)?);
                    i = self.escape(i + 1, buf)?;
                    seg = i;
                }
                b'\t' | 0x20..=0x7F => i += 1,
                0x00..=0x1F => return Err(Bail), // newlines and disallowed controls
                _ => {
                    let ch = self.ch(i).ok_or(Bail)?;
                    if is_newline(ch) || is_disallowed(ch) {
                        return Err(Bail);
                    }
                    i += ch.len_utf8();
                }
            }
        }
        let tail = self.s.get(seg..i).ok_or(Bail)?;
        let value = match out {
            Some(mut buf) => {
                buf.push_str(tail);
                buf
            }
            None => tail.to_string(),
        };
        Ok((value, i + 1))
    }

    /// An escape after the `\` (at `p`): appends its value to `buf`, returns its end.
    fn escape(&self, p: usize, buf: &mut String) -> R<usize> {
        // Whitespace escape: `\` followed by unicode-space or newline, one or more.
        let mut q = p;
        loop {
            let n = self.space_len(q).max(self.newline_len(q));
            if n == 0 {
                break;
            }
            q += n;
        }
        if q > p {
            return Ok(q);
        }
        let c = match self.at(p).ok_or(Bail)? {
            b'\\' => '\\',
            b'"' => '"',
            b'b' => '\u{08}',
            b'f' => '\u{0C}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b's' => ' ',
            b'u' => {
                if self.at(p + 1) != Some(b'{') {
                    return Err(Bail);
                }
                let mut v: u32 = 0;
                let mut i = p + 2;
                while i < p + 8 {
                    match self.at(i).and_then(|c| char::from(c).to_digit(16)) {
                        Some(d) => v = v * 16 + d,
                        None => break,
                    }
                    i += 1;
                }
                if i == p + 2 || self.at(i) != Some(b'}') {
                    return Err(Bail);
                }
                buf.push(char::from_u32(v).ok_or(Bail)?);
                return Ok(i + 1);
            }
            _ => return Err(Bail),
        };
        buf.push(c);
        Ok(p + 1)
    }

    /// Single-line raw string at `p` (which holds `#`): value and end.
    fn raw(&self, p: usize) -> R<(String, usize)> {
        let mut i = p;
        while self.at(i) == Some(b'#') {
            i += 1;
        }
        let hashes = i - p;
        if self.at(i) != Some(b'"') || self.starts(i + 1, b"\"\"") {
            return Err(Bail); // no quote, or a multi-line raw string
        }
        let body = i + 1;
        let mut j = body;
        loop {
            let c = self.at(j).ok_or(Bail)?;
            match c {
                b'"' => {
                    let h = self.b.get(j + 1..j + 1 + hashes).ok_or(Bail)?;
                    if h.iter().all(|&c| c == b'#') {
                        break;
                    }
                    j += 1;
                }
                b'\t' | 0x20..=0x7F => j += 1,
                0x00..=0x1F => return Err(Bail),
                _ => {
                    let ch = self.ch(j).ok_or(Bail)?;
                    if is_newline(ch) || is_disallowed(ch) {
                        return Err(Bail);
                    }
                    j += ch.len_utf8();
                }
            }
        }
        let value = self.s.get(body..j).ok_or(Bail)?;
        if value == "\"" {
            return Err(Bail);
        }
        Ok((value.to_string(), j + 1 + hashes))
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn limits_stop_the_parse_where_they_are_passed() {
        let many = "n\n".repeat(MAX_NODES + 1);
        assert_eq!(
            parse_fast_checked(&many).unwrap_err(),
            Rejected::Limit {
                what: "more than 250,000 nodes",
                at: 2 * MAX_NODES
            }
        );
        let e = parse(&many).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1);
        assert_eq!(e.diagnostics[0].span.offset(), 2 * MAX_NODES);
        assert!(parse_fast(&"n\n".repeat(MAX_NODES)).is_some());
        let wide = format!("n{}\n", " a=1".repeat(MAX_NODE_ENTRIES + 1));
        assert_eq!(
            parse_fast_checked(&wide).unwrap_err(),
            Rejected::Limit {
                what: "more than 100,000 entries in one node",
                at: 1 + 4 * MAX_NODE_ENTRIES + 1
            }
        );
        assert!(parse_fast(&format!("n{}\n", " a=1".repeat(MAX_NODE_ENTRIES))).is_some());
        let per = MAX_NODE_ENTRIES / 2;
        let total = format!("n{}\n", " 1".repeat(per)).repeat(MAX_ENTRIES / per + 1);
        assert!(matches!(
            parse_fast_checked(&total),
            Err(Rejected::Limit {
                what: "more than 1,000,000 entries",
                ..
            })
        ));
    }

    #[test]
    fn large_rejected_texts_are_reparsed_in_a_window() {
        let line = "tag \"t\" owner=\"group:sre\"\n";
        let n = FALLBACK_WHOLE / line.len() + 10;
        // An unclosed string on the last line; the text is over FALLBACK_WHOLE.
        let text = format!("{}tag \"unclosed\n", line.repeat(n));
        let Err(Rejected::Syntax { far, top }) = parse_fast_checked(&text) else {
            panic!("rejected");
        };
        assert!(far >= line.len() * n, "{far}");
        assert_eq!(top, line.len() * n - 1);
        let e = parse(&text).unwrap_err();
        assert!(!e.diagnostics.is_empty());
        for d in &e.diagnostics {
            assert!(d.span.offset() >= line.len() * n, "{:?}", d);
        }
        // The same errors as `parse_v2` on the last line alone, moved.
        let alone = KdlDocument::parse_v2("tag \"unclosed\n").unwrap_err();
        assert_eq!(
            e.diagnostics[0].message, alone.diagnostics[0].message,
            "{e:?}"
        );
        assert_eq!(
            e.diagnostics[0].span.offset(),
            line.len() * n + alone.diagnostics[0].span.offset()
        );
        // An error in the middle: errors past its line (from cutting) are not reported.
        let mid = format!(
            "{}a {{\n  b \"x\n}}\n{}",
            line.repeat(n),
            line.repeat(FALLBACK_WINDOW / line.len() * 3)
        );
        let e = parse(&mid).unwrap_err();
        let at = line.len() * n;
        assert!(!e.diagnostics.is_empty());
        for d in &e.diagnostics {
            assert!(
                (at..at + 16).contains(&d.span.offset()),
                "{d:?} (error line at {at})"
            );
        }
        // Valid KDL the fast path leaves to `parse_v2` (a float) is an error over the size.
        let float = format!("{}n 1.5\n", line.repeat(n));
        let e = parse(&float).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1);
        assert!(
            e.diagnostics[0]
                .message
                .as_deref()
                .unwrap()
                .contains("files over 1 MiB"),
            "{e:?}"
        );
        // Under the size the same text parses.
        assert!(parse(&format!("{line}n 1.5\n")).is_ok());
    }
}
