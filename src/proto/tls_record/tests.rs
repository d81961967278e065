//! The record layer against a live rustls connection (the wire format, both directions,
//! every cipher suite of our provider), against itself, and against tampering.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    SupportedCipherSuite,
};

use super::*;
use crate::config::PeerName;
use crate::tls::certgen::{self, Validity};
use crate::tls::{TlsFiles, TlsMaterial};

/// Application data sizes of the wire tests: empty, one byte, just under, at and over one
/// record's content limit, and the largest mux record's worth.
const SIZES: [usize; 5] = [0, 1, 16383, 16384, 65535];

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A small deterministic generator for split points and mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn tls13() -> [&'static rustls::SupportedProtocolVersion; 1] {
    [&rustls::version::TLS13]
}

/// A client offering only `suite` and a server of our provider, with certificates of a
/// fresh CA, both allowing secret extraction, no tickets (as meshd's configs).
fn configs_for(suite: SupportedCipherSuite) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
    let ca = certgen::new_ca("tls_record test CA", Validity::days_from_now(2)).expect("ca");
    let cert =
        certgen::issue(&ca.cert_pem, &ca.key_pem, "a", Validity::days_from_now(2)).expect("issue");
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key pem");

    let mut one = (*crate::tls::provider()).clone();
    one.cipher_suites = vec![suite];
    let mut client = ClientConfig::builder_with_provider(Arc::new(one))
        .with_protocol_versions(&tls13())
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.enable_secret_extraction = true;
    let mut server = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&tls13())
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der.clone())], key)
        .expect("server cert");
    server.enable_secret_extraction = true;
    server.send_tls13_tickets = 0;
    (Arc::new(client), Arc::new(server))
}

/// Plaintext a rustls connection delivered, and whether it saw a close_notify.
#[derive(Debug, Default)]
struct Delivered {
    data: Vec<u8>,
    closed: bool,
}

/// Feeds `wire` to `to` and takes every plaintext byte it decrypts.
fn feed(to: &mut Connection, mut wire: &[u8]) -> Result<Delivered, rustls::Error> {
    let mut out = Delivered::default();
    let mut chunk = [0u8; 4096];
    loop {
        if !wire.is_empty() {
            to.read_tls(&mut wire).expect("read_tls");
        }
        to.process_new_packets()?;
        loop {
            match to.reader().read(&mut chunk) {
                Ok(0) => {
                    out.closed = true;
                    break;
                }
                Ok(n) => out.data.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("reader: {e}"),
            }
        }
        if wire.is_empty() {
            return Ok(out);
        }
    }
}

/// Everything `from` has to send.
fn drain(from: &mut Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).expect("write_tls");
    }
    wire
}

fn handshake(client: &mut Connection, server: &mut Connection) {
    for _ in 0..10 {
        let w = drain(client);
        feed(server, &w).expect("server side of the handshake");
        let w = drain(server);
        feed(client, &w).expect("client side of the handshake");
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            return;
        }
    }
    panic!("handshake did not finish");
}

/// Which end of the handshake hands its keys to our record layer.
#[derive(Clone, Copy, Debug)]
enum Extract {
    Client,
    Server,
}

/// Our record layer on one end, a live rustls connection on the other.
struct Pair {
    ours: RecordLayer,
    theirs: Connection,
}

/// A finished handshake between `client` and `server`; before the keys are taken,
/// `exchanged` application data records go each way through rustls, so the extracted
/// sequence numbers do not start at zero.
fn pair(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    extract: Extract,
    exchanged: u64,
) -> Pair {
    let name = ServerName::try_from("a").expect("name");
    let mut c: Connection = ClientConnection::new(client, name).expect("client").into();
    let mut s: Connection = ServerConnection::new(server).expect("server").into();
    handshake(&mut c, &mut s);
    let (mut mine, mut theirs) = match extract {
        Extract::Client => (c, s),
        Extract::Server => (s, c),
    };
    for i in 0..exchanged {
        mine.writer().write_all(&[i as u8]).expect("write");
        let w = drain(&mut mine);
        assert_eq!(feed(&mut theirs, &w).expect("feed").data, [i as u8]);
        theirs.writer().write_all(&[i as u8]).expect("write");
        let w = drain(&mut theirs);
        assert_eq!(feed(&mut mine, &w).expect("feed").data, [i as u8]);
    }
    let secrets = mine.dangerous_extract_secrets().expect("extract");
    assert_eq!((secrets.tx.0, secrets.rx.0), (exchanged, exchanged));
    Pair {
        ours: RecordLayer::from_secrets(secrets).expect("record layer"),
        theirs,
    }
}

fn default_pair(extract: Extract) -> Pair {
    let (c, s) = configs_for(crate::tls::provider().cipher_suites[0]);
    pair(c, s, extract, 0)
}

