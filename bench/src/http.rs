//! A minimal HTTP/1.1 keep-alive client over one `TcpStream`: enough for the gateway's JSON and
//! Prometheus answers (`Content-Length` bodies, no chunked encoding, no pipelining). It is kept cheap
//! because the load generator shares the machine with the service and the database.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// No single request may take longer than this (every wait in the benchmark is bounded).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One answer.
pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds, when present.
    pub retry_after: Option<u64>,
}

impl Resp {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or("<non-utf8 body>")
    }
}

/// One keep-alive connection to 127.0.0.1.
pub struct Conn {
    stream: TcpStream,
    req: Vec<u8>,
    buf: Vec<u8>,
    /// The server said `Connection: close`; the next request needs a new connection.
    closed: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find_crlfcrlf(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..].windows(4).position(|w| w == b"\r\n\r\n").map(|p| start + p)
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        assert!(addr.ip().is_loopback(), "the benchmark only talks to 127.0.0.1");
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, req: Vec::with_capacity(512), buf: Vec::with_capacity(8192), closed: false })
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and reads its whole answer, within `REQUEST_TIMEOUT`.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Resp> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, body)).await {
            Ok(r) => r,
            Err(_) => {
                self.closed = true;
                Err(io::Error::new(io::ErrorKind::TimedOut, format!("{method} {path}: no answer within 30 s")))
            }
        }
    }

    async fn request_inner(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Resp> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "connection closed by the server"));
        }
        self.req.clear();
        self.req.extend_from_slice(method.as_bytes());
        self.req.push(b' ');
        self.req.extend_from_slice(path.as_bytes());
        self.req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        if let Some(b) = body {
            self.req.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            self.req.extend_from_slice(b.len().to_string().as_bytes());
            self.req.extend_from_slice(b"\r\n\r\n");
            self.req.extend_from_slice(b);
        } else {
            self.req.extend_from_slice(b"\r\n");
        }
        if let Err(e) = self.stream.write_all(&self.req).await {
            self.closed = true;
            return Err(e);
        }
        let r = self.read_response().await;
        if r.is_err() {
            self.closed = true;
        }
        r
    }

    async fn read_more(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        Ok(())
    }

    async fn read_response(&mut self) -> io::Result<Resp> {
        self.buf.clear();
        let mut scanned = 0;
        let head_end = loop {
            if let Some(p) = find_crlfcrlf(&self.buf, scanned) {
                break p;
            }
            scanned = self.buf.len();
            if scanned > 64 * 1024 {
                return Err(bad("response headers larger than 64 KiB"));
            }
            self.read_more().await?;
        };
        let head = &self.buf[..head_end];
        let mut lines = head.split(|&b| b == b'\n');
        let status_line = lines.next().unwrap_or_default();
        if status_line.len() < 12 || !status_line.starts_with(b"HTTP/1.") {
            return Err(bad(format!("bad status line {:?}", String::from_utf8_lossy(status_line))));
        }
        let status = parse_num(&status_line[9..12]).ok_or_else(|| bad("bad status code"))? as u16;
        let mut content_length = None;
        let mut retry_after = None;
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            if name.eq_ignore_ascii_case(b"content-length") {
                content_length = Some(parse_num(value).ok_or_else(|| bad("bad content-length"))? as usize);
            } else if name.eq_ignore_ascii_case(b"retry-after") {
                retry_after = parse_num(value);
            } else if name.eq_ignore_ascii_case(b"connection") {
                if value.trim_ascii().eq_ignore_ascii_case(b"close") {
                    self.closed = true;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                return Err(bad("chunked responses are not supported by the bench client"));
            }
        }
        let body_start = head_end + 4;
        let len = content_length.unwrap_or(0);
        while self.buf.len() < body_start + len {
            self.read_more().await?;
        }
        if self.buf.len() > body_start + len {
            return Err(bad("unexpected bytes after the response body"));
        }
        let body = self.buf[body_start..].to_vec();
        Ok(Resp { status, body, retry_after })
    }
}

/// A connection that reconnects by itself before the next request once the previous one failed.
pub struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<Resp> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            self.conn = Some(Conn::connect(self.addr).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let r = conn.request(method, path, body).await;
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// For idempotent requests: one retry on a fresh connection after an I/O error.
    pub async fn get(&mut self, path: &str) -> io::Result<Resp> {
        match self.request("GET", path, None).await {
            Ok(r) => Ok(r),
            Err(_) => self.request("GET", path, None).await,
        }
    }
}
