//! TLS material for `auth = "tls"` links: rustls with the ring provider (the project's one
//! crypto backend), TLS 1.3 only, mutual authentication against the mesh CA, no session
//! resumption, no tickets, no early data.
//!
//! Identity is the certificate's DNS SAN, which must be the peer's name. The verifiers
//! ([`verify`]) check chain, dates and key usage (digitalSignature, serverAuth and
//! clientAuth); the link layer then checks that the dialer's certificate names the peer it
//! claims in the preamble ([`check_peer_name`]) and applies the manifest and allow lists
//! exactly as for the other modes.
//!
//! Material is loaded and checked as a whole ([`TlsMaterial::load`]) and swapped as a whole
//! on reload ([`TlsStore`]): new handshakes use the new material, established links keep
//! running on theirs.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

use crate::config::PeerName;

pub mod certgen;
pub mod verify;

pub use verify::{check_peer_usage, CertUsage, UsageError};

/// The three files of a host's TLS identity (host config `cert`, `cert_key`, `ca`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain: this host's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of `cert` (mode 0600).
    pub cert_key: PathBuf,
    /// PEM certificates of the mesh CA (several during a CA rotation).
    pub ca: PathBuf,
}

/// A problem with one of the TLS files; `field` is the host config field naming the file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct TlsLoadError {
    /// `cert`, `cert_key` or `ca`.
    pub field: &'static str,
    /// What is wrong (never the key material itself).
    pub message: String,
    /// Which kind of problem, for a caller that can say more (where the pins are).
    pub kind: TlsLoadKind,
}

/// The kind of a [`TlsLoadError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsLoadKind {
    /// A file is missing, unreadable, or does not hold a fitting certificate or key.
    File,
    /// The `ca` file holds a CA certificate that `ca_fingerprint` does not pin.
    UnpinnedCa,
}

fn load_err(field: &'static str, message: impl Into<String>) -> TlsLoadError {
    TlsLoadError {
        field,
        message: message.into(),
        kind: TlsLoadKind::File,
    }
}

/// The ring provider, the only one this project uses, with TLS 1.3 AES-128-GCM first:
/// both ends are meshd, so this order decides, and AES-128 has 10 rounds to AES-256's 14
/// (the cipher is about a third of a busy link's CPU). The other suites stay as fallbacks.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// `sha256:` and the lowercase hex SHA-256 of a certificate's DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Normalizes a fingerprint as an operator may write it: `sha256:ab…`, `AB:CD:…` (openssl
/// style) or bare hex. Returns the [`fingerprint`] form, or `None` if it is not 32 bytes
/// of hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let hex = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = hex.chars().filter(|&c| c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// A host's loaded and checked TLS identity, ready for handshakes.
pub struct TlsMaterial {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// Fingerprint of this host's certificate.
    pub cert_fingerprint: String,
    /// Fingerprints of the CA certificates trusted.
    pub ca_fingerprints: Vec<String>,
    /// This host's certificate's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("cert", &self.cert_fingerprint)
            .field("ca", &self.ca_fingerprints)
            .finish_non_exhaustive()
    }
}

