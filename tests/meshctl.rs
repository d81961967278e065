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

#[test]
fn cert_new_ca_and_issue_make_files_meshd_loads() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca_dir = tmp.path().join("ca");
    let o = meshctl(&["cert", "new-ca", "--out-dir", s(&ca_dir), "--days", "30"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let pin = out
        .lines()
        .find_map(|l| l.strip_prefix("ca_fingerprint = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ca_fingerprint line in:\n{out}"))
        .to_owned();
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);

    let o = meshctl(&[
        "cert",
        "issue",
        "web1",
        "--ca-dir",
        s(&ca_dir),
        "--days",
        "5",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(mode(&ca_dir.join("web1.key")), 0o600);
    // The CA is never silently replaced, nor a peer key.
    let o = meshctl(&["cert", "new-ca", "--out-dir", s(&ca_dir)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--force"),
        "{o:?}"
    );
    let o = meshctl(&["cert", "issue", "web1", "--ca-dir", s(&ca_dir)]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = meshctl(&["cert", "issue", "Not_A_Name", "--ca-dir", s(&ca_dir)]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // What meshd will load: verifies under the CA for web1, with the printed pin.
    let files = meshd::tls::TlsFiles {
        cert: ca_dir.join("web1.crt"),
        cert_key: ca_dir.join("web1.key"),
        ca: ca_dir.join("ca.crt"),
    };
    let name = meshd::config::PeerName::new("web1").expect("name");
    let m = meshd::tls::TlsMaterial::load(&files, &name, std::slice::from_ref(&pin)).expect("load");
    assert_eq!(m.ca_fingerprints, vec![pin.clone()]);

    let o = meshctl(&["cert", "show", s(&ca_dir.join("web1.crt"))]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("dns names:   web1"), "{out}");
    assert!(out.contains(&m.cert_fingerprint), "{out}");
    assert!(out.contains("key usage:   digitalSignature\n"), "{out}");
    assert!(
        out.contains("ext usage:   serverAuth, clientAuth\n"),
        "{out}"
    );
    let o = meshctl(&["cert", "show", s(&ca_dir.join("ca.crt"))]);
    let out = stdout(&o);
    assert!(out.contains(&pin), "{o:?}");
    assert!(out.contains("key usage:   keyCertSign, cRLSign\n"), "{out}");
    assert!(out.contains("ext usage:   (no extension)\n"), "{out}");
}

/// `new-ca` names each CA differently: a foreign CA of the same name would be reported as a
/// bad signature rather than as another CA.
#[test]
fn cert_new_ca_names_each_ca_differently() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut subjects = Vec::new();
    for dir in ["ca1", "ca2"] {
        let o = meshctl(&["cert", "new-ca", "--out-dir", s(&tmp.path().join(dir))]);
        assert!(o.status.success(), "{o:?}");
        let o = meshctl(&["cert", "show", s(&tmp.path().join(dir).join("ca.crt"))]);
        let out = stdout(&o);
        let subject = out
            .lines()
            .find_map(|l| l.strip_prefix("subject:     "))
            .unwrap_or_else(|| panic!("no subject in:\n{out}"))
            .to_owned();
        let tag = subject
            .strip_prefix("CN=meshd mesh CA ")
            .unwrap_or_else(|| panic!("default CA name: {subject}"));
        assert!(
            tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "{subject}"
        );
        subjects.push(subject);
    }
    assert_ne!(subjects[0], subjects[1], "two CAs share a name");
}

/// `issue` prints paths meshd.toml can use wherever it lives (it resolves relative paths
/// against its own directory, not where meshctl ran).
#[test]
fn cert_issue_prints_absolute_paths() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = meshctl(&["cert", "new-ca", "--out-dir", s(&tmp.path().join("ca1"))]);
    assert!(o.status.success(), "{o:?}");
    // Relative --ca-dir, run from the temporary directory.
    let o = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["cert", "issue", "web1", "--ca-dir", "ca1"])
        .current_dir(tmp.path())
        .output()
        .expect("run meshctl");
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    let root = fs::canonicalize(tmp.path()).expect("canonical tmp");
    for (field, file) in [
        ("cert", "ca1/web1.crt"),
        ("cert_key", "ca1/web1.key"),
        ("ca", "ca1/ca.crt"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{field} = ")))
            .unwrap_or_else(|| panic!("no {field} line in:\n{out}"));
        let path = line
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("unquoted: {line}"));
        assert!(Path::new(path).is_absolute(), "{line}");
        assert_eq!(
            fs::canonicalize(path).expect("the printed path exists"),
            root.join(file),
            "{line}"
        );
    }
}

#[test]
fn certs_example_certificates_chain_to_the_example_ca_and_carry_no_key() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/certs-example"));
    let ca = CertificateDer::from_pem_file(dir.join("ca.crt")).expect("ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        meshd::tls::provider(),
    )
    .build()
    .expect("verifier");
    for peer in ["off1", "web1", "ops1"] {
        let cert = CertificateDer::from_pem_file(dir.join(format!("{peer}.crt"))).expect("cert");
        let name = ServerName::try_from(peer.to_owned()).expect("name");
        use rustls::client::danger::ServerCertVerifier;
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("certs-example/{peer}.crt: {e}"));
        // webpki leaves the key usage to meshd: the examples carry the peer usages.
        meshd::tls::check_peer_usage(&cert)
            .unwrap_or_else(|e| panic!("certs-example/{peer}.crt: {e}"));
    }
    for entry in fs::read_dir(dir).expect("list") {
        let name = entry.expect("entry").file_name();
        assert!(
            !name.to_string_lossy().ends_with(".key"),
            "certs-example holds a private key: {name:?}"
        );
    }
}

