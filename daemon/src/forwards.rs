//! Port forwards the daemon keeps: a local listener (127.0.0.1 or a Unix socket in the private
//! runtime directory) whose connections are relayed through a host's connection (`-L`), and
//! ports on a host relayed to this machine (`-R`, for `mcp-sshctl` only).
//!
//! A forward belongs to the daemon, not to the client that opened it. It holds no SSH
//! connection of its own: each relayed connection asks the host's entry for its connection, so
//! a dropped connection is replaced by the next relayed one (or, for `-R`, by the forward's own
//! task, which asks the new connection to listen again).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, ClientRef, Record};
use crate::config::HostConfig;
use crate::error::Error;
use crate::registry::{HostEntry, Registry, millis};
use crate::ssh::SshError;
use crate::ssh::route::Link;
use crate::sync::lock;

/// Forwards one daemon keeps at once.
pub const MAX_FORWARDS: usize = 64;
/// Connections one forward relays at once; more wait in the listener's backlog.
pub const MAX_RELAYED: usize = 128;
/// Buffer of each direction of a relayed connection: large enough for full SSH packets.
const RELAY_BUFFER: usize = 256 * 1024;
/// Per-connection audit records of one forward: a burst of this many, then one per
/// [`AUDIT_REFILL`]; the rest are counted in the next record written and in `forward_closed`.
const AUDIT_BURST: u32 = 20;
const AUDIT_REFILL: Duration = Duration::from_secs(3);
/// The longest a remote forward waits before asking a lost connection's successor again.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Which way a forward relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// A local listener relayed to `to_host:to_port` as seen from the host.
    Local {
        listen: Listen,
        to_host: String,
        to_port: u16,
    },
    /// `bind_host:bind_port` on the host relayed to `to_host:to_port` on this machine.
    Remote {
        bind_host: String,
        bind_port: u16,
        to_host: String,
        to_port: u16,
    },
}

/// Where a local forward listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// 127.0.0.1 and this port (0: a free one).
    Port(u16),
    /// A Unix socket (0600) in the daemon's runtime directory.
    Socket,
}

/// A forward as clients see it.
#[derive(Debug, Clone)]
pub struct ForwardView {
    pub id: String,
    pub host: String,
    pub spec: Spec,
    /// `127.0.0.1:PORT`, a socket path (local forwards) or `HOST:PORT` on the host (remote).
    pub listening_on: String,
    pub opened_by: Option<ClientRef>,
    pub opened_at: SystemTime,
    pub connections_open: u32,
    pub connections_total: u64,
    pub bytes_to_host: u64,
    pub bytes_from_host: u64,
    /// The last relayed connection that failed, and why.
    pub last_error: Option<(SystemTime, String)>,
    /// For a remote forward: what it is doing when it is not listening (reconnecting).
    pub waiting: Option<String>,
}

#[derive(Default)]
struct Traffic {
    connections_open: AtomicU32,
    connections_total: AtomicU64,
    to_host: Arc<AtomicU64>,
    from_host: Arc<AtomicU64>,
}

/// When a relayed connection started, and the forward's byte counts then.
struct Relayed {
    started: Instant,
    before: (u64, u64),
}

struct AuditBudget {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
}

struct Forward {
    id: String,
    host: String,
    spec: Spec,
    listening_on: Mutex<String>,
    opened_by: Option<ClientRef>,
    opened_at: SystemTime,
    traffic: Traffic,
    last_error: Mutex<Option<(SystemTime, String)>>,
    waiting: Mutex<Option<String>>,
    audit_budget: Mutex<AuditBudget>,
    stop: CancellationToken,
    socket_path: Option<PathBuf>,
}

