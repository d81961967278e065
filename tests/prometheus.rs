//! The shipped alert rules pass `promtool check rules` and `promtool test rules`, and a real
//! Prometheus scrapes two real meshd daemons and sees the dialer's link go down when the
//! acceptor is killed and come back when it restarts.
//!
//! These tests need the Debian package `prometheus` (which ships `prometheus` and
//! `promtool`); without it they fail and say so, they never pass silently.

mod metrics_fixture;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metrics_fixture::{free_port, http_get, sink_then_reply, wait_for, Mesh};

const INSTALL: &str = "install the Debian package `prometheus` (apt-get install -y prometheus), \
                       which provides /usr/bin/prometheus and /usr/bin/promtool";

/// The path of `name` on PATH (or /usr/bin), or a failing test saying what to install.
fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` not found: {INSTALL}"))
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus")
}

fn promtool(args: &[&str]) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(rules_dir())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_and_unit_tests_the_shipped_alert_rules() {
    promtool(&["check", "rules", "meshd-alerts.yml"]);
    promtool(&["test", "rules", "meshd-alerts.test.yml"]);
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path, targets: &[SocketAddr]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - \"{}\"\n\
                 scrape_configs:\n  - job_name: meshd\n    static_configs:\n      - targets: [{}]\n",
                rules_dir().join("meshd-alerts.yml").display(),
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let log = dir.join("prometheus.log");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus ({e}): {INSTALL}"));
        Self { child, addr, log }
    }

    /// Waits (30 s at most) until `query` has the value `want` for the series matching
    /// `labels`.
    fn wait_value(&mut self, query: &str, labels: &[(&str, &str)], want: &str) {
        let (addr, log, child) = (self.addr, self.log.clone(), &mut self.child);
        wait_for(
            &format!("{query} {labels:?} == {want} in Prometheus"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "prometheus exited with {status}:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                match instant_query(addr, query, labels)? {
                    v if v == want => Ok(()),
                    v => Err(format!("value {v}")),
                }
            },
        );
    }
}

/// The value of an instant `query` for the series whose labels include `labels`.
fn instant_query(addr: SocketAddr, query: &str, labels: &[(&str, &str)]) -> Result<String, String> {
    let path = format!("/api/v1/query?query={}", encode(query));
    let (code, body) = http_get(addr, &path)?;
    if code != 200 {
        return Err(format!("{code}: {body}"));
    }
    let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    doc["data"]["result"]
        .as_array()
        .and_then(|r| {
            r.iter().find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s["metric"][*k].as_str() == Some(*v))
            })
        })
        .and_then(|s| s["value"][1].as_str().map(str::to_owned))
        .ok_or(body)
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_sees_a_link_go_down_and_come_back() {
    let (target, _) = sink_then_reply(1);
    let mesh = Mesh::new(target, 200);
    let mut b = mesh.start("b");
    let a = mesh.start("a");
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let mut prom = Prometheus::start(prom_dir.path(), &[mesh.a_admin, mesh.b_admin]);
    let dialer = [("peer", "b"), ("direction", "dialer")];
    let b_instance = mesh.b_admin.to_string();

    prom.wait_value("meshd_link_up", &dialer, "1");
    prom.wait_value(
        "meshd_link_up",
        &[("peer", "a"), ("direction", "acceptor")],
        "1",
    );

    b.kill();
    prom.wait_value("meshd_link_up", &dialer, "0");
    prom.wait_value("up", &[("instance", &b_instance)], "0");

    let _b = mesh.start("b");
    prom.wait_value("meshd_link_up", &dialer, "1");
    prom.wait_value("up", &[("instance", &b_instance)], "1");
    // The rule file loaded into a real server, and the scraped config hash is there.
    let hash = a.status().expect("status")["config_hash"]
        .as_str()
        .expect("hash")
        .to_owned();
    prom.wait_value("meshd_config_info", &[("hash", &hash)], "1");
    let (code, body) = http_get(prom.addr, "/api/v1/rules").expect("rules");
    assert_eq!(code, 200);
    assert!(body.contains("MeshdLinkDown"), "{body}");
}
