//! The channel budget of one connection against a real sshd: bursts of parallel calls must not
//! shrink it (a slot is reused only once sshd has freed the session it stood for), and a server
//! that really allows fewer sessions than hosts.json says is still learnt.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use mcp_ssh_shim::client::DaemonClient;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, login_user};
use serde_json::json;

const LOWERED: &str = "lowering this connection's budget";

fn daemon_for(sshd: &Sshd, port: u16, max_sessions: u32) -> Daemon {
    let mut host = sshd.host("box", &login_user());
    host["port"] = port.into();
    host["max_sessions"] = json!(max_sessions);
    Daemon::start(&hosts_json(&[host]))
}

/// A TCP relay to sshd that hands sshd what the client sent within `window` of its first byte
/// in one write, so sshd reads it in one go: what a real network (and a busy sshd, which reads
/// only between its loop's passes) does to packets sent back to back. The answers pass at once.
async fn coalescing_relay(sshd_port: u16, window: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", sshd_port)).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                let _ = client_write.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    if client_read.readable().await.is_err() {
                        break;
                    }
                    tokio::time::sleep(window).await;
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = server_write.shutdown().await;
            });
        }
    });
    port
}

/// Runs `n` `sleep 1` at once; every one must succeed. Returns the wall time.
async fn burst(client: &DaemonClient, n: usize) -> Duration {
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        calls.spawn(async move { (i, run(&client, "box", "sleep 1", 0).await) });
    }
    while let Some(joined) = calls.join_next().await {
        let (i, result) = joined.unwrap();
        assert_eq!(result.code(), Some(0), "call {i}: {:?}", result.error);
    }
    started.elapsed()
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_parallel_calls_should_keep_the_whole_budget() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(10),
        ..Default::default()
    });
    let relay = coalescing_relay(sshd.port, Duration::from_millis(2)).await;
    sshd.trust_port(relay);
    let daemon = daemon_for(&sshd, relay, 10);
    let client = daemon.client().await;
    for i in 0..4 {
        let wall = burst(&client, 25).await;
        eprintln!("burst {i}: 25 x sleep 1 in {:.2} s", wall.as_secs_f64());
    }
    let wall = burst(&client, 18).await;
    let status = rpc::status(&client).await;
    let host = &status.hosts[0];
    let log = daemon.log_text();
    let sshd_log = sshd.log();
    let lowered = lines_with(&log, LOWERED);
    let refused = lines_with(&sshd_log, "no more sessions");
    eprintln!(
        "18 x sleep 1 in {:.2} s; channel budget {} (of 9); budget lowered {} times; sshd said \
         \"no more sessions\" {} times",
        wall.as_secs_f64(),
        host.channel_limit,
        lowered.len(),
        refused.len()
    );
    // Nine work channels (one of the ten sessions stays reserved for stopping commands): two
    // waves of one second each, plus the connection's overhead.
    assert!(
        wall < Duration::from_millis(2800),
        "18 parallel one-second commands took {:.2} s (more than two waves); daemon log:\n{}",
        wall.as_secs_f64(),
        lowered.join("\n")
    );
    assert_eq!(
        host.channel_limit,
        9,
        "the budget did not stay at (or come back to) max_sessions - 1; daemon log:\n{}",
        lowered.join("\n")
    );
    assert!(
        lowered.is_empty(),
        "the daemon lowered the budget although sshd allows all ten sessions:\n{}",
        lowered.join("\n")
    );
    assert!(
        refused.is_empty(),
        "a slot was reused before sshd had freed its session:\n{}",
        refused.join("\n")
    );
    assert_eq!(host.channels_in_use, 0);
    assert_eq!(sshd.accepted_logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_allowing_fewer_sessions_should_be_learnt() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(4),
        ..Default::default()
    });
    let daemon = daemon_for(&sshd, sshd.port, 10);
    let client = daemon.client().await;
    // Twelve calls on three work channels (the fourth session is the reserved one): all succeed.
    let first = burst(&client, 12).await;
    let status = rpc::status(&client).await;
    assert_eq!(status.hosts[0].channel_limit, 3, "{status:?}");
    let log = daemon.log_text();
    let lowered = lines_with(&log, LOWERED);
    assert!(
        lowered.iter().any(|l| l.contains("budget to 3")),
        "the real limit was not learnt:\n{log}"
    );
    // Once learnt, later bursts run in waves of three without being refused again.
    let refused_before = lines_with(&sshd.log(), "no more sessions").len();
    let second = burst(&client, 6).await;
    let refused_after = lines_with(&sshd.log(), "no more sessions").len();
    eprintln!(
        "sshd MaxSessions 4: 12 x sleep 1 in {:.2} s while learning, then 6 in {:.2} s; refusals \
         {refused_before} then {refused_after}",
        first.as_secs_f64(),
        second.as_secs_f64()
    );
    assert_eq!(
        refused_before, refused_after,
        "the learnt limit was probed again"
    );
    assert!(second < Duration::from_millis(2800), "{second:?}");
    let status = rpc::status(&client).await;
    assert_eq!(status.hosts[0].channel_limit, 3, "{status:?}");
    assert_eq!(status.hosts[0].channels_in_use, 0);
}