/// Opens every record of `wire` with `ours`; returns the application data and the number
/// of records.
fn open_all(ours: &mut RecordLayer, wire: &[u8]) -> Result<(Vec<u8>, usize), TlsRecordError> {
    let mut input = BytesMut::from(wire);
    let mut out = Vec::new();
    let mut records = 0;
    while !input.is_empty() {
        let len = ours.record_len(&input)?.expect("a whole header");
        assert!(input.len() >= len, "a partial record at the end");
        let mut record = input.split_to(len);
        let n = ours.open(&mut record)?;
        out.extend_from_slice(&record[HEADER_LEN..HEADER_LEN + n]);
        records += 1;
    }
    Ok((out, records))
}

fn records_for(len: usize) -> usize {
    len.div_ceil(MAX_CONTENT).max(1)
}

#[test]
fn our_records_and_rustls_records_are_the_same_for_every_suite() {
    let suites = crate::tls::provider().cipher_suites.clone();
    assert_eq!(
        suites.len(),
        3,
        "the provider's suites changed: cover them here"
    );
    for suite in suites {
        for extract in [Extract::Client, Extract::Server] {
            let case = format!("{:?}, keys from the {extract:?}", suite.suite());
            let (c, s) = configs_for(suite);
            let Pair {
                mut ours,
                mut theirs,
            } = pair(c, s, extract, 2);
            assert_eq!(
                theirs.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite.suite()),
                "{case}"
            );
            for (i, &len) in SIZES.iter().enumerate() {
                // Ours to rustls.
                let sent = data(len, i as u8);
                let mut wire = Vec::new();
                ours.seal_all(APPLICATION_DATA, &sent, &mut wire)
                    .expect("seal");
                let got = feed(&mut theirs, &wire).expect("rustls reads our records");
                assert_eq!(got.data.len(), len, "{case}: {len} bytes to rustls");
                assert!(
                    got.data == sent && !got.closed,
                    "{case}: {len} bytes to rustls"
                );

                // rustls to ours (rustls sends nothing for no data).
                let sent = data(len, 100 + i as u8);
                theirs.writer().write_all(&sent).expect("write");
                let wire = drain(&mut theirs);
                let (got, records) = open_all(&mut ours, &wire).expect("we read rustls's records");
                assert!(got == sent, "{case}: {len} bytes from rustls");
                let expect = if len == 0 { 0 } else { records_for(len) };
                assert_eq!(records, expect, "{case}: records for {len} bytes");
            }
        }
    }
}

/// Two TLS materials of one mesh CA, for peers `a` and `b`, written under `dir`.
fn meshd_materials(dir: &std::path::Path) -> (TlsMaterial, TlsMaterial) {
    let ca = certgen::new_ca("tls_record test CA", Validity::days_from_now(2)).expect("ca");
    let material = |name: &str| {
        let cert = certgen::issue(&ca.cert_pem, &ca.key_pem, name, Validity::days_from_now(2))
            .expect("issue");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            cert_key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.crt"),
        };
        certgen::write_public(&files.cert, &cert.cert_pem, true).expect("cert");
        certgen::write_private(&files.cert_key, &cert.key_pem, true).expect("key");
        certgen::write_public(&files.ca, &ca.cert_pem, true).expect("ca");
        TlsMaterial::load(&files, &PeerName::new(name).expect("name"), &[]).expect("load")
    };
    (material("a"), material("b"))
}

/// Dialer `b` to acceptor `a` with these configs; both ends finished, keys not yet taken.
fn meshd_handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (Connection, Connection) {
    let mut dialer: Connection =
        ClientConnection::new(client, ServerName::try_from("a").expect("name"))
            .expect("client")
            .into();
    let mut acceptor: Connection = ServerConnection::new(server).expect("server").into();
    handshake(&mut dialer, &mut acceptor);
    (dialer, acceptor)
}

/// A key log that keeps the first application traffic secrets, as meshd's link set-up
/// does (link::transport).
#[derive(Debug, Default)]
struct Secrets(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .expect("lock")
            .push((label.to_owned(), secret.to_vec()));
    }
}

impl Secrets {
    fn get(&self, label: &str) -> Vec<u8> {
        let all = self.0.lock().expect("lock");
        all.iter()
            .find(|(l, _)| l == label)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("no {label} logged"))
    }
}

/// The project's own configs (mutual authentication, the default suite) with a key log:
/// the dialer's record layer, holding its keys and traffic secrets, and the acceptor's
/// rustls end. No ALPN is negotiated: records are standard.
fn meshd_layers_with_secrets() -> (RecordLayer, Connection) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = meshd_materials(dir.path());
    let log = Arc::new(Secrets::default());
    let mut client = (*b.client_config()).clone();
    client.key_log = log.clone();
    let (dialer, acceptor) = meshd_handshake(Arc::new(client), a.server_config());
    assert_eq!(dialer.alpn_protocol(), None, "no ALPN: standard records");
    assert_eq!(
        acceptor.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    let mut layer = RecordLayer::from_secrets(dialer.dangerous_extract_secrets().expect("dialer"))
        .expect("layer");
    layer
        .set_traffic_secrets(
            &log.get("CLIENT_TRAFFIC_SECRET_0"),
            &log.get("SERVER_TRAFFIC_SECRET_0"),
        )
        .expect("the secrets give the keys in use");
    (layer, acceptor)
}

