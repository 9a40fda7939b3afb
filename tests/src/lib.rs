//! Test fixtures: a real OpenSSH sshd, the real mcp-sshd binary on a temporary socket, and the
//! programs under test located (and built when needed) in this workspace's target directory.

// Fixture code runs only inside tests, where a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod bins;
pub mod daemon;
pub mod http;
pub mod netns;
pub mod proxy;
pub mod rpc;
pub mod shim;
pub mod sshd;
pub mod tasks;

pub use daemon::Daemon;
pub use netns::Netns;
pub use sshd::{Place, Sshd, SshdOptions, is_root, login_user, test_password};

/// Awaits futures concurrently, polling them together (so spawned shims really race), and
/// returns their outputs in order.
pub async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, out) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Pids of the mcp-sshd processes serving `socket`.
pub fn daemons_serving(socket: &std::path::Path) -> Vec<u32> {
    let needle = format!("--socket {}", socket.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if comm.trim() == "mcp-sshd"
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(&needle)
        {
            found.push(pid);
        }
    }
    found
}
