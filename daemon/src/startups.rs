//! Pacing of new connections per sshd address. OpenSSH's `MaxStartups 10:30:100` (its
//! default) starts dropping unauthenticated connections at random once 10 are in progress at
//! one sshd: a call over a hundred cold hosts behind one address would lose some. Each
//! connection attempt holds one of [`PER_ADDRESS`] permits of its address from TCP connect to
//! the end of authentication.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::HostConfig;
use crate::sync::lock;

/// Connection attempts in progress at once to one sshd address: below MaxStartups' 10, with
/// room for the user's own `ssh` sessions.
pub const PER_ADDRESS: usize = 8;

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
