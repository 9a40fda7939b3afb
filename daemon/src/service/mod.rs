//! The gRPC services: the only place that converts between protobuf types and the daemon's own.

mod exec;
mod files;
mod forwards;
mod jobs;
mod partials;

pub(crate) use exec::{authorize, check_command, command_record};
pub use partials::expire as expire_partials;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mcp_ssh_proto::pb;
use mcp_ssh_proto::version::{self, PROTO_MAJOR, PROTO_MINOR};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::forwards::Forwards;
use crate::jobs::Jobs;
use crate::listener::PeerInfo;
use crate::registry::{ClientRecord, ConnState, HostEntry, HostSnapshot, Registry};

/// The tonic servers of every service, in the order `lib.rs` adds them.
pub type Servers = (
    pb::daemon_server::DaemonServer<Service>,
    pb::hosts_server::HostsServer<Service>,
    pb::exec_server::ExecServer<Service>,
    pb::files_server::FilesServer<Service>,
    pb::jobs_server::JobsServer<Service>,
    pb::forwards_server::ForwardsServer<Service>,
);

#[derive(Clone)]
pub struct Service {
    registry: Arc<Registry>,
    jobs: Arc<Jobs>,
    forwards: Arc<Forwards>,
}

impl Service {
    pub fn new(registry: Arc<Registry>, jobs: Arc<Jobs>, forwards: Arc<Forwards>) -> Service {
        Service {
            registry,
            jobs,
            forwards,
        }
    }

    /// A host's state as `status`, `list_hosts` and `probe` report it.
    fn host_state(&self, host: &HostEntry, jobs_running: &HashMap<String, u32>) -> pb::HostState {
        let snapshot = host.snapshot();
        let forwards = self
            .forwards
            .list(Some(&snapshot.name))
            .into_iter()
            .map(forwards::forward_info)
            .collect();
        pb::HostState {
            forwards,
            ..host_state(snapshot, jobs_running)
        }
    }

    /// Servers for all services, ready for `Server::builder().add_service(..)`.
    pub fn servers(self) -> Servers {
        (
            pb::daemon_server::DaemonServer::new(self.clone()),
            pb::hosts_server::HostsServer::new(self.clone()),
            pb::exec_server::ExecServer::new(self.clone()),
            pb::files_server::FilesServer::new(self.clone()),
            pb::jobs_server::JobsServer::new(self.clone()),
            pb::forwards_server::ForwardsServer::new(self),
        )
    }

