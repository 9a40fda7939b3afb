//! The daemon's live state: configured hosts with their connections, and attached clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, ClientRef, Record};
use crate::config::{Config, HostConfig};
use crate::error::Error;
use crate::ssh::connection::lock;
use crate::ssh::transfer::{self, PendingTemps, Progress, TransferOutcome, TransferSpec};
use crate::ssh::{self, Connection, ExecOutcome, ExecRequest, Output};

/// Connection state as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Disconnected,
    Connecting,
    Connected,
    Failed,
}

/// A point-in-time view of one host, safe to show (no secrets).
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    pub name: String,
    pub hostname: String,
    pub port: u16,
    pub username: String,
    pub state: ConnState,
    pub since: SystemTime,
    pub channels_in_use: u32,
    pub channel_limit: u32,
    pub last_error: Option<String>,
    pub server_version: String,
    pub host_key_fingerprint: String,
    pub connections_opened: u64,
    pub restricted: bool,
}

struct HostStatus {
    conn: Option<Arc<Connection>>,
    state: ConnState,
    since: SystemTime,
    last_error: Option<String>,
    connections_opened: u64,
}

/// One configured host and its (lazily opened) connection.
pub struct HostEntry {
    pub config: Arc<HostConfig>,
    status: Mutex<HostStatus>,
    /// Serializes connection attempts, so concurrent first calls share one connection.
    connecting: tokio::sync::Mutex<()>,
    audit: Arc<Audit>,
    /// Remote temporary files of uploads cut off with their connection, removed on reconnect.
    pending: PendingTemps,
}

impl HostEntry {
    fn new(config: HostConfig, audit: Arc<Audit>) -> HostEntry {
        HostEntry {
            audit,
            config: Arc::new(config),
            status: Mutex::new(HostStatus {
                conn: None,
                state: ConnState::Disconnected,
                since: SystemTime::now(),
                last_error: None,
                connections_opened: 0,
            }),
            connecting: tokio::sync::Mutex::new(()),
            pending: PendingTemps::default(),
        }
    }

    fn live_connection(&self) -> Option<Arc<Connection>> {
        lock(&self.status).conn.clone().filter(|c| c.is_alive())
    }

    /// The host's connection, opened now if there is none. The bool is true when this call
    /// opened it. A dead connection is replaced; nothing that may have run is retried.
    pub async fn connection(
        &self,
        caller: &Option<ClientRef>,
    ) -> Result<(Arc<Connection>, bool), Error> {
        if let Some(conn) = self.live_connection() {
            return Ok((conn, false));
        }
        let _guard = self.connecting.lock().await;
        if let Some(conn) = self.live_connection() {
            return Ok((conn, false));
        }
        self.note_lost_connection();
        self.set_state(ConnState::Connecting, None);
        let started = std::time::Instant::now();
        let opened = Connection::open(self.config.clone(), self.audit.clone()).await;
        self.audit.record(Record {
            action: "connect",
            outcome: if opened.is_ok() { "ok" } else { "error" },
            host: Some(self.config.name.clone()),
            client: caller.clone(),
            duration_ms: Some(millis(started.elapsed())),
            fingerprint: opened.as_ref().ok().map(|c| c.info().host_key_fingerprint),
            error: opened.as_ref().err().map(ToString::to_string),
            ..Record::default()
        });
        match opened {
            Ok(conn) => {
                let conn = Arc::new(conn);
                let mut status = lock(&self.status);
                status.conn = Some(conn.clone());
                status.state = ConnState::Connected;
                status.since = conn.connected_at;
                status.last_error = None;
                status.connections_opened += 1;
                drop(status);
                let (cleanup_conn, pending) = (conn.clone(), self.pending.clone());
                tokio::spawn(async move { transfer::clean_pending(&cleanup_conn, &pending).await });
                Ok((conn, true))
            }
            Err(e) => {
                tracing::warn!(host = %self.config.name, "connect failed: {e}");
                self.set_state(ConnState::Failed, Some(e.to_string()));
                Err(e.into())
            }
        }
    }

