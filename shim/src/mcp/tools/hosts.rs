//! `list_hosts`, `ssh_status` and `ssh_disconnect`: the daemon's `Hosts` service.

use mcp_ssh_proto::pb;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mcp::results::{self, DisconnectResult, HostInfo, HostsResult, StatusResult};
use crate::mcp::schema::output_schema;
use crate::mcp::{Call, Shim, error_result};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub host: String,
}

impl Shim {
    /// The host's channel limit as the daemon's host list tells it (0 if it cannot).
    async fn channel_limit(&self, ctx: &RequestContext<RoleServer>, host: &str) -> u32 {
        let listed = self
            .with_daemon(ctx, Call::Read, |client| async move {
                client.hosts().list_hosts(pb::ListHostsRequest {}).await
            })
            .await;
        listed
            .ok()
            .and_then(|reply| {
                reply
                    .into_inner()
                    .hosts
                    .into_iter()
                    .find(|h| h.name == host)
            })
            .map_or(0, |h| h.channel_limit)
    }
}

#[tool_router(router = hosts_router, vis = "pub(super)")]
impl Shim {
    /// List configured SSH hosts and their state.
    #[tool(output_schema = output_schema::<HostsResult>(), annotations(read_only_hint = true, open_world_hint = false))]
    async fn list_hosts(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let listed = self
            .with_daemon(&ctx, Call::Read, |client| async move {
                client.hosts().list_hosts(pb::ListHostsRequest {}).await
            })
            .await;
        let reply = match listed {
            Ok(reply) => reply.into_inner(),
            Err(text) => return error_result(text),
        };
        let mismatch = self.config_note(&ctx).await;
        let result = HostsResult {
            hosts: reply.hosts.into_iter().map(HostInfo::from).collect(),
            groups: reply
                .groups
                .into_iter()
                .map(|g| (g.name, g.hosts))
                .collect(),
            note: mismatch,
        };
        results::ok(result.text(), &result)
    }

    /// Check a host is reachable (connects if needed).
    #[tool(output_schema = output_schema::<StatusResult>(), annotations(read_only_hint = true))]
    async fn ssh_status(
        &self,
        Parameters(p): Parameters<HostParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let host = p.host.clone();
        let probed = self
            .with_daemon(&ctx, Call::Read, |client| {
                let host = host.clone();
                async move { client.hosts().probe(pb::ProbeRequest { host }).await }
            })
            .await;
        let note = self.config_note(&ctx).await;
        let result = match probed {
            Ok(reply) => StatusResult::reachable(reply.into_inner().host.unwrap_or_default(), note),
            // An unknown host name is a mistake to fix, not a status.
            Err(text) if text.starts_with("unknown host") => return error_result(text),
            Err(text) => {
                let limit = self.channel_limit(&ctx, &p.host).await;
                StatusResult::unreachable(&p.host, text, limit, note)
            }
        };
        results::ok(result.text(), &result)
    }

    /// Close the SSH connection to a host.
    #[tool(output_schema = output_schema::<DisconnectResult>(), annotations(idempotent_hint = true, destructive_hint = false, open_world_hint = false))]
    async fn ssh_disconnect(
        &self,
        Parameters(p): Parameters<HostParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let host = p.host.clone();
        let done = self
            .with_daemon(&ctx, Call::Idempotent, |client| {
                let host = host.clone();
                async move {
                    client
                        .hosts()
                        .disconnect(pb::DisconnectRequest { host })
                        .await
                }
            })
            .await;
        match done {
            Ok(reply) => {
                let reply = reply.into_inner();
                let result = DisconnectResult {
                    host: p.host,
                    was_connected: reply.was_connected,
                    interrupted_calls: reply.interrupted_calls,
                };
                results::ok(result.text(), &result)
            }
            Err(text) => error_result(text),
        }
    }
}
