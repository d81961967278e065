use std::fs;
use std::os::unix::fs::PermissionsExt;

use time::Duration;

use super::certgen::{self, ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku, Validity};
use super::*;

struct Dir {
    tmp: tempfile::TempDir,
    ca_cert: String,
    ca_key: String,
}

impl Dir {
    fn new() -> Self {
        let ca = certgen::new_ca("test CA", Validity::days_from_now(30)).expect("ca");
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
            ca_cert: ca.cert_pem,
            ca_key: ca.key_pem.to_string(),
        }
    }

    fn files(&self, name: &str, validity: Validity) -> TlsFiles {
        let issued = certgen::issue(&self.ca_cert, &self.ca_key, name, validity).expect("issue");
        self.write(name, &issued)
    }

    fn write(&self, name: &str, issued: &certgen::Issued) -> TlsFiles {
        let files = TlsFiles {
            cert: self.tmp.path().join(format!("{name}.crt")),
            cert_key: self.tmp.path().join(format!("{name}.key")),
            ca: self.tmp.path().join("ca.crt"),
        };
        certgen::write_public(&files.cert, &issued.cert_pem, true).expect("write cert");
        certgen::write_private(&files.cert_key, &issued.key_pem, true).expect("write key");
        certgen::write_public(&files.ca, &self.ca_cert, true).expect("write ca");
        files
    }
}

fn name(s: &str) -> PeerName {
    PeerName::new(s).expect("name")
}

#[test]
fn loads_a_valid_identity_and_reports_fingerprints() {
    let d = Dir::new();
    let files = d.files("off1", Validity::days_from_now(10));
    let m = TlsMaterial::load(&files, &name("off1"), &[]).expect("load");
    let cert_der = CertificateDer::pem_file_iter(&files.cert)
        .expect("open")
        .next()
        .expect("one")
        .expect("pem");
    assert_eq!(m.cert_fingerprint, fingerprint(&cert_der));
    assert_eq!(m.ca_fingerprints.len(), 1);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (m.not_after - now - 10 * 86400).abs() < 120,
        "not_after {}",
        m.not_after
    );
}

#[test]
fn pinned_ca_must_match() {
    let d = Dir::new();
    let files = d.files("off1", Validity::days_from_now(10));
    let right = TlsMaterial::load(&files, &name("off1"), &[])
        .expect("load")
        .ca_fingerprints;
    TlsMaterial::load(&files, &name("off1"), &right).expect("pinned right CA");
    let wrong = vec![format!("sha256:{}", "ab".repeat(32))];
    let err = TlsMaterial::load(&files, &name("off1"), &wrong).expect_err("wrong pin");
    assert_eq!(err.field, "ca");
    assert!(err.message.contains("does not pin"), "{}", err.message);
}

