//! hosts.json: the list of hosts the daemon may reach, and how.
//!
//! The format is the Python tool's, so existing files keep working; our additions are optional
//! fields with defaults. Unknown fields are errors: a typo in a security setting
//! (`allowed_comands`) must never be silently ignored.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};

use crate::policy::CommandPolicy;
use crate::ssh_config::{self, SshConfigFile};
use serde::Deserialize;

pub mod groups;
pub mod jump;

pub use groups::Groups;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "Config file not found: {0} (create it, e.g. from hosts.example.json, or give its absolute path with --config)"
    )]
    NotFound(PathBuf),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Log verbosity, spelled as in Python's `logging` (the Python tool's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// The matching `tracing` filter directive.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

/// mcp-ssh hosts.json: the SSH hosts an AI assistant may reach through mcp-ssh, and how.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mcp-ssh hosts.json")]
struct RawConfig {
    /// JSON Schema reference for editors (ignored by mcp-ssh).
    #[serde(rename = "$schema", default)]
    _schema: Option<String>,
    /// How much the daemon logs (RUST_LOG overrides it).
    #[serde(default)]
    log_level: LogLevel,
    /// JSON Lines audit log, one record per action; created 0600. Null: no audit log.
    #[serde(default)]
    audit_log_file: Option<String>,
    /// known_hosts file for hosts without their own (default: ~/.ssh/known_hosts).
    #[serde(default)]
    known_hosts_file: Option<String>,
    /// Bytes of stdout and of stderr a tool result keeps (head and tail), 1024 to 1048576.
    #[serde(default = "default_max_output_bytes")]
    #[schemars(range(min = 1024, max = 1048576))]
    max_output_bytes: u64,
    /// How long finished jobs (ssh_job_start) are kept, with their output on the host, before
    /// their job directory is removed: seconds, or a duration such as "7d", "12h", "30m".
    #[serde(default)]
    job_retention: Option<RawDuration>,
    /// How long the temporary file of a large transfer that was cut off is kept for a resume
    /// before it is removed: seconds, or a duration such as "7d", "12h".
    #[serde(default)]
    partial_retention: Option<RawDuration>,
    /// The OpenSSH client configuration that ssh_config_host and ssh_config_hosts read
    /// (default ~/.ssh/config, ~ meaning $HOME).
    #[serde(default)]
    ssh_config_file: Option<String>,
    /// Import the concrete Host aliases of that file (and its Includes) matching these patterns
    /// (* and ? wildcards, ! to exclude) as hosts; nothing is imported without it.
    #[serde(default)]
    ssh_config_hosts: Option<Vec<String>>,
    /// Settings for every host that does not set them itself (imported ones included).
    #[serde(default)]
    defaults: Option<RawDefaults>,
    /// The hosts the AI may reach.
    #[serde(default)]
    hosts: Vec<RawHost>,
    /// Named sets of hosts for ssh_execute_many and `mcp-sshctl exec @NAME`: host names, glob
    /// patterns over them ("gpu-*") and other groups ("@gpus").
    #[serde(default)]
    groups: std::collections::BTreeMap<String, Vec<String>>,
    /// How many hosts one call over many hosts works on at once.
    #[serde(default = "default_fanout")]
    #[schemars(range(min = 1, max = 1024))]
    fanout: u32,
}

fn default_fanout() -> u32 {
    32
}

/// Per-host settings given once for all hosts (a host's own value, or its ssh_config's,
/// comes first).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    host_key_policy: Option<HostKeyPolicy>,
    #[serde(default)]
    command_timeout: Option<u64>,
    #[serde(default)]
    transfer_timeout: Option<u64>,
    #[serde(default)]
    connect_timeout: Option<u64>,
    #[serde(default)]
    keepalive_interval: Option<u64>,
    #[serde(default)]
    keepalive_max: Option<u64>,
    #[serde(default)]
    max_sessions: Option<u64>,
    #[serde(default)]
    cipher: Option<CipherName>,
    #[serde(default)]
    allowed_commands: Option<Vec<String>>,
    #[serde(default)]
    allow_forwarding: Option<bool>,
    #[serde(default)]
    allowed_forward_ports: Option<Vec<u16>>,
}

/// A duration in hosts.json: seconds, or text such as "7d" or "90m".
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    fn parse(&self, field: &str) -> Result<Duration, String> {
        let d = match self {
            RawDuration::Seconds(secs) => Duration::from_secs(*secs),
            RawDuration::Text(text) => humantime::parse_duration(text).map_err(|e| {
                format!("{field}: {text:?} is not a duration ({e}); write e.g. \"7d\" or \"12h\"")
            })?,
        };
        if d < Duration::from_secs(1) {
            return Err(format!("{field} must be at least 1 second"));
        }
        Ok(d)
    }
}

