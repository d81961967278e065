//! Configuration: the shared manifest (`peers/mesh.toml` + one `peers/NAME.toml` per peer)
//! and the per-host `meshd.toml`. Raw serde structs (`raw`) are parsed with
//! `deny_unknown_fields`, then validated into the typed structs below. Every error names
//! the file, the line where known, and the field.
//!
//! This module reads files; it never opens a socket and holds no runtime state.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::{MeshSecret, PrivateKey, PublicKey};

mod hash;
pub mod lint;
mod raw;
pub mod stunnel;
#[cfg(test)]
mod tests;
mod validate;

pub use hash::{config_hash, hash_config_files, CONFIG_HASH_LEN};
pub use validate::{
    check_manifest_dir, is_exposed, lint_manifest, load_config, load_host_config, load_manifest,
};

/// A validated peer name: `[a-z0-9][a-z0-9-]{0,62}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PeerName(String);

/// A validated service name: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ServiceName(String);

macro_rules! name_type {
    ($name:ident, $extra:expr, $what:expr) => {
        impl $name {
            /// Validates a name; the error says what is allowed.
            pub fn new(s: &str) -> Result<Self, String> {
                let bytes = s.as_bytes();
                let ok = !bytes.is_empty()
                    && bytes.len() <= 63
                    && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
                    && bytes.iter().all(|&b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || $extra(b)
                    });
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!("invalid {} {:?}: {}", $what, s, Self::RULE))
                }
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(PeerName, |_b: u8| false, "peer name");
name_type!(ServiceName, |b: u8| b == b'_', "service name");

impl PeerName {
    const RULE: &'static str =
        "use 1-63 characters from a-z, 0-9 and '-', starting with a letter or digit";
}

impl ServiceName {
    const RULE: &'static str =
        "use 1-63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit";

    /// The built-in service every exit answers for its mesh peers with this host's link
    /// table (`meshctl status --mesh`). A manifest cannot declare it: no valid service
    /// name starts with '_'.
    pub const STATUS: &'static str = "_status";

    /// The name of the built-in status service.
    pub fn status() -> Self {
        Self(Self::STATUS.to_owned())
    }

    /// True for the built-in status service.
    pub fn is_status(&self) -> bool {
        self.0 == Self::STATUS
    }
}

/// How links authenticate (`auth` in mesh.toml, overridable per pair in `[[pairs]]`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuthMode {
    /// `Noise_IKpsk2_25519_AESGCM_SHA256`: identity = static key from the manifest.
    Noise,
    /// `Noise_NNpsk0_25519_AESGCM_SHA256` with the pair key derived from the mesh secret.
    Psk,
    /// TLS 1.3 with mutual authentication under a private CA: identity = certificate SAN.
    Tls,
}

impl AuthMode {
    /// The wire code of this mode, carried in the preamble.
    pub fn code(self) -> u8 {
        match self {
            AuthMode::Noise => 1,
            AuthMode::Psk => 2,
            AuthMode::Tls => 3,
        }
    }

    /// The name used in mesh.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Noise => "noise",
            AuthMode::Psk => "psk",
            AuthMode::Tls => "tls",
        }
    }
}

/// `host:port`: an IP socket address, or a DNS name resolved when it is dialed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum HostPort {
    /// `192.0.2.1:7443` or `[2001:db8::1]:7443`.
    Addr(SocketAddr),
    /// `off2.example.org:7443`.
    Dns {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPort::Addr(a) => write!(f, "{a}"),
            HostPort::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Mesh-wide link limits and timers (`[limits]` in mesh.toml, all optional).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Initial per-stream receive window in bytes (`stream_window`, default 256 KiB).
    pub stream_window: u32,
    /// Largest a stream's receive window may grow to when the window, not the reader,
    /// limits it (`max_stream_window`, default 4 MiB; equal to `stream_window` = no growth).
    pub max_stream_window: u32,
    /// How much the windows of one link's streams may grow beyond `stream_window` in all
    /// (`max_link_window_growth`, default 4 MiB; 0 = no growth).
    pub max_link_window_growth: u32,
    /// Streams open at once on one link (`max_streams`, default 1024).
    pub max_streams: usize,
    /// Interval between keepalive pings (`ping_interval_ms`, default 5000).
    pub ping_interval: Duration,
    /// Whole-handshake deadline (`handshake_timeout_ms`, default 5000).
    pub handshake_timeout: Duration,
    /// How long a new local connection waits for its link to come up
    /// (`link_wait_ms`, default 5000) before it is reset.
    pub link_wait: Duration,
    /// Handshakes in progress at once on the mesh listener (`max_pending_handshakes`,
    /// default 128).
    pub max_pending_handshakes: usize,
    /// Of those, at most this many from one source address (IPv6: one /64); more are
    /// refused at accept (`max_pending_per_source`, default 8).
    pub max_pending_per_source: usize,
    /// New mesh connections per second accepted from one source address (IPv6: one /64),
    /// in bursts of twice that (`handshake_rate_per_source`, default 20; 0 = no limit).
    pub handshake_rate_per_source: u32,
    /// When links make new keys in band (`rekey_interval_ms`, default 120000;
    /// `rekey_bytes`, default 16 GiB per direction; `rekey_timeout_ms`, default 10000: how
    /// long a peer may take to finish one before the link is cut).
    pub rekey: crate::proto::rekey::RekeyPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stream_window: 256 * 1024,
            max_stream_window: 4 * 1024 * 1024,
            max_link_window_growth: 4 * 1024 * 1024,
            max_streams: 1024,
            ping_interval: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            link_wait: Duration::from_secs(5),
            max_pending_handshakes: 128,
            max_pending_per_source: 8,
            handshake_rate_per_source: 20,
            rekey: crate::proto::rekey::RekeyPolicy::default(),
        }
    }
}

