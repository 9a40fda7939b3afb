//! `status` (the daemon, its hosts, jobs and clients) and `hosts`.

use std::fmt::Write as _;
use std::process::ExitCode;

use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::{ClientError, DaemonClient, state_name};
use serde_json::json;

use super::Ctx;
use crate::EXIT_NOT_RUNNING;
use crate::output::{TextTable, ago, first_line, human_duration, non_empty};

pub async fn status(ctx: &Ctx) -> Result<ExitCode, ClientError> {
    let client = match DaemonClient::connect(&ctx.opts).await {
        Ok(client) => client,
        Err(ClientError::NotRunning(socket)) => {
            if ctx.json {
                println!("{}", json!({ "running": false, "socket": socket }));
            } else {
                println!("mcp-sshd is not running (socket: {})", socket.display());
            }
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e),
    };
    // Status shows the config it serves; the note says that --config did not change it.
    if let Some(message) = ctx.config_not_applied(&client) {
        eprintln!("mcp-sshctl: {message}");
    }
    let s = client
        .daemon()
        .status(pb::StatusRequest {})
        .await?
        .into_inner();
    if ctx.json {
        println!("{:#}", status_json(&s));
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", status_text(&s));
    Ok(ExitCode::SUCCESS)
}

fn status_text(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mcp-sshd {}  pid {}  up {}  {} call(s) in flight",
        s.daemon_version,
        s.pid,
        human_duration(s.uptime_ms),
        s.calls_in_flight
    );
    let _ = writeln!(out, "socket  {}", s.socket_path);
    let _ = writeln!(
        out,
        "config  {} (loaded {}, generation {})",
        s.config_path,
        ago(s.config_loaded_at_unix_ms),
        s.config_generation
    );
    let _ = writeln!(
        out,
        "jobs    {} running, {} known (mcp-sshctl jobs lists them)",
        s.jobs_running, s.jobs_known
    );
    if !s.config_error.is_empty() {
        let _ = writeln!(
            out,
            "RELOAD FAILED, still serving the previous configuration: {}",
            s.config_error
        );
    }
    if s.daemon_version != env!("CARGO_PKG_VERSION") {
        let _ = writeln!(
            out,
            "note: this mcp-sshctl is {}, the daemon is {}",
            env!("CARGO_PKG_VERSION"),
            s.daemon_version
        );
    }
    for warning in &s.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out.push('\n');
    if s.hosts.len() > SHOWN_HOSTS {
        // Hundreds of hosts: the counts, then those that need a look.
        let _ = writeln!(out, "{}", state_counts(&s.hosts));
        let notable: Vec<pb::HostState> = s
            .hosts
            .iter()
            .filter(|h| {
                h.state == pb::ConnectionState::Failed as i32
                    || h.channels_in_use > 0
                    || h.jobs_running > 0
            })
            .take(SHOWN_HOSTS)
            .cloned()
            .collect();
        if !notable.is_empty() {
            let _ = writeln!(out, "busy or failing (first {SHOWN_HOSTS}):");
            out.push_str(&host_table(&notable));
        }
        let _ = writeln!(
            out,
            "(mcp-sshctl hosts lists every host; --json has everything)"
        );
    } else {
        out.push_str(&host_table(&s.hosts));
    }
    if !s.bastions.is_empty() {
        let _ = writeln!(
            out,
            "\nbastions ({}), reached for the hosts behind them",
            s.bastions.len()
        );
        out.push_str(&host_table(&s.bastions));
    }
    let forwards: Vec<pb::ForwardInfo> = s
        .hosts
        .iter()
        .flat_map(|h| h.forwards.iter().cloned())
        .collect();
    if !forwards.is_empty() {
        let _ = writeln!(out, "\nforwards ({})", forwards.len());
        out.push_str(&super::forward::table(&forwards));
    }
    if !s.partials.is_empty() {
        let _ = writeln!(
            out,
            "\npartial transfers kept for a resume ({}; mcp-sshctl partials --discard ID removes one)",
            s.partials.len()
        );
        out.push_str(&super::partials::table(&s.partials));
    }
    let _ = writeln!(out, "\nclients ({})", s.clients.len());
    for c in &s.clients {
        let version = if c.version.is_empty() {
            String::new()
        } else {
            format!(" {}", c.version)
        };
        let _ = writeln!(
            out,
            "  {}{}  pid {}  attached {}",
            c.name,
            version,
            c.pid,
            ago(c.attached_at_unix_ms)
        );
    }
    out
}

/// More hosts than this and `status` summarises them.
const SHOWN_HOSTS: usize = 30;

