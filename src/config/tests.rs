//! Tests of manifest and host config validation: each error kind is checked for its file,
//! line and field, not only for failing.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::lint::{Code, Severity};
use super::*;
use crate::keys::{self, PublicKey};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(&p, text).expect("write");
        p
    }

    /// A valid manifest in `peers/`: off2 exports mongodb to moji and ovh1, moji exports
    /// off-query to off2, off2 forwards to it.
    fn good_manifest(&self) {
        self.write("peers/mesh.toml", MESH);
        self.write("peers/off2.toml", &off2(&key()));
        self.write("peers/moji.toml", &moji(&key()));
        self.write("peers/ovh1.toml", &simple_peer(&key()));
        self.write("peers/README.md", "not a peer");
    }

    fn manifest(&self) -> Result<Manifest, ConfigError> {
        load_manifest(&self.path("peers"))
    }
}

const MESH: &str = "mesh_id = \"example\"\nauth = \"noise\"\n";

fn key() -> PublicKey {
    keys::generate_keypair().expect("rng").1
}

fn off2(k: &PublicKey) -> String {
    format!(
        r#"endpoints = ["off2.example.org:7443", "[2001:db8::2]:7443", "192.0.2.7:7443"]
public_key = "{k}"

[services.mongodb]
target = "10.1.0.102:27017"
allow = ["ovh1", "moji"]

[[forwards]]
listen = "127.0.0.1:16001"
to = "moji/off-query"
"#
    )
}

fn moji(k: &PublicKey) -> String {
    format!(
        r#"endpoints = ["moji.example.org:7443"]
public_key = "{k}"

[services.off-query]
target = "127.0.0.1:8001"
allow = ["off2"]
"#
    )
}

fn simple_peer(k: &PublicKey) -> String {
    format!("endpoints = [\"[2001:db8::9]:7443\"]\npublic_key = \"{k}\"\n")
}

fn line_of(text: &str, needle: &str) -> usize {
    let pos = text.find(needle).expect("needle in text");
    text[..pos].matches('\n').count() + 1
}

/// The one diagnostic on `file` (a path suffix) with `field`; fails listing all of them.
fn find<'a>(diags: &'a [Diagnostic], file: &str, field: &str) -> &'a Diagnostic {
    diags
        .iter()
        .find(|d| d.file.ends_with(file) && d.field == field)
        .unwrap_or_else(|| panic!("no diagnostic {file} {field} in:\n{}", show(diags)))
}

