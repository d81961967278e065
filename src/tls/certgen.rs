//! Making a mesh CA and peer certificates with rcgen (`meshctl cert`, the tls demo and the
//! tests). Keys are ECDSA P-256 (ring signs and verifies them), certificates carry the
//! peer name as their only DNS SAN and both TLS usages, since a peer is server and client.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
pub use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};

/// Errors from making or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    /// rcgen refused the parameters or a key.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
    /// A file exists and `force` was not given.
    #[error("{0} already exists; remove it or pass --force to overwrite it")]
    Exists(String),
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key (secret).
    pub key_pem: zeroize::Zeroizing<String>,
    /// The certificate's DER bytes.
    pub der: Vec<u8>,
}

/// Validity of a certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Start.
    pub not_before: OffsetDateTime,
    /// End.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) for `days` days.
    pub fn days_from_now(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

fn random_serial(params: &mut CertificateParams) {
    let mut serial = [0u8; 16];
    if crate::keys::fill_random(&mut serial).is_ok() {
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    }
}

/// The common name `meshctl cert new-ca` gives a CA by default: `meshd mesh CA` and 8
/// random hex digits. Certificate chains are built by issuer name, so two meshes' CAs with
/// one name would make a foreign peer certificate look like one of ours with a bad
/// signature; distinct names keep "not our CA" an unknown issuer.
pub fn default_ca_name() -> Result<String, CertGenError> {
    let mut tag = [0u8; 4];
    crate::keys::fill_random(&mut tag).map_err(|_| CertGenError::Random)?;
    Ok(format!(
        "meshd mesh CA {:02x}{:02x}{:02x}{:02x}",
        tag[0], tag[1], tag[2], tag[3]
    ))
}

/// A new self-signed CA allowed to sign peer certificates (path length 0).
pub fn new_ca(common_name: &str, validity: Validity) -> Result<Issued, CertGenError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    random_serial(&mut params);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        der: cert.der().to_vec(),
    })
}

/// A peer certificate for `name` (DNS SAN and common name), signed by the CA.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    validity: Validity,
) -> Result<Issued, CertGenError> {
    let params = peer_params(name, validity)?;
    sign(ca_cert_pem, ca_key_pem, params)
}

/// Like [`issue`], with the given key usages and extended key usages instead of the
/// peer ones (an empty list leaves the extension out). For tests: a certificate of the
/// mesh CA made for another purpose, which meshd must refuse.
pub fn issue_with_usages(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    name: &str,
    validity: Validity,
    key_usages: &[KeyUsagePurpose],
    extended: &[ExtendedKeyUsagePurpose],
) -> Result<Issued, CertGenError> {
    let mut params = peer_params(name, validity)?;
    params.key_usages = key_usages.to_vec();
    params.extended_key_usages = extended.to_vec();
    sign(ca_cert_pem, ca_key_pem, params)
}

fn sign(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    params: CertificateParams,
) -> Result<Issued, CertGenError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        der: cert.der().to_vec(),
    })
}

/// A self-signed certificate for `name`, shaped like a peer certificate (tests: a
/// certificate no CA vouches for).
pub fn self_signed(name: &str, validity: Validity) -> Result<Issued, CertGenError> {
    let key = KeyPair::generate()?;
    let cert = peer_params(name, validity)?.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        der: cert.der().to_vec(),
    })
}

fn peer_params(name: &str, validity: Validity) -> Result<CertificateParams, CertGenError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    random_serial(&mut params);
    Ok(params)
}

/// Writes a public file (certificate), 0644.
pub fn write_public(path: &Path, text: &str, force: bool) -> Result<(), CertGenError> {
    write_file(path, text.as_bytes(), 0o644, force)
}

/// Writes a private key file, 0600.
pub fn write_private(path: &Path, text: &str, force: bool) -> Result<(), CertGenError> {
    write_file(path, text.as_bytes(), 0o600, force)
}

/// Writes through a temporary file and a rename, so a daemon reloading at the same moment
/// reads the old file or the new one, never half of one.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), CertGenError> {
    let io = |source| CertGenError::Io {
        path: path.display().to_string(),
        source,
    };
    if !force && path.exists() {
        return Err(CertGenError::Exists(path.display().to_string()));
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    let _ = fs::remove_file(tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io)?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io)?;
    fs::rename(tmp, path).map_err(io)
}

/// Reads a file written by this module (CA certificate or key) into a string.
pub fn read_text(path: &Path) -> Result<zeroize::Zeroizing<String>, CertGenError> {
    fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| CertGenError::Io {
            path: path.display().to_string(),
            source,
        })
}
