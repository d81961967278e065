//! `meshctl status`: fetches `/status` from a running meshd's admin server and prints it
//! as a table a person reads at a glance (or as JSON).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use meshd::admin::{LinkReport, MeshReport, StatusReport};

/// Exit code when the admin server cannot be reached (the daemon is not running, or
/// `--admin` is wrong): distinct from 1, "reached, and a link is down".
const EX_UNREACHABLE: u8 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    show(admin, fetch(admin), json, render, |r| {
        r.down().next().is_none()
    })
}

/// `meshctl status --mesh`: the N×N matrix from `GET /mesh`. Exit 0 when every host
/// answered, every link is up and no pair disagrees; 1 otherwise; 2 when the admin server
/// cannot be reached.
pub fn run_mesh(admin: &str, json: bool) -> anyhow::Result<ExitCode> {
    let fetched = request(admin, "GET", "/mesh").and_then(|(status, body)| {
        if status != 200 {
            bail!("GET /mesh answered {status}: is this a meshd admin address (meshd 0.1 with mesh status)?");
        }
        serde_json::from_str::<MeshReport>(&body)
            .context("GET /mesh returned something else than a meshd mesh report")
    });
    show(admin, fetched, json, render_mesh, MeshReport::all_up)
}

/// Prints a fetched report (as JSON, or rendered for a person) and gives the exit code:
/// 0 when `healthy`, 1 when not, 2 when the admin server could not be reached.
fn show<R: serde::Serialize>(
    admin: &str,
    fetched: anyhow::Result<R>,
    json: bool,
    render: impl Fn(&R) -> String,
    healthy: impl Fn(&R) -> bool,
) -> anyhow::Result<ExitCode> {
    let report = match fetched {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "meshctl: cannot reach the meshd admin server at {admin}: {e:#}\n\
                 (is meshd running? --admin must match `admin` in its host config)"
            );
            return Ok(ExitCode::from(EX_UNREACHABLE));
        }
    };
    let mut stdout = io::stdout().lock();
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(stdout, "{}", render(&report))?;
    }
    stdout.flush()?;
    Ok(if healthy(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The matrix: one row per host (whose table it is), one column per peer; then the
/// asymmetries, the hosts without a report, and the last errors of the links down.
pub fn render_mesh(m: &MeshReport) -> String {
    let names: Vec<&str> = m.hosts.iter().map(|h| h.host.as_str()).collect();
    let reported = |n: &str| m.hosts.iter().any(|h| h.host == n && h.report.is_some());
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["SEES →".to_owned()];
    header.extend(names.iter().map(|n| n.to_string()));
    rows.push(header);
    for &from in &names {
        let mut row = vec![from.to_owned()];
        for &to in &names {
            let cell = if from == to {
                "-".to_owned()
            } else if let Some(c) = m.cell(from, to) {
                match (c.state.as_str(), c.rtt_ms) {
                    ("up", Some(ms)) => format!("up {ms:.2}ms"),
                    ("up", None) => "up".to_owned(),
                    _ => "DOWN".to_owned(),
                }
            } else if reported(from) {
                ".".to_owned()
            } else {
                "?".to_owned()
            };
            row.push(cell);
        }
        rows.push(row);
    }
    let cols = names.len() + 1;
    let mut widths = vec![0usize; cols];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "mesh as seen from {} (row: the host whose link table it is; column: its peer)\n",
        m.host
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str("(. no link between them in that host's table, ? that host did not report)\n");
    for h in m.hosts.iter().filter(|h| h.report.is_none()) {
        out.push_str(&format!(
            "no report from {}: {}\n",
            h.host,
            h.error.as_deref().unwrap_or("unknown")
        ));
    }
    for a in &m.asymmetries {
        out.push_str(&format!(
            "ASYMMETRY: {} sees {} up, {} sees {}: {}\n",
            a.up_at, a.other, a.other, a.up_at, a.other_sees
        ));
    }
    for c in m.cells.iter().filter(|c| c.state != "up") {
        out.push_str(&format!(
            "{} -> {} DOWN: {}\n",
            c.from,
            c.to,
            c.last_error.as_deref().unwrap_or("no error recorded")
        ));
    }
    if m.all_up() {
        out.push_str(&format!(
            "all {} hosts answered, every link up\n",
            names.len()
        ));
    }
    out
}

fn fetch(admin: &str) -> anyhow::Result<StatusReport> {
    let (status, body) = request(admin, "GET", "/status")?;
    if status != 200 {
        bail!("GET /status answered {status}: is this a meshd admin address?");
    }
    serde_json::from_str(&body).context("GET /status returned something else than meshd status")
}

/// Sends one request to the admin server; returns the status code and the body.
pub fn request(admin: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addrs: Vec<_> = admin
        .to_socket_addrs()
        .with_context(|| format!("bad address {admin:?} (want HOST:PORT)"))?
        .collect();
    let mut last = None;
    let mut socket = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut socket) = socket else {
        match last {
            Some(e) => return Err(e.into()),
            None => bail!("{admin:?} resolves to no address"),
        }
    };
    // A reload may take a moment (binding, re-reading files): allow it more time.
    socket.set_read_timeout(Some(IO_TIMEOUT * 8))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    // The address reached, not the name typed: `POST /reload` answers only a Host that is
    // one of the daemon's own addresses (or localhost), which a DNS name is not.
    let host = socket
        .peer_addr()
        .map_or_else(|_| admin.to_owned(), |a| a.to_string());
    write!(
        socket,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("not an HTTP response");
    };
    let status_line = head.lines().next().unwrap_or("");
    let Some(status) = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()) else {
        bail!("not an HTTP status line: {status_line:?}");
    };
    Ok((status, body.to_owned()))
}