/// Key updates both ways between our layer and rustls: rustls's own KeyUpdate (which asks
/// for ours) is followed and answered, ours is followed by rustls and answered, and data
/// flows under every new key.
#[test]
fn key_updates_with_rustls_both_ways() {
    let (mut ours, mut theirs) = meshd_layers_with_secrets();
    let round = |ours: &mut RecordLayer, theirs: &mut Connection, i: u8| {
        let mut wire = Vec::new();
        ours.seal_all(APPLICATION_DATA, &data(100, i), &mut wire)
            .expect("seal");
        assert_eq!(
            feed(theirs, &wire).expect("rustls reads").data,
            data(100, i)
        );
        theirs.writer().write_all(&data(50, i)).expect("write");
        let (got, _) = open_all(ours, &drain(theirs)).expect("we read");
        assert_eq!(got, data(50, i));
    };
    round(&mut ours, &mut theirs, 0);
    for i in 1..=5u8 {
        // rustls updates and requests ours.
        theirs.refresh_traffic_keys().expect("key update");
        theirs.writer().write_all(b"after").expect("write");
        let (got, records) = open_all(&mut ours, &drain(&mut theirs)).expect("follow");
        assert_eq!((got.as_slice(), records), (&b"after"[..], 2), "round {i}");
        assert!(ours.owes_key_update(), "rustls asks for an update");
        let mut wire = Vec::new();
        ours.send_key_update(&mut wire, false).expect("answer");
        assert!(!ours.owes_key_update());
        assert!(feed(&mut theirs, &wire)
            .expect("rustls follows")
            .data
            .is_empty());
        round(&mut ours, &mut theirs, i);
        // We update and request rustls's.
        let mut wire = Vec::new();
        ours.send_key_update(&mut wire, true).expect("update");
        ours.seal_all(APPLICATION_DATA, b"new key", &mut wire)
            .expect("seal");
        assert_eq!(
            feed(&mut theirs, &wire).expect("rustls follows").data,
            b"new key"
        );
        theirs.writer().write_all(b"answered").expect("write");
        let (got, records) = open_all(&mut ours, &drain(&mut theirs)).expect("its answer");
        assert_eq!(
            (got.as_slice(), records),
            (&b"answered"[..], 2),
            "round {i}"
        );
        assert!(!ours.owes_key_update(), "an answer asks nothing");
        round(&mut ours, &mut theirs, 100 + i);
    }
    assert_eq!(ours.key_updates(), (10, 10));
}

/// Every suite derives its next keys right (SHA-384 for AES-256-GCM).
#[test]
fn key_updates_work_in_every_suite() {
    let suites = crate::tls::provider().cipher_suites.clone();
    assert_eq!(suites.len(), 3);
    for suite in suites {
        let (c, s) = configs_for(suite);
        let log = Arc::new(Secrets::default());
        let mut c = (*c).clone();
        c.key_log = log.clone();
        let Pair {
            mut ours,
            mut theirs,
        } = pair(Arc::new(c), s, Extract::Client, 1);
        ours.set_traffic_secrets(
            &log.get("CLIENT_TRAFFIC_SECRET_0"),
            &log.get("SERVER_TRAFFIC_SECRET_0"),
        )
        .expect("secrets");
        let mut wire = Vec::new();
        ours.send_key_update(&mut wire, true).expect("update");
        ours.seal_all(APPLICATION_DATA, b"x", &mut wire)
            .expect("seal");
        assert_eq!(
            feed(&mut theirs, &wire).expect("follows").data,
            b"x",
            "{suite:?}"
        );
        theirs.writer().write_all(b"y").expect("write");
        let (got, _) = open_all(&mut ours, &drain(&mut theirs)).expect("answer");
        assert_eq!(got, b"y", "{suite:?}");
    }
}

/// Secrets that do not produce the keys in use are refused at once, and a layer without
/// secrets refuses to send or follow a key update.
#[test]
fn wrong_or_missing_traffic_secrets_are_refused() {
    let Pair {
        mut ours,
        mut theirs,
    } = default_pair(Extract::Client);
    let mut wire = Vec::new();
    assert_eq!(
        ours.send_key_update(&mut wire, false),
        Err(TlsRecordError::NoTrafficSecret)
    );
    assert!(wire.is_empty());
    assert_eq!(
        ours.set_traffic_secrets(&[7; 32], &[8; 32]),
        Err(TlsRecordError::SecretMismatch)
    );
    assert_eq!(
        ours.set_traffic_secrets(&[7; 5], &[8; 5]),
        Err(TlsRecordError::SecretMismatch)
    );
    theirs.refresh_traffic_keys().expect("key update");
    assert_eq!(
        open_all(&mut ours, &drain(&mut theirs)).map(|_| ()),
        Err(TlsRecordError::NoTrafficSecret)
    );
}

