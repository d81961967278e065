//! The record layer under a link's multiplexer, per auth mode. Both carry the same mux
//! records, each `u16 length ‖ frames`, sealed in place in the socket buffer and opened in
//! place in the read buffer:
//!
//! - `noise` / `psk`: the length counts the AEAD ciphertext, one Noise message per record
//!   ([`Session`]);
//! - `tls`: the length counts the plaintext frames, one standard TLS 1.3 record (at most
//!   2^14 bytes) per mux record, run by our own record layer with the keys and traffic
//!   secrets rustls negotiated ([`TlsRecords`]), which also updates them (KeyUpdate).
//!
//! Also here: the TLS handshakes (dial and accept), which run through tokio-rustls; then
//! the traffic keys are taken out of rustls and rustls is done. In TLS 1.3 the client's
//! handshake ends before the server has checked the client's certificate, so the acceptor
//! confirms a link with a first record at once (a mux PING, [`mux::encode_greeting`]) and
//! the dialer calls a link up only once it has decrypted that record: a refusal is then a
//! failed dial (`cert_refused_by_peer`), not a link that comes up and dies.

use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::LinkError;
use crate::config::{AuthMode, PeerName};
use crate::proto::chunk::OwnedRecord;
use crate::proto::handshake::{HandshakeError, Preamble, Session};
use crate::proto::mux;
use crate::proto::tls_record::{
    RecordLayer, TlsRecordError, TlsRecords, HEADER_LEN, MAX_MUX_RECORD,
};
use crate::tls::{self, TlsMaterial};
use zeroize::Zeroizing;

/// The record layer of one link.
pub(crate) enum Transport {
    /// A Noise session (`noise`, `psk`).
    Noise(Session),
    /// TLS 1.3 records (`tls`).
    Tls(TlsRecords),
}

impl Transport {
    /// Starts a record at the end of `buf`; the mux frames follow, then [`Self::seal_record`].
    pub(crate) fn begin_record(&self, buf: &mut Vec<u8>) -> usize {
        match self {
            Transport::Noise(_) => Session::begin_record(buf),
            Transport::Tls(_) => TlsRecords::begin_record(buf),
        }
    }

    /// Seals the record begun at `start` where it lies in `buf`.
    pub(crate) fn seal_record(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), LinkError> {
        match self {
            Transport::Noise(session) => session.seal_record(buf, start)?,
            Transport::Tls(tls) => tls.seal_record(buf, start)?,
        }
        Ok(())
    }
}

impl Transport {
    /// Most frame bytes of one mux record on this link.
    pub(crate) fn max_mux_record(&self) -> usize {
        match self {
            Transport::Noise(_) => crate::proto::handshake::MAX_RECORD_PLAINTEXT,
            Transport::Tls(_) => MAX_MUX_RECORD,
        }
    }

    /// Whether a bulk read becomes records where it lies, one record per read segment
    /// ([`crate::proto::chunk`]). TLS records of 16 KiB are the exception: sixteen of them
    /// sealed in place per 256 KiB read measured 2-4 % slower than copying the read into
    /// them (more records, events and iovecs per byte).
    pub(crate) fn seals_reads_in_place(&self) -> bool {
        matches!(self, Transport::Noise(_))
    }

    /// Seals a record the mux built inside a stream's own read buffer, where it lies, and
    /// returns the record's bytes (see [`crate::proto::chunk`]).
    pub(crate) fn seal_owned(&mut self, record: OwnedRecord) -> Result<Bytes, LinkError> {
        let OwnedRecord { mut buf, frames } = record;
        let range = match self {
            Transport::Noise(session) => session.seal_slice(&mut buf, frames)?,
            Transport::Tls(tls) => tls.seal_slice(&mut buf, frames)?,
        };
        Ok(buf.freeze().slice(range))
    }
}

/// The first application traffic secrets of one handshake, as rustls reports them to its
/// key log: the record layer needs them to update its keys (RFC 8446 §7.2), and rustls
/// hands over only the keys themselves. Each handshake gets its own (see
/// [`with_secret_log`]); nothing is written anywhere.
#[derive(Default)]
struct SecretLog {
    client: Mutex<Option<Zeroizing<Vec<u8>>>>,
    server: Mutex<Option<Zeroizing<Vec<u8>>>>,
}

type Secret = Zeroizing<Vec<u8>>;

