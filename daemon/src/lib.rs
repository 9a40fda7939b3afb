//! mcp-sshd: the per-user daemon that owns SSH connections and serves them over gRPC on a
//! private Unix socket. `main.rs` only parses arguments and sets up logging; [`run`] is the daemon.

pub mod audit;
pub mod config;
pub mod error;
pub mod fds;
pub mod forwards;
pub mod jobs;
pub mod listener;
pub mod partials;
pub mod policy;
pub mod registry;
pub mod service;
pub mod ssh;
pub mod ssh_config;
mod startups;
mod state_file;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcp_ssh_proto::paths::SocketLocation;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::registry::Registry;

/// How long in-flight calls get to finish after a shutdown request before they are stopped.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long stopped calls get to report back after the grace period.
const STOP_WAIT: Duration = Duration::from_secs(12);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    #[error("{0}")]
    Audit(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot watch SIGHUP: {0}")]
    Signal(std::io::Error),
}

pub struct Options {
    pub config: Config,
    pub socket: SocketLocation,
    pub grace: Duration,
    /// A listening socket handed over by systemd (socket activation); we then neither bind nor
    /// remove the socket, systemd owns it.
    pub activated: Option<std::os::unix::net::UnixListener>,
}

/// SIGHUP re-reads hosts.json, as `mcp-sshctl reload` does (and the conventional way for
/// service managers and scripts).
fn reload_on_sighup(registry: Arc<Registry>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!(
                "SIGHUP received: reloading {}",
                registry.config_path.display()
            );
            // The outcome is logged, audited and shown by `status`.
            let _ = registry.reload(&None).await;
        }
    });
    Ok(())
}

/// Runs the daemon until `shutdown` fires (or a client calls Shutdown), then drains: in-flight
/// calls get `grace` to finish, are then stopped remotely, SSH connections are closed and the
/// socket is removed.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let activated = opts.activated.is_some();
    let (_lock, listener, socket_path) = match opts.activated {
        Some(std_listener) => {
            let (lock, listener, path) = listener::adopt(std_listener)?;
            if path != opts.socket.socket {
                tracing::warn!(
                    "systemd passed socket {} but clients compute {}; set MCP_SSH_SOCKET for them",
                    path.display(),
                    opts.socket.socket.display()
                );
            }
            (lock, listener, path)
        }
        None => {
            let (lock, listener) = listener::listen(&opts.socket)?;
            (lock, listener, opts.socket.socket.clone())
        }
    };
    let socket_path: PathBuf = socket_path;
    for warning in &opts.config.warnings {
        tracing::warn!("{warning}");
    }
    let registry =
        Arc::new(Registry::new(opts.config, socket_path.clone()).map_err(DaemonError::Audit)?);
    tracing::info!(
        pid = std::process::id(),
        socket = %socket_path.display(),
        config = %registry.config_path.display(),
        hosts = registry.hosts().len(),
        "mcp-sshd {} ready", mcp_ssh_proto::version::PACKAGE_VERSION
    );

    reload_on_sighup(registry.clone())?;
    service::expire_partials(&registry);

    let detach = {
        let registry = registry.clone();
        Arc::new(move |conn_id| registry.detach_connection(conn_id))
            as Arc<dyn Fn(u64) + Send + Sync>
    };
    let incoming = listener::accept_own_uid(listener, detach);
    let mut jobs_file = socket_path.clone().into_os_string();
    jobs_file.push(".jobs.json");
    let jobs = jobs::Jobs::open(registry.clone(), Some(PathBuf::from(jobs_file)));
    jobs.spawn_monitor(registry.shutdown_requested.clone());
    let forwards = forwards::Forwards::new(registry.clone());
    let (daemon, hosts, exec, files, job_service, forward_service) =
        service::Service::new(registry.clone(), jobs, forwards.clone()).servers();
    let stop_accepting = registry.shutdown_requested.clone();
    let server = tonic::transport::Server::builder()
        .add_service(daemon)
        .add_service(hosts)
        .add_service(exec)
        .add_service(files)
        .add_service(job_service)
        .add_service(forward_service)
        .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
    let mut server = tokio::spawn(server);
    // Type=notify services: ready once the server is accepting (a no-op without NOTIFY_SOCKET).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    tokio::select! {
        () = shutdown.cancelled() => stop_accepting.cancel(),
        () = stop_accepting.cancelled() => {}
        result = &mut server => {
            // The server only ends on its own when it failed.
            if !activated {
                listener::remove_socket(&socket_path);
            }
            return match result {
                Ok(r) => r.map_err(DaemonError::from),
                Err(join) => {
                    tracing::error!("server task failed: {join}");
                    Ok(())
                }
            };
        }
    }
    tracing::info!(
        "shutting down: waiting up to {} s for in-flight calls",
        opts.grace.as_secs()
    );
    if tokio::time::timeout(opts.grace, &mut server).await.is_err() {
        tracing::info!("grace period over: stopping in-flight commands");
        registry.shutdown_now.cancel();
        if tokio::time::timeout(STOP_WAIT, &mut server).await.is_err() {
            server.abort();
        }
    }
    forwards.close_all("mcp-sshd stopped");
    registry.close_all().await;
    if !activated {
        listener::remove_socket(&socket_path);
    }
    tracing::info!("mcp-sshd stopped");
    Ok(())
}
