//! One SSH connection to one configured host: connect with a deadline on every stage, verify the
//! host key, authenticate, then hand out channels within the host's session budget.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use russh::client::{self, DisconnectReason, Handle, Msg, Session};
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth::AgentSockets;
use super::known_hosts::{self, Verdict};
use super::read_ahead::ReadAhead;
use super::{SshError, auth, io_text, route};
use crate::audit::{Audit, Record};
use crate::config::{HostConfig, HostKeyPolicy};
use crate::sync::lock;

/// How long a refused channel open is retried before giving up; the server may be at its own
/// `MaxSessions` because of sessions that are not ours (another client's shell, say).
const CHANNEL_RETRY_WINDOW: Duration = Duration::from_secs(30);
/// A deadline on SSH disconnect so a hung server cannot stall a disconnect or shutdown.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a refusal is still put down to a session of ours that the server may not have freed
/// yet, when its freeing could not be proved: russh does not report the server's CLOSE of a
/// channel we closed first (a stopped command, an SFTP session), and sshd frees such a session
/// only once its process has exited.
const UNPROVEN_SETTLE: Duration = Duration::from_secs(1);

/// What we learned about the server while connecting.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub server_version: String,
    pub host_key_algorithm: String,
    pub host_key_fingerprint: String,
    pub cipher: String,
}

/// State shared between the russh handler (which runs in russh's session task) and us.
#[derive(Default)]
struct Shared {
    info: Mutex<ServerInfo>,
    /// Set when the host key check refused the server, so the user sees why.
    key_refusal: Mutex<Option<SshError>>,
    lost_reason: Mutex<Option<String>>,
    lost: CancellationToken,
    /// Set once authentication succeeded: only then is a drop a lost connection.
    authenticated: std::sync::atomic::AtomicBool,
    /// Set when the peer stopped answering keepalives (rather than closing the connection).
    silent: std::sync::atomic::AtomicBool,
    /// Channels the server closed (russh answered with our CLOSE at once), until their slot is
    /// released: see [`Slots::release`].
    server_closed: Mutex<HashSet<ChannelId>>,
    /// Sessions the server holds for us as far as we know: counted when it confirms one (in
    /// the order of its answers, so a refusal sees every confirmation sent before it), and
    /// uncounted once its freeing is proved or can no longer be.
    held: AtomicU32,
    /// Remote forwards asked for on this connection: only their channels are accepted.
    remote_forwards: super::forward::RemoteTable,
}

pub(super) struct Handler {
    host: Arc<HostConfig>,
    shared: Arc<Shared>,
    audit: Arc<Audit>,
}

impl Handler {
    fn audit_key(&self, outcome: &'static str, fingerprint: &str, error: Option<String>) {
        self.audit.record(Record {
            action: "host_key",
            outcome,
            host: Some(self.host.name.clone()),
            fingerprint: Some(fingerprint.to_string()),
            error,
            ..Record::default()
        });
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let algorithm = key.algorithm().as_str().to_string();
        {
            let mut info = lock(&self.shared.info);
            info.host_key_fingerprint = fingerprint.clone();
            info.host_key_algorithm = algorithm.clone();
        }
        let host = &self.host;
        if host.host_key_policy == HostKeyPolicy::AcceptAny {
            tracing::info!(host = %host.name, %algorithm, %fingerprint, "host key accepted without verification (host_key_policy accept-any)");
            self.audit_key("auto_accepted", &fingerprint, None);
            return Ok(true);
        }
        let refusal = match known_hosts::check(
            &host.known_hosts_files,
            &host.hostname,
            host.port,
            &key,
        ) {
            Verdict::Known => {
                tracing::debug!(host = %host.name, %fingerprint, "host key verified");
                return Ok(true);
            }
            Verdict::Unknown if host.host_key_policy == HostKeyPolicy::AcceptNew => {
                let file = known_hosts::primary_file(&host.known_hosts_files);
                let recorded = known_hosts::record(file, &host.hostname, host.port, &key);
                match &recorded {
                    Ok(()) => tracing::info!(
                        host = %host.name, %algorithm, %fingerprint,
                        "new host key trusted on first use (host_key_policy accept-new) and recorded in {}",
                        file.display()
                    ),
                    // As ssh does: the connection goes on, the key is not remembered.
                    Err(e) => tracing::warn!(
                        host = %host.name, %fingerprint,
                        "new host key trusted on first use, but recording it in {} failed: {e}",
                        file.display()
                    ),
                }
                self.audit_key(
                    "accepted_new",
                    &fingerprint,
                    recorded
                        .err()
                        .map(|e| format!("not recorded in {}: {e}", file.display())),
                );
                return Ok(true);
            }
            Verdict::Unknown => SshError::HostKeyUnknown {
                host: host.name.clone(),
                target: host.target(),
                algorithm,
                fingerprint,
                ssh_command: ssh_command(host),
                keyscan: keyscan_command(host),
                known_hosts: known_hosts::primary_file(&host.known_hosts_files)
                    .display()
                    .to_string(),
            },
            Verdict::Changed { path, line } => SshError::HostKeyChanged {
                host: host.name.clone(),
                target: host.target(),
                algorithm,
                fingerprint,
                path: path.display().to_string(),
                line,
                pattern: known_hosts::host_pattern(&host.hostname, host.port),
            },
            Verdict::Revoked { path, line } => SshError::HostKeyRevoked {
                host: host.name.clone(),
                target: host.target(),
                fingerprint,
                path: path.display().to_string(),
                line,
            },
        };
        tracing::warn!(host = %host.name, "{refusal}");
        let outcome = match refusal {
            SshError::HostKeyChanged { .. } => "refused_changed",
            SshError::HostKeyRevoked { .. } => "refused_revoked",
            _ => "refused_unknown",
        };
        let fingerprint = lock(&self.shared.info).host_key_fingerprint.clone();
        self.audit_key(outcome, &fingerprint, Some(refusal.to_string()));
        *lock(&self.shared.key_refusal) = Some(refusal);
        Ok(false)
    }

