//! The boundary to russh: the only module tree in the workspace that talks SSH.
//!
//! - [`connection`]: TCP, key exchange, host key verdict, authentication, channel budget.
//! - [`auth`]: the OpenSSH-like order of credentials to try.
//! - [`known_hosts`]: host key verification against OpenSSH's files.
//! - [`exec`]: one remote command on a channel, with inactivity timeout and remote stopping.
//! - [`route`]: the way to the host: TCP, a bastion's `direct-tcpip` channel, or a local
//!   `proxy_command`'s stdio.
//! - [`read_ahead`]: one system call for the SSH packets that have arrived, not two each.
//! - [`forward`]: direct-tcpip channels (`-L`) and remote listeners (`-R`) for port forwards.
//! - [`job`]: jobs supervised on the host: the start, probe, kill and removal scripts.
//! - [`sftp`], [`transfer`]: atomic, pipelined uploads and downloads over SFTP; [`pending`]:
//!   their remote temporary files awaiting removal.

mod auth;
pub mod connection;
pub mod exec;
pub mod forward;
pub mod job;
pub mod known_hosts;
pub mod pending;
mod read_ahead;
pub mod route;
pub mod sftp;
pub mod transfer;
pub mod tree;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::AgentSockets;
pub use connection::Connection;
pub use exec::{ExecOutcome, ExecRequest, Output, StopOutcome};

/// An I/O error in words: without the " (os error 111)" the standard library appends.
pub fn io_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Everything that can go wrong talking to a host. Messages name the host and say what to do;
/// none of them ever contains a password or passphrase.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {target}: {}", io_text(source))]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error(
        "connecting to {target} timed out after {secs} s ({stage}); check the hostname, port and network (connect_timeout)"
    )]
    ConnectTimeout {
        target: String,
        secs: u64,
        stage: &'static str,
    },
    #[error(
        "host key of {host} ({target}) is not known: the server offered {algorithm} key {fingerprint}. \
         If you trust it, add it by connecting once with `{ssh_command}` (or `{keyscan} >> {known_hosts}`), \
         or set \"host_key_policy\": \"accept-new\" for this host to trust its first key (a changed key is still refused)"
    )]
    HostKeyUnknown {
        host: String,
        target: String,
        algorithm: String,
        fingerprint: String,
        ssh_command: String,
        /// `ssh-keyscan` for the host, run where it is reachable from.
        keyscan: String,
        known_hosts: String,
    },
    #[error(
        "HOST KEY CHANGED for {host} ({target}): the server offered {algorithm} key {fingerprint}, \
         which does not match line {line} of {path}. Someone may be intercepting the connection, or the \
         server was reinstalled. If you are sure the change is expected, remove the old key with \
         `ssh-keygen -R '{pattern}' -f {path}` and connect once again"
    )]
    HostKeyChanged {
        host: String,
        target: String,
        algorithm: String,
        fingerprint: String,
        path: String,
        line: usize,
        pattern: String,
    },
    #[error(
        "host key of {host} ({target}) {fingerprint} is marked @revoked at line {line} of {path}; refusing to connect"
    )]
    HostKeyRevoked {
        host: String,
        target: String,
        fingerprint: String,
        path: String,
        line: usize,
    },
    #[error("Identity file not found: {0}")]
    IdentityNotFound(PathBuf),
    #[error("cannot read identity file {path}: {reason}")]
    IdentityUnreadable { path: PathBuf, reason: String },
    #[error("authentication failed for {target} (tried: {tried}){hint}")]
    AuthFailed {
        target: String,
        tried: String,
        hint: String,
    },
    #[error(
        "cannot connect to {target}: mcp-sshd's open files would come within 64 of its limit of \
         {limit} (RLIMIT_NOFILE); raise it (`ulimit -n`, LimitNOFILE= in a systemd unit) or lower fanout"
    )]
    FileLimit { target: String, limit: u64 },
    #[error("cannot reach {target} through its proxy_command: {reason}")]
    ProxyCommand { target: String, reason: String },
    /// The bastion (`proxy_jump`) could not be reached, or could not reach the host.
    #[error("cannot reach {target} through bastion {bastion}: {reason}")]
    Jump {
        target: String,
        bastion: String,
        reason: String,
    },
    #[error("SSH error with {target}: {message}")]
    Protocol { target: String, message: String },
    /// Closed before the server's SSH banner, on every attempt.
    #[error(
        "SSH error with {target}: the connection closed before the SSH handshake ({reason}): is port \
         {port} an SSH server, or is its sshd turning new connections away (MaxStartups)? \
         (`mcp-sshctl doctor` checks)"
    )]
    NoHandshake {
        target: String,
        port: u16,
        reason: String,
    },
    #[error("connection to {target} lost: {reason}")]
    ConnectionLost { target: String, reason: String },
    #[error(
        "the login shell on {target} did not run the command; mcp-ssh needs a POSIX shell (sh, bash, \
         dash, zsh, ksh) as the login shell, not fish, nologin or a restricted shell (change it with chsh){said}"
    )]
    LoginShell {
        target: String,
        /// What the shell printed, as ". The shell said: …", or empty.
        said: String,
    },
    #[error("could not open a channel to {target}: {reason}")]
    ChannelOpen { target: String, reason: String },
    /// A forwarded connection the host could not make (nothing listening, no answer).
    #[error("forward through {host}: {reason}")]
    Forward { host: String, reason: String },
    /// The host's sshd does not allow forwarding there.
    #[error("forward through {host} refused: {reason}")]
    ForwardProhibited { host: String, reason: String },
    #[error("{target} did not answer within {secs} s")]
    HostTimeout { target: String, secs: u64 },
    #[error("command produced no output for {} s (inactivity timeout) and was stopped: {stop}", idle.as_secs())]
    InactivityTimeout { idle: Duration, stop: StopOutcome },
    #[error("command cancelled ({why}): {stop}")]
    Cancelled {
        why: &'static str,
        stop: StopOutcome,
    },
    #[error("{message}")]
    Transfer {
        kind: transfer::TransferKind,
        message: String,
    },
}

impl SshError {
    /// Whether the command may have started on the remote side (such calls are never retried).
    pub fn may_have_run(&self) -> bool {
        matches!(
            self,
            SshError::ConnectionLost { .. }
                | SshError::InactivityTimeout { .. }
                | SshError::Cancelled { .. }
        )
    }
}
