//! The certificate verifiers of a mesh link: rustls's webpki verifiers (chain to the mesh
//! CA, dates, names) wrapped with the key usage check webpki leaves out.
//!
//! webpki ignores the KeyUsage extension and checks the extended key usage only when the
//! extension is present, so on its own it accepts a certificate of the mesh CA that was
//! made for another purpose (no usages at all, a CA-style keyCertSign, keyEncipherment
//! only). Every mesh peer is both a TLS server and a TLS client, so a peer certificate
//! must carry an EKU with both serverAuth and clientAuth, and a KeyUsage, if it has one,
//! must include digitalSignature: an absent KeyUsage restricts nothing (RFC 5280
//! §4.2.1.3), and a site CA made with plain `openssl` often leaves it out. `meshctl cert
//! issue` makes both ([`check_peer_usage`]).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use rustls::{Error, SignatureScheme};

/// Why a certificate's key usage does not fit a mesh peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The certificate or its usage extensions did not parse.
    #[error("cannot read the certificate's key usage: {0}")]
    Unreadable(String),
    /// KeyUsage without digitalSignature.
    #[error("certificate lacks digitalSignature key usage (it has {has})")]
    NoDigitalSignature {
        /// The key usages it has.
        has: String,
    },
    /// No extended key usage extension.
    #[error(
        "certificate has no extended key usage extension (a mesh peer needs serverAuth and \
         clientAuth)"
    )]
    NoExtendedKeyUsage,
    /// The EKU lacks serverAuth or clientAuth.
    #[error(
        "certificate lacks {missing} extended key usage (it has {has}); a mesh peer is both \
         server and client"
    )]
    MissingExtendedKeyUsage {
        /// `serverAuth` or `clientAuth`.
        missing: &'static str,
        /// The extended key usages it has.
        has: String,
    },
}

/// The key usages and extended key usages of a certificate, by their RFC 5280 names;
/// `None` when the extension is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertUsage {
    /// KeyUsage bits (`digitalSignature`, `keyCertSign`, …).
    pub key_usage: Option<Vec<&'static str>>,
    /// Extended key usages (`serverAuth`, `clientAuth`, others as dotted OIDs).
    pub extended: Option<Vec<String>>,
}

/// KeyUsage bit names, in bit order (RFC 5280 4.2.1.3).
const KEY_USAGE_BITS: [&str; 9] = [
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
];

fn list_or_none(items: &[impl AsRef<str>]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl CertUsage {
    /// Reads the usage extensions of a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, UsageError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| UsageError::Unreadable(e.to_string()))?;
        let key_usage = cert
            .key_usage()
            .map_err(|e| UsageError::Unreadable(e.to_string()))?
            .map(|ku| {
                KEY_USAGE_BITS
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| (ku.value.flags >> bit) & 1 == 1)
                    .map(|(_, name)| *name)
                    .collect()
            });
        let extended = cert
            .extended_key_usage()
            .map_err(|e| UsageError::Unreadable(e.to_string()))?
            .map(|eku| {
                let eku = eku.value;
                let mut names: Vec<String> = [
                    (eku.server_auth, "serverAuth"),
                    (eku.client_auth, "clientAuth"),
                    (eku.code_signing, "codeSigning"),
                    (eku.email_protection, "emailProtection"),
                    (eku.time_stamping, "timeStamping"),
                    (eku.ocsp_signing, "OCSPSigning"),
                    (eku.any, "anyExtendedKeyUsage"),
                ]
                .iter()
                .filter(|(set, _)| *set)
                .map(|(_, name)| (*name).to_owned())
                .collect();
                names.extend(eku.other.iter().map(|oid| oid.to_id_string()));
                names
            });
        Ok(Self {
            key_usage,
            extended,
        })
    }

    /// Whether these usages fit a mesh peer: serverAuth and clientAuth, and
    /// digitalSignature among the key usages when the certificate restricts them.
    pub fn check_peer(&self) -> Result<(), UsageError> {
        if let Some(ku) = &self.key_usage {
            if !ku.contains(&"digitalSignature") {
                return Err(UsageError::NoDigitalSignature {
                    has: list_or_none(ku),
                });
            }
        }
        let eku = self
            .extended
            .as_ref()
            .ok_or(UsageError::NoExtendedKeyUsage)?;
        for missing in ["serverAuth", "clientAuth"] {
            if !eku.iter().any(|u| u == missing) {
                return Err(UsageError::MissingExtendedKeyUsage {
                    missing,
                    has: list_or_none(eku),
                });
            }
        }
        Ok(())
    }

    /// The key usages, comma separated (`(no extension)` without the extension).
    pub fn key_usage_text(&self) -> String {
        self.key_usage
            .as_ref()
            .map_or("(no extension)".to_owned(), |ku| list_or_none(ku))
    }

    /// The extended key usages, comma separated (`(no extension)` without the extension).
    pub fn extended_text(&self) -> String {
        self.extended
            .as_ref()
            .map_or("(no extension)".to_owned(), |eku| list_or_none(eku))
    }
}

/// Checks that a peer certificate (DER) carries the usages of a mesh peer.
pub fn check_peer_usage(der: &[u8]) -> Result<(), UsageError> {
    CertUsage::of(der)?.check_peer()
}

/// The usage error of a TLS failure, if that is what it was.
pub(crate) fn usage_error(err: &Error) -> Option<&UsageError> {
    match err {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<UsageError>()
        }
        _ => None,
    }
}

fn usage_check(end_entity: &CertificateDer<'_>) -> Result<(), Error> {
    check_peer_usage(end_entity)
        .map_err(|e| Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))
}

/// The acceptor's verifier of dialer certificates: webpki, then the usage check.
pub(crate) struct MeshClientVerifier(pub(crate) Arc<dyn ClientCertVerifier>);

/// The dialer's verifier of acceptor certificates: webpki, then the usage check.
pub(crate) struct MeshServerVerifier(pub(crate) Arc<dyn ServerCertVerifier>);

impl fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MeshClientVerifier").field(&self.0).finish()
    }
}

impl fmt::Debug for MeshServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MeshServerVerifier").field(&self.0).finish()
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        usage_check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        usage_check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}
