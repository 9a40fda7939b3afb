//! The daemon's live state: configured hosts with their connections, and attached clients.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, ClientRef, Record};
use crate::config::{Config, ConfigError, HostConfig, LogLevel};
use crate::error::Error;
use crate::partials::Partials;
use crate::ssh::connection::OpenChannel;
use crate::ssh::pending::{PendingStore, PendingTemps};
use crate::ssh::transfer::{self, Progress, TransferOutcome, TransferSpec};
use crate::ssh::{self, Connection, ExecOutcome, ExecRequest, Output};
use crate::startups;
use crate::sync::lock;

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
    /// How the host is reached when not directly: "proxy command `…`", "bastion b".
    pub route: Option<String>,
    /// Where its settings came from.
    pub source: String,
}

/// After a host could not be reached (connect deadline passed, keepalives unanswered), calls
/// fail at once with that error for this long instead of each waiting out its own deadline.
pub const RETRY_COOLDOWN: Duration = Duration::from_secs(5);

struct HostStatus {
    conn: Option<Arc<Connection>>,
    state: ConnState,
    since: SystemTime,
    last_error: Option<String>,
    connections_opened: u64,
    /// Set when the host was unreachable: when that was noticed, and why.
    unreachable: Option<(Instant, String)>,
}

/// What a reload did to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostChange {
    Unchanged,
    /// Settings applied at once; the connection is kept.
    Updated,
    /// Connection settings changed: the next call connects anew, the old connection closes
    /// once its calls are done.
    Reconnect,
}

/// One configured host and its (lazily opened) connection.
pub struct HostEntry {
    config: Mutex<Arc<HostConfig>>,
    status: Mutex<HostStatus>,
    /// Serializes connection attempts, so concurrent first calls share one connection.
    connecting: tokio::sync::Mutex<()>,
    audit: Arc<Audit>,
    agents: Arc<ssh::AgentSockets>,
    /// Remote temporary files of uploads cut off with their connection, removed on reconnect.
    pending: PendingTemps,
    /// Large files' temporary files kept for a resume (every host's).
    partials: Arc<Partials>,
    /// The entry of the bastion this host is reached through (`proxy_jump`), whose connection
    /// carries this host's; set by [`Registry::link_bastions`].
    via: Mutex<Option<Arc<HostEntry>>>,
}

impl HostEntry {
    fn new(
        config: HostConfig,
        audit: Arc<Audit>,
        agents: Arc<ssh::AgentSockets>,
        (pending, partials): (PendingTemps, Arc<Partials>),
    ) -> HostEntry {
        HostEntry {
            partials,
            audit,
            agents,
            config: Mutex::new(Arc::new(config)),
            status: Mutex::new(HostStatus {
                conn: None,
                state: ConnState::Disconnected,
                since: SystemTime::now(),
                last_error: None,
                connections_opened: 0,
                unreachable: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            pending,
            via: Mutex::new(None),
        }
    }

    /// The bastion's entry, when the host is reached through one.
    pub fn via(&self) -> Option<Arc<HostEntry>> {
        lock(&self.via).clone()
    }

    /// The host's current settings (a reload may replace them between calls).
    pub fn config(&self) -> Arc<HostConfig> {
        lock(&self.config).clone()
    }

    pub fn name(&self) -> String {
        self.config().name.clone()
    }

    fn live_connection(&self) -> Option<Arc<Connection>> {
        lock(&self.status).conn.clone().filter(|c| c.is_alive())
    }

    /// The error to fail with at once while the host recently was unreachable.
    fn unreachable_error(&self) -> Option<Error> {
        let status = lock(&self.status);
        let (when, reason) = status.unreachable.as_ref()?;
        let retry_in = RETRY_COOLDOWN.checked_sub(when.elapsed())?;
        Some(Error::Unreachable {
            host: self.config().name.clone(),
            reason: reason.clone(),
            ago: when.elapsed(),
            retry_in,
        })
    }

    /// Removes a remote temporary file of ours: now when the host is connected, else once it is
    /// reached again.
    pub fn remove_remote_temp(&self, path: &str) {
        self.pending.add(path);
        if let Some(conn) = self.live_connection() {
            let pending = self.pending.clone();
            tokio::spawn(async move { transfer::clean_pending(&conn, &pending).await });
        }
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
        self.note_lost_connection();
        let _guard = match self.connecting.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Someone is already trying; if the host was just unreachable, do not queue
                // behind an attempt that is likely to time out as well.
                if let Some(e) = self.unreachable_error() {
                    return Err(e);
                }
                self.connecting.lock().await
            }
        };
        if let Some(conn) = self.live_connection() {
            return Ok((conn, false));
        }
        if let Some(e) = self.unreachable_error() {
            return Err(e);
        }
        let mut config = self.config();
        let conn = loop {
            self.set_state(ConnState::Connecting, None);
            match self.open_audited(caller, &config).await {
                Ok(conn) => {
                    let now = self.config();
                    if now.same_connection(&config) {
                        break Arc::new(conn);
                    }
                    // A reload changed the connection settings while we connected. Nothing
                    // has run on this connection: connect again with the new settings.
                    conn.close("hosts.json changed this host's connection settings")
                        .await;
                    config = now;
                }
                Err(e) => {
                    tracing::warn!(host = %config.name, "connect failed: {e}");
                    self.set_state(ConnState::Failed, Some(e.to_string()));
                    if matches!(e, ssh::SshError::ConnectTimeout { .. }) {
                        lock(&self.status).unreachable = Some((Instant::now(), e.to_string()));
                    }
                    return Err(e.into());
                }
            }
        };
        let mut status = lock(&self.status);
        status.conn = Some(conn.clone());
        status.state = ConnState::Connected;
        status.since = conn.connected_at;
        status.last_error = None;
        status.unreachable = None;
        status.connections_opened += 1;
        drop(status);
        let (cleanup_conn, pending) = (conn.clone(), self.pending.clone());
        tokio::spawn(async move { transfer::clean_pending(&cleanup_conn, &pending).await });
        Ok((conn, true))
    }