fn show(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn errors(r: Result<Manifest, ConfigError>) -> Vec<Diagnostic> {
    match r {
        Ok(_) => panic!("expected validation errors"),
        Err(e) => e.diagnostics().to_vec(),
    }
}

/// Replaces off2.toml with `text` and returns the diagnostics.
fn off2_errors(f: &Fixture, text: &str) -> Vec<Diagnostic> {
    f.write("peers/off2.toml", text);
    errors(f.manifest())
}

fn peer_name(s: &str) -> PeerName {
    PeerName::new(s).expect("name")
}

#[test]
fn good_manifest_loads_typed_values() {
    let f = Fixture::new();
    f.good_manifest();
    let m = f.manifest().expect("valid");
    assert_eq!(m.mesh.mesh_id, "example");
    assert_eq!(m.mesh.auth, AuthMode::Noise);
    assert_eq!(m.mesh.limits, Limits::default());
    assert_eq!(m.peers.len(), 3);
    let off2 = &m.peers[&peer_name("off2")];
    assert_eq!(
        off2.endpoints,
        vec![
            HostPort::Dns {
                host: "off2.example.org".into(),
                port: 7443
            },
            HostPort::Addr("[2001:db8::2]:7443".parse().expect("addr")),
            HostPort::Addr("192.0.2.7:7443".parse().expect("addr")),
        ]
    );
    let mongo = &off2.services[&ServiceName::new("mongodb").expect("svc")];
    assert_eq!(
        mongo.target,
        HostPort::Addr("10.1.0.102:27017".parse().expect("addr"))
    );
    assert_eq!(
        mongo.allow,
        [peer_name("moji"), peer_name("ovh1")].into_iter().collect()
    );
    assert_eq!(
        off2.forwards,
        vec![Forward {
            listen: "127.0.0.1:16001".parse().expect("addr"),
            peer: peer_name("moji"),
            service: ServiceName::new("off-query").expect("svc"),
            public: false,
        }]
    );
    assert!(lint_manifest(&m).is_empty(), "{}", show(&lint_manifest(&m)));
}

#[test]
fn limits_are_read_and_range_checked() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nmax_streams = 10\nlink_wait_ms = 0\n",
    );
    let m = f.manifest().expect("valid");
    assert_eq!(m.mesh.limits.max_streams, 10);
    assert_eq!(m.mesh.limits.link_wait, Duration::ZERO);
    assert_eq!(m.mesh.limits.stream_window, 256 * 1024);

    let text = "mesh_id = \"example\"\n[limits]\nstream_window = 1024\nmax_streams = 0\n";
    f.write("peers/mesh.toml", text);
    let diags = errors(f.manifest());
    let d = find(&diags, "peers/mesh.toml", "limits.stream_window");
    assert_eq!(d.line, Some(3));
    assert!(d.message.contains("16384 to 16777216"), "{d}");
    assert_eq!(
        find(&diags, "peers/mesh.toml", "limits.max_streams").line,
        Some(4)
    );

    // Window growth: defaults, an explicit value, and a maximum below the start.
    f.write("peers/mesh.toml", "mesh_id = \"example\"\n");
    let l = f.manifest().expect("valid").mesh.limits;
    assert_eq!(
        (l.max_stream_window, l.max_link_window_growth),
        (4 << 20, 4 << 20)
    );
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nstream_window = 1048576\nmax_link_window_growth = 0\n",
    );
    let l = f.manifest().expect("valid").mesh.limits;
    assert_eq!(l.max_stream_window, 4 << 20);
    assert_eq!(l.max_link_window_growth, 0);
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nstream_window = 1048576\nmax_stream_window = 65536\n",
    );
    let diags = errors(f.manifest());
    let d = find(&diags, "peers/mesh.toml", "limits.max_stream_window");
    assert_eq!(d.line, Some(4));
    assert!(d.message.contains("below stream_window"), "{d}");
}

#[test]
fn pending_per_source_defaults_and_is_range_checked() {
    let f = Fixture::new();
    f.good_manifest();
    assert_eq!(
        f.manifest()
            .expect("valid")
            .mesh
            .limits
            .max_pending_per_source,
        8
    );
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nmax_pending_per_source = 2\n",
    );
    let l = f.manifest().expect("valid").mesh.limits;
    assert_eq!(l.max_pending_per_source, 2);
    for bad in ["0", "65537", "-1"] {
        f.write(
            "peers/mesh.toml",
            &format!("mesh_id = \"example\"\n[limits]\nmax_pending_per_source = {bad}\n"),
        );
        let diags = errors(f.manifest());
        let d = find(&diags, "peers/mesh.toml", "limits.max_pending_per_source");
        assert_eq!(d.line, Some(3), "{d}");
        assert!(d.message.contains("1 to 65536"), "{d}");
    }
}

#[test]
fn rekey_limits_default_and_are_range_checked() {
    let f = Fixture::new();
    f.good_manifest();
    let l = f.manifest().expect("valid").mesh.limits;
    assert_eq!(l.rekey, crate::proto::rekey::RekeyPolicy::default());
    assert_eq!(
        (l.rekey.interval, l.rekey.bytes, l.rekey.timeout),
        (Duration::from_secs(120), 16 << 30, Duration::from_secs(10))
    );
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nrekey_interval_ms = 1000\nrekey_bytes = 1048576\nrekey_timeout_ms = 100\n",
    );
    let l = f.manifest().expect("valid").mesh.limits;
    assert_eq!(
        (l.rekey.interval, l.rekey.bytes, l.rekey.timeout),
        (Duration::from_secs(1), 1 << 20, Duration::from_millis(100))
    );
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n[limits]\nrekey_interval_ms = 999\nrekey_bytes = 274877906945\nrekey_timeout_ms = 0\n",
    );
    let diags = errors(f.manifest());
    for (field, line, range) in [
        ("limits.rekey_interval_ms", 3, "1000 to 86400000"),
        ("limits.rekey_bytes", 4, "1048576 to 274877906944"),
        ("limits.rekey_timeout_ms", 5, "100 to 600000"),
    ] {
        let d = find(&diags, "peers/mesh.toml", field);
        assert_eq!(d.line, Some(line), "{d}");
        assert!(d.message.contains(range), "{d}");
    }
}

