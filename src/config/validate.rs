//! Validation of raw structs into the typed configuration.
//!
//! Every check runs to the end and every problem becomes a [`Diagnostic`]: an operator fixing
//! a manifest in a pull request wants the whole list at once, not one error per CI run.
//! Checks that need the whole manifest (references between peers, duplicate keys) run after
//! every file has been read; the typed structs are built only when nothing was wrong.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;

use super::lint::Code;
use super::raw::{RawForward, RawHost, RawLimits, RawMesh, RawPeer, RawService};
use super::{
    AuthMode, Config, ConfigError, Diagnostic, Forward, HostConfig, HostPort, Limits, Manifest,
    MeshSettings, Peer, PeerName, Service, ServiceName,
};
use crate::keys::{self, PublicKey};

/// The mesh-wide settings file inside a manifest directory.
const MESH_FILE: &str = "mesh.toml";
/// Admin address when the host config sets none.
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// State directory when the host config sets none.
const DEFAULT_STATE_DIR: &str = "/var/lib/meshd";
/// Default `busy_poll_us`, the guest kernel's haltpoll default (`guest_halt_poll_ns`):
/// long enough to cover a request's round trip through a local service and its client on
/// a virtual machine (100 µs was not: redis-benchmark -c 1 kept its 0.19 ms p50, 200 µs
/// brought it to 0.08), short enough that a WAN round trip shrinks the window to nothing.
pub const DEFAULT_BUSY_POLL_US: u64 = 200;
/// Largest `busy_poll_us`: polling longer than this is sleeping with extra steps.
const MAX_BUSY_POLL_US: i64 = 10_000;
/// Default `drain_grace_ms`: how long open streams may run on after SIGTERM. Under the
/// shipped systemd unit's `TimeoutStopSec` (30 s), with room for the final resets.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 20_000;
/// Largest `drain_grace_ms` (one hour).
const MAX_DRAIN_GRACE_MS: i64 = 3_600_000;
/// Mesh port when neither the host config nor the peer's endpoints give one.
const DEFAULT_MESH_PORT: u16 = 7443;

/// True when a listener on `ip` can be reached from outside the host's private networks.
///
/// Internal are: loopback (127/8, ::1), RFC 1918 private (10/8, 172.16/12, 192.168/16),
/// CGNAT (100.64/10), link-local (169.254/16, fe80::/10) and IPv6 ULA (fc00::/7);
/// IPv4-mapped IPv6 addresses follow the IPv4 rules. Everything else is exposed, including
/// the unspecified addresses `0.0.0.0` and `[::]`, which listen on every interface.
pub fn is_exposed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !is_internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => !is_internal_v4(v4),
            None => !is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    let cgnat = a == 100 && (b & 0xc0) == 64;
    ip.is_loopback() || ip.is_private() || ip.is_link_local() || cgnat
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let ula = (first & 0xfe00) == 0xfc00;
    let link_local = (first & 0xffc0) == 0xfe80;
    ip.is_loopback() || ula || link_local
}

impl HostPort {
    /// The port to dial.
    pub fn port(&self) -> u16 {
        match self {
            HostPort::Addr(a) => a.port(),
            HostPort::Dns { port, .. } => *port,
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    /// Parses `192.0.2.1:7443`, `[2001:db8::1]:7443` or `off2.example.org:7443`; the error
    /// says what is wrong and how to write it.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("{s:?}: port must be 1-65535"));
            }
            return Ok(HostPort::Addr(addr));
        }
        if s.starts_with('[') {
            return Err(format!(
                "{s:?} is not a valid IPv6 address and port; write it as [addr]:port"
            ));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("{s:?} has no port; write host:port"));
        };
        if host.contains(':') || host.contains(']') {
            return Err(format!(
                "{s:?} looks like an IPv6 address without brackets; write it as [addr]:port"
            ));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{s:?}: port {port:?} is not a number in 1-65535")),
        };
        check_dns_name(host).map_err(|why| format!("{s:?}: {why}"))?;
        Ok(HostPort::Dns {
            host: host.to_owned(),
            port,
        })
    }
}

fn check_dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing host name".into());
    }
    if host.len() > 253 {
        return Err("host name is longer than 253 characters".into());
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a valid IP address or DNS name (labels of 1-63 letters, \
                 digits and '-', not starting or ending with '-')"
            ));
        }
    }
    // An all-numeric last label is a mistyped IPv4 address, never a real top-level domain.
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    Ok(())
}

/// Parses a listen address: an IP and a non-zero port, never a name (binding must not
/// depend on DNS).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() == 0 => Err(format!("{s:?}: port must be 1-65535")),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "{s:?} is not an IP address and port such as 127.0.0.1:16001 or [::1]:16001 \
             (listen addresses are never resolved through DNS)"
        )),
    }
}

