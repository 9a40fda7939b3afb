//! A small HTTP/1.1 server for forwarding tests and benchmarks, on its own runtime thread (as
//! the fault proxy) so a test blocking its threads cannot stall it. `GET /bytes/N` answers N
//! bytes of [`pattern`] (so a 512 MiB body costs no memory and can be checked anywhere);
//! `GET /hello` answers `hello\n`. Every answer closes its connection unless the request asked
//! for keep-alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Byte `i` of every `/bytes/N` body.
pub fn pattern(i: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 16).wrapping_mul(7)) as u8
}

/// Fills `buf` with the pattern from `offset` on.
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(offset + k as u64);
    }
}

/// Whether `body` is the first `body.len()` bytes of the pattern.
pub fn is_pattern(body: &[u8]) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, b)| *b == pattern(i as u64))
}

pub struct HttpServer {
    pub port: u16,
    /// Requests answered so far.
    pub served: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HttpServer {
    /// Listens on 127.0.0.1, a free port.
    pub fn start() -> HttpServer {
        HttpServer::start_on(0)
    }

    /// Listens on 127.0.0.1:`port`.
    pub fn start_on(port: u16) -> HttpServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("http-server")
            .enable_all()
            .build()
            .unwrap();
        // Bound here, outside any runtime: tests call this from within their own.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &counter).await;
                });
            }
        });
        HttpServer {
            port,
            served,
            runtime: Some(runtime),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn serve(stream: TcpStream, served: &AtomicUsize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut request = String::new();
        if read.read_line(&mut request).await? == 0 {
            return Ok(());
        }
        let mut keep_alive = request.contains("HTTP/1.1");
        loop {
            let mut header = String::new();
            if read.read_line(&mut header).await? == 0 || header.trim().is_empty() {
                break;
            }
            let header = header.to_ascii_lowercase();
            if header.starts_with("connection:") {
                keep_alive = header.contains("keep-alive");
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let (status, size, body): (&str, u64, Option<&[u8]>) = if path == "/hello" {
            ("200 OK", 6, Some(b"hello\n"))
        } else if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
            ("200 OK", n, None)
        } else {
            ("404 Not Found", 10, Some(b"not found\n"))
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\nConnection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        );
        match body {
            // One write for a small answer: split writes would meet Nagle's algorithm and
            // delayed ACKs on whatever relays them, and measure those instead of the relay.
            Some(body) => write.write_all(&[head.as_bytes(), body].concat()).await?,
            None => {
                write.write_all(head.as_bytes()).await?;
                let mut buf = vec![0u8; 256 * 1024];
                let mut sent = 0u64;
                while sent < size {
                    let n = (size - sent).min(buf.len() as u64) as usize;
                    fill(sent, &mut buf[..n]);
                    write.write_all(&buf[..n]).await?;
                    sent += n as u64;
                }
            }
        }
        write.flush().await?;
        served.fetch_add(1, Ordering::Relaxed);
        if !keep_alive {
            write.shutdown().await?;
            return Ok(());
        }
    }
}

/// A plain HTTP/1.1 GET over one new connection (the benchmark's client; the tests use curl):
/// the body, or why it failed. Like curl and browsers, it is done once `Content-Length` bytes
/// arrived, without waiting for the connection to close (whose end a relay may deliver later).
pub fn get(addr: &str, path: &str) -> Result<Vec<u8>, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // One write (`write!` would send each piece on its own).
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| e.to_string())?;
    let mut length = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).map_err(|e| e.to_string())? == 0 {
            return Err(format!("the answer ended in its headers ({status:?})"));
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<u64>().ok();
        }
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(status.trim_end().to_string());
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.reserve(usize::try_from(n).unwrap_or(0));
            reader
                .take(n)
                .read_to_end(&mut body)
                .map_err(|e| e.to_string())?;
        }
        None => {
            reader.read_to_end(&mut body).map_err(|e| e.to_string())?;
        }
    }
    Ok(body)
}
