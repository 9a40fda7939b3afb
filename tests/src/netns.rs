//! Network namespaces of the tests' own (`ip netns`), to prove a route: a server whose namespace
//! has nothing but its own loopback can only be reached by a process inside that namespace,
//! such as a bastion's `sshd -i` (see [`crate::sshd::Place::Between`]). Each namespace is
//! deleted on drop, with its `/etc/netns/NAME` files; nothing in it is reachable from outside.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
}

/// Runs `ip ARGS`, which must succeed; panics saying what to install or run otherwise.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `ip` ({e}): the route tests make network namespaces of their own with \
             iproute2. Install it with `apt-get install -y iproute2`, or run `bash tests/run.sh`, \
             which installs what the tests need"
        )
    });
    assert!(
        output.status.success(),
        "`ip {}` failed: {} (network namespaces need root: run `bash tests/run.sh` as root)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

impl Netns {
    /// A new namespace with its loopback up and nothing else.
    pub fn new() -> Netns {
        let name = format!(
            "mcpssh-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The namespace's file, for `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `/etc/hosts` as processes started with `ip netns exec` inside this namespace see it:
    /// names only they resolve.
    pub fn hosts(&self, text: &str) {
        let dir = self.etc_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("hosts"), text).unwrap();
    }

    /// `cidr` (e.g. `10.77.0.1/24`) on a link where nothing answers: connecting to `silent`,
    /// another address of that network, hangs until the connecting side gives up (its SYNs
    /// go to a hardware address no interface has, and are dropped).
    pub fn black_hole(&self, cidr: &str, silent: &str) {
        self.ip(&[
            "link", "add", "hole0", "type", "veth", "peer", "name", "hole1",
        ]);
        self.ip(&["addr", "add", cidr, "dev", "hole0"]);
        self.ip(&["link", "set", "hole0", "up"]);
        self.ip(&["link", "set", "hole1", "up"]);
        self.ip(&[
            "neigh",
            "add",
            silent,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "hole0",
            "nud",
            "permanent",
        ]);
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.etc_dir());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
