//! A real `redis-server` on a free port, and a minimal RESP2 client to talk to it
//! (directly or through a tunnel).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// Every read and write of the client is bounded by this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process without persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meshd-redis-")
            .tempdir()
            .expect("tempdir");
        let port = super::free_port();
        let log = File::create(dir.path().join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn redis-server (is it installed? scripts/test installs it)");
        let mut server = Self { child, port, dir };
        let addr = server.addr();
        super::wait_until(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("redis-server exited with {status}: {}", server.log());
                }
                Resp::connect(addr).and_then(|mut r| r.ping()).is_ok()
            },
        );
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What it printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` or `$-1` (None)
    Bulk(Option<Vec<u8>>),
    /// `*2 ...` or `*-1` (None)
    Array(Option<Vec<Reply>>),
}

/// A minimal blocking RESP2 client with pipelining; every I/O is bounded by a timeout.
pub struct Resp {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Resp {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::with_capacity(64 * 1024, stream),
        })
    }

    /// Queues one command without flushing (for pipelining).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        write!(self.writer, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.writer, "${}\r\n", arg.len())?;
            self.writer.write_all(arg)?;
            self.writer.write_all(b"\r\n")?;
        }
        Ok(())
    }

    /// Sends every queued command.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.send(args)?;
        self.flush()?;
        self.read_reply()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        line.strip_suffix("\r\n")
            .map(str::to_owned)
            .ok_or_else(|| protocol_error(format!("line without CRLF: {line:?}")))
    }

    fn read_len(line: &str) -> io::Result<i64> {
        line.parse()
            .map_err(|_| protocol_error(format!("bad length {line:?}")))
    }

    /// Reads the next reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => Ok(Reply::Integer(Self::read_len(rest)?)),
            "$" => {
                let len = Self::read_len(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut buf = vec![0u8; len as usize + 2];
                self.reader.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(protocol_error("bulk string without CRLF".into()));
                }
                buf.truncate(len as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            "*" => {
                let len = Self::read_len(rest)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let items = (0..len)
                    .map(|_| self.read_reply())
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(protocol_error(format!("unknown reply {line:?}"))),
        }
    }

    /// PING, expecting PONG.
    pub fn ping(&mut self) -> io::Result<()> {
        match self.cmd(&[b"PING"])? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => Err(protocol_error(format!("PING answered {other:?}"))),
        }
    }

    /// SET key value, expecting OK.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let reply = self.cmd(&[b"SET", key, value])?;
        expect_ok(reply)
    }

    /// GET key.
    pub fn get(&mut self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let reply = self.cmd(&[b"GET", key])?;
        expect_bulk(reply)
    }

    /// Pipelined SETs: all sent, then all replies read; each must be OK.
    pub fn set_many(&mut self, pairs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        for (k, v) in pairs {
            self.send(&[b"SET", k, v])?;
        }
        self.flush()?;
        for _ in pairs {
            let reply = self.read_reply()?;
            expect_ok(reply)?;
        }
        Ok(())
    }

    /// Pipelined GETs, in order.
    pub fn get_many(&mut self, keys: &[Vec<u8>]) -> io::Result<Vec<Option<Vec<u8>>>> {
        for k in keys {
            self.send(&[b"GET", k])?;
        }
        self.flush()?;
        keys.iter()
            .map(|_| self.read_reply().and_then(expect_bulk))
            .collect()
    }
}

fn expect_ok(reply: Reply) -> io::Result<()> {
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        other => Err(protocol_error(format!("expected OK, got {other:?}"))),
    }
}

fn expect_bulk(reply: Reply) -> io::Result<Option<Vec<u8>>> {
    match reply {
        Reply::Bulk(v) => Ok(v),
        other => Err(protocol_error(format!(
            "expected a bulk string, got {other:?}"
        ))),
    }
}
