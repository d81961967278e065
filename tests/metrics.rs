//! The admin server of real `meshd` processes: every metric after a stream crosses a link,
//! exact byte counts on both sides while and after they flow, RTT observations, `/status`,
//! `/healthz` and `meshctl status` following a link down and back up, a dead (silent) peer
//! detected by pings and redialed, and one wrong-key handshake counted exactly once.

mod metrics_fixture;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use metrics_fixture::{eventually, http_get, samples, sink_then_reply, transfer, value, Mesh};

/// (name in `# TYPE`, type, sample names, label names of every sample).
const FAMILIES: &[(&str, &str, &[&str], &[&str])] = &[
    (
        "meshd_link_up",
        "gauge",
        &["meshd_link_up"],
        &["peer", "direction"],
    ),
    (
        "meshd_link_rtt_seconds",
        "histogram",
        &[
            "meshd_link_rtt_seconds_bucket",
            "meshd_link_rtt_seconds_sum",
            "meshd_link_rtt_seconds_count",
        ],
        &["peer"],
    ),
    (
        "meshd_link_established",
        "counter",
        &["meshd_link_established_total"],
        &["peer"],
    ),
    (
        "meshd_link_failures",
        "counter",
        &["meshd_link_failures_total"],
        &["peer", "reason"],
    ),
    (
        "meshd_handshake_failures",
        "counter",
        &["meshd_handshake_failures_total"],
        &["reason"],
    ),
    (
        "meshd_streams_active",
        "gauge",
        &["meshd_streams_active"],
        &["peer", "service"],
    ),
    (
        "meshd_streams",
        "counter",
        &["meshd_streams_total"],
        &["peer", "service", "result"],
    ),
    (
        "meshd_bytes",
        "counter",
        &["meshd_bytes_total"],
        &["peer", "service", "direction"],
    ),
    (
        "meshd_config_reloads",
        "counter",
        &["meshd_config_reloads_total"],
        &["result"],
    ),
    (
        "meshd_config_info",
        "gauge",
        &["meshd_config_info"],
        &["hash"],
    ),
    (
        "meshd_build_info",
        "gauge",
        &["meshd_build_info"],
        &["version"],
    ),
];