    /// Records why the previous connection ended, the first time we notice.
    fn note_lost_connection(&self) {
        let mut status = lock(&self.status);
        if let Some(conn) = status.conn.take() {
            status.last_error = conn.lost_reason();
        }
    }

    fn set_state(&self, state: ConnState, error: Option<String>) {
        let mut status = lock(&self.status);
        status.state = state;
        status.since = SystemTime::now();
        if error.is_some() {
            status.last_error = error;
        }
    }

    /// Runs a command on this host, connecting first if needed.
    pub async fn exec(
        &self,
        caller: &Option<ClientRef>,
        req: &ExecRequest,
        sink: &mpsc::Sender<Output>,
        shutdown: &CancellationToken,
        on_started: impl FnOnce(bool),
    ) -> Result<ExecOutcome, Error> {
        let (mut conn, mut connected_now) = self.connection(caller).await?;
        let channel = match conn.open_work_channel().await {
            Ok(channel) => channel,
            // The connection died before we sent anything (e.g. sshd restarted since the last
            // call): nothing ran, so one fresh connection is safe to try.
            Err(e) if !conn.is_alive() => {
                tracing::info!(host = %self.config.name, "reconnecting: {e}");
                (conn, connected_now) = self.connection(caller).await?;
                conn.open_work_channel().await?
            }
            Err(e) => return Err(e.into()),
        };
        on_started(connected_now);
        ssh::exec::run(&conn, channel, req, sink, shutdown)
            .await
            .map_err(Error::from)
    }

    /// Uploads (`upload == true`) or downloads per `spec`, connecting first if needed.
    pub async fn transfer(
        &self,
        caller: &Option<ClientRef>,
        upload: bool,
        spec: &TransferSpec,
        progress: &watch::Sender<Progress>,
        cancel: &CancellationToken,
    ) -> Result<TransferOutcome, Error> {
        let (conn, _) = self.connection(caller).await?;
        let result = if upload {
            transfer::upload(&conn, spec, progress, cancel, &self.pending).await
        } else {
            transfer::download(&conn, spec, progress, cancel).await
        };
        result.map_err(Error::from)
    }

    /// Closes the connection, if any. Returns (was connected, channels that were in use).
    pub async fn disconnect(&self, caller: &Option<ClientRef>, reason: &str) -> (bool, u32) {
        let conn = {
            let mut status = lock(&self.status);
            let conn = status.conn.take();
            status.state = ConnState::Disconnected;
            status.since = SystemTime::now();
            conn
        };
        match conn {
            Some(conn) if conn.is_alive() => {
                let busy = conn.channels_in_use();
                conn.close(reason).await;
                self.audit.record(Record {
                    action: "disconnect",
                    outcome: "ok",
                    host: Some(self.config.name.clone()),
                    client: caller.clone(),
                    error: Some(reason.to_string()),
                    ..Record::default()
                });
                (true, busy)
            }
            _ => (false, 0),
        }
    }

    pub fn snapshot(&self) -> HostSnapshot {
        let status = lock(&self.status);
        let cfg = &self.config;
        let mut snap = HostSnapshot {
            name: cfg.name.clone(),
            hostname: cfg.hostname.clone(),
            port: cfg.port,
            username: cfg.username.clone(),
            state: status.state,
            since: status.since,
            channels_in_use: 0,
            channel_limit: cfg.max_sessions,
            last_error: status.last_error.clone(),
            server_version: String::new(),
            host_key_fingerprint: String::new(),
            connections_opened: status.connections_opened,
            restricted: cfg.policy.is_some(),
        };
        if let Some(conn) = &status.conn {
            let info = conn.info();
            snap.server_version = info.server_version;
            snap.host_key_fingerprint = info.host_key_fingerprint;
            snap.channels_in_use = conn.channels_in_use();
            snap.channel_limit = conn.channel_limit();
            if let Some(reason) = conn.lost_reason() {
                snap.state = ConnState::Disconnected;
                snap.last_error = Some(reason);
            }
        }
        snap
    }
}

