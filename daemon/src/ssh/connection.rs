//! One SSH connection to one configured host: connect with a deadline on every stage, verify the
//! host key, authenticate, then hand out channels within the host's session budget.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::client::{self, DisconnectReason, Handle, Msg, Session};
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelOpenFailure, Disconnect};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth::AgentSockets;
use super::known_hosts::{self, Verdict};
use super::{SshError, auth};
use crate::audit::{Audit, Record};
use crate::config::HostConfig;

/// How long a refused channel open is retried before giving up; the server may be at its own
/// `MaxSessions` because of sessions that are not ours (another client's shell, say).
const CHANNEL_RETRY_WINDOW: Duration = Duration::from_secs(30);
/// A deadline on SSH disconnect so a hung server cannot stall a disconnect or shutdown.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
}

struct Handler {
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
        if host.auto_accept_host_key {
            tracing::info!(host = %host.name, %algorithm, %fingerprint, "host key accepted without verification (auto_accept_host_key)");
            self.audit_key("auto_accepted", &fingerprint, None);
            return Ok(true);
        }
        let refusal =
            match known_hosts::check(&host.known_hosts_files, &host.hostname, host.port, &key) {
                Verdict::Known => {
                    tracing::debug!(host = %host.name, %fingerprint, "host key verified");
                    return Ok(true);
                }
                Verdict::Unknown => SshError::HostKeyUnknown {
                    host: host.name.clone(),
                    target: host.target(),
                    hostname: host.hostname.clone(),
                    port: host.port,
                    algorithm,
                    fingerprint,
                    ssh_command: ssh_command(host),
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
    handle: Handle<Handler>,
    host: Arc<HostConfig>,
    shared: Arc<Shared>,
    /// Channel budget for commands (and later SFTP): the host's `max_sessions` minus one slot
    /// kept for stopping commands, so a full budget can never block its own cleanup.
    work: Arc<Semaphore>,
    control: Arc<Semaphore>,
    work_limit: AtomicU32,
    /// The budget from hosts.json; a lowered budget grows back towards it.
    work_max: u32,
    /// Channels opened since the server last refused one.
    opened_since_refusal: AtomicU32,
    /// Permits to retire when they come back: a lowered budget could not take them at once
    /// because calls held them.
    permit_debt: AtomicU32,
    in_use: Arc<AtomicU32>,
    pub connected_at: SystemTime,
}

/// A channel slot; frees itself (and the count shown by `status`) on drop.
pub struct ChannelSlot {
    _permit: Option<OwnedSemaphorePermit>,
    in_use: Arc<AtomicU32>,
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    /// Opens a connection to `host`, bounded by its `connect_timeout` as a whole.
    pub async fn open(
        host: Arc<HostConfig>,
        audit: Arc<Audit>,
        agents: &AgentSockets,
    ) -> Result<Connection, SshError> {
        let deadline = host.connect_timeout;
        let target = host.target();
        let stage = Arc::new(Mutex::new("TCP connect"));
        let attempt = Self::open_inner(host, audit, agents, stage.clone());
        match tokio::time::timeout(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(SshError::ConnectTimeout {
                target,
                secs: deadline.as_secs(),
                stage: *lock(&stage),
            }),
        }
    }

    async fn open_inner(
        host: Arc<HostConfig>,
        audit: Arc<Audit>,
        agents: &AgentSockets,
        stage: Arc<Mutex<&'static str>>,
    ) -> Result<Connection, SshError> {
        let target = host.target();
        let tcp = TcpStream::connect((host.hostname.as_str(), host.port))
            .await
            .map_err(|source| SshError::Connect {
                target: target.clone(),
                source,
            })?;
        // Without TCP_NODELAY every small exchange waits for delayed ACKs (~40 ms per command).
        tcp.set_nodelay(true).map_err(|source| SshError::Connect {
            target: target.clone(),
            source,
        })?;
        *lock(&stage) = "key exchange";
        let config = Arc::new(client::Config {
            preferred: preferred_ciphers(host.cipher.as_deref()),
            nodelay: true,
            keepalive_interval: host.keepalive_interval,
            keepalive_max: host.keepalive_max,
            inactivity_timeout: None,
            ..Default::default()
        });
        let shared = Arc::new(Shared::default());
        let handler = Handler {
            host: host.clone(),
            shared: shared.clone(),
            audit,
        };
        let mut handle = match client::connect_stream(config, tcp, handler).await {
            Ok(handle) => handle,
            Err(e) => {
                if let Some(refusal) = lock(&shared.key_refusal).take() {
                    return Err(refusal);
                }
                return Err(SshError::Protocol {
                    target,
                    message: describe_russh_error(&e),
                });
            }
        };
        *lock(&stage) = "authentication";
        auth::authenticate(&mut handle, &host, agents).await?;
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
        Ok(Connection {
            handle,
            host,
            shared,
            work: Arc::new(Semaphore::new(work as usize)),
            control: Arc::new(Semaphore::new(control as usize)),
            work_limit: AtomicU32::new(work),
            work_max: work,
            opened_since_refusal: AtomicU32::new(0),
            permit_debt: AtomicU32::new(0),
            in_use: Arc::new(AtomicU32::new(0)),
            connected_at: SystemTime::now(),
        })
    }

    pub fn host(&self) -> &HostConfig {
        &self.host
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

    pub fn channels_in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }

    pub fn channel_limit(&self) -> u32 {
        self.work_limit.load(Ordering::Relaxed)
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
    pub async fn open_work_channel(&self) -> Result<(Channel<Msg>, ChannelSlot), SshError> {
        let permit = tokio::select! {
            permit = self.work.clone().acquire_owned() => permit.ok(),
            () = self.lost() => return Err(self.lost_error()),
        };
        self.open_channel(permit, true).await
    }

    /// Opens a session channel from the reserved control slot (used to stop commands).
    pub async fn open_control_channel(&self) -> Result<(Channel<Msg>, ChannelSlot), SshError> {
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
    ) -> Result<(Channel<Msg>, ChannelSlot), SshError> {
        let target = self.host.target();
        let started = tokio::time::Instant::now();
        // Most refusals are momentary: sshd frees a closed session only after the packets that
        // arrived with our close are handled, so an open sent right behind it can bounce once.
        let mut backoff = Duration::from_millis(2);
        loop {
            let open = tokio::time::timeout(
                self.host.connect_timeout,
                self.handle.channel_open_session(),
            );
            let failure = tokio::select! {
                result = open => match result {
                    Ok(Ok(channel)) => {
                        self.in_use.fetch_add(1, Ordering::Relaxed);
                        if learn_limit {
                            if take_one(&self.permit_debt)
                                && let Some(p) = permit.take()
                            {
                                p.forget();
                            }
                            self.regrow_budget();
                        }
                        let slot = ChannelSlot { _permit: permit, in_use: self.in_use.clone() };
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
                self.opened_since_refusal.store(0, Ordering::Relaxed);
                let removed = self.lower_budget_to(self.in_use.load(Ordering::Relaxed));
                if removed > 0 {
                    // Our permit stands for a slot the server does not grant: give it up (with
                    // any other idle ones) and queue again behind the smaller budget.
                    if let Some(p) = permit.take() {
                        p.forget();
                    }
                    let wanted = removed as usize - 1;
                    let short = wanted - self.work.forget_permits(wanted);
                    self.permit_debt
                        .fetch_add(u32::try_from(short).unwrap_or(u32::MAX), Ordering::Relaxed);
                    permit = tokio::select! {
                        p = self.work.clone().acquire_owned() => p.ok(),
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

    /// A lowered budget may have been a moment's crowding (sessions the server had not freed
    /// yet): after [`REGROW_AFTER`] channels opened without a refusal, it grows by one.
    fn regrow_budget(&self) {
        if self.work_limit.load(Ordering::Relaxed) >= self.work_max
            || self.opened_since_refusal.fetch_add(1, Ordering::Relaxed) + 1 < REGROW_AFTER
        {
            return;
        }
        self.opened_since_refusal.store(0, Ordering::Relaxed);
        let max = self.work_max;
        if self
            .work_limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
            && !take_one(&self.permit_debt)
        {
            self.work.add_permits(1);
        }
    }

    /// The server refused a session while `open` of ours were open: it grants at most that
    /// many, one of which stays reserved for stopping commands. Refusals also happen briefly
    /// at the limit (the server frees a session a moment after we see it close), so the budget
    /// drops to what was open, never by a step per refusal: a burst of refusals must not
    /// shrink it to nothing. Returns by how much it dropped.
    fn lower_budget_to(&self, open: u32) -> u32 {
        let floor = open.saturating_sub(1).max(1);
        let Ok(old) = self
            .work_limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (floor < n).then_some(floor)
            })
        else {
            return 0;
        };
        tracing::warn!(
            host = %self.host.name,
            "server refused a session channel with {open} open; lowering this connection's budget to {floor}"
        );
        old - floor
    }
}

/// Decrements `counter` if it is above zero; true when it did.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Channels opened without a refusal before a lowered channel budget grows by one.
const REGROW_AFTER: u32 = 32;

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

/// The `ssh` command line that would add this host's key to known_hosts.
fn ssh_command(host: &HostConfig) -> String {
    let port = if host.port == 22 {
        String::new()
    } else {
        format!("-p {} ", host.port)
    };
    format!("ssh {port}{}@{}", host.username, host.hostname)
}

/// russh's errors, phrased for people.
pub(crate) fn describe_russh_error(e: &russh::Error) -> String {
    match e {
        russh::Error::KeepaliveTimeout => {
            "no answer to keepalives (network down or server hung)".into()
        }
        russh::Error::InactivityTimeout => "inactivity timeout".into(),
        russh::Error::IO(io) => io.to_string(),
        russh::Error::Disconnect => "disconnected".into(),
        russh::Error::SendError => "the connection is closed".into(),
        russh::Error::UnknownKey => "host key refused".into(),
        russh::Error::NoCommonAlgo { kind, ours, theirs } => {
            format!("no common {kind:?} algorithm (ours: {ours:?}; server: {theirs:?})")
        }
        other => other.to_string(),
    }
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