/// "500 hosts: 480 connected, 18 disconnected, 2 failed".
fn state_counts(hosts: &[pb::HostState]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for h in hosts {
        *counts.entry(state_name(h.state)).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    format!("{} hosts: {}", hosts.len(), parts.join(", "))
}

/// `@gpus (4): gpu-1 gpu-2 gpu-3 gpu-4`, one line per group.
fn group_lines(groups: &[pb::HostGroup]) -> String {
    let mut out = String::new();
    for g in groups {
        let _ = writeln!(
            out,
            "@{} ({}): {}",
            g.name,
            g.hosts.len(),
            g.hosts.join(" ")
        );
    }
    out
}

fn host_table(hosts: &[pb::HostState]) -> String {
    let mut table = TextTable::new(
        &[
            "HOST",
            "TARGET",
            "STATE",
            "SINCE",
            "CHANNELS",
            "JOBS",
            "LAST ERROR",
        ],
        &[1, 6],
    );
    for h in hosts {
        table.row(vec![
            h.name.clone(),
            address(h),
            state_name(h.state).into(),
            human_duration(crate::output::since_ms(h.since_unix_ms)),
            format!("{}/{}", h.channels_in_use, h.channel_limit),
            h.jobs_running.to_string(),
            first_line(&h.last_error, 200),
        ]);
    }
    table.render()
}

/// `user@host:port`, the route when not direct, and the source when not hosts.json alone.
fn address(h: &pb::HostState) -> String {
    let mut text = format!("{}@{}:{}", h.username, h.hostname, h.port);
    if !h.route.is_empty() {
        text.push_str(&format!(" via {}", h.route));
    }
    if !h.source.is_empty() && h.source != "hosts.json" {
        text.push_str(&format!(" [{}]", h.source));
    }
    text
}

fn host_json(h: &pb::HostState) -> serde_json::Value {
    json!({
        "name": h.name, "hostname": h.hostname, "port": h.port, "username": h.username,
        "state": state_name(h.state), "since_unix_ms": h.since_unix_ms,
        "channels_in_use": h.channels_in_use, "channel_limit": h.channel_limit,
        "jobs_running": h.jobs_running,
        "last_error": non_empty(&h.last_error),
        "server_version": non_empty(&h.server_version),
        "host_key_fingerprint": non_empty(&h.host_key_fingerprint),
        "connections_opened": h.connections_opened, "restricted": h.restricted,
        "route": non_empty(&h.route),
        "source": non_empty(&h.source),
        "forwards": h.forwards.iter().map(super::forward::forward_json).collect::<Vec<_>>(),
    })
}

fn status_json(s: &pb::StatusReply) -> serde_json::Value {
    json!({
        "running": true, "version": s.daemon_version, "pid": s.pid, "uptime_ms": s.uptime_ms,
        "started_at_unix_ms": s.started_at_unix_ms, "socket": s.socket_path, "config": s.config_path,
        "protocol": format!("{}.{}", s.proto_major, s.proto_minor), "warnings": s.warnings,
        "config_generation": s.config_generation, "config_loaded_at_unix_ms": s.config_loaded_at_unix_ms,
        "config_error": non_empty(&s.config_error),
        "calls_in_flight": s.calls_in_flight,
        "jobs_known": s.jobs_known, "jobs_running": s.jobs_running,
        "hosts": s.hosts.iter().map(host_json).collect::<Vec<_>>(),
        "bastions": s.bastions.iter().map(host_json).collect::<Vec<_>>(),
        "partials": s.partials.iter().map(super::partials::partial_json).collect::<Vec<_>>(),
        "clients": s.clients.iter().map(|c| json!({
            "id": c.client_id, "name": c.name, "version": c.version, "pid": c.pid,
            "kind": match pb::ClientKind::try_from(c.kind) {
                Ok(pb::ClientKind::Shim) => "shim",
                Ok(pb::ClientKind::Ctl) => "ctl",
                _ => "unknown",
            },
            "attached_at_unix_ms": c.attached_at_unix_ms,
        })).collect::<Vec<_>>(),
    })
}

pub async fn hosts(ctx: &Ctx) -> Result<ExitCode, ClientError> {
    let client = ctx.connect_or_start().await?;
    let reply = client
        .hosts()
        .list_hosts(pb::ListHostsRequest {})
        .await?
        .into_inner();
    if ctx.json {
        // An array of hosts, each with the groups it belongs to.
        let hosts = reply.hosts.iter().map(|h| {
            let mut value = host_json(h);
            let groups: Vec<&str> = reply
                .groups
                .iter()
                .filter(|g| g.hosts.contains(&h.name))
                .map(|g| g.name.as_str())
                .collect();
            value["groups"] = json!(groups);
            value
        });
        println!("{:#}", serde_json::Value::Array(hosts.collect()));
    } else {
        print!("{}", host_table(&reply.hosts));
        if !reply.groups.is_empty() {
            print!("\ngroups\n{}", group_lines(&reply.groups));
        }
    }
    Ok(ExitCode::SUCCESS)
}
