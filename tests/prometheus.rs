//! The shipped alert rules pass `promtool check rules` and `promtool test rules`, and a real
//! Prometheus scrapes two real meshd daemons and sees the dialer's link go down when the
//! acceptor is killed and come back when it restarts.
//!
//! The Grafana dashboard (`packaging/grafana/meshd.json`) has the structure Grafana's
//! file provisioning loads, and every PromQL expression in it returns series from a real
//! Prometheus that scraped the two daemons after a stream, a reload and a bad handshake.
//!
//! These tests need the Debian package `prometheus` (which ships `prometheus` and
//! `promtool`); without it they fail and say so, they never pass silently.

mod metrics_fixture;

use std::collections::BTreeSet;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metrics_fixture::{free_port, http_get, sink_then_reply, transfer, wait_for, Mesh};

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

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/meshd.json");
    let text = fs::read_to_string(&path).expect("read packaging/grafana/meshd.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("meshd.json is not JSON: {e}"))
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let top = dash["panels"].as_array().expect("panels is an array");
    let mut out = Vec::new();
    for p in top {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The PromQL of every target, with Grafana's variables as Grafana would fill them in for
/// "all hosts" and a 30 s rate interval.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target without expr");
            let filled = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*");
            out.push((p["title"].as_str().unwrap_or("?").to_owned(), filled));
        }
    }
    out
}

/// What Grafana's file provisioning needs of a dashboard (the fields its dashboard schema
/// requires, and what provisioning cannot fill in), checked field by field.
#[test]
fn grafana_dashboard_has_the_provisioning_structure() {
    let dash = dashboard();
    for key in ["title", "uid"] {
        assert!(
            dash[key].as_str().is_some_and(|s| !s.is_empty()),
            "{key} missing"
        );
    }
    let uid = dash["uid"].as_str().unwrap_or("");
    assert!(
        uid.len() <= 40
            && uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "uid {uid:?}: at most 40 of [A-Za-z0-9_-]"
    );
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    // An exported dashboard's ${DS_...} inputs are only filled in by the import UI, never
    // by provisioning: the data source must be a template variable instead.
    assert!(
        dash.get("__inputs").is_none(),
        "provisioning ignores __inputs"
    );
    assert!(
        dash.get("id").is_none_or(|id| id.is_null()),
        "a provisioned dashboard has no id"
    );
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| v["name"].as_str().expect("variable name"))
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"instance"),
        "{vars:?}"
    );

    let all = panels(&dash);
    assert!(all.len() >= 10, "only {} panels", all.len());
    let mut ids = BTreeSet::new();
    let known = [
        "row",
        "table",
        "stat",
        "timeseries",
        "gauge",
        "state-timeline",
    ];
    let mut exprs = 0;
    for p in &all {
        let title = p["title"].as_str().expect("panel title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id at {title}"
        );
        let ty = p["type"].as_str().expect("panel type");
        assert!(known.contains(&ty), "{title}: unknown panel type {ty}");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(g["y"].as_u64().is_some(), "{title}: gridPos.y");
        match (x, w, h) {
            (Some(x), Some(w), Some(h)) => {
                assert!(w >= 1 && x + w <= 24 && h >= 1, "{title}: gridPos {g}")
            }
            _ => panic!("{title}: gridPos {g}"),
        }
        if ty == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}"
            );
            exprs += 1;
        }
    }
    assert_eq!(exprs, dashboard_queries(&dash).len());
    // What the issue asks the dashboard to show, by the metric each panel reads.
    let text = serde_json::to_string(&dash).expect("json");
    for metric in [
        "meshd_link_up",
        "meshd_link_rtt_seconds_bucket",
        "meshd_streams_active",
        "meshd_streams_total",
        "meshd_bytes_total",
        "meshd_handshake_failures_total",
        "meshd_config_reloads_total",
        "meshd_config_info",
        "meshd_busy_poll_seconds_total",
    ] {
        assert!(text.contains(metric), "no panel reads {metric}");
    }
}

#[test]
fn every_dashboard_query_returns_series_from_a_scraped_mesh() {
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() >= 10, "only {} queries", queries.len());
    let (target, _) = sink_then_reply(100);
    let mesh = Mesh::new(target, 200);
    let b = mesh.start("b");
    let a = mesh.start("a");
    a.wait_link("b", "dialer", "up");
    let prom_dir = tempfile::tempdir().expect("tempdir");
    let mut prom = Prometheus::start(prom_dir.path(), &[mesh.a_admin, mesh.b_admin]);
    prom.wait_value("up", &[("instance", &mesh.b_admin.to_string())], "1");
    prom.wait_value("up", &[("instance", &mesh.a_admin.to_string())], "1");

    // Something for each panel to show: streams and bytes, a reload, a bad handshake.
    for _ in 0..3 {
        assert_eq!(transfer(mesh.entrance, 256 * 1024), 100);
    }
    a.signal("HUP");
    {
        use std::io::Write;
        let mut garbage = std::net::TcpStream::connect(mesh.b_mesh).expect("connect mesh port");
        let _ = garbage.write_all(b"GET / HTTP/1.1\r\n\r\n-not-a-meshd-preamble-----");
    }
    let mut checked = 0;
    for (title, query) in &queries {
        let (addr, log, child) = (prom.addr, prom.log.clone(), &mut prom.child);
        let n = wait_for(
            &format!("series for panel {title:?}: {query}"),
            Duration::from_secs(40),
            Duration::from_millis(250),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "prometheus exited with {status}:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                let path = format!("/api/v1/query?query={}", encode(query));
                let (code, body) = http10_get(addr, &path)?;
                if code != 200 {
                    // A syntax error is a 400: it never gets better, fail at once.
                    assert_ne!(code, 400, "{title}: Prometheus rejects {query}: {body}");
                    return Err(format!("{code}: {body}"));
                }
                let doc: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| e.to_string())?;
                let series = doc["data"]["result"].as_array().map_or(0, Vec::len);
                // NaN (a quantile of no observations yet) is not a value to show.
                let nan = body.contains("\"NaN\"");
                if series > 0 && !nan {
                    Ok(series)
                } else {
                    Err(body)
                }
            },
        );
        assert!(n > 0);
        checked += 1;
    }
    assert_eq!(checked, queries.len());
    drop(b);
}

/// `GET` as HTTP/1.0, so Prometheus answers with a plain body, never chunked.
fn http10_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok((code, body.to_owned()))
}
