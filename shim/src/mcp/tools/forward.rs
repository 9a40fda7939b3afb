//! `ssh_forward`: a port of a host on 127.0.0.1, kept by the daemon (service `Forwards`).

use mcp_ssh_proto::pb;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mcp::results;
use crate::mcp::results::forward::{ForwardResult, ForwardState};
use crate::mcp::schema::output_schema;
use crate::mcp::{Call, Shim, error_result};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardParams {
    pub host: String,
    /// Port of the service, as seen from the host
    #[schemars(range(min = 1))]
    pub remote_port: u16,
    /// Default: the host itself
    #[serde(default)]
    pub remote_host: Option<String>,
    /// Port on 127.0.0.1 (default: a free one)
    #[serde(default)]
    pub local_port: Option<u16>,
    /// true: close this forward
    #[serde(default)]
    pub close: bool,
}

#[tool_router(router = forward_router, vis = "pub(super)")]
impl Shim {
    /// Forward a host's port to 127.0.0.1 (TensorBoard, Jupyter…), kept by mcp-sshd until closed.
    #[tool(output_schema = output_schema::<ForwardResult>(), annotations(idempotent_hint = true, destructive_hint = false))]
    async fn ssh_forward(
        &self,
        Parameters(p): Parameters<ForwardParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let remote_host = p.remote_host.clone().unwrap_or_default();
        let done = if p.close {
            let request = pb::ForwardCloseRequest {
                id: String::new(),
                host: p.host.clone(),
                remote_host,
                remote_port: u32::from(p.remote_port),
                local_port: u32::from(p.local_port.unwrap_or(0)),
            };
            self.with_daemon(&ctx, Call::Idempotent, |client| {
                let request = request.clone();
                async move { client.forwards().close(request).await }
            })
            .await
            .map(|reply| (reply.into_inner().forward, ForwardState::Closed))
        } else {
            let request = pb::ForwardOpenRequest {
                host: p.host.clone(),
                direction: pb::ForwardDirection::Local as i32,
                remote_host,
                remote_port: u32::from(p.remote_port),
                local_port: u32::from(p.local_port.unwrap_or(0)),
                ..Default::default()
            };
            self.with_daemon(&ctx, Call::Idempotent, |client| {
                let request = request.clone();
                async move { client.forwards().open(request).await }
            })
            .await
            .map(|reply| {
                let reply = reply.into_inner();
                let state = if reply.existed {
                    ForwardState::AlreadyOpen
                } else {
                    ForwardState::Opened
                };
                (reply.forward, state)
            })
        };
        match done {
            Ok((Some(forward), state)) => {
                let result = ForwardResult::new(forward, state);
                results::ok(result.text(), &result)
            }
            Ok((None, _)) => error_result("mcp-sshd answered without the forward".into()),
            Err(text) => error_result(text),
        }
    }
}