/// `meshctl reload`: asks the daemon to re-read its config and manifest. Exit 0 when the
/// new configuration is running, 1 when it was refused (the old one keeps running), 2 when
/// the admin server cannot be reached.
pub fn reload(admin: &str) -> anyhow::Result<ExitCode> {
    match request(admin, "POST", "/reload") {
        Ok((200, body)) => {
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Ok((_, body)) => {
            eprint!("meshctl: {body}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!(
                "meshctl: cannot reach the meshd admin server at {admin}: {e:#}\n\
                 (is meshd running? --admin must match `admin` in its host config)"
            );
            Ok(ExitCode::from(EX_UNREACHABLE))
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn human_age(s: u64) -> String {
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m{:02}s ago", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h ago", s / 86400, (s % 86400) / 3600),
    }
}

fn row(l: &LinkReport) -> [String; 11] {
    [
        l.peer.clone(),
        l.direction.clone(),
        if l.state == "up" {
            "up".to_owned()
        } else {
            "DOWN".to_owned()
        },
        l.auth.clone().unwrap_or_else(|| "-".to_owned()),
        l.rtt_ms.map_or("-".to_owned(), |ms| format!("{ms:.2} ms")),
        l.last_handshake_age_s.map_or("never".to_owned(), human_age),
        l.streams.to_string(),
        human_bytes(l.bytes_in),
        human_bytes(l.bytes_out),
        l.reconnects.to_string(),
        l.last_error.clone().unwrap_or_else(|| "-".to_owned()),
    ]
}

/// The table: a header line about the host, then one row per link.
pub fn render(r: &StatusReport) -> String {
    let down = r.down().count();
    let mut out = format!(
        "host {}  config {}  meshd {}  up {}\n",
        r.host,
        r.config_hash,
        r.version,
        human_age(r.uptime_s).trim_end_matches(" ago")
    );
    if r.links.is_empty() {
        out.push_str("no links: this host has no forwards and no peer has dialed it\n");
        return out;
    }
    let header = [
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
    ]
    .map(str::to_owned);
    let rows: Vec<[String; 11]> = std::iter::once(header)
        .chain(r.links.iter().map(row))
        .collect();
    let mut widths = [0usize; 11];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(cell);
            } else {
                // Numbers align right, words left.
                let numeric = matches!(i, 3 | 5 | 6 | 7 | 8);
                if numeric {
                    line.push_str(&format!("{cell:>w$}  ", w = widths[i]));
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if down == 0 {
        out.push_str(&format!("all {} links up\n", r.links.len()));
    } else {
        out.push_str(&format!("{down} of {} links DOWN\n", r.links.len()));
    }
    out
}
