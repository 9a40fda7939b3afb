//! `mcp-ssh-shim`: the stdio MCP server each AI client spawns. stdout carries MCP and nothing
//! else; logs go to stderr or `--log-file`. Every tool call is forwarded to mcp-sshd, which is
//! started on first use when none runs.
//!
//! Before it answers anything, the shim checks its hosts.json (see [`check_config`]), so that an
//! MCP client's health check (spawn, then `initialize`) shows a broken setup as a failure.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use clap::Parser;
use mcp_ssh_proto::paths;
use mcp_ssh_shim::client::daemon_program;
use mcp_ssh_shim::mcp::{Shim, stdio};
use rmcp::ServiceExt;
use tracing_subscriber::EnvFilter;

/// MCP server (stdio) for running commands on your SSH hosts through mcp-sshd.
#[derive(Parser, Debug)]
#[command(name = "mcp-ssh-shim", version)]
struct Args {
    /// hosts.json for the daemon [default: ~/.config/mcp-ssh/hosts.json]
    #[arg(long, env = paths::CONFIG_ENV)]
    config: Option<PathBuf>,
    /// Daemon socket [default: per-user runtime directory]
    #[arg(long, env = paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    /// Append logs here instead of stderr
    #[arg(long)]
    log_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = init_logging(args.log_file.as_deref()) {
        eprintln!("mcp-ssh-shim: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Err(problem) = check_config(args.config.as_deref()) {
        // One plain line on stderr, which is what MCP clients show of a server that failed to
        // start (a log line's timestamp and level would only bury it); the log file, if any,
        // gets it too.
        if args.log_file.is_some() {
            tracing::error!("{problem}");
        }
        eprintln!("mcp-ssh-shim: {problem}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-ssh-shim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    // A relative --config means relative to where the client started us; make it absolute now,
    // since the daemon we may start runs elsewhere.
    let config = args.config.map(|c| std::path::absolute(&c).unwrap_or(c));
    let shim = Shim::new(args.socket, config);
    let (input, output, writer) = stdio::guard(tokio::io::stdin(), tokio::io::stdout());
    let service = shim
        .serve((input, output))
        .await
        .context("MCP handshake failed")?;
    service.waiting().await.context("MCP session failed")?;
    // The last responses may still be on their way to stdout.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
    Ok(())
}

/// What can be known about hosts.json at start: that it exists and is readable, that it is JSON,
/// and that the daemon accepts it (`mcp-sshd --check-config`: unknown fields, types, ranges).
/// The daemon's own validation is used because the shim crate does not have its types; when no
/// `mcp-sshd` can be run here, the first call says so instead. Problems that do not stop the
/// daemon (an `identity_file` that is not there yet) are logged, not fatal. Returns the line to
/// print: the file and the fix.
fn check_config(given: Option<&Path>) -> Result<(), String> {
    let path = paths::resolve_config(given);
    let shown = path.display();
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => {
            let relative = match given {
                Some(given) if given.is_relative() => format!(
                    "; {} is relative to the directory the MCP client started the shim in",
                    given.display()
                ),
                _ => String::new(),
            };
            format!(
                "Config file not found: {shown} (create it, e.g. from hosts.example.json, or give \
                 its absolute path with --config{relative})"
            )
        }
        ErrorKind::PermissionDenied => format!(
            "cannot read config file {shown}: permission denied (make it yours and readable: \
             chmod 600 {shown})"
        ),
        ErrorKind::IsADirectory => format!(
            "config file {shown} is a directory (give the path of the hosts.json file itself with \
             --config)"
        ),
        _ => format!(
            "cannot read config file {shown}: {e} (fix it, or give another file with --config)"
        ),
    })?;
    if text.trim_ascii().is_empty() {
        return Err(format!(
            "config file {shown} is empty (write your hosts into it, e.g. from hosts.example.json)"
        ));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&text) {
        return Err(format!(
            "invalid config file {shown}: {e}: it is not valid JSON (fix the syntax there)"
        ));
    }
    daemon_check(&path)
}

/// `mcp-sshd --check-config`, the daemon's own validation: about 3 ms, most of it exec'ing the
/// binary; it doubles the ~4 ms from spawn to the `initialize` answer, once per MCP session.
fn daemon_check(path: &Path) -> Result<(), String> {
    let program = daemon_program();
    let out = match Command::new(&program)
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            tracing::debug!(
                "cannot run {} to check {}: {e}",
                program.display(),
                path.display()
            );
            return Ok(());
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    for warning in stdout.lines().filter_map(|l| l.strip_prefix("warning: ")) {
        tracing::warn!("{warning}");
    }
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let said = first.strip_prefix("mcp-sshd: ").unwrap_or(first);
    // The forms of the daemon's ConfigError: the file itself is wrong.
    if said.starts_with("invalid config file ") {
        return Err(format!(
            "{said} (fix it; the fields are listed in the README's Configuration reference)"
        ));
    }
    if said.starts_with("Config file not found: ") || said.starts_with("cannot read config file ") {
        return Err(said.to_string());
    }
    // Anything else (a key file that is not there yet, an mcp-sshd too old for the check) does
    // not stop the daemon; the call that needs it says what is wrong.
    let detail: Vec<&str> = std::iter::once(said)
        .chain(stderr.lines().skip(1).map(str::trim))
        .filter(|l| !l.is_empty())
        .collect();
    tracing::warn!("{}", detail.join(" "));
    Ok(())
}

fn init_logging(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn"));
    // Never stdout: it belongs to MCP.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}