/// Malformed KeyUpdates and floods of them end the link.
#[test]
fn malformed_and_flooding_key_updates_are_refused() {
    // tx's sending key is rx's receiving key: give both the same secret.
    let (mut tx, mut rx) = layers(&aead::AES_128_GCM, 0);
    let secret = || {
        Some(TrafficSecret {
            hash: hkdf::HKDF_SHA256,
            secret: Zeroizing::new(vec![3; 32]),
        })
    };
    tx.send.secret = secret();
    rx.recv.secret = secret();
    for _ in 0..MAX_KEY_UPDATES_IN_A_ROW {
        let mut wire = Vec::new();
        tx.send_key_update(&mut wire, false).expect("update");
        assert_eq!(open_all(&mut rx, &wire).map(|(d, _)| d), Ok(vec![]));
    }
    let mut wire = Vec::new();
    tx.send_key_update(&mut wire, false).expect("update");
    assert_eq!(
        open_all(&mut rx, &wire).map(|_| ()),
        Err(TlsRecordError::TooManyKeyUpdates)
    );
    for (inner, want) in [
        (
            vec![KEY_UPDATE, 0, 0, 1, 2, HANDSHAKE],
            TlsRecordError::MalformedKeyUpdate,
        ),
        (
            vec![KEY_UPDATE, 0, 0, 2, 0, 0, HANDSHAKE],
            TlsRecordError::MalformedKeyUpdate,
        ),
        (
            vec![KEY_UPDATE, 0, 0, 1, 0, 4, 0, 0, 0, HANDSHAKE],
            TlsRecordError::MalformedKeyUpdate,
        ),
    ] {
        let (mut tx, mut rx) = layers(&aead::AES_128_GCM, 0);
        let mut record = seal_inner(&mut tx, &inner);
        assert_eq!(rx.open(&mut record), Err(want), "{inner:?}");
    }
}

/// The alert this side sends for a refused record reaches rustls by name.
#[test]
fn our_fatal_alerts_reach_rustls_by_name() {
    for (err, want) in [
        (
            TlsRecordError::Decrypt,
            rustls::AlertDescription::BadRecordMac,
        ),
        (
            TlsRecordError::Oversized(1, 2),
            rustls::AlertDescription::RecordOverflow,
        ),
        (
            TlsRecordError::MuxRecordLength(0),
            rustls::AlertDescription::DecodeError,
        ),
    ] {
        let Pair {
            mut ours,
            mut theirs,
        } = default_pair(Extract::Client);
        let alert = err.alert().expect("an alert");
        assert_eq!(alert, want);
        let mut wire = Vec::new();
        ours.send_alert(&mut wire, alert).expect("alert");
        assert_eq!(
            feed(&mut theirs, &wire).map(|_| ()),
            Err(rustls::Error::AlertReceived(want))
        );
    }
    assert_eq!(TlsRecordError::CloseNotify.alert(), None);
}

/// Mux records of every size we send, each one TLS record, read by rustls as the byte
/// stream `u16 length ‖ frames`, as older meshd versions read it.
#[test]
fn rustls_reads_our_mux_records_one_tls_record_each() {
    let Pair { ours, mut theirs } = default_pair(Extract::Client);
    let mut records = TlsRecords::new(ours, Bytes::new());
    let sizes = [1, 100, MAX_MUX_RECORD - 1, MAX_MUX_RECORD];
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let frames = data(len, i as u8);
        let start = TlsRecords::begin_record(&mut wire);
        wire.extend_from_slice(&frames);
        records.seal_record(&mut wire, start).expect("seal");
        expect.extend_from_slice(&(len as u16).to_be_bytes());
        expect.extend_from_slice(&frames);
    }
    // Each mux record is exactly one TLS record: walk the headers.
    let mut at = 0;
    for &len in &sizes {
        let record = records
            .record_len(&wire[at..])
            .expect("header")
            .expect("whole header");
        assert_eq!(record, HEADER_LEN + 2 + len + 1 + TAG_LEN);
        at += record;
    }
    assert_eq!(at, wire.len());
    let got = feed(&mut theirs, &wire).expect("rustls reads our mux records");
    assert!(got.data == expect);

    // Too large a mux record is refused, and nothing of it stays in the buffer.
    let before = wire.len();
    let start = TlsRecords::begin_record(&mut wire);
    wire.resize(start + HEADER_LEN + 2 + MAX_MUX_RECORD + 1, 0);
    assert_eq!(
        records.seal_record(&mut wire, start),
        Err(TlsRecordError::MuxRecordLength(MAX_MUX_RECORD + 1))
    );
    assert_eq!(wire.len(), before);
}

