//! The record layer under a link's multiplexer, per auth mode. Both carry the same mux
//! records, each `u16 length ‖ frames`:
//!
//! - `noise` / `psk`: the length counts the AEAD ciphertext, and the frames are sealed in
//!   place in the socket buffer ([`Session`]);
//! - `tls`: the length counts the plaintext frames, and the whole byte stream runs through
//!   a rustls connection, driven sans-IO so the driver keeps its single `select!` over one
//!   plain socket. rustls splits a 64 KiB mux record into four TLS records.
//!
//! Also here: the TLS handshakes (dial and accept), which run through tokio-rustls and then
//! hand the finished rustls connection to the driver. In TLS 1.3 the client's handshake
//! ends before the server has checked the client's certificate, so the acceptor confirms a
//! link with a first record at once (a mux PING, [`mux::encode_greeting`]) and the dialer
//! calls a link up only once it has decrypted that record: a refusal is then a failed dial
//! (`cert_refused_by_peer`), not a link that comes up and dies.

use std::io::{Read, Write};

use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::LinkError;
use crate::config::{AuthMode, PeerName};
use crate::proto::handshake::{HandshakeError, Preamble, Session, MAX_RECORD_PLAINTEXT};
use crate::proto::mux;
use crate::tls::{self, TlsMaterial};

/// The record layer of one link. One lives in each link's driver, so the size gap between
/// the variants costs nothing worth a pointer chase on every record.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Transport {
    /// A Noise session (`noise`, `psk`).
    Noise(Session),
    /// A TLS 1.3 connection (`tls`).
    Tls(TlsRecords),
}

/// A finished rustls connection and the buffers around it.
pub(crate) struct TlsRecords {
    conn: rustls::Connection,
    /// Decrypted bytes not yet a whole mux record.
    plain_in: BytesMut,
    /// The mux record being built before rustls encrypts it.
    plain_out: Vec<u8>,
}

impl TlsRecords {
    fn new(conn: rustls::Connection) -> Self {
        let mut conn = conn;
        // The driver bounds what it queues itself (WRITE_HIGH_WATER); rustls's own limit
        // would make a write return short.
        conn.set_buffer_limit(None);
        Self {
            conn,
            plain_in: BytesMut::with_capacity(2 * MAX_RECORD_PLAINTEXT),
            plain_out: Vec::with_capacity(MAX_RECORD_PLAINTEXT + 2),
        }
    }

    /// Moves every TLS record rustls has ready into `wbuf`.
    pub(crate) fn flush_into(&mut self, wbuf: &mut Vec<u8>) -> Result<(), LinkError> {
        while self.conn.wants_write() {
            self.conn.write_tls(wbuf)?;
        }
        Ok(())
    }

    /// Starts a mux record; the frames follow in the returned buffer.
    pub(crate) fn begin_record(&mut self) -> &mut Vec<u8> {
        self.plain_out.clear();
        self.plain_out.extend_from_slice(&[0, 0]);
        &mut self.plain_out
    }

    /// Encrypts the record started by `begin_record` into `wbuf`.
    pub(crate) fn seal_record(&mut self, wbuf: &mut Vec<u8>) -> Result<(), LinkError> {
        let len = self.plain_out.len() - 2;
        if len == 0 || len > MAX_RECORD_PLAINTEXT {
            return Err(LinkError::RecordLength(len));
        }
        self.plain_out[..2].copy_from_slice(&(len as u16).to_be_bytes());
        self.conn.writer().write_all(&self.plain_out)?;
        self.flush_into(wbuf)
    }

    /// Feeds received TLS bytes to rustls; decrypted bytes collect in the plaintext buffer.
    pub(crate) fn absorb(&mut self, mut input: &[u8]) -> Result<(), LinkError> {
        loop {
            let state = self.conn.process_new_packets().map_err(LinkError::Tls)?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let start = self.plain_in.len();
                self.plain_in.resize(start + n, 0);
                self.conn.reader().read_exact(&mut self.plain_in[start..])?;
            }
            if input.is_empty() {
                return Ok(());
            }
            if self.conn.read_tls(&mut input)? == 0 {
                return Err(LinkError::Io(std::io::Error::other(
                    "tls: input not consumed",
                )));
            }
        }
    }

    /// The next whole mux record received, if any.
    pub(crate) fn next_record(&mut self) -> Result<Option<BytesMut>, LinkError> {
        if self.plain_in.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([self.plain_in[0], self.plain_in[1]]) as usize;
        if len == 0 || len > MAX_RECORD_PLAINTEXT {
            return Err(LinkError::RecordLength(len));
        }
        if self.plain_in.len() < 2 + len {
            return Ok(None);
        }
        let mut record = self.plain_in.split_to(2 + len);
        record.advance(2);
        Ok(Some(record))
    }

    /// Whether decrypted bytes wait for the driver.
    fn has_plaintext(&self) -> bool {
        !self.plain_in.is_empty()
    }

    /// Queues a close_notify alert.
    pub(crate) fn close(&mut self) {
        self.conn.send_close_notify();
    }
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
    let connector = tokio_rustls::TlsConnector::from(material.client_config());
    let stream = connector
        .connect(name, socket)
        .await
        .map_err(|e| tls_failure(e, peer))?;
    let (mut socket, conn) = stream.into_inner();
    let peer_cert = peer_cert_fingerprint(conn.peer_certificates());
    let cipher = cipher_name(conn.negotiated_cipher_suite());
    let mut records = TlsRecords::new(conn.into());
    await_confirmation(&mut socket, &mut records, peer).await?;
    Ok(TlsLink {
        socket,
        transport: Transport::Tls(records),
        peer_cert,
        cipher,
    })
}

/// Dialer, after its side of the handshake: reads until the acceptor's first record has
/// been decrypted (it stays in `records` for the driver). An alert or a close instead means
/// the acceptor refused this host's certificate or the name it claims. The caller's
/// handshake deadline bounds the wait.
async fn await_confirmation(
    socket: &mut TcpStream,
    records: &mut TlsRecords,
    peer: &PeerName,
) -> Result<(), LinkError> {
    let refused = |detail: String| {
        LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: "cert_refused_by_peer",
            detail,
        })
    };
    let absorb_err = |e: LinkError| match e {
        LinkError::Tls(rustls::Error::AlertReceived(alert)) => refused(format!(
            "{peer} refused this host's certificate after the handshake (alert {alert:?}); \
             its log says why"
        )),
        LinkError::Tls(e) => LinkError::Handshake(HandshakeError::Tls {
            peer: peer.to_string(),
            reason: tls::reason(&e),
            detail: tls::describe(&e),
        }),
        other => other,
    };
    let mut buf = [0u8; 4096];
    // rustls may already hold records that came with the end of the handshake.
    records.absorb(&[]).map_err(absorb_err)?;
    while !records.has_plaintext() {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(refused(format!(
                "{peer} closed the connection after the handshake without confirming the \
                 link: it refused this host's certificate or the name it claims (its log \
                 says why)"
            )));
        }
        records.absorb(&buf[..n]).map_err(absorb_err)?;
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
    let acceptor = tokio_rustls::TlsAcceptor::from(material.server_config());
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
    let mut records = TlsRecords::new(conn.into());
    mux::encode_greeting(records.begin_record());
    let mut greeting = Vec::new();
    records.seal_record(&mut greeting)?;
    socket.write_all(&greeting).await?;
    Ok(TlsLink {
        socket,
        transport: Transport::Tls(records),
        peer_cert,
        cipher,
    })
}
