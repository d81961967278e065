//! Mesh-wide status on three real daemons that all forward to each other: `GET /mesh` on
//! one host carries every host's link table (asked over the links, `_status`), `meshctl
//! status --mesh` prints the 3×3 matrix, and once one host is killed both say which links
//! are down and which host did not answer. The page at `/` is loaded in a real headless
//! Chromium: its DOM must mark the killed host's links down, and its screenshot must be
//! an image of more than an empty page.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mesh::TestMesh;
use common::netns::http_get;
use common::servers::EchoServer;
use meshd::admin::MeshReport;

const HOSTS: [&str; 3] = ["a", "b", "c"];
const LINK_UP: Duration = Duration::from_secs(15);
/// Chromium's own run (it starts in about 2 s here); killed by PID after this.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

async fn mesh_of(mesh: &TestMesh, host: &str) -> MeshReport {
    let (code, body) = http_get(mesh.admin_addr(host), "/mesh")
        .await
        .unwrap_or_else(|e| panic!("GET /mesh on {host}: {e}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /mesh JSON ({e}): {body}"))
}

fn meshctl_mesh(mesh: &TestMesh, host: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["status", "--mesh", "--admin"])
        .arg(mesh.admin_addr(host).to_string())
        .output()
        .expect("run meshctl")
}

/// Runs chromium headless with `args`, killing it by PID if it outlives the timeout.
fn chromium(profile: &Path, args: &[String]) -> Output {
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1000,700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chromium (scripts/test installs Debian's chromium)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BROWSER_TIMEOUT) {
        Ok(out) => out.expect("chromium output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
    }
}

/// Width and height from a PNG's IHDR, or `None` if `bytes` is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_matrix_over_the_links_in_meshctl_and_in_a_browser() {
    let echo = EchoServer::start().await;
    // Pings every 300 ms, so each link has an RTT soon after it comes up.
    let mut builder = TestMesh::builder().mesh_toml("[limits]\nping_interval_ms = 300");
    for host in HOSTS {
        let others: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != host).collect();
        builder = builder.service(host, "echo", echo.addr(), &others);
    }
    for from in HOSTS {
        for to in HOSTS.iter().filter(|h| **h != from) {
            builder = builder.forward(from, &format!("{to}/echo"));
        }
    }
    let mut mesh = builder.build();
    mesh.start_all();
    for from in HOSTS {
        for to in HOSTS.iter().filter(|h| **h != from) {
            mesh.wait_link_up(from, to, LINK_UP).await;
        }
    }

    // All up: every host answered, six cells (each host sees two peers), all up.
    let deadline = Instant::now() + LINK_UP;
    let m = loop {
        let m = mesh_of(&mesh, "a").await;
        let rtts = m.cells.iter().all(|c| c.rtt_ms.is_some());
        if (m.all_up() && rtts) || Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(common::POLL).await;
    };
    assert!(m.all_up(), "not all up: {m:#?}");
    let hosts: Vec<&str> = m.hosts.iter().map(|h| h.host.as_str()).collect();
    assert_eq!(hosts, HOSTS);
    assert_eq!(m.cells.len(), 6, "{:#?}", m.cells);
    for c in &m.cells {
        assert_eq!(c.directions.len(), 2, "dialer and acceptor: {c:?}");
        assert!(c.rtt_ms.is_some(), "an RTT for {c:?}");
    }
    // b's row came from b itself: its own config hash and table.
    let b = m.hosts.iter().find(|h| h.host == "b").expect("b");
    let b_report = b.report.as_ref().expect("b reported");
    assert_eq!(b_report.host, "b");
    assert_eq!(b_report.links.len(), 4);
    let out = meshctl_mesh(&mesh, "b");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("all 3 hosts answered, every link up"),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.matches(" up ").count() == 2)
            .count(),
        3,
        "three rows with two links up each:\n{text}"
    );

    // Kill c: a and b see their links to c down (closed by peer), c has no report.
    mesh.kill("c");
    let deadline = Instant::now() + LINK_UP;
    let m = loop {
        let m = mesh_of(&mesh, "a").await;
        let down = |from: &str| m.cell(from, "c").is_some_and(|c| c.state == "down");
        if (down("a") && down("b")) || Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(common::POLL).await;
    };
    for from in ["a", "b"] {
        let cell = m.cell(from, "c").expect("cell");
        assert_eq!(cell.state, "down", "{from} -> c: {cell:?}");
        assert!(cell.last_error.is_some(), "{cell:?}");
    }
    assert_eq!(m.cell("a", "b").map(|c| c.state.as_str()), Some("up"));
    let c = m.hosts.iter().find(|h| h.host == "c").expect("c listed");
    assert!(c.report.is_none());
    assert!(
        c.error.as_deref().is_some_and(|e| e.contains("down")),
        "{c:?}"
    );
    assert!(m.asymmetries.is_empty(), "{:?}", m.asymmetries);
    let out = meshctl_mesh(&mesh, "a");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no report from c"), "{text}");
    assert!(text.contains("a -> c DOWN"), "{text}");
    assert!(text.contains("b -> c DOWN"), "{text}");
    let c_row = text.lines().find(|l| l.starts_with("c ")).expect("row c");
    assert_eq!(c_row.matches('?').count(), 2, "c's row is unknown: {c_row}");

    // The page, in a real browser.
    let tmp = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}/", mesh.admin_addr("a"));
    let dom = chromium(
        &tmp.path().join("profile-dom"),
        &[
            "--virtual-time-budget=8000".into(),
            "--dump-dom".into(),
            url.clone(),
        ],
    );
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for (from, to, state) in [
        ("a", "c", "down"),
        ("b", "c", "down"),
        ("a", "b", "up"),
        ("b", "a", "up"),
        ("c", "a", "unknown"),
    ] {
        let want = format!(r#"data-from="{from}" data-to="{to}" data-state="{state}""#);
        assert!(dom.contains(&want), "no {want} in the page's DOM:\n{dom}");
    }
    assert!(dom.contains(r#"data-host="c" data-reported="no""#), "{dom}");
    assert!(dom.contains(r#"<body data-state="degraded">"#), "{dom}");

    let shot = tmp.path().join("mesh.png");
    let blank = tmp.path().join("blank.png");
    chromium(
        &tmp.path().join("profile-shot"),
        &[
            "--virtual-time-budget=8000".into(),
            format!("--screenshot={}", shot.display()),
            url,
        ],
    );
    chromium(
        &tmp.path().join("profile-blank"),
        &[
            format!("--screenshot={}", blank.display()),
            "about:blank".into(),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    let empty = std::fs::read(&blank).expect("blank screenshot written");
    assert_eq!(png_size(&png), Some((1000, 700)), "not a 1000x700 PNG");
    // A page of coloured cells and text compresses far worse than an empty one.
    assert!(
        png.len() > 3 * empty.len(),
        "screenshot {} bytes, an empty page {} bytes",
        png.len(),
        empty.len()
    );
    let keep = std::env::var_os("MESHD_KEEP_SCREENSHOT");
    if let Some(path) = keep {
        std::fs::copy(&shot, path).expect("copy screenshot");
    }
}
