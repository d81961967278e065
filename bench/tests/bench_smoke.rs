//! `meshbench run --smoke` against `direct` and `meshd-noise`: the harness starts, measures
//! every phase and writes a table with a number in every cell that should have one.
//! No timing is asserted: this checks the harness, not the machine.
//!
//! meshbench runs the `meshd` built next to it, which only a build of the meshd package puts
//! there: `cargo test --workspace` (scripts/test) builds both into one target directory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Generous: a smoke run takes ~15 s, more on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(300);

fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} not found: install {package} (apt-get install {package}); \
         the benchmark smoke test runs it"
    );
}

/// Fails unless a `meshd` sits next to meshbench, saying how to build it: without one the
/// meshd column would only say `missing`.
fn require_meshd_next_to_meshbench() {
    let meshd = Path::new(env!("CARGO_BIN_EXE_meshbench")).with_file_name("meshd");
    assert!(
        meshd.is_file(),
        "{} not found: meshbench runs the meshd next to it; run this test with \
         `cargo test --workspace` (as scripts/test does), or build meshd with the same \
         profile first (`cargo build -p meshd`)",
        meshd.display()
    );
}

/// Whether a table cell holds a number (first token parses as f64).
fn is_number(cell: &str) -> bool {
    cell.split_whitespace()
        .next()
        .is_some_and(|t| t.parse::<f64>().is_ok())
}

#[test]
fn smoke_run_fills_the_table_for_direct_and_meshd() {
    require("iperf3", "iperf3");
    require("redis-server", "redis-server");
    require("redis-benchmark", "redis-tools");
    require_meshd_next_to_meshbench();
    let out = tempfile::tempdir().expect("temp dir");
    let log = out.path().join("meshbench.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args([
            "run",
            "--smoke",
            "--adapters",
            "direct,meshd-noise",
            "--out",
        ])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn meshbench");
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "meshbench --smoke ran over {TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "meshbench failed ({status}):\n{log_text}");
    check_output(out.path(), &log_text);
}

fn check_output(dir: &Path, log_text: &str) {
    let md: Vec<_> = std::fs::read_dir(dir)
        .expect("read out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("results-") && n.ends_with(".md"))
        })
        .collect();
    assert_eq!(
        md.len(),
        1,
        "one results-*.md expected in {md:?}\n{log_text}"
    );
    assert!(dir.join("results.json").is_file(), "results.json missing");
    let text = std::fs::read_to_string(&md[0]).expect("read markdown");
    // The report names the code it measured: this checkout's commit and the binary's age.
    let source = text
        .lines()
        .find_map(|l| l.strip_prefix("- meshd measured: "))
        .unwrap_or_else(|| panic!("no 'meshd measured' line in:\n{text}"));
    assert!(
        source.starts_with("git ") && source.contains(", binary built 20"),
        "source line {source:?}"
    );

    let rows: Vec<Vec<String>> = text
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("metric") && r.len() == 3)
        .unwrap_or_else(|| panic!("no results table with two adapters in:\n{text}"));
    assert_eq!(header[1..], ["direct", "meshd-noise"], "{text}");

    // Rows of the main table start with the phase name; the ratio table comes after it.
    let table_end = rows
        .iter()
        .position(|r| r.get(1).map(String::as_str) == Some("better"))
        .unwrap_or(rows.len());
    let main = &rows[..table_end];
    for phase in ["iperf", "redis", "conn", "mem", "cpu"] {
        let phase_rows: Vec<&Vec<String>> = main
            .iter()
            .filter(|r| r[0].starts_with(&format!("{phase} ")))
            .collect();
        assert!(!phase_rows.is_empty(), "no {phase} row in:\n{text}");
        for row in phase_rows {
            assert_eq!(row.len(), 3, "row {row:?}");
            assert!(
                is_number(&row[2]),
                "meshd-noise has no number for {:?}: {:?}\n{text}\n{log_text}",
                row[0],
                row[2]
            );
            // A direct connection has no tunnel process to weigh or time.
            let tunnel_only = phase == "mem" || phase == "cpu";
            if tunnel_only {
                assert_eq!(row[1], "—", "direct {:?}", row[0]);
            } else {
                assert!(
                    is_number(&row[1]),
                    "direct has no number for {:?}: {:?}\n{text}\n{log_text}",
                    row[0],
                    row[1]
                );
            }
        }
    }
}

/// A second run while one holds the run lock refuses to start, saying why, and measures
/// nothing.
#[test]
fn a_second_concurrent_run_is_refused() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("meshbench-test-lock-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let _held = UnixListener::bind_addr(&addr).expect("take the lock");
    let out = Command::new(env!("CARGO_BIN_EXE_meshbench"))
        .args([
            "run",
            "--smoke",
            "--adapters",
            "direct",
            "--phases",
            "iperf",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .env("MESHBENCH_LOCK", &name)
        .stdin(Stdio::null())
        .output()
        .expect("run meshbench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran despite the lock: {stderr}");
    assert!(
        stderr.contains("another meshbench run holds the run lock") && stderr.contains(&name),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists(), "it wrote results");
}