    /// A connection to a port the host listens on for us. Accepted only for a remote forward
    /// this connection asked for: russh's default would accept any, letting a server push
    /// connections at us that nobody requested.
    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(to) = self
            .shared
            .remote_forwards
            .route(connected_address, connected_port)
        else {
            tracing::warn!(
                host = %self.host.name,
                "refused a forwarded connection to {connected_address}:{connected_port} that no forward asked for"
            );
            self.audit.record(Record {
                action: "forward_refused",
                outcome: "refused",
                host: Some(self.host.name.clone()),
                remote_address: Some(format!("{connected_address}:{connected_port}")),
                peer: Some(format!("{originator_address}:{originator_port}")),
                error: Some("no forward of ours listens there".into()),
                ..Record::default()
            });
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let incoming = super::forward::Incoming {
            stream: channel.into_stream(),
            originator: format!("{originator_address}:{originator_port}"),
        };
        // Never wait here (this is the session's own task): a full queue drops the connection.
        if to.try_send(incoming).is_err() {
            tracing::warn!(host = %self.host.name, "dropped a forwarded connection: too many waiting");
        }
        Ok(())
    }

    async fn channel_open_confirmation(
        &mut self,
        _channel: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.shared.held.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        lock(&self.shared.server_closed).insert(channel);
        Ok(())
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let mut info = lock(&self.shared.info);
        info.server_version = String::from_utf8_lossy(session.remote_sshid())
            .trim()
            .to_string();
        info.cipher = names.cipher.as_ref().to_string();
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let (text, result) = match reason {
            DisconnectReason::ReceivedDisconnect(info) => (
                format!("server closed the connection ({})", info.message),
                Ok(()),
            ),
            DisconnectReason::Error(e) => {
                if matches!(e, russh::Error::KeepaliveTimeout) {
                    self.shared.silent.store(true, Ordering::Relaxed);
                }
                (describe_russh_error(&e), Err(e))
            }
        };
        tracing::info!(host = %self.host.name, "SSH connection ended: {text}");
        let mut reason = lock(&self.shared.lost_reason);
        // A reason already set means we closed it ourselves (and audited that).
        if reason.is_none() && self.shared.authenticated.load(Ordering::Relaxed) {
            self.audit.record(Record {
                action: "connection_lost",
                outcome: "error",
                host: Some(self.host.name.clone()),
                error: Some(text.clone()),
                ..Record::default()
            });
        }
        reason.get_or_insert(text);
        drop(reason);
        self.shared.lost.cancel();
        result
    }
}

/// A live, authenticated connection.
pub struct Connection {
    handle: Arc<Handle<Handler>>,
    host: Arc<HostConfig>,
    shared: Arc<Shared>,
    /// Work channels (commands, SFTP): the host's `max_sessions` minus one slot kept for
    /// stopping commands, so a full budget can never block its own cleanup.
    budget: Budget,
    control: Arc<Semaphore>,
    slots: Arc<Slots>,
    pub connected_at: SystemTime,
    /// Whether the login shell runs the daemon's POSIX scripts itself (learnt by the first
    /// script, see `job::capture`).
    posix_login_shell: std::sync::OnceLock<bool>,
    /// The proxy command carrying the session, if any: killed when the connection is dropped.
    _proxy: Option<route::ProxyProcess>,
    /// The bastion's connection this one runs through, kept open while this one lives.
    _bastion: Option<Carried>,
    /// Connections running through this one (it is their bastion).
    carried: AtomicU32,
    /// Whether [`Connection::ask_for_nodelay`] ran.
    nodelay_asked: AtomicBool,
}

