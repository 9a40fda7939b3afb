//! The daemon client library shared by `mcp-ssh-shim` and `mcp-sshctl`, and the shim's MCP layer.
//! Nothing here depends on russh: the shim is spawned by every AI client and stays small.

pub mod client;
pub mod mcp;