#[test]
fn mesh_settings_errors() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"bad id!\"\nauth = \"tls13\"\n",
    );
    let diags = errors(f.manifest());
    assert_eq!(find(&diags, "mesh.toml", "mesh_id").line, Some(1));
    let d = find(&diags, "mesh.toml", "auth");
    assert_eq!(d.line, Some(2));
    assert_eq!(
        d.message,
        "unknown auth mode \"tls13\": use \"noise\", \"psk\" or \"tls\""
    );

    f.write("peers/mesh.toml", "auth = \"psk\"\n");
    let diags = errors(f.manifest());
    assert!(diags[0].message.contains("mesh_id"), "{}", show(&diags));
}

#[test]
fn unknown_field_is_rejected_with_its_line() {
    let f = Fixture::new();
    f.good_manifest();
    let text = format!(
        "{}\n[services.x]\ntarget = \"127.0.0.1:1\"\nalow = []\n",
        off2(&key())
    );
    let diags = off2_errors(&f, &text);
    let d = diags
        .iter()
        .find(|d| d.message.contains("unknown field `alow`"))
        .unwrap_or_else(|| panic!("{}", show(&diags)));
    assert!(d.file.ends_with("peers/off2.toml"));
    assert_eq!(d.line, Some(line_of(&text, "alow")));
}

#[test]
fn host_port_forms() {
    let ok = |s: &str| s.parse::<HostPort>().unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(
        ok("192.0.2.1:7443"),
        HostPort::Addr("192.0.2.1:7443".parse().expect("addr"))
    );
    assert_eq!(ok("[2001:db8::1]:7443").port(), 7443);
    assert_eq!(
        ok("off2.example.org:7443"),
        HostPort::Dns {
            host: "off2.example.org".into(),
            port: 7443
        }
    );
    assert_eq!(ok("localhost:1").to_string(), "localhost:1");
    let err = |s: &str| s.parse::<HostPort>().expect_err(s);
    assert!(err("2001:db8::1:7443").contains("[addr]:port"));
    assert!(err("2001:db8::1").contains("[addr]:port"));
    assert!(err("[2001:db8::1]").contains("[addr]:port"));
    assert!(err("host.example.org").contains("no port"));
    assert!(err("host:0").contains("1-65535"));
    assert!(err("192.0.2.1:0").contains("1-65535"));
    assert!(err("host:70000").contains("1-65535"));
    err("-bad.example.org:1");
    err("under_score.org:1");
    err("a..b:1");
    err("999.1.1.1:80");
    err(&format!("{}.org:1", "a".repeat(64)));
}

#[test]
fn bad_endpoint_reported_with_index_and_line() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key()).replace("\"192.0.2.7:7443\"", "\"2001:db8::7:7443\"");
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "peers/off2.toml", "endpoints[2]");
    assert_eq!(d.line, Some(1));
    assert!(d.message.contains("[addr]:port"), "{d}");
}

#[test]
fn exposure_guard_classifies_addresses() {
    for exposed in [
        "0.0.0.0",
        "::",
        "8.8.8.8",
        "192.0.2.7",
        "2001:db8::1",
        "172.32.0.1",
    ] {
        let ip: IpAddr = exposed.parse().expect("ip");
        assert!(is_exposed(ip), "{exposed} should be exposed");
    }
    for internal in [
        "127.0.0.1",
        "127.9.9.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "100.64.0.1",
        "169.254.1.1",
        "::1",
        "fd00::1",
        "fc00::1",
        "fe80::1",
        "::ffff:10.0.0.1",
    ] {
        let ip: IpAddr = internal.parse().expect("ip");
        assert!(!is_exposed(ip), "{internal} should be internal");
    }
}

