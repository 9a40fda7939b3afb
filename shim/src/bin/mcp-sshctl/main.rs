//! `mcp-sshctl`: the human's view of and handle on the mcp-ssh daemon.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use mcp_ssh_proto::paths;
use mcp_ssh_proto::pb::{self, run_event};
use mcp_ssh_shim::client::{
    ClientError, ClientKind, ClientOptions, DaemonClient, Identity, resolve_local_path, state_name,
};
use serde_json::json;

/// Control and inspect mcp-sshd, the daemon behind mcp-ssh-shim.
///
/// Exit codes: 0 success; 1 failure; 2 bad usage; 3 mcp-sshd is not running; 4 hosts.json is
/// invalid (reload); for `exec`, the remote command's own code, or 255 when it could not run.
#[derive(Parser, Debug)]
#[command(name = "mcp-sshctl", version)]
struct Args {
    /// Print JSON (one document on stdout; errors as {"error": ...})
    #[arg(long, global = true)]
    json: bool,
    /// hosts.json for a daemon this command starts [default: ~/.config/mcp-ssh/hosts.json]
    #[arg(long, global = true, env = paths::CONFIG_ENV)]
    config: Option<PathBuf>,
    /// Daemon socket [default: per-user runtime directory]
    #[arg(long, global = true, env = paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the daemon, its hosts and attached clients (never starts a daemon)
    Status,
    /// List configured hosts and their connection state
    Hosts,
    /// Run a command on a host through the daemon's connection; exits with its exit code
    Exec {
        /// Host name from hosts.json
        host: String,
        /// Inactivity timeout in seconds [default: the host's command_timeout]
        #[arg(long)]
        timeout: Option<u32>,
        /// Remote working directory
        #[arg(long)]
        cwd: Option<String>,
        /// The command; words are joined with spaces, as ssh does
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Upload a file or directory (atomic; a progress bar on a terminal)
    Upload {
        host: String,
        /// Local file or directory
        local: String,
        /// Remote destination; an existing directory receives it by name
        remote: String,
        /// Compare the SHA-256 with one computed on the host
        #[arg(long)]
        verify: bool,
    },
    /// Download a file or directory (atomic; a progress bar on a terminal)
    Download {
        host: String,
        /// Remote file or directory
        remote: String,
        /// Local destination; an existing directory receives it by name
        local: String,
        #[arg(long)]
        verify: bool,
    },
    /// Close the daemon's connection to a host
    Disconnect { host: String },
    /// Re-read hosts.json (as SIGHUP does); an invalid file changes nothing and exits 4
    Reload,
    /// Stop the daemon (in-flight calls get a grace period)
    Stop,
    /// Check the setup: config, permissions, socket, daemon, ssh-agent, and each host
    /// (DNS, TCP, host key, authentication); says how to fix what is wrong
    Doctor,
    /// Where the daemon logs; with --tail N, its last N lines
    Logs {
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
}

mod doctor;

/// Exit codes: the remote command's own for `exec`; otherwise these.
const EXIT_ERROR: u8 = 1;
const EXIT_NOT_RUNNING: u8 = 3;
const EXIT_INVALID_CONFIG: u8 = 4;
/// As ssh: 255 when the command could not be run at all.
const EXIT_REMOTE_FAILURE: u8 = 255;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-sshctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let opts = ClientOptions {
        socket: args.socket.clone(),
        config: args.config.clone(),
        identity: Identity {
            kind: ClientKind::Ctl,
            name: "mcp-sshctl".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            program: "mcp-sshctl",
        },
    };
    let json = args.json;
    let result = match args.command {
        Cmd::Status => status(&opts, json).await,
        Cmd::Hosts => hosts(&opts, json).await,
        Cmd::Exec {
            host,
            timeout,
            cwd,
            command,
        } => exec(&opts, json, host, timeout, cwd, command.join(" ")).await,
        Cmd::Upload {
            host,
            local,
            remote,
            verify,
        } => transfer(&opts, json, true, host, local, remote, verify).await,
        Cmd::Download {
            host,
            remote,
            local,
            verify,
        } => transfer(&opts, json, false, host, local, remote, verify).await,
        Cmd::Disconnect { host } => disconnect(&opts, json, host).await,
        Cmd::Reload => reload(&opts, json).await,
        Cmd::Stop => stop(&opts, json).await,
        Cmd::Logs { tail } => logs(&opts, json, tail),
        Cmd::Doctor => doctor::run(&opts, json).await,
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Args as clap::CommandFactory>::command(),
                "mcp-sshctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            fail(json, &e.to_string());
            ExitCode::from(match e {
                ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
                _ => EXIT_ERROR,
            })
        }
    }
}

