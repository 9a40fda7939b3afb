//! `mcp-sshctl doctor`: checks every piece a working setup needs and says how to fix what is
//! wrong. Never starts the user's daemon: when none runs (right after install) or the running one
//! serves another hosts.json, the hosts are checked through a private mcp-sshd of doctor's own, on
//! a socket in a 0700 temporary directory, stopped (and the directory removed) before it returns.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mcp_ssh_proto::paths;
use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::{ClientError, ClientOptions, DaemonClient, daemon_program};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tonic::Code;

/// How long a host's port may take to greet (SSH servers send their version line at once).
const GREETING_WAIT: Duration = Duration::from_secs(3);
/// How long the private daemon may take to answer, and to stop.
const PRIVATE_START_WAIT: Duration = Duration::from_secs(10);
const PRIVATE_STOP_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Check {
    level: Level,
    what: String,
    detail: String,
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(
        &mut self,
        level: Level,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        self.0.push(Check {
            level,
            what: what.into(),
            detail: detail.into(),
            fix,
        });
    }
}

pub async fn run(opts: &ClientOptions, as_json: bool) -> Result<ExitCode, ClientError> {
    let mut report = Report::default();
    let config = paths::resolve_config(opts.config.as_deref());
    let checked = check_config(&mut report, &config);
    let socket = paths::resolve_socket(opts.socket.as_deref())?;
    report.add(
        Level::Ok,
        "socket path",
        format!(
            "{} (rule: {})",
            socket.socket.display(),
            socket.rule.describe()
        ),
        None,
    );
    if socket.dir().exists() {
        match paths::check_private_dir(socket.dir()) {
            Ok(()) => report.add(
                Level::Ok,
                "socket directory",
                format!("{} is private (0700, yours)", socket.dir().display()),
                None,
            ),
            Err(e) => report.add(
                Level::Fail,
                "socket directory",
                e.to_string(),
                Some(format!("remove or fix {}", socket.dir().display())),
            ),
        }
    }
    check_agent(&mut report);
    let running = match DaemonClient::connect(opts).await {
        Ok(client) => {
            check_daemon_version(&mut report, &client);
            match client.config_mismatch(Some(&config)) {
                None => Some(client),
                Some(mismatch) => {
                    report.add(
                        Level::Warn,
                        "daemon config",
                        format!("{mismatch}{}", private_note(checked.usable)),
                        Some("`mcp-sshctl stop`; the next call starts the daemon with the file your client names".into()),
                    );
                    None
                }
            }
        }
        Err(ClientError::NotRunning(path)) => {
            report.add(
                Level::Warn,
                "daemon",
                format!(
                    "not running at {}{}",
                    path.display(),
                    private_note(checked.usable)
                ),
                Some("any mcp-sshctl command that needs it (e.g. `mcp-sshctl hosts`) or an AI client starts it".into()),
            );
            None
        }
        Err(e) => {
            report.add(
                Level::Fail,
                "daemon",
                format!("{e}{}", private_note(checked.usable)),
                Some(
                    "see `mcp-sshctl logs --tail 20`; `mcp-sshctl stop` and retry if it is stuck"
                        .into(),
                ),
            );
            None
        }
    };
    match running {
        Some(client) => check_hosts(&mut report, &client, &checked.reported).await,
        // The hosts cannot be checked against a file the daemon refuses; the config check said why.
        None if checked.usable => match PrivateDaemon::start(&config, opts).await {
            Ok(private) => {
                check_hosts(&mut report, &private.client, &checked.reported).await;
                let (pid, socket) = (private.child.id(), private.client.socket.socket.clone());
                let stopped = private.stop().await;
                report.add(
                    if stopped { Level::Ok } else { Level::Warn },
                    "private daemon",
                    format!(
                        "the hosts were checked through mcp-sshd pid {pid} on {}; {}",
                        socket.display(),
                        if stopped {
                            "stopped, its directory removed"
                        } else {
                            "it did not stop in time and was killed"
                        }
                    ),
                    None,
                );
            }
            Err(reason) => report.add(
                Level::Fail,
                "host checks",
                format!("could not start a private mcp-sshd to check the hosts: {reason}"),
                Some("`mcp-sshd --check-config` checks hosts.json; is mcp-sshd installed next to mcp-sshctl?".into()),
            ),
        },
        None => {}
    }
    print(&report, as_json);
    Ok(if report.0.iter().any(|c| c.level == Level::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Said where the running daemon cannot be used for the host checks.
fn private_note(hosts_checked: bool) -> &'static str {
    if hosts_checked {
        "; doctor checks the hosts through a private mcp-sshd of its own"
    } else {
        ""
    }
}

/// What the config check found out.
struct ConfigCheck {
    /// The daemon accepts the file (it may still name files that are missing).
    usable: bool,
    /// Hosts whose problem was already reported (no point probing them).
    reported: HashSet<String>,
}

/// Validation is the daemon's: ask the `mcp-sshd` beside us (or on PATH).
fn check_config(report: &mut Report, config: &Path) -> ConfigCheck {
    let mut checked = ConfigCheck {
        usable: false,
        reported: HashSet::new(),
    };
    let daemon = daemon_program();
    let out = match Command::new(&daemon)
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            report.add(
                Level::Fail,
                "config",
                format!("cannot run {}: {e}", daemon.display()),
                Some("install mcp-sshd next to mcp-sshctl (bash install.sh installs both)".into()),
            );
            return checked;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let first = first.strip_prefix("mcp-sshd: ").unwrap_or(first);
    if out.status.success() {
        report.add(
            Level::Ok,
            "config",
            stdout.lines().next().unwrap_or_default(),
            None,
        );
    } else if let Some(valid) = first.strip_suffix(", but:") {
        // Valid, but naming files that are not there: one problem per indented line.
        report.add(Level::Ok, "config", valid, None);
        for problem in stderr
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (what, rest) = match problem
                .strip_prefix("host ")
                .and_then(|p| p.split_once(": "))
            {
                Some((host, rest)) => {
                    checked.reported.insert(host.to_string());
                    (format!("host {host}"), rest)
                }
                None => ("config".to_string(), problem),
            };
            // "… (the fix)" → the detail and its fix.
            let (detail, fix) = match rest.strip_suffix(')').and_then(|r| r.split_once(" (")) {
                Some((detail, fix)) => (detail.to_string(), fix.to_string()),
                None => (rest.to_string(), format!("fix it in {}", config.display())),
            };
            report.add(Level::Fail, what, detail, Some(fix));
        }
    } else {
        let shown = config.display();
        let fix = if first.starts_with("Config file not found") {
            format!(
                "create it (from a clone of the repository: `mkdir -p {dir} && cp hosts.example.json {shown}`, then edit), or name your file with --config",
                dir = config.parent().unwrap_or(config).display()
            )
        } else if first.starts_with("cannot read config file") {
            format!("make it readable by you: `chmod 600 {shown}` (and owned by you)")
        } else {
            format!(
                "fix what the message names in {shown} (line and column are given; the fields are in the README's Configuration reference)"
            )
        };
        report.add(
            Level::Fail,
            "config",
            stderr.trim().trim_start_matches("mcp-sshd: "),
            Some(fix),
        );
        return checked;
    }
    checked.usable = true;
    for warning in stdout.lines().filter_map(|l| l.strip_prefix("warning: ")) {
        report.add(
            Level::Warn,
            "config permissions",
            warning,
            Some(format!("chmod 600 {}", config.display())),
        );
    }
    checked
}

fn check_agent(report: &mut Report) {
    match std::env::var_os("SSH_AUTH_SOCK") {
        None => report.add(
            Level::Warn,
            "ssh-agent",
            "SSH_AUTH_SOCK is not set",
            Some("only needed for agent keys and passphrase-protected identity files".into()),
        ),
        Some(path) => match std::os::unix::net::UnixStream::connect(&path) {
            Ok(_) => report.add(
                Level::Ok,
                "ssh-agent",
                format!("reachable at {}", path.to_string_lossy()),
                None,
            ),
            Err(e) => report.add(
                Level::Warn,
                "ssh-agent",
                format!("{}: {e}", path.to_string_lossy()),
                Some("start ssh-agent, or unset SSH_AUTH_SOCK".into()),
            ),
        },
    }
}

fn check_daemon_version(report: &mut Report, client: &DaemonClient) {
    let hello = &client.hello;
    let ours = env!("CARGO_PKG_VERSION");
    if hello.daemon_version == ours {
        report.add(
            Level::Ok,
            "daemon",
            format!(
                "mcp-sshd {} running, pid {}",
                hello.daemon_version, hello.daemon_pid
            ),
            None,
        );
    } else {
        report.add(
            Level::Warn,
            "daemon version",
            format!(
                "mcp-sshd {} running, this mcp-sshctl is {ours}",
                hello.daemon_version
            ),
            Some("`mcp-sshctl stop`; the next call starts the installed version".into()),
        );
    }
}

async fn check_hosts(report: &mut Report, client: &DaemonClient, reported: &HashSet<String>) {
    let status = match client.daemon().status(pb::StatusRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => {
            report.add(
                Level::Fail,
                "hosts",
                status.message().to_string(),
                Some("see `mcp-sshctl logs --tail 20`".into()),
            );
            return;
        }
    };
    // Hop by hop: bastions first, then hosts reached directly, then those behind something, so
    // a failing bastion is named on its own line with its own fix before the hosts behind it.
    let mut bastions: Vec<&pb::HostState> = status.bastions.iter().collect();
    bastions.sort_by_key(|h| !h.route.is_empty());
    let mut hosts: Vec<(&str, &pb::HostState)> =
        bastions.into_iter().map(|h| ("bastion", h)).collect();
    let mut own: Vec<&pb::HostState> = status
        .hosts
        .iter()
        .filter(|h| !reported.contains(&h.name))
        .collect();
    own.sort_by_key(|h| !h.route.is_empty());
    hosts.extend(own.into_iter().map(|h| ("host", h)));
    for (kind, host) in hosts {
        check_host(report, client, kind, host).await;
    }
}

async fn check_host(report: &mut Report, client: &DaemonClient, kind: &str, host: &pb::HostState) {
    let name = format!("{kind} {}", host.name);
    let target = format!("{}:{}", host.hostname, host.port);
    if host.route.is_empty()
        && let Some(greeting) = check_port(report, &name, &target, host)
    {
        probe(report, client, &name, &target, host, &greeting).await;
    } else if !host.route.is_empty() {
        // Reached through a bastion or a command: only the daemon's own route can reach it.
        probe(report, client, &name, &target, host, &Greeting::Ssh).await;
    }
}

/// Greets the host's port as an SSH client would; `None` when that already failed (reported).
fn check_port(
    report: &mut Report,
    name: &str,
    target: &str,
    host: &pb::HostState,
) -> Option<Greeting> {
    let addr = match (host.hostname.as_str(), host.port as u16)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        _ => {
            report.add(
                Level::Fail,
                name,
                format!("cannot resolve {}", host.hostname),
                Some("check hostname (cloud machines change IP on restart)".into()),
            );
            return None;
        }
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(stream) => stream,
        Err(e) => {
            report.add(
                Level::Fail,
                name,
                format!("TCP {target}: {e}"),
                Some("check that the server is up and the port is right".into()),
            );
            return None;
        }
    };
    let greeting = greeting(stream);
    if let Greeting::NotSsh(said) = &greeting {
        report.add(
            Level::Fail,
            name,
            format!("{target} answered but does not speak SSH ({said})"),
            Some(format!(
                "is it the right port? An SSH server greets with \"SSH-2.0-…\"; check \"port\" (and \"hostname\") of {} in hosts.json",
                host.name
            )),
        );
        return None;
    }
    Some(greeting)
}