/// The byte stream of an older meshd (rustls splitting 64 KiB mux records, and one write
/// of several mux records split anywhere, even inside a length prefix), arriving in
/// pieces of any size: every mux record comes out whole and in order.
#[test]
fn mux_records_spanning_tls_records_are_assembled_from_split_reads() {
    let Pair { ours, mut theirs } = default_pair(Extract::Server);
    // As the old tls path did: the driver bounds what it queues.
    theirs.set_buffer_limit(None);
    let sizes = [
        MAX_RECORD_PLAINTEXT,
        1,
        16382,
        16383,
        70,
        40000,
        MAX_RECORD_PLAINTEXT,
    ];
    let mut expect = Vec::new();
    let mut stream = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let mut record = (len as u16).to_be_bytes().to_vec();
        record.extend_from_slice(&data(len, i as u8));
        // One write per mux record, as the old tls path did...
        theirs.writer().write_all(&record).expect("write");
        stream.extend_from_slice(&record);
        expect.push(data(len, i as u8));
    }
    // ...then the same records in one write, split at 16 KiB boundaries of the stream.
    theirs.writer().write_all(&stream).expect("write");
    expect.extend(expect.clone());
    let wire = drain(&mut theirs);

    let mut records = TlsRecords::new(ours, Bytes::new());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut input = BytesMut::new();
    let mut got = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let n = (1 + rng.below(3000)).min(wire.len() - at);
        input.extend_from_slice(&wire[at..at + n]);
        at += n;
        while let Some(record) = records.next_record(&mut input).expect("next record") {
            got.push(record.to_vec());
        }
    }
    assert!(input.is_empty() && !records.has_plaintext());
    assert_eq!(got.len(), expect.len());
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert!(
            g == e,
            "mux record {i}: {} bytes, expected {}",
            g.len(),
            e.len()
        );
    }
}

/// Two of our ends: a mux record within one TLS record is handed on as a slice of the read
/// buffer, not a copy; several TLS records in one read all come out.
#[test]
fn a_mux_record_within_one_tls_record_is_not_copied() {
    let (tx, rx) = layers(&aead::AES_128_GCM, 0);
    let mut sender = TlsRecords::new(tx, Bytes::new());
    let mut receiver = TlsRecords::new(rx, Bytes::new());
    let mut wire = Vec::new();
    for len in [MAX_MUX_RECORD, 5, MAX_MUX_RECORD] {
        let start = TlsRecords::begin_record(&mut wire);
        wire.extend_from_slice(&data(len, 7));
        sender.seal_record(&mut wire, start).expect("seal");
    }
    let mut input = BytesMut::with_capacity(wire.len());
    input.extend_from_slice(&wire);
    let base = input.as_ptr() as usize;
    let within = base..base + wire.len();
    for len in [MAX_MUX_RECORD, 5, MAX_MUX_RECORD] {
        let record = receiver
            .next_record(&mut input)
            .expect("open")
            .expect("a record");
        assert!(record == data(len, 7));
        assert!(
            within.contains(&(record.as_ptr() as usize)),
            "the record was copied out of the read buffer"
        );
    }
    assert_eq!(receiver.next_record(&mut input), Ok(None));
}

/// A sending and a receiving record layer with the same keys (send of the first is the
/// receive of the second), starting at `seq`.
fn layers(alg: &'static aead::Algorithm, seq: u64) -> (RecordLayer, RecordLayer) {
    let key = vec![0x42; alg.key_len()];
    let iv = [0x24; NONCE_LEN];
    let other = vec![0x17; alg.key_len()];
    let dir = |k: &[u8]| Direction::new(alg, k, &iv, seq).expect("direction");
    (
        RecordLayer {
            send: dir(&key),
            recv: dir(&other),
            owe_update: false,
            updates_in_a_row: 0,
            sent_updates: 0,
            received_updates: 0,
        },
        RecordLayer {
            send: dir(&other),
            recv: dir(&key),
            owe_update: false,
            updates_in_a_row: 0,
            sent_updates: 0,
            received_updates: 0,
        },
    )
}

/// A record whose sealed plaintext is exactly `inner` (content ‖ type ‖ padding), as a peer
/// may build one.
fn seal_inner(layer: &mut RecordLayer, inner: &[u8]) -> Vec<u8> {
    let [hi, lo] = ((inner.len() + TAG_LEN) as u16).to_be_bytes();
    let header = [0x17, 0x03, 0x03, hi, lo];
    let mut record = header.to_vec();
    record.extend_from_slice(inner);
    let nonce = layer.send.next_nonce().expect("nonce");
    let tag = layer
        .send
        .key
        .get()
        .seal_in_place_separate_tag(nonce, Aad::from(header), &mut record[HEADER_LEN..])
        .expect("seal");
    record.extend_from_slice(tag.as_ref());
    record
}

fn sealed(layer: &mut RecordLayer, content: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    layer
        .seal_all(APPLICATION_DATA, content, &mut wire)
        .expect("seal");
    wire
}

