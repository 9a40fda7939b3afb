//! `mcp-sshctl doctor`: checks every piece a working setup needs and says how to fix what is
//! wrong. Never starts the daemon (host key and authentication checks need a running one).

use std::net::ToSocketAddrs;
use std::process::{Command, ExitCode};
use std::time::Duration;

use mcp_ssh_proto::paths;
use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::{ClientError, ClientOptions, DaemonClient};
use serde_json::json;

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
    check_config(&mut report, &config);
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
    match DaemonClient::connect(opts).await {
        Ok(client) => check_daemon(&mut report, &client, &config).await,
        Err(ClientError::NotRunning(path)) => report.add(
            Level::Warn,
            "daemon",
            format!("not running at {}", path.display()),
            Some("any mcp-sshctl command that needs it (e.g. `mcp-sshctl hosts`) or an AI client starts it; then run doctor again to check host keys and authentication".into()),
        ),
        Err(e) => report.add(Level::Fail, "daemon", e.to_string(), None),
    }
    print(&report, as_json);
    Ok(if report.0.iter().any(|c| c.level == Level::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Validation is the daemon's: ask the `mcp-sshd` beside us (or on PATH).
fn check_config(report: &mut Report, config: &std::path::Path) {
    let daemon = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("mcp-sshd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "mcp-sshd".into());
    match Command::new(&daemon)
        .arg("--check-config")
        .arg("--config")
        .arg(config)
        .output()
    {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            if out.status.success() {
                report.add(
                    Level::Ok,
                    "config",
                    stdout.lines().next().unwrap_or_default(),
                    None,
                );
                for warning in stdout.lines().filter_map(|l| l.strip_prefix("warning: ")) {
                    report.add(
                        Level::Warn,
                        "config permissions",
                        warning,
                        Some(format!("chmod 600 {}", config.display())),
                    );
                }
            } else {
                let err = String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("mcp-sshd: ")
                    .to_string();
                report.add(
                    Level::Fail,
                    "config",
                    err,
                    Some("fix hosts.json (see README, Configuration reference)".into()),
                );
            }
        }
        Err(e) => report.add(
            Level::Fail,
            "config",
            format!("cannot run {}: {e}", daemon.display()),
            Some("install mcp-sshd next to mcp-sshctl".into()),
        ),
    }
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

async fn check_daemon(report: &mut Report, client: &DaemonClient, config: &std::path::Path) {
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
    if let Some(mismatch) = client.config_mismatch(Some(config)) {
        report.add(Level::Warn, "daemon config", mismatch, None);
    }
    let hosts = match client.hosts().list_hosts(pb::ListHostsRequest {}).await {
        Ok(reply) => reply.into_inner().hosts,
        Err(status) => {
            report.add(Level::Fail, "hosts", status.message().to_string(), None);
            return;
        }
    };
    for host in hosts {
        check_host(report, client, &host).await;
    }
}

async fn check_host(report: &mut Report, client: &DaemonClient, host: &pb::HostState) {
    let name = format!("host {}", host.name);
    let target = format!("{}:{}", host.hostname, host.port);
    let addr = match (host.hostname.as_str(), host.port as u16)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        _ => {
            report.add(
                Level::Fail,
                &name,
                format!("cannot resolve {}", host.hostname),
                Some("check hostname (cloud machines change IP on restart)".into()),
            );
            return;
        }
    };
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        report.add(
            Level::Fail,
            &name,
            format!("TCP {target}: {e}"),
            Some("check that the server is up and the port is right".into()),
        );
        return;
    }
    match client
        .hosts()
        .probe(pb::ProbeRequest {
            host: host.name.clone(),
        })
        .await
    {
        Ok(reply) => {
            let h = reply.into_inner().host.unwrap_or_default();
            report.add(
                Level::Ok,
                &name,
                format!(
                    "{target}: host key {} known, login as {} works",
                    h.host_key_fingerprint, h.username
                ),
                None,
            );
        }
        Err(status) => report.add(Level::Fail, &name, status.message().to_string(), None),
    }
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