/// A file being validated: its path as shown in diagnostics, and its text to turn byte
/// spans into line numbers.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: PathBuf) -> Result<Self, Diagnostic> {
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Self { path, text }),
            Err(e) => Err(whole_file(
                &path,
                Code::UnreadableFile,
                format!("cannot read this file: {e}"),
            )),
        }
    }

    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn diag(
        &self,
        span: Option<Range<usize>>,
        code: Code,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            code,
            file: self.path.clone(),
            line: span.map(|s| self.line(s)),
            field: field.into(),
            message: message.into(),
        }
    }

    fn at<T>(
        &self,
        value: &Spanned<T>,
        code: Code,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.diag(Some(value.span()), code, field, message)
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        toml::from_str(&self.text)
            .map_err(|e| self.diag(e.span(), Code::Schema, "", e.message().trim_end()))
    }
}

fn whole_file(path: &Path, code: Code, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        code,
        file: path.to_path_buf(),
        line: None,
        field: String::new(),
        message: message.into(),
    }
}

/// Checks that `dir` can be used as a manifest at all: it is a directory holding
/// `mesh.toml`. `meshctl check` tells this case (exit 64) from an invalid manifest (exit 1).
pub fn check_manifest_dir(dir: &Path) -> Result<(), Diagnostic> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(whole_file(
                dir,
                Code::UnusableManifest,
                "not a directory; expected a manifest directory",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(whole_file(
                dir,
                Code::UnusableManifest,
                "manifest directory does not exist",
            ))
        }
        Err(e) => {
            return Err(whole_file(
                dir,
                Code::UnusableManifest,
                format!("cannot open manifest directory: {e}"),
            ))
        }
    }
    let mesh = dir.join(MESH_FILE);
    if !mesh.is_file() {
        return Err(whole_file(
            &mesh,
            Code::UnusableManifest,
            "missing: a manifest directory needs mesh.toml (mesh_id, auth)",
        ));
    }
    Ok(())
}

/// A peer file that parsed, with what validated so far and the lines later checks need.
struct PeerDraft {
    file: PathBuf,
    name: PeerName,
    endpoints: Vec<HostPort>,
    public_key: Option<PublicKey>,
    key_line: usize,
    services: BTreeMap<ServiceName, ServiceDraft>,
    forwards: Vec<ForwardDraft>,
}

struct ServiceDraft {
    target: Option<HostPort>,
    /// Each allowed peer with its index in `allow` and its line.
    allow: Vec<(PeerName, usize, usize)>,
}

struct ForwardDraft {
    listen: Option<SocketAddr>,
    to: Option<(PeerName, ServiceName)>,
    to_line: usize,
    public: bool,
}

/// Loads and validates a manifest directory (`mesh.toml` + `*.toml`).
pub fn load_manifest(dir: &Path) -> Result<Manifest, ConfigError> {
    check_manifest_dir(dir).map_err(|d| ConfigError::Invalid(vec![d]))?;
    let mut diags = Vec::new();
    let mut pair_refs = Vec::new();

    let mesh = match Source::read(dir.join(MESH_FILE)) {
        Ok(src) => match src.parse::<RawMesh>() {
            Ok(raw) => validate_mesh(&src, raw, &mut diags, &mut pair_refs),
            Err(d) => {
                diags.push(d);
                None
            }
        },
        Err(d) => {
            diags.push(d);
            None
        }
    };

    let mut files = match peer_files(dir) {
        Ok(files) => files,
        Err(d) => {
            diags.push(d);
            Vec::new()
        }
    };
    files.sort();

    let mut names = BTreeSet::new();
    let mut drafts = Vec::new();
    for path in files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let name = match PeerName::new(stem) {
            Ok(n) => n,
            Err(e) => {
                diags.push(whole_file(
                    &path,
                    Code::BadPeerName,
                    format!("file name: {e}; a peer file is named after its peer (NAME.toml)"),
                ));
                continue;
            }
        };
        names.insert(name.clone());
        let src = match Source::read(path) {
            Ok(src) => src,
            Err(d) => {
                diags.push(d);
                continue;
            }
        };
        match src.parse::<RawPeer>() {
            Ok(raw) => drafts.push(validate_peer(&src, name, raw, &mut diags)),
            Err(d) => diags.push(d),
        }
    }
    if names.is_empty() {
        diags.push(whole_file(
            dir,
            Code::NoPeers,
            "no peers: add one file per peer (NAME.toml), e.g. with `meshctl add-peer`",
        ));
    }

    check_references(&drafts, &names, &mut diags);
    check_duplicate_keys(&drafts, &mut diags);
    for (name, unknown) in pair_refs {
        if !names.is_empty() && !names.contains(&name) {
            diags.push(unknown);
        }
    }

    // Reading order (file, then line) is what an operator fixing the files wants.
    diags.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let Some(mesh) = mesh else {
        return Err(ConfigError::Invalid(diags));
    };
    if !diags.is_empty() {
        return Err(ConfigError::Invalid(diags));
    }
    let mut peers = BTreeMap::new();
    for draft in drafts {
        let file = draft.file.clone();
        match finish_peer(draft) {
            Some(peer) => {
                peers.insert(peer.name.clone(), peer);
            }
            None => diags.push(whole_file(
                &file,
                Code::Invalid,
                "internal error: incomplete peer",
            )),
        }
    }
    if !diags.is_empty() {
        return Err(ConfigError::Invalid(diags));
    }
    Ok(Manifest {
        dir: dir.to_path_buf(),
        mesh,
        peers,
    })
}