    fn refuse_when_shutting_down(&self) -> Result<(), Status> {
        if self.registry.shutdown_requested.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        Ok(())
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn host_state(s: HostSnapshot, jobs_running: &HashMap<String, u32>) -> pb::HostState {
    let state = match s.state {
        ConnState::Disconnected => pb::ConnectionState::Disconnected,
        ConnState::Connecting => pb::ConnectionState::Connecting,
        ConnState::Connected => pb::ConnectionState::Connected,
        ConnState::Failed => pb::ConnectionState::Failed,
    };
    pb::HostState {
        jobs_running: jobs_running.get(&s.name).copied().unwrap_or(0),
        forwards: Vec::new(),
        name: s.name,
        hostname: s.hostname,
        port: u32::from(s.port),
        username: s.username,
        state: state as i32,
        since_unix_ms: unix_ms(s.since),
        channels_in_use: s.channels_in_use,
        channel_limit: s.channel_limit,
        last_error: s.last_error.unwrap_or_default(),
        server_version: s.server_version,
        host_key_fingerprint: s.host_key_fingerprint,
        connections_opened: s.connections_opened,
        restricted: s.restricted,
        route: s.route.unwrap_or_default(),
        source: s.source,
    }
}

fn client_info(c: ClientRecord) -> pb::AttachedClient {
    pb::AttachedClient {
        client_id: c.id,
        kind: c.kind,
        name: c.name,
        version: c.version,
        pid: c.pid,
        attached_at_unix_ms: unix_ms(c.attached_at),
    }
}

pub(crate) fn peer<T>(req: &Request<T>) -> Option<PeerInfo> {
    req.extensions().get::<PeerInfo>().copied()
}

#[tonic::async_trait]
impl pb::daemon_server::Daemon for Service {
    async fn hello(
        &self,
        req: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloReply>, Status> {
        let peer = peer(&req);
        let hello = req.into_inner();
        if !version::is_compatible(hello.proto_major) {
            return Err(Error::Incompatible(format!(
                "mcp-sshd {} speaks protocol v{PROTO_MAJOR}, the client speaks v{}; restart the daemon \
                 with the matching version (`mcp-sshctl stop`, then retry)",
                version::PACKAGE_VERSION,
                hello.proto_major
            ))
            .into());
        }
        self.registry
            .agents
            .announce(std::path::PathBuf::from(&hello.ssh_auth_sock));
        let client_id = self.registry.attach_client(ClientRecord {
            id: 0,
            kind: hello.kind,
            name: if hello.client_name.is_empty() {
                "unknown".into()
            } else {
                hello.client_name
            },
            version: hello.client_version,
            pid: hello.pid,
            attached_at: SystemTime::now(),
            conn_id: peer.map(|p| p.conn_id).unwrap_or(0),
        });
        Ok(Response::new(pb::HelloReply {
            daemon_version: version::PACKAGE_VERSION.into(),
            proto_major: PROTO_MAJOR,
            proto_minor: PROTO_MINOR,
            capabilities: version::CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            daemon_pid: std::process::id(),
            started_at_unix_ms: unix_ms(self.registry.started_at),
            client_id,
            config_path: self.registry.config_path.display().to_string(),
            max_output_bytes: self.registry.settings().max_output_bytes,
            job_retention_secs: self.registry.settings().job_retention.as_secs(),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let r = &self.registry;
        let settings = r.settings();
        let (jobs_known, jobs_running, per_host) = self.jobs.counts();
        Ok(Response::new(pb::StatusReply {
            daemon_version: version::PACKAGE_VERSION.into(),
            pid: std::process::id(),
            started_at_unix_ms: unix_ms(r.started_at),
            uptime_ms: u64::try_from(r.started_at.elapsed().unwrap_or_default().as_millis())
                .unwrap_or(u64::MAX),
            socket_path: r.socket_path.display().to_string(),
            config_path: r.config_path.display().to_string(),
            hosts: r
                .hosts()
                .iter()
                .map(|h| self.host_state(h, &per_host))
                .collect(),
            clients: r.clients().into_iter().map(client_info).collect(),
            bastions: r
                .hops()
                .iter()
                .map(|h| self.host_state(h, &per_host))
                .collect(),
            partials: partials::kept_now(r),
            warnings: settings.warnings,
            proto_major: PROTO_MAJOR,
            proto_minor: PROTO_MINOR,
            config_generation: settings.generation,
            config_loaded_at_unix_ms: unix_ms(settings.loaded_at),
            config_error: settings.reload_error.unwrap_or_default(),
            calls_in_flight: r.calls_in_flight(),
            jobs_known,
            jobs_running,
        }))
    }

    async fn shutdown(
        &self,
        _req: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownReply>, Status> {
        tracing::info!("shutdown requested over the socket");
        self.registry.shutdown_requested.cancel();
        Ok(Response::new(pb::ShutdownReply {}))
    }

    async fn reload(
        &self,
        req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadReply>, Status> {
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let summary = self
            .registry
            .reload(&caller)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ReloadReply {
            config_generation: summary.generation,
            added: summary.added,
            removed: summary.removed,
            reconnecting: summary.reconnecting,
            updated: summary.updated,
            unchanged: summary.unchanged,
            warnings: summary.warnings,
        }))
    }

    type WatchConfigStream = ReceiverStream<Result<pb::ConfigEvent, Status>>;

    async fn watch_config(
        &self,
        _req: Request<pb::WatchConfigRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        let mut changes = self.registry.watch_config();
        let stop = self.registry.shutdown_requested.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let event = {
                    let event = changes.borrow_and_update();
                    pb::ConfigEvent {
                        config_generation: event.generation,
                        host_names: event.host_names.clone(),
                        max_output_bytes: event.max_output_bytes,
                    }
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    // Ending the stream lets the server finish draining at shutdown.
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl pb::hosts_server::Hosts for Service {
    async fn list_hosts(
        &self,
        _req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsReply>, Status> {
        let (_, _, per_host) = self.jobs.counts();
        let hosts = self
            .registry
            .hosts()
            .iter()
            .map(|h| self.host_state(h, &per_host))
            .collect();
        let groups = self
            .registry
            .settings()
            .groups
            .iter()
            .map(|(name, hosts)| pb::HostGroup {
                name: name.clone(),
                hosts: hosts.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListHostsReply { hosts, groups }))
    }

    async fn probe(
        &self,
        req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        self.refuse_when_shutting_down()?;
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        // Bastions too, so that doctor can check every hop on the way to a host.
        let host = self.registry.host_or_bastion(&req.into_inner().host)?;
        host.connection(&caller).await?;
        Ok(Response::new(pb::ProbeReply {
            host: Some(self.host_state(&host, &self.jobs.counts().2)),
        }))
    }

    async fn disconnect(
        &self,
        req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectReply>, Status> {
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let who = caller
            .as_ref()
            .map(|c| format!("{} (pid {})", c.name, c.pid))
            .unwrap_or_else(|| "a client".into());
        let host = self.registry.host(&req.into_inner().host)?;
        let (was_connected, busy) = host
            .disconnect(&caller, &format!("disconnected at the request of {who}"))
            .await;
        Ok(Response::new(pb::DisconnectReply {
            was_connected,
            interrupted_calls: busy,
        }))
    }
}