/// One host.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawHost {
    /// The name you and the AI use for this host; unique, without spaces.
    #[schemars(length(min = 1))]
    name: String,
    /// Take HostName, User, Port, IdentityFile, ProxyJump, ProxyCommand, UserKnownHostsFile,
    /// StrictHostKeyChecking, ConnectTimeout and ServerAlive* from this ssh_config alias, as
    /// `ssh ALIAS` would; fields written here override them.
    #[serde(default)]
    ssh_config_host: Option<String>,
    /// IP address or DNS name (required without ssh_config_host).
    #[serde(default)]
    #[schemars(length(min = 1))]
    hostname: Option<String>,
    /// Login user (often root on cloud GPU machines; required without ssh_config_host).
    #[serde(default)]
    #[schemars(length(min = 1))]
    username: Option<String>,
    /// SSH port (default 22).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65535))]
    port: Option<u64>,
    /// Private key file (~ is expanded); an encrypted key is used through ssh-agent.
    #[serde(default)]
    identity_file: Option<String>,
    /// Password login (prefer keys; keep this file chmod 600).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    password: Option<SecretString>,
    /// Skip host key verification (ephemeral cloud machines only); the key seen is audited.
    /// The same as host_key_policy "accept-any".
    #[serde(default)]
    auto_accept_host_key: bool,
    /// strict (default): known_hosts only; accept-new: an unknown key is recorded in the
    /// known_hosts file (trust on first use), a changed one refused; accept-any: no check.
    #[serde(default)]
    host_key_policy: Option<HostKeyPolicy>,
    /// Seconds without output before a command is stopped (default 30).
    #[serde(default)]
    #[schemars(range(min = 1))]
    command_timeout: Option<u64>,
    /// Seconds without any data moving before a transfer is stopped (default 120).
    #[serde(default)]
    #[schemars(range(min = 1))]
    transfer_timeout: Option<u64>,
    /// If set, only commands whose words start with one of these entries may run.
    #[serde(default)]
    allowed_commands: Option<Vec<String>>,
    /// known_hosts file for this host.
    #[serde(default)]
    known_hosts_file: Option<String>,
    /// Seconds for TCP connect, key exchange and authentication together (default 10).
    #[serde(default)]
    #[schemars(range(min = 1))]
    connect_timeout: Option<u64>,
    /// Seconds between SSH keepalives (default 10); 0 turns them off.
    #[serde(default)]
    keepalive_interval: Option<u64>,
    /// Unanswered keepalives before the connection is declared lost (default 2).
    #[serde(default)]
    keepalive_max: Option<u64>,
    /// Channels opened at once on this connection (OpenSSH's MaxSessions; default 10).
    #[serde(default)]
    #[schemars(range(min = 1))]
    max_sessions: Option<u64>,
    /// Preferred cipher: auto (AES-GCM with AES instructions, else ChaCha20) or a cipher name.
    #[serde(default)]
    cipher: Option<CipherName>,
    /// Reach the host through these bastions, as OpenSSH's ProxyJump: comma-separated, each a
    /// host of this file or user@host[:port] (then with this host's keys and known_hosts).
    #[serde(default)]
    proxy_jump: Option<String>,
    /// Reach the host through this local command's stdin/stdout instead of TCP (as OpenSSH's
    /// ProxyCommand; %h %p %r %n %% are expanded), e.g. "cloudflared access ssh --hostname %h".
    #[serde(default)]
    proxy_command: Option<String>,
    /// Port forwards to and from this host (ssh_forward, mcp-sshctl forward; default true).
    #[serde(default)]
    allow_forwarding: Option<bool>,
    /// If set, forwards may reach only these ports of the host itself (no other address).
    #[serde(default)]
    allowed_forward_ports: Option<Vec<u16>>,
    /// Imported by `ssh_config_hosts` rather than written.
    #[serde(skip)]
    imported: bool,
}

/// How a host's key is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// The key must be in a known_hosts file.
    Strict,
    /// An unknown key is recorded in the known_hosts file (as `ssh` would write it) and
    /// trusted from then on; a changed or revoked one is refused.
    AcceptNew,
    /// Any key is accepted (and audited): ephemeral machines only.
    AcceptAny,
}

impl HostKeyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKeyPolicy::Strict => "strict",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::AcceptAny => "accept-any",
        }
    }
}

/// Cipher names accepted in hosts.json (kept in step with `CIPHERS` by a test).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum CipherName {
    Auto,
    #[serde(rename = "aes256-gcm@openssh.com")]
    Aes256Gcm,
    #[serde(rename = "aes128-gcm@openssh.com")]
    Aes128Gcm,
    #[serde(rename = "chacha20-poly1305@openssh.com")]
    Chacha20Poly1305,
    #[serde(rename = "aes256-ctr")]
    Aes256Ctr,
    #[serde(rename = "aes192-ctr")]
    Aes192Ctr,
    #[serde(rename = "aes128-ctr")]
    Aes128Ctr,
}

impl CipherName {
    /// The SSH name; `None` for auto.
    fn ssh_name(&self) -> Option<&'static str> {
        match self {
            CipherName::Auto => None,
            CipherName::Aes256Gcm => Some("aes256-gcm@openssh.com"),
            CipherName::Aes128Gcm => Some("aes128-gcm@openssh.com"),
            CipherName::Chacha20Poly1305 => Some("chacha20-poly1305@openssh.com"),
            CipherName::Aes256Ctr => Some("aes256-ctr"),
            CipherName::Aes192Ctr => Some("aes192-ctr"),
            CipherName::Aes128Ctr => Some("aes128-ctr"),
        }
    }
}

/// The JSON Schema of hosts.json, as shipped in `hosts.schema.json`.
pub fn schema() -> String {
    let schema = schemars::schema_for!(RawConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

fn default_max_output_bytes() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

/// Ciphers a host may prefer with `"cipher"` (all AEAD or CTR, as OpenSSH offers by default).
pub const CIPHERS: &[&str] = &[
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];

/// How long finished jobs are kept by default.
pub const DEFAULT_JOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// A cut-off transfer's temporary file is kept this long for a resume.
pub const DEFAULT_PARTIAL_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How much of each output stream (stdout, stderr) a tool result keeps, by default and at most.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 32 * 1024;
pub const HARD_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
const DEFAULT_PORT: u64 = 22;
const DEFAULT_COMMAND_TIMEOUT: u64 = 30;
const DEFAULT_TRANSFER_TIMEOUT: u64 = 120;
const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
// A silent peer is declared lost after interval x (max + 1): 30 s by default, the same as
// the default command_timeout, so a dead network is noticed as soon as a quiet command is.
const DEFAULT_KEEPALIVE_INTERVAL: u64 = 10;
const DEFAULT_KEEPALIVE_MAX: u64 = 2;
const DEFAULT_MAX_SESSIONS: u64 = 10;

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub log_level: LogLevel,
    pub audit_log_file: Option<PathBuf>,
    pub max_output_bytes: u32,
    /// How long finished jobs are kept.
    pub job_retention: Duration,
    /// How long a cut-off transfer's temporary file is kept for a resume.
    pub partial_retention: Duration,
    pub hosts: Vec<HostConfig>,
    pub groups: Groups,
    /// Hosts one call over many hosts works on at once.
    pub fanout: u32,
    /// Problems worth telling the user about that do not stop the daemon.
    pub warnings: Vec<String>,
}

/// Where a host's settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSource {
    /// Written out in hosts.json.
    HostsJson,
    /// hosts.json names an ssh_config alias (`ssh_config_host`).
    SshConfig { alias: String },
    /// Imported by `ssh_config_hosts`.
    Imported { alias: String },
    /// Only a bastion on the way to other hosts (`proxy_jump`), not a host the AI may use.
    Hop,
}

