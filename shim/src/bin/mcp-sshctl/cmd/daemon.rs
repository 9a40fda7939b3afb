//! Handles on the daemon itself: `disconnect`, `reload`, `stop`, `logs`, and `completions`.

use std::process::ExitCode;
use std::time::Duration;

use mcp_ssh_proto::{paths, pb};
use mcp_ssh_shim::client::{ClientError, DaemonClient};
use serde_json::json;

use super::Ctx;
use crate::output::fail;
use crate::{EXIT_ERROR, EXIT_INVALID_CONFIG};

pub async fn disconnect(ctx: &Ctx, host: String) -> Result<ExitCode, ClientError> {
    let client = ctx.connect().await?;
    let reply = client
        .hosts()
        .disconnect(pb::DisconnectRequest { host: host.clone() })
        .await?
        .into_inner();
    if ctx.json {
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

/// Refused when the user named another config than the daemon's: reloading would re-read the
/// daemon's file, not the named one, and look as if the named one were applied.
pub async fn reload(ctx: &Ctx) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect(&ctx.opts).await?;
    if let Some(message) = ctx.config_not_applied(&client) {
        fail(ctx.json, &format!("nothing reloaded: {message}"));
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    let reply = match client.daemon().reload(pb::ReloadRequest {}).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            fail(
                ctx.json,
                &format!(
                    "{} (nothing changed: the daemon keeps serving the previous configuration)",
                    status.message()
                ),
            );
            return Ok(ExitCode::from(EXIT_INVALID_CONFIG));
        }
        Err(status) => return Err(status.into()),
    };
    if ctx.json {
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

/// Stops whichever daemon runs (no note about --config: stopping is how to apply it).
pub async fn stop(ctx: &Ctx) -> Result<ExitCode, ClientError> {
    let client = DaemonClient::connect(&ctx.opts).await?;
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
    if ctx.json {
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
pub fn logs(ctx: &Ctx, tail: Option<usize>) -> Result<ExitCode, ClientError> {
    const ELSEWHERE: &str = "a daemon run by systemd logs to the journal: journalctl --user -u mcp-sshd; \
                             one run by launchd to ~/Library/Logs/mcp-sshd.log";
    let socket = paths::resolve_socket(ctx.opts.socket.as_deref())?;
    let log = socket.log_file();
    let Some(n) = tail else {
        if ctx.json {
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
            if ctx.json {
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
                ctx.json,
                &format!("cannot read {}: {e} ({ELSEWHERE})", log.display()),
            );
            Ok(ExitCode::from(EXIT_ERROR))
        }
    }
}

pub fn completions(shell: clap_complete::Shell, command: &mut clap::Command) {
    clap_complete::generate(shell, command, "mcp-sshctl", &mut std::io::stdout());
}
