//! A small YAML writer that reproduces the layout of `sops` 3.11
//! (go-yaml v3, indent 4): block mappings, sequences indented under their
//! key, `enc` armor as a literal block. Scalars that could read back as
//! something other than the same string are double-quoted.
//!
//! Not the compiler's YAML emitter (`tsk8s::yaml`): that one writes kubectl's layout
//! (indent 2, list items at their key's indentation, single quotes preferred), this one must
//! equal what the sops CLI writes, byte for byte (go-yaml's indentation, its choice of plain
//! or double-quoted scalars and its escapes). The rules both share — the YAML 1.1/1.2
//! keywords, indentation, literal blocks — are `tsk8s-yaml`'s.

use serde_yaml_ng::Value;
use tsk8s_yaml::{Escapes, indent as push_indent, is_keyword, literal};

use crate::metadata::AgeKey;

/// Render a string scalar so that YAML (go-yaml v3 and serde_yaml_ng) reads
/// it back as exactly that string.
pub(crate) fn scalar(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else {
        double_quoted(s)
    }
}

/// SOPS `ENC[…]` values and `^(data|stringData)$` are written plain by
/// go-yaml; in block context `[`, `]`, `,`, `|`, `(`, `)`, `^`, `$` are fine
/// inside a plain scalar that starts with a safe character.
fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let first_ok = first.is_ascii_alphanumeric() || matches!(first, '.' | '/' | '_' | '^');
    let rest_ok = s.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                '.' | '/'
                    | '_'
                    | '-'
                    | '+'
                    | '='
                    | '['
                    | ']'
                    | ','
                    | ':'
                    | '('
                    | ')'
                    | '|'
                    | '^'
                    | '$'
            )
    });
    if !(first_ok && rest_ok) || s.ends_with(':') || s.contains(": ") {
        return false;
    }
    // Must not resolve to a non-string (numbers, bools, null, YAML 1.1
    // booleans, timestamps) in either parser.
    if is_keyword(s) {
        return false;
    }
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && !s.starts_with("ENC[")
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | ':' | '_' | 'e' | 'E'))
    {
        return false;
    }
    matches!(serde_yaml_ng::from_str::<Value>(s), Ok(Value::String(ref back)) if back == s)
}

/// Like [`scalar`], but quote with single quotes when possible (readable
/// for regular expressions: no backslash escaping).
pub(crate) fn scalar_prefer_single(s: &str) -> String {
    if plain_ok(s) {
        s.to_string()
    } else if !s.is_empty()
        && s.chars().all(|c| {
            !c.is_control() && !matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        })
        && !s.starts_with(' ')
        && !s.ends_with(' ')
    {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        double_quoted(s)
    }
}

fn double_quoted(s: &str) -> String {
    tsk8s_yaml::double_quoted(s, Escapes::GoYaml)
}

/// Write a mapping whose values are strings or nested mappings (what a
/// Secret needs), at `indent` spaces. Its keys are strings (the caller checked with
/// `writable`).
pub(crate) fn mapping(out: &mut String, m: &serde_yaml_ng::Mapping, indent: usize) {
    for (k, v) in m {
        let Value::String(k) = k else {
            unreachable!("encrypt writes only documents writable() accepted: string keys");
        };
        let key = scalar(k);
        push_indent(out, indent);
        out.push_str(&key);
        out.push(':');
        match v {
            Value::Mapping(inner) if inner.is_empty() => out.push_str(" {}\n"),
            Value::Mapping(inner) => {
                out.push('\n');
                mapping(out, inner, indent + 4);
            }
            Value::String(s) => {
                out.push(' ');
                out.push_str(&scalar(s));
                out.push('\n');
            }
            Value::Null => out.push_str(" null\n"),
            Value::Bool(b) => out.push_str(if *b { " true\n" } else { " false\n" }),
            Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
                out.push('\n');
            }
            Value::Sequence(_) | Value::Tagged(_) => {
                unreachable!(
                    "encrypt writes only documents writable() accepted: no sequences or tags"
                )
            }
        }
    }
}

/// The `sops:` block in the key order `sops` 3.11 writes (struct field order
/// of `stores.Metadata`, empty fields omitted).
pub(crate) fn sops_block(
    out: &mut String,
    age: &[AgeKey],
    lastmodified: &str,
    mac: &str,
    (rule_field, rule): (&str, &str),
    mac_only_encrypted: bool,
    version: &str,
) {
    out.push_str("sops:\n");
    out.push_str("    age:\n");
    for k in age {
        out.push_str("        - recipient: ");
        out.push_str(&scalar(&k.recipient));
        out.push('\n');
        out.push_str("          enc: ");
        literal(out, &k.enc, 12);
        out.push('\n');
    }
    out.push_str("    lastmodified: ");
    out.push_str(&double_quoted(lastmodified));
    out.push('\n');
    out.push_str("    mac: ");
    out.push_str(&scalar(mac));
    out.push('\n');
    out.push_str("    ");
    out.push_str(rule_field);
    out.push_str(": ");
    out.push_str(&scalar(rule));
    out.push('\n');
    if mac_only_encrypted {
        out.push_str("    mac_only_encrypted: true\n");
    }
    out.push_str("    version: ");
    // A constant of ours (e.g. 3.11.0); go-yaml writes it plain.
    out.push_str(version);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::scalar;

    #[test]
    fn scalars_read_back_as_the_same_string() {
        for s in [
            "v1",
            "Secret",
            "wg-node-a",
            "app.kubernetes.io/name",
            "true",
            "yes",
            "No",
            "null",
            "~",
            "123",
            "1.5",
            "1e3",
            "0x1F",
            "2024-01-01",
            "",
            " lead",
            "trail ",
            "a: b",
            "a:",
            "#x",
            "- x",
            "x\ny",
            "quote\"back\\slash",
            "\u{1}\u{7f}",
            "ünïcode",
            "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]",
            "^(data|stringData)$",
            "@x",
            "*alias",
            "&anchor",
            "!tag",
            "%x",
            "{a}",
            "[a]",
            "'s'",
            "3.11.0",
        ] {
            let doc = format!("k: {}\n", scalar(s));
            let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&doc).unwrap();
            assert_eq!(
                back.get("k"),
                Some(&serde_yaml_ng::Value::String(s.to_string())),
                "{s:?} -> {doc:?}"
            );
        }
        assert_eq!(scalar("v1"), "v1");
        assert_eq!(scalar("^(data|stringData)$"), "^(data|stringData)$");
    }
}