/// Asks the daemon to connect to the host (or bastion) and reports what happened.
async fn probe(
    report: &mut Report,
    client: &DaemonClient,
    name: &str,
    target: &str,
    host: &pb::HostState,
    greeting: &Greeting,
) {
    match client
        .hosts()
        .probe(pb::ProbeRequest {
            host: host.name.clone(),
        })
        .await
    {
        Ok(reply) => {
            let h = reply.into_inner().host.unwrap_or_default();
            let via = if host.route.is_empty() {
                String::new()
            } else {
                format!(" (via {})", host.route)
            };
            report.add(
                Level::Ok,
                name,
                format!(
                    "{target}{via}: host key {} known, login as {} works",
                    h.host_key_fingerprint, h.username
                ),
                None,
            );
        }
        Err(status) => {
            let fix = probe_fix(&status, host, greeting);
            report.add(Level::Fail, name, status.message().to_string(), Some(fix));
        }
    }
}

/// What a host's port said when we greeted it as an SSH client would.
enum Greeting {
    /// An SSH identification line (`SSH-2.0-…`).
    Ssh,
    /// Something else, closed without a greeting, or lines that are not SSH (what it said, quoted).
    NotSsh(String),
    /// Nothing within [`GREETING_WAIT`]: let the daemon's probe decide.
    Silent,
}

