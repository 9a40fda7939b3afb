//! The daemon's error type and its one mapping to gRPC status codes.

use std::path::PathBuf;

use tonic::{Code, Status};

use crate::ssh::SshError;
use crate::ssh::transfer::TransferKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown host {name:?}: hosts configured in {}: {}", config.display(), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownHost {
        name: String,
        known: Vec<String>,
        config: PathBuf,
    },
    #[error(transparent)]
    Ssh(Box<SshError>),
    #[error("mcp-sshd is shutting down; retry in a moment")]
    ShuttingDown,
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "command refused by the allowed_commands of host {host}: {reason}. Allowed on this host: {allowed}"
    )]
    Refused {
        host: String,
        reason: String,
        allowed: String,
    },
    #[error("{0}")]
    Incompatible(String),
    #[error("no job {0:?} (ssh_jobs lists the jobs; ids look like host/1a2b3c)")]
    UnknownJob(String),
    #[error("job {0} is still running: kill it first (ssh_job_kill)")]
    JobRunning(String),
    #[error("{0}")]
    JobFailed(String),
    #[error("forward refused for host {host}: {reason}")]
    ForwardRefused { host: String, reason: String },
    #[error("no forward {id:?}; open forwards: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownForward { id: String, known: Vec<String> },
    #[error(
        "host {host} is unreachable: {reason} ({} s ago); mcp-sshd tries again in {} s (or now, after ssh_disconnect)",
        ago.as_secs(), retry_in.as_secs().max(1)
    )]
    Unreachable {
        host: String,
        reason: String,
        ago: std::time::Duration,
        retry_in: std::time::Duration,
    },
}

impl From<SshError> for Error {
    fn from(e: SshError) -> Error {
        Error::Ssh(Box::new(e))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl Error {
    /// The gRPC status code this error is sent with.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownHost { .. } => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Refused { .. } => Code::PermissionDenied,
            Error::ShuttingDown | Error::Unreachable { .. } => Code::Unavailable,
            Error::Incompatible(_) | Error::JobRunning(_) => Code::FailedPrecondition,
            Error::UnknownJob(_) | Error::UnknownForward { .. } => Code::NotFound,
            Error::ForwardRefused { .. } => Code::PermissionDenied,
            Error::JobFailed(_) => Code::Aborted,
            Error::Ssh(ssh) => match ssh.as_ref() {
                SshError::Connect { .. }
                | SshError::ProxyCommand { .. }
                | SshError::Jump { .. }
                | SshError::ConnectTimeout { .. }
                | SshError::Protocol { .. }
                | SshError::NoHandshake { .. }
                | SshError::ConnectionLost { .. } => Code::Unavailable,
                SshError::HostKeyUnknown { .. }
                | SshError::HostKeyChanged { .. }
                | SshError::HostKeyRevoked { .. }
                | SshError::IdentityNotFound(_)
                | SshError::IdentityUnreadable { .. }
                | SshError::LoginShell { .. } => Code::FailedPrecondition,
                SshError::AuthFailed { .. } => Code::Unauthenticated,
                SshError::ChannelOpen { .. } | SshError::FileLimit { .. } => {
                    Code::ResourceExhausted
                }
                SshError::Forward { .. } => Code::FailedPrecondition,
                SshError::ForwardProhibited { .. } => Code::PermissionDenied,
                SshError::InactivityTimeout { .. } | SshError::HostTimeout { .. } => {
                    Code::DeadlineExceeded
                }
                SshError::Cancelled { .. } => Code::Cancelled,
                SshError::Transfer { kind, .. } => match kind {
                    TransferKind::NotFound => Code::NotFound,
                    TransferKind::PermissionDenied => Code::PermissionDenied,
                    TransferKind::NoSpace | TransferKind::TooLarge => Code::ResourceExhausted,
                    TransferKind::Timeout => Code::DeadlineExceeded,
                    TransferKind::Cancelled => Code::Cancelled,
                    TransferKind::Other => Code::Internal,
                },
            },
        }
    }
}

impl Error {
    /// What kind of failure this is, in a word or two, for calls over many hosts to fold hosts
    /// that failed alike. "connection lost" is kept apart: the command may have run.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Refused { .. } => "refused",
            Error::Unreachable { .. } | Error::ShuttingDown => "unreachable",
            Error::Ssh(ssh) => match ssh.as_ref() {
                SshError::Connect { .. }
                | SshError::ProxyCommand { .. }
                | SshError::Jump { .. }
                | SshError::ConnectTimeout { .. }
                | SshError::Protocol { .. }
                | SshError::NoHandshake { .. } => "unreachable",
                SshError::ConnectionLost { .. } => "connection lost",
                SshError::HostKeyUnknown { .. }
                | SshError::HostKeyChanged { .. }
                | SshError::HostKeyRevoked { .. } => "host key",
                SshError::AuthFailed { .. }
                | SshError::IdentityNotFound(_)
                | SshError::IdentityUnreadable { .. } => "authentication",
                SshError::InactivityTimeout { .. } | SshError::HostTimeout { .. } => "timed out",
                SshError::Cancelled { .. } => "cancelled",
                SshError::FileLimit { .. } => "file limit",
                _ => "error",
            },
            _ => "error",
        }
    }
}