/// Reports a failure: on stderr for people, as `{"error": ...}` on stdout with `--json`.
fn fail(as_json: bool, message: &str) {
    if as_json {
        println!("{:#}", json!({ "error": message }));
    } else {
        eprintln!("mcp-sshctl: {message}");
    }
}

async fn status(opts: &ClientOptions, as_json: bool) -> Result<ExitCode, ClientError> {
    let client = match DaemonClient::connect(opts).await {
        Ok(client) => client,
        Err(ClientError::NotRunning(socket)) => {
            if as_json {
                println!("{}", json!({ "running": false, "socket": socket }));
            } else {
                println!("mcp-sshd is not running (socket: {})", socket.display());
            }
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e),
    };
    let s = client
        .daemon()
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    if as_json {
        println!("{:#}", status_json(&s));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    out.push_str(&format!(
        "mcp-sshd {}  pid {}  up {}  {} call(s) in flight\n",
        s.daemon_version,
        s.pid,
        human_duration(s.uptime_ms),
        s.calls_in_flight
    ));
    out.push_str(&format!(
        "socket  {}\nconfig  {} (loaded {} ago, generation {})\n",
        s.socket_path,
        s.config_path,
        human_duration(since_ms(s.config_loaded_at_unix_ms)),
        s.config_generation
    ));
    if !s.config_error.is_empty() {
        out.push_str(&format!(
            "RELOAD FAILED, still serving the previous configuration: {}\n",
            s.config_error
        ));
    }
    if s.daemon_version != env!("CARGO_PKG_VERSION") {
        out.push_str(&format!(
            "note: this mcp-sshctl is {}, the daemon is {}\n",
            env!("CARGO_PKG_VERSION"),
            s.daemon_version
        ));
    }
    for warning in &s.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out.push('\n');
    out.push_str(&host_table(&s.hosts));
    out.push_str(&format!("\nclients ({})\n", s.clients.len()));
    for c in &s.clients {
        let version = if c.version.is_empty() {
            String::new()
        } else {
            format!(" {}", c.version)
        };
        out.push_str(&format!(
            "  {}{}  pid {}  attached {} ago\n",
            c.name,
            version,
            c.pid,
            human_duration(since_ms(c.attached_at_unix_ms))
        ));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn host_table(hosts: &[pb::HostState]) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "TARGET".into(),
        "STATE".into(),
        "SINCE".into(),
        "CHANNELS".into(),
        "LAST ERROR".into(),
    ]];
    for h in hosts {
        rows.push([
            h.name.clone(),
            format!("{}@{}:{}", h.username, h.hostname, h.port),
            state_name(h.state).into(),
            human_duration(since_ms(h.since_unix_ms)),
            format!("{}/{}", h.channels_in_use, h.channel_limit),
            h.last_error
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn host_json(h: &pb::HostState) -> serde_json::Value {
    json!({
        "name": h.name, "hostname": h.hostname, "port": h.port, "username": h.username,
        "state": state_name(h.state), "since_unix_ms": h.since_unix_ms,
        "channels_in_use": h.channels_in_use, "channel_limit": h.channel_limit,
        "last_error": (!h.last_error.is_empty()).then_some(&h.last_error),
        "server_version": (!h.server_version.is_empty()).then_some(&h.server_version),
        "host_key_fingerprint": (!h.host_key_fingerprint.is_empty()).then_some(&h.host_key_fingerprint),
        "connections_opened": h.connections_opened, "restricted": h.restricted,
    })
}

fn status_json(s: &pb::StatusReply) -> serde_json::Value {
    json!({
        "running": true, "version": s.daemon_version, "pid": s.pid, "uptime_ms": s.uptime_ms,
        "started_at_unix_ms": s.started_at_unix_ms, "socket": s.socket_path, "config": s.config_path,
        "protocol": format!("{}.{}", s.proto_major, s.proto_minor), "warnings": s.warnings,
        "config_generation": s.config_generation, "config_loaded_at_unix_ms": s.config_loaded_at_unix_ms,
        "config_error": (!s.config_error.is_empty()).then_some(&s.config_error),
        "calls_in_flight": s.calls_in_flight,
        "hosts": s.hosts.iter().map(host_json).collect::<Vec<_>>(),
        "clients": s.clients.iter().map(|c| json!({
            "id": c.client_id, "name": c.name, "version": c.version, "pid": c.pid,
            "kind": match pb::ClientKind::try_from(c.kind) { Ok(pb::ClientKind::Shim) => "shim", Ok(pb::ClientKind::Ctl) => "ctl", _ => "unknown" },
            "attached_at_unix_ms": c.attached_at_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

async fn hosts(opts: &ClientOptions, as_json: bool) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect_or_start(opts).await?;
    let hosts = client
        .hosts()
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner()
        .hosts;
    if as_json {
        println!(
            "{:#}",
            serde_json::Value::Array(hosts.iter().map(host_json).collect())
        );
    } else {
        print!("{}", host_table(&hosts));
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(
    opts: &ClientOptions,
    as_json: bool,
    host: String,
    timeout: Option<u32>,
    cwd: Option<String>,
    command: String,
) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect_or_start(opts).await?;
    let request = pb::RunRequest {
        host: host.clone(),
        command: command.clone(),
        cwd: cwd.unwrap_or_default(),
        timeout_secs: timeout.unwrap_or(0),
        ..Default::default()
    };
    let cannot_run = |message: &str| {
        fail(as_json, message);
        Ok(ExitCode::from(EXIT_REMOTE_FAILURE))
    };
    let mut stream = match client.exec().run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return cannot_run(status.message()),
    };
    // Streamed as it comes for people; gathered into one document with --json.
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let exit = loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return cannot_run("the daemon ended the call without an exit status"),
            Err(status) => {
                let _ = stdout.flush();
                drop(stdout);
                return cannot_run(status.message());
            }
        };
        match event.event {
            Some(run_event::Event::Stdout(data)) if as_json => out_buf.extend_from_slice(&data),
            Some(run_event::Event::Stderr(data)) if as_json => err_buf.extend_from_slice(&data),
            Some(run_event::Event::Stdout(data)) => {
                let _ = stdout.write_all(&data);
                let _ = stdout.flush();
            }
            Some(run_event::Event::Stderr(data)) => {
                let _ = stderr.write_all(&data);
            }
            Some(run_event::Event::Exit(exit)) => break exit,
            Some(run_event::Event::Started(_)) | None => {}
        }
    };
    let _ = stdout.flush();
    drop(stdout);
    if as_json {
        println!(
            "{:#}",
            json!({
                "host": host, "command": command, "exit_code": exit.code,
                "signal": (!exit.signal.is_empty()).then_some(&exit.signal),
                "stdout": String::from_utf8_lossy(&out_buf),
                "stderr": String::from_utf8_lossy(&err_buf),
                "duration_ms": exit.duration_ms,
            })
        );
    }
    Ok(match exit.code {
        Some(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(EXIT_ERROR)),
        None => {
            if !as_json {
                eprintln!(
                    "mcp-sshctl: remote command killed by signal {}",
                    exit.signal
                );
            }
            ExitCode::from(128u8.saturating_add(signal_number(&exit.signal)))
        }
    })
}

/// Shell convention: a command killed by signal N exits 128 + N.
fn signal_number(name: &str) -> u8 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    }
}

async fn transfer(
    opts: &ClientOptions,
    as_json: bool,
    upload: bool,
    host: String,
    local: String,
    remote: String,
    verify: bool,
) -> Result<ExitCode, ClientError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let local_path = resolve_local_path(&local, &cwd).display().to_string();
    let client = DaemonClient::connect_or_start(opts).await?;
    let request = pb::TransferRequest {
        host: host.clone(),
        local_path,
        remote_path: remote,
        verify,
    };
    let mut files = client.files();
    let started = if upload {
        files.upload(request).await
    } else {
        files.download(request).await
    };
    let failed = |message: &str| {
        fail(as_json, message);
        Ok(ExitCode::from(EXIT_ERROR))
    };
    let mut stream = match started {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(status.message()),
    };
    let bar = !as_json && std::io::stderr().is_terminal();
    let clear_bar = || {
        if bar {
            eprint!("\r\x1b[2K");
        }
    };
    let began = std::time::Instant::now();
    let done = loop {
        match stream.message().await {
            Ok(Some(pb::TransferEvent {
                event: Some(pb::transfer_event::Event::Progress(p)),
            })) if bar => {
                eprint!("\r{}", progress_line(&p, began.elapsed()));
            }
            Ok(Some(pb::TransferEvent {
                event: Some(pb::transfer_event::Event::Done(done)),
            })) => break done,
            Ok(Some(_)) => {}
            Ok(None) => return failed("the daemon ended the transfer without a result"),
            Err(status) => {
                clear_bar();
                return failed(status.message());
            }
        }
    };
    clear_bar();
    let secs = (done.duration_ms as f64 / 1000.0).max(0.001);
    if as_json {
        println!(
            "{:#}",
            json!({
                "host": host, "direction": if upload { "upload" } else { "download" },
                "destination": done.destination, "bytes": done.bytes, "files": done.files,
                "skipped": done.skipped, "duration_ms": done.duration_ms, "sha256": done.sha256,
                "verified": verify.then_some(done.verified),
                "verification": (!done.verification.is_empty()).then_some(&done.verification),
            })
        );
    } else {
        println!(
            "{} {} bytes ({} file{}) to {} in {secs:.2} s ({:.1} MiB/s)\nsha256 {}",
            if upload { "uploaded" } else { "downloaded" },
            done.bytes,
            done.files,
            if done.files == 1 { "" } else { "s" },
            done.destination,
            done.bytes as f64 / 1_048_576.0 / secs,
            done.sha256
        );
        if verify {
            println!("{}", done.verification);
        }
    }
    Ok(if verify && !done.verified {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// `[#########...........]  45%  230.0/512.0 MiB  310.2 MiB/s`
fn progress_line(p: &pb::TransferProgress, elapsed: Duration) -> String {
    let fraction = if p.bytes_total == 0 {
        0.0
    } else {
        p.bytes_done as f64 / p.bytes_total as f64
    };
    let filled = (fraction * 30.0).round() as usize;
    let mib = |b: u64| b as f64 / 1_048_576.0;
    format!(
        "[{}{}] {:>3.0}%  {:.1}/{:.1} MiB  {:.1} MiB/s",
        "#".repeat(filled.min(30)),
        ".".repeat(30 - filled.min(30)),
        fraction * 100.0,
        mib(p.bytes_done),
        mib(p.bytes_total),
        mib(p.bytes_done) / elapsed.as_secs_f64().max(0.001)
    )
}

async fn disconnect(
    opts: &ClientOptions,
    as_json: bool,
    host: String,
) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect(opts).await?;
    let reply = client
        .hosts()
        .disconnect(pb::DisconnectRequest { host: host.clone() })
        .await?
        .into_inner();
    if as_json {
        println!(
            "{:#}",
            json!({
                "host": host, "was_connected": reply.was_connected,
                "interrupted_calls": reply.interrupted_calls,
            })
        );
    } else if reply.was_connected {
        println!(
            "disconnected {host} ({} call(s) in flight were told)",
            reply.interrupted_calls
        );
    } else {
        println!("{host} was not connected");
    }
    Ok(ExitCode::SUCCESS)
}

async fn reload(opts: &ClientOptions, as_json: bool) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect(opts).await?;
    let reply = match client.daemon().reload(pb::ReloadRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            fail(
                as_json,
                &format!(
                    "{} (nothing changed: the daemon keeps serving the previous configuration)",
                    status.message()
                ),
            );
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
        Err(status) => return Err(status.into()),
    };
    if as_json {
        println!(
            "{:#}",
            json!({
                "config_generation": reply.config_generation, "added": reply.added,
                "removed": reply.removed, "reconnecting": reply.reconnecting,
                "updated": reply.updated, "unchanged": reply.unchanged, "warnings": reply.warnings,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "reloaded {} (generation {})",
        client.hello.config_path, reply.config_generation
    );
    for (label, names) in [
        ("added", &reply.added),
        ("removed (closed once idle)", &reply.removed),
        ("reconnecting (settings changed)", &reply.reconnecting),
        ("updated (connection kept)", &reply.updated),
        ("unchanged", &reply.unchanged),
    ] {
        if !names.is_empty() {
            println!("  {label}: {}", names.join(", "));
        }
    }
    for warning in &reply.warnings {
        println!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn stop(opts: &ClientOptions, as_json: bool) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect(opts).await?;
    let pid = client.hello.daemon_pid;
    client.daemon().shutdown(pb::ShutdownRequest {}).await?;
    // Wait for the socket to go away so a following start does not race the old daemon.
    let mut stopped = false;
    for _ in 0..150 {
        if std::fs::symlink_metadata(&client.socket.socket).is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if as_json {
        println!("{:#}", json!({ "pid": pid, "stopped": stopped }));
    } else if stopped {
        println!("mcp-sshd (pid {pid}) stopped");
    } else {
        println!("mcp-sshd (pid {pid}) is still draining in-flight calls");
    }
    Ok(ExitCode::SUCCESS)
}

/// A daemon started by a client logs next to its socket (`<socket>.log`); one run by systemd
/// logs to the journal, one run by launchd to ~/Library/Logs/mcp-sshd.log.
fn logs(opts: &ClientOptions, as_json: bool, tail: Option<usize>) -> Result<ExitCode, ClientError> {
    const ELSEWHERE: &str = "a daemon run by systemd logs to the journal: journalctl --user -u mcp-sshd; \
                             one run by launchd to ~/Library/Logs/mcp-sshd.log";
    let socket = paths::resolve_socket(opts.socket.as_deref())?;
    let log = socket.log_file();
    let Some(n) = tail else {
        if as_json {
            println!("{:#}", json!({ "log_file": log, "note": ELSEWHERE }));
        } else {
            println!("{}", log.display());
            println!("({ELSEWHERE})");
        }
        return Ok(ExitCode::SUCCESS);
    };
    match std::fs::read_to_string(&log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let lines = &lines[lines.len().saturating_sub(n)..];
            if as_json {
                println!("{:#}", json!({ "log_file": log, "lines": lines }));
            } else {
                for line in lines {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            fail(
                as_json,
                &format!("cannot read {}: {e} ({ELSEWHERE})", log.display()),
            );
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

fn since_ms(unix_ms: i64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    u64::try_from(now.saturating_sub(u128::try_from(unix_ms).unwrap_or(0))).unwrap_or(0)
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}