#[test]
fn public_forward_needs_public_true() {
    let f = Fixture::new();
    f.good_manifest();
    for listen in ["0.0.0.0:16001", "[::]:16001", "8.8.8.8:16001"] {
        let text = off2(&key()).replace("127.0.0.1:16001", listen);
        let diags = off2_errors(&f, &text);
        let d = find(&diags, "peers/off2.toml", "forwards[0].listen");
        assert_eq!(d.line, Some(line_of(&text, "listen =")));
        assert!(d.message.contains("reachable from outside"), "{d}");
        assert!(d.message.contains("public = true"), "{d}");

        let public = text.replace(
            "to = \"moji/off-query\"",
            "to = \"moji/off-query\"\npublic = true",
        );
        f.write("peers/off2.toml", &public);
        let m = f.manifest().unwrap_or_else(|e| panic!("{listen}: {e}"));
        assert!(m.peers[&peer_name("off2")].forwards[0].public);
    }
    for listen in [
        "10.3.0.101:27017",
        "192.168.0.1:1",
        "[fd00::1]:1",
        "[fe80::1]:1",
        "[::1]:1",
    ] {
        let text = off2(&key()).replace("127.0.0.1:16001", listen);
        f.write("peers/off2.toml", &text);
        f.manifest().unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
}

#[test]
fn listen_must_be_an_ip_address() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key()).replace("127.0.0.1:16001", "localhost:16001");
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "peers/off2.toml", "forwards[0].listen");
    assert!(d.message.contains("never resolved"), "{d}");
}

#[test]
fn unknown_peer_in_allow() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key()).replace("[\"ovh1\", \"moji\"]", "[\"ovh1\", \"ovh9\"]");
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "peers/off2.toml", "services.mongodb.allow[1]");
    assert_eq!(d.line, Some(line_of(&text, "allow =")));
    assert_eq!(d.message, "unknown peer \"ovh9\"");
    assert!(d
        .to_string()
        .contains("off2.toml:6: services.mongodb.allow[1]: unknown peer"));
}

#[test]
fn self_in_allow_is_refused() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key()).replace("[\"ovh1\", \"moji\"]", "[\"off2\", \"moji\"]");
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "peers/off2.toml", "services.mongodb.allow[0]");
    assert!(d.message.contains("a peer cannot forward to itself"), "{d}");
}

#[test]
fn forward_reference_errors() {
    let f = Fixture::new();
    f.good_manifest();
    let cases = [
        ("nobody/off-query", "unknown peer \"nobody\""),
        (
            "moji/nothing",
            "peer \"moji\" has no service \"nothing\" (it exports: off-query)",
        ),
        ("off2/mongodb", "a peer cannot forward to itself"),
        ("moji", "is not \"peer/service\""),
        ("Moji/x", "invalid peer name"),
    ];
    for (to, want) in cases {
        let text = off2(&key()).replace("moji/off-query", to);
        let diags = off2_errors(&f, &text);
        let d = find(&diags, "peers/off2.toml", "forwards[0].to");
        assert_eq!(d.line, Some(line_of(&text, "to =")), "{to}");
        assert!(d.message.contains(want), "{to}: {d}");
    }
}

#[test]
fn forward_to_service_that_does_not_allow_us() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/moji.toml",
        &moji(&key()).replace("allow = [\"off2\"]", "allow = [\"ovh1\"]"),
    );
    let diags = errors(f.manifest());
    let d = find(&diags, "peers/off2.toml", "forwards[0].to");
    assert_eq!(d.line, Some(10));
    assert!(
        d.message.starts_with(
            "moji/off-query does not allow off2; add \"off2\" to services.off-query.allow in "
        ),
        "{d}"
    );
    assert!(d.message.ends_with("peers/moji.toml"), "{d}");
}

#[test]
fn duplicate_listen_in_one_peer() {
    let f = Fixture::new();
    f.good_manifest();
    let text = format!(
        "{}\n[[forwards]]\nlisten = \"127.0.0.1:16001\"\nto = \"moji/off-query\"\n",
        off2(&key())
    );
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "peers/off2.toml", "forwards[1].listen");
    assert_eq!(d.line, Some(13));
    assert!(d.message.contains("forwards[0]"), "{d}");
}