    /// One connection attempt with `config`, audited.
    async fn open_audited(
        &self,
        caller: &Option<ClientRef>,
        config: &Arc<HostConfig>,
    ) -> Result<Connection, ssh::SshError> {
        let started = std::time::Instant::now();
        let opened = self.open_through_bastion(caller, config).await;
        self.audit.record(Record {
            action: "connect",
            outcome: if opened.is_ok() { "ok" } else { "error" },
            host: Some(config.name.clone()),
            client: caller.clone(),
            duration_ms: Some(millis(started.elapsed())),
            fingerprint: opened.as_ref().ok().map(|c| c.info().host_key_fingerprint),
            error: opened.as_ref().err().map(ToString::to_string),
            ..Record::default()
        });
        opened
    }

    /// Opens a connection with `config`: through the bastion's connection (connected first,
    /// as its own host with its own checks) when it has one.
    async fn open_through_bastion(
        &self,
        caller: &Option<ClientRef>,
        config: &Arc<HostConfig>,
    ) -> Result<Connection, ssh::SshError> {
        let bastion = match (&config.jump, self.via()) {
            (Some(_), Some(entry)) => {
                // Boxed: a bastion may itself be behind another.
                let connected = Box::pin(entry.connection(caller)).await;
                match connected {
                    Ok((conn, _)) => Some(conn),
                    Err(e) => {
                        return Err(ssh::SshError::Jump {
                            target: config.target(),
                            bastion: entry.name(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            _ => None,
        };
        let mut attempt = 1;
        loop {
            // Waiting here is pacing, not the host being slow: it does not count in connect_timeout.
            let startup = startups::permit(config).await;
            if config.jump.is_none()
                && let Some(limit) = crate::fds::no_room()
            {
                return Err(ssh::SshError::FileLimit {
                    target: config.target(),
                    limit,
                });
            }
            let opened = Connection::open(
                config.clone(),
                self.audit.clone(),
                &self.agents,
                bastion.clone(),
            )
            .await;
            drop(startup);
            match opened {
                // Turned away before the SSH banner: nothing was authenticated, nothing ran.
                // sshd's MaxStartups drops at random, so another try soon most likely gets in.
                Err(ssh::SshError::NoHandshake { .. }) if attempt < startups::ATTEMPTS => {
                    tokio::time::sleep(startups::backoff(attempt)).await;
                    attempt += 1;
                }
                opened => return opened,
            }
        }
    }

    /// Records why the previous connection ended, the first time we notice.
    fn note_lost_connection(&self) {
        let mut status = lock(&self.status);
        if let Some(conn) = status.conn.take_if(|c| !c.is_alive()) {
            status.last_error = conn.lost_reason();
            if conn.went_silent() {
                status.unreachable = status
                    .last_error
                    .clone()
                    .map(|reason| (Instant::now(), format!("connection lost: {reason}")));
            }
        }
    }

    /// Applies a reloaded configuration of this host.
    pub fn apply(&self, new: HostConfig) -> HostChange {
        let mut config = lock(&self.config);
        if config.same_settings(&new) {
            return HostChange::Unchanged;
        }
        let reconnect = !config.same_connection(&new);
        *config = Arc::new(new);
        drop(config);
        if !reconnect {
            return HostChange::Updated;
        }
        let old = {
            let mut status = lock(&self.status);
            status.unreachable = None;
            status.state = ConnState::Disconnected;
            status.since = SystemTime::now();
            status.conn.take()
        };
        if let Some(conn) = old {
            tokio::spawn(close_when_idle(
                conn,
                "hosts.json changed this host's connection settings",
            ));
        }
        HostChange::Reconnect
    }

    /// Closes the connection once the calls using it are done (the host left hosts.json).
    fn retire(&self, reason: &'static str) {
        if let Some(conn) = lock(&self.status).conn.take() {
            tokio::spawn(close_when_idle(conn, reason));
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
        let (conn, channel, connected_now) = self.work_channel(caller).await?;
        on_started(connected_now);
        ssh::exec::run(&conn, channel, req, sink, shutdown)
            .await
            .map_err(Error::from)
    }

    /// A work channel on this host's connection, connecting first if needed. The bool is true
    /// when this call opened the connection.
    async fn work_channel(
        &self,
        caller: &Option<ClientRef>,
    ) -> Result<(Arc<Connection>, OpenChannel, bool), Error> {
        let (mut conn, mut connected_now) = self.connection(caller).await?;
        let channel = match conn.open_work_channel().await {
            Ok(channel) => channel,
            // The connection died before we sent anything (e.g. sshd restarted since the last
            // call): nothing ran, so one fresh connection is safe to try.
            Err(e) if !conn.is_alive() => {
                tracing::info!(host = %conn.host_name(), "reconnecting: {e}");
                (conn, connected_now) = self.connection(caller).await?;
                conn.open_work_channel().await?
            }
            Err(e) => return Err(e.into()),
        };
        Ok((conn, channel, connected_now))
    }

    /// Runs one of the daemon's own scripts (not a user's command: no policy applies) on this
    /// host and collects its output, within `deadline`.
    pub async fn run_script(
        &self,
        caller: &Option<ClientRef>,
        script: &str,
        deadline: Duration,
    ) -> Result<ssh::job::Captured, Error> {
        let (conn, channel, _) = self.work_channel(caller).await?;
        ssh::job::capture(&conn, channel, script, deadline)
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
            let keeping = transfer::Keeping {
                pending: &self.pending,
                partials: &self.partials,
            };
            transfer::upload(&conn, spec, progress, cancel, &keeping).await
        } else {
            transfer::download(&conn, spec, progress, cancel, &self.partials).await
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
            // An explicit disconnect is also how a user asks to try an unreachable host again.
            status.unreachable = None;
            conn
        };
        match conn {
            Some(conn) if conn.is_alive() => {
                let busy = conn.channels_in_use();
                conn.close(reason).await;
                self.audit.record(Record {
                    action: "disconnect",
                    outcome: "ok",
                    host: Some(self.name()),
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
        let cfg = self.config();
        let status = lock(&self.status);
        let mut snap = HostSnapshot {
            name: cfg.name.clone(),
            hostname: cfg.hostname.clone(),
            port: cfg.port,
            username: cfg.username.clone(),
            state: status.state,
            since: status.since,
            channels_in_use: 0,
            // What a connection's work budget starts at (`Connection`: one session of
            // `max_sessions` is kept for stopping commands), so the limit reads the same before
            // and after connecting.
            channel_limit: if cfg.max_sessions >= 2 {
                cfg.max_sessions - 1
            } else {
                cfg.max_sessions
            },
            last_error: status.last_error.clone(),
            server_version: String::new(),
            host_key_fingerprint: String::new(),
            connections_opened: status.connections_opened,
            restricted: cfg.policy.is_some(),
            route: cfg.route(),
            source: cfg.source.describe(),
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

/// One call in flight; see [`Registry::call_started`].
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits until no call uses `conn` any more, then closes it.
async fn close_when_idle(conn: Arc<Connection>, reason: &'static str) {
    while conn.is_alive() && !conn.is_idle() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(host = %conn.host_name(), "closing connection: {reason}");
    conn.close(reason).await;
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

/// Daemon-wide settings from hosts.json and the state of reloading it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub warnings: Vec<String>,
    pub max_output_bytes: u32,
    pub job_retention: Duration,
    /// How long a cut-off transfer's temporary file is kept for a resume.
    pub partial_retention: Duration,
    pub groups: crate::config::Groups,
    /// The hosts' names in hosts.json order (calls over many hosts keep it).
    pub host_order: Vec<String>,
    /// Hosts one call over many hosts works on at once.
    pub fanout: u32,
    /// 1 for the configuration loaded at startup, +1 per successful reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// Why the last reload failed (the previous configuration is still in use).
    pub reload_error: Option<String>,
    log_level: LogLevel,
    audit_log_file: Option<PathBuf>,
}

/// What clients are told when the configuration changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEvent {
    pub generation: u64,
    pub host_names: Vec<String>,
    pub max_output_bytes: u32,
}

/// What a successful reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadSummary {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Connection settings changed: they reconnect once idle.
    pub reconnecting: Vec<String>,
    /// Other settings changed (timeouts, allowed_commands): applied, connection kept.
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
}

pub struct Registry {
    pub audit: Arc<Audit>,
    /// ssh-agent sockets announced by clients.
    pub agents: Arc<ssh::AgentSockets>,
    pending: Arc<PendingStore>,
    /// Large files' temporary files kept for a resume.
    pub partials: Arc<Partials>,
    pub config_path: PathBuf,
    pub socket_path: PathBuf,
    pub started_at: SystemTime,
    hosts: RwLock<BTreeMap<String, Arc<HostEntry>>>,
    /// Bastions that are not hosts of hosts.json (`user@host` hops, ssh_config ProxyJump
    /// aliases, hosts reached through an earlier hop), shared by every host behind them.
    hops: Mutex<Vec<Arc<HostEntry>>>,
    settings: Mutex<Settings>,
    events: watch::Sender<ConfigEvent>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    clients: Mutex<BTreeMap<u64, ClientRecord>>,
    next_client_id: AtomicU64,
    /// Commands and transfers whose task is still running (shown by `status`; a leak check).
    in_flight: Arc<AtomicU64>,
    /// Fired when in-flight work must stop now (shutdown grace period over).
    pub shutdown_now: CancellationToken,
    /// Fired to begin a graceful shutdown (signal or Shutdown RPC).
    pub shutdown_requested: CancellationToken,
}

impl Registry {
    /// Builds the registry; fails only when the audit log cannot be opened.
    pub fn new(config: Config, socket_path: PathBuf) -> std::io::Result<Registry> {
        let audit = Arc::new(match &config.audit_log_file {
            Some(path) => Audit::open(path).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot open audit log {}: {e}", path.display()),
                )
            })?,
            None => Audit::disabled(),
        });
        audit.set_secrets(passwords(&config));
        let settings = Settings {
            warnings: config
                .warnings
                .into_iter()
                .chain(crate::fds::warning(config.hosts.len()))
                .collect(),
            max_output_bytes: config.max_output_bytes,
            job_retention: config.job_retention,
            partial_retention: config.partial_retention,
            groups: config.groups,
            host_order: config.hosts.iter().map(|h| h.name.clone()).collect(),
            fanout: config.fanout,
            generation: 1,
            loaded_at: SystemTime::now(),
            reload_error: None,
            log_level: config.log_level,
            audit_log_file: config.audit_log_file,
        };
        let agents = Arc::new(ssh::AgentSockets::default());
        let mut pending_file = socket_path.clone().into_os_string();
        pending_file.push(".pending.json");
        let pending = PendingStore::open(Some(PathBuf::from(pending_file)));
        let mut partials_file = socket_path.clone().into_os_string();
        partials_file.push(".partials.json");
        let partials = Partials::open(Some(PathBuf::from(partials_file)));
        let hosts: BTreeMap<_, _> = config
            .hosts
            .into_iter()
            .map(|h| {
                let keeping = (pending.for_host(&h.name), partials.clone());
                let entry = HostEntry::new(h, audit.clone(), agents.clone(), keeping);
                (entry.name(), Arc::new(entry))
            })
            .collect();
        let (events, _) = watch::channel(ConfigEvent {
            generation: 1,
            host_names: hosts.keys().cloned().collect(),
            max_output_bytes: settings.max_output_bytes,
        });
        let registry = Registry {
            audit,
            agents,
            pending,
            partials,
            config_path: config.path,
            socket_path,
            started_at: SystemTime::now(),
            hosts: RwLock::new(hosts),
            hops: Mutex::new(Vec::new()),
            settings: Mutex::new(settings),
            events,
            reloading: tokio::sync::Mutex::new(()),
            clients: Mutex::new(BTreeMap::new()),
            next_client_id: AtomicU64::new(1),
            in_flight: Arc::default(),
            shutdown_now: CancellationToken::new(),
            shutdown_requested: CancellationToken::new(),
        };
        registry.link_bastions();
        Ok(registry)
    }

    /// Points every host with a `proxy_jump` at its bastion's entry: the hosts.json host of
    /// that name when it is reached the same way, else a shared hop entry (made when missing).
    /// Hop entries no host uses any more close once idle.
    fn link_bastions(&self) {
        let hosts = self.hosts();
        let mut hops = lock(&self.hops);
        let mut used: Vec<Arc<HostEntry>> = Vec::new();
        let mut queue: Vec<Arc<HostEntry>> = hosts.clone();
        while let Some(entry) = queue.pop() {
            let Some(jump) = entry.config().jump.clone() else {
                *lock(&entry.via) = None;
                continue;
            };
            let same = |e: &Arc<HostEntry>| {
                let c = e.config();
                c.name == jump.name && c.same_connection(&jump)
            };
            let bastion = hosts
                .iter()
                .find(|e| same(e))
                .or_else(|| used.iter().find(|e| same(e)))
                .cloned();
            let bastion = match bastion {
                Some(found) => found,
                None => {
                    let found = match hops.iter().position(same) {
                        Some(at) => hops.swap_remove(at),
                        None => Arc::new(HostEntry::new(
                            (*jump).clone(),
                            self.audit.clone(),
                            self.agents.clone(),
                            (self.pending.for_host(&jump.name), self.partials.clone()),
                        )),
                    };
                    used.push(found.clone());
                    queue.push(found.clone());
                    found
                }
            };
            *lock(&entry.via) = Some(bastion);
        }
        for unused in std::mem::replace(&mut *hops, used) {
            unused.retire("no host is reached through this bastion any more");
        }
    }

    /// A host, or else a bastion that is not a host of hosts.json (only to probe it: no
    /// command runs on a bastion of that kind).
    pub fn host_or_bastion(&self, name: &str) -> Result<Arc<HostEntry>, Error> {
        self.host(name).or_else(|e| {
            self.hops()
                .into_iter()
                .find(|hop| hop.name() == name)
                .ok_or(e)
        })
    }

    /// The bastions that are not hosts of hosts.json, for `status`.
    pub fn hops(&self) -> Vec<Arc<HostEntry>> {
        lock(&self.hops).clone()
    }

    pub fn host(&self, name: &str) -> Result<Arc<HostEntry>, Error> {
        let hosts = read(&self.hosts);
        hosts.get(name).cloned().ok_or_else(|| Error::UnknownHost {
            name: name.to_string(),
            known: hosts.keys().cloned().collect(),
            config: self.config_path.clone(),
        })
    }

    /// The configured hosts, in name order.
    pub fn hosts(&self) -> Vec<Arc<HostEntry>> {
        read(&self.hosts).values().cloned().collect()
    }

    pub fn settings(&self) -> Settings {
        lock(&self.settings).clone()
    }

    /// Configuration changes, starting with the current configuration.
    pub fn watch_config(&self) -> watch::Receiver<ConfigEvent> {
        self.events.subscribe()
    }

    /// Re-reads hosts.json. A file that does not validate changes nothing: the error is
    /// returned and kept for `status`. Otherwise added hosts serve at once, removed hosts
    /// close their connection once idle, hosts whose connection settings changed reconnect,
    /// and untouched hosts keep their connection.
    pub async fn reload(&self, caller: &Option<ClientRef>) -> Result<ReloadSummary, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        // Off the runtime's threads: loading may run `ssh -G` once per ssh_config host.
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError::Invalid {
                    path: self.config_path.clone(),
                    message: format!("loading stopped: {e}"),
                })
            });
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!("reload failed, keeping the running configuration: {e}");
                lock(&self.settings).reload_error = Some(e.to_string());
                self.audit.record(Record {
                    action: "reload",
                    outcome: "error",
                    client: caller.clone(),
                    error: Some(e.to_string()),
                    ..Record::default()
                });
                return Err(e);
            }
        };
        // New passwords are scrubbed before anything can mention them.
        self.audit.set_secrets(passwords(&config));
        let host_order: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
        let mut summary = ReloadSummary::default();
        let mut next = BTreeMap::new();
        {
            let mut hosts = write(&self.hosts);
            for host in config.hosts {
                let name = host.name.clone();
                let entry = match hosts.remove(&name) {
                    Some(entry) => {
                        let list = match entry.apply(host) {
                            HostChange::Unchanged => &mut summary.unchanged,
                            HostChange::Updated => &mut summary.updated,
                            HostChange::Reconnect => &mut summary.reconnecting,
                        };
                        list.push(name.clone());
                        entry
                    }
                    None => {
                        summary.added.push(name.clone());
                        let keeping = (self.pending.for_host(&name), self.partials.clone());
                        Arc::new(HostEntry::new(
                            host,
                            self.audit.clone(),
                            self.agents.clone(),
                            keeping,
                        ))
                    }
                };
                next.insert(name, entry);
            }
            for (name, entry) in std::mem::replace(&mut *hosts, next) {
                entry.retire("the host was removed from hosts.json");
                summary.removed.push(name);
            }
        }
        self.link_bastions();
        let mut settings = lock(&self.settings);
        let mut warnings = config.warnings;
        warnings.extend(crate::fds::warning(host_order.len()));
        if config.log_level != settings.log_level {
            warnings.push("log_level changes take effect when mcp-sshd restarts".into());
        }
        if config.audit_log_file != settings.audit_log_file {
            warnings.push("audit_log_file changes take effect when mcp-sshd restarts".into());
        }
        settings.warnings = warnings.clone();
        settings.max_output_bytes = config.max_output_bytes;
        settings.job_retention = config.job_retention;
        settings.partial_retention = config.partial_retention;
        settings.groups = config.groups;
        settings.host_order = host_order;
        settings.fanout = config.fanout;
        settings.generation += 1;
        settings.loaded_at = SystemTime::now();
        settings.reload_error = None;
        summary.generation = settings.generation;
        summary.warnings = warnings;
        let event = ConfigEvent {
            generation: settings.generation,
            host_names: read(&self.hosts).keys().cloned().collect(),
            max_output_bytes: settings.max_output_bytes,
        };
        drop(settings);
        self.events.send_replace(event);
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            reconnecting = ?summary.reconnecting,
            updated = ?summary.updated,
            "configuration reloaded (generation {})",
            summary.generation
        );
        self.audit.record(Record {
            action: "reload",
            outcome: "ok",
            client: caller.clone(),
            ..Record::default()
        });
        Ok(summary)
    }

    /// Counts a command or transfer as in flight until the returned guard is dropped.
    pub fn call_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    pub fn calls_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn attach_client(&self, mut record: ClientRecord) -> u64 {
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        record.id = id;
        tracing::debug!(client = %record.name, pid = record.pid, "client attached");
        lock(&self.clients).insert(id, record);
        id
    }

    /// Forgets the clients that said Hello on a socket connection that has now closed.
    pub fn detach_connection(&self, conn_id: u64) {
        lock(&self.clients).retain(|_, c| {
            let keep = c.conn_id != conn_id;
            if !keep {
                tracing::debug!(client = %c.name, pid = c.pid, "client detached");
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
        for host in self.hosts().into_iter().chain(self.hops()) {
            closing.spawn(async move { host.disconnect(&None, "mcp-sshd is shutting down").await });
        }
        while closing.join_next().await.is_some() {}
    }
}

fn passwords(config: &Config) -> Vec<secrecy::SecretString> {
    config
        .hosts
        .iter()
        .filter_map(|h| h.password.clone())
        .collect()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