/// A bastion's connection, counted as carrying one more connection while held.
struct Carried(Arc<Connection>);

impl Carried {
    fn new(conn: Arc<Connection>) -> Carried {
        conn.carried.fetch_add(1, Ordering::Relaxed);
        Carried(conn)
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        self.0.carried.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open session channel with its slot in the budget.
pub type OpenChannel = (Channel<Msg>, ChannelSlot);

/// A channel's slot in the budget. Dropped once the caller is done with the channel; the slot
/// becomes usable again only once the server has freed the session (see [`Slots::release`]).
pub struct ChannelSlot {
    permit: Option<OwnedSemaphorePermit>,
    id: ChannelId,
    slots: Arc<Slots>,
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.slots.in_use.fetch_sub(1, Ordering::Relaxed);
        self.slots.releasing.fetch_add(1, Ordering::Relaxed);
        let release = self.slots.clone().release(self.id, self.permit.take());
        // A runtime that is shutting down drops the task, and the permit with it.
        drop(self.slots.runtime.spawn(release));
    }
}

/// What the slots of one connection share: the count shown by `status`, and what it takes to
/// prove that the server freed a session before its slot is used again.
struct Slots {
    handle: Weak<Handle<Handler>>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// How long to wait for the server's answer that proves a session freed.
    answer_within: Duration,
    /// Channels the callers hold (what `status` shows).
    in_use: AtomicU32,
    /// Slots given back whose session the server may not have freed yet.
    releasing: AtomicU32,
    /// Until when a refusal may still be a session of ours freed without proof.
    unproven_until: Mutex<Option<tokio::time::Instant>>,
}

impl Slots {
    fn slot(self: &Arc<Self>, permit: Option<OwnedSemaphorePermit>, id: ChannelId) -> ChannelSlot {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        ChannelSlot {
            permit,
            id,
            slots: self.clone(),
        }
    }

    /// Returns a slot's permit once the server has freed the session it stood for.
    ///
    /// sshd's loop (`server_loop2`) handles every packet it has read, then collects dead
    /// channels (`channel_garbage_collect`, which calls `session_close_by_channel`: only then
    /// is the session free), then reads again. A CHANNEL_OPEN read together with the CLOSE of
    /// a finished session is therefore refused ("no more sessions"), which a network or a busy
    /// sshd makes likely for an open sent right behind a close. russh answers the server's
    /// CLOSE with ours before the channel reports it closed, so a global request sent now
    /// follows our CLOSE on the wire, and its answer comes after sshd handled that CLOSE and
    /// collected the channel: an open sent after the answer finds the session freed.
    async fn release(self: Arc<Self>, id: ChannelId, permit: Option<OwnedSemaphorePermit>) {
        if let Some(handle) = self.handle.upgrade() {
            let answer = tokio::time::timeout(self.answer_within, handle.send_ping());
            tokio::select! {
                _ = answer => {}
                () = self.shared.lost.cancelled() => {}
            }
        }
        // The server closed this channel first (russh reports that before it handles our
        // request, so it is known by now): the answer proved the session freed. Otherwise we
        // closed it (a stopped command, an SFTP session): sshd frees the session only once its
        // process has exited, which no message tells us.
        if !lock(&self.shared.server_closed).remove(&id) {
            *lock(&self.unproven_until) = Some(tokio::time::Instant::now() + UNPROVEN_SETTLE);
        }
        take_one(&self.shared.held);
        self.releasing.fetch_sub(1, Ordering::Relaxed);
        drop(permit);
    }