/// Sends our identification line and reads the server's (RFC 4253 4.2: the server may send other
/// lines first, which do not begin with "SSH-"). A server that waits for a request (HTTP) answers
/// our line with an error, as it answers the daemon's.
fn greeting(mut stream: TcpStream) -> Greeting {
    let deadline = Instant::now() + GREETING_WAIT;
    if stream.write_all(b"SSH-2.0-mcp-sshctl_doctor\r\n").is_err() {
        return Greeting::Silent;
    }
    let mut reader = BufReader::new(stream.take(16 * 1024));
    let mut first: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || reader
                .get_ref()
                .get_ref()
                .set_read_timeout(Some(left))
                .is_err()
        {
            break;
        }
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => {
                return Greeting::NotSsh(match first {
                    Some(said) => format!("it said \"{said}\", then closed the connection"),
                    None => "it closed the connection without a word".into(),
                });
            }
            Ok(_) if line.starts_with(b"SSH-") => return Greeting::Ssh,
            Ok(_) => {
                if first.is_none() {
                    first = Some(printable(&line));
                }
            }
            Err(_) => break,
        }
    }
    match first {
        Some(said) => Greeting::NotSsh(format!("it said \"{said}\"")),
        None => Greeting::Silent,
    }
}

/// A line a server sent, safe to print: printable ASCII, at most 60 characters.
fn printable(line: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(line)
        .trim_end()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// The fix line for a failed probe: specific to what failed.
fn probe_fix(status: &tonic::Status, host: &pb::HostState, greeting: &Greeting) -> String {
    let message = status.message();
    let (user, hostname, port) = (&host.username, &host.hostname, host.port);
    if let Some(reason) = message
        .split_once(" through bastion ")
        .map(|(_, rest)| rest)
    {
        let bastion = reason.split_once(": ").map_or(reason, |(name, _)| name);
        return if reason.contains("refuses TCP forwarding") {
            format!(
                "allow forwarding on bastion {bastion}: `AllowTcpForwarding yes` (and no PermitOpen that excludes {hostname}:{port}) in its sshd_config"
            )
        } else if reason.contains("could not connect to") || reason.contains("no answer within") {
            format!(
                "bastion {bastion} cannot reach {hostname}:{port}: check \"hostname\" and \"port\" as the bastion sees them (`ssh {bastion} nc -zv {hostname} {port}`)"
            )
        } else {
            format!(
                "fix bastion {bastion} first: its own line above says what failed and how to fix it"
            )
        };
    }
    match status.code() {
        Code::Unauthenticated => format!(
            "the server refused every credential tried above: check that the public half of one \
             of those keys is in ~{user}/.ssh/authorized_keys on {hostname} (`ssh-copy-id -p {port} \
             {user}@{hostname}` puts yours there), that {user:?} is the right \"username\", and with \
             `ssh-add -l` that ssh-agent holds the key you expect"
        ),
        _ if message.starts_with("Identity file not found") => format!(
            "fix \"identity_file\" of {} in hosts.json, or remove it to use ssh-agent and the default keys",
            host.name
        ),
        _ if message.starts_with("cannot read identity file") => {
            "make the key file readable by you (chmod 600), and check that it is a private key".into()
        }
        _ if message.contains("is not known") => format!(
            "compare the fingerprint with the server's (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it), \
             then connect once with `ssh -p {port} {user}@{hostname}` to record it; or set \
             \"host_key_policy\": \"accept-new\" to trust the host's first key (a changed key is still refused)"
        ),
        _ if message.starts_with("HOST KEY CHANGED") => {
            "only if the server was really reinstalled: run the `ssh-keygen -R` command above, then connect once with `ssh`".into()
        }
        _ if message.contains("@revoked") => {
            "the key is revoked in known_hosts: ask the server's administrator before connecting".into()
        }
        _ if message.contains("login shell") => format!(
            "give {user} a POSIX login shell on {hostname} (`chsh -s /bin/bash {user}`), or log in as another user"
        ),
        Code::Unavailable | Code::DeadlineExceeded if matches!(greeting, Greeting::Silent) => format!(
            "{hostname}:{port} accepts TCP connections but sent no SSH greeting within {} s: is it the right port?",
            GREETING_WAIT.as_secs()
        ),
        Code::Unavailable | Code::DeadlineExceeded => {
            "check the network and the server (its sshd log says why it dropped us); `mcp-sshctl logs --tail 20` has the daemon's side".into()
        }
        _ => "`mcp-sshctl logs --tail 20` has the daemon's side of it".into(),
    }
}

/// An mcp-sshd of doctor's own: its socket, lock and log in a private temporary directory.
struct PrivateDaemon {
    child: Child,
    dir: PathBuf,
    client: DaemonClient,
}

impl PrivateDaemon {
    async fn start(config: &Path, opts: &ClientOptions) -> Result<PrivateDaemon, String> {
        let dir = private_dir()?;
        let socket = dir.join("d.sock");
        let log = dir.join("d.log");
        let program = daemon_program();
        let spawned = Command::new(&program)
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .arg("--log-file")
            .arg(&log)
            .arg("--grace")
            .arg("1")
            // Not the service manager's: no socket activation, no readiness notification.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot run {}: {e}", program.display()));
            }
        };
        let options = ClientOptions {
            socket: Some(socket),
            config: Some(config.to_path_buf()),
            identity: opts.identity.clone(),
        };
        let deadline = Instant::now() + PRIVATE_START_WAIT;
        let mut pause = Duration::from_millis(10);
        let failure = loop {
            match DaemonClient::connect(&options).await {
                Ok(client) => return Ok(PrivateDaemon { child, dir, client }),
                Err(ClientError::NotRunning(_)) => {}
                Err(e) => break e.to_string(),
            }
            if let Ok(Some(status)) = child.try_wait() {
                break format!("it exited at once ({status}): {}", last_line(&log));
            }
            if Instant::now() > deadline {
                break format!(
                    "it did not answer within {} s",
                    PRIVATE_START_WAIT.as_secs()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        };
        stop_child(&mut child).await;
        let _ = std::fs::remove_dir_all(&dir);
        Err(failure)
    }

    /// Stops the daemon (SIGTERM: it closes its SSH connections and removes its socket; SIGKILL
    /// if it has not within a few seconds) and removes its directory. False when it had to be
    /// killed.
    async fn stop(self) -> bool {
        let PrivateDaemon {
            mut child,
            dir,
            client,
        } = self;
        drop(client);
        let stopped = stop_child(&mut child).await;
        let _ = std::fs::remove_dir_all(&dir);
        stopped
    }
}

/// SIGTERM, then SIGKILL after [`PRIVATE_STOP_WAIT`]; false when it came to that. Waits without
/// blocking the runtime: the daemon stops once our HTTP/2 connection to it has closed, which
/// takes this runtime's connection task.
async fn stop_child(child: &mut Child) -> bool {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + PRIVATE_STOP_WAIT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// A new 0700 directory for the private daemon's socket: under the temporary directory, or
/// /tmp when that path would be too long for a Unix socket.
fn private_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let name = format!("mcp-sshctl-doctor-{}-{nanos:08x}", std::process::id());
    let mut base = std::env::temp_dir();
    // "/d.sock.jobs.json" is the longest name beside the socket; the socket itself must fit.
    if base.join(&name).join("d.sock").as_os_str().len() > paths::SUN_PATH_MAX {
        base = PathBuf::from("/tmp");
    }
    let dir = base.join(name);
    // create(), not create_all(): fails if anything is there already, so nothing planted is used.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot make {} private: {e}", dir.display()))?;
    Ok(dir)
}

/// The last line the daemon logged, to say why it would not start.
fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no log output".into())
}

fn print(report: &Report, as_json: bool) {
    if as_json {
        let checks: Vec<_> = report
            .0
            .iter()
            .map(|c| json!({
                "level": match c.level { Level::Ok => "ok", Level::Warn => "warn", Level::Fail => "fail" },
                "check": c.what, "detail": c.detail, "fix": c.fix,
            }))
            .collect();
        println!("{:#}", json!({ "checks": checks }));
        return;
    }
    for c in &report.0 {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {}: {}", c.what, c.detail);
        if let Some(fix) = &c.fix {
            println!("      fix: {fix}");
        }
    }
}