const CLIENT_SECRET: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER_SECRET: &str = "SERVER_TRAFFIC_SECRET_0";

impl fmt::Debug for SecretLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretLog(MASKED)")
    }
}

impl rustls::KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            CLIENT_SECRET => &self.client,
            SERVER_SECRET => &self.server,
            _ => return,
        };
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(Zeroizing::new(secret.to_vec()));
        }
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, CLIENT_SECRET | SERVER_SECRET)
    }
}

impl SecretLog {
    /// (ours, theirs) for the side that is the client if `client`.
    fn take(&self, client: bool) -> Result<(Secret, Secret), LinkError> {
        let take = |slot: &Mutex<Option<Secret>>| {
            slot.lock().ok().and_then(|mut s| s.take()).ok_or_else(|| {
                LinkError::Handshake(HandshakeError::Local(
                    "rustls reported no traffic secret for the key updates".into(),
                ))
            })
        };
        let (c, s) = (take(&self.client)?, take(&self.server)?);
        Ok(if client { (c, s) } else { (s, c) })
    }
}

/// Ends rustls's part of a finished handshake: takes its traffic keys, secrets and
/// sequence numbers for our record layer, with any application data rustls already
/// decrypted. A meshd dialer sends nothing before the acceptor's greeting and the acceptor
/// sends nothing before its greeting, so normally there is none; rustls cannot hand back
/// part of a record it has buffered, so a peer that sends early may lose the link on its
/// next record.
fn into_records(conn: rustls::Connection, log: &SecretLog) -> Result<TlsRecords, LinkError> {
    let mut conn = conn;
    let client = matches!(conn, rustls::Connection::Client(_));
    let state = conn.process_new_packets().map_err(LinkError::Tls)?;
    let mut received = vec![0; state.plaintext_bytes_to_read()];
    conn.reader().read_exact(&mut received)?;
    let secrets = conn.dangerous_extract_secrets().map_err(LinkError::Tls)?;
    let mut layer = RecordLayer::from_secrets(secrets)?;
    let (tx, rx) = log.take(client)?;
    layer.set_traffic_secrets(&tx, &rx)?;
    Ok(TlsRecords::new(layer, Bytes::from(received)))
}

/// What a finished TLS handshake gives the link.
pub(crate) struct TlsLink {
    pub socket: TcpStream,
    pub transport: Transport,
    /// Fingerprint of the other side's certificate, for the "link up" log line.
    pub peer_cert: String,
    /// The negotiated TLS 1.3 cipher suite, for the same line.
    pub cipher: String,
}

fn cipher_name(suite: Option<rustls::SupportedCipherSuite>) -> String {
    suite
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default()
}

fn tls_failure(err: std::io::Error, peer: &PeerName) -> LinkError {
    let rustls_err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned();
    match rustls_err {
        Some(e) => LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: tls::reason(&e),
            detail: tls::describe(&e),
        }),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            LinkError::Handshake(HandshakeError::Truncated)
        }
        None => LinkError::Io(err),
    }
}

