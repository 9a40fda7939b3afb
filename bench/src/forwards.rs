//! Port forwarding: an HTTP body and small requests through the daemon's forward, next to
//! OpenSSH's `ssh -N -L` to the same sshd and the same HTTP server, with the same cipher.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mcp_ssh_tests::daemon::Daemon;
use mcp_ssh_tests::http::{self, HttpServer};

use super::{Bench, ms, percentile};

/// `ssh -N -L`, stopped when dropped.
struct SshForward(Child);

impl Drop for SshForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until something accepts connections on `addr`.
fn wait_listening(addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr}")
}

/// Seconds to GET `/bytes/SIZE` from `addr`, checked for its length.
async fn fetch(addr: &str, size: u64) -> anyhow::Result<f64> {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let body = http::get(&addr, &format!("/bytes/{size}")).map_err(anyhow::Error::msg)?;
        let took = started.elapsed().as_secs_f64();
        if body.len() as u64 != size {
            bail!("{} bytes instead of {size}", body.len());
        }
        Ok(took)
    })
    .await?
}

/// Milliseconds per small GET, one new connection each, through `a` and `b` in turn: request
/// by request, so a noisy moment weighs on both sides alike.
async fn small_gets(a: &str, b: &str, n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (a, b) = (a.to_string(), b.to_string());
    tokio::task::spawn_blocking(move || {
        let (mut through_a, mut through_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..2 * n {
            let (addr, samples) = if i % 2 == 0 {
                (&a, &mut through_a)
            } else {
                (&b, &mut through_b)
            };
            let started = Instant::now();
            let body = http::get(addr, "/hello").map_err(anyhow::Error::msg)?;
            samples.push(ms(started.elapsed()));
            if body != b"hello\n" {
                bail!("unexpected answer {body:?}");
            }
        }
        Ok((through_a, through_b))
    })
    .await?
}

pub async fn forwards(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let web = HttpServer::start();
    let mib: u64 = if b.smoke { 8 } else { 512 };
    let size = mib << 20;
    let cipher = if std::arch::is_x86_feature_detected!("aes") {
        "aes256-gcm@openssh.com"
    } else {
        "chacha20-poly1305@openssh.com"
    };

    let out = daemon.ctl(&["--json", "forward", "box", &web.port.to_string()]);
    if !out.status.success() {
        bail!(
            "mcp-sshctl forward failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let opened: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ours = opened["local_address"]
        .as_str()
        .context("no local_address")?
        .to_string();

    let port = free_port()?;
    let theirs = format!("127.0.0.1:{port}");
    let child = b
        .ssh_base()
        .args(["-N", "-c", cipher, "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("{port}:localhost:{}", web.port))
        .arg(format!("{}@127.0.0.1", b.user))
        .stderr(Stdio::null())
        .spawn()?;
    let _ssh = SshForward(child);
    wait_listening(&theirs)?;

    // Warm both (the daemon's connection, ssh's first channel).
    fetch(&ours, 1 << 20).await?;
    fetch(&theirs, 1 << 20).await?;
    // Interleaved, each first in turn: on a shared machine a slow spell then falls on both.
    let rounds = b.n(7);
    let (mut ours_s, mut theirs_s) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ours_s.push(fetch(&ours, size).await?);
            theirs_s.push(fetch(&theirs, size).await?);
        } else {
            theirs_s.push(fetch(&theirs, size).await?);
            ours_s.push(fetch(&ours, size).await?);
        }
    }
    let rate = |s: &mut Vec<f64>| mib as f64 / percentile(s, 0.5);
    b.row(
        "forward throughput (HTTP GET through the forward) vs ssh -L",
        "MiB/s",
        rate(&mut ours_s),
        Some(rate(&mut theirs_s)),
        format!("{mib} MiB body, {cipher}, median of {rounds}; higher is better"),
    );

    let n = b.n(1000);
    let (mut ours_l, mut theirs_l) = small_gets(&ours, &theirs, n).await?;
    b.row(
        "small GET through a forward, p50 (new TCP connection each) vs ssh -L",
        "ms",
        percentile(&mut ours_l, 0.5),
        Some(percentile(&mut theirs_l, 0.5)),
        format!("{n} requests each, alternating; lower is better"),
    );
    b.row(
        "small GET through a forward, p95 vs ssh -L",
        "ms",
        percentile(&mut ours_l, 0.95),
        Some(percentile(&mut theirs_l, 0.95)),
        "the same requests",
    );
    Ok(())
}
