//! The gRPC services: the only place that converts between protobuf types and the daemon's own.

mod files;
mod forwards;
mod jobs;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_ssh_proto::pb::{self, run_event};
use mcp_ssh_proto::version::{self, PROTO_MAJOR, PROTO_MINOR};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::{Audit, BatchRef, ClientRef, Record};
use crate::config::HostConfig;
use crate::error::Error;
use crate::forwards::Forwards;
use crate::jobs::Jobs;
use crate::listener::PeerInfo;
use crate::registry::{ClientRecord, ConnState, HostEntry, HostSnapshot, Registry, millis};
use crate::ssh::{ExecRequest, Output, SshError};

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
        Ok(Response::new(pb::ListHostsReply { hosts }))
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

#[tonic::async_trait]
impl pb::exec_server::Exec for Service {
    type RunStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn run(&self, req: Request<pb::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        self.refuse_when_shutting_down()?;
        let conn_id = peer(&req).map(|p| p.conn_id);
        let caller = self.registry.caller(conn_id);
        let req = req.into_inner();
        let host = self.registry.host(&req.host)?;
        check_command(&req.command, &req.cwd)?;
        // One view of the host's settings for the whole call, even if a reload lands meanwhile.
        let config = host.config();
        let audit = self.registry.audit.clone();
        let batch = req.batch.map(|b| BatchRef {
            id: b.id,
            index: b.index,
            size: b.size,
        });
        let record = |action, outcome| Record {
            action,
            outcome,
            batch: batch.clone(),
            ..command_record(&config, &caller, &req.command, &req.cwd)
        };
        let command = authorize(&audit, &config, &req.command, record("command", "refused"))?;
        tracing::debug!(host = %config.name, command = %audit.scrub(&command), "exec");
        audit.record(record("command_started", "started"));
        let finished = record("command_finished", "ok");
        let idle_timeout = match req.timeout_secs {
            0 => config.command_timeout,
            secs => Duration::from_secs(u64::from(secs)),
        };
        let exec = ExecRequest {
            command,
            cwd: (!req.cwd.is_empty()).then_some(req.cwd),
            idle_timeout,
        };
        let shutdown = self.registry.shutdown_now.clone();
        let (tx, rx) = mpsc::channel(32);
        let in_flight = self.registry.call_started();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let started = std::time::Instant::now();
            let (result, bytes) = forward_exec(&host, &caller, &exec, &shutdown, &tx).await;
            let mut finished = Record {
                bytes: Some(bytes),
                duration_ms: Some(millis(started.elapsed())),
                ..finished
            };
            let last = match result {
                Ok(outcome) => {
                    finished.exit_code = outcome.code;
                    finished.signal = outcome.signal.clone();
                    Ok(pb::RunEvent {
                        event: Some(run_event::Event::Exit(pb::Exit {
                            code: outcome.code,
                            signal: outcome.signal.unwrap_or_default(),
                            core_dumped: outcome.core_dumped,
                            duration_ms: millis(outcome.duration),
                        })),
                    })
                }
                Err(e) => {
                    finished.outcome = "error";
                    finished.error = Some(e.to_string());
                    if let Error::Ssh(ssh) = &e
                        && let SshError::Cancelled { stop, .. } = ssh.as_ref()
                    {
                        // The stream ends the same way when the client cancels the call and when
                        // the client itself is gone; its socket connection tells them apart.
                        finished.outcome = "cancelled";
                        let client = conn_id.and_then(|id| registry.client_for_connection(id));
                        finished.error = Some(match client {
                            Some(c) => format!("cancelled by {} (pid {}): {stop}", c.name, c.pid),
                            None if shutdown.is_cancelled() => {
                                format!("stopped: mcp-sshd is shutting down: {stop}")
                            }
                            None => format!("the client disconnected during the call: {stop}"),
                        });
                    }
                    Err(Status::from(e))
                }
            };
            audit.record(finished);
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The audit record of a command (or job) `caller` asked `config`'s host to run; callers set
/// `action` and `outcome`.
pub(crate) fn command_record(
    config: &HostConfig,
    caller: &Option<ClientRef>,
    command: &str,
    cwd: &str,
) -> Record {
    Record {
        host: Some(config.name.clone()),
        client: caller.clone(),
        command: Some(command.to_string()),
        cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
        ..Record::default()
    }
}

/// Refuses commands and working directories no shell could be given.
pub(crate) fn check_command(command: &str, cwd: &str) -> Result<(), Status> {
    if command.trim().is_empty() {
        return Err(Error::InvalidArgument("command must not be empty".into()).into());
    }
    if command.contains('\0') || cwd.contains('\0') {
        return Err(
            Error::InvalidArgument("command and cwd must not contain NUL bytes".into()).into(),
        );
    }
    Ok(())
}

/// `allowed_commands`: the one check every command passes, however it reaches a host (exec,
/// jobs). Returns what to send: the command re-quoted from its parsed words when the host has a
/// policy. A refusal is audited as `refused`, completed with the error.
pub(crate) fn authorize(
    audit: &Audit,
    config: &HostConfig,
    command: &str,
    refused: Record,
) -> Result<String, Status> {
    let Some(policy) = &config.policy else {
        return Ok(command.to_string());
    };
    policy.check(command).map_err(|refusal| {
        let error = Error::Refused {
            host: config.name.clone(),
            reason: refusal.to_string(),
            allowed: policy.describe(),
        };
        audit.record(Record {
            error: Some(error.to_string()),
            ..refused
        });
        error.into()
    })
}

/// Runs the command and forwards its output to the caller's stream as it arrives. If the caller
/// goes away, closes the output channel so the command sees it and is stopped remotely.
/// Returns the outcome and the number of output bytes.
async fn forward_exec(
    host: &HostEntry,
    caller: &Option<ClientRef>,
    exec: &ExecRequest,
    shutdown: &tokio_util::sync::CancellationToken,
    tx: &mpsc::Sender<Result<pb::RunEvent, Status>>,
) -> (Result<crate::ssh::ExecOutcome, Error>, u64) {
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(32);
    let on_started = |connected_now| {
        let started = pb::RunEvent {
            event: Some(run_event::Event::Started(pb::Started { connected_now })),
        };
        let _ = tx.try_send(Ok(started));
    };
    let mut bytes = 0u64;
    let mut caller_gone = false;
    let run = host.exec(caller, exec, &out_tx, shutdown, on_started);
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Some(out) = out_rx.recv() => {
                bytes += out.len() as u64;
                if tx.send(Ok(output_event(out))).await.is_err() {
                    caller_gone = true;
                    out_rx.close();
                }
            }
            () = tx.closed(), if !caller_gone => {
                tracing::debug!("caller dropped the exec stream; stopping the command");
                caller_gone = true;
                out_rx.close();
            }
        }
    };
    // The command is over and the sender is no longer in use: drain what is left.
    out_rx.close();
    while let Some(out) = out_rx.recv().await {
        bytes += out.len() as u64;
        let _ = tx.send(Ok(output_event(out))).await;
    }
    (result, bytes)
}

fn output_event(out: Output) -> pb::RunEvent {
    let event = match out {
        Output::Stdout(data) => run_event::Event::Stdout(data),
        Output::Stderr(data) => run_event::Event::Stderr(data),
    };
    pb::RunEvent { event: Some(event) }
}