#[test]
fn duplicate_public_keys_reported_on_both_files() {
    let f = Fixture::new();
    f.good_manifest();
    let k = key();
    f.write("peers/off2.toml", &off2(&k));
    f.write("peers/ovh1.toml", &simple_peer(&k));
    let diags = errors(f.manifest());
    let a = find(&diags, "peers/off2.toml", "public_key");
    assert_eq!(a.line, Some(2));
    assert!(a.message.contains("peer \"ovh1\""), "{a}");
    let b = find(&diags, "peers/ovh1.toml", "public_key");
    assert!(b.message.contains("peer \"off2\""), "{b}");
}

#[test]
fn bad_public_key() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/ovh1.toml",
        "endpoints = []\npublic_key = \"c2hvcnQ=\"\n",
    );
    let diags = errors(f.manifest());
    assert_eq!(find(&diags, "peers/ovh1.toml", "public_key").line, Some(2));
}

#[test]
fn every_problem_is_reported_in_one_run() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key())
        .replace("[\"ovh1\", \"moji\"]", "[\"ovh9\", \"moji\"]")
        .replace("127.0.0.1:16001", "0.0.0.0:16001")
        .replace("10.1.0.102:27017", "10.1.0.102");
    let diags = off2_errors(&f, &text);
    find(&diags, "off2.toml", "services.mongodb.allow[0]");
    find(&diags, "off2.toml", "forwards[0].listen");
    find(&diags, "off2.toml", "services.mongodb.target");
    assert_eq!(diags.len(), 3, "{}", show(&diags));
}

#[test]
fn unusable_directories() {
    let f = Fixture::new();
    let missing = f.path("nope");
    let d = check_manifest_dir(&missing).expect_err("missing dir");
    assert_eq!(d.file, missing);
    assert!(load_manifest(&missing).is_err());

    fs::create_dir(f.path("empty")).expect("mkdir");
    let d = check_manifest_dir(&f.path("empty")).expect_err("no mesh.toml");
    assert_eq!(d.file, f.path("empty/mesh.toml"));

    f.write("zero/mesh.toml", MESH);
    let diags = errors(load_manifest(&f.path("zero")));
    assert!(diags[0].message.contains("no peers"), "{}", show(&diags));
}

#[test]
fn peer_file_names_must_be_peer_names() {
    let f = Fixture::new();
    f.good_manifest();
    f.write("peers/Bad_Name.toml", &simple_peer(&key()));
    let diags = errors(f.manifest());
    let d = find(&diags, "peers/Bad_Name.toml", "");
    assert!(d.message.contains("invalid peer name"), "{d}");
}

#[test]
fn toml_syntax_error_has_a_line() {
    let f = Fixture::new();
    f.good_manifest();
    let diags = off2_errors(&f, "endpoints = []\npublic_key = \n");
    assert_eq!(find(&diags, "peers/off2.toml", "").line, Some(2));
}

#[test]
fn lint_warnings() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/ovh1.toml",
        &format!(
            "endpoints = []\npublic_key = \"{}\"\n[services.lonely]\ntarget = \"8.8.8.8:53\"\n\
             [services.dial]\ntarget = \"127.0.0.1:1\"\nallow = [\"moji\"]\n",
            key()
        ),
    );
    f.write(
        "peers/moji.toml",
        &format!(
            "{}\n[[forwards]]\nlisten = \"127.0.0.1:1\"\nto = \"ovh1/dial\"\n",
            moji(&key())
        ),
    );
    let m = f.manifest().expect("warnings are not errors");
    let w = lint_manifest(&m);
    find(&w, "peers/ovh1.toml", "services.lonely.allow");
    find(&w, "peers/ovh1.toml", "services.lonely.target");
    let d = find(&w, "peers/ovh1.toml", "endpoints");
    assert!(d.message.contains("moji"), "{d}");
}

#[test]
fn shipped_example_manifest_is_clean() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/peers"));
    let m = load_manifest(dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.peers.len(), 3);
    assert!(m.peers.values().any(|p| !p.forwards.is_empty()));
    let w = lint_manifest(&m);
    assert!(w.is_empty(), "{}", show(&w));
}

// ---- host config ----

