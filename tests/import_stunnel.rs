//! `meshctl import-stunnel` on the fixtures of `tests/fixtures/stunnel` (four hosts, planted
//! problems listed in its README) and on Debian's sample stunnel.conf: the report names each
//! problem, the draft passes `meshctl check` once public keys are filled in, and bad input
//! exits 64.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEBIAN_SAMPLE: &str = "/usr/share/doc/stunnel4/examples/stunnel.conf-sample";

fn meshctl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("run meshctl")
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stunnel")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn fleet_args(out: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["import-stunnel".into()];
    for host in ["off1", "off2", "ovh1", "moji"] {
        args.push("--host".into());
        args.push(format!("{host}={}", fixture(&format!("{host}.conf"))));
    }
    for addr in [
        "off2=off2.example.org",
        "off2=2001:db8::2",
        "ovh1=ovh1.example.org",
        "off1=192.0.2.11",
    ] {
        args.push("--addr".into());
        args.push(addr.into());
    }
    args.push("--out".into());
    args.push(out.to_string_lossy().into_owned());
    args
}

/// The report's lines carrying one finding code.
fn lines_of<'a>(report: &'a str, code: &str) -> Vec<&'a str> {
    let tag = format!("[{code}]");
    report.lines().filter(|l| l.contains(&tag)).collect()
}

fn assert_one_line_has(report: &str, code: &str, needles: &[&str]) {
    let lines = lines_of(report, code);
    assert!(
        lines.iter().any(|l| needles.iter().all(|n| l.contains(n))),
        "no [{code}] line contains all of {needles:?}; [{code}] lines: {lines:#?}"
    );
}

fn import_fleet() -> (tempfile::TempDir, PathBuf, String) {
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("draft");
    let o = meshctl(&fleet_args(&out));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (root, out, stdout)
}

#[test]
fn report_lists_every_planted_problem() {
    let (_root, out, stdout) = import_fleet();
    let report = fs::read_to_string(out.join("IMPORT-REPORT.md")).expect("report file");
    assert!(stdout.contains(&report), "stdout carries the report");

    assert_one_line_has(
        &report,
        "duplicate-section",
        &["moji.conf:23", "[redis-off2]", "moji.conf:17"],
    );
    assert_one_line_has(
        &report,
        "exposed-entrance",
        &["ovh1.conf:13", "[mongodb-off2]", "all interfaces"],
    );
    assert_one_line_has(
        &report,
        "exposed-entrance",
        &["moji.conf:13", "203.0.113.7"],
    );
    assert_one_line_has(
        &report,
        "psk-identity-reused",
        &["\"mongo-client\"", "2 hosts", "ovh1", "moji"],
    );
    assert_one_line_has(
        &report,
        "psk-identity-reused",
        &["\"ovh1-shared\"", "2 services"],
    );
    assert_one_line_has(
        &report,
        "short-psk-secret",
        &["off2-influxdb.txt:1", "\"moji-influx\"", "8 bytes"],
    );
    assert_one_line_has(
        &report,
        "short-psk-secret",
        &["moji-client.txt:2", "\"moji-influx\""],
    );
    assert_one_line_has(
        &report,
        "unmatched-connect",
        &["off1.conf:16", "db-old.example.net:5432"],
    );
    assert_one_line_has(
        &report,
        "untranslated-option",
        &["off2.conf", "global", "setuid", "pid"],
    );
    assert_one_line_has(
        &report,
        "untranslated-option",
        &["[influxdb]", "TIMEOUTclose"],
    );
    assert_one_line_has(&report, "untranslated-option", &["[legacy-pg]", "sni"]);
    assert_one_line_has(
        &report,
        "untranslated-option",
        &["moji.conf:23", "verifyChain"],
    );
    assert_one_line_has(&report, "file-not-found", &["off1.conf:3", "off1.d"]);
    assert_one_line_has(
        &report,
        "file-not-found",
        &["off1.conf:17", "off1-legacy.txt"],
    );
    assert_one_line_has(&report, "bad-line", &["ovh1.conf:26"]);
    assert!(report.contains("run `meshctl add-peer` on each host to fill public_key"));
    assert!(report.contains("No --addr was given for moji"), "{report}");

    // Secrets are measured, never shown.
    for secret in ["tooshort", "FAKE-fake"] {
        assert!(!stdout.contains(secret), "report shows a secret: {stdout}");
    }
    // Identities that are used correctly are not reported.
    for fine in ["off1-offquery", "moji-redis"] {
        assert!(lines_of(&report, "psk-identity-reused")
            .iter()
            .all(|l| !l.contains(&format!("\"{fine}\""))));
    }
}