impl HostSource {
    /// For `list_hosts`: "hosts.json", "ssh_config web-prod", "imported from ssh_config".
    pub fn describe(&self) -> String {
        match self {
            HostSource::HostsJson => "hosts.json".into(),
            HostSource::SshConfig { alias } => format!("hosts.json + ssh_config {alias}"),
            HostSource::Imported { alias } => format!("ssh_config {alias} (ssh_config_hosts)"),
            HostSource::Hop => "proxy_jump hop".into(),
        }
    }
}

/// The keys a host logs in with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// Tried in order; empty: ssh-agent's keys, then the default key files.
    pub files: Vec<PathBuf>,
    /// A missing file is an error (hosts.json's `identity_file`) rather than skipped (the
    /// IdentityFile list of ssh_config, as ssh skips them).
    pub required: bool,
    /// Only these files (hosts.json's `identity_file`, IdentitiesOnly); otherwise ssh-agent's
    /// other keys are tried after them.
    pub only: bool,
}

/// One host, validated, with paths expanded.
#[derive(Clone)]
pub struct HostConfig {
    pub name: String,
    pub hostname: String,
    pub port: u16,
    pub username: String,
    pub identities: Identities,
    pub password: Option<SecretString>,
    pub host_key_policy: HostKeyPolicy,
    pub command_timeout: Duration,
    pub transfer_timeout: Duration,
    /// `allowed_commands`, parsed; `None` means any command may run.
    pub policy: Option<CommandPolicy>,
    /// `allowed_commands` as written, to tell whether a reload changed it.
    pub allowed_commands: Option<Vec<String>>,
    /// known_hosts files to check, in order (the host's own, else the global one, else
    /// `~/.ssh/known_hosts`; then `/etc/ssh/ssh_known_hosts`).
    pub known_hosts_files: Vec<PathBuf>,
    pub connect_timeout: Duration,
    /// `None` disables keepalive (not recommended: a silent peer is then never detected).
    pub keepalive_interval: Option<Duration>,
    pub keepalive_max: usize,
    pub max_sessions: u32,
    /// Cipher to prefer; `None` means AES-GCM on CPUs with AES instructions, else ChaCha20.
    pub cipher: Option<String>,
    /// Run to carry the SSH session instead of a TCP connection (tokens not yet expanded).
    pub proxy_command: Option<String>,
    /// The last bastion on the way (`proxy_jump`), itself perhaps behind others.
    pub jump: Option<Arc<HostConfig>>,
    pub allow_forwarding: bool,
    /// Forwards may reach only these ports on the host's loopback; `None`: any destination.
    pub allowed_forward_ports: Option<Vec<u16>>,
    pub source: HostSource,
}

// Written by hand so that nothing about the password, not even its length, can be printed.
impl fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostConfig")
            .field("name", &self.name)
            .field("hostname", &self.hostname)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("identities", &self.identities)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host_key_policy", &self.host_key_policy)
            .finish_non_exhaustive()
    }
}

impl HostConfig {
    /// Whether a connection opened with `self` is also what `other` asks for: everything that
    /// goes into connecting and authenticating is the same.
    pub fn same_connection(&self, other: &HostConfig) -> bool {
        fn password(h: &HostConfig) -> Option<&str> {
            h.password.as_ref().map(|p| p.expose_secret())
        }
        self.hostname == other.hostname
            && self.port == other.port
            && self.username == other.username
            && self.identities == other.identities
            && password(self) == password(other)
            && self.host_key_policy == other.host_key_policy
            && self.known_hosts_files == other.known_hosts_files
            && self.connect_timeout == other.connect_timeout
            && self.keepalive_interval == other.keepalive_interval
            && self.keepalive_max == other.keepalive_max
            && self.max_sessions == other.max_sessions
            && self.cipher == other.cipher
            && self.proxy_command == other.proxy_command
            && match (&self.jump, &other.jump) {
                (None, None) => true,
                (Some(a), Some(b)) => a.name == b.name && a.same_connection(b),
                _ => false,
            }
    }

    /// Whether `other` is the same host with the same settings in every respect.
    pub fn same_settings(&self, other: &HostConfig) -> bool {
        self.same_connection(other)
            && self.command_timeout == other.command_timeout
            && self.transfer_timeout == other.transfer_timeout
            && self.allowed_commands == other.allowed_commands
            && self.allow_forwarding == other.allow_forwarding
            && self.allowed_forward_ports == other.allowed_forward_ports
    }

    /// `user@host:port`, for messages.
    pub fn target(&self) -> String {
        format!("{}@{}:{}", self.username, self.hostname, self.port)
    }

