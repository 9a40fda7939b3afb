//! The shim's connection to the daemon: made on first use (so `initialize` never waits for it),
//! announcing the MCP client's name and version, and remade when the daemon went away. While
//! connected it follows the daemon's configuration (host names change on reload).

use std::path::PathBuf;

use mcp_ssh_proto::pb;
use tokio::sync::{Mutex, watch};

use crate::client::{ClientError, ClientKind, ClientOptions, DaemonClient, Identity};

/// The daemon's configuration as the shim last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigView {
    pub generation: u64,
    pub host_names: Vec<String>,
    pub max_output_bytes: u32,
}

pub struct DaemonLink {
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    current: Mutex<Option<DaemonClient>>,
    view: watch::Sender<Option<ConfigView>>,
}

impl DaemonLink {
    pub fn new(socket: Option<PathBuf>, config: Option<PathBuf>) -> DaemonLink {
        DaemonLink {
            socket,
            config,
            current: Mutex::new(None),
            view: watch::Sender::new(None),
        }
    }

    /// Configuration changes heard from the daemon (`None` until connected).
    pub fn watch_config(&self) -> watch::Receiver<Option<ConfigView>> {
        self.view.subscribe()
    }

    /// Follows the daemon's configuration events until the daemon or the link goes away.
    async fn follow_config(client: DaemonClient, view: watch::Sender<Option<ConfigView>>) {
        let mut events = match client
            .daemon()
            .watch_config(pb::WatchConfigRequest {})
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(
                    "the daemon does not report configuration changes: {}",
                    status.message()
                );
                return;
            }
        };
        while let Ok(Some(event)) = events.message().await {
            view.send_replace(Some(ConfigView {
                generation: event.config_generation,
                host_names: event.host_names,
                max_output_bytes: event.max_output_bytes,
            }));
        }
    }

    pub fn config(&self) -> Option<&std::path::Path> {
        self.config.as_deref()
    }

    /// The connected client, connecting (and starting the daemon) when needed.
    pub async fn get(
        &self,
        client_name: &str,
        client_version: &str,
    ) -> Result<DaemonClient, ClientError> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref() {
            return Ok(client.clone());
        }
        let opts = ClientOptions {
            socket: self.socket.clone(),
            config: self.config.clone(),
            identity: Identity {
                kind: ClientKind::Shim,
                name: client_name.to_string(),
                version: client_version.to_string(),
                program: "mcp-ssh-shim",
            },
        };
        let client = DaemonClient::connect_or_start(&opts).await?;
        if let Some(mismatch) = client.config_mismatch(self.config.as_deref()) {
            tracing::warn!("{mismatch}");
        }
        tracing::info!(
            pid = client.hello.daemon_pid,
            version = %client.hello.daemon_version,
            "connected to mcp-sshd at {}", client.socket.socket.display()
        );
        tokio::spawn(Self::follow_config(client.clone(), self.view.clone()));
        *current = Some(client.clone());
        Ok(client)
    }

    /// Forgets the connection after a transport failure, so the next call reconnects (and
    /// restarts the daemon if it died).
    pub async fn reset(&self) {
        *self.current.lock().await = None;
    }
}

/// Whether a gRPC failure means the daemon itself is gone (not that the call failed): statuses
/// made from a local transport error carry that error as their source; the daemon's own never do.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// Whether a transport failure happened before any daemon could have received the call: nothing
/// listened on the socket (refused, or no socket file). Any other transport failure may have
/// come after the daemon accepted the call.
pub fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}