#[test]
fn tampered_records_are_refused() {
    let content = data(1000, 3);
    // (what, mutation, error)
    type Tamper = fn(&mut Vec<u8>);
    let cases: [(&str, Tamper, TlsRecordError); 6] = [
        (
            "outer type",
            |r| r[0] ^= 0x01,
            TlsRecordError::OuterType(0x16),
        ),
        ("version", |r| r[2] ^= 0x02, TlsRecordError::Version(0x0301)),
        (
            // A longer length (one more byte follows): the header is the AAD.
            "length",
            |r| {
                r[4] += 1;
                r.push(0);
            },
            TlsRecordError::Decrypt,
        ),
        (
            "ciphertext",
            |r| r[HEADER_LEN + 10] ^= 0x80,
            TlsRecordError::Decrypt,
        ),
        (
            "content type byte",
            |r| r[HEADER_LEN + 1000] ^= 0x01,
            TlsRecordError::Decrypt,
        ),
        (
            "tag",
            |r| {
                let last = r.len() - 1;
                r[last] ^= 0x01;
            },
            TlsRecordError::Decrypt,
        ),
    ];
    for alg in [
        &aead::AES_128_GCM,
        &aead::AES_256_GCM,
        &aead::CHACHA20_POLY1305,
    ] {
        for (what, tamper, err) in &cases {
            let (mut tx, mut rx) = layers(alg, 0);
            let mut record = sealed(&mut tx, &content);
            assert!(record[4] < 0xff, "the length mutation must not carry");
            tamper(&mut record);
            assert_eq!(
                rx.open(&mut record),
                Err(err.clone()),
                "{what} under {alg:?}"
            );
        }
    }
}

#[test]
fn replayed_dropped_and_reordered_records_are_refused() {
    let (mut tx, mut rx) = layers(&aead::AES_128_GCM, 7);
    let first = sealed(&mut tx, b"first");
    let second = sealed(&mut tx, b"second");
    let (mut r, mut again) = (first.clone(), first.clone());
    assert_eq!(rx.open(&mut r), Ok(5));
    assert_eq!(
        rx.open(&mut again),
        Err(TlsRecordError::Decrypt),
        "replayed"
    );

    let (mut tx, mut rx) = layers(&aead::AES_128_GCM, 7);
    let _dropped = sealed(&mut tx, b"first");
    let mut r = sealed(&mut tx, b"second");
    assert_eq!(rx.open(&mut r), Err(TlsRecordError::Decrypt), "dropped");

    // Sealed at 7 and 8 by the first sender: opened in the wrong order.
    let (_, mut rx) = layers(&aead::AES_128_GCM, 7);
    let mut r = second;
    assert_eq!(rx.open(&mut r), Err(TlsRecordError::Decrypt), "reordered");
}

#[test]
fn record_headers_are_checked_before_the_record_arrives() {
    let header = |len: usize| {
        let [hi, lo] = (len as u16).to_be_bytes();
        vec![0x17, 0x03, 0x03, hi, lo]
    };
    let (_, rx) = layers(&aead::AES_128_GCM, 0);
    let mut records = TlsRecords::new(rx, Bytes::new());
    let mut input = BytesMut::from(&header(MAX_CIPHERTEXT + 1)[..]);
    assert_eq!(
        records.next_record(&mut input),
        Err(TlsRecordError::Oversized(
            MAX_CIPHERTEXT + 1,
            MAX_CIPHERTEXT
        ))
    );
    assert_eq!(
        records.record_len(&header(MAX_CIPHERTEXT)),
        Ok(Some(HEADER_LEN + MAX_CIPHERTEXT))
    );
    assert_eq!(
        records.record_len(&header(TAG_LEN)),
        Err(TlsRecordError::TooShort(TAG_LEN))
    );
    assert_eq!(
        records.record_len(&[0x14, 0x03, 0x03, 0, 1]),
        Err(TlsRecordError::OuterType(0x14)),
        "a ChangeCipherSpec after the handshake"
    );
    assert_eq!(
        records.record_len(&[0x17, 0x03, 0x04, 0, 40]),
        Err(TlsRecordError::Version(0x0304))
    );
    assert_eq!(records.record_len(&[0x17, 0x03, 0x03, 0]), Ok(None));
    assert_eq!(
        records.record_len(&header(u16::MAX as usize)),
        Err(TlsRecordError::Oversized(u16::MAX as usize, MAX_CIPHERTEXT)),
        "a record larger than TLS allows is refused before it arrives"
    );
}