    /// Whether a session of ours may still be held by the server after its slot was given
    /// back: a refusal now says nothing about the server's limit.
    fn may_be_closing(&self) -> bool {
        self.releasing.load(Ordering::Relaxed) > 0
            || lock(&self.unproven_until).is_some_and(|t| tokio::time::Instant::now() < t)
    }
}

/// The work budget: how many work channels may be open at once, lowered to what the server
/// grants when it refuses one, and grown back by probing.
struct Budget {
    work: Arc<Semaphore>,
    limit: AtomicU32,
    /// The budget from hosts.json; a lowered budget grows back towards it.
    max: u32,
    /// Channels opened since the budget last changed.
    opened_since_change: AtomicU32,
    /// Channels opened without a refusal before a lowered budget grows by one: doubles (up to
    /// [`REGROW_MAX`]) each time the server refuses again at a limit it refused before.
    regrow_after: AtomicU32,
    /// The last limit learnt from a refusal (0: none).
    learnt: AtomicU32,
    /// Permits to retire when they come back: a lowered budget could not take them at once
    /// because calls held them.
    permit_debt: AtomicU32,
}

/// A budget lowered by [`Budget::refused`].
#[derive(Debug, PartialEq, Eq)]
struct Lowered {
    to: u32,
    /// The server refused at this limit before (a probe above a real limit failed).
    again: bool,
}

impl Budget {
    fn new(work: u32) -> Budget {
        Budget {
            work: Arc::new(Semaphore::new(work as usize)),
            limit: AtomicU32::new(work),
            max: work,
            opened_since_change: AtomicU32::new(0),
            regrow_after: AtomicU32::new(REGROW_AFTER),
            learnt: AtomicU32::new(0),
            permit_debt: AtomicU32::new(0),
        }
    }

    fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A work channel opened with `permit`: pays a permit debt with it, and grows a lowered
    /// budget by one after enough clean opens. Returns the new limit when it grew.
    fn opened(&self, permit: &mut Option<OwnedSemaphorePermit>) -> Option<u32> {
        if take_one(&self.permit_debt)
            && let Some(p) = permit.take()
        {
            p.forget();
        }
        if self.limit() >= self.max
            || self.opened_since_change.fetch_add(1, Ordering::Relaxed) + 1
                < self.regrow_after.load(Ordering::Relaxed)
        {
            return None;
        }
        self.opened_since_change.store(0, Ordering::Relaxed);
        let max = self.max;
        let grown = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        if !take_one(&self.permit_debt) {
            self.work.add_permits(1);
        }
        Some(grown + 1)
    }

    /// The server refused a session while it held `open` of ours (work and control) and none
    /// of ours was still closing there: it grants at most that many, one of which stays
    /// reserved for stopping commands. The budget drops to what was open, never by a step per
    /// refusal (refusals come in bursts). `permit` (the refused opener's) is retired with the other
    /// permits above the new limit; the opener must queue again. None when the budget was
    /// already that low.
    fn refused(&self, open: u32, permit: &mut Option<OwnedSemaphorePermit>) -> Option<Lowered> {
        self.opened_since_change.store(0, Ordering::Relaxed);
        let floor = open.saturating_sub(1).max(1);
        let old = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (floor < n).then_some(floor)
            })
            .ok()?;
        let again = self.learnt.swap(floor, Ordering::Relaxed) == floor;
        if again {
            let _ = self
                .regrow_after
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some((n * 2).min(REGROW_MAX))
                });
        }
        let mut removed = (old - floor) as usize;
        if let Some(p) = permit.take() {
            p.forget();
            removed -= 1;
        }
        let short = removed - self.work.forget_permits(removed);
        self.permit_debt
            .fetch_add(u32::try_from(short).unwrap_or(u32::MAX), Ordering::Relaxed);
        Some(Lowered { to: floor, again })
    }
}

