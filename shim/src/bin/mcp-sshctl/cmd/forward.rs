//! `forward`: port forwards the daemon keeps. `HOST [LOCAL:]REMOTE_PORT` opens a local one
//! (127.0.0.1, as `ssh -L`), `-R HOST [BIND:]PORT:LOCAL_HOST:LOCAL_PORT` a remote one (as
//! `ssh -R`), `--list` shows them, `--close ID` closes one.

use std::process::ExitCode;

use indicatif::HumanBytes;
use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::ClientError;
use serde_json::json;

use super::Ctx;
use crate::EXIT_USAGE;
use crate::output::{TextTable, ago, fail, non_empty};

/// What `forward` was asked to do.
pub enum ForwardAsk {
    List,
    Close(String),
    Open {
        host: String,
        spec: String,
        remote_host: Option<String>,
        unix: bool,
        remote: bool,
    },
}

pub fn forward_json(f: &pb::ForwardInfo) -> serde_json::Value {
    json!({
        "id": f.id, "host": f.host,
        "direction": if f.direction() == pb::ForwardDirection::Remote { "remote" } else { "local" },
        "local_address": f.local_address, "remote_address": f.remote_address,
        "opened_by": f.opened_by, "opened_at_unix_ms": f.opened_at_unix_ms,
        "connections_open": f.connections_open, "connections_total": f.connections_total,
        "bytes_to_host": f.bytes_to_host, "bytes_from_host": f.bytes_from_host,
        "last_error": non_empty(&f.last_error), "waiting": non_empty(&f.waiting),
    })
}

/// `local → remote` as `ssh -L`/`-R` would read.
pub fn route(f: &pb::ForwardInfo) -> String {
    if f.direction() == pb::ForwardDirection::Remote {
        format!("{}:{} → {} (-R)", f.host, f.remote_address, f.local_address)
    } else {
        format!("{} → {}:{}", f.local_address, f.host, f.remote_address)
    }
}

fn port(text: &str, what: &str) -> Result<u32, String> {
    text.parse::<u16>()
        .map(u32::from)
        .map_err(|_| format!("{what} {text:?} is not a port number (0-65535)"))
}

/// `[LOCAL:]REMOTE_PORT` → (local port, remote port).
fn local_spec(spec: &str) -> Result<(u32, u32), String> {
    match spec.split_once(':') {
        Some((local, remote)) => Ok((port(local, "local port")?, port(remote, "remote port")?)),
        None => Ok((0, port(spec, "remote port")?)),
    }
}

/// `[BIND:]PORT:LOCAL_HOST:LOCAL_PORT` → (bind address, port on the host, local host, port).
fn remote_spec(spec: &str) -> Result<(String, u32, String, u32), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (bind, rest) = match parts[..] {
        [_, _, _] => ("localhost", &parts[..]),
        [bind, _, _, _] => (bind, &parts[1..]),
        _ => {
            return Err(format!(
                "{spec:?} is not [BIND:]PORT:LOCAL_HOST:LOCAL_PORT (e.g. 8080:localhost:3000)"
            ));
        }
    };
    Ok((
        bind.to_string(),
        port(rest[0], "port on the host")?,
        rest[1].to_string(),
        port(rest[2], "local port")?,
    ))
}