#[test]
fn init_starts_a_mesh_that_add_peer_and_check_accept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("peers");
    let secret = tmp.path().join("mesh.secret");
    let out = meshctl(&[
        "init",
        "--mesh-id",
        "acme",
        "--auth",
        "psk",
        "--manifest",
        s(&dir),
        "--secret",
        s(&secret),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("copy"), "{}", stdout(&out));
    let mode = fs::metadata(&secret).expect("secret").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mesh secret mode");
    for (name, ep) in [("web1", "10.0.0.1:7443"), ("db1", "10.0.0.2:7443")] {
        let key = tmp.path().join(format!("{name}.key"));
        let o = add_peer(&dir, &key, name, ep);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = meshctl(&["check", "--manifest", s(&dir)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    // The commented limits are the defaults, and valid once uncommented.
    let text = fs::read_to_string(dir.join("mesh.toml")).expect("mesh.toml");
    assert!(text.contains("mesh_id = \"acme\"") && text.contains("auth = \"psk\""));
    let (head, limits) = text.split_once("# [limits]").expect("a limits section");
    let uncommented: String = limits
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(v) if v.contains(" = ") => format!("{v}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    fs::write(
        dir.join("mesh.toml"),
        format!("{head}[limits]{uncommented}"),
    )
    .expect("write");
    let o = meshctl(&["check", "--manifest", s(&dir)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );

    // Never over an existing mesh or secret; nothing changes.
    let again = meshctl(&["init", "--mesh-id", "other", "--manifest", s(&dir)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let other = tmp.path().join("other");
    let o = meshctl(&[
        "init",
        "--mesh-id",
        "x",
        "--auth",
        "psk",
        "--manifest",
        s(&other),
        "--secret",
        s(&secret),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!other.exists(), "a refused init created its directory");
    let bad = meshctl(&["init", "--mesh-id", "no spaces", "--manifest", s(&other)]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--mesh-id"));

    // add-peer into a missing directory points at init.
    let o = add_peer(
        &tmp.path().join("missing"),
        &tmp.path().join("k"),
        "x",
        "10.0.0.3:7443",
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("meshctl init"));
}
