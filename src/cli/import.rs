//! `tsk8s import`'s file handling: read the policy file, print warnings, write the spec.
//! The conversion itself is [`crate::import`] (pure).

use tsk8s_policy::text::{escape, neutralize};

use crate::import::{ImportError, ImportOptions, import};

/// `tsk8s import`: read the policy, write the spec to `out` (or stdout). Exit code.
pub fn run(
    policy: &std::path::Path,
    out: Option<&std::path::Path>,
    name: &str,
    domain: &str,
) -> u8 {
    let text = match super::read_text(policy) {
        Ok(t) => t,
        Err(e) => {
            eprint!("{}", neutralize(&format!("error: {e}\n")));
            return 2;
        }
    };
    let opts = ImportOptions {
        name: name.to_string(),
        domain: domain.to_string(),
        source: policy
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policy.hujson".into()),
    };
    let imported = match import(&text, &opts) {
        Ok(i) => i,
        Err(e) => {
            let mut text = format!("error: {}: {e}", escape(&policy.display().to_string()));
            if matches!(e, ImportError::Invalid(_)) {
                text.push('\n');
            }
            eprint!("{}", neutralize(&text));
            return 2;
        }
    };
    for w in &imported.warnings {
        eprint!("{}", neutralize(&format!("warning: {}\n", escape(w))));
    }
    match out {
        Some(path) => {
            if let Err(e) = super::write_atomic(path, imported.spec.as_bytes(), None) {
                eprint!("{}", neutralize(&format!("error: {e}\n")));
                return 2;
            }
            eprintln!("wrote {}", escape(&path.display().to_string()));
        }
        None => print!("{}", imported.spec),
    }
    0
}
