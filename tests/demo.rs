//! `meshd demo`, the README's first command, really runs the example mesh of `peers/` and
//! carries every forward's stream.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_carries_every_example_forward() {
    let stdout = run_demo(&[]);
    assert!(stdout.contains("auth noise"), "{stdout}");
}

#[test]
fn demo_in_tls_mode_carries_every_example_forward() {
    let stdout = run_demo(&["--auth", "tls"]);
    assert!(stdout.contains("auth tls"), "{stdout}");
    assert!(stdout.contains("fresh demo CA"), "{stdout}");
}

/// Runs `meshd demo ARGS` on the example manifest and checks that every stream crossed.
fn run_demo(args: &[&str]) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/peers");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["demo", "--manifest", manifest])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn meshd demo");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshd demo did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");
    // The example mesh has four forwards: web1 -> off1/{redis,postgres}, ops1 -> web1/http
    // and ops1 -> off1/redis.
    assert!(
        stdout.contains("all 4 streams crossed the mesh intact"),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP/1.0 200 OK"), "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    stdout.into_owned()
}
