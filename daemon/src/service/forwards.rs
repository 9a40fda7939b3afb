//! The Forwards service: protobuf ↔ `forwards.rs`. Remote forwards are for humans only: a shim
//! (the AI) asking for one is refused.

use mcp_ssh_proto::pb;
use tonic::{Request, Response, Status};

use super::{Service, peer, unix_ms};
use crate::error::Error;
use crate::forwards::{ForwardView, Listen, Spec};

pub(super) fn forward_info(f: ForwardView) -> pb::ForwardInfo {
    let (direction, local, remote) = match &f.spec {
        Spec::Local {
            to_host, to_port, ..
        } => (
            pb::ForwardDirection::Local,
            f.listening_on.clone(),
            format!("{to_host}:{to_port}"),
        ),
        Spec::Remote {
            to_host, to_port, ..
        } => (
            pb::ForwardDirection::Remote,
            format!("{to_host}:{to_port}"),
            f.listening_on.clone(),
        ),
    };
    let (error_at, error) = f
        .last_error
        .map(|(at, e)| (unix_ms(at), e))
        .unwrap_or_default();
    pb::ForwardInfo {
        id: f.id,
        host: f.host,
        direction: direction as i32,
        local_address: local,
        remote_address: remote,
        opened_by: f
            .opened_by
            .map(|c| format!("{} (pid {})", c.name, c.pid))
            .unwrap_or_default(),
        opened_at_unix_ms: unix_ms(f.opened_at),
        connections_open: f.connections_open,
        connections_total: f.connections_total,
        bytes_to_host: f.bytes_to_host,
        bytes_from_host: f.bytes_from_host,
        last_error: error,
        last_error_at_unix_ms: error_at,
        waiting: f.waiting.unwrap_or_default(),
    }
}

fn port(value: u32, what: &str) -> Result<u16, Error> {
    u16::try_from(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} {value} is not a TCP port (0-65535)")))
}

fn or_default(value: &str, default: &str) -> String {
    match value.trim() {
        "" => default.to_string(),
        v => v.to_string(),
    }
}

/// The destination of a forward, checked: a name or address without spaces or controls.
fn address(value: String, what: &str) -> Result<String, Error> {
    if value.len() > 255 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidArgument(format!(
            "{what} {value:?} is not a host name or address"
        )));
    }
    Ok(value)
}

#[tonic::async_trait]
impl pb::forwards_server::Forwards for Service {
    async fn open(
        &self,
        req: Request<pb::ForwardOpenRequest>,
    ) -> Result<Response<pb::ForwardOpenReply>, Status> {
        self.refuse_when_shutting_down()?;
        let conn_id = peer(&req).map(|p| p.conn_id);
        let caller = self.registry.caller(conn_id);
        let from_shim = conn_id
            .and_then(|id| self.registry.client_for_connection(id))
            .is_some_and(|c| c.kind == pb::ClientKind::Shim as i32);
        let req = req.into_inner();
        let entry = self.registry.host(&req.host)?;
        let remote_port = port(req.remote_port, "remote_port")?;
        let local_port = port(req.local_port, "local_port")?;
        let spec = match req.direction() {
            pb::ForwardDirection::Remote => {
                if from_shim {
                    return Err(Error::ForwardRefused {
                        host: req.host,
                        reason: "remote forwards (a port on the host relayed to this machine) are opened by a human with `mcp-sshctl forward -R`, not by the AI".into(),
                    }
                    .into());
                }
                if local_port == 0 {
                    return Err(Error::InvalidArgument(
                        "a remote forward needs the local port its connections go to".into(),
                    )
                    .into());
                }
                Spec::Remote {
                    bind_host: address(or_default(&req.remote_host, "localhost"), "remote_host")?,
                    bind_port: remote_port,
                    to_host: address(or_default(&req.local_host, "127.0.0.1"), "local_host")?,
                    to_port: local_port,
                }
            }
            _ => {
                if remote_port == 0 {
                    return Err(Error::InvalidArgument(
                        "remote_port must be 1-65535: the port of the service on the host (e.g. 6006 for TensorBoard)".into(),
                    )
                    .into());
                }
                Spec::Local {
                    listen: if req.local_socket {
                        Listen::Socket
                    } else {
                        Listen::Port(local_port)
                    },
                    to_host: address(or_default(&req.remote_host, "localhost"), "remote_host")?,
                    to_port: remote_port,
                }
            }
        };
        let (forward, existed) = self.forwards.open(&caller, &entry, spec).await?;
        Ok(Response::new(pb::ForwardOpenReply {
            forward: Some(forward_info(forward)),
            existed,
        }))
    }

    async fn close(
        &self,
        req: Request<pb::ForwardCloseRequest>,
    ) -> Result<Response<pb::ForwardCloseReply>, Status> {
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let req = req.into_inner();
        let id = if req.id.is_empty() {
            let entry = self.registry.host(&req.host)?;
            let to_host = or_default(&req.remote_host, "localhost");
            let to_port = port(req.remote_port, "remote_port")?;
            let local_port = port(req.local_port, "local_port")?;
            let found = self
                .forwards
                .find_local(&entry.name(), &to_host, to_port, local_port);
            match &found[..] {
                [] => {
                    return Err(Error::InvalidArgument(format!(
                        "no forward of {} to {to_host}:{to_port} is open{}",
                        req.host,
                        if local_port == 0 {
                            String::new()
                        } else {
                            format!(" on local port {local_port}")
                        }
                    ))
                    .into());
                }
                [(id, _)] => id.clone(),
                several => {
                    let listed: Vec<String> = several
                        .iter()
                        .map(|(id, at)| format!("{id} on {at}"))
                        .collect();
                    return Err(Error::InvalidArgument(format!(
                        "{} forwards of {} reach {to_host}:{to_port} ({}): give local_port to say which to close",
                        several.len(),
                        req.host,
                        listed.join(", ")
                    ))
                    .into());
                }
            }
        } else {
            req.id
        };
        let who = caller
            .as_ref()
            .map(|c| format!("closed by {} (pid {})", c.name, c.pid))
            .unwrap_or_else(|| "closed".into());
        let forward = self.forwards.close(&id, &caller, &who)?;
        Ok(Response::new(pb::ForwardCloseReply {
            forward: Some(forward_info(forward)),
        }))
    }

    async fn list(
        &self,
        req: Request<pb::ForwardListRequest>,
    ) -> Result<Response<pb::ForwardListReply>, Status> {
        let host = req.into_inner().host;
        let host = if host.is_empty() {
            None
        } else {
            Some(self.registry.host(&host)?.name())
        };
        let forwards = self
            .forwards
            .list(host.as_deref())
            .into_iter()
            .map(forward_info)
            .collect();
        Ok(Response::new(pb::ForwardListReply { forwards }))
    }
}
