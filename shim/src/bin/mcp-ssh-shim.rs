//! `mcp-ssh-shim`: the stdio MCP server each AI client spawns. stdout carries MCP and nothing
//! else; logs go to stderr or `--log-file`. Every tool call is forwarded to mcp-sshd, which is
//! started on first use when none runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mcp_ssh_proto::paths;
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
