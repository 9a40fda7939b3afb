//! Protocol versions and the compatibility rule.
//!
//! The major version is the protobuf package (`mcpssh.v1`): a breaking change means a new
//! package. The minor version grows with additive changes. Same major means compatible.

/// Major protocol version: the `v1` in `mcpssh.v1`.
pub const PROTO_MAJOR: u32 = 1;
/// Minor protocol version: bumped for additive changes.
pub const PROTO_MINOR: u32 = 8;
/// The version of this build of mcp-ssh.
pub const PACKAGE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Optional features the daemon advertises in `HelloReply.capabilities`.
pub const CAPABILITIES: &[&str] = &[
    "exec",
    "probe",
    "disconnect",
    "reload",
    "watch-config",
    "jobs",
    "forwards",
];

/// Whether a peer speaking `peer_major` can talk to this build.
pub fn is_compatible(peer_major: u32) -> bool {
    peer_major == PROTO_MAJOR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_should_be_compatible() {
        assert!(is_compatible(PROTO_MAJOR));
        assert!(!is_compatible(PROTO_MAJOR + 1));
        assert!(!is_compatible(0));
    }
}
