//! Decrypt files written by the real `sops`:
//! * `testdata/sops/upstream/`: the sops project's own published age test
//!   files (see the README there) with its published test identity;
//! * `testdata/sops/sops-3.11.0/`: files encrypted by the `sops` 3.11.0
//!   binary with that identity, covering value types, lists, multi-document
//!   YAML, JSON, `encrypted_suffix`, `unencrypted_regex`, `encrypted_regex`
//!   and `mac_only_encrypted`.

use std::fs;

use serde_yaml_ng::Value;
use tsk8s_sops::{SopsError, decrypt, decrypt_documents, decrypt_json, recipients_of};

const TD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/sops");

fn read(rel: &str) -> String {
    fs::read_to_string(format!("{TD}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn keys() -> String {
    read("upstream/keys.txt")
}

const R1: &str = "age1yt3tfqlfrwdwx0z0ynwplcr6qxcxfaqycuprpmy89nr83ltx74tqdpszlw";
const R2: &str = "age1tmaae3ld5vpevmsh5yacsauzx8jetg300mpvc4ugp5zr5l6ssq9sla97ep";

/// Only one of the two identities of keys.txt.
fn key_line(n: usize) -> String {
    keys()
        .lines()
        .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
        .nth(n)
        .unwrap()
        .to_string()
}

#[test]
fn upstream_example_yaml() {
    let got = decrypt(&read("upstream/example.yaml"), &keys()).unwrap();
    let want: Value = serde_yaml_ng::from_str(&read("upstream/expected/example.yaml")).unwrap();
    assert_eq!(got, want);
    // Each identity alone suffices (one wrapped data key per recipient).
    for n in 0..2 {
        let got = decrypt(&read("upstream/example.yaml"), &key_line(n)).unwrap();
        assert_eq!(got, want);
    }
    // Spot checks of typed values.
    assert_eq!(got["myapp1"], Value::from("t00m4nys3cr3tzupdated"));
    assert_eq!(got["somebooleans"][0], Value::Bool(true));
    assert_eq!(got["somebooleans"][1], Value::Bool(false));
    assert_eq!(got["number"].as_f64(), Some(1234568000.0));
    assert!(got.get("sops").is_none());
}

#[test]
fn upstream_example_json() {
    let got = decrypt_json(&read("upstream/example.json"), &keys()).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&read("upstream/expected/example.json")).unwrap();
    assert_eq!(got, want);
    assert_eq!(got["firstName"], "John");
    assert_eq!(got["age"], 25.4);
}

#[test]
fn upstream_example_binary_store() {
    // The binary store is JSON with one `data` key.
    let got = decrypt_json(&read("upstream/example.txt"), &keys()).unwrap();
    assert_eq!(got["data"], read("upstream/expected/example.txt").as_str());
}

#[test]
fn upstream_recipients() {
    assert_eq!(
        recipients_of(&read("upstream/example.yaml")).unwrap(),
        vec![R1.to_string(), R2.to_string()]
    );
    assert_eq!(
        recipients_of(&read("upstream/example.json")).unwrap(),
        vec![R1.to_string(), R2.to_string()]
    );
    assert_eq!(
        recipients_of(&read("sops-3.11.0/uregex.enc.yaml")).unwrap(),
        vec![R2.to_string()]
    );
}

#[test]
fn upstream_files_are_detected_as_encrypted() {
    for f in [
        "upstream/example.yaml",
        "upstream/example.json",
        "sops-3.11.0/secret.enc.yaml",
        "sops-3.11.0/types.enc.yaml",
        "sops-3.11.0/multi.enc.yaml",
    ] {
        assert!(tsk8s_sops::is_sops_encrypted(&read(f)), "{f}");
    }
    for f in [
        "upstream/expected/example.yaml",
        "sops-3.11.0/plain/secret.yaml",
    ] {
        assert!(!tsk8s_sops::is_sops_encrypted(&read(f)), "{f}");
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn sops_3_11_yaml_files() {
    for (enc, plain) in [
        ("secret.enc.yaml", "secret.yaml"),
        ("types.enc.yaml", "types.yaml"),
        ("types.mac-only.enc.yaml", "types.yaml"),
        ("suffix.enc.yaml", "suffix.yaml"),
        ("uregex.enc.yaml", "uregex.yaml"),
        ("multi.enc.yaml", "multi.yaml"),
    ] {
        let got = decrypt_documents(&read(&format!("sops-3.11.0/{enc}")), &keys())
            .unwrap_or_else(|e| panic!("{enc}: {e}"));
        let want = yaml_docs(&read(&format!("sops-3.11.0/plain/{plain}")));
        assert_eq!(got, want, "{enc}");
    }
}

#[test]
fn sops_3_11_secret_matches_k8s_shape() {
    let got = decrypt(&read("sops-3.11.0/secret.enc.yaml"), &key_line(1)).unwrap();
    assert_eq!(got["data"]["privatekey"], Value::from("c2VjcmV0"));
    assert_eq!(got["data"]["other"], Value::from(""));
    assert_eq!(got["metadata"]["name"], Value::from("wg-node-a"));
}

#[test]
fn sops_3_11_json() {
    let got = decrypt_json(&read("sops-3.11.0/types.enc.json"), &keys()).unwrap();
    assert_eq!(got["string"], "hello");
    assert_eq!(got["int"], 42);
    assert_eq!(got["float"], 3.25);
    assert_eq!(got["bool"], true);
    assert_eq!(got["nothing"], serde_json::Value::Null);
    assert_eq!(got["list"], serde_json::json!([1, "two", false]));
    assert_eq!(got["obj"], serde_json::json!({"k": "v"}));
    // JSON numbers are float64 in sops 3.11: 12345678901234567 rounds.
    assert_eq!(got["big"].as_f64(), Some(12345678901234568.0));
}

#[test]
fn multi_document_needs_decrypt_documents() {
    let err = decrypt(&read("sops-3.11.0/multi.enc.yaml"), &keys()).unwrap_err();
    assert!(matches!(err, SopsError::Document(_)), "{err}");
}

#[test]
fn wrong_identity_fails_cleanly() {
    let other = "# some other key\nAGE-SECRET-KEY-1432K5YRNSC44GC4986NXMX6GVZ52WTMT9C79CLUVWYY4DKDHD5JSNDP4MC\n";
    let err = decrypt(&read("upstream/example.yaml"), other).unwrap_err();
    assert!(
        matches!(err, SopsError::NoMatchingIdentity { tried: 2, .. }),
        "{err:?}"
    );
    // uregex.enc.yaml is for R2 only: R1's identity cannot open it.
    let err = decrypt(&read("sops-3.11.0/uregex.enc.yaml"), &key_line(0)).unwrap_err();
    assert!(matches!(err, SopsError::NoMatchingIdentity { .. }));
    let err = decrypt_json(&read("upstream/example.json"), other).unwrap_err();
    assert!(matches!(err, SopsError::NoMatchingIdentity { .. }));
}

#[test]
fn tampering_upstream_file_is_detected() {
    let text = read("upstream/example.yaml");
    // A plaintext (unencrypted-suffix) value is covered by the MAC.
    let t = text.replace("remain in clear text", "remain in clear text!");
    assert_eq!(decrypt(&t, &keys()).unwrap_err(), SopsError::MacMismatch);
    // Swapping two encrypted list items keeps each AAD valid (list indices
    // are not part of the path) but changes the MAC order.
    let v0 = "ENC[AES256_GCM,data:Kz5fYNAguRjkRY4=,iv:pmunK+mDtaAZr8inbSIJWBMDPUHp8/YyJjnYJ76RCpo=,tag:K7EtHFPMiQZDbJ73zFIErw==,type:str]";
    let v1 = "ENC[AES256_GCM,data:nQSYDNgm6hKdvbU=,iv:VyZHyQktkO4fk6ahGL84nWvxkmLBAwosr0eXzlimZOY=,tag:F5lTnici87PZ7zbHyrKTTg==,type:str]";
    assert!(text.contains(v0) && text.contains(v1));
    let t = text
        .replace(v0, "@@V0@@")
        .replace(v1, v0)
        .replace("@@V0@@", v1);
    assert_eq!(decrypt(&t, &keys()).unwrap_err(), SopsError::MacMismatch);
    // Moving a value to another key breaks its AES-GCM authentication.
    let user = "ENC[AES256_GCM,data:/cSI,iv:v78SLfb75AgxJU6hyorI1NdFIS9BPQhfaYohvnP4+zY=,tag:RT4DZqfxr6acgPTUpYMv0A==,type:str]";
    let t = text.replace(&format!("user: {user}"), &format!("name: {user}"));
    assert!(matches!(
        decrypt(&t, &keys()).unwrap_err(),
        SopsError::Value { .. }
    ));
    // A changed lastmodified makes the stored MAC undecryptable.
    let t = text.replace("2022-03-15T22:11:15Z", "2022-03-15T22:11:16Z");
    assert_eq!(decrypt(&t, &keys()).unwrap_err(), SopsError::MacMismatch);
}

#[test]
fn errors_do_not_leak_secrets() {
    let text = read("upstream/example.yaml");
    let t = text.replace("remain in clear text", "x");
    let err = decrypt(&t, &keys()).unwrap_err();
    let shown = format!("{err} {err:?}");
    for secret in ["t00m4nys3cr3tzupdated", "c4r1b0u", "AGE-SECRET-KEY"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    let err = decrypt(&text, "AGE-SECRET-KEY-1NOTAKEYATALL\n").unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("NOTAKEY"), "{shown}");
    assert_eq!(err, SopsError::InvalidIdentity { line: 1 });
}

/// A file written by `encrypt_secret` (and checked with `sops decrypt` 3.11.0
/// when it was made) keeps decrypting: the format does not drift.
#[test]
fn committed_tsk8s_fixture_decrypts() {
    let text = read("tsk8s/secret.enc.yaml");
    assert!(tsk8s_sops::is_sops_encrypted(&text));
    let v = decrypt(&text, &key_line(0)).unwrap();
    assert_eq!(
        v["data"]["privatekey"],
        Value::from("d2ctcHJpdmF0ZS1rZXktb2Ytbm9kZS1h")
    );
    assert_eq!(v["data"]["TS_AUTHKEY"], Value::from("dHNrZXktYXV0aC10ZXN0"));
}
