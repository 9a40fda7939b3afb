//! Test fixtures: a real OpenSSH sshd, the real mcp-sshd binary on a temporary socket, and the
//! programs under test located (and built when needed) in this workspace's target directory.

// Fixture code runs only inside tests, where a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod agent;
pub mod bins;
pub mod daemon;
pub mod rpc;
pub mod shim;
pub mod sshd;

pub use daemon::Daemon;
pub use sshd::{Sshd, SshdOptions, is_root, login_user};
