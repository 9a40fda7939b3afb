//! A typed client of mcp-sshd over its Unix socket: connect, handshake, and (optionally) start the
//! daemon when none answers.

mod autostart;

use std::path::{Path, PathBuf};
use std::time::Duration;

use mcp_ssh_proto::paths::{self, PathError, SocketLocation};
use mcp_ssh_proto::pb;
use mcp_ssh_proto::version::{self, PROTO_MAJOR, PROTO_MINOR};
use tonic::transport::{Channel, Endpoint};

pub use autostart::daemon_program;
pub use pb::ClientKind;

/// How long one attempt to reach the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("mcp-sshd is not running (no daemon answers at {})", .0.display())]
    NotRunning(PathBuf),
    #[error(
        "mcp-sshd {daemon_version} (protocol v{daemon_major}) is incompatible with this {program} {ours} \
         (protocol v{PROTO_MAJOR}); restart the daemon so it matches: `mcp-sshctl stop` (this ends its SSH \
         sessions), then retry"
    )]
    Incompatible {
        daemon_version: String,
        daemon_major: u32,
        program: String,
        ours: &'static str,
    },
    #[error("mcp-sshd could not be started: {reason} (daemon log: {})", log.display())]
    StartFailed { reason: String, log: PathBuf },
    #[error("{}", .0.message())]
    Rpc(#[from] tonic::Status),
}

/// Who we are, for the daemon's client list and audit log.
#[derive(Debug, Clone)]
pub struct Identity {
    pub kind: ClientKind,
    /// The MCP client's name (e.g. "claude-code") or the program name.
    pub name: String,
    pub version: String,
    /// The program itself, e.g. "mcp-ssh-shim".
    pub program: &'static str,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `--socket`, when given.
    pub socket: Option<PathBuf>,
    /// `--config`, when given: handed to a daemon we start.
    pub config: Option<PathBuf>,
    pub identity: Identity,
}

/// A connected, handshaken client.
#[derive(Clone)]
pub struct DaemonClient {
    channel: Channel,
    pub hello: pb::HelloReply,
    pub socket: SocketLocation,
}

impl DaemonClient {
    /// Connects to a running daemon; never starts one.
    pub async fn connect(opts: &ClientOptions) -> Result<DaemonClient, ClientError> {
        let socket = paths::resolve_socket(opts.socket.as_deref())?;
        Self::connect_at(&socket, &opts.identity).await
    }

    /// Connects, starting the daemon first when none answers (race-free across clients).
    pub async fn connect_or_start(opts: &ClientOptions) -> Result<DaemonClient, ClientError> {
        let socket = paths::resolve_socket(opts.socket.as_deref())?;
        match Self::connect_at(&socket, &opts.identity).await {
            Err(ClientError::NotRunning(_)) => {}
            other => return other,
        }
        autostart::start(&socket, opts.config.as_deref()).await?;
        Self::connect_at(&socket, &opts.identity).await
    }

