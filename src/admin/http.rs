//! The smallest HTTP/1.1 a scraper and `meshctl` need: one request per connection, a
//! request head of at most 8 KiB read within 2 s, a response with `Content-Length` and
//! `Connection: close`. Parsing, and the check that a state-changing request names this
//! server in `Host` and `Origin`, are pure functions tested without a socket.

use std::net::IpAddr;
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
        /// The `Host` header, if sent.
        host: Option<String>,
        /// The `Origin` header, if sent (browsers add it to cross-site POSTs).
        origin: Option<String>,
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
    let mut host = None;
    let mut origin = None;
    for field in head.lines().skip(1) {
        let Some((name, value)) = field.split_once(':') else {
            return Head::Bad;
        };
        let slot = if name.eq_ignore_ascii_case("host") {
            &mut host
        } else if name.eq_ignore_ascii_case("origin") {
            &mut origin
        } else {
            continue;
        };
        // Two values would leave it open which one a check looked at.
        if slot.replace(value.trim().to_owned()).is_some() {
            return Head::Bad;
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Head::Request {
        method: method.to_owned(),
        path: path.to_owned(),
        host,
        origin,
    }
}

/// Why a state-changing request is refused: a web page must not reach `POST /reload`,
/// neither by rebinding its own DNS name to this address (the browser then sends the
/// page's name as `Host`) nor by a cross-site form (the browser sends the page's
/// `Origin`). `local_ips` are the addresses that name this server (loopback, the listen
/// and the connection's local address); `port` is the admin port. A name other than
/// `localhost` is refused because only an attacker's page would use one it does not own
/// to reach a loopback service, and a remote `meshctl` names the IP it connected to.
pub fn foreign_origin(
    host: Option<&str>,
    origin: Option<&str>,
    local_ips: &[IpAddr],
    port: u16,
) -> Option<String> {
    let names_us = |authority: &str, default_port: Option<u16>| {
        split_authority(authority).is_some_and(|(name, explicit)| {
            let local = name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback() || local_ips.contains(&ip));
            local && explicit.or(default_port).is_none_or(|p| p == port)
        })
    };
    let Some(host) = host else {
        return Some("refused: a POST needs a Host header naming this server\n".into());
    };
    if !names_us(host, None) {
        return Some(format!(
            "refused: Host {host:?} does not name this admin server (DNS rebinding?); \
             use localhost, 127.0.0.1 or [::1], with port {port} or none\n"
        ));
    }
    if let Some(origin) = origin {
        let same = match origin.split_once("://") {
            Some(("http", authority)) => names_us(authority, Some(80)),
            Some(("https", authority)) => names_us(authority, Some(443)),
            _ => false,
        };
        if !same {
            return Some(format!(
                "refused: Origin {origin:?} is not this admin server (cross-site request)\n"
            ));
        }
    }
    None
}

/// `name[:port]` or `[v6][:port]`; `None` when malformed (a bare IPv6, a bad port).
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            None => (authority, None),
            Some((name, port)) => (name, Some(port)),
        }
    };
    if name.is_empty() {
        return None;
    }
    match port {
        None => Some((name, None)),
        Some(p) => Some((name, Some(p.parse().ok()?))),
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
            403 => "Forbidden",
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
    /// The `Host` header, if sent.
    pub host: Option<String>,
    /// The `Origin` header, if sent.
    pub origin: Option<String>,
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
            Head::Request {
                method,
                path,
                host,
                origin,
            } => {
                return Some(Ok(Request {
                    method,
                    path,
                    host,
                    origin,
                }))
            }
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
                host: Some("a".into()),
                origin: None,
            }
        );
    }

    #[test]
    fn reads_host_and_origin_whatever_their_case() {
        let head = b"POST /reload HTTP/1.1\r\nhOsT:  127.0.0.1:9 \r\nORIGIN: http://x\r\n\r\n";
        let Head::Request { host, origin, .. } = parse_head(head) else {
            panic!("not parsed");
        };
        assert_eq!(host.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(origin.as_deref(), Some("http://x"));
    }

    #[test]
    fn a_repeated_host_or_origin_is_bad() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: localhost\r\nHost: evil\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nOrigin: http://localhost\r\norigin: http://evil\r\n\r\n",
            b"POST / HTTP/1.1\r\nno colon here\r\n\r\n",
        ] {
            assert_eq!(parse_head(head), Head::Bad, "{head:?}");
        }
    }

    const PORT: u16 = 9464;

    fn refused(host: Option<&str>, origin: Option<&str>) -> bool {
        let listen: IpAddr = "10.0.0.5".parse().expect("ip");
        foreign_origin(host, origin, &[listen], PORT).is_some()
    }

    #[test]
    fn local_hosts_with_or_without_the_admin_port_may_post() {
        for host in [
            "localhost",
            "LocalHost:9464",
            "127.0.0.1",
            "127.0.0.1:9464",
            "[::1]",
            "[::1]:9464",
            "10.0.0.5:9464",
        ] {
            assert!(!refused(Some(host), None), "{host}");
        }
        for origin in [
            "http://localhost:9464",
            "https://127.0.0.1:9464",
            "http://[::1]:9464",
        ] {
            assert!(!refused(Some("localhost"), Some(origin)), "{origin}");
        }
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        for host in [
            None,
            Some(""),
            Some("evil.example"),
            Some("evil.example:9464"),
            Some("localhost.evil.example"),
            Some("127.0.0.1:80"),
            Some("127.0.0.1:notaport"),
            Some("::1"),
            Some("[::1"),
            Some("[evil]:9464"),
            Some("10.0.0.6:9464"),
        ] {
            assert!(refused(host, None), "{host:?}");
        }
        for origin in [
            "http://evil.example",
            "http://evil.example:9464",
            "null",
            "http://localhost",
            "http://localhost:3000",
            "file://",
            "localhost:9464",
        ] {
            assert!(refused(Some("localhost"), Some(origin)), "{origin}");
        }
        let why = foreign_origin(Some("evil.example"), None, &[], PORT).expect("refused");
        assert!(why.contains("Host \"evil.example\""), "{why}");
        let why = foreign_origin(Some("localhost"), Some("http://evil.example"), &[], PORT)
            .expect("refused");
        assert!(why.contains("Origin \"http://evil.example\""), "{why}");
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