#[test]
fn refuses_a_readable_key_a_wrong_name_and_bad_dates() {
    let d = Dir::new();
    let files = d.files("off1", Validity::days_from_now(10));
    fs::set_permissions(&files.cert_key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = TlsMaterial::load(&files, &name("off1"), &[]).expect_err("0644 key");
    assert_eq!(err.field, "cert_key");
    assert!(err.message.contains("chmod 600"), "{}", err.message);
    assert!(
        !err.message.contains("PRIVATE KEY-----"),
        "key bytes in error"
    );

    let files = d.files("off1", Validity::days_from_now(10));
    let err = TlsMaterial::load(&files, &name("web1"), &[]).expect_err("other name");
    assert_eq!(err.field, "cert");

    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let files = d.files("off1", expired);
    let err = TlsMaterial::load(&files, &name("off1"), &[]).expect_err("expired");
    assert_eq!(err.field, "cert");
    assert!(
        err.message.to_lowercase().contains("expired"),
        "{}",
        err.message
    );

    let self_signed =
        certgen::self_signed("off1", Validity::days_from_now(5)).expect("self-signed");
    let files = d.write("off1", &self_signed);
    let err = TlsMaterial::load(&files, &name("off1"), &[]).expect_err("self-signed");
    assert!(
        err.message.contains("not issued by the mesh CA"),
        "{}",
        err.message
    );
}

#[test]
fn refuses_a_key_of_another_certificate() {
    let d = Dir::new();
    let a = certgen::issue(&d.ca_cert, &d.ca_key, "off1", Validity::days_from_now(5)).expect("a");
    let b = certgen::issue(&d.ca_cert, &d.ca_key, "off1", Validity::days_from_now(5)).expect("b");
    let mixed = certgen::Issued {
        cert_pem: a.cert_pem,
        key_pem: b.key_pem,
        der: a.der,
    };
    let files = d.write("off1", &mixed);
    let err = TlsMaterial::load(&files, &name("off1"), &[]).expect_err("mismatched key");
    assert_eq!(err.field, "cert_key");
}

#[test]
fn missing_and_garbage_files_name_their_field() {
    let d = Dir::new();
    let mut files = d.files("off1", Validity::days_from_now(5));
    fs::write(&files.ca, "not pem").expect("write");
    assert_eq!(
        TlsMaterial::load(&files, &name("off1"), &[])
            .expect_err("garbage")
            .field,
        "ca"
    );
    files.cert = d.tmp.path().join("missing.crt");
    assert_eq!(
        TlsMaterial::load(&files, &name("off1"), &[])
            .expect_err("missing")
            .field,
        "cert"
    );
}

#[test]
fn fingerprints_normalize() {
    let hex = "AB".repeat(32);
    let want = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(normalize_fingerprint(&hex).as_deref(), Some(want.as_str()));
    let colons: Vec<String> = (0..32).map(|_| "AB".to_owned()).collect();
    assert_eq!(
        normalize_fingerprint(&colons.join(":")).as_deref(),
        Some(want.as_str())
    );
    assert_eq!(normalize_fingerprint(&want).as_deref(), Some(want.as_str()));
    assert_eq!(normalize_fingerprint("sha256:abc"), None);
    assert_eq!(normalize_fingerprint(&"zz".repeat(32)), None);
}

#[test]
fn peer_name_check_uses_the_san() {
    let d = Dir::new();
    let issued =
        certgen::issue(&d.ca_cert, &d.ca_key, "web1", Validity::days_from_now(5)).expect("issue");
    let der = CertificateDer::from(issued.der);
    check_peer_name(&der, &name("web1")).expect("its own name");
    let err = check_peer_name(&der, &name("ops1")).expect_err("another name");
    assert_eq!(reason(&err), "cert_wrong_name");
}

/// The usage cases a mesh peer certificate must be refused for, with the words that say
/// why.
fn bad_usages() -> Vec<(&'static str, Vec<Ku>, Vec<Eku>, &'static str)> {
    let both = || vec![Eku::ServerAuth, Eku::ClientAuth];
    vec![
        (
            "no usage extensions at all",
            vec![],
            vec![],
            "no extended key usage extension",
        ),
        (
            "keyCertSign only",
            vec![Ku::KeyCertSign],
            both(),
            "lacks digitalSignature key usage (it has keyCertSign)",
        ),
        (
            "keyEncipherment only",
            vec![Ku::KeyEncipherment],
            both(),
            "lacks digitalSignature key usage (it has keyEncipherment)",
        ),
        (
            "no extended key usage",
            vec![Ku::DigitalSignature],
            vec![],
            "no extended key usage extension",
        ),
        (
            "serverAuth only",
            vec![Ku::DigitalSignature],
            vec![Eku::ServerAuth],
            "lacks clientAuth extended key usage",
        ),
        (
            "clientAuth only",
            vec![Ku::DigitalSignature],
            vec![Eku::ClientAuth],
            "lacks serverAuth extended key usage",
        ),
    ]
}

fn verifiers_of(d: &Dir) -> Verifiers {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(d.ca_cert.as_bytes()) {
        roots.add(ca.expect("ca pem")).expect("root");
    }
    mesh_verifiers(Arc::new(roots), &provider()).expect("verifiers")
}

#[test]
fn both_verifiers_refuse_every_wrong_key_usage_as_cert_wrong_usage() {
    let d = Dir::new();
    let (client, server) = verifiers_of(&d);
    let now = UnixTime::now();
    let name = ServerName::try_from("web1").expect("name");
    for (case, ku, eku, words) in bad_usages() {
        let issued = certgen::issue_with_usages(
            &d.ca_cert,
            &d.ca_key,
            "web1",
            Validity::days_from_now(5),
            &ku,
            &eku,
        )
        .expect("issue");
        let der = CertificateDer::from(issued.der);
        // A dialer presenting it to an acceptor.
        let err = client.verify_client_cert(&der, &[], now).expect_err(case);
        assert_eq!(reason(&err), "cert_wrong_usage", "{case}: {err:?}");
        assert!(describe(&err).contains(words), "{case}: {}", describe(&err));
        // An acceptor presenting it to a dialer.
        let err = server
            .verify_server_cert(&der, &[], &name, &[], now)
            .expect_err(case);
        assert_eq!(reason(&err), "cert_wrong_usage", "{case}: {err:?}");
        assert!(describe(&err).contains(words), "{case}: {}", describe(&err));
    }
    // The usages meshd issues pass both.
    let good =
        certgen::issue(&d.ca_cert, &d.ca_key, "web1", Validity::days_from_now(5)).expect("good");
    let der = CertificateDer::from(good.der);
    client.verify_client_cert(&der, &[], now).expect("client");
    server
        .verify_server_cert(&der, &[], &name, &[], now)
        .expect("server");
}

#[test]
fn an_own_certificate_with_wrong_usage_is_refused_at_load_with_its_file() {
    let d = Dir::new();
    for (case, ku, eku, words) in bad_usages() {
        let issued = certgen::issue_with_usages(
            &d.ca_cert,
            &d.ca_key,
            "off1",
            Validity::days_from_now(5),
            &ku,
            &eku,
        )
        .expect("issue");
        let files = d.write("off1", &issued);
        let err = TlsMaterial::load(&files, &name("off1"), &[]).expect_err(case);
        assert_eq!(err.field, "cert", "{case}");
        assert!(err.message.contains(words), "{case}: {}", err.message);
        assert!(
            err.message.contains(&files.cert.display().to_string()),
            "{case}: {}",
            err.message
        );
    }
}

#[test]
fn usages_are_read_by_their_rfc_names() {
    let d = Dir::new();
    let issued =
        certgen::issue(&d.ca_cert, &d.ca_key, "web1", Validity::days_from_now(5)).expect("issue");
    let usage = CertUsage::of(&issued.der).expect("usage");
    assert_eq!(usage.key_usage_text(), "digitalSignature");
    assert_eq!(usage.extended_text(), "serverAuth, clientAuth");
    usage.check_peer().expect("a peer certificate");
    let ca = CertificateDer::from_pem_slice(d.ca_cert.as_bytes()).expect("ca");
    let usage = CertUsage::of(&ca).expect("ca usage");
    assert_eq!(usage.key_usage_text(), "keyCertSign, cRLSign");
    assert_eq!(usage.extended_text(), "(no extension)");
    assert_eq!(
        usage.check_peer(),
        Err(UsageError::NoDigitalSignature {
            has: "keyCertSign, cRLSign".into()
        })
    );
}

#[test]
fn a_foreign_ca_of_the_same_name_is_an_unknown_issuer() {
    let d = Dir::new();
    let (client, server) = verifiers_of(&d);
    // Same common name as the mesh CA ("test CA"), another key.
    let twin = certgen::new_ca("test CA", Validity::days_from_now(5)).expect("twin");
    let issued = certgen::issue(
        &twin.cert_pem,
        &twin.key_pem,
        "web1",
        Validity::days_from_now(5),
    )
    .expect("issue");
    let der = CertificateDer::from(issued.der);
    let err = client
        .verify_client_cert(&der, &[], UnixTime::now())
        .expect_err("twin CA");
    assert_eq!(reason(&err), "cert_unknown_issuer", "{err:?}");
    assert!(
        describe(&err).contains("not issued by the mesh CA (signature does not verify under it"),
        "{}",
        describe(&err)
    );
    let name = ServerName::try_from("web1").expect("name");
    let err = server
        .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
        .expect_err("twin CA");
    assert_eq!(reason(&err), "cert_unknown_issuer", "{err:?}");
}

#[test]
fn every_reason_is_listed() {
    use rustls::{AlertDescription, PeerIncompatible};
    let errors = [
        rustls::Error::InvalidCertificate(CertificateError::Expired),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        rustls::Error::InvalidCertificate(CertificateError::BadSignature),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        rustls::Error::InvalidCertificate(CertificateError::InvalidPurpose),
        rustls::Error::InvalidCertificate(CertificateError::Revoked),
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            UsageError::NoExtendedKeyUsage,
        )))),
        rustls::Error::NoCertificatesPresented,
        rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        rustls::Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
        rustls::Error::DecryptError,
    ];
    let mut seen = std::collections::BTreeSet::new();
    for e in &errors {
        assert!(REASONS.contains(&reason(e)), "{e:?} -> {}", reason(e));
        seen.insert(reason(e));
    }
    assert_eq!(
        seen.len(),
        REASONS.len(),
        "a listed reason no error produces"
    );
}

