//! Stable codes for manifest diagnostics, so a CI job can match a finding
//! (`"code": "duplicate-key"` in `meshctl check --format json`) without parsing messages.
//!
//! The code is derived from a [`Diagnostic`]'s field and message rather than stored in it:
//! validation stays the single place that words a problem, and this module only names it.
//! `tests/lint.rs` runs a fixture per code through the real binary, so a reworded message
//! that would silently change a code fails there.

use super::Diagnostic;

/// Every code [`code_of`] can return for a problem `meshctl check` reports, with whether it
/// is a warning (the manifest still loads) or an error.
pub const CODES: &[(&str, Severity)] = &[
    ("allow-self", Severity::Error),
    ("allow-unknown-peer", Severity::Error),
    ("bad-allow", Severity::Error),
    ("bad-endpoint", Severity::Error),
    ("bad-forward-to", Severity::Error),
    ("bad-key", Severity::Error),
    ("bad-listen", Severity::Error),
    ("bad-mesh-settings", Severity::Error),
    ("bad-peer-name", Severity::Error),
    ("bad-service-name", Severity::Error),
    ("bad-target", Severity::Error),
    ("duplicate-key", Severity::Error),
    ("duplicate-listen", Severity::Error),
    ("exposed-forward", Severity::Error),
    ("forward-not-allowed", Severity::Error),
    ("forward-to-self", Severity::Error),
    ("forward-unknown-peer", Severity::Error),
    ("forward-unknown-service", Severity::Error),
    ("invalid", Severity::Error),
    ("no-peers", Severity::Error),
    ("public-target", Severity::Warning),
    ("schema", Severity::Error),
    ("unreachable-peer", Severity::Warning),
    ("unreadable-file", Severity::Error),
    ("unusable-manifest", Severity::Error),
    ("unused-service", Severity::Warning),
];

/// Whether a finding fails `meshctl check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The manifest does not load; exit 1.
    Error,
    /// The manifest loads but is probably not what was meant; exit 0.
    Warning,
}

/// The stable code of a diagnostic from `load_manifest`, `check_manifest_dir` or
/// `lint_manifest`; `"invalid"` for anything not classified more precisely.
pub fn code_of(d: &Diagnostic) -> &'static str {
    let field = d.field.as_str();
    let msg = d.message.as_str();
    let has = |s: &str| msg.contains(s);

    if field.is_empty() {
        return if msg.starts_with("file name:") {
            "bad-peer-name"
        } else if msg.starts_with("no peers") {
            "no-peers"
        } else if msg.starts_with("cannot read this file") {
            "unreadable-file"
        } else if has("manifest directory") || has("needs mesh.toml") {
            "unusable-manifest"
        } else {
            // A TOML syntax error, a missing or unknown field, a wrong type.
            "schema"
        };
    }
    if field == "public_key" {
        return if has("same public key as") {
            "duplicate-key"
        } else {
            "bad-key"
        };
    }
    if field == "endpoints" {
        return "unreachable-peer";
    }
    if field.starts_with("endpoints[") {
        return "bad-endpoint";
    }
    if field == "mesh_id" || field == "auth" || field.starts_with("limits.") {
        return "bad-mesh-settings";
    }
    if field.starts_with("forwards[") {
        if field.ends_with(".listen") {
            return if has("is already the listen address") {
                "duplicate-listen"
            } else if has("reachable from outside") {
                "exposed-forward"
            } else {
                "bad-listen"
            };
        }
        if field.ends_with(".to") {
            return if has("cannot forward to itself") {
                "forward-to-self"
            } else if has("has no service") {
                "forward-unknown-service"
            } else if has("does not allow") {
                "forward-not-allowed"
            } else if has("unknown peer") {
                "forward-unknown-peer"
            } else {
                "bad-forward-to"
            };
        }
    }
    if let Some(rest) = field.strip_prefix("services.") {
        // Service names never contain '.', but a rejected one might: look at the last part.
        let last = rest.rsplit('.').next().unwrap_or(rest);
        if rest.contains('.') {
            if last == "allow" {
                return "unused-service";
            }
            if last.starts_with("allow[") {
                return if has("cannot forward to itself") {
                    "allow-self"
                } else if has("unknown peer") {
                    "allow-unknown-peer"
                } else {
                    "bad-allow"
                };
            }
            if last == "target" {
                return if has("public address") {
                    "public-target"
                } else {
                    "bad-target"
                };
            }
        }
        return "bad-service-name";
    }
    "invalid"
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn d(field: &str, message: &str) -> Diagnostic {
        Diagnostic {
            file: PathBuf::from("peers/a.toml"),
            line: Some(1),
            field: field.into(),
            message: message.into(),
        }
    }

    #[test]
    fn every_code_is_listed() {
        let samples = [
            d("", "file name: invalid peer name"),
            d("", "no peers: add one file"),
            d("", "cannot read this file: denied"),
            d("", "manifest directory does not exist"),
            d("", "unknown field `x`"),
            d("public_key", "same public key as peer \"b\""),
            d("public_key", "not a valid public key"),
            d("endpoints", "no endpoints, but b forward to it"),
            d("endpoints[0]", "has no port"),
            d("limits.max_streams", "out of range"),
            d(
                "forwards[0].listen",
                "x is already the listen address of forwards[0]",
            ),
            d(
                "forwards[1].listen",
                "listens on 0.0.0.0, which is reachable from outside",
            ),
            d("forwards[1].listen", "not an IP address"),
            d("forwards[0].to", "a peer cannot forward to itself"),
            d("forwards[0].to", "peer \"b\" has no service \"x\""),
            d("forwards[0].to", "b/x does not allow a"),
            d("forwards[0].to", "unknown peer \"z\""),
            d("forwards[0].to", "\"x\" is not \"peer/service\""),
            d("services.db.allow", "allows no peer"),
            d("services.db.allow[0]", "unknown peer \"z\""),
            d("services.db.allow[0]", "a peer cannot forward to itself"),
            d("services.db.allow[0]", "invalid peer name"),
            d("services.db.target", "target 8.8.8.8:1 is a public address"),
            d("services.db.target", "has no port"),
            d("services.Bad.Name", "invalid service name"),
            d("who", "knows"),
        ];
        for s in &samples {
            let code = code_of(s);
            assert!(CODES.iter().any(|(c, _)| *c == code), "{code} not in CODES");
        }
        let mut seen: Vec<&str> = samples.iter().map(code_of).collect();
        seen.sort_unstable();
        seen.dedup();
        let all: Vec<&str> = CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(seen, all, "each code has a sample, in CODES order");
    }
}