/// A good manifest plus a host config for off2 with its real key; returns the config path.
fn host_fixture(f: &Fixture, extra: &str) -> PathBuf {
    f.write("peers/mesh.toml", MESH);
    let key_path = f.path("etc/host.key");
    fs::create_dir_all(f.path("etc")).expect("mkdir");
    let _ = fs::remove_file(&key_path);
    let public = keys::create_private_key_file(&key_path).expect("key");
    f.write("peers/off2.toml", &off2(&public));
    f.write("peers/moji.toml", &moji(&key()));
    f.write("peers/ovh1.toml", &simple_peer(&key()));
    f.write(
        "etc/meshd.toml",
        &format!("name = \"off2\"\nmanifest = \"../peers\"\nkey = \"host.key\"\n{extra}"),
    )
}

#[test]
fn host_config_loads_with_defaults_and_relative_paths() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.name, peer_name("off2"));
    assert_eq!(c.host.manifest, f.path("etc/../peers"));
    assert_eq!(c.host.key, f.path("etc/host.key"));
    assert_eq!(
        c.host.admin,
        "127.0.0.1:9464".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.host.state_dir, PathBuf::from("/var/lib/meshd"));
    assert_eq!(c.host.listen, None);
    assert_eq!(c.listen, "[::]:7443".parse::<SocketAddr>().expect("addr"));
    assert_eq!(c.me().name, peer_name("off2"));
    assert!(c.mesh_secret.is_none());

    let path = host_fixture(&f, "listen = \"0.0.0.0:9000\"\nadmin = \"[::1]:1\"\n");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.listen,
        "0.0.0.0:9000".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.host.admin, "[::1]:1".parse::<SocketAddr>().expect("addr"));
}

#[test]
fn host_config_field_errors() {
    let f = Fixture::new();
    let path = f.write(
        "meshd.toml",
        "name = \"Off2\"\nmanifest = \"p\"\nkey = \"k\"\nlisten = \"any:1\"\ncolour = 1\n",
    );
    let e = load_host_config(&path).expect_err("unknown field");
    assert_eq!(e.diagnostics()[0].line, Some(5));
    f.write(
        "meshd.toml",
        "name = \"Off2\"\nmanifest = \"p\"\nkey = \"k\"\nlisten = \"any:1\"\n",
    );
    let e = load_host_config(&path).expect_err("bad values");
    assert_eq!(find(e.diagnostics(), "meshd.toml", "name").line, Some(1));
    assert_eq!(find(e.diagnostics(), "meshd.toml", "listen").line, Some(4));
}

#[test]
fn busy_poll_us_defaults_and_range() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.busy_poll, Duration::from_micros(200));
    let path = host_fixture(&f, "busy_poll_us = 0\n");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.busy_poll, Duration::ZERO);
    let path = host_fixture(&f, "busy_poll_us = 250\n");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.busy_poll, Duration::from_micros(250));
    for bad in ["-1", "10001"] {
        let path = host_fixture(&f, &format!("busy_poll_us = {bad}\n"));
        let e = load_config(&path).expect_err("out of range");
        let d = find(e.diagnostics(), "meshd.toml", "busy_poll_us");
        assert_eq!(d.line, Some(4), "{}", show(e.diagnostics()));
        assert!(
            d.message.contains("use 0 (never poll) to 10000"),
            "{}",
            d.message
        );
    }
}

#[test]
fn drain_grace_ms_defaults_and_range() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.drain_grace, Duration::from_secs(20));
    let path = host_fixture(&f, "drain_grace_ms = 0\n");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.host.drain_grace, Duration::ZERO);
    for bad in ["-1", "3600001"] {
        let path = host_fixture(&f, &format!("drain_grace_ms = {bad}\n"));
        let e = load_config(&path).expect_err("out of range");
        let d = find(e.diagnostics(), "meshd.toml", "drain_grace_ms");
        assert_eq!(d.line, Some(4), "{}", show(e.diagnostics()));
        assert!(
            d.message
                .contains("use 0 (reset open streams at once) to 3600000"),
            "{}",
            d.message
        );
    }
}

#[test]
fn group_readable_key_is_refused_with_chmod_hint() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    fs::set_permissions(f.path("etc/host.key"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = load_config(&path).expect_err("0644 key");
    let d = find(e.diagnostics(), "etc/meshd.toml", "key");
    assert_eq!(d.line, Some(3));
    assert!(d.message.contains("chmod 600"), "{d}");
}

#[test]
fn key_mismatch_is_detected() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    f.write("peers/off2.toml", &off2(&key()));
    let e = load_config(&path).expect_err("mismatch");
    let d = find(e.diagnostics(), "etc/meshd.toml", "key");
    assert!(
        d.message.contains("does not belong to peer \"off2\""),
        "{d}"
    );
    assert!(d.message.contains("off2.toml"), "{d}");
}