fn read_certs(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsLoadError> {
    let text = fs::read(path)
        .map_err(|e| load_err(field, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load_err(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(load_err(
            field,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsLoadError> {
    let field = "cert_key";
    // Opened once, checked on the open file: owner, mode, not a symlink (keys.rs).
    let text = crate::keys::read_secret_bytes(path, 1 << 20)
        .map_err(|e| load_err(field, format!("cannot use the private key: {e}")))?;
    // The parse error names only the PEM problem, never the bytes.
    PrivateKeyDer::from_pem_slice(&text).map_err(|_| {
        load_err(
            field,
            format!(
                "{} holds no PEM private key (PKCS#8 \"PRIVATE KEY\", SEC1 or PKCS#1)",
                path.display()
            ),
        )
    })
}

/// Seconds since the epoch of a certificate's notAfter.
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The verifier of dialer certificates (acceptor side) and of acceptor certificates
/// (dialer side): webpki under `roots`, then the mesh usage check.
type Verifiers = (Arc<dyn ClientCertVerifier>, Arc<dyn ServerCertVerifier>);

fn mesh_verifiers(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Verifiers, rustls::client::VerifierBuilderError> {
    let client =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?;
    Ok((
        Arc::new(verify::MeshClientVerifier(client)),
        Arc::new(verify::MeshServerVerifier(server)),
    ))
}

impl TlsMaterial {
    /// Loads the three files and checks them together: the key is 0600 and matches the
    /// certificate; every CA certificate matches `pins` when pins are given; and this
    /// host's certificate verifies under the CA, now, for both server and client use, with
    /// a DNS SAN equal to `me`. Every error names the field of the file at fault.
    pub fn load(files: &TlsFiles, me: &PeerName, pins: &[String]) -> Result<Self, TlsLoadError> {
        Self::load_at(files, me, pins, UnixTime::now())
    }

    fn load_at(
        files: &TlsFiles,
        me: &PeerName,
        pins: &[String],
        now: UnixTime,
    ) -> Result<Self, TlsLoadError> {
        let chain = read_certs(&files.cert, "cert")?;
        let key = read_key(&files.cert_key)?;
        let cas = read_certs(&files.ca, "ca")?;
        let ca_fingerprints: Vec<String> = cas.iter().map(|c| fingerprint(c)).collect();
        if !pins.is_empty() {
            for fp in &ca_fingerprints {
                if !pins.contains(fp) {
                    return Err(TlsLoadError {
                        kind: TlsLoadKind::UnpinnedCa,
                        ..load_err(
                            "ca",
                            format!(
                                "{} holds a CA certificate with fingerprint {fp}, which \
                                 ca_fingerprint in mesh.toml does not pin (it pins {}): wrong \
                                 CA file, or a new CA not pinned yet?",
                                files.ca.display(),
                                pins.join(", ")
                            ),
                        )
                    });
                }
            }
        }
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| {
                load_err(
                    "ca",
                    format!("{}: not a usable CA certificate: {e}", files.ca.display()),
                )
            })?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let tls13 = [&rustls::version::TLS13];

        let (client_verifier, server_verifier) = mesh_verifiers(roots, &provider)
            .map_err(|e| load_err("ca", format!("{}: {e}", files.ca.display())))?;

        // A certificate made for another purpose is named as such, before the chain checks
        // (which would report it in rustls's words).
        if let Err(e) = check_peer_usage(&chain[0]) {
            return Err(load_err(
                "cert",
                format!(
                    "{}: {e}; a mesh peer certificate needs key usage digitalSignature and \
                     extended key usages serverAuth and clientAuth, as `meshctl cert issue` \
                     makes them",
                    files.cert.display()
                ),
            ));
        }

        // Check this host's own certificate the way its peers will, so a wrong file is
        // caught here rather than as failing links.
        let name = ServerName::try_from(me.as_str().to_owned())
            .map_err(|e| load_err("cert", format!("peer name {me} is not a DNS name: {e}")))?;
        let own = |e: rustls::Error| {
            load_err(
                "cert",
                format!(
                    "{} does not verify under the CA in {} as peer \"{me}\": {}",
                    files.cert.display(),
                    files.ca.display(),
                    describe(&e)
                ),
            )
        };
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
            .map_err(own)?;
        client_verifier
            .verify_client_cert(&chain[0], &chain[1..], now)
            .map_err(own)?;

        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&tls13)
            .map_err(|e| load_err("cert", e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                load_err(
                    "cert_key",
                    format!(
                        "{} does not fit {}: {}",
                        files.cert_key.display(),
                        files.cert.display(),
                        describe(&e)
                    ),
                )
            })?;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.max_early_data_size = 0;
        // An established link's records run in our own record layer
        // (proto::tls_record), with the keys taken out of rustls after the handshake.
        server.enable_secret_extraction = true;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&tls13)
            .map_err(|e| load_err("cert", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain.clone(), key)
            .map_err(|e| {
                load_err(
                    "cert_key",
                    format!(
                        "{} does not fit {}: {}",
                        files.cert_key.display(),
                        files.cert.display(),
                        describe(&e)
                    ),
                )
            })?;
        client.resumption = Resumption::disabled();
        client.enable_early_data = false;
        client.enable_secret_extraction = true;

        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
            cert_fingerprint: fingerprint(&chain[0]),
            ca_fingerprints,
            not_after: not_after(&chain[0]).unwrap_or(0),
        })
    }

    /// Client side of a handshake (the dialer).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Server side of a handshake (the acceptor).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// Whether `other` is the same certificate and CA set.
    pub fn same_as(&self, other: &TlsMaterial) -> bool {
        self.cert_fingerprint == other.cert_fingerprint
            && self.ca_fingerprints == other.ca_fingerprints
    }
}

/// The current TLS material of a daemon, swapped whole on reload.
#[derive(Debug, Default)]
pub struct TlsStore(RwLock<Option<Arc<TlsMaterial>>>);

impl TlsStore {
    /// A store holding `material`.
    pub fn new(material: Option<Arc<TlsMaterial>>) -> Self {
        Self(RwLock::new(material))
    }

    /// The material new handshakes use.
    pub fn current(&self) -> Option<Arc<TlsMaterial>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs new material; established links keep theirs.
    pub fn set(&self, material: Option<Arc<TlsMaterial>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = material;
    }
}

/// Checks that a verified peer certificate names `claimed` (DNS SAN = peer name).
pub fn check_peer_name(cert: &CertificateDer<'_>, claimed: &PeerName) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let name = ServerName::try_from(claimed.as_str().to_owned())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
    rustls::client::verify_server_name(&parsed, &name)
}

/// Every label [`reason`] returns (the acceptor counts each in
/// `meshd_handshake_failures_total`, created at zero).
pub const REASONS: &[&str] = &[
    "cert_expired",
    "cert_not_yet_valid",
    "cert_unknown_issuer",
    "cert_wrong_name",
    "cert_wrong_usage",
    "cert_revoked",
    "cert_invalid",
    "cert_missing",
    "tls_alert",
    "tls_incompatible",
    "tls",
];

/// A stable, low-cardinality label for a TLS failure, for logs and metrics.
pub fn reason(err: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "cert_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "cert_not_yet_valid"
            }
            // A signature that does not verify under the CA is a certificate of another
            // CA that has the same name (webpki picks the issuer by name).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "cert_unknown_issuer"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "cert_wrong_name"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "cert_wrong_usage"
            }
            CertificateError::Other(_) if verify::usage_error(err).is_some() => "cert_wrong_usage",
            CertificateError::Revoked => "cert_revoked",
            _ => "cert_invalid",
        },
        E::NoCertificatesPresented => "cert_missing",
        E::AlertReceived(_) => "tls_alert",
        E::PeerIncompatible(_) => "tls_incompatible",
        _ => "tls",
    }
}

