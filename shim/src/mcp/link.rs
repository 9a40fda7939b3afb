//! The shim's connection to the daemon: made on first use (so `initialize` never waits for it),
//! announcing the MCP client's name and version, and remade when the daemon went away.

use std::path::PathBuf;

use tokio::sync::Mutex;

use crate::client::{ClientError, ClientKind, ClientOptions, DaemonClient, Identity};

pub struct DaemonLink {
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    current: Mutex<Option<DaemonClient>>,
}

impl DaemonLink {
    pub fn new(socket: Option<PathBuf>, config: Option<PathBuf>) -> DaemonLink {
        DaemonLink {
            socket,
            config,
            current: Mutex::new(None),
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