/// Mesh-wide settings from `peers/mesh.toml`.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// Salts every pair key and is bound into every handshake.
    pub mesh_id: String,
    /// Default auth mode.
    pub auth: AuthMode,
    /// Per-pair auth modes (`[[pairs]]`), keyed by the two names in sorted order.
    pub pair_auth: BTreeMap<(PeerName, PeerName), AuthMode>,
    /// Pinned CA certificate fingerprints (`ca_fingerprint`, normalized `sha256:hex`);
    /// empty when not pinned.
    pub ca_fingerprints: Vec<String>,
    /// The line of `ca_fingerprint` in mesh.toml, for errors about the pins.
    pub ca_fingerprint_line: Option<usize>,
    /// Link limits.
    pub limits: Limits,
}

impl MeshSettings {
    /// The auth mode of the link between `a` and `b`.
    pub fn auth_between(&self, a: &PeerName, b: &PeerName) -> AuthMode {
        let key = if a <= b {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        self.pair_auth.get(&key).copied().unwrap_or(self.auth)
    }
}

/// A service exported by a peer: `[services.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Where the exporting peer connects for each stream.
    pub target: HostPort,
    /// Peers allowed to open streams to it (default deny).
    pub allow: BTreeSet<PeerName>,
}

/// An entrance on a peer: `[[forwards]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// Peer that exports the service.
    pub peer: PeerName,
    /// The service's name on that peer.
    pub service: ServiceName,
    /// Explicitly allowed to listen on a public address.
    pub public: bool,
}

/// One peer of the manifest (`peers/NAME.toml`).
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its name (the file name without `.toml`).
    pub name: PeerName,
    /// Where other peers dial it, in order of preference.
    pub endpoints: Vec<HostPort>,
    /// Its X25519 static public key.
    pub public_key: PublicKey,
    /// Services it exports.
    pub services: BTreeMap<ServiceName, Service>,
    /// Entrances it opens to other peers' services.
    pub forwards: Vec<Forward>,
}

/// The whole validated manifest directory.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The directory it was read from.
    pub dir: PathBuf,
    /// `mesh.toml`.
    pub mesh: MeshSettings,
    /// Every peer, by name.
    pub peers: BTreeMap<PeerName, Peer>,
}

/// The per-host `meshd.toml`.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// This host's peer name (must be in the manifest).
    pub name: PeerName,
    /// The manifest directory (relative paths are relative to the host config file).
    pub manifest: PathBuf,
    /// This host's private key file (0600).
    pub key: PathBuf,
    /// The mesh listener (default `[::]:` + the port of this peer's first endpoint).
    pub listen: Option<SocketAddr>,
    /// The admin HTTP address (default `127.0.0.1:9464`).
    pub admin: SocketAddr,
    /// The optional mesh secret file (0600); required by `auth = "psk"`.
    pub mesh_secret: Option<PathBuf>,
    /// Where durable state lives (handshake high-water marks); default `/var/lib/meshd`.
    pub state_dir: PathBuf,
    /// Certificate, key and CA files for `tls` links (`cert`, `cert_key`, `ca`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Longest adaptive poll before the runtime sleeps (`busy_poll_us`; 0 = never poll).
    /// See [`crate::busy_poll`].
    pub busy_poll: Duration,
    /// How long open streams may run on after SIGTERM before they are reset
    /// (`drain_grace_ms`, default 20 s).
    pub drain_grace: Duration,
}

/// Everything a daemon needs, loaded and validated before any port is bound.
#[derive(Debug)]
pub struct Config {
    /// The host config.
    pub host: HostConfig,
    /// The manifest.
    pub manifest: Manifest,
    /// This host's private key, checked against its manifest public key.
    pub private_key: PrivateKey,
    /// The mesh secret, when configured.
    pub mesh_secret: Option<MeshSecret>,
    /// The resolved mesh listen address.
    pub listen: SocketAddr,
    /// Fingerprint of the files this config was loaded from ([`hash_config_files`]).
    pub hash: String,
    /// The loaded TLS identity, when the host config names one.
    pub tls: Option<std::sync::Arc<crate::tls::TlsMaterial>>,
}

impl Config {
    /// This host's own manifest entry.
    pub fn me(&self) -> &Peer {
        // Validation guarantees the host's name is in the manifest.
        &self.manifest.peers[&self.host.name]
    }
}

/// One problem found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The stable code `meshctl check` reports, set where the problem is found.
    pub code: lint::Code,
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted field path, e.g. `services.mongodb.allow[1]`; empty for whole-file problems.
    pub field: String,
    /// What is wrong, and where useful how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors from loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One or more problems in the files; all of them are listed.
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// Every problem found.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
        }
    }
}