/// Every `*.toml` in `dir` other than mesh.toml (following symlinks, as an infra repo
/// symlinked into /etc would need).
fn peer_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let entries = fs::read_dir(dir).map_err(|e| {
        whole_file(
            dir,
            Code::UnusableManifest,
            format!("cannot list manifest directory: {e}"),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            whole_file(
                dir,
                Code::UnusableManifest,
                format!("cannot list manifest directory: {e}"),
            )
        })?;
        let path = dir.join(entry.file_name());
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        if is_toml && entry.file_name() != MESH_FILE && path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

/// A peer name that `[[pairs]]` refers to, with the diagnostic to report if the manifest
/// has no such peer.
type PairRef = (PeerName, Diagnostic);

fn parse_auth(
    src: &Source,
    a: &Spanned<String>,
    field: &str,
    code: Code,
    diags: &mut Vec<Diagnostic>,
) -> AuthMode {
    match a.get_ref().as_str() {
        "noise" => AuthMode::Noise,
        "psk" => AuthMode::Psk,
        "tls" => AuthMode::Tls,
        other => {
            diags.push(src.at(
                a,
                code,
                field,
                format!("unknown auth mode {other:?}: use \"noise\", \"psk\" or \"tls\""),
            ));
            AuthMode::Noise
        }
    }
}

fn validate_mesh(
    src: &Source,
    raw: RawMesh,
    diags: &mut Vec<Diagnostic>,
    pair_refs: &mut Vec<PairRef>,
) -> Option<MeshSettings> {
    let before = diags.len();
    let mesh_id = raw.mesh_id.get_ref();
    let id_ok = (1..=64).contains(&mesh_id.len())
        && mesh_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !id_ok {
        diags.push(src.at(
            &raw.mesh_id, Code::BadMeshSettings,
            "mesh_id",
            format!("invalid mesh id {mesh_id:?}: use 1-64 characters from A-Z, a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    let auth = match &raw.auth {
        None => AuthMode::Noise,
        Some(a) => parse_auth(src, a, "auth", Code::BadMeshSettings, diags),
    };
    let mut pair_auth = BTreeMap::new();
    for (i, pair) in raw.pairs.iter().enumerate() {
        let mode = parse_auth(
            src,
            &pair.auth,
            &format!("pairs[{i}].auth"),
            Code::Invalid,
            diags,
        );
        let names: Vec<Option<PeerName>> = pair
            .peers
            .get_ref()
            .iter()
            .enumerate()
            .map(|(j, n)| {
                let field = format!("pairs[{i}].peers[{j}]");
                match PeerName::new(n.get_ref()) {
                    Ok(name) => {
                        let unknown = src.at(
                            n,
                            Code::Invalid,
                            field,
                            format!(
                                "unknown peer {:?}: no {}.toml in the manifest",
                                n.get_ref(),
                                n.get_ref()
                            ),
                        );
                        pair_refs.push((name.clone(), unknown));
                        Some(name)
                    }
                    Err(e) => {
                        diags.push(src.at(n, Code::Invalid, field, e));
                        None
                    }
                }
            })
            .collect();
        if names.len() != 2 {
            diags.push(src.at(
                &pair.peers,
                Code::Invalid,
                format!("pairs[{i}].peers"),
                format!("a pair names exactly two peers, found {}", names.len()),
            ));
            continue;
        }
        let (Some(a), Some(b)) = (names[0].clone(), names[1].clone()) else {
            continue;
        };
        if a == b {
            diags.push(src.at(
                &pair.peers,
                Code::Invalid,
                format!("pairs[{i}].peers"),
                format!("a pair needs two different peers, found {a} twice"),
            ));
            continue;
        }
        let key = if a <= b { (a, b) } else { (b, a) };
        if pair_auth.insert(key.clone(), mode).is_some() {
            diags.push(src.at(
                &pair.peers,
                Code::Invalid,
                format!("pairs[{i}].peers"),
                format!("the pair {} / {} is listed twice", key.0, key.1),
            ));
        }
    }
    let mut ca_fingerprints = Vec::new();
    let ca_fingerprint_line = raw.ca_fingerprint.as_ref().map(|v| src.line(v.span()));
    if let Some(v) = &raw.ca_fingerprint {
        let items: Vec<&toml::Value> = match v.get_ref() {
            toml::Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for item in items {
            match item.as_str().and_then(crate::tls::normalize_fingerprint) {
                Some(fp) => ca_fingerprints.push(fp),
                None => diags.push(src.at(
                    v,
                    Code::Invalid,
                    "ca_fingerprint",
                    format!(
                        "{item} is not a certificate fingerprint: write \"sha256:\" and 64 hex \
                         digits, as `meshctl cert show CA.crt` prints it (or a list of them)"
                    ),
                )),
            }
        }
        if ca_fingerprints.is_empty() && diags.len() == before {
            diags.push(src.at(
                v,
                Code::Invalid,
                "ca_fingerprint",
                "an empty list pins nothing: remove the field or list the CA's fingerprint",
            ));
        }
    }
    let limits = validate_limits(src, raw.limits.unwrap_or_default(), diags);
    (diags.len() == before).then(|| MeshSettings {
        mesh_id: mesh_id.clone(),
        auth,
        pair_auth,
        ca_fingerprints,
        ca_fingerprint_line,
        limits,
    })
}

fn validate_limits(src: &Source, raw: RawLimits, diags: &mut Vec<Diagnostic>) -> Limits {
    let d = Limits::default();
    let mut get = |v: &Option<Spanned<i64>>, name: &str, lo: i64, hi: i64, default: u64| -> u64 {
        match v {
            None => default,
            Some(s) if (lo..=hi).contains(s.get_ref()) => *s.get_ref() as u64,
            Some(s) => {
                diags.push(src.at(
                    s,
                    Code::BadMeshSettings,
                    format!("limits.{name}"),
                    format!("{} is out of range: use {lo} to {hi}", s.get_ref()),
                ));
                default
            }
        }
    };
    let ms = |d: Duration| d.as_millis() as u64;
    let stream_window = get(
        &raw.stream_window,
        "stream_window",
        16 * 1024,
        16 * 1024 * 1024,
        u64::from(d.stream_window),
    );
    let max_window_default = u64::from(d.max_stream_window).max(stream_window);
    let max_window = get(
        &raw.max_stream_window,
        "max_stream_window",
        16 * 1024,
        64 * 1024 * 1024,
        max_window_default,
    );
    let growth = get(
        &raw.max_link_window_growth,
        "max_link_window_growth",
        0,
        1 << 30,
        u64::from(d.max_link_window_growth),
    );
    let max_streams = get(
        &raw.max_streams,
        "max_streams",
        1,
        65536,
        d.max_streams as u64,
    );
    let ping = get(
        &raw.ping_interval_ms,
        "ping_interval_ms",
        100,
        600_000,
        ms(d.ping_interval),
    );
    let handshake = get(
        &raw.handshake_timeout_ms,
        "handshake_timeout_ms",
        100,
        60_000,
        ms(d.handshake_timeout),
    );
    let link_wait = get(
        &raw.link_wait_ms,
        "link_wait_ms",
        0,
        60_000,
        ms(d.link_wait),
    );
    let pending = get(
        &raw.max_pending_handshakes,
        "max_pending_handshakes",
        1,
        65536,
        d.max_pending_handshakes as u64,
    );
    let pending_per_source = get(
        &raw.max_pending_per_source,
        "max_pending_per_source",
        1,
        65536,
        d.max_pending_per_source as u64,
    );
    let rate = get(
        &raw.handshake_rate_per_source,
        "handshake_rate_per_source",
        0,
        100_000,
        u64::from(d.handshake_rate_per_source),
    );
    let rekey_interval = get(
        &raw.rekey_interval_ms,
        "rekey_interval_ms",
        1_000,
        86_400_000,
        ms(d.rekey.interval),
    );
    // From 1 MiB (tests) to 256 GiB, below AES-GCM's margin of about 2^38.5 bytes per key
    // (RFC 8446 §5.5).
    let rekey_bytes = get(
        &raw.rekey_bytes,
        "rekey_bytes",
        1 << 20,
        1 << 38,
        d.rekey.bytes,
    );
    let rekey_timeout = get(
        &raw.rekey_timeout_ms,
        "rekey_timeout_ms",
        100,
        600_000,
        ms(d.rekey.timeout),
    );
    if let Some(v) = &raw.max_stream_window {
        if max_window < stream_window {
            diags.push(src.at(
                v,
                Code::BadMeshSettings,
                "limits.max_stream_window",
                format!(
                    "{max_window} is below stream_window ({stream_window}): a window cannot \
                     grow below where it starts; set it to at least stream_window"
                ),
            ));
        }
    }
    // The ranges above are far inside u32/usize, so these conversions cannot truncate.
    Limits {
        stream_window: stream_window as u32,
        max_stream_window: max_window.max(stream_window) as u32,
        max_link_window_growth: growth as u32,
        max_streams: max_streams as usize,
        ping_interval: Duration::from_millis(ping),
        handshake_timeout: Duration::from_millis(handshake),
        link_wait: Duration::from_millis(link_wait),
        max_pending_handshakes: pending as usize,
        max_pending_per_source: pending_per_source as usize,
        handshake_rate_per_source: rate as u32,
        rekey: crate::proto::rekey::RekeyPolicy {
            interval: Duration::from_millis(rekey_interval),
            bytes: rekey_bytes,
            timeout: Duration::from_millis(rekey_timeout),
        },
    }
}

fn validate_peer(
    src: &Source,
    name: PeerName,
    raw: RawPeer,
    diags: &mut Vec<Diagnostic>,
) -> PeerDraft {
    let mut endpoints = Vec::new();
    for (i, ep) in raw.endpoints.iter().enumerate() {
        match ep.get_ref().parse::<HostPort>() {
            Ok(hp) => endpoints.push(hp),
            Err(e) => diags.push(src.at(ep, Code::BadEndpoint, format!("endpoints[{i}]"), e)),
        }
    }

    let public_key = match PublicKey::from_base64(raw.public_key.get_ref()) {
        Ok(k) => Some(k),
        Err(e) => {
            diags.push(src.at(
                &raw.public_key,
                Code::BadKey,
                "public_key",
                format!("{e}; copy the public_key line that `meshctl add-peer` wrote"),
            ));
            None
        }
    };

    let mut services = BTreeMap::new();
    for (svc_name, svc) in &raw.services {
        let field = format!("services.{}", svc_name.get_ref());
        // The body is checked even under a bad name, so one run reports both.
        let draft = validate_service(src, &name, &field, svc, diags);
        match ServiceName::new(svc_name.get_ref()) {
            Ok(n) => {
                services.insert(n, draft);
            }
            Err(_) if svc_name.get_ref().starts_with('_') => diags.push(src.at(
                svc_name,
                Code::BadServiceName,
                field,
                format!(
                    "service name {:?} is reserved: names starting with '_' are meshd's own \
                     (`{}` answers mesh status); rename the service",
                    svc_name.get_ref(),
                    ServiceName::STATUS
                ),
            )),
            Err(e) => diags.push(src.at(svc_name, Code::BadServiceName, field, e)),
        }
    }

    let mut forwards = Vec::new();
    let mut listens: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, fwd) in raw.forwards.iter().enumerate() {
        let draft = validate_forward(src, &name, i, fwd, diags);
        if let Some(listen) = draft.listen {
            if let Some(first) = listens.insert(listen, i) {
                diags.push(src.at(
                    &fwd.listen, Code::DuplicateListen,
                    format!("forwards[{i}].listen"),
                    format!("{listen} is already the listen address of forwards[{first}]; each forward needs its own address"),
                ));
            }
        }
        forwards.push(draft);
    }

    PeerDraft {
        file: src.path.clone(),
        name,
        endpoints,
        public_key,
        key_line: src.line(raw.public_key.span()),
        services,
        forwards,
    }
}

fn validate_service(
    src: &Source,
    me: &PeerName,
    field: &str,
    raw: &RawService,
    diags: &mut Vec<Diagnostic>,
) -> ServiceDraft {
    let target = match raw.target.get_ref().parse::<HostPort>() {
        Ok(t) => Some(t),
        Err(e) => {
            diags.push(src.at(&raw.target, Code::BadTarget, format!("{field}.target"), e));
            None
        }
    };
    let mut allow = Vec::new();
    for (i, a) in raw.allow.iter().enumerate() {
        let afield = format!("{field}.allow[{i}]");
        match PeerName::new(a.get_ref()) {
            Ok(p) if &p == me => diags.push(src.at(
                a,
                Code::AllowSelf,
                afield,
                "a peer cannot forward to itself; remove it from allow",
            )),
            Ok(p) => allow.push((p, i, src.line(a.span()))),
            Err(e) => diags.push(src.at(a, Code::BadAllow, afield, e)),
        }
    }
    ServiceDraft { target, allow }
}

fn validate_forward(
    src: &Source,
    me: &PeerName,
    i: usize,
    raw: &RawForward,
    diags: &mut Vec<Diagnostic>,
) -> ForwardDraft {
    let listen = match parse_listen(raw.listen.get_ref()) {
        Ok(addr) => {
            if is_exposed(addr.ip()) && !raw.public {
                diags.push(src.at(
                    &raw.listen,
                    Code::ExposedForward,
                    format!("forwards[{i}].listen"),
                    format!(
                        "listens on {}, which is reachable from outside; use a loopback or \
                         private address, or set public = true on this forward if that is \
                         really intended",
                        addr.ip()
                    ),
                ));
            }
            Some(addr)
        }
        Err(e) => {
            diags.push(src.at(
                &raw.listen,
                Code::BadListen,
                format!("forwards[{i}].listen"),
                e,
            ));
            None
        }
    };

    let field = format!("forwards[{i}].to");
    let to_str = raw.to.get_ref();
    let to = match to_str.split_once('/') {
        None => {
            diags.push(src.at(
                &raw.to,
                Code::BadForwardTo,
                field,
                format!("{to_str:?} is not \"peer/service\""),
            ));
            None
        }
        Some((p, s)) => match (PeerName::new(p), ServiceName::new(s)) {
            (Ok(p), _) if &p == me => {
                diags.push(src.at(
                    &raw.to,
                    Code::ForwardToSelf,
                    field,
                    "a peer cannot forward to itself",
                ));
                None
            }
            (Ok(p), Ok(s)) => Some((p, s)),
            (Err(e), _) | (_, Err(e)) => {
                diags.push(src.at(&raw.to, Code::BadForwardTo, field, e));
                None
            }
        },
    };
    ForwardDraft {
        listen,
        to,
        to_line: src.line(raw.to.span()),
        public: raw.public,
    }
}

/// References between peers: allow lists name existing peers, forwards reach an existing
/// service that allows them.
fn check_references(drafts: &[PeerDraft], names: &BTreeSet<PeerName>, diags: &mut Vec<Diagnostic>) {
    let by_name: BTreeMap<&PeerName, &PeerDraft> = drafts.iter().map(|d| (&d.name, d)).collect();
    let at = |d: &PeerDraft, code: Code, line: usize, field: String, message: String| Diagnostic {
        code,
        file: d.file.clone(),
        line: Some(line),
        field,
        message,
    };
    for d in drafts {
        for (svc, s) in &d.services {
            for (p, i, line) in &s.allow {
                if !names.contains(p) {
                    diags.push(at(
                        d,
                        Code::AllowUnknownPeer,
                        *line,
                        format!("services.{svc}.allow[{i}]"),
                        format!("unknown peer \"{p}\""),
                    ));
                }
            }
        }
        for (i, f) in d.forwards.iter().enumerate() {
            let Some((peer, svc)) = &f.to else { continue };
            let field = format!("forwards[{i}].to");
            if !names.contains(peer) {
                diags.push(at(
                    d,
                    Code::ForwardUnknownPeer,
                    f.to_line,
                    field,
                    format!("unknown peer \"{peer}\""),
                ));
                continue;
            }
            // A peer whose own file failed to parse already has its own diagnostic.
            let Some(exporter) = by_name.get(peer) else {
                continue;
            };
            match exporter.services.get(svc) {
                None => {
                    let known: Vec<&str> =
                        exporter.services.keys().map(ServiceName::as_str).collect();
                    let known = if known.is_empty() {
                        "it exports no services".to_owned()
                    } else {
                        format!("it exports: {}", known.join(", "))
                    };
                    diags.push(at(
                        d,
                        Code::ForwardUnknownService,
                        f.to_line,
                        field,
                        format!("peer \"{peer}\" has no service \"{svc}\" ({known})"),
                    ));
                }
                Some(s) if !s.allow.iter().any(|(p, _, _)| p == &d.name) => {
                    diags.push(at(
                        d,
                        Code::ForwardNotAllowed,
                        f.to_line,
                        field,
                        format!(
                            "{peer}/{svc} does not allow {me}; add \"{me}\" to \
                             services.{svc}.allow in {}",
                            exporter.file.display(),
                            me = d.name
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

/// Two peers with one key could impersonate each other; report it on both files.
fn check_duplicate_keys(drafts: &[PeerDraft], diags: &mut Vec<Diagnostic>) {
    let mut by_key: BTreeMap<PublicKey, Vec<&PeerDraft>> = BTreeMap::new();
    for d in drafts {
        if let Some(k) = d.public_key {
            by_key.entry(k).or_default().push(d);
        }
    }
    for group in by_key.values().filter(|g| g.len() > 1) {
        for d in group {
            let others: Vec<String> = group
                .iter()
                .filter(|o| o.name != d.name)
                .map(|o| format!("peer \"{}\" ({})", o.name, o.file.display()))
                .collect();
            diags.push(Diagnostic {
                code: Code::DuplicateKey,
                file: d.file.clone(),
                line: Some(d.key_line),
                field: "public_key".into(),
                message: format!(
                    "same public key as {}; every peer needs its own key (run `meshctl add-peer` on each host)",
                    others.join(", ")
                ),
            });
        }
    }
}

fn finish_peer(d: PeerDraft) -> Option<Peer> {
    let mut services = BTreeMap::new();
    for (name, s) in d.services {
        let service = Service {
            target: s.target?,
            allow: s.allow.into_iter().map(|(p, _, _)| p).collect(),
        };
        services.insert(name, service);
    }
    let mut forwards = Vec::new();
    for f in d.forwards {
        let (peer, service) = f.to?;
        forwards.push(Forward {
            listen: f.listen?,
            peer,
            service,
            public: f.public,
        });
    }
    Some(Peer {
        name: d.name,
        endpoints: d.endpoints,
        public_key: d.public_key?,
        services,
        forwards,
    })
}

/// Warnings about a valid manifest: things that load but are probably not what the
/// operator meant. `meshctl check` prints them without failing.
pub fn lint_manifest(m: &Manifest) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    let file = |p: &PeerName| m.dir.join(format!("{p}.toml"));
    let warn = |p: &PeerName, code: Code, field: String, message: String| Diagnostic {
        code,
        file: file(p),
        line: None,
        field,
        message,
    };
    for peer in m.peers.values() {
        for (name, svc) in &peer.services {
            if svc.allow.is_empty() {
                warnings.push(warn(
                    &peer.name,
                    Code::UnusedService,
                    format!("services.{name}.allow"),
                    "allows no peer, so nobody can use this service; list the peers that need it"
                        .into(),
                ));
            }
            if let HostPort::Addr(addr) = &svc.target {
                if is_exposed(addr.ip()) {
                    warnings.push(warn(
                        &peer.name,
                        Code::PublicTarget,
                        format!("services.{name}.target"),
                        format!(
                            "target {addr} is a public address; a service behind the mesh \
                             usually listens on loopback or a private network only"
                        ),
                    ));
                }
            }
        }
        if peer.endpoints.is_empty() {
            let dialers: Vec<&str> = m
                .peers
                .values()
                .filter(|o| o.forwards.iter().any(|f| f.peer == peer.name))
                .map(|o| o.name.as_str())
                .collect();
            if !dialers.is_empty() {
                warnings.push(warn(
                    &peer.name,
                    Code::UnreachablePeer,
                    "endpoints".into(),
                    format!(
                        "no endpoints, but {} forward to it: nobody can dial this peer",
                        dialers.join(", ")
                    ),
                ));
            }
        }
    }
    warnings
}

/// Where in the host config the fields that `load_config` checks are written.
struct HostLines {
    name: Option<usize>,
    key: Option<usize>,
    mesh_secret: Option<usize>,
    cert: Option<usize>,
    cert_key: Option<usize>,
    ca: Option<usize>,
}

/// Loads and validates a host config file alone.
pub fn load_host_config(path: &Path) -> Result<HostConfig, ConfigError> {
    parse_host(path)
        .map(|(host, _)| host)
        .map_err(ConfigError::Invalid)
}

fn parse_host(path: &Path) -> Result<(HostConfig, HostLines), Vec<Diagnostic>> {
    let src = Source::read(path.to_path_buf()).map_err(|d| vec![d])?;
    let raw: RawHost = src.parse().map_err(|d| vec![d])?;
    let mut diags = Vec::new();
    // Relative paths are relative to the file, so a config symlinked from a git checkout
    // can point into that checkout.
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolve = |v: &Spanned<String>, field: &str, diags: &mut Vec<Diagnostic>| {
        let p = Path::new(v.get_ref());
        if v.get_ref().is_empty() {
            diags.push(src.at(v, Code::Invalid, field, "must not be empty"));
        }
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let manifest = resolve(&raw.manifest, "manifest", &mut diags);
    let key = resolve(&raw.key, "key", &mut diags);
    let mesh_secret = raw
        .mesh_secret
        .as_ref()
        .map(|v| resolve(v, "mesh_secret", &mut diags));
    let state_dir = match &raw.state_dir {
        Some(v) => resolve(v, "state_dir", &mut diags),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    };
    let cert = raw.cert.as_ref().map(|v| resolve(v, "cert", &mut diags));
    let cert_key = raw
        .cert_key
        .as_ref()
        .map(|v| resolve(v, "cert_key", &mut diags));
    let ca = raw.ca.as_ref().map(|v| resolve(v, "ca", &mut diags));
    let tls = match (cert, cert_key, ca) {
        (Some(cert), Some(cert_key), Some(ca)) => Some(crate::tls::TlsFiles { cert, cert_key, ca }),
        (None, None, None) => None,
        (cert, cert_key, ca) => {
            let missing: Vec<&str> = [
                ("cert", cert.is_none()),
                ("cert_key", cert_key.is_none()),
                ("ca", ca.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(f, _)| *f)
            .collect();
            let given = [&raw.cert, &raw.cert_key, &raw.ca]
                .into_iter()
                .flatten()
                .next();
            let msg = format!(
                "a TLS identity needs cert, cert_key and ca together; {} missing",
                missing.join(" and ")
            );
            match given {
                Some(v) => diags.push(src.at(v, Code::Invalid, missing[0], msg)),
                None => diags.push(src.diag(None, Code::Invalid, missing[0], msg)),
            }
            None
        }
    };

    let name = PeerName::new(raw.name.get_ref())
        .map_err(|e| diags.push(src.at(&raw.name, Code::Invalid, "name", e)))
        .ok();
    let mut addr = |v: &Option<Spanned<String>>, field: &str| {
        v.as_ref().and_then(|s| {
            parse_listen(s.get_ref())
                .map_err(|e| diags.push(src.at(s, Code::Invalid, field, e)))
                .ok()
        })
    };
    let listen = addr(&raw.listen, "listen");
    let admin = addr(&raw.admin, "admin").unwrap_or(DEFAULT_ADMIN);
    let busy_poll_us = match &raw.busy_poll_us {
        None => DEFAULT_BUSY_POLL_US,
        Some(v) if (0..=MAX_BUSY_POLL_US).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            diags.push(src.at(
                v,
                Code::Invalid,
                "busy_poll_us",
                format!(
                    "{} is out of range: use 0 (never poll) to {MAX_BUSY_POLL_US}",
                    v.get_ref()
                ),
            ));
            DEFAULT_BUSY_POLL_US
        }
    };
    let drain_grace_ms = match &raw.drain_grace_ms {
        None => DEFAULT_DRAIN_GRACE_MS,
        Some(v) if (0..=MAX_DRAIN_GRACE_MS).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            diags.push(src.at(
                v, Code::Invalid,
                "drain_grace_ms",
                format!(
                    "{} is out of range: use 0 (reset open streams at once) to {MAX_DRAIN_GRACE_MS}",
                    v.get_ref()
                ),
            ));
            DEFAULT_DRAIN_GRACE_MS
        }
    };

    let Some(name) = name else {
        return Err(diags);
    };
    if !diags.is_empty() {
        return Err(diags);
    }
    let lines = HostLines {
        name: Some(src.line(raw.name.span())),
        key: Some(src.line(raw.key.span())),
        mesh_secret: raw.mesh_secret.as_ref().map(|v| src.line(v.span())),
        cert: raw.cert.as_ref().map(|v| src.line(v.span())),
        cert_key: raw.cert_key.as_ref().map(|v| src.line(v.span())),
        ca: raw.ca.as_ref().map(|v| src.line(v.span())),
    };
    let host = HostConfig {
        path: path.to_path_buf(),
        name,
        manifest,
        key,
        listen,
        admin,
        mesh_secret,
        state_dir,
        tls,
        busy_poll: Duration::from_micros(busy_poll_us),
        drain_grace: Duration::from_millis(drain_grace_ms),
    };
    Ok((host, lines))
}

/// Loads the host config, its manifest, its key and mesh secret, and checks them together.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let (host, lines) = parse_host(path).map_err(ConfigError::Invalid)?;
    let mut diags = Vec::new();
    // Host config findings are not linted by `meshctl check`, which reads manifests only.
    let on_host = |line: Option<usize>, field: &str, message: String| Diagnostic {
        code: Code::Invalid,
        file: host.path.clone(),
        line,
        field: field.into(),
        message,
    };

    let manifest = match load_manifest(&host.manifest) {
        Ok(m) => Some(m),
        Err(ConfigError::Invalid(d)) => {
            diags.extend(d);
            None
        }
    };
    let private_key = keys::load_private_key(&host.key)
        .map_err(|e| diags.push(on_host(lines.key, "key", e.to_string())))
        .ok();
    let mesh_secret = match &host.mesh_secret {
        Some(p) => match keys::load_mesh_secret(p) {
            Ok(s) => Some(s),
            Err(e) => {
                diags.push(on_host(lines.mesh_secret, "mesh_secret", e.to_string()));
                None
            }
        },
        None => None,
    };

    if let Some(m) = &manifest {
        match m.peers.get(&host.name) {
            None => diags.push(on_host(
                lines.name,
                "name",
                format!(
                    "no peer \"{}\" in the manifest {}: add {} (`meshctl add-peer`)",
                    host.name,
                    m.dir.display(),
                    m.dir.join(format!("{}.toml", host.name)).display()
                ),
            )),
            Some(me) => {
                if let Some(k) = &private_key {
                    let actual = k.public_key();
                    if actual != me.public_key {
                        diags.push(on_host(
                            lines.key,
                            "key",
                            format!(
                                "the key file {} has public key {actual}, but {} says \
                                 public_key = \"{}\"; this key file does not belong to peer \
                                 \"{}\"",
                                host.key.display(),
                                m.dir.join(format!("{}.toml", host.name)).display(),
                                me.public_key,
                                host.name
                            ),
                        ));
                    }
                }
            }
        }
        let tls_peers: Vec<&str> = m
            .peers
            .keys()
            .filter(|p| **p != host.name && m.mesh.auth_between(&host.name, p) == AuthMode::Tls)
            .map(|p| p.as_str())
            .collect();
        if !tls_peers.is_empty() && host.tls.is_none() {
            diags.push(on_host(
                None,
                "cert",
                format!(
                    "the links to {} use auth = \"tls\" ({}): set cert, cert_key and ca to this \
                     host's certificate, its key (0600) and the mesh CA (`meshctl cert`)",
                    tls_peers.join(", "),
                    m.dir.join(MESH_FILE).display()
                ),
            ));
        }
        let psk_pairs = m
            .peers
            .keys()
            .any(|p| *p != host.name && m.mesh.auth_between(&host.name, p) == AuthMode::Psk);
        if (m.mesh.auth == AuthMode::Psk || psk_pairs) && host.mesh_secret.is_none() {
            diags.push(on_host(
                None,
                "mesh_secret",
                format!(
                    "auth = \"psk\" in {} needs the mesh secret: set mesh_secret to its file \
                     (32 random bytes, mode 0600, distributed out of band)",
                    m.dir.join(MESH_FILE).display()
                ),
            ));
        }
    }

    let mut tls = None;
    if let (Some(files), Some(m)) = (&host.tls, &manifest) {
        match crate::tls::TlsMaterial::load(files, &host.name, &m.mesh.ca_fingerprints) {
            Ok(material) => tls = Some(std::sync::Arc::new(material)),
            Err(e) => {
                let line = match e.field {
                    "cert" => lines.cert,
                    "cert_key" => lines.cert_key,
                    _ => lines.ca,
                };
                let mut message = e.message;
                if e.kind == crate::tls::TlsLoadKind::UnpinnedCa {
                    let mesh = m.dir.join(MESH_FILE);
                    message.push_str(&match m.mesh.ca_fingerprint_line {
                        Some(n) => format!(" (the pin: {}:{n}: ca_fingerprint)", mesh.display()),
                        None => format!(" (the pin: {}: ca_fingerprint)", mesh.display()),
                    });
                }
                diags.push(on_host(line, e.field, message));
            }
        }
    }

    if !diags.is_empty() {
        return Err(ConfigError::Invalid(diags));
    }
    let (Some(manifest), Some(private_key)) = (manifest, private_key) else {
        return Err(ConfigError::Invalid(vec![on_host(
            None,
            "",
            "internal error: configuration incomplete".into(),
        )]));
    };
    let listen = match host.listen {
        Some(l) => l,
        None => {
            let port = manifest
                .peers
                .get(&host.name)
                .and_then(|me| me.endpoints.first())
                .map_or(DEFAULT_MESH_PORT, HostPort::port);
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
        }
    };
    let hash = super::hash_config_files(&host.path, &manifest.dir).map_err(|e| {
        ConfigError::Invalid(vec![on_host(
            None,
            "",
            format!("cannot read the configuration files to hash them: {e}"),
        )])
    })?;
    Ok(Config {
        host,
        manifest,
        private_key,
        mesh_secret,
        listen,
        hash,
        tls,
    })
}
