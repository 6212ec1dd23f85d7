//! Time `tsk8s_kdl::parse` (or, with `V2=1`, `kdl`'s `parse_v2`) on files and count its
//! diagnostics: `cargo run --release -p tsk8s-kdl --example kdltime -- FILE...`
use std::time::Instant;

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                std::process::exit(2);
            }
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let t = Instant::now();
        let r = if std::env::var_os("V2").is_some() {
            kdl::KdlDocument::parse_v2(&text)
        } else {
            tsk8s_kdl::parse(&text)
        };
        let el = t.elapsed();
        let d = r.err().map(|e| e.diagnostics).unwrap_or_default();
        if std::env::var_os("SHOW").is_some() {
            for x in &d {
                println!(
                    "  {:?} {:?} {:?}",
                    x.span,
                    x.message,
                    &text.get(x.span.offset()..x.span.offset() + x.span.len())
                );
            }
        }
        let mut u: Vec<_> = d
            .iter()
            .map(|d| (d.span.offset(), d.span.len(), d.message.clone()))
            .collect();
        u.sort();
        u.dedup();
        println!(
            "{path}: {} bytes {el:?} {} diagnostics {} unique",
            text.len(),
            d.len(),
            u.len()
        );
    }
}