/// Hand-built inner plaintexts: padding is stripped, the content type decides.
#[test]
fn inner_content_types_padding_and_alerts() {
    let post_handshake = |typ: u8| {
        let mut inner = vec![typ, 0, 0, 1, 0];
        inner.push(HANDSHAKE);
        inner
    };
    let cases: Vec<(&str, Vec<u8>, Result<usize, TlsRecordError>)> = vec![
        (
            "padded data",
            [b"abc".as_slice(), &[0x17, 0, 0, 0]].concat(),
            Ok(3),
        ),
        ("empty data", vec![0x17], Ok(0)),
        (
            "padding only",
            vec![0; 20],
            Err(TlsRecordError::NoContentType),
        ),
        (
            "warning close_notify",
            vec![1, 0, 0x15],
            Err(TlsRecordError::CloseNotify),
        ),
        (
            "fatal close_notify",
            vec![2, 0, 0x15, 0],
            Err(TlsRecordError::CloseNotify),
        ),
        (
            "handshake_failure",
            vec![2, 40, 0x15],
            Err(TlsRecordError::Alert(AlertDescription::HandshakeFailure)),
        ),
        (
            "long alert",
            vec![2, 40, 1, 0x15],
            Err(TlsRecordError::MalformedAlert(3)),
        ),
        (
            "KeyUpdate without a traffic secret",
            post_handshake(24),
            Err(TlsRecordError::NoTrafficSecret),
        ),
        (
            "NewSessionTicket",
            post_handshake(4),
            Err(TlsRecordError::PostHandshake(Some(4))),
        ),
        (
            "empty handshake",
            vec![0x16],
            Err(TlsRecordError::PostHandshake(None)),
        ),
        (
            "change_cipher_spec",
            vec![1, 0x14],
            Err(TlsRecordError::ContentType(0x14)),
        ),
        (
            "oversized plaintext",
            [vec![0; MAX_CONTENT + 1], vec![0x17]].concat(),
            Err(TlsRecordError::PlaintextOversized(
                MAX_CONTENT + 2,
                MAX_CONTENT + 1,
            )),
        ),
    ];
    for (what, inner, want) in cases {
        let (mut tx, mut rx) = layers(&aead::CHACHA20_POLY1305, 0);
        let mut record = seal_inner(&mut tx, &inner);
        assert_eq!(rx.open(&mut record), want, "{what}");
    }
    let err = TlsRecordError::PostHandshake(Some(24)).to_string();
    assert!(
        err.contains("post-handshake message (KeyUpdate)") && err.contains("not support"),
        "{err}"
    );
    assert_eq!(
        TlsRecordError::Alert(AlertDescription::UnknownCA).to_string(),
        "peer sent alert UnknownCA"
    );
}

#[test]
fn a_sequence_number_that_would_wrap_ends_the_link() {
    let (mut tx, mut rx) = layers(&aead::AES_256_GCM, u64::MAX);
    let mut last = sealed(&mut tx, b"the last record");
    assert_eq!(rx.open(&mut last), Ok(15));
    let mut wire = Vec::new();
    assert_eq!(
        tx.seal_all(APPLICATION_DATA, b"one more", &mut wire),
        Err(TlsRecordError::SequenceExhausted)
    );
    assert!(wire.is_empty(), "a refused record stays out of the buffer");
    let mut again = last.clone();
    assert_eq!(rx.open(&mut again), Err(TlsRecordError::SequenceExhausted));
}

#[test]
fn keys_of_the_wrong_length_are_refused() {
    let iv = [0; NONCE_LEN];
    assert!(Direction::new(&aead::AES_128_GCM, &[0; 32], &iv, 0).is_err());
    assert!(Direction::new(&aead::AES_256_GCM, &[0; 16], &iv, 0).is_err());
    assert!(Direction::new(&aead::AES_128_GCM, &[0; 16], &[0; 8], 0).is_err());
    assert!(Direction::new(&aead::CHACHA20_POLY1305, &[0; 32], &iv, 0).is_ok());
}

#[test]
fn rustls_close_notify_is_a_clean_close() {
    let Pair { ours, mut theirs } = default_pair(Extract::Client);
    theirs.send_close_notify();
    let mut input = BytesMut::from(&drain(&mut theirs)[..]);
    let mut records = TlsRecords::new(ours, Bytes::new());
    let err = records.next_record(&mut input).expect_err("close_notify");
    assert_eq!(err, TlsRecordError::CloseNotify);
    assert!(matches!(
        crate::link::LinkError::from(err),
        crate::link::LinkError::Closed
    ));
}

#[test]
fn our_close_notify_is_a_clean_close_for_rustls() {
    let Pair { ours, mut theirs } = default_pair(Extract::Server);
    let mut records = TlsRecords::new(ours, Bytes::new());
    let mut wire = Vec::new();
    records.close(&mut wire).expect("close");
    let got = feed(&mut theirs, &wire).expect("rustls reads our close_notify");
    assert!(got.closed && got.data.is_empty());
}

/// rustls refuses a record we sealed and then tampered with, and the alert it answers with
/// reaches us by name.
#[test]
fn rustls_refuses_a_tampered_record_and_its_alert_is_named() {
    let Pair {
        mut ours,
        mut theirs,
    } = default_pair(Extract::Client);
    let mut wire = sealed(&mut ours, b"fine");
    assert_eq!(feed(&mut theirs, &wire).expect("untampered").data, b"fine");
    wire = sealed(&mut ours, b"tampered");
    wire[HEADER_LEN] ^= 0x01;
    assert!(
        feed(&mut theirs, &wire).is_err(),
        "rustls took a tampered record"
    );
    let alert = drain(&mut theirs);
    assert_eq!(
        open_all(&mut ours, &alert),
        Err(TlsRecordError::Alert(AlertDescription::BadRecordMac))
    );
}