/// Runs the `openssl` command line in `dir`, as a site's own CA would; panics with its
/// output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A leaf certificate for `name` from the openssl CA in `dir`, with `extensions` (an
/// openssl extension file's lines); its key is made 0600 as meshd requires.
fn openssl_leaf(dir: &std::path::Path, name: &str, extensions: &str) -> TlsFiles {
    let ext = format!("{name}.ext");
    fs::write(dir.join(&ext), extensions).expect("write the extension file");
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ],
    );
    fs::set_permissions(dir.join(&key), fs::Permissions::from_mode(0o600)).expect("chmod");
    TlsFiles {
        cert: dir.join(crt),
        cert_key: dir.join(key),
        ca: dir.join("ca.crt"),
    }
}

/// A site CA made with plain `openssl req -x509` and leaves made with `openssl x509 -req`
/// carrying `extendedKeyUsage = serverAuth,clientAuth` and no keyUsage extension: meshd
/// loads them, and a handshake between two of them verifies both ways. A leaf whose
/// keyUsage is present and lacks digitalSignature is still refused.
#[test]
fn certificates_made_by_the_openssl_command_line_without_key_usage_work() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=site CA",
        ],
    );
    let leaf_ext =
        |n: &str| format!("subjectAltName = DNS:{n}\nextendedKeyUsage = serverAuth,clientAuth\n");
    let a = openssl_leaf(dir, "a", &leaf_ext("a"));
    let b = openssl_leaf(dir, "b", &leaf_ext("b"));
    let pem = fs::read_to_string(&a.cert).expect("read a.crt");
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("a.crt");
    let usage = CertUsage::of(&der).expect("usages");
    assert_eq!(
        usage.key_usage, None,
        "openssl made a keyUsage: the test proves nothing"
    );

    let a = TlsMaterial::load(&a, &name("a"), &[]).expect("a site CA's certificate loads");
    let b = TlsMaterial::load(&b, &name("b"), &[]).expect("a site CA's certificate loads");
    // b dials a, in memory: both verifiers accept the other's certificate.
    let mut client: rustls::Connection =
        rustls::ClientConnection::new(b.client_config(), ServerName::try_from("a").expect("name"))
            .expect("client")
            .into();
    let mut server: rustls::Connection = rustls::ServerConnection::new(a.server_config())
        .expect("server")
        .into();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).expect("client writes");
        server.read_tls(&mut &buf[..]).expect("server reads");
        server
            .process_new_packets()
            .expect("the acceptor verifies b");
        let mut buf = Vec::new();
        server.write_tls(&mut buf).expect("server writes");
        client.read_tls(&mut &buf[..]).expect("client reads");
        client.process_new_packets().expect("the dialer verifies a");
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "no handshake"
    );
    assert!(server.peer_certificates().is_some());

    let c = openssl_leaf(
        dir,
        "c",
        "subjectAltName = DNS:c\nkeyUsage = keyEncipherment\nextendedKeyUsage = serverAuth,clientAuth\n",
    );
    let err =
        TlsMaterial::load(&c, &name("c"), &[]).expect_err("keyUsage without digitalSignature");
    assert!(
        err.message
            .contains("lacks digitalSignature key usage (it has keyEncipherment)"),
        "{}",
        err.message
    );
}
