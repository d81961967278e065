//! `meshctl` as an operator and a CI job run it: exit codes, files written, output shape.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("run meshctl")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A manifest dir holding only mesh.toml.
fn empty_manifest(root: &Path) -> std::path::PathBuf {
    let dir = root.join("peers");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join("mesh.toml"), "mesh_id = \"t\"\n").expect("write");
    dir
}

fn add_peer(dir: &Path, key: &Path, name: &str, endpoint: &str) -> Output {
    meshctl(&[
        "add-peer",
        name,
        "--endpoint",
        endpoint,
        "--manifest",
        s(dir),
        "--key",
        s(key),
    ])
}

#[test]
fn add_peer_writes_a_file_that_check_accepts_once_appended() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = empty_manifest(root.path());
    let key_a = root.path().join("a.key");
    let out = add_peer(&dir, &key_a, "alpha", "[2001:db8::1]:7443");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("git pull"), "{}", stdout(&out));
    let mode = fs::metadata(&key_a).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = fs::read_to_string(dir.join("alpha.toml")).expect("peer file");
    assert!(!text.contains("forwards = []"), "{text}");
    assert!(text.contains("# [services."), "{text}");

    let out = add_peer(
        &dir,
        &root.path().join("b.key"),
        "beta",
        "beta.example.org:7443",
    );
    assert!(out.status.success(), "{out:?}");

    // A script appends tables to the files as they stand.
    let mut alpha = text;
    alpha.push_str("\n[services.db]\ntarget = \"127.0.0.1:5432\"\nallow = [\"beta\"]\n");
    fs::write(dir.join("alpha.toml"), alpha).expect("append");
    let mut beta = fs::read_to_string(dir.join("beta.toml")).expect("beta");
    beta.push_str("\n[[forwards]]\nlisten = \"127.0.0.1:16001\"\nto = \"alpha/db\"\n");
    fs::write(dir.join("beta.toml"), beta).expect("append");

    let out = meshctl(&["check", "--manifest", s(&dir)]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("0 errors, 0 warnings"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn add_peer_refuses_existing_file_and_never_overwrites_a_key() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = empty_manifest(root.path());
    let key = root.path().join("host.key");
    assert!(add_peer(&dir, &key, "alpha", "127.0.0.1:1")
        .status
        .success());
    let key_before = fs::read(&key).expect("key");
    let file_before = fs::read(dir.join("alpha.toml")).expect("file");

    let out = add_peer(&dir, &key, "alpha", "127.0.0.1:2");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(fs::read(dir.join("alpha.toml")).expect("file"), file_before);

    // Same host, second name: the key is reused, not replaced.
    let out = add_peer(&dir, &key, "alpha2", "127.0.0.1:2");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(&key).expect("key"), key_before);
    let pk = |f: &str| {
        fs::read_to_string(dir.join(f))
            .expect("read")
            .lines()
            .find(|l| l.starts_with("public_key"))
            .map(str::to_owned)
    };
    assert_eq!(pk("alpha.toml"), pk("alpha2.toml"));

    // A group-readable key file is refused rather than reused.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = add_peer(&dir, &key, "alpha3", "127.0.0.1:3");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    assert!(!dir.join("alpha3.toml").exists());

    // Bad input is refused before anything is written.
    let out = add_peer(
        &dir,
        &root.path().join("new.key"),
        "gamma",
        "2001:db8::1:7443",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!root.path().join("new.key").exists());
}

#[test]
fn check_exit_codes_and_json() {
    let root = tempfile::tempdir().expect("tempdir");
    let missing = root.path().join("nope");
    assert_eq!(
        meshctl(&["check", "--manifest", s(&missing)]).status.code(),
        Some(64)
    );
    fs::create_dir(&missing).expect("mkdir");
    assert_eq!(
        meshctl(&["check", "--manifest", s(&missing)]).status.code(),
        Some(64)
    );

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");
    let out = meshctl(&["check", "--manifest", shipped, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(0));

    let dir = empty_manifest(root.path());
    let key = root.path().join("k");
    assert!(add_peer(&dir, &key, "alpha", "127.0.0.1:1")
        .status
        .success());
    let mut text = fs::read_to_string(dir.join("alpha.toml")).expect("read");
    text.push_str("\n[[forwards]]\nlisten = \"0.0.0.0:1\"\nto = \"ghost/db\"\n");
    fs::write(dir.join("alpha.toml"), &text).expect("write");

    let out = meshctl(&["check", "--manifest", s(&dir)]);
    assert_eq!(out.status.code(), Some(1));
    let o = stdout(&out);
    assert!(o.contains("error: "), "{o}");
    assert!(o.contains("2 errors, 0 warnings"), "{o}");

    let out = meshctl(&["check", "--manifest", s(&dir), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2);
    for e in errors {
        assert!(e["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("alpha.toml")));
        assert!(e["line"].as_u64().is_some());
        assert!(e["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("forwards[0].")));
        assert!(e["message"].is_string());
    }
}

#[test]
fn pair_fingerprint_is_symmetric() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");
    let ab = meshctl(&["pair", "off1", "web1", "--manifest", shipped]);
    let ba = meshctl(&["pair", "web1", "off1", "--manifest", shipped]);
    assert!(ab.status.success(), "{ab:?}");
    assert_eq!(ab.stdout, ba.stdout);
    assert_eq!(stdout(&ab).trim().len(), 39);
    let other = meshctl(&["pair", "off1", "ops1", "--manifest", shipped]);
    assert_ne!(ab.stdout, other.stdout);

    let unknown = meshctl(&["pair", "off1", "nobody", "--manifest", shipped]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown peer \"nobody\""));
}
