//! Pacing of new connections per sshd address. OpenSSH's `MaxStartups 10:30:100` (its
//! default) starts dropping unauthenticated connections at random once 10 are in progress at
//! one sshd: a call over a hundred cold hosts behind one address would lose some. Each
//! connection attempt holds one of [`PER_ADDRESS`] permits of its address from TCP connect to
//! the end of authentication. sshd counts a connection a little longer than that (until its
//! session process tells the listener it logged in), and other clients count too, so a
//! connection turned away before the SSH banner is tried again, [`ATTEMPTS`] times in all.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HostConfig;
use crate::sync::lock;

/// Connection attempts in progress at once to one sshd address: below MaxStartups' 10, with
/// room for the user's own `ssh` sessions.
pub const PER_ADDRESS: usize = 6;

/// Attempts at a connection its sshd turns away before the banner: at MaxStartups' start
/// sshd drops 30 % of new connections, so four in a row fail one time in a hundred, and only
/// when the server stays that busy for the second the waits add up to.
pub const ATTEMPTS: u32 = 4;

/// The wait before attempt `attempt + 1`: 0.1, 0.2, 0.4 s, each up to half again at random so
/// that connections turned away together do not come back together.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.pow(attempt.saturating_sub(1).min(4));
    let jitter = getrandom::u32().unwrap_or(0) % 1000;
    base + base * jitter / 2000
}

/// Each address's permits, while anyone holds one.
static ADDRESSES: LazyLock<Mutex<HashMap<String, Weak<Semaphore>>>> = LazyLock::new(Mutex::default);

/// Waits for a permit to open a connection to `host`'s sshd. The address includes the route:
/// the same private address behind two bastions may be two machines.
pub async fn permit(host: &HostConfig) -> Option<OwnedSemaphorePermit> {
    let address = format!(
        "{}:{} {}",
        host.hostname,
        host.port,
        host.route().unwrap_or_default()
    );
    let semaphore = {
        let mut addresses = lock(&ADDRESSES);
        addresses.retain(|_, s| s.strong_count() > 0);
        match addresses.get(&address).and_then(Weak::upgrade) {
            Some(semaphore) => semaphore,
            None => {
                let semaphore = Arc::new(Semaphore::new(PER_ADDRESS));
                addresses.insert(address, Arc::downgrade(&semaphore));
                semaphore
            }
        }
    };
    semaphore.acquire_owned().await.ok()
}