    async fn connect_at(
        socket: &SocketLocation,
        identity: &Identity,
    ) -> Result<DaemonClient, ClientError> {
        let channel = open_channel(socket).await?;
        let mut daemon = pb::daemon_client::DaemonClient::new(channel.clone());
        let request = pb::HelloRequest {
            kind: identity.kind as i32,
            client_name: identity.name.clone(),
            client_version: identity.version.clone(),
            proto_major: PROTO_MAJOR,
            proto_minor: PROTO_MINOR,
            pid: std::process::id(),
            config_path: String::new(),
            program_version: version::PACKAGE_VERSION.into(),
            ssh_auth_sock: std::env::var("SSH_AUTH_SOCK").unwrap_or_default(),
        };
        let hello = match daemon.hello(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                return Err(ClientError::NotRunning(socket.socket.clone()));
            }
            // A daemon of another major version does not serve our package at all.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                return Err(ClientError::Incompatible {
                    daemon_version: "unknown".into(),
                    daemon_major: 0,
                    program: identity.program.into(),
                    ours: version::PACKAGE_VERSION,
                });
            }
            Err(status) => return Err(status.into()),
        };
        if !version::is_compatible(hello.proto_major) {
            return Err(ClientError::Incompatible {
                daemon_version: hello.daemon_version,
                daemon_major: hello.proto_major,
                program: identity.program.into(),
                ours: version::PACKAGE_VERSION,
            });
        }
        Ok(DaemonClient {
            channel,
            hello,
            socket: socket.clone(),
        })
    }

    /// The underlying gRPC channel (for calls the generated clients do not cover).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn daemon(&self) -> pb::daemon_client::DaemonClient<Channel> {
        pb::daemon_client::DaemonClient::new(self.channel.clone())
    }

    pub fn hosts(&self) -> pb::hosts_client::HostsClient<Channel> {
        pb::hosts_client::HostsClient::new(self.channel.clone())
    }

    pub fn exec(&self) -> pb::exec_client::ExecClient<Channel> {
        pb::exec_client::ExecClient::new(self.channel.clone())
    }

    pub fn files(&self) -> pb::files_client::FilesClient<Channel> {
        pb::files_client::FilesClient::new(self.channel.clone())
    }

    pub fn jobs(&self) -> pb::jobs_client::JobsClient<Channel> {
        pb::jobs_client::JobsClient::new(self.channel.clone())
    }

    pub fn forwards(&self) -> pb::forwards_client::ForwardsClient<Channel> {
        pb::forwards_client::ForwardsClient::new(self.channel.clone())
    }

    /// The config the daemon serves, if it differs from the one this client was told to use.
    pub fn config_mismatch(&self, wanted: Option<&Path>) -> Option<String> {
        let wanted = paths::resolve_config(wanted);
        let serving = Path::new(&self.hello.config_path);
        (serving != wanted).then(|| {
            format!(
                "the running mcp-sshd (pid {}) serves {}, not {}; to switch, run `mcp-sshctl stop` and retry",
                self.hello.daemon_pid,
                serving.display(),
                wanted.display()
            )
        })
    }
}

/// Opens a gRPC channel over the Unix socket, after checking that its directory is private and
/// ours (a planted symlink or another user's directory is refused, not followed).
async fn open_channel(socket: &SocketLocation) -> Result<Channel, ClientError> {
    match std::fs::symlink_metadata(socket.dir()) {
        Err(_) => return Err(ClientError::NotRunning(socket.socket.clone())),
        Ok(_) => paths::check_private_dir(socket.dir())?,
    }
    if std::fs::symlink_metadata(&socket.socket).is_err() {
        return Err(ClientError::NotRunning(socket.socket.clone()));
    }
    let endpoint = Endpoint::from_shared(format!("unix:{}", socket.socket.display()))
        .map_err(|e| ClientError::Rpc(tonic::Status::internal(format!("bad socket path: {e}"))))?
        .connect_timeout(CONNECT_TIMEOUT);
    endpoint
        .connect()
        .await
        .map_err(|_| ClientError::NotRunning(socket.socket.clone()))
}

/// A local path as the user meant it: `~` expanded, relative paths taken from `cwd` (the
/// directory the client was started in; the daemon's own is meaningless to the user).
pub fn resolve_local_path(path: &str, cwd: &Path) -> PathBuf {
    let home = || directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
    let expanded = match path {
        "~" => home().unwrap_or_else(|| PathBuf::from(path)),
        p => match (p.strip_prefix("~/"), home()) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => PathBuf::from(p),
        },
    };
    if expanded.is_absolute() {
        expanded
    } else {
        cwd.join(expanded)
    }
}

/// A host's connection state as people read it.
pub fn state_name(state: i32) -> &'static str {
    match pb::ConnectionState::try_from(state).unwrap_or(pb::ConnectionState::Unspecified) {
        pb::ConnectionState::Connected => "connected",
        pb::ConnectionState::Connecting => "connecting",
        pb::ConnectionState::Failed => "failed",
        pb::ConnectionState::Disconnected | pb::ConnectionState::Unspecified => "disconnected",
    }
}
