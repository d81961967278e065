//! `meshctl check` lints, one fixture directory per code: `tests/fixtures/lint/CODE/bad`
//! triggers it, `.../good` is the nearest manifest that does not (and is fully clean). Runs
//! the real binary with `--format json` and matches the stable `code` of each finding.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshd::config::lint::{Severity, CODES};

/// Every lint that has fixtures. A fixture directory not listed here, or a listed lint
/// without one, fails the test: the loop must never check fewer lints than intended.
const EXPECTED: &[&str] = &[
    "allow-unknown-peer",
    "bad-endpoint",
    "bad-key",
    "bad-peer-name",
    "duplicate-key",
    "duplicate-listen",
    "exposed-forward",
    "forward-not-allowed",
    "forward-unknown-peer",
    "forward-unknown-service",
    "public-target",
    "unreachable-peer",
    "unused-service",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lint")
}

fn check(dir: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    cmd.arg("check").arg("--manifest").arg(dir);
    if json {
        cmd.args(["--format", "json"]);
    }
    cmd.output().expect("run meshctl")
}

fn codes(v: &serde_json::Value, list: &str) -> Vec<String> {
    v[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list} is not an array: {v}"))
        .iter()
        .map(|d| {
            d["code"]
                .as_str()
                .unwrap_or_else(|| panic!("finding without a code: {d}"))
                .to_owned()
        })
        .collect()
}

fn severity(code: &str) -> Severity {
    CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("{code} is not a code meshd::config::lint::CODES knows"))
}

#[test]
fn fixture_list_is_the_expected_list() {
    let mut found: Vec<String> = fs::read_dir(fixtures())
        .expect("tests/fixtures/lint")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no lint fixtures found");
    assert_eq!(found, EXPECTED);
}

#[test]
fn each_lint_fires_on_bad_and_not_on_good() {
    assert!(!EXPECTED.is_empty());
    let mut checked = 0;
    for &lint in EXPECTED {
        let sev = severity(lint);
        let bad = fixtures().join(lint).join("bad");
        let out = check(&bad, true);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{lint}/bad: not JSON ({e}): {out:?}"));
        let (errors, warnings) = (codes(&v, "errors"), codes(&v, "warnings"));
        match sev {
            Severity::Error => {
                assert_eq!(out.status.code(), Some(1), "{lint}/bad: {v}");
                assert_eq!(v["ok"], false, "{lint}/bad: {v}");
                assert!(errors.iter().any(|c| c == lint), "{lint}/bad: {v}");
            }
            Severity::Warning => {
                // Warnings alone never fail CI, but they are listed.
                assert_eq!(out.status.code(), Some(0), "{lint}/bad: {v}");
                assert_eq!(v["ok"], true, "{lint}/bad: {v}");
                assert!(errors.is_empty(), "{lint}/bad: {v}");
                assert!(warnings.iter().any(|c| c == lint), "{lint}/bad: {v}");
            }
        }

        let good = fixtures().join(lint).join("good");
        let out = check(&good, true);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{lint}/good: not JSON ({e}): {out:?}"));
        assert_eq!(out.status.code(), Some(0), "{lint}/good: {v}");
        assert!(codes(&v, "errors").is_empty(), "{lint}/good: {v}");
        assert!(codes(&v, "warnings").is_empty(), "{lint}/good: {v}");
        checked += 1;
    }
    assert_eq!(checked, EXPECTED.len());
}

#[test]
fn text_output_names_the_code() {
    let out = check(&fixtures().join("duplicate-key/bad"), false);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error: "), "{text}");
    assert!(text.contains("[duplicate-key]"), "{text}");
    let out = check(&fixtures().join("public-target/bad"), false);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warning: "), "{text}");
    assert!(text.contains("[public-target]"), "{text}");
}

#[test]
fn unusable_manifest_exits_64_with_a_code() {
    let out = check(&fixtures().join("no-such-dir"), true);
    assert_eq!(out.status.code(), Some(64));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(codes(&v, "errors"), ["unusable-manifest"]);
}