impl Connection {
    /// Opens a connection to `host`, bounded by its `connect_timeout` as a whole.
    /// A host with a `proxy_jump` is reached through `bastion`, its bastion's connection,
    /// which stays open while this one lives.
    pub async fn open(
        host: Arc<HostConfig>,
        audit: Arc<Audit>,
        agents: &AgentSockets,
        bastion: Option<Arc<Connection>>,
    ) -> Result<Connection, SshError> {
        let deadline = host.connect_timeout;
        let target = host.target();
        let first = if bastion.is_some() {
            "channel through the bastion"
        } else if host.proxy_command.is_some() {
            "proxy command"
        } else {
            "TCP connect"
        };
        let stage = Arc::new(Mutex::new(first));
        let bastion_name = bastion.as_ref().map(|b| b.host_name().to_string());
        let address = format!("{}:{}", host.hostname, host.port);
        let attempt = Self::open_inner(host, audit, agents, bastion, stage.clone());
        match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => match bastion_name {
                // Still waiting for the bastion's channel: the bastion could not connect onwards.
                Some(bastion) if *lock(&stage) == first => Err(SshError::Jump {
                    target,
                    bastion,
                    reason: format!(
                        "no answer within {} s: the bastion could not connect to {address} (connect_timeout)",
                        deadline.as_secs()
                    ),
                }),
                _ => Err(SshError::ConnectTimeout {
                    target,
                    secs: deadline.as_secs(),
                    stage: *lock(&stage),
                }),
            },
        }
    }

    async fn open_inner(
        host: Arc<HostConfig>,
        audit: Arc<Audit>,
        agents: &AgentSockets,
        bastion: Option<Arc<Connection>>,
        stage: Arc<Mutex<&'static str>>,
    ) -> Result<Connection, SshError> {
        let target = host.target();
        let (link, mut proxy) = route::open(&host, bastion.as_deref()).await?;
        *lock(&stage) = "key exchange";
        let config = Arc::new(client::Config {
            preferred: preferred_ciphers(host.cipher.as_deref()),
            nodelay: true,
            keepalive_interval: host.keepalive_interval,
            keepalive_max: host.keepalive_max,
            inactivity_timeout: None,
            // The most the server may send in one channel packet. Twice russh's (and OpenSSH's)
            // 32 KiB: downloads, output and forwarded replies take half the packets (MACs,
            // wakeups, reads), ~15 % less of the daemon's CPU per byte received. 65535, not
            // 64 KiB: russh logs an error above it; sshd sends whatever size is asked for.
            maximum_packet_size: 65535,
            ..Default::default()
        });
        let shared = Arc::new(Shared::default());
        let handler = Handler {
            host: host.clone(),
            shared: shared.clone(),
            audit,
        };
        let link = ReadAhead::new(link);
        let mut handle = match client::connect_stream(config, link, handler).await {
            Ok(handle) => handle,
            Err(e) => {
                if let Some(refusal) = lock(&shared.key_refusal).take() {
                    return Err(refusal);
                }
                // A proxy command that ended is the reason, with what it said.
                if let Some(reason) = exited_proxy(&mut proxy).await {
                    return Err(SshError::ProxyCommand { target, reason });
                }
                // Closed before a word of SSH was exchanged: not an SSH port, or an sshd
                // shedding unauthenticated connections (MaxStartups). Nothing ran there.
                if lock(&shared.info).server_version.is_empty()
                    && matches!(e, russh::Error::Disconnect | russh::Error::IO(_))
                {
                    return Err(SshError::NoHandshake {
                        target,
                        port: host.port,
                        reason: describe_russh_error(&e),
                    });
                }
                return Err(SshError::Protocol {
                    target,
                    message: describe_russh_error(&e),
                });
            }
        };
        *lock(&stage) = "authentication";
        if let Err(e) = auth::authenticate(&mut handle, &host, agents).await {
            if let Some(reason) = exited_proxy(&mut proxy).await {
                return Err(SshError::ProxyCommand { target, reason });
            }
            return Err(e);
        }
        shared.authenticated.store(true, Ordering::Relaxed);
        let budget = host.max_sessions;
        let (work, control) = if budget >= 2 {
            (budget - 1, 1)
        } else {
            (budget, 0)
        };
        let info = lock(&shared.info).clone();
        tracing::info!(
            host = %host.name, server = %info.server_version, cipher = %info.cipher,
            host_key = %info.host_key_fingerprint, "connected to {target}"
        );
        let handle = Arc::new(handle);
        let slots = Arc::new(Slots {
            handle: Arc::downgrade(&handle),
            shared: shared.clone(),
            runtime: tokio::runtime::Handle::current(),
            answer_within: host.connect_timeout,
            in_use: AtomicU32::new(0),
            releasing: AtomicU32::new(0),
            unproven_until: Mutex::new(None),
        });
        Ok(Connection {
            handle,
            host,
            shared,
            budget: Budget::new(work),
            control: Arc::new(Semaphore::new(control as usize)),
            slots,
            connected_at: SystemTime::now(),
            posix_login_shell: std::sync::OnceLock::new(),
            _proxy: proxy,
            _bastion: bastion.map(Carried::new),
            carried: AtomicU32::new(0),
            nodelay_asked: AtomicBool::new(false),
        })
    }

    pub fn host(&self) -> &HostConfig {
        &self.host
    }

    pub(super) fn handle(&self) -> &Handle<Handler> {
        &self.handle
    }

    /// Once per connection, in the background: a session that runs `exit`. OpenSSH's sshd turns
    /// Nagle's algorithm off on a connection only when a session there starts a command; on a
    /// connection that only relays (a bastion, a forward) what it relays back then arrives in
    /// small writes, each held until our delayed ACK: about 40 ms per command behind a bastion.
    /// Nothing waits for it, and a host that refuses it loses nothing.
    pub(super) fn ask_for_nodelay(&self) {
        if self.nodelay_asked.swap(true, Ordering::Relaxed) {
            return;
        }
        let handle = self.handle.clone();
        let (name, within) = (self.host.name.clone(), self.host.connect_timeout);
        tokio::spawn(async move {
            let session = async {
                let channel = handle.channel_open_session().await?;
                channel.exec(false, "exit").await?;
                channel.close().await
            };
            match tokio::time::timeout(within, session).await {
                Ok(Ok(())) => tracing::debug!(host = %name, "asked sshd for TCP_NODELAY"),
                Ok(Err(e)) => tracing::debug!(
                    host = %name,
                    "no session to turn Nagle off: {}",
                    describe_russh_error(&e)
                ),
                Err(_) => tracing::debug!(host = %name, "no session to turn Nagle off in time"),
            }
        });
    }

    pub(super) fn remote_forwards(&self) -> &super::forward::RemoteTable {
        &self.shared.remote_forwards
    }

    /// `None` until the first script of ours told.
    pub fn posix_login_shell(&self) -> Option<bool> {
        self.posix_login_shell.get().copied()
    }

    pub fn learn_login_shell(&self, posix: bool) {
        let _ = self.posix_login_shell.set(posix);
    }

    pub fn host_name(&self) -> &str {
        &self.host.name
    }

    /// Whether the connection ended because the peer went silent (network down, server hung).
    pub fn went_silent(&self) -> bool {
        self.shared.silent.load(Ordering::Relaxed)
    }

    pub fn info(&self) -> ServerInfo {
        lock(&self.shared.info).clone()
    }

    pub fn is_alive(&self) -> bool {
        !self.shared.lost.is_cancelled() && !self.handle.is_closed()
    }

    /// Why the connection ended, if it did.
    pub fn lost_reason(&self) -> Option<String> {
        if self.is_alive() {
            return None;
        }
        Some(
            lock(&self.shared.lost_reason)
                .clone()
                .unwrap_or_else(|| "connection closed".into()),
        )
    }

    /// Resolves when the connection is gone (keepalive failure, EOF, or [`Connection::close`]).
    pub async fn lost(&self) {
        self.shared.lost.cancelled().await;
    }

    pub fn lost_error(&self) -> SshError {
        SshError::ConnectionLost {
            target: self.host.target(),
            reason: self
                .lost_reason()
                .unwrap_or_else(|| "connection closed".into()),
        }
    }

    /// Whether no call uses the connection and no other connection runs through it.
    pub fn is_idle(&self) -> bool {
        self.channels_in_use() == 0 && self.carried.load(Ordering::Relaxed) == 0
    }

    pub fn channels_in_use(&self) -> u32 {
        self.slots.in_use.load(Ordering::Relaxed)
    }

    pub fn channel_limit(&self) -> u32 {
        self.budget.limit()
    }

    /// Closes the connection; in-flight calls see "connection lost: `reason`".
    pub async fn close(&self, reason: &str) {
        lock(&self.shared.lost_reason).get_or_insert_with(|| reason.to_string());
        self.shared.lost.cancel();
        let bye = self
            .handle
            .disconnect(Disconnect::ByApplication, reason, "en");
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, bye).await;
    }

    /// Opens a session channel for work (a command), waiting for a free slot in the budget.
    pub async fn open_work_channel(&self) -> Result<OpenChannel, SshError> {
        let permit = tokio::select! {
            permit = self.budget.work.clone().acquire_owned() => permit.ok(),
            () = self.lost() => return Err(self.lost_error()),
        };
        self.open_channel(permit, true).await
    }

    /// Opens a session channel from the reserved control slot (used to stop commands).
    pub async fn open_control_channel(&self) -> Result<OpenChannel, SshError> {
        // With max_sessions = 1 there is no reserved slot; try anyway, the server may allow it.
        let permit = if self.host.max_sessions < 2 {
            None
        } else {
            tokio::select! {
                permit = self.control.clone().acquire_owned() => permit.ok(),
                () = self.lost() => return Err(self.lost_error()),
            }
        };
        self.open_channel(permit, false).await
    }

    async fn open_channel(
        &self,
        mut permit: Option<OwnedSemaphorePermit>,
        learn_limit: bool,
    ) -> Result<OpenChannel, SshError> {
        let target = self.host.target();
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(2);
        loop {
            let open = tokio::time::timeout(
                self.host.connect_timeout,
                self.handle.channel_open_session(),
            );
            let failure = tokio::select! {
                result = open => match result {
                    Ok(Ok(channel)) => {
                        if learn_limit && let Some(limit) = self.budget.opened(&mut permit) {
                            tracing::debug!(host = %self.host.name, "channel budget grown back to {limit}");
                        }
                        let slot = self.slots.slot(permit, channel.id());
                        return Ok((channel, slot));
                    }
                    Ok(Err(e)) => e,
                    Err(_) => {
                        return Err(SshError::ChannelOpen {
                            target,
                            reason: format!("no answer within {} s", self.host.connect_timeout.as_secs()),
                        });
                    }
                },
                () = self.lost() => return Err(self.lost_error()),
            };
            // A refused channel is not a dead connection: the server is at its MaxSessions.
            let refused = matches!(
                failure,
                russh::Error::ChannelOpenFailure(
                    ChannelOpenFailure::ConnectFailed | ChannelOpenFailure::ResourceShortage
                )
            );
            if !refused {
                return Err(if self.is_alive() {
                    SshError::ChannelOpen {
                        target,
                        reason: describe_russh_error(&failure),
                    }
                } else {
                    self.lost_error()
                });
            }
            if learn_limit {
                // Not the channels our callers hold: confirmations of opens sent with ours may
                // not have reached their callers yet.
                let open = self.shared.held.load(Ordering::Relaxed);
                if self.slots.may_be_closing() {
                    // A session of ours may still hold its place on the server: wait for it
                    // rather than learn a limit that is not the server's.
                    tracing::debug!(
                        host = %self.host.name,
                        "server refused a session channel with {open} open while one of ours was closing; retrying"
                    );
                } else if let Some(lowered) = self.budget.refused(open, &mut permit) {
                    let to = lowered.to;
                    if lowered.again {
                        tracing::debug!(
                            host = %self.host.name,
                            "server refused a session channel with {open} open again; budget back to {to}"
                        );
                    } else {
                        tracing::warn!(
                            host = %self.host.name,
                            "server refused a session channel with {open} open; lowering this connection's budget to {to}"
                        );
                    }
                    // Our permit stood for a slot the server does not grant: queue again
                    // behind the smaller budget.
                    permit = tokio::select! {
                        p = self.budget.work.clone().acquire_owned() => p.ok(),
                        () = self.lost() => return Err(self.lost_error()),
                    };
                }
            }
            if started.elapsed() > CHANNEL_RETRY_WINDOW {
                return Err(SshError::ChannelOpen {
                    target,
                    reason: "the server kept refusing new sessions (MaxSessions reached?)".into(),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

/// Decrements `counter` if it is above zero; true when it did.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Channels opened without a refusal before a lowered channel budget grows by one (at first).
const REGROW_AFTER: u32 = 32;
/// The longest interval between probes above a limit the server keeps refusing.
const REGROW_MAX: u32 = 1024;

/// russh's algorithm preferences with our cipher first: the configured one, else AES-GCM where
/// the CPU has AES instructions (measured 25-40 % faster than ChaCha20 here), else ChaCha20.
fn preferred_ciphers(configured: Option<&str>) -> russh::Preferred {
    let first = configured.unwrap_or_else(|| {
        if has_aes_instructions() {
            "aes256-gcm@openssh.com"
        } else {
            "chacha20-poly1305@openssh.com"
        }
    });
    let default = russh::Preferred::default();
    let mut order: Vec<russh::cipher::Name> = default
        .cipher
        .iter()
        .copied()
        .filter(|n| n.as_ref() != first)
        .collect();
    if let Some(name) = default.cipher.iter().copied().find(|n| n.as_ref() == first) {
        order.insert(0, name);
    }
    russh::Preferred {
        cipher: std::borrow::Cow::Owned(order),
        ..default
    }
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The `ssh` command line that would add this host's key to known_hosts, through its bastions
/// as `ssh -J` reaches them.
fn ssh_command(host: &HostConfig) -> String {
    format!("ssh {}{}", jump_option(host), address(host))
}

/// `ssh-keyscan` for this host, run on its last bastion when it has one: only that reaches it.
fn keyscan_command(host: &HostConfig) -> String {
    let scan = format!("ssh-keyscan -p {} {}", host.port, host.hostname);
    match &host.jump {
        Some(bastion) => format!("ssh {}{} {scan}", jump_option(bastion), address(bastion)),
        None => scan,
    }
}

/// `[-p PORT ]user@host`, as `ssh` takes it.
fn address(host: &HostConfig) -> String {
    let port = if host.port == 22 {
        String::new()
    } else {
        format!("-p {} ", host.port)
    };
    format!("{port}{}@{}", host.username, host.hostname)
}

/// `-J user@host:port,… ` for the bastions `host` is reached through (first first), or nothing.
fn jump_option(host: &HostConfig) -> String {
    let mut hops = Vec::new();
    let mut at = host.jump.as_deref();
    while let Some(hop) = at {
        hops.push(format!("{}@{}:{}", hop.username, hop.hostname, hop.port));
        at = hop.jump.as_deref();
    }
    if hops.is_empty() {
        return String::new();
    }
    hops.reverse();
    format!("-J {} ", hops.join(","))
}

/// Why the connection's proxy command, if it has one, is no use.
async fn exited_proxy(proxy: &mut Option<route::ProxyProcess>) -> Option<String> {
    proxy.as_mut()?.exit_reason().await
}

/// russh's errors, phrased for people.
pub(crate) fn describe_russh_error(e: &russh::Error) -> String {
    match e {
        russh::Error::KeepaliveTimeout => {
            "no answer to keepalives (network down or server hung)".into()
        }
        russh::Error::InactivityTimeout => "inactivity timeout".into(),
        russh::Error::IO(io) => io_text(io),
        russh::Error::Disconnect => "disconnected".into(),
        russh::Error::SendError => "the connection is closed".into(),
        russh::Error::UnknownKey => "host key refused".into(),
        russh::Error::NoCommonAlgo { kind, ours, theirs } => {
            let what = match kind {
                russh::AlgorithmKind::Kex => "key exchange method",
                russh::AlgorithmKind::Key => "host key type",
                russh::AlgorithmKind::Cipher => "cipher",
                russh::AlgorithmKind::Compression => "compression method",
                russh::AlgorithmKind::Mac => "MAC",
            };
            format!(
                "the server offers no {what} mcp-sshd speaks (ours: {}; the server's: {})",
                ours.join(", "),
                theirs.join(", ")
            )
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn take(budget: &Budget) -> Option<OwnedSemaphorePermit> {
        Some(budget.work.clone().try_acquire_owned().unwrap())
    }

    /// Permits a caller could take now, and the debt still to retire.
    fn room(budget: &Budget) -> (usize, u32) {
        (
            budget.work.available_permits(),
            budget.permit_debt.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_refusal_lowers_the_budget_to_what_the_server_held_and_retires_the_permits_above() {
        let budget = Budget::new(9);
        // Four open, the fifth refused: three work slots (the fourth session is the reserved one).
        let held: Vec<_> = (0..4).map(|_| take(&budget)).collect();
        let mut refused = take(&budget);
        let lowered = budget.refused(4, &mut refused).unwrap();
        assert_eq!(
            lowered,
            Lowered {
                to: 3,
                again: false
            }
        );
        assert!(refused.is_none(), "the refused opener's permit is retired");
        assert_eq!(budget.limit(), 3);
        // 9 - 3 = 6 to retire: the refused one, the 4 idle ones, and one still held (a debt).
        assert_eq!(room(&budget), (0, 1));
        // More refusals of the same burst change nothing.
        assert_eq!(budget.refused(4, &mut None), None);
        drop(held);
        // The next open pays the debt with its permit, which then never comes back.
        let mut permit = take(&budget);
        assert_eq!(budget.opened(&mut permit), None);
        assert!(permit.is_none(), "the debt was paid with this permit");
        assert_eq!(room(&budget), (3, 0));
    }

    #[test]
    fn a_lowered_budget_grows_back_to_the_maximum() {
        let budget = Budget::new(9);
        let held: Vec<_> = (0..2).map(|_| take(&budget)).collect();
        budget.refused(2, &mut take(&budget)).unwrap();
        assert_eq!(budget.limit(), 1);
        drop(held);
        let mut opens = 0;
        while budget.limit() < 9 {
            let mut permit = take(&budget);
            budget.opened(&mut permit);
            opens += 1;
            assert!(opens <= 8 * REGROW_AFTER, "stuck at {}", budget.limit());
        }
        assert_eq!(opens, 8 * REGROW_AFTER);
        assert_eq!(room(&budget), (9, 0), "every slot is usable again");
        let mut permit = take(&budget);
        assert_eq!(budget.opened(&mut permit), None, "never above the maximum");
    }

    #[test]
    fn probing_a_real_limit_again_and_again_backs_off() {
        let budget = Budget::new(9);
        let held: Vec<_> = (0..4).map(|_| take(&budget)).collect();
        budget.refused(4, &mut take(&budget)).unwrap();
        drop(held);
        let mut interval = REGROW_AFTER;
        for _ in 0..8 {
            for _ in 0..interval {
                budget.opened(&mut take(&budget));
            }
            assert_eq!(budget.limit(), 4, "grew by one to probe");
            // The probe is refused with three work channels and the control one open: the same
            // limit, learnt again.
            let held: Vec<_> = (0..3).map(|_| take(&budget)).collect();
            let lowered = budget.refused(4, &mut take(&budget)).unwrap();
            assert_eq!(lowered, Lowered { to: 3, again: true });
            drop(held);
            interval = (interval * 2).min(REGROW_MAX);
            assert_eq!(budget.regrow_after.load(Ordering::Relaxed), interval);
        }
        assert_eq!(interval, REGROW_MAX);
    }
}