fn peer_cert_fingerprint(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> String {
    certs
        .and_then(|c| c.first())
        .map(|c| tls::fingerprint(c))
        .unwrap_or_default()
}

/// Dialer: sends the preamble, then runs the TLS client handshake. The acceptor's
/// certificate must verify under the mesh CA with `peer` as its DNS SAN.
pub(crate) async fn dial(
    material: &TlsMaterial,
    mut socket: TcpStream,
    me: &PeerName,
    peer: &PeerName,
) -> Result<TlsLink, LinkError> {
    let preamble = Preamble {
        mode: AuthMode::Tls,
        name: me.clone(),
    };
    socket.write_all(&preamble.encode()).await?;
    let name = ServerName::try_from(peer.as_str().to_owned())
        .map_err(|e| LinkError::Handshake(HandshakeError::Local(e.to_string())))?;
    let log = Arc::new(SecretLog::default());
    let mut config = (*material.client_config()).clone();
    config.key_log = log.clone();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(name, socket)
        .await
        .map_err(|e| tls_failure(e, peer))?;
    let (mut socket, conn) = stream.into_inner();
    let peer_cert = peer_cert_fingerprint(conn.peer_certificates());
    let cipher = cipher_name(conn.negotiated_cipher_suite());
    let mut records = into_records(conn.into(), &log).map_err(|e| confirmation_error(e, peer))?;
    await_confirmation(&mut socket, &mut records, peer).await?;
    Ok(TlsLink {
        socket,
        transport: Transport::Tls(records),
        peer_cert,
        cipher,
    })
}

/// A failure while the dialer waits for the acceptor's confirmation, in handshake terms:
/// an alert or a close means the acceptor refused this host's certificate or the name it
/// claims.
fn confirmation_error(err: LinkError, peer: &PeerName) -> LinkError {
    let refused = |detail: String| {
        LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: "cert_refused_by_peer",
            detail,
        })
    };
    let unconfirmed = || {
        refused(format!(
            "{peer} closed the connection after the handshake without confirming the link: \
             it refused this host's certificate or the name it claims (its log says why)"
        ))
    };
    let alert = |alert: String| {
        refused(format!(
            "{peer} refused this host's certificate after the handshake (alert {alert}); its \
             log says why"
        ))
    };
    match err {
        LinkError::Tls(rustls::Error::AlertReceived(a)) => alert(format!("{a:?}")),
        LinkError::TlsRecord(TlsRecordError::Alert(a)) => alert(format!("{a:?}")),
        LinkError::Closed => unconfirmed(),
        LinkError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => unconfirmed(),
        LinkError::Tls(e) => LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: tls::reason(&e),
            detail: tls::describe(&e),
        }),
        LinkError::TlsRecord(e) => LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: "tls",
            detail: e.to_string(),
        }),
        other => other,
    }
}

/// Dialer, after its side of the handshake: reads records until the acceptor's first
/// application data has been decrypted (it stays in `records` for the driver). It reads
/// whole records only, so no byte after them waits in a buffer the driver does not see.
/// The caller's handshake deadline bounds the wait.
async fn await_confirmation(
    socket: &mut TcpStream,
    records: &mut TlsRecords,
    peer: &PeerName,
) -> Result<(), LinkError> {
    let mut record = BytesMut::new();
    while !records.has_plaintext() {
        record.clear();
        record.resize(HEADER_LEN, 0);
        let step = async {
            socket.read_exact(&mut record).await?;
            let len = records.record_len(&record)?.unwrap_or(HEADER_LEN);
            record.resize(len, 0);
            socket.read_exact(&mut record[HEADER_LEN..]).await?;
            records.open_until_data(&mut record)?;
            Ok::<(), LinkError>(())
        };
        step.await.map_err(|e| confirmation_error(e, peer))?;
    }
    Ok(())
}

/// Acceptor, after the preamble named `claimed`: runs the TLS server handshake (the
/// dialer's certificate must verify under the mesh CA for client use) and checks that the
/// certificate's DNS SAN is `claimed`.
pub(crate) async fn accept(
    material: &TlsMaterial,
    socket: TcpStream,
    claimed: &PeerName,
) -> Result<TlsLink, LinkError> {
    let log = Arc::new(SecretLog::default());
    let mut config = (*material.server_config()).clone();
    config.key_log = log.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let stream = acceptor
        .accept(socket)
        .await
        .map_err(|e| tls_failure(e, claimed))?;
    let (mut socket, conn) = stream.into_inner();
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Err(LinkError::Handshake(HandshakeError::Tls {
            peer: claimed.to_string(),
            reason: "cert_missing",
            detail: "no client certificate".into(),
        }));
    };
    if let Err(e) = tls::check_peer_name(cert, claimed) {
        return Err(LinkError::Handshake(HandshakeError::Tls {
            peer: claimed.to_string(),
            reason: "cert_wrong_name",
            detail: format!(
                "the certificate is valid under the mesh CA but does not name {claimed} \
                 (its DNS SAN must be the peer name): {}",
                tls::describe(&e)
            ),
        }));
    }
    let peer_cert = tls::fingerprint(cert);
    let cipher = cipher_name(conn.negotiated_cipher_suite());
    // Everything is checked: confirm the link to the dialer now (see the module doc).
    let mut records = into_records(conn.into(), &log)?;
    let mut greeting = Vec::new();
    let start = TlsRecords::begin_record(&mut greeting);
    mux::encode_greeting(&mut greeting);
    records.seal_record(&mut greeting, start)?;
    socket.write_all(&greeting).await?;
    Ok(TlsLink {
        socket,
        transport: Transport::Tls(records),
        peer_cert,
        cipher,
    })
}