/// Who is attached to the daemon (one record per Hello, dropped when its socket closes).
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub id: u64,
    pub kind: i32,
    pub name: String,
    pub version: String,
    pub pid: u32,
    pub attached_at: SystemTime,
    pub conn_id: u64,
}

pub struct Registry {
    pub audit: Arc<Audit>,
    pub config_path: std::path::PathBuf,
    pub socket_path: std::path::PathBuf,
    pub warnings: Vec<String>,
    pub max_output_bytes: u32,
    pub started_at: SystemTime,
    hosts: BTreeMap<String, Arc<HostEntry>>,
    clients: Mutex<BTreeMap<u64, ClientRecord>>,
    next_client_id: AtomicU64,
    /// Fired when in-flight work must stop now (shutdown grace period over).
    pub shutdown_now: CancellationToken,
    /// Fired to begin a graceful shutdown (signal or Shutdown RPC).
    pub shutdown_requested: CancellationToken,
}

impl Registry {
    /// Builds the registry; fails only when the audit log cannot be opened.
    pub fn new(config: Config, socket_path: std::path::PathBuf) -> std::io::Result<Registry> {
        let audit = Arc::new(match &config.audit_log_file {
            Some(path) => {
                let secrets = config
                    .hosts
                    .iter()
                    .filter_map(|h| h.password.clone())
                    .collect();
                Audit::open(path, secrets).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot open audit log {}: {e}", path.display()),
                    )
                })?
            }
            None => Audit::disabled(),
        });
        let hosts = config
            .hosts
            .into_iter()
            .map(|h| (h.name.clone(), Arc::new(HostEntry::new(h, audit.clone()))))
            .collect();
        Ok(Registry {
            audit,
            config_path: config.path,
            socket_path,
            warnings: config.warnings,
            max_output_bytes: config.max_output_bytes,
            started_at: SystemTime::now(),
            hosts,
            clients: Mutex::new(BTreeMap::new()),
            next_client_id: AtomicU64::new(1),
            shutdown_now: CancellationToken::new(),
            shutdown_requested: CancellationToken::new(),
        })
    }

    pub fn host(&self, name: &str) -> Result<Arc<HostEntry>, Error> {
        self.hosts
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownHost {
                name: name.to_string(),
                known: self.hosts.keys().cloned().collect(),
                config: self.config_path.clone(),
            })
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Arc<HostEntry>> {
        self.hosts.values()
    }

    pub fn attach_client(&self, mut record: ClientRecord) -> u64 {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        record.id = id;
        tracing::info!(client = %record.name, pid = record.pid, "client attached");
        lock(&self.clients).insert(id, record);
        id
    }

    /// Forgets the clients that said Hello on a socket connection that has now closed.
    pub fn detach_connection(&self, conn_id: u64) {
        lock(&self.clients).retain(|_, c| {
            let keep = c.conn_id != conn_id;
            if !keep {
                tracing::info!(client = %c.name, pid = c.pid, "client detached");
            }
            keep
        });
    }

    pub fn client_for_connection(&self, conn_id: u64) -> Option<ClientRecord> {
        lock(&self.clients)
            .values()
            .find(|c| c.conn_id == conn_id)
            .cloned()
    }

    /// The audit identity of whoever sent a request on socket connection `conn_id`.
    pub fn caller(&self, conn_id: Option<u64>) -> Option<ClientRef> {
        let client = self.client_for_connection(conn_id?)?;
        Some(ClientRef {
            name: client.name,
            version: client.version,
            pid: client.pid,
        })
    }

    pub fn clients(&self) -> Vec<ClientRecord> {
        lock(&self.clients).values().cloned().collect()
    }

    /// Closes every SSH connection (at shutdown), concurrently, each bounded by its own deadline.
    pub async fn close_all(&self) {
        let mut closing = tokio::task::JoinSet::new();
        for host in self.hosts.values() {
            let host = host.clone();
            closing.spawn(async move { host.disconnect(&None, "mcp-sshd is shutting down").await });
        }
        while closing.join_next().await.is_some() {}
    }
}

pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