    /// How the host is reached when not directly: "bastion b", "bastions a → b", "proxy
    /// command `…`".
    pub fn route(&self) -> Option<String> {
        if let Some(last) = &self.jump {
            let hops = jump::describe(last);
            let noun = if last.jump.is_some() {
                "bastions"
            } else {
                "bastion"
            };
            return Some(format!("{noun} {hops}"));
        }
        self.proxy_command
            .as_ref()
            .map(|c| format!("proxy command `{c}`"))
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotFound(path.to_path_buf()));
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut config = Config::parse(&text, path)?;
        if config.hosts.iter().any(|h| h.password.is_some())
            && let Ok(meta) = std::fs::metadata(path)
        {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                config.warnings.push(format!(
                    "{} holds a password and is readable by other users (mode {mode:o}); \
                         run: chmod 600 {}",
                    path.display(),
                    path.display()
                ));
            }
        }
        Ok(config)
    }

    /// Parses and validates `text`; `path` is used for messages and relative paths only.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let global_known_hosts = raw.known_hosts_file.as_deref().map(expand_tilde);
        if !(1024..=HARD_MAX_OUTPUT_BYTES).contains(&raw.max_output_bytes) {
            return Err(invalid(format!(
                "max_output_bytes must be between 1024 and {HARD_MAX_OUTPUT_BYTES}, not {}",
                raw.max_output_bytes
            )));
        }
        let job_retention = match &raw.job_retention {
            Some(raw) => raw.parse("job_retention").map_err(invalid)?,
            None => DEFAULT_JOB_RETENTION,
        };
        let partial_retention = match &raw.partial_retention {
            Some(raw) => raw.parse("partial_retention").map_err(invalid)?,
            None => DEFAULT_PARTIAL_RETENTION,
        };
        let ssh = SshConfigFile::new(raw.ssh_config_file.as_deref().map(expand_tilde));
        let mut raw_hosts = raw.hosts;
        if let Some(patterns) = &raw.ssh_config_hosts {
            let aliases = ssh
                .aliases()
                .map_err(|e| invalid(format!("ssh_config_hosts: {e}")))?;
            let mut imported = 0;
            for alias in aliases {
                if ssh_config::selected(&alias, patterns)
                    && !raw_hosts.iter().any(|h| h.name == alias)
                {
                    imported += 1;
                    raw_hosts.push(RawHost {
                        name: alias.clone(),
                        ssh_config_host: Some(alias),
                        imported: true,
                        ..RawHost::default()
                    });
                }
            }
            if imported == 0 {
                tracing::warn!(
                    "ssh_config_hosts {patterns:?} matches no Host alias of {}",
                    ssh.path.display()
                );
            }
        }
        let builder = Builder {
            ssh: &ssh,
            defaults: raw.defaults.unwrap_or_default(),
            global_known_hosts: global_known_hosts.as_deref(),
        };
        let mut seen = HashSet::new();
        let mut built = Vec::with_capacity(raw_hosts.len());
        for (index, host) in raw_hosts.into_iter().enumerate() {
            let label = if host.name.is_empty() {
                format!("hosts[{index}]")
            } else {
                host.name.clone()
            };
            let host = builder
                .host(host)
                .map_err(|msg| invalid(format!("host {label}: {msg}")))?;
            if !seen.insert(host.0.name.clone()) {
                return Err(invalid(format!("duplicate host name {:?}", host.0.name)));
            }
            built.push(host);
        }
        let hosts = builder.link_jumps(built).map_err(invalid)?;
        if !(1..=1024).contains(&raw.fanout) {
            return Err(invalid(format!(
                "fanout must be between 1 and 1024, not {}",
                raw.fanout
            )));
        }
        let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let groups =
            Groups::resolve(&raw.groups, &names).map_err(|(message, member)| {
                match member.and_then(|m| groups::locate(text, &m)) {
                    Some(at) => invalid(format!("{message} ({at})")),
                    None => invalid(message),
                }
            })?;
        Ok(Config {
            path: path.to_path_buf(),
            log_level: raw.log_level,
            audit_log_file: raw.audit_log_file.as_deref().map(expand_tilde),
            max_output_bytes: u32::try_from(raw.max_output_bytes).unwrap_or(u32::MAX),
            job_retention,
            partial_retention,
            hosts,
            groups,
            fanout: raw.fanout,
            warnings: Vec::new(),
        })
    }

    pub fn host(&self, name: &str) -> Option<&HostConfig> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// What would fail at the first connection although the file itself is valid: files it
    /// names that are not there. `--check-config` reports these; the daemon still starts (the
    /// file may appear later, e.g. a key on a mounted volume).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for host in &self.hosts {
            if !host.identities.required {
                continue;
            }
            for key in host.identities.files.iter().filter(|k| !k.exists()) {
                problems.push(format!(
                    "host {}: identity_file {} does not exist (fix the path, or remove the field to \
                     use ssh-agent and the default keys)",
                    host.name,
                    key.display()
                ));
            }
        }
        problems
    }
}

/// A host whose `proxy_jump` is still to be linked: the hops as written, and whether they are
/// ssh_config aliases (ProxyJump from ssh_config, resolved as ssh does) or hosts.json names.
struct PendingJump {
    hops: Vec<jump::Hop>,
    from_ssh_config: bool,
}

/// Turns raw hosts into validated ones, with the file-wide settings at hand.
struct Builder<'a> {
    ssh: &'a SshConfigFile,
    defaults: RawDefaults,
    global_known_hosts: Option<&'a Path>,
}

