//! Raw serde structs, exactly as the files are written. Nothing here is validated beyond
//! TOML types and unknown fields (`deny_unknown_fields`); fields that validation checks
//! later are `Spanned` so its diagnostics can point at a line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `peers/mesh.toml`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMesh {
    pub mesh_id: Spanned<String>,
    #[serde(default)]
    pub auth: Option<Spanned<String>>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// One fingerprint or a list (`tls`: the CA certificates hosts may trust).
    #[serde(default)]
    pub ca_fingerprint: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub pairs: Vec<RawPair>,
}

/// `[[pairs]]` in mesh.toml: an auth mode for one pair of peers.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPair {
    pub peers: Spanned<Vec<Spanned<String>>>,
    pub auth: Spanned<String>,
}

/// `[limits]` in mesh.toml. Integers are `i64`, TOML's own integer type, so an
/// out-of-range value reaches validation (and its range message) instead of failing as a
/// type error.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default)]
    pub stream_window: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_stream_window: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_link_window_growth: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_streams: Option<Spanned<i64>>,
    #[serde(default)]
    pub ping_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub handshake_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub link_wait_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_pending_handshakes: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_pending_per_source: Option<Spanned<i64>>,
    #[serde(default)]
    pub handshake_rate_per_source: Option<Spanned<i64>>,
    #[serde(default)]
    pub rekey_interval_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub rekey_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    pub rekey_timeout_ms: Option<Spanned<i64>>,
}

/// `peers/NAME.toml`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub endpoints: Vec<Spanned<String>>,
    pub public_key: Spanned<String>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    #[serde(default)]
    pub forwards: Vec<RawForward>,
}

/// `[services.NAME]`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub target: Spanned<String>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
}

/// `[[forwards]]`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    pub listen: Spanned<String>,
    pub to: Spanned<String>,
    #[serde(default)]
    pub public: bool,
}

/// The per-host `meshd.toml`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub name: Spanned<String>,
    pub manifest: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub mesh_secret: Option<Spanned<String>>,
    #[serde(default)]
    pub state_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub cert: Option<Spanned<String>>,
    #[serde(default)]
    pub cert_key: Option<Spanned<String>>,
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    #[serde(default)]
    pub busy_poll_us: Option<Spanned<i64>>,
    #[serde(default)]
    pub drain_grace_ms: Option<Spanned<i64>>,
}
