//! The wire contract shared by `mcp-sshd`, `mcp-ssh-shim` and `mcp-sshctl`: the generated gRPC
//! types, the protocol version rule, and the socket path rule. Anything every binary must agree
//! on lives here and nowhere else.

pub mod paths;
pub mod version;

/// Generated protobuf and gRPC types (package `mcpssh.v1`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("mcpssh.v1");
}