pub async fn forward(ctx: &Ctx, ask: ForwardAsk) -> Result<ExitCode, ClientError> {
    match ask {
        ForwardAsk::List => list(ctx).await,
        ForwardAsk::Close(id) => {
            let client = ctx.connect().await?;
            let request = pb::ForwardCloseRequest {
                id,
                ..Default::default()
            };
            let reply = client.forwards().close(request).await?.into_inner();
            let f = reply.forward.unwrap_or_default();
            if ctx.json {
                println!("{:#}", forward_json(&f));
            } else {
                println!(
                    "closed {}: {}; {} connection{}, {} moved",
                    f.id,
                    route(&f),
                    f.connections_total,
                    if f.connections_total == 1 { "" } else { "s" },
                    HumanBytes(f.bytes_to_host + f.bytes_from_host)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ForwardAsk::Open {
            host,
            spec,
            remote_host,
            unix,
            remote,
        } => {
            let request = if remote {
                let (bind, bind_port, local_host, local_port) = match remote_spec(&spec) {
                    Ok(parsed) => parsed,
                    Err(e) => return usage(ctx, &e),
                };
                pb::ForwardOpenRequest {
                    host,
                    direction: pb::ForwardDirection::Remote as i32,
                    remote_host: bind,
                    remote_port: bind_port,
                    local_port,
                    local_host,
                    local_socket: false,
                }
            } else {
                let (local_port, remote_port) = match local_spec(&spec) {
                    Ok(parsed) => parsed,
                    Err(e) => return usage(ctx, &e),
                };
                pb::ForwardOpenRequest {
                    host,
                    direction: pb::ForwardDirection::Local as i32,
                    remote_host: remote_host.unwrap_or_default(),
                    remote_port,
                    local_port,
                    local_socket: unix,
                    local_host: String::new(),
                }
            };
            let client = ctx.connect_or_start().await?;
            let reply = client.forwards().open(request).await?.into_inner();
            let f = reply.forward.unwrap_or_default();
            if ctx.json {
                let mut value = forward_json(&f);
                value["existed"] = json!(reply.existed);
                println!("{value:#}");
            } else {
                let verb = if reply.existed {
                    "already open"
                } else {
                    "opened"
                };
                println!("{verb} {}: {}", f.id, route(&f));
                if f.direction() != pb::ForwardDirection::Remote
                    && f.local_address.starts_with("127.")
                {
                    println!(
                        "  e.g. http://{}/ (kept by mcp-sshd until `mcp-sshctl forward --close {}`)",
                        f.local_address, f.id
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn usage(ctx: &Ctx, message: &str) -> Result<ExitCode, ClientError> {
    fail(ctx.json, message);
    Ok(ExitCode::from(EXIT_USAGE))
}

async fn list(ctx: &Ctx) -> Result<ExitCode, ClientError> {
    let client = ctx.connect().await?;
    let forwards = client
        .forwards()
        .list(pb::ForwardListRequest::default())
        .await?
        .into_inner()
        .forwards;
    if ctx.json {
        let all: Vec<serde_json::Value> = forwards.iter().map(forward_json).collect();
        println!("{:#}", json!({ "forwards": all }));
        return Ok(ExitCode::SUCCESS);
    }
    if forwards.is_empty() {
        println!("no forwards (open one with `mcp-sshctl forward HOST [LOCAL:]REMOTE_PORT`)");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&forwards));
    Ok(ExitCode::SUCCESS)
}

/// The forwards as `forward --list` and `status` print them.
pub fn table(forwards: &[pb::ForwardInfo]) -> String {
    let mut table = TextTable::new(
        &[
            "ID",
            "ROUTE",
            "OPEN",
            "TOTAL",
            "MOVED",
            "OPENED",
            "LAST ERROR",
        ],
        &[1, 6],
    );
    for f in forwards {
        let problem = non_empty(&f.waiting)
            .or(non_empty(&f.last_error))
            .unwrap_or("-")
            .to_string();
        table.row(vec![
            f.id.clone(),
            route(f),
            f.connections_open.to_string(),
            f.connections_total.to_string(),
            HumanBytes(f.bytes_to_host + f.bytes_from_host).to_string(),
            ago(f.opened_at_unix_ms),
            problem,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_should_read_as_ssh_reads_them() {
        assert_eq!(local_spec("6006"), Ok((0, 6006)));
        assert_eq!(local_spec("8000:6006"), Ok((8000, 6006)));
        assert!(local_spec("x:6006").is_err());
        assert_eq!(
            remote_spec("8080:localhost:3000"),
            Ok(("localhost".into(), 8080, "localhost".into(), 3000))
        );
        assert_eq!(
            remote_spec("0.0.0.0:8080:127.0.0.1:3000"),
            Ok(("0.0.0.0".into(), 8080, "127.0.0.1".into(), 3000))
        );
        assert!(remote_spec("8080").is_err());
    }
}