fn meshctl_status(admin: &str, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.args(["status", "--admin", admin]);
    if json {
        cmd.args(["--format", "json"]);
    }
    let out = cmd.output().expect("run meshctl status");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_metric_is_exported_with_its_type_and_labels() {
    let (target, _) = sink_then_reply(10);
    let mesh = Mesh::new(target, 200);
    // a starts first: its dials fail until b is up, which creates meshd_link_failures.
    let a = mesh.start("a");
    eventually("a dial failure counted", || {
        let m = a.metrics()?;
        value(&m, "meshd_link_failures_total", &[("peer", "b")])
            .filter(|v| *v >= 1.0)
            .ok_or(m)
    });
    let b = mesh.start("b");
    a.wait_link("b", "dialer", "up");
    assert_eq!(transfer(mesh.entrance, 100), 10);

    for (who, d, direction) in [("a", &a, "dialer"), ("b", &b, "acceptor")] {
        let text = eventually(
            &format!("{who}: stream counted and an RTT observed"),
            || {
                let m = d.metrics()?;
                let done = value(&m, "meshd_streams_total", &[("result", "ok")]) == Some(1.0)
                    && value(&m, "meshd_link_rtt_seconds_count", &[("peer", "a")])
                        .or(value(&m, "meshd_link_rtt_seconds_count", &[("peer", "b")]))
                        .is_some_and(|c| c >= 1.0);
                if done {
                    Ok(m)
                } else {
                    Err(m)
                }
            },
        );
        assert!(text.ends_with("# EOF\n"), "{who}: {text}");
        let all = samples(&text);
        for (family, kind, names, labels) in FAMILIES {
            // b accepts and never dials: it has no failures to show.
            if who == "b" && *family == "meshd_link_failures" {
                continue;
            }
            assert!(
                text.contains(&format!("# TYPE {family} {kind}\n")),
                "{who}: no `# TYPE {family} {kind}` in\n{text}"
            );
            let mine: Vec<_> = all
                .iter()
                .filter(|s| names.contains(&s.name.as_str()))
                .collect();
            assert!(!mine.is_empty(), "{who}: no sample of {family}:\n{text}");
            for s in mine {
                let mut keys: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                keys.remove("le");
                let want: BTreeSet<&str> = labels.iter().copied().collect();
                assert_eq!(keys, want, "{who}: labels of {s:?}");
            }
        }
        let up = value(&text, "meshd_link_up", &[("direction", direction)]);
        assert_eq!(up, Some(1.0), "{who}: {text}");
        assert_eq!(
            value(
                &text,
                "meshd_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
        let status = d.status().expect("status");
        let hash = status["config_hash"].as_str().expect("hash").to_owned();
        assert_eq!(hash.len(), 16, "{status}");
        assert_eq!(
            value(&text, "meshd_config_info", &[("hash", &hash)]),
            Some(1.0),
            "{who}: {text}"
        );
        assert_eq!(status["host"], who);
    }
}

#[test]
fn byte_counters_are_exact_on_both_sides_and_count_while_bytes_flow() {
    let n = 3 * 1024 * 1024 + 123;
    let m = 1024 * 1024 + 7;
    let (target, read) = sink_then_reply(m);
    let mesh = Mesh::new(target, 1000);
    let b = mesh.start("b");
    let a = mesh.start("a");
    a.wait_link("b", "dialer", "up");
    let bytes = |d: &metrics_fixture::Daemon, dir: &str| -> Result<f64, String> {
        let text = d.metrics()?;
        value(
            &text,
            "meshd_bytes_total",
            &[
                ("peer", if d.admin == a.admin { "b" } else { "a" }),
                ("service", "echo"),
                ("direction", dir),
            ],
        )
        .ok_or(text)
    };

    // A first chunk on a stream that stays open shows up before the stream ends.
    let first = 100_000usize;
    let mut s = TcpStream::connect(mesh.entrance).expect("connect");
    s.write_all(&vec![1u8; first]).expect("write");
    eventually("live counting at a (out) and b (in)", || {
        let (out, inb) = (bytes(&a, "out")?, bytes(&b, "in")?);
        if out == first as f64 && inb == first as f64 {
            Ok(())
        } else {
            Err(format!("a out {out}, b in {inb}"))
        }
    });
    let active = a.metrics().expect("metrics");
    assert_eq!(
        value(
            &active,
            "meshd_streams_active",
            &[("peer", "b"), ("service", "echo")]
        ),
        Some(1.0),
        "{active}"
    );
    assert_eq!(a.link("b", "dialer").expect("link")["streams"], 1);
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("reply");
    assert_eq!(rest.len(), m);
    assert_eq!(read.recv_timeout(Duration::from_secs(10)), Ok(first));

    // A whole stream: n bytes out, m bytes back.
    assert_eq!(transfer(mesh.entrance, n), m);
    assert_eq!(read.recv_timeout(Duration::from_secs(10)), Ok(n));
    let (sent, back) = ((first + n) as f64, (2 * m) as f64);
    eventually("exact byte counters on both sides", || {
        let got = [
            bytes(&a, "out")?,
            bytes(&a, "in")?,
            bytes(&b, "in")?,
            bytes(&b, "out")?,
        ];
        if got == [sent, back, sent, back] {
            Ok(())
        } else {
            Err(format!(
                "a out/in, b in/out = {got:?}, want {:?}",
                [sent, back, sent, back]
            ))
        }
    });
    let link = a.link("b", "dialer").expect("link");
    assert_eq!(link["bytes_out"], first + n, "{link}");
    assert_eq!(link["bytes_in"], 2 * m, "{link}");
    assert_eq!(link["streams"], 0, "{link}");
    let link = b.link("a", "acceptor").expect("link");
    assert_eq!(link["bytes_in"], first + n, "{link}");
    assert_eq!(link["bytes_out"], 2 * m, "{link}");
    let text = a.metrics().expect("metrics");
    assert_eq!(
        value(
            &text,
            "meshd_streams_total",
            &[("service", "echo"), ("result", "ok")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "meshd_streams_active", &[("service", "echo")]),
        Some(0.0)
    );
}

#[test]
fn rtt_histogram_fills_at_the_ping_interval() {
    let (target, _) = sink_then_reply(0);
    let mesh = Mesh::new(target, 200);
    let b = mesh.start("b");
    let a = mesh.start("a");
    a.wait_link("b", "dialer", "up");
    for (d, peer) in [(&a, "b"), (&b, "a")] {
        let text = eventually("3 RTT observations", || {
            let m = d.metrics()?;
            match value(&m, "meshd_link_rtt_seconds_count", &[("peer", peer)]) {
                Some(c) if c >= 3.0 => Ok(m),
                _ => Err(m),
            }
        });
        let inf = value(
            &text,
            "meshd_link_rtt_seconds_bucket",
            &[("peer", peer), ("le", "+Inf")],
        );
        let count = value(&text, "meshd_link_rtt_seconds_count", &[("peer", peer)]);
        assert_eq!(inf, count, "{text}");
        let sum = value(&text, "meshd_link_rtt_seconds_sum", &[("peer", peer)]).expect("sum");
        assert!(sum > 0.0 && sum < 1.0, "loopback RTTs sum to {sum}");
        let rtt = d
            .link(peer, if peer == "b" { "dialer" } else { "acceptor" })
            .expect("link")["rtt_ms"]
            .as_f64()
            .expect("rtt_ms after pings");
        assert!(rtt > 0.0 && rtt < 1000.0, "{rtt}");
    }
}

#[test]
fn status_healthz_and_meshctl_follow_a_peer_killed_and_back() {
    let (target, _) = sink_then_reply(3);
    let mesh = Mesh::new(target, 200);
    let mut b = mesh.start("b");
    let a = mesh.start("a");
    let admin = mesh.a_admin.to_string();

    let link = a.wait_link("b", "dialer", "up");
    assert_eq!(link["required"], true);
    assert!(link["last_handshake_age_s"].as_u64().is_some(), "{link}");
    assert_eq!(http_get(mesh.a_admin, "/healthz"), Ok((200, "ok\n".into())));
    let (code, out, err) = meshctl_status(&admin, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("host a"), "{out}");
    assert!(
        out.contains(&format!(
            "config {}",
            a.status().expect("s")["config_hash"]
                .as_str()
                .expect("hash")
        )),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with("b "))
        .expect("a row for b");
    assert!(row.contains("dialer") && row.contains(" up "), "{out}");
    assert!(row.contains(" noise "), "the auth column: {out}");
    for column in [
        "PEER",
        "DIRECTION",
        "STATE",
        "AUTH",
        "RTT",
        "HANDSHAKE",
        "STREAMS",
        "IN",
        "OUT",
        "RECONNECTS",
        "LAST ERROR",
    ] {
        assert!(out.contains(column), "{column} missing:\n{out}");
    }
    let (code, json, _) = meshctl_status(&admin, true);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("meshctl json");
    assert_eq!(doc["host"], "a");
    assert_eq!(doc["links"][0]["state"], "up");
    assert_eq!(doc["links"][0]["auth"], "noise");

    b.kill();
    let link = a.wait_link("b", "dialer", "down");
    assert!(link["last_error"].as_str().is_some(), "{link}");
    let (code, body) = http_get(mesh.a_admin, "/healthz").expect("healthz");
    assert_eq!(code, 503);
    assert!(body.contains("link to b is down"), "{body}");
    let (code, out, err) = meshctl_status(&admin, false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("DOWN"), "{out}");
    let text = a.metrics().expect("metrics");
    assert_eq!(
        value(
            &text,
            "meshd_link_up",
            &[("peer", "b"), ("direction", "dialer")]
        ),
        Some(0.0)
    );

    let b = mesh.start("b");
    let link = a.wait_link("b", "dialer", "up");
    assert!(link["reconnects"].as_u64() >= Some(1), "{link}");
    b.wait_link("a", "acceptor", "up");
    eventually("healthz ok again", || {
        match http_get(mesh.a_admin, "/healthz")? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let (code, out, err) = meshctl_status(&admin, false);
    assert_eq!(code, 0, "{out}{err}");
    let text = a.metrics().expect("metrics");
    assert_eq!(
        value(&text, "meshd_link_established_total", &[("peer", "b")]),
        Some(2.0),
        "{text}"
    );

    // No secret in any log line.
    for (who, d) in [("a", &a), ("b", &b)] {
        let log = d.log_text();
        assert!(log.contains("link up"), "{who} log: {log}");
        for key in ["a", "b"] {
            assert!(
                !log.contains(&mesh.private_key_text(key)),
                "{who} logged {key}'s key"
            );
        }
    }
}

#[test]
fn meshctl_status_exits_2_when_the_admin_server_is_unreachable() {
    let port = metrics_fixture::free_port();
    let (code, out, err) = meshctl_status(&format!("127.0.0.1:{port}"), false);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("cannot reach the meshd admin server"), "{err}");
    assert!(out.is_empty(), "{out}");
}

#[test]
fn a_silent_peer_is_declared_dead_by_pings_and_redialed() {
    let (target, _) = sink_then_reply(1);
    let mesh = Mesh::new(target, 200);
    let b = mesh.start("b");
    let a = mesh.start("a");
    a.wait_link("b", "dialer", "up");
    // A stopped process keeps its sockets open but answers nothing: only pings notice.
    b.signal("STOP");
    let link = a.wait_link("b", "dialer", "down");
    b.signal("CONT");
    let text = a.metrics().expect("metrics");
    assert_eq!(
        value(
            &text,
            "meshd_link_failures_total",
            &[("peer", "b"), ("reason", "ping_timeout")]
        ),
        Some(1.0),
        "{link}\n{text}"
    );
    let link = a.wait_link("b", "dialer", "up");
    assert!(link["reconnects"].as_u64() >= Some(1), "{link}");
    assert_eq!(transfer(mesh.entrance, 10), 1);
}

#[test]
fn one_wrong_key_handshake_counts_once_without_the_claimed_name() {
    use meshd::config::{AuthMode, PeerName};
    use meshd::proto::handshake::{initiate, PairParams};

    let (target, _) = sink_then_reply(0);
    let mesh = Mesh::new(target, 1000);
    let b = mesh.start("b");
    let before = b.metrics().expect("metrics");
    assert_eq!(
        value(
            &before,
            "meshd_handshake_failures_total",
            &[("reason", "wrong_key")]
        ),
        Some(0.0)
    );

    // Claim to be "a" with a key that is not a's.
    let (impostor, _) = meshd::keys::generate_keypair().expect("key");
    let b_public = meshd::keys::load_private_key(&mesh.root().join("b.key"))
        .expect("b key")
        .public_key();
    let (a_name, b_name) = (
        PeerName::new("a").expect("a"),
        PeerName::new("b").expect("b"),
    );
    let psk = meshd::daemon::pair_psk("metrics-test", None, &a_name, &b_name);
    let params = PairParams {
        mode: AuthMode::Noise,
        mesh_id: "metrics-test",
        dialer: &a_name,
        acceptor: &b_name,
        local_key: &impostor,
        remote_key: &b_public,
        psk: &psk,
    };
    let (_, msg1) = initiate(&params, 1).expect("msg1");
    let mut s = TcpStream::connect(mesh.b_mesh).expect("connect b");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&msg1).expect("send msg1");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "b answered an impostor: {rest:?}");

    let text = eventually("wrong_key counted", || {
        let m = b.metrics()?;
        match value(
            &m,
            "meshd_handshake_failures_total",
            &[("reason", "wrong_key")],
        ) {
            Some(v) if v >= 1.0 => Ok(m),
            _ => Err(m),
        }
    });
    assert_eq!(
        value(
            &text,
            "meshd_handshake_failures_total",
            &[("reason", "wrong_key")]
        ),
        Some(1.0),
        "{text}"
    );
    let failures: f64 = samples(&text)
        .iter()
        .filter(|s| s.name == "meshd_handshake_failures_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(failures, 1.0, "exactly one rejection in total:\n{text}");
    // The claimed name is unauthenticated: it labels nothing.
    assert!(
        !samples(&text)
            .iter()
            .any(|s| s.labels.values().any(|v| v == "a")),
        "{text}"
    );
    assert!(b.log_text().contains("wrong_key"), "{}", b.log_text());
}

/// 1 GiB through one stream is counted exactly on both sides. It also prints the
/// throughput against the same transfer straight to the target, in one run (a figure for
/// reports, not an assertion):
/// `cargo test --profile release-nolto --test metrics -- --nocapture gib`.
#[test]
fn a_1_gib_stream_is_counted_exactly_and_its_throughput_printed() {
    const GIB: usize = 1 << 30;
    let (target, read) = sink_then_reply(0);
    let mesh = Mesh::new(target, 1000);
    let b = mesh.start("b");
    let a = mesh.start("a");
    a.wait_link("b", "dialer", "up");
    let mib_s = |d: Duration| GIB as f64 / (1 << 20) as f64 / d.as_secs_f64();

    let t = std::time::Instant::now();
    transfer(target, GIB);
    let direct = t.elapsed();
    assert_eq!(read.recv_timeout(Duration::from_secs(10)), Ok(GIB));

    let t = std::time::Instant::now();
    transfer(mesh.entrance, GIB);
    let meshed = t.elapsed();
    assert_eq!(read.recv_timeout(Duration::from_secs(10)), Ok(GIB));
    eventually("1 GiB counted on both sides", || {
        let (ma, mb) = (a.metrics()?, b.metrics()?);
        let out = value(&ma, "meshd_bytes_total", &[("direction", "out")]);
        let inb = value(&mb, "meshd_bytes_total", &[("direction", "in")]);
        if out == Some(GIB as f64) && inb == Some(GIB as f64) {
            Ok(())
        } else {
            Err(format!("{out:?} {inb:?}"))
        }
    });
    println!(
        "1 GiB direct: {direct:.2?} ({:.0} MiB/s); through meshd with metrics: {meshed:.2?} ({:.0} MiB/s)",
        mib_s(direct),
        mib_s(meshed)
    );
}