impl Forward {
    fn view(&self) -> ForwardView {
        ForwardView {
            id: self.id.clone(),
            host: self.host.clone(),
            spec: self.spec.clone(),
            listening_on: lock(&self.listening_on).clone(),
            opened_by: self.opened_by.clone(),
            opened_at: self.opened_at,
            connections_open: self.traffic.connections_open.load(Ordering::Relaxed),
            connections_total: self.traffic.connections_total.load(Ordering::Relaxed),
            bytes_to_host: self.traffic.to_host.load(Ordering::Relaxed),
            bytes_from_host: self.traffic.from_host.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            waiting: lock(&self.waiting).clone(),
        }
    }

    /// An audit record about this forward: who, which, its two ends.
    fn record(&self, action: &'static str, client: &Option<ClientRef>) -> Record {
        let (local, remote) = self.describe();
        Record {
            action,
            outcome: "ok",
            host: Some(self.host.clone()),
            client: client.clone(),
            forward: Some(self.id.clone()),
            local_address: Some(local),
            remote_address: Some(remote),
            ..Record::default()
        }
    }

    /// `local → remote` in the words of `ssh -L` / `-R`.
    fn describe(&self) -> (String, String) {
        let at = lock(&self.listening_on).clone();
        match &self.spec {
            Spec::Local {
                to_host, to_port, ..
            } => (at, format!("{to_host}:{to_port}")),
            Spec::Remote {
                to_host, to_port, ..
            } => (format!("{to_host}:{to_port}"), at),
        }
    }

    /// Counts a relayed connection as open (until [`Forwards::relay_ended`]).
    fn relay_started(&self) -> Relayed {
        let traffic = &self.traffic;
        traffic.connections_open.fetch_add(1, Ordering::Relaxed);
        traffic.connections_total.fetch_add(1, Ordering::Relaxed);
        Relayed {
            started: Instant::now(),
            before: (
                traffic.to_host.load(Ordering::Relaxed),
                traffic.from_host.load(Ordering::Relaxed),
            ),
        }
    }

    fn failed(&self, reason: String) {
        tracing::info!(forward = %self.id, "relayed connection failed: {reason}");
        *lock(&self.last_error) = Some((SystemTime::now(), reason));
    }

    /// Whether this relayed connection gets an audit record of its own, and how many before it
    /// did not.
    fn audit_allowance(&self) -> Option<u64> {
        let mut budget = lock(&self.audit_budget);
        let refills = budget.refilled.elapsed().as_millis() / AUDIT_REFILL.as_millis();
        if refills > 0 {
            let refills = u32::try_from(refills).unwrap_or(u32::MAX);
            budget.tokens = budget.tokens.saturating_add(refills).min(AUDIT_BURST);
            budget.refilled = Instant::now();
        }
        if budget.tokens == 0 {
            budget.suppressed += 1;
            return None;
        }
        budget.tokens -= 1;
        Some(std::mem::take(&mut budget.suppressed))
    }
}

/// Whether `host` allows the forward `spec`; `Err` says why not. The one check every forward
/// passes, when opened and after each reload.
pub fn allowed(host: &HostConfig, spec: &Spec) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::ForwardRefused {
            host: host.name.clone(),
            reason: why,
        })
    };
    if !host.allow_forwarding {
        return refuse("forwarding is turned off for this host (allow_forwarding: false)".into());
    }
    let Spec::Local {
        to_host, to_port, ..
    } = spec
    else {
        return Ok(());
    };
    if let Some(ports) = &host.allowed_forward_ports {
        if !is_loopback_name(to_host) {
            return refuse(format!(
                "this host allows forwards only to its own ports {} (allowed_forward_ports), not to {to_host}",
                list_ports(ports)
            ));
        }
        if !ports.contains(to_port) {
            return refuse(format!(
                "port {to_port} is not in the host's allowed_forward_ports ({})",
                list_ports(ports)
            ));
        }
    }
    Ok(())
}

fn list_ports(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    if ports.is_empty() {
        "none".into()
    } else {
        ports.join(", ")
    }
}

fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Opens and closes one relayed connection to `to_host:to_port` through the host. `Ok(Some)`
/// says why the destination did not accept it (the forward is still worth opening: the
/// service may start later); `Err` means forwarding cannot work (unreachable host,
/// authentication, sshd refusing forwarding).
async fn try_destination(
    caller: &Option<ClientRef>,
    entry: &HostEntry,
    to_host: &str,
    to_port: u16,
) -> Result<Option<String>, Error> {
    let (conn, _) = entry.connection(caller).await?;
    match conn
        .open_direct_tcpip(to_host, to_port, ("127.0.0.1", 0))
        .await
    {
        Ok(_stream) => Ok(None),
        Err(e @ SshError::ForwardProhibited { .. }) => Err(e.into()),
        Err(e @ SshError::Forward { .. }) => Ok(Some(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The daemon's forwards.
pub struct Forwards {
    registry: Arc<Registry>,
    table: Mutex<Vec<Arc<Forward>>>,
    /// Held while a forward opens (see [`Forwards::open`]).
    opening: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    socket_dir: PathBuf,
}

impl Forwards {
    /// Forwards whose Unix sockets go beside `daemon_socket`, in the same private directory.
    pub fn new(registry: Arc<Registry>) -> Arc<Forwards> {
        let socket_dir = registry
            .socket_path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let forwards = Arc::new(Forwards {
            registry,
            table: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            socket_dir,
        });
        forwards.clone().follow_reloads();
        forwards
    }

    fn audit(&self) -> &Audit {
        &self.registry.audit
    }

    pub fn list(&self, host: Option<&str>) -> Vec<ForwardView> {
        lock(&self.table)
            .iter()
            .filter(|f| host.is_none_or(|h| f.host == h))
            .map(|f| f.view())
            .collect()
    }

    /// Opens a forward, or returns the one that already does the same (`true`). Opens are
    /// taken one at a time, so two asking for the same forward at once get one. A refused or
    /// failed open is audited too.
    pub async fn open(
        self: &Arc<Self>,
        caller: &Option<ClientRef>,
        entry: &Arc<HostEntry>,
        spec: Spec,
    ) -> Result<(ForwardView, bool), Error> {
        let _one_at_a_time = self.opening.lock().await;
        let host = entry.name();
        let opened = self.open_inner(caller, entry, spec.clone()).await;
        if let Err(e) = &opened {
            let to = match &spec {
                Spec::Local {
                    to_host, to_port, ..
                } => format!("{to_host}:{to_port}"),
                Spec::Remote {
                    bind_host,
                    bind_port,
                    ..
                } => format!("{bind_host}:{bind_port}"),
            };
            self.audit().record(Record {
                action: "forward_opened",
                outcome: if matches!(e, Error::ForwardRefused { .. }) {
                    "refused"
                } else {
                    "error"
                },
                host: Some(host),
                client: caller.clone(),
                remote_address: Some(to),
                error: Some(e.to_string()),
                ..Record::default()
            });
        }
        opened
    }

    async fn open_inner(
        self: &Arc<Self>,
        caller: &Option<ClientRef>,
        entry: &Arc<HostEntry>,
        spec: Spec,
    ) -> Result<(ForwardView, bool), Error> {
        let config = entry.config();
        let host = config.name.clone();
        allowed(&config, &spec)?;
        if let Some(same) = self.same_as(&host, &spec) {
            return Ok((same.view(), true));
        }
        if lock(&self.table).len() >= MAX_FORWARDS {
            return Err(Error::InvalidArgument(format!(
                "mcp-sshd keeps at most {MAX_FORWARDS} forwards; close one first (ssh_forward with close, or mcp-sshctl forward --close ID)"
            )));
        }
        // A local forward is tried once: a host that cannot be reached, or whose sshd refuses
        // forwarding, gets no listener; a destination not listening yet gets one, with a note.
        let first_try = match &spec {
            Spec::Local {
                to_host, to_port, ..
            } => try_destination(caller, entry, to_host, *to_port).await?,
            Spec::Remote { .. } => None,
        };
        let id = format!("f{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let socket_path = matches!(
            spec,
            Spec::Local {
                listen: Listen::Socket,
                ..
            }
        )
        .then(|| self.socket_dir.join(format!("forward-{id}.sock")));
        let forward = Arc::new(Forward {
            id,
            host,
            spec: spec.clone(),
            listening_on: Mutex::new(String::new()),
            opened_by: caller.clone(),
            opened_at: SystemTime::now(),
            traffic: Traffic::default(),
            last_error: Mutex::new(first_try.map(|e| (SystemTime::now(), e))),
            waiting: Mutex::new(None),
            audit_budget: Mutex::new(AuditBudget {
                tokens: AUDIT_BURST,
                refilled: Instant::now(),
                suppressed: 0,
            }),
            stop: self.registry.shutdown_requested.child_token(),
            socket_path,
        });
        let started = match &spec {
            Spec::Local { listen, .. } => self.start_local(&forward, entry, listen).await,
            Spec::Remote {
                bind_host,
                bind_port,
                ..
            } => {
                self.start_remote(&forward, entry, bind_host, *bind_port)
                    .await
            }
        };
        started?;
        let record = forward.record("forward_opened", caller);
        tracing::info!(
            forward = %forward.id, host = %forward.host,
            "forward opened: {} → {}",
            record.local_address.as_deref().unwrap_or_default(),
            record.remote_address.as_deref().unwrap_or_default()
        );
        self.audit().record(record);
        lock(&self.table).push(forward.clone());
        Ok((forward.view(), false))
    }

    fn same_as(&self, host: &str, spec: &Spec) -> Option<Arc<Forward>> {
        lock(&self.table)
            .iter()
            .find(|f| {
                f.host == host
                    && match (&f.spec, spec) {
                        (
                            Spec::Local {
                                listen: have,
                                to_host: h1,
                                to_port: p1,
                            },
                            Spec::Local {
                                listen: want,
                                to_host: h2,
                                to_port: p2,
                            },
                        ) => h1 == h2 && p1 == p2 && (have == want || *want == Listen::Port(0)),
                        (a, b) => a == b,
                    }
            })
            .cloned()
    }

    /// Closes the forward `id`; its relayed connections are closed too.
    pub fn close(
        &self,
        id: &str,
        caller: &Option<ClientRef>,
        reason: &str,
    ) -> Result<ForwardView, Error> {
        let forward = {
            let mut table = lock(&self.table);
            let at =
                table
                    .iter()
                    .position(|f| f.id == id)
                    .ok_or_else(|| Error::UnknownForward {
                        id: id.to_string(),
                        known: table.iter().map(|f| f.id.clone()).collect(),
                    })?;
            table.remove(at)
        };
        self.finish(&forward, caller, reason);
        Ok(forward.view())
    }

    /// The local forwards of `host` to `to_host:to_port` (listening on `local_port` when it
    /// is not 0), for closing by destination: their ids and where they listen.
    pub fn find_local(
        &self,
        host: &str,
        to_host: &str,
        to_port: u16,
        local_port: u16,
    ) -> Vec<(String, String)> {
        lock(&self.table)
            .iter()
            .filter(|f| {
                f.host == host
                    && matches!(&f.spec, Spec::Local { to_host: h, to_port: p, .. } if h == to_host && *p == to_port)
                    && (local_port == 0
                        || lock(&f.listening_on).ends_with(&format!(":{local_port}")))
            })
            .map(|f| (f.id.clone(), lock(&f.listening_on).clone()))
            .collect()
    }

    fn finish(&self, forward: &Forward, caller: &Option<ClientRef>, reason: &str) {
        forward.stop.cancel();
        if let Some(path) = &forward.socket_path {
            let _ = std::fs::remove_file(path);
        }
        let view = forward.view();
        let suppressed = lock(&forward.audit_budget).suppressed;
        self.audit().record(Record {
            connections: Some(view.connections_total),
            bytes: Some(view.bytes_to_host + view.bytes_from_host),
            suppressed: (suppressed > 0).then_some(suppressed),
            duration_ms: Some(millis(forward.opened_at.elapsed().unwrap_or_default())),
            error: Some(reason.to_string()),
            ..forward.record("forward_closed", caller)
        });
        tracing::info!(forward = %forward.id, host = %forward.host, "forward closed: {reason}");
    }

    /// Closes every forward (the daemon is stopping).
    pub fn close_all(&self, reason: &str) {
        let all = std::mem::take(&mut *lock(&self.table));
        for forward in all {
            self.finish(&forward, &None, reason);
        }
    }

    /// After each reload: forwards of hosts that are gone, or that no longer allow them, close.
    fn follow_reloads(self: Arc<Self>) {
        let mut events = self.registry.watch_config();
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            while events.changed().await.is_ok() {
                let Some(forwards) = weak.upgrade() else {
                    return;
                };
                forwards.apply_reload();
            }
        });
    }

    fn apply_reload(&self) {
        let all: Vec<Arc<Forward>> = lock(&self.table).clone();
        for forward in all {
            let why = match self.registry.host(&forward.host) {
                Err(_) => Some("the host was removed from hosts.json".to_string()),
                Ok(entry) => allowed(&entry.config(), &forward.spec)
                    .err()
                    .map(|e| format!("hosts.json no longer allows it: {e}")),
            };
            if let Some(why) = why {
                let removed = {
                    let mut table = lock(&self.table);
                    let before = table.len();
                    table.retain(|f| f.id != forward.id);
                    table.len() != before
                };
                if removed {
                    self.finish(&forward, &None, &why);
                }
            }
        }
    }

    async fn start_local(
        self: &Arc<Self>,
        forward: &Arc<Forward>,
        entry: &Arc<HostEntry>,
        listen: &Listen,
    ) -> Result<(), Error> {
        let listener = match listen {
            Listen::Port(port) => {
                let tcp = TcpListener::bind(("127.0.0.1", *port)).await.map_err(|e| {
                    Error::InvalidArgument(if e.kind() == std::io::ErrorKind::AddrInUse {
                        format!("127.0.0.1:{port} is already in use on this machine; choose another local port, or 0 for a free one")
                    } else {
                        format!("cannot listen on 127.0.0.1:{port}: {e}")
                    })
                })?;
                let at = tcp
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| format!("127.0.0.1:{port}"));
                *lock(&forward.listening_on) = at;
                Listener::Tcp(tcp)
            }
            Listen::Socket => {
                let path = forward
                    .socket_path
                    .clone()
                    .ok_or_else(|| Error::InvalidArgument("no socket path".into()))?;
                let _ = std::fs::remove_file(&path);
                let unix = UnixListener::bind(&path).map_err(|e| {
                    Error::InvalidArgument(format!("cannot listen on {}: {e}", path.display()))
                })?;
                // The directory is already private; the socket is the user's alone as well.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                    |e| Error::InvalidArgument(format!("cannot restrict {}: {e}", path.display())),
                )?;
                *lock(&forward.listening_on) = path.display().to_string();
                Listener::Unix(unix)
            }
        };
        let (forward, entry, forwards) = (forward.clone(), entry.clone(), self.clone());
        tokio::spawn(async move { forwards.accept_local(forward, entry, listener).await });
        Ok(())
    }

    async fn accept_local(
        self: Arc<Self>,
        forward: Arc<Forward>,
        entry: Arc<HostEntry>,
        listener: Listener,
    ) {
        let room = Arc::new(Semaphore::new(MAX_RELAYED));
        loop {
            let permit = tokio::select! {
                () = forward.stop.cancelled() => return,
                permit = room.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = forward.stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin.
                    forward.failed(format!("accepting a local connection failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (forward, entry, forwards) = (forward.clone(), entry.clone(), self.clone());
            tokio::spawn(async move {
                let _permit = permit;
                forwards.relay_local(&forward, &entry, stream, peer).await;
            });
        }
    }

    async fn relay_local(
        &self,
        forward: &Forward,
        entry: &HostEntry,
        local: Box<dyn Link>,
        peer: Peer,
    ) {
        let Spec::Local {
            to_host, to_port, ..
        } = &forward.spec
        else {
            return;
        };
        let traffic = &forward.traffic;
        let relayed = forward.relay_started();
        let result = async {
            let (conn, _) = entry.connection(&forward.opened_by).await?;
            let (addr, port) = peer.originator();
            let remote = conn
                .open_direct_tcpip(to_host, *to_port, (&addr, port))
                .await?;
            relay(local, remote, traffic, &forward.stop).await;
            Ok::<(), Error>(())
        }
        .await;
        self.relay_ended(forward, relayed, &peer.to_string(), result);
    }

    /// Ends a relayed connection's bookkeeping: no longer open, its failure noted, and its
    /// audit record (as the per-forward rate allows).
    fn relay_ended(
        &self,
        forward: &Forward,
        relayed: Relayed,
        peer: &str,
        result: Result<(), Error>,
    ) {
        let traffic = &forward.traffic;
        traffic.connections_open.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = &result {
            forward.failed(e.to_string());
        }
        let Some(suppressed) = forward.audit_allowance() else {
            return;
        };
        let (started, before, error) = (relayed.started, relayed.before, result.err());
        let moved = traffic.to_host.load(Ordering::Relaxed) - before.0
            + traffic.from_host.load(Ordering::Relaxed)
            - before.1;
        self.audit().record(Record {
            action: "forward_connection",
            outcome: if error.is_some() { "error" } else { "ok" },
            host: Some(forward.host.clone()),
            forward: Some(forward.id.clone()),
            peer: Some(peer.to_string()),
            // Other connections may have moved bytes meanwhile: an upper bound, exact alone.
            bytes: Some(moved),
            duration_ms: Some(millis(started.elapsed())),
            suppressed: (suppressed > 0).then_some(suppressed),
            error: error.map(|e| e.to_string()),
            ..Record::default()
        });
    }

    /// Asks the host to listen; then a task keeps the forward: it relays what arrives and, when
    /// the connection is lost, asks the next connection to listen again.
    async fn start_remote(
        self: &Arc<Self>,
        forward: &Arc<Forward>,
        entry: &Arc<HostEntry>,
        bind_host: &str,
        bind_port: u16,
    ) -> Result<(), Error> {
        let (conn, _) = entry.connection(&forward.opened_by).await?;
        let (port, incoming) = conn.request_remote_forward(bind_host, bind_port).await?;
        *lock(&forward.listening_on) = format!("{bind_host}:{port}");
        let (forward, entry, forwards, bind_host) = (
            forward.clone(),
            entry.clone(),
            self.clone(),
            bind_host.to_string(),
        );
        tokio::spawn(async move {
            forwards
                .keep_remote(forward, entry, conn, incoming, bind_host, port)
                .await;
        });
        Ok(())
    }

    async fn keep_remote(
        self: Arc<Self>,
        forward: Arc<Forward>,
        entry: Arc<HostEntry>,
        mut conn: Arc<crate::ssh::Connection>,
        mut incoming: tokio::sync::mpsc::Receiver<crate::ssh::forward::Incoming>,
        bind_host: String,
        port: u16,
    ) {
        let Spec::Remote {
            to_host, to_port, ..
        } = forward.spec.clone()
        else {
            return;
        };
        loop {
            loop {
                let arrived = tokio::select! {
                    () = forward.stop.cancelled() => {
                        conn.cancel_remote_forward(&bind_host, port).await;
                        return;
                    }
                    () = conn.lost() => break,
                    arrived = incoming.recv() => arrived,
                };
                let Some(arrived) = arrived else { break };
                let (forward, forwards, to_host) = (forward.clone(), self.clone(), to_host.clone());
                tokio::spawn(async move {
                    forwards
                        .relay_remote(&forward, arrived, &to_host, to_port)
                        .await;
                });
            }
            // The connection is gone: ask its successor to listen on the same port again.
            let mut wait = Duration::from_secs(1);
            loop {
                *lock(&forward.waiting) =
                    Some("the connection was lost; listening again once it is back".into());
                let again = async {
                    let (next, _) = entry.connection(&forward.opened_by).await?;
                    let (_, queue) = next.request_remote_forward(&bind_host, port).await?;
                    Ok::<_, Error>((next, queue))
                };
                let again = tokio::select! {
                    () = forward.stop.cancelled() => return,
                    again = again => again,
                };
                match again {
                    Ok((next, queue)) => {
                        (conn, incoming) = (next, queue);
                        *lock(&forward.waiting) = None;
                        tracing::info!(forward = %forward.id, "remote forward listening again on {bind_host}:{port}");
                        break;
                    }
                    Err(e) => {
                        *lock(&forward.waiting) = Some(format!("listening again failed: {e}"));
                        tokio::select! {
                            () = forward.stop.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(MAX_RETRY);
                    }
                }
            }
        }
    }

    async fn relay_remote(
        &self,
        forward: &Forward,
        arrived: crate::ssh::forward::Incoming,
        to_host: &str,
        to_port: u16,
    ) {
        let traffic = &forward.traffic;
        let relayed = forward.relay_started();
        let result = match TcpStream::connect((to_host, to_port)).await {
            Ok(local) => {
                let _ = local.set_nodelay(true);
                relay(Box::new(local), arrived.stream, traffic, &forward.stop).await;
                Ok(())
            }
            Err(e) => Err(Error::InvalidArgument(format!(
                "connecting to {to_host}:{to_port} on this machine failed: {e}"
            ))),
        };
        self.relay_ended(forward, relayed, &arrived.originator, result);
    }
}

/// Copies both ways until both sides are done (or the forward is closed), counting bytes as
/// they move so `status` shows a long transfer while it runs. An error either way ends both.
async fn relay(
    local: Box<dyn Link>,
    remote: crate::ssh::forward::RemoteStream,
    traffic: &Traffic,
    stop: &CancellationToken,
) {
    let (mut local_rx, mut local_tx) = tokio::io::split(local);
    let (mut remote_rx, mut remote_tx) = tokio::io::split(remote);
    let both = async {
        tokio::try_join!(
            pump(&mut local_rx, &mut remote_tx, &traffic.to_host),
            pump(&mut remote_rx, &mut local_tx, &traffic.from_host),
        )
    };
    tokio::select! {
        // A reset by either side ends the relay; the other side is then closed by the drops.
        _ = both => {}
        () = stop.cancelled() => {}
    }
}

/// Moves one direction until its reader ends, then ends the writer's side as well. The buffer
/// is reserved, never zeroed: a small request (most of them) touches only what it uses, which
/// keeps a new connection as quick as OpenSSH's.
async fn pump<R, W>(from: &mut R, to: &mut W, moved: &AtomicU64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(RELAY_BUFFER);
    loop {
        buf.clear();
        if from.read_buf(&mut buf).await? == 0 {
            return to.shutdown().await;
        }
        moved.fetch_add(buf.len() as u64, Ordering::Relaxed);
        to.write_all(&buf).await?;
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Who connected to a local listener.
enum Peer {
    Tcp(SocketAddr),
    Unix,
}

impl Peer {
    /// The originator address and port the direct-tcpip request names.
    fn originator(&self) -> (String, u16) {
        match self {
            Peer::Tcp(addr) => (addr.ip().to_string(), addr.port()),
            Peer::Unix => ("127.0.0.1".to_string(), 0),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unix => f.write_str("unix socket"),
        }
    }
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Box<dyn Link>, Peer)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                // Without it small exchanges wait for delayed ACKs.
                let _ = stream.set_nodelay(true);
                Ok((Box::new(stream), Peer::Tcp(addr)))
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                Ok((Box::new(stream), Peer::Unix))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_should_be_told_from_others() {
        for name in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_name(name), "{name}");
        }
        for name in ["10.0.0.5", "db", "localhost.evil.example", "0.0.0.0"] {
            assert!(!is_loopback_name(name), "{name}");
        }
    }
}
