//! `mcp-sshd`: argument parsing, logging and signals; the daemon itself is `mcp_ssh_daemon::run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcp_ssh_daemon::config::Config;
use mcp_ssh_proto::paths;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The mcp-ssh daemon: holds SSH connections for AI assistants and serves them on a private
/// Unix socket. Usually started by mcp-ssh-shim or a systemd/launchd unit, not by hand.
#[derive(Parser, Debug)]
#[command(name = "mcp-sshd", version)]
struct Args {
    /// hosts.json to serve [default: ~/.config/mcp-ssh/hosts.json]
    #[arg(long, env = paths::CONFIG_ENV)]
    config: Option<PathBuf>,
    /// Socket path [default: /run/user/UID/mcp-ssh/daemon.sock, else ~/.mcp-ssh/run/...]
    #[arg(long, env = paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    /// Stay attached to the terminal (the default; accepted for service units).
    #[arg(long)]
    foreground: bool,
    /// Start a new session, detached from the caller's terminal and process group (used when a
    /// client starts the daemon).
    #[arg(long)]
    detach: bool,
    /// Append logs to this file instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Print the JSON Schema of hosts.json and exit
    #[arg(long)]
    print_config_schema: bool,
    /// Validate hosts.json, print problems and warnings, and exit (non-zero when invalid)
    #[arg(long)]
    check_config: bool,
    /// Seconds in-flight calls get to finish at shutdown before they are stopped.
    #[arg(long, default_value_t = mcp_ssh_daemon::DEFAULT_GRACE.as_secs())]
    grace: u64,
}

fn main() -> ExitCode {
    // Before any thread exists: everything we create (lock, log, socket dir) is private.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mcp-sshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_config_schema {
        print!("{}", mcp_ssh_daemon::config::schema());
        return Ok(());
    }
    if args.check_config {
        let path = paths::resolve_config(args.config.as_deref());
        let config = Config::load(&path)?;
        for warning in &config.warnings {
            println!("warning: {warning}");
        }
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!(
                "{} is valid JSON for mcp-ssh, but:\n  {}",
                path.display(),
                problems.join("\n  ")
            );
        }
        let groups = match config.groups.iter().count() {
            0 => String::new(),
            n => format!(", {n} group(s)"),
        };
        println!(
            "{} is valid: {} host(s){groups}, fanout {}",
            path.display(),
            config.hosts.len(),
            config.fanout
        );
        return Ok(());
    }
    if args.detach {
        // Fails only if we already lead a process group, in which case we are detached enough.
        let _ = nix::unistd::setsid();
    }
    let config_path = paths::resolve_config(args.config.as_deref());
    let socket = paths::resolve_socket(args.socket.as_deref())?;
    let config = Config::load(&config_path);
    let level = config
        .as_ref()
        .map(|c| c.log_level.as_filter())
        .unwrap_or("info");
    init_logging(level, args.log_file.as_deref())?;
    let config = config?;
    let files = mcp_ssh_daemon::fds::raise_limit();
    tracing::debug!("open-file limit {files}");
    // Socket activation (systemd): LISTEN_FDS / LISTEN_PID name fd 3.
    let activated = listenfd::ListenFd::from_env()
        .take_unix_listener(0)
        .context("cannot use the socket passed by systemd")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone())?;
        let opts = mcp_ssh_daemon::Options {
            config,
            socket,
            grace: Duration::from_secs(args.grace),
            activated,
        };
        mcp_ssh_daemon::run(opts, shutdown).await?;
        Ok(())
    })
}

fn init_logging(level: &str, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},russh=warn,h2=warn,tower=warn,hyper=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT begin a graceful shutdown.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
    });
    Ok(())
}
