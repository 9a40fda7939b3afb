//! A TCP proxy for fault injection, placed between the daemon and sshd: it passes traffic,
//! black-holes it (sockets stay open, nothing is forwarded: a dead network or a hung server),
//! delays it, resets every connection it carries (RST to both sides), or turns new
//! connections away before a byte passes (as sshd past its MaxStartups does).
//!
//! It runs on its own runtime thread so that tests blocking their own threads cannot stall it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Forward nothing in either direction; held data flows again after `Pass`.
    BlackHole,
    /// Wait this long before forwarding each chunk read.
    Delay(Duration),
}

pub struct FaultProxy {
    /// Connect here instead of to sshd.
    pub port: u16,
    fault: watch::Sender<Fault>,
    resets: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
    turn_away: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to 127.0.0.1:`target`.
    pub fn start(target: u16) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("cannot start the proxy runtime");
        // Bound here (std) so that a test already inside a runtime can start a proxy.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (fault, _) = watch::channel(Fault::Pass);
        let (resets, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicUsize::new(0));
        let turn_away = Arc::new(AtomicUsize::new(0));
        let (faults, reset_rx, count) = (fault.clone(), resets.clone(), accepted.clone());
        let away = turn_away.clone();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("cannot adopt the proxy socket");
            while let Ok((inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let turned_away = away
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if turned_away {
                    // Closed unread, as sshd drops a connection past MaxStartups: an RST.
                    let _ = inbound.set_zero_linger();
                    continue;
                }
                let (fault, reset) = (faults.subscribe(), reset_rx.subscribe());
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        carry(inbound, outbound, fault, reset).await;
                    }
                });
            }
        });
        FaultProxy {
            port,
            fault,
            resets,
            accepted,
            turn_away,
            runtime: Some(runtime),
        }
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Resets every connection open now (new ones are carried as usual).
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Closes the next `n` connections as soon as they are accepted.
    pub fn turn_away(&self, n: usize) {
        self.turn_away.store(n, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Carries one connection both ways until both sides are done or a reset is asked for.
async fn carry(
    mut inbound: TcpStream,
    mut outbound: TcpStream,
    fault: watch::Receiver<Fault>,
    mut reset: watch::Receiver<u64>,
) {
    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
    reset.mark_unchanged();
    let reset_asked = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        let both = async {
            tokio::join!(
                pump(in_read, out_write, fault.clone()),
                pump(out_read, in_write, fault)
            )
        };
        tokio::select! {
            _ = both => false,
            _ = reset.changed() => true,
        }
    };
    if reset_asked {
        // SO_LINGER 0: closing sends RST instead of FIN.
        let _ = (inbound.set_zero_linger(), outbound.set_zero_linger());
    }
}

async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if pass_when_allowed(&mut fault).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Data read just before a black hole is held, not delivered.
        let Ok(delay) = pass_when_allowed(&mut fault).await else {
            return;
        };
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits while the proxy black-holes; returns the delay to apply, if any.
async fn pass_when_allowed(
    fault: &mut watch::Receiver<Fault>,
) -> Result<Option<Duration>, watch::error::RecvError> {
    let fault = *fault.wait_for(|f| *f != Fault::BlackHole).await?;
    Ok(match fault {
        Fault::Delay(d) => Some(d),
        Fault::Pass | Fault::BlackHole => None,
    })
}