#[test]
fn host_name_must_be_in_manifest() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    let text = fs::read_to_string(&path)
        .expect("read")
        .replace("off2", "off3");
    fs::write(&path, text).expect("write");
    let e = load_config(&path).expect_err("unknown host");
    let d = find(e.diagnostics(), "etc/meshd.toml", "name");
    assert_eq!(d.line, Some(1));
}

#[test]
fn psk_needs_a_mesh_secret() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    f.write("peers/mesh.toml", "mesh_id = \"example\"\nauth = \"psk\"\n");
    let e = load_config(&path).expect_err("psk without secret");
    find(e.diagnostics(), "etc/meshd.toml", "mesh_secret");

    let path = host_fixture(&f, "mesh_secret = \"mesh.secret\"\n");
    f.write("peers/mesh.toml", "mesh_id = \"example\"\nauth = \"psk\"\n");
    keys::create_mesh_secret_file(&f.path("etc/mesh.secret")).expect("secret");
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.mesh_secret.is_some());
    assert_eq!(c.manifest.mesh.auth, AuthMode::Psk);
}

#[test]
fn pairs_override_the_mesh_auth_mode() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\nauth = \"noise\"\n\n[[pairs]]\npeers = [\"off2\", \"moji\"]\nauth = \"tls\"\n",
    );
    let m = f.manifest().expect("valid");
    let (off2, moji, ovh1) = (peer_name("off2"), peer_name("moji"), peer_name("ovh1"));
    assert_eq!(m.mesh.auth_between(&off2, &moji), AuthMode::Tls);
    assert_eq!(m.mesh.auth_between(&moji, &off2), AuthMode::Tls);
    assert_eq!(m.mesh.auth_between(&off2, &ovh1), AuthMode::Noise);
}

#[test]
fn pair_errors_name_their_field_and_line() {
    let f = Fixture::new();
    f.good_manifest();
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n\n[[pairs]]\npeers = [\"off2\", \"ghost\"]\nauth = \"tls\"\n\n\
         [[pairs]]\npeers = [\"off2\"]\nauth = \"noise\"\n\n\
         [[pairs]]\npeers = [\"moji\", \"off2\"]\nauth = \"quic\"\n\n\
         [[pairs]]\npeers = [\"off2\", \"moji\"]\nauth = \"psk\"\n",
    );
    let diags = errors(f.manifest());
    let d = find(&diags, "mesh.toml", "pairs[0].peers[1]");
    assert_eq!(d.line, Some(4));
    assert!(
        d.message.contains("unknown peer \"ghost\""),
        "{}",
        d.message
    );
    let d = find(&diags, "mesh.toml", "pairs[1].peers");
    assert!(d.message.contains("exactly two peers"), "{}", d.message);
    let d = find(&diags, "mesh.toml", "pairs[2].auth");
    assert_eq!(d.line, Some(13));
    let d = find(&diags, "mesh.toml", "pairs[3].peers");
    assert!(d.message.contains("listed twice"), "{}", d.message);
}

#[test]
fn ca_fingerprint_is_normalized_and_checked() {
    let f = Fixture::new();
    f.good_manifest();
    let hex = "AB".repeat(32);
    f.write(
        "peers/mesh.toml",
        &format!(
            "mesh_id = \"example\"\nca_fingerprint = [\"{hex}\", \"sha256:{}\"]\n",
            "cd".repeat(32)
        ),
    );
    let m = f.manifest().expect("valid");
    assert_eq!(
        m.mesh.ca_fingerprints,
        vec![
            format!("sha256:{}", "ab".repeat(32)),
            format!("sha256:{}", "cd".repeat(32))
        ]
    );
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\nca_fingerprint = \"sha256:1234\"\n",
    );
    let diags = errors(f.manifest());
    let d = find(&diags, "mesh.toml", "ca_fingerprint");
    assert_eq!(d.line, Some(2));
}

