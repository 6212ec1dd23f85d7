//! Comparison of two parsed documents in everything a consumer reads: names, type
//! annotations, entries and values (variant included), children, and every span. Used by the
//! differential tests and the `spec` fuzz target to hold `parse_fast` to `parse_v2`.

use kdl::{KdlDocument, KdlEntry, KdlIdentifier, KdlNode, KdlValue};

macro_rules! span {
    ($x:expr) => {{
        let s = $x.span();
        (s.offset(), s.len())
    }};
}

fn cmp_ident(at: &str, a: &KdlIdentifier, b: &KdlIdentifier) -> Result<(), String> {
    if a.value() != b.value() {
        return Err(format!(
            "{at}: identifier value {:?} != {:?}",
            a.value(),
            b.value()
        ));
    }
    if span!(a) != span!(b) {
        return Err(format!(
            "{at}: identifier {:?} span {:?} != {:?}",
            a.value(),
            span!(a),
            span!(b)
        ));
    }
    Ok(())
}

fn cmp_opt_ident(
    at: &str,
    a: Option<&KdlIdentifier>,
    b: Option<&KdlIdentifier>,
) -> Result<(), String> {
    match (a, b) {
        (None, None) => Ok(()),
        (Some(a), Some(b)) => cmp_ident(at, a, b),
        _ => Err(format!("{at}: {a:?} != {b:?}")),
    }
}

fn cmp_value(at: &str, a: &KdlValue, b: &KdlValue) -> Result<(), String> {
    let same = match (a, b) {
        (KdlValue::String(x), KdlValue::String(y)) => x == y,
        (KdlValue::Integer(x), KdlValue::Integer(y)) => x == y,
        (KdlValue::Float(x), KdlValue::Float(y)) => x.to_bits() == y.to_bits(),
        (KdlValue::Bool(x), KdlValue::Bool(y)) => x == y,
        (KdlValue::Null, KdlValue::Null) => true,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!("{at}: value {a:?} != {b:?}"))
    }
}

fn cmp_entry(at: &str, a: &KdlEntry, b: &KdlEntry) -> Result<(), String> {
    cmp_opt_ident(&format!("{at} name"), a.name(), b.name())?;
    cmp_opt_ident(&format!("{at} type"), a.ty(), b.ty())?;
    cmp_value(at, a.value(), b.value())?;
    if span!(a) != span!(b) {
        return Err(format!("{at}: entry span {:?} != {:?}", span!(a), span!(b)));
    }
    Ok(())
}

fn cmp_node(at: &str, a: &KdlNode, b: &KdlNode) -> Result<(), String> {
    let at = format!("{at}/{}", b.name().value());
    cmp_ident(&format!("{at} name"), a.name(), b.name())?;
    cmp_opt_ident(&format!("{at} type"), a.ty(), b.ty())?;
    if span!(a) != span!(b) {
        return Err(format!("{at}: node span {:?} != {:?}", span!(a), span!(b)));
    }
    if a.entries().len() != b.entries().len() {
        return Err(format!(
            "{at}: {} entries != {}: {:?} vs {:?}",
            a.entries().len(),
            b.entries().len(),
            a.entries(),
            b.entries()
        ));
    }
    for (i, (x, y)) in a.entries().iter().zip(b.entries()).enumerate() {
        cmp_entry(&format!("{at} entry {i}"), x, y)?;
    }
    match (a.children(), b.children()) {
        (None, None) => Ok(()),
        (Some(x), Some(y)) => documents(&at, x, y),
        (x, y) => Err(format!("{at}: children {} != {}", x.is_some(), y.is_some())),
    }
}

/// `Ok` when `fast` equals `slow` in names, types, entries, values, children and all spans.
pub fn documents(at: &str, fast: &KdlDocument, slow: &KdlDocument) -> Result<(), String> {
    if span!(fast) != span!(slow) {
        return Err(format!(
            "{at}: document span {:?} != {:?}",
            span!(fast),
            span!(slow)
        ));
    }
    if fast.nodes().len() != slow.nodes().len() {
        return Err(format!(
            "{at}: {} nodes != {}",
            fast.nodes().len(),
            slow.nodes().len()
        ));
    }
    for (x, y) in fast.nodes().iter().zip(slow.nodes()) {
        cmp_node(at, x, y)?;
    }
    Ok(())
}
