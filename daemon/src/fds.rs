//! File descriptors. Each direct connection holds a socket, a `proxy_command` its pipes, each
//! forward a listener and its relayed sockets, each transfer a file. With hundreds of hosts the
//! usual soft limit (1024) is near, so the daemon raises it to the hard limit at start and, before
//! opening a connection, checks that the descriptors in use leave room for it.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept free for everything that is not a connection: clients' sockets, log and
/// audit files, transfers, forwards' listeners.
pub const RESERVE: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit in force after.
pub fn raise_limit() -> u64 {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The soft limit in force.
pub fn limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft)
}

/// Descriptors this process has open now (None where the system does not say).
pub fn open() -> Option<u64> {
    ["/proc/self/fd", "/dev/fd"]
        .iter()
        .find_map(|dir| std::fs::read_dir(dir).ok())
        .map(|entries| entries.count() as u64)
}

/// The limit, when another connection would leave fewer than [`RESERVE`] descriptors free.
pub fn no_room() -> Option<u64> {
    let limit = limit();
    (open()? + RESERVE >= limit).then_some(limit)
}

/// A warning when hosts.json lists more hosts than the limit lets the daemon connect at once.
pub fn warning(hosts: usize) -> Option<String> {
    let fits = limit().saturating_sub(RESERVE);
    (hosts as u64 > fits).then(|| {
        format!(
            "hosts.json has {hosts} hosts but the open-file limit (RLIMIT_NOFILE {}) lets mcp-sshd \
             hold about {fits} connections at once; raise it (`ulimit -n`, LimitNOFILE= in a \
             systemd unit) before connecting to all of them",
            limit()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_should_keep_a_limit_and_count_open_descriptors() {
        let limit = super::raise_limit();
        assert!(limit >= 64);
        assert_eq!(super::limit(), limit);
        let open = super::open().expect("/proc/self/fd or /dev/fd");
        assert!(open >= 3 && open < limit, "{open}");
    }
}