#[test]
fn draft_maps_sections_to_services_and_forwards() {
    let (_root, out, _) = import_fleet();
    let read = |f: &str| fs::read_to_string(out.join(f)).expect(f);
    let mesh: toml::Value = toml::from_str(&read("mesh.toml")).expect("mesh.toml");
    assert_eq!(mesh["mesh_id"].as_str(), Some("imported"));
    assert_eq!(mesh["auth"].as_str(), Some("noise"));

    let off2: toml::Value = toml::from_str(&read("off2.toml")).expect("off2.toml");
    let eps: Vec<&str> = off2["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(eps, ["off2.example.org:7443", "[2001:db8::2]:7443"]);
    assert_eq!(off2["public_key"].as_str(), Some(""));
    let svc = |name: &str| &off2["services"][name];
    assert_eq!(svc("mongodb")["target"].as_str(), Some("10.1.0.102:27017"));
    assert_eq!(
        svc("redis")["target"].as_str(),
        Some("127.0.0.1:6379"),
        "from the included off2.d/redis.conf"
    );
    // moji reaches influxdb through its IPv6 address.
    let allow = |name: &str| -> Vec<String> {
        svc(name)["allow"]
            .as_array()
            .expect("allow")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(allow("influxdb"), ["moji", "ovh1"]);
    assert_eq!(allow("mongodb"), ["moji", "ovh1"]);

    let ovh1: toml::Value = toml::from_str(&read("ovh1.toml")).expect("ovh1.toml");
    assert_eq!(
        ovh1["services"]["off-query"]["allow"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let fwds = ovh1["forwards"].as_array().expect("forwards");
    assert_eq!(
        fwds[0]["listen"].as_str(),
        Some("127.0.0.1:27017"),
        "bare port narrowed to loopback"
    );
    assert_eq!(fwds[0]["to"].as_str(), Some("off2/mongodb"));
    assert_eq!(
        fwds[2]["listen"].as_str(),
        Some("10.2.0.5:8086"),
        "a private address is kept"
    );

    let moji: toml::Value = toml::from_str(&read("moji.toml")).expect("moji.toml");
    assert_eq!(moji["endpoints"].as_array().map(Vec::len), Some(0));
    let fwds = moji["forwards"].as_array().expect("forwards");
    assert_eq!(fwds.len(), 4, "both duplicate sections are kept: {fwds:?}");
    assert_eq!(
        fwds[1]["listen"].as_str(),
        Some("127.0.0.1:8086"),
        "public address narrowed"
    );
    assert_eq!(fwds[1]["to"].as_str(), Some("off2/influxdb"));

    let off1: toml::Value = toml::from_str(&read("off1.toml")).expect("off1.toml");
    let fwds = off1["forwards"].as_array().expect("forwards");
    assert_eq!(fwds.len(), 1, "legacy-pg matched nothing: {fwds:?}");
    assert_eq!(
        fwds[0]["to"].as_str(),
        Some("ovh1/off-query"),
        "connect = ovh1:8443 names the host"
    );
}

#[test]
fn draft_passes_check_once_keys_are_filled_in() {
    let (_root, out, _) = import_fleet();
    // Without keys the draft is refused: nobody can commit it by mistake.
    let o = meshctl(&[
        "check",
        "--manifest",
        out.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        v["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .all(|e| e["code"] == "bad-key"),
        "{v}"
    );

    let mut filled = 0;
    for entry in fs::read_dir(&out).expect("out") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") || path.ends_with("mesh.toml") {
            continue;
        }
        let (_private, public) = meshd::keys::generate_keypair().expect("keypair");
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("public_key = \"\"\n"), "{text}");
        let text = text.replace(
            "public_key = \"\"\n",
            &format!("public_key = \"{public}\"\n"),
        );
        fs::write(&path, text).expect("write");
        filled += 1;
    }
    assert_eq!(filled, 4);
    let o = meshctl(&["check", "--manifest", out.to_str().expect("utf-8")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn debian_sample_config_imports_without_crashing() {
    assert!(
        Path::new(DEBIAN_SAMPLE).is_file(),
        "{DEBIAN_SAMPLE} is missing: run `apt-get install stunnel4` (this test needs Debian's \
         sample stunnel configuration)"
    );
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("draft");
    let o = meshctl(&[
        "import-stunnel".to_owned(),
        "--host".into(),
        format!("sample={DEBIAN_SAMPLE}"),
        "--out".into(),
        out.to_string_lossy().into_owned(),
        "--mesh-id".into(),
        "debian".into(),
    ]);
    let report = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{report}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_one_line_has(
        &report,
        "untranslated-option",
        &["[gmail-pop3]", "OCSPaia", "verifyChain"],
    );
    assert_one_line_has(
        &report,
        "unmatched-connect",
        &["[gmail-imap]", "imap.gmail.com:993"],
    );
    assert!(
        lines_of(&report, "bad-line").is_empty(),
        "the sample is valid stunnel: {report}"
    );
    let mesh = fs::read_to_string(out.join("mesh.toml")).expect("mesh.toml");
    assert!(mesh.contains("mesh_id = \"debian\""), "{mesh}");
    assert!(out.join("sample.toml").is_file());
}

#[test]
fn unusable_input_exits_64_and_writes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = root.path().join("draft");
    let o_s = out.to_string_lossy().into_owned();
    let off2 = format!("off2={}", fixture("off2.conf"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--host".into(), format!("off2={}", fixture("nope.conf"))],
            "cannot read",
        ),
        (vec!["--host".into(), fixture("off2.conf")], "NAME=VALUE"),
        (
            vec!["--host".into(), format!("Off2={}", fixture("off2.conf"))],
            "invalid peer name",
        ),
        (
            vec!["--host".into(), off2.clone(), "--host".into(), off2.clone()],
            "twice",
        ),
        (
            vec![
                "--host".into(),
                off2.clone(),
                "--addr".into(),
                "ovh1=1.2.3.4".into(),
            ],
            "no --host ovh1",
        ),
        (
            vec![
                "--host".into(),
                off2.clone(),
                "--addr".into(),
                "off2=not a host".into(),
            ],
            "--addr",
        ),
        (
            vec![
                "--host".into(),
                off2.clone(),
                "--mesh-id".into(),
                "bad id".into(),
            ],
            "--mesh-id",
        ),
    ];
    for (extra, needle) in cases {
        let mut args: Vec<String> = vec!["import-stunnel".into()];
        args.extend(extra.iter().cloned());
        args.extend(["--out".to_owned(), o_s.clone()]);
        let o = meshctl(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }

    // A non-empty output directory is never overwritten.
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("mesh.toml"), "mesh_id = \"real\"\n").expect("write");
    let o = meshctl(&[
        "import-stunnel".to_owned(),
        "--host".into(),
        off2,
        "--out".into(),
        o_s,
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert_eq!(
        fs::read_to_string(out.join("mesh.toml")).expect("read"),
        "mesh_id = \"real\"\n"
    );
}
