//! Kept partial transfers (see `crate::partials`): listed by `Files.Partials` and `status`,
//! expired after `partial_retention`, removed on request. Listing is when expiry happens, and
//! at startup.

use mcp_ssh_proto::pb;
use tonic::{Request, Response, Status};

use super::Service;
use crate::partials::Partial;
use crate::registry::Registry;

/// Only files named as ours are ever removed, whatever the record says.
const OURS: &str = ".mcpssh-part-";

impl Service {
    pub(super) async fn partials(
        &self,
        req: Request<pb::PartialsRequest>,
    ) -> Result<Response<pb::PartialsReply>, Status> {
        let req = req.into_inner();
        let registry = &self.registry;
        let asked: Vec<String> = req.discard;
        let taken = registry
            .partials
            .take(|p| req.discard_all || asked.contains(&p.id));
        let unknown = asked
            .iter()
            .filter(|id| !taken.iter().any(|p| &p.id == *id))
            .cloned()
            .collect();
        let discarded = taken.iter().map(|p| to_pb(registry, p, false)).collect();
        remove_files(registry, taken);
        Ok(Response::new(pb::PartialsReply {
            kept: kept_now(registry),
            discarded,
            unknown,
        }))
    }
}

/// What is kept, after removing what has expired.
pub(super) fn kept_now(registry: &Registry) -> Vec<pb::PartialTransfer> {
    expire(registry);
    registry
        .partials
        .list()
        .iter()
        .map(|(p, running)| to_pb(registry, p, *running))
        .collect()
}

/// Removes the records and files past `partial_retention`.
pub fn expire(registry: &Registry) {
    let expired = registry
        .partials
        .take_expired(registry.settings().partial_retention);
    for p in &expired {
        tracing::info!(host = %p.host, "kept partial transfer {} expired: removing {}", p.id, p.temp);
    }
    remove_files(registry, expired);
}

/// Removes temporary files: local ones now, remote ones on the host now or once it is reached.
fn remove_files(registry: &Registry, partials: Vec<Partial>) {
    for p in partials {
        if !p.temp.contains(OURS) {
            tracing::warn!("not removing {}: not a name mcp-ssh gives", p.temp);
        } else if p.upload {
            match registry.host_or_bastion(&p.host) {
                Ok(host) => host.remove_remote_temp(&p.temp),
                Err(_) => tracing::warn!(
                    "cannot remove {}:{}: the host is no longer in hosts.json",
                    p.host,
                    p.temp
                ),
            }
        } else if let Err(e) = std::fs::remove_file(&p.temp)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", p.temp);
        }
    }
}

fn to_pb(registry: &Registry, p: &Partial, running: bool) -> pb::PartialTransfer {
    let retention = registry.settings().partial_retention;
    pb::PartialTransfer {
        id: p.id.clone(),
        host: p.host.clone(),
        upload: p.upload,
        temp_path: p.temp.clone(),
        source: p.source.clone(),
        destination: p.destination.clone(),
        size: p.size,
        kept_bytes: p.kept.unwrap_or(0),
        kept_at_unix_ms: p.at_ms,
        expires_at_unix_ms: p
            .at_ms
            .saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
        running,
    }
}