fn purpose_name(p: &rustls::ExtendedKeyPurpose) -> String {
    match p {
        rustls::ExtendedKeyPurpose::ServerAuth => "serverAuth".to_owned(),
        rustls::ExtendedKeyPurpose::ClientAuth => "clientAuth".to_owned(),
        other => other.to_string(),
    }
}

/// A one-line description of a TLS failure for humans.
pub fn describe(err: &rustls::Error) -> String {
    use rustls::Error as E;
    if let Some(usage) = verify::usage_error(err) {
        return usage.to_string();
    }
    match err {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate not issued by the mesh CA (unknown issuer, or self-signed)".to_owned()
        }
        E::InvalidCertificate(CertificateError::BadSignature) => {
            "certificate not issued by the mesh CA (signature does not verify under it; \
             another CA with the same name?)"
                .to_owned()
        }
        E::InvalidCertificate(CertificateError::InvalidPurposeContext {
            required,
            presented,
        }) => {
            let has: Vec<String> = presented.iter().map(purpose_name).collect();
            format!(
                "certificate lacks {} extended key usage (it has {}); a mesh peer is both \
                 server and client",
                purpose_name(required),
                if has.is_empty() {
                    "none".to_owned()
                } else {
                    has.join(", ")
                }
            )
        }
        E::InvalidCertificate(CertificateError::InvalidPurpose) => {
            "certificate lacks the extended key usage this side needs (serverAuth or \
             clientAuth)"
                .to_owned()
        }
        E::PeerIncompatible(why) => {
            format!("the other side does not speak TLS 1.3 as meshd needs it ({why:?})")
        }
        E::AlertReceived(alert) => {
            format!("the other side refused the handshake (alert {alert:?})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