#[test]
fn tls_links_need_the_host_tls_files() {
    let f = Fixture::new();
    let path = host_fixture(&f, "");
    f.write(
        "peers/mesh.toml",
        "mesh_id = \"example\"\n\n[[pairs]]\npeers = [\"off2\", \"moji\"]\nauth = \"tls\"\n",
    );
    let e = load_config(&path).expect_err("no cert");
    let d = &e.diagnostics()[0];
    assert_eq!(d.field, "cert");
    assert!(d.message.contains("moji"), "{}", d.message);

    // Only part of an identity.
    let path = f.write(
        "etc/meshd.toml",
        "name = \"off2\"\nmanifest = \"../peers\"\nkey = \"host.key\"\ncert = \"off2.crt\"\n",
    );
    let e = load_config(&path).expect_err("partial");
    let d = &e.diagnostics()[0];
    assert_eq!((d.field.as_str(), d.line), ("cert_key", Some(4)));
    assert!(
        d.message.contains("cert_key and ca missing"),
        "{}",
        d.message
    );

    // A full identity made by certgen loads, and a pinned other CA is refused at `ca`.
    use crate::tls::certgen::{self, Validity};
    let ca = certgen::new_ca("t", Validity::days_from_now(2)).expect("ca");
    let cert = certgen::issue(
        &ca.cert_pem,
        &ca.key_pem,
        "off2",
        Validity::days_from_now(2),
    )
    .expect("cert");
    certgen::write_public(&f.path("etc/ca.crt"), &ca.cert_pem, true).expect("w");
    certgen::write_public(&f.path("etc/off2.crt"), &cert.cert_pem, true).expect("w");
    certgen::write_private(&f.path("etc/off2.key"), &cert.key_pem, true).expect("w");
    let path = f.write(
        "etc/meshd.toml",
        "name = \"off2\"\nmanifest = \"../peers\"\nkey = \"host.key\"\n\
         cert = \"off2.crt\"\ncert_key = \"off2.key\"\nca = \"ca.crt\"\n",
    );
    let c = load_config(&path).unwrap_or_else(|e| panic!("{e}"));
    let tls = c.tls.expect("tls material");
    assert_eq!(tls.ca_fingerprints, vec![crate::tls::fingerprint(&ca.der)]);
    f.write(
        "peers/mesh.toml",
        &format!(
            "mesh_id = \"example\"\nauth = \"tls\"\nca_fingerprint = \"sha256:{}\"\n",
            "00".repeat(32)
        ),
    );
    let e = load_config(&path).expect_err("pinned other CA");
    let d = &e.diagnostics()[0];
    assert_eq!((d.field.as_str(), d.line), ("ca", Some(6)));
    // It also says where the pin is written.
    assert!(
        d.message.contains("peers/mesh.toml:3: ca_fingerprint"),
        "{}",
        d.message
    );
    assert!(d.message.contains(&"00".repeat(32)), "{}", d.message);
}

#[test]
fn builtin_service_names_are_reserved() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key()).replace("[services.mongodb]", "[services._status]");
    let diags = off2_errors(&f, &text);
    let d = find(&diags, "off2.toml", "services._status");
    assert_eq!(d.code, Code::BadServiceName);
    assert!(d.message.contains("is reserved"), "{d}");
    assert!(ServiceName::new(ServiceName::STATUS).is_err());
    assert!(ServiceName::status().is_status());
}

/// Each finding carries the code of the check that made it, whatever its message says.
#[test]
fn findings_carry_their_code() {
    let f = Fixture::new();
    f.good_manifest();
    let text = off2(&key())
        .replace("10.1.0.102:27017", "no-port")
        .replace("\"moji\"]", "\"moji\", \"nobody\"]")
        .replace("moji/off-query", "moji/nothing");
    let diags = off2_errors(&f, &text);
    let code = |field: &str| find(&diags, "off2.toml", field).code;
    assert_eq!(code("services.mongodb.target"), Code::BadTarget);
    assert_eq!(code("services.mongodb.allow[2]"), Code::AllowUnknownPeer);
    assert_eq!(code("forwards[0].to"), Code::ForwardUnknownService);
    assert!(diags.iter().all(|d| d.code.severity() == Severity::Error));
}