impl Builder<'_> {
    /// Validates one host, resolving its ssh_config alias if it names one; its proxy_jump is
    /// linked later, once every host is known.
    fn host(&self, raw: RawHost) -> Result<(HostConfig, Option<PendingJump>), String> {
        let source = match &raw.ssh_config_host {
            None => HostSource::HostsJson,
            Some(alias) if raw.imported => HostSource::Imported {
                alias: alias.clone(),
            },
            Some(alias) => HostSource::SshConfig {
                alias: alias.clone(),
            },
        };
        self.host_from(raw, source)
    }

    fn host_from(
        &self,
        raw: RawHost,
        source: HostSource,
    ) -> Result<(HostConfig, Option<PendingJump>), String> {
        let d = &self.defaults;
        if raw.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if raw
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "name {:?} must not contain spaces or control characters",
                raw.name
            ));
        }
        let port = raw
            .port
            .map(|port| {
                u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("port {port} is out of range (1-65535)"))
            })
            .transpose()?;
        let ssh = match &raw.ssh_config_host {
            Some(alias) => Some(
                self.ssh
                    .resolve(alias, raw.username.as_deref(), port)
                    .map_err(|e| format!("ssh_config_host {alias:?}: {e}"))?,
            ),
            None => None,
        };
        let required = |field: &str, value: Option<String>, from_ssh: Option<&String>| {
            let value = value.or_else(|| from_ssh.cloned()).ok_or_else(|| {
                format!(
                    "missing field `{field}` (or name an ssh_config alias with ssh_config_host)"
                )
            })?;
            if value.trim().is_empty() {
                return Err(format!("{field} must not be empty"));
            }
            Ok(value)
        };
        let hostname = required("hostname", raw.hostname, ssh.as_ref().map(|r| &r.hostname))?;
        let username = required("username", raw.username, ssh.as_ref().map(|r| &r.user))?;
        let port = port
            .or(ssh.as_ref().map(|r| r.port))
            .unwrap_or(DEFAULT_PORT as u16);
        let positive = |field: &str, value: u64| {
            if value == 0 {
                Err(format!("{field} must be at least 1"))
            } else {
                Ok(value)
            }
        };
        let command_timeout = positive(
            "command_timeout",
            raw.command_timeout
                .or(d.command_timeout)
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        )?;
        let transfer_timeout = positive(
            "transfer_timeout",
            raw.transfer_timeout
                .or(d.transfer_timeout)
                .unwrap_or(DEFAULT_TRANSFER_TIMEOUT),
        )?;
        let connect_timeout = match raw.connect_timeout {
            Some(secs) => Duration::from_secs(positive("connect_timeout", secs)?),
            None => match ssh.as_ref().and_then(|r| r.connect_timeout) {
                Some(timeout) => timeout.max(Duration::from_secs(1)),
                None => Duration::from_secs(positive(
                    "connect_timeout",
                    d.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                )?),
            },
        };
        let (keepalive_interval, keepalive_max) = match (
            raw.keepalive_interval,
            ssh.as_ref().and_then(|r| r.keepalive),
        ) {
            (None, Some((interval, max))) => (Some(interval), raw.keepalive_max.unwrap_or(max)),
            (interval, _) => {
                let secs = interval
                    .or(d.keepalive_interval)
                    .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL);
                (
                    (secs > 0).then(|| Duration::from_secs(secs)),
                    raw.keepalive_max
                        .or(d.keepalive_max)
                        .unwrap_or(DEFAULT_KEEPALIVE_MAX),
                )
            }
        };
        let max_sessions = u32::try_from(positive(
            "max_sessions",
            raw.max_sessions
                .or(d.max_sessions)
                .unwrap_or(DEFAULT_MAX_SESSIONS),
        )?)
        .map_err(|_| "max_sessions is too large".to_string())?;
        if raw
            .proxy_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty() || c.contains(['\n', '\0']))
        {
            return Err("proxy_command must be one non-empty line (or left out)".into());
        }
        if raw.proxy_command.is_some() && raw.proxy_jump.is_some() {
            return Err(
                "proxy_jump and proxy_command cannot both be set (as in OpenSSH): keep one".into(),
            );
        }
        // A route written in hosts.json replaces ssh_config's, whichever kind it is.
        let written_route = raw.proxy_command.is_some() || raw.proxy_jump.is_some();
        let (proxy_command, pending) = match (raw.proxy_jump, raw.proxy_command) {
            (Some(text), _) => (
                None,
                Some(PendingJump {
                    hops: jump::parse(&text)?,
                    from_ssh_config: false,
                }),
            ),
            (None, Some(command)) => (Some(command), None),
            (None, None) => match ssh.as_ref().filter(|_| !written_route) {
                Some(r) => (
                    r.proxy_command.clone(),
                    r.proxy_jump
                        .as_deref()
                        .map(|text| {
                            jump::parse(text).map(|hops| PendingJump {
                                hops,
                                from_ssh_config: true,
                            })
                        })
                        .transpose()
                        .map_err(|e| format!("ProxyJump of ssh_config: {e}"))?,
                ),
                None => (None, None),
            },
        };
        let allowed_forward_ports = raw
            .allowed_forward_ports
            .or(d.allowed_forward_ports.clone());
        if allowed_forward_ports
            .as_ref()
            .is_some_and(|ports| ports.contains(&0))
        {
            return Err("allowed_forward_ports: 0 is not a port (1-65535)".into());
        }
        let host_key_policy = match (raw.auto_accept_host_key, raw.host_key_policy) {
            (false, Some(policy)) => policy,
            (false, None) => ssh
                .as_ref()
                .and_then(|r| r.host_key_policy)
                .or(d.host_key_policy)
                .unwrap_or(HostKeyPolicy::Strict),
            (true, None | Some(HostKeyPolicy::AcceptAny)) => HostKeyPolicy::AcceptAny,
            (true, Some(other)) => {
                return Err(format!(
                    "auto_accept_host_key: true and host_key_policy {:?} disagree; keep one (auto_accept_host_key means \"accept-any\")",
                    other.as_str()
                ));
            }
        };
        let allowed_commands = raw.allowed_commands.or(d.allowed_commands.clone());
        let policy = allowed_commands
            .as_deref()
            .map(CommandPolicy::new)
            .transpose()?;
        let cipher = raw
            .cipher
            .as_ref()
            .or(d.cipher.as_ref())
            .and_then(CipherName::ssh_name)
            .map(str::to_string);
        let mut known_hosts_files = match (
            raw.known_hosts_file,
            ssh.as_ref().and_then(|r| r.known_hosts_files.clone()),
        ) {
            (Some(file), _) => vec![expand_tilde(&file)],
            (None, Some(files)) => files,
            (None, None) => vec![
                self.global_known_hosts
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| expand_tilde("~/.ssh/known_hosts")),
            ],
        };
        known_hosts_files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
        let identities = match (raw.identity_file, ssh.as_ref()) {
            (Some(file), _) => Identities {
                files: vec![expand_tilde(&file)],
                required: true,
                only: true,
            },
            (None, Some(r)) => Identities {
                files: r.identity_files.clone().unwrap_or_default(),
                required: false,
                only: r.identities_only,
            },
            (None, None) => Identities::default(),
        };
        let host = HostConfig {
            name: raw.name,
            hostname,
            port,
            username,
            identities,
            password: raw.password,
            host_key_policy,
            command_timeout: Duration::from_secs(command_timeout),
            transfer_timeout: Duration::from_secs(transfer_timeout),
            policy,
            allowed_commands,
            known_hosts_files,
            connect_timeout,
            keepalive_interval,
            keepalive_max: usize::try_from(keepalive_max).unwrap_or(usize::MAX),
            max_sessions,
            cipher,
            proxy_command,
            jump: None,
            allow_forwarding: raw.allow_forwarding.or(d.allow_forwarding).unwrap_or(true),
            allowed_forward_ports,
            source,
        };
        Ok((host, pending))
    }

    /// Links every host's proxy_jump to its bastions, each bastion linked first (a loop is an
    /// error).
    fn link_jumps(
        &self,
        built: Vec<(HostConfig, Option<PendingJump>)>,
    ) -> Result<Vec<HostConfig>, String> {
        let order: Vec<String> = built.iter().map(|(h, _)| h.name.clone()).collect();
        let mut waiting: HashMap<String, (HostConfig, Option<PendingJump>)> = built
            .into_iter()
            .map(|(h, p)| (h.name.clone(), (h, p)))
            .collect();
        let mut done: HashMap<String, Arc<HostConfig>> = HashMap::new();
        for name in &order {
            self.link(name, &mut waiting, &mut done, &mut Vec::new())?;
        }
        Ok(order
            .iter()
            .filter_map(|name| done.remove(name))
            .map(|host| Arc::try_unwrap(host).unwrap_or_else(|shared| (*shared).clone()))
            .collect())
    }

    fn link(
        &self,
        name: &str,
        waiting: &mut HashMap<String, (HostConfig, Option<PendingJump>)>,
        done: &mut HashMap<String, Arc<HostConfig>>,
        stack: &mut Vec<String>,
    ) -> Result<Arc<HostConfig>, String> {
        if let Some(host) = done.get(name) {
            return Ok(host.clone());
        }
        if stack.iter().any(|n| n == name) {
            stack.push(name.to_string());
            return Err(format!("proxy_jump loop: {}", stack.join(" → ")));
        }
        let Some((mut host, pending)) = waiting.remove(name) else {
            return Err(format!("proxy_jump loop through {name}"));
        };
        if let Some(pending) = pending {
            stack.push(name.to_string());
            let hops = self.hops(&host, &pending, waiting, done, stack)?;
            stack.pop();
            host.jump = jump::chain(hops);
        }
        let host = Arc::new(host);
        done.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// Each hop of `pending` as a full configuration of its own, in order.
    fn hops(
        &self,
        target: &HostConfig,
        pending: &PendingJump,
        waiting: &mut HashMap<String, (HostConfig, Option<PendingJump>)>,
        done: &mut HashMap<String, Arc<HostConfig>>,
        stack: &mut Vec<String>,
    ) -> Result<Vec<HostConfig>, String> {
        let mut hops = Vec::with_capacity(pending.hops.len());
        for hop in &pending.hops {
            let config = if pending.from_ssh_config {
                self.ssh_hop(hop, 1)
                    .map_err(|e| format!("host {}: {e}", target.name))?
            } else if hop.is_bare() {
                let known = waiting.contains_key(&hop.host)
                    || done.contains_key(&hop.host)
                    || stack.contains(&hop.host);
                if !known {
                    return Err(format!(
                        "host {}: proxy_jump names {:?}, which is not a host in this file (add it as a host, \
                         or write user@host[:port] to use this host's keys and known_hosts for it)",
                        target.name, hop.host
                    ));
                }
                (*self.link(&hop.host, waiting, done, stack)?).clone()
            } else {
                let mut config = target.clone();
                config.name = hop.to_string();
                config.hostname = hop.host.clone();
                config.port = hop.port.unwrap_or(DEFAULT_PORT as u16);
                config.username = hop.user.clone().unwrap_or_else(|| target.username.clone());
                config.password = None;
                config.proxy_command = None;
                config.jump = None;
                config.policy = None;
                config.allowed_commands = None;
                config.max_sessions = DEFAULT_MAX_SESSIONS as u32;
                config.source = HostSource::Hop;
                config
            };
            hops.push(config);
        }
        Ok(hops)
    }

    /// A ProxyJump hop of ssh_config, resolved as ssh resolves it (with its own ProxyJump or
    /// ProxyCommand when it is the first hop).
    fn ssh_hop(&self, hop: &jump::Hop, depth: usize) -> Result<HostConfig, String> {
        if depth > jump::MAX_HOPS {
            return Err(format!(
                "ProxyJump of ssh_config goes deeper than {} hops (a loop?)",
                jump::MAX_HOPS
            ));
        }
        let raw = RawHost {
            name: hop.to_string(),
            ssh_config_host: Some(hop.host.clone()),
            username: hop.user.clone(),
            port: hop.port.map(u64::from),
            ..RawHost::default()
        };
        let (mut config, pending) = self.host_from(raw, HostSource::Hop)?;
        config.policy = None;
        config.allowed_commands = None;
        if let Some(pending) = pending {
            let hops = pending
                .hops
                .iter()
                .map(|h| self.ssh_hop(h, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            config.jump = jump::chain(hops);
        }
        Ok(config)
    }
}

/// Expands a leading `~` or `~/` to the user's home directory.
pub fn expand_tilde(path: &str) -> PathBuf {
    let home = || directories::BaseDirs::new().map(|d| d.home_dir().to_path_buf());
    if path == "~" {
        if let Some(home) = home() {
            return home;
        }
    } else if let Some(rest) = path.strip_prefix("~/")
        && let Some(home) = home()
    {
        return home.join(rest);
    }
    PathBuf::from(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/cfg/hosts.json"))
    }

    #[test]
    fn python_tool_example_should_parse_with_defaults() {
        let cfg = parse(
            r#"{"hosts": [{"name": "my-server", "hostname": "192.0.2.1", "username": "root",
                "identity_file": "~/.ssh/id_ed25519"}]}"#,
        )
        .unwrap();
        let h = &cfg.hosts[0];
        assert_eq!(h.port, 22);
        assert_eq!(h.command_timeout, Duration::from_secs(30));
        assert_eq!(h.transfer_timeout, Duration::from_secs(120));
        assert_eq!(h.host_key_policy, HostKeyPolicy::Strict);
        let key = &h.identities.files[0];
        assert!(key.ends_with(".ssh/id_ed25519"), "{key:?}");
        assert!(!key.starts_with("~"));
        assert!(h.identities.required && h.identities.only);
        assert_eq!(h.max_sessions, 10);
        assert_eq!(cfg.log_level, LogLevel::Info);
    }

    #[test]
    fn full_python_tool_config_should_parse() {
        let cfg = parse(
            r#"{ "log_level": "DEBUG", "audit_log_file": null,
              "hosts": [ { "name": "gpu-box", "hostname": "203.0.113.50", "port": 22100,
                 "username": "root", "identity_file": "~/.ssh/id_ed25519", "password": "hunter2",
                 "auto_accept_host_key": false, "command_timeout": 30, "transfer_timeout": 120,
                 "allowed_commands": ["nvidia-smi"] } ] }"#,
        )
        .unwrap();
        assert_eq!(cfg.log_level, LogLevel::Debug);
        let h = &cfg.hosts[0];
        assert_eq!(h.password.as_ref().unwrap().expose_secret(), "hunter2");
        assert!(h.policy.as_ref().unwrap().check("nvidia-smi -L").is_ok());
        assert!(h.policy.as_ref().unwrap().check("ls").is_err());
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn misspelled_field_should_be_named() {
        let err = parse(r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u", "allowed_comands": []}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `allowed_comands`"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn host_key_policies_should_read_and_agree_with_auto_accept() {
        let host = |extra: &str| {
            parse(&format!(
                r#"{{"hosts": [{{"name": "a", "hostname": "h", "username": "u"{extra}}}]}}"#
            ))
        };
        let policy = |extra: &str| host(extra).unwrap().hosts[0].host_key_policy;
        assert_eq!(policy(""), HostKeyPolicy::Strict);
        assert_eq!(
            policy(r#", "host_key_policy": "accept-new""#),
            HostKeyPolicy::AcceptNew
        );
        assert_eq!(
            policy(r#", "auto_accept_host_key": true"#),
            HostKeyPolicy::AcceptAny
        );
        let err = host(r#", "auto_accept_host_key": true, "host_key_policy": "strict""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("disagree"), "{err}");
        let err = host(r#", "host_key_policy": "yes""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("accept-new"), "{err}");
    }

    #[test]
    fn syntax_error_should_give_line_and_column() {
        let err = parse("{\n  \"hosts\": [\n    {,}\n  ]\n}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3 column"), "{err}");
        assert!(err.contains("/cfg/hosts.json"), "{err}");
    }

    #[test]
    fn duplicate_names_and_bad_ports_should_be_refused() {
        let dup = r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u"},
                                 {"name": "a", "hostname": "h2", "username": "u"}]}"#;
        assert!(
            parse(dup)
                .unwrap_err()
                .to_string()
                .contains("duplicate host name \"a\"")
        );
        for port in ["0", "65536", "99999"] {
            let text = format!(
                r#"{{"hosts": [{{"name": "a", "hostname": "h", "username": "u", "port": {port}}}]}}"#
            );
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("out of range"), "{err}");
            assert!(err.contains("host a"), "{err}");
        }
    }

    #[test]
    fn missing_required_field_and_empty_values_should_be_refused() {
        let err = parse(r#"{"hosts": [{"name": "a", "hostname": "h"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `username`"), "{err}");
        let err = parse(r#"{"hosts": [{"name": "a", "hostname": "", "username": "u"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hostname must not be empty"), "{err}");
    }

    #[test]
    fn missing_file_should_say_config_file_not_found() {
        let err = Config::load(Path::new("/nonexistent/hosts.json"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Config file not found: /nonexistent/hosts.json (create it, e.g. from \
             hosts.example.json, or give its absolute path with --config)"
        );
    }

    #[test]
    fn shipped_schema_should_match_the_config_types() {
        let shipped = include_str!("../../../hosts.schema.json");
        assert!(
            shipped == schema(),
            "hosts.schema.json is out of date: run `cargo run -p mcp-ssh-daemon -- --print-config-schema > hosts.schema.json`"
        );
    }

    #[test]
    fn example_should_be_valid() {
        let example = include_str!("../../../hosts.example.json");
        let cfg = Config::parse(example, Path::new("hosts.example.json")).unwrap();
        assert!(cfg.hosts.len() >= 2);
    }

    #[test]
    fn cipher_names_should_match_the_supported_list() {
        for name in CIPHERS {
            let text = format!(
                r#"{{"hosts": [{{"name": "a", "hostname": "h", "username": "u", "cipher": "{name}"}}]}}"#
            );
            assert_eq!(
                parse(&text).unwrap().hosts[0].cipher.as_deref(),
                Some(*name)
            );
        }
        let err = parse(
            r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u", "cipher": "rot13"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `rot13`"), "{err}");
    }

    /// `ssh -G`'s own answer for `alias`, as key → values.
    fn ssh_g(config: &Path, alias: &str) -> HashMap<String, Vec<String>> {
        let out = std::process::Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(config)
            .arg(alias)
            .output()
            .expect("ssh (openssh-client) is needed: apt-get install openssh-client");
        assert!(out.status.success(), "{out:?}");
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((k, v)) = line.split_once(' ') {
                map.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        map
    }

    #[test]
    fn ssh_config_hosts_should_resolve_as_ssh_g_does() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/db.conf"),
            "Host db1 db2\n  HostName %h.internal\n  User dba\n  ProxyJump web-prod\n",
        )
        .unwrap();
        let ssh_config = dir.path().join("config");
        std::fs::write(
            &ssh_config,
            format!(
                "Include {d}/conf.d/*.conf\n\
                 Host web-* !web-bad\n  User deploy\n  IdentityFile {d}/enc\n  IdentityFile {d}/plain\n  IdentitiesOnly yes\n\
                 Host web-prod web-bad\n  HostName 10.1.2.3\n  Port 2200\n\
                 Match host 10.1.2.3\n  ConnectTimeout 7\n  ServerAliveInterval 15\n\
                 Host *\n  UserKnownHostsFile {d}/kh\n  StrictHostKeyChecking accept-new\n"
            ),
        )
        .unwrap();
        let text = format!(
            r#"{{"ssh_config_file": "{}", "ssh_config_hosts": ["web-*", "db*", "!db2"],
                "defaults": {{"command_timeout": 9}},
                "hosts": [{{"name": "web", "ssh_config_host": "web-prod", "port": 2201}}]}}"#,
            ssh_config.display()
        );
        let cfg = parse(&text).unwrap();
        let names: Vec<&str> = cfg.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["web", "db1", "web-prod", "web-bad"]);
        for host in &cfg.hosts {
            let alias = match &host.source {
                HostSource::Imported { alias } | HostSource::SshConfig { alias } => alias,
                other => panic!("{other:?}"),
            };
            let g = ssh_g(&ssh_config, alias);
            let one = |k: &str| g[k][0].clone();
            assert_eq!(host.hostname, one("hostname"), "{alias}");
            assert_eq!(host.username, one("user"), "{alias}");
            if host.name != "web" {
                assert_eq!(host.port.to_string(), one("port"), "{alias}");
            }
            let kh: Vec<PathBuf> = one("userknownhostsfile")
                .split(' ')
                .map(PathBuf::from)
                .collect();
            assert_eq!(host.known_hosts_files[..kh.len()], kh[..], "{alias}");
            assert_eq!(host.host_key_policy, HostKeyPolicy::AcceptNew);
            assert_eq!(host.command_timeout, Duration::from_secs(9));
            let timeout = match one("connecttimeout").as_str() {
                "none" => DEFAULT_CONNECT_TIMEOUT,
                secs => secs.parse().unwrap(),
            };
            assert_eq!(
                host.connect_timeout,
                Duration::from_secs(timeout),
                "{alias}"
            );
        }
        let web = cfg.host("web").unwrap();
        assert_eq!(
            web.port, 2201,
            "a field written in hosts.json overrides ssh_config"
        );
        assert_eq!(
            web.identities.files,
            [dir.path().join("enc"), dir.path().join("plain")]
        );
        assert!(web.identities.only && !web.identities.required);
        assert_eq!(web.keepalive_interval, Some(Duration::from_secs(15)));
        assert_eq!(
            web.source,
            HostSource::SshConfig {
                alias: "web-prod".into()
            }
        );
        // Negated: web-bad gets neither the User nor the keys of `Host web-* !web-bad`.
        let bad = cfg.host("web-bad").unwrap();
        assert_ne!(bad.username, "deploy");
        assert!(bad.identities.files.is_empty());
        // The Include's db1: its ProxyJump resolved as ssh resolves web-prod.
        let db1 = cfg.host("db1").unwrap();
        assert_eq!(db1.hostname, "db1.internal");
        let jump = db1.jump.as_ref().unwrap();
        assert_eq!(
            (jump.hostname.as_str(), jump.port, jump.username.as_str()),
            ("10.1.2.3", 2200, "deploy")
        );
        assert_eq!(jump.source, HostSource::Hop);
        assert_eq!(db1.route().as_deref(), Some("bastion web-prod"));
    }

    #[test]
    fn proxy_jump_should_name_hosts_of_the_file_and_refuse_loops() {
        let cfg = parse(
            r#"{"hosts": [
                {"name": "a", "hostname": "a.example", "username": "u", "identity_file": "/k/a"},
                {"name": "b", "hostname": "b.example", "username": "u", "proxy_jump": "a"},
                {"name": "t", "hostname": "t.internal", "username": "v", "identity_file": "/k/t",
                 "proxy_jump": "b,ops@10.0.0.9:2222"}]}"#,
        )
        .unwrap();
        let t = cfg.host("t").unwrap();
        assert_eq!(
            t.route().as_deref(),
            Some("bastions a → b → ops@10.0.0.9:2222")
        );
        let last = t.jump.as_ref().unwrap();
        // A user@host hop logs in with the target's keys.
        assert_eq!((last.username.as_str(), last.port), ("ops", 2222));
        assert_eq!(last.identities.files, [PathBuf::from("/k/t")]);
        // b keeps its own route (through a), as the first hop of the chain.
        let b = last.jump.as_ref().unwrap();
        assert_eq!(b.name, "b");
        assert_eq!(b.jump.as_ref().unwrap().name, "a");
        assert!(cfg.host("t").unwrap().same_connection(t));

        let err = |text: &str| parse(text).unwrap_err().to_string();
        let e = err(
            r#"{"hosts": [{"name": "t", "hostname": "h", "username": "u", "proxy_jump": "bastoin"}]}"#,
        );
        assert!(
            e.contains("proxy_jump names \"bastoin\", which is not a host"),
            "{e}"
        );
        let e = err(
            r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u", "proxy_jump": "b"},
                                  {"name": "b", "hostname": "h", "username": "u", "proxy_jump": "a"}]}"#,
        );
        assert!(e.contains("proxy_jump loop: a → b → a"), "{e}");
        let e = err(
            r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u", "proxy_jump": "x@y",
                                   "proxy_command": "nc %h %p"}]}"#,
        );
        assert!(e.contains("cannot both be set"), "{e}");
    }

    #[test]
    fn world_readable_file_with_password_should_warn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.json");
        std::fs::write(
            &path,
            r#"{"hosts": [{"name": "a", "hostname": "h", "username": "u", "password": "pw"}]}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert!(cfg.warnings[0].contains("chmod 600"), "{:?}", cfg.warnings);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Value, json};

        /// JSON values of any shape, biased towards hosts.json's own field names so that the
        /// loader's validation (not only serde's) is exercised.
        fn any_json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("name".to_string()),
                Just("hostname".to_string()),
                Just("username".to_string()),
                Just("port".to_string()),
                Just("password".to_string()),
                Just("allowed_commands".to_string()),
                Just("command_timeout".to_string()),
                Just("max_sessions".to_string()),
                Just("cipher".to_string()),
                Just("hosts".to_string()),
                "[a-z_]{1,12}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,16}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    prop::collection::btree_map(key.clone(), inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn host_name() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9-]{0,10}"
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

            /// Any text: an error or a config, never a panic.
            #[test]
            fn arbitrary_text_should_never_panic(text in "\\PC{0,200}") {
                let _ = parse(&text);
            }

            /// Any JSON, top level or as the hosts list: the loader either refuses it or hands
            /// out a config that keeps its invariants.
            #[test]
            fn arbitrary_json_should_be_refused_or_valid(value in any_json(), hosts in any_json()) {
                for candidate in [value.clone(), json!({ "hosts": hosts.clone() }), json!({ "hosts": [value.clone()] })] {
                    if let Ok(cfg) = parse(&candidate.to_string()) {
                        let mut names = std::collections::HashSet::new();
                        for host in &cfg.hosts {
                            prop_assert!(names.insert(host.name.clone()), "duplicate {}", host.name);
                            prop_assert!(host.port != 0);
                            prop_assert!(!host.hostname.trim().is_empty());
                            prop_assert!(!host.name.chars().any(char::is_whitespace));
                            prop_assert!(host.max_sessions >= 1);
                        }
                        prop_assert!((1024..=HARD_MAX_OUTPUT_BYTES).contains(&u64::from(cfg.max_output_bytes)));
                    }
                }
            }

            /// Well-formed hosts come out as written.
            #[test]
            fn valid_hosts_should_load_as_written(
                names in prop::collection::btree_set(host_name(), 1..6),
                port in 1u16..,
                user in "[a-z_][a-z0-9_]{0,8}",
                timeout in 1u64..100_000,
                restricted in any::<bool>(),
            ) {
                let hosts: Vec<Value> = names.iter().map(|name| {
                    let mut host = json!({
                        "name": name, "hostname": format!("{name}.example"), "username": user,
                        "port": port, "command_timeout": timeout,
                    });
                    if restricted {
                        host["allowed_commands"] = json!(["nvidia-smi", "ls -la"]);
                    }
                    host
                }).collect();
                let cfg = parse(&json!({ "hosts": hosts }).to_string()).unwrap();
                prop_assert_eq!(cfg.hosts.len(), names.len());
                for (host, name) in cfg.hosts.iter().zip(&names) {
                    prop_assert_eq!(&host.name, name);
                    prop_assert_eq!(host.port, port);
                    prop_assert_eq!(&host.username, &user);
                    prop_assert_eq!(host.command_timeout, Duration::from_secs(timeout));
                    prop_assert_eq!(host.policy.is_some(), restricted);
                    prop_assert!(host.same_settings(host));
                }
            }
        }
    }
}
