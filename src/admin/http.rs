//! The smallest HTTP/1.1 a scraper and `meshctl` need: one request per connection, a
//! request head of at most 8 KiB read within 2 s, a response with `Content-Length` and
//! `Connection: close`. Parsing is a pure function of the bytes read so far, tested
//! without a socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Deadline for writing the response.
pub const IO_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline for the whole request head: scrapers and `meshctl` send theirs at once, and a
/// connection that stays silent holds one of the few admin slots.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// What a request head says, as far as routing needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// More bytes are needed.
    Incomplete,
    /// A complete request line and headers.
    Request {
        /// The method, as sent.
        method: String,
        /// The path, without the query string.
        path: String,
    },
    /// Not HTTP/1.x.
    Bad,
}

/// Parses the bytes received so far.
pub fn parse_head(buf: &[u8]) -> Head {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Head::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Head::Bad;
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Head::Bad;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Head::Bad;
    }
    let path = target.split('?').next().unwrap_or(target);
    Head::Request {
        method: method.to_owned(),
        path: path.to_owned(),
    }
}

/// A response to send.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            422 => "Unprocessable Content",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let allow = if self.status == 405 {
            "Allow: GET, POST\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// A parsed request head.
#[derive(Debug)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
}

/// Reads one request head. `Err` is the answer to a malformed or oversized head; `None`
/// means the client went away. The caller bounds the time it may take.
pub async fn read_request(socket: &mut TcpStream) -> Option<Result<Request, Response>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        match parse_head(&buf) {
            Head::Incomplete if buf.len() >= MAX_HEAD => {
                return Some(Err(Response::text(431, "request head too large\n")))
            }
            Head::Incomplete => {}
            Head::Bad => return Some(Err(Response::text(400, "bad request\n"))),
            Head::Request { method, path } => return Some(Ok(Request { method, path })),
        }
        let mut chunk = [0u8; 1024];
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        match socket.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `response` and closes; a client too slow to take it within [`IO_DEADLINE`] just
/// loses it.
pub async fn respond(mut socket: TcpStream, response: Response) {
    let bytes = response.encode();
    let write = async {
        socket.write_all(&bytes).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(IO_DEADLINE, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_and_drops_the_query() {
        let head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            parse_head(head),
            Head::Request {
                method: "GET".into(),
                path: "/metrics".into(),
            }
        );
    }

    #[test]
    fn waits_for_the_whole_head_split_anywhere() {
        let head = b"GET /status HTTP/1.0\r\nUser-Agent: t\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(parse_head(&head[..cut]), Head::Incomplete, "cut at {cut}");
        }
        assert!(matches!(parse_head(head), Head::Request { .. }));
    }

    #[test]
    fn rejects_what_is_not_http() {
        for bad in [
            &b"\x16\x03\x01\r\n\r\n"[..],
            b"GET /\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Head::Bad, "{bad:?}");
        }
    }

    #[test]
    fn responses_close_and_say_their_length() {
        let r = String::from_utf8(Response::text(405, "no\n").encode()).expect("utf-8");
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Allow: GET, POST\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nno\n"));
    }
}
