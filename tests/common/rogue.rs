//! A hand-made tls dialer, for tests that must speak the link protocol as a peer meshd
//! would never do: rustls's buffered API, no ALPN (so standard TLS records), and mux
//! records written and read as the byte stream `u16 length ‖ frames`.

use std::net::SocketAddr;
use std::sync::Arc;

use meshd::config::{AuthMode, PeerName};
use meshd::proto::frame::Frame;
use meshd::proto::handshake::Preamble;
use meshd::tls::certgen::Issued;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Largest mux record this dialer writes: well inside one standard TLS record.
pub const MAX_RECORD: usize = 16_000;

/// A TLS 1.3 client configuration as a meshd dialer's, but with no ALPN: trusting the CA
/// certificates of `trusted_ca_pem` and presenting `cert`.
pub fn tls13_client_config(trusted_ca_pem: &str, cert: &Issued) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trusted_ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add root");
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key pem");
    rustls::ClientConfig::builder_with_provider(meshd::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(cert.der.clone())], key)
        .expect("client cert")
}

/// Sends the tls preamble claiming to be `claimed` on `tcp`.
pub async fn send_tls_preamble(tcp: &mut TcpStream, claimed: &str) {
    let preamble = Preamble {
        mode: AuthMode::Tls,
        name: PeerName::new(claimed).expect("name"),
    };
    tcp.write_all(&preamble.encode()).await.expect("preamble");
}

/// A connection to a mesh port that has sent the tls preamble claiming to be `claimed`.
pub async fn tls_preamble_sent(addr: SocketAddr, claimed: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect mesh port");
    send_tls_preamble(&mut tcp, claimed).await;
    tcp
}

/// The TLS handshake of an authenticated peer on `tcp` (preamble already sent) to the
/// acceptor named `server`, then its confirmation (the acceptor's first record, a PING),
/// as a meshd dialer waits for it before sending: rustls on the acceptor cannot hand back
/// a record it read along with the handshake.
pub async fn tls_link_up(
    tcp: TcpStream,
    server: &str,
    trusted_ca_pem: &str,
    cert: &Issued,
) -> TlsStream<TcpStream> {
    let config = tls13_client_config(trusted_ca_pem, cert);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server.to_owned()).expect("server name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the rogue dialer's handshake");
    let mut confirmed = false;
    read_mux_record(&mut tls, |frame| {
        confirmed = matches!(frame, Frame::Ping { .. });
    })
    .await
    .expect("the acceptor's confirmation");
    assert!(confirmed, "the acceptor's first record is not its PING");
    tls
}

/// One mux record (`u16 length ‖ frames`) read from a rustls stream; its frames are handed
/// to `on_frame`.
pub async fn read_mux_record<S: AsyncRead + Unpin>(
    tls: &mut S,
    mut on_frame: impl FnMut(Frame<'_>),
) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    tls.read_exact(&mut len).await?;
    let mut record = vec![0u8; u16::from_be_bytes(len) as usize];
    tls.read_exact(&mut record).await?;
    let mut at = 0;
    while at < record.len() {
        let (frame, used) = meshd::proto::frame::decode(&record[at..]).expect("a valid frame");
        on_frame(frame);
        at += used;
    }
    Ok(())
}

/// Writes `frames` as mux records of at most [`MAX_RECORD`] bytes each.
pub async fn write_frames<S: AsyncWrite + Unpin>(
    tls: &mut S,
    frames: &[Frame<'_>],
) -> std::io::Result<()> {
    write_records(tls, frames, usize::MAX).await
}

/// Writes `frames` as mux records of at most [`MAX_RECORD`] bytes and `per_record` frames
/// each.
pub async fn write_records<S: AsyncWrite + Unpin>(
    tls: &mut S,
    frames: &[Frame<'_>],
    per_record: usize,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut record = vec![0, 0];
    let mut in_record = 0;
    for frame in frames {
        if record.len() + frame.encoded_len() > MAX_RECORD || in_record == per_record {
            seal(&mut record, &mut out);
            in_record = 0;
        }
        frame.encode(&mut record);
        in_record += 1;
    }
    if record.len() > 2 {
        seal(&mut record, &mut out);
    }
    tls.write_all(&out).await?;
    tls.flush().await
}

/// Fills in `record`'s length prefix, moves it to `out` and starts the next one.
fn seal(record: &mut Vec<u8>, out: &mut Vec<u8>) {
    let len = u16::try_from(record.len() - 2).expect("a mux record fits u16");
    record[..2].copy_from_slice(&len.to_be_bytes());
    out.append(record);
    record.extend_from_slice(&[0, 0]);
}