/// Random damage to a valid stream of records: an error or a wait for more, never a panic,
/// and never a record that was not sent.
#[test]
fn damaged_streams_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut refused = 0;
    for round in 0..300 {
        let (tx, rx) = layers(&aead::AES_128_GCM, round);
        let mut sender = TlsRecords::new(tx, Bytes::new());
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let frames = data(1 + rng.below(3000), round as u8);
            let start = TlsRecords::begin_record(&mut wire);
            wire.extend_from_slice(&frames);
            sender.seal_record(&mut wire, start).expect("seal");
            sent.push(frames);
        }
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(wire.len());
            wire[at] ^= 1 << rng.below(8);
        }
        wire.truncate(wire.len() - rng.below(wire.len() / 2));
        let mut receiver = TlsRecords::new(rx, Bytes::new());
        let mut input = BytesMut::from(&wire[..]);
        let mut got = 0;
        loop {
            match receiver.next_record(&mut input) {
                Ok(Some(record)) => {
                    assert!(record == sent[got], "round {round}: record {got} changed");
                    got += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    refused += 1;
                    break;
                }
            }
        }
        assert!(got < sent.len(), "round {round}: the damage went unnoticed");
    }
    assert!(refused > 100, "only {refused} damaged streams were refused");
}

/// A mux record sealed where it lies inside a buffer with room around it is the same record,
/// byte for byte, as one built in the write buffer: same header, ciphertext and tag, and the
/// sequence numbers of both paths are one count.
#[test]
fn a_record_sealed_in_its_own_buffer_is_the_same_record() {
    let (tx1, _) = layers(&aead::AES_256_GCM, 5);
    let (tx2, rx) = layers(&aead::AES_256_GCM, 5);
    let mut in_wbuf = TlsRecords::new(tx1, Bytes::new());
    let mut in_place = TlsRecords::new(tx2, Bytes::new());
    let mut receiver = TlsRecords::new(rx, Bytes::new());
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let sizes = [1, 700, MAX_MUX_RECORD - 1, MAX_MUX_RECORD];
    for (i, len) in sizes.into_iter().enumerate() {
        let frames = data(len, i as u8);
        let start = TlsRecords::begin_record(&mut expected);
        expected.extend_from_slice(&frames);
        in_wbuf.seal_record(&mut expected, start).expect("seal");

        let (head, tail) = (HEADER_LEN + 2 + 3, 1 + TAG_LEN + 4);
        let mut buf = vec![0xAA; head];
        buf.extend_from_slice(&frames);
        buf.extend_from_slice(&[0xAA; 1 + TAG_LEN + 4]);
        let end = buf.len() - tail;
        let range = in_place
            .seal_slice(&mut buf, head..end)
            .expect("seal in place");
        assert_eq!(range, 3..buf.len() - 4);
        got.extend_from_slice(&buf[range]);
    }
    assert!(got == expected, "records differ");
    let mut input = BytesMut::from(&got[..]);
    for (i, len) in sizes.into_iter().enumerate() {
        let record = receiver
            .next_record(&mut input)
            .expect("open")
            .expect("record");
        assert!(record == data(len, i as u8));
    }
}

/// Sealing in place refuses a slice without the room its header and tag need, or too large
/// a mux record, and leaves the sequence number unused.
#[test]
fn sealing_in_place_checks_the_room_and_the_size() {
    let (tx1, _) = layers(&aead::AES_128_GCM, 0);
    let (tx2, _) = layers(&aead::AES_128_GCM, 0);
    let mut a = TlsRecords::new(tx1, Bytes::new());
    let mut b = TlsRecords::new(tx2, Bytes::new());
    let mut buf = vec![0u8; 100];
    assert_eq!(
        a.seal_slice(&mut buf, HEADER_LEN + 1..50),
        Err(TlsRecordError::NoRoom)
    );
    assert_eq!(
        a.seal_slice(&mut buf, 10..100 - TAG_LEN),
        Err(TlsRecordError::NoRoom)
    );
    assert_eq!(
        a.seal_slice(&mut buf, 10..10),
        Err(TlsRecordError::MuxRecordLength(0))
    );
    let mut big = vec![0u8; MAX_MUX_RECORD + 100];
    assert_eq!(
        a.seal_slice(&mut big, 10..11 + MAX_MUX_RECORD),
        Err(TlsRecordError::MuxRecordLength(MAX_MUX_RECORD + 1))
    );
    // Nothing was sealed, so both still produce the record of sequence number 0.
    let (mut x, mut y) = (vec![1u8; 60], vec![1u8; 60]);
    let rx = a.seal_slice(&mut x, 10..40).expect("seal");
    let ry = b.seal_slice(&mut y, 10..40).expect("seal");
    assert_eq!(x[rx], y[ry]);
}
