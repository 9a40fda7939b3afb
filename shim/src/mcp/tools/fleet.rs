//! `ssh_execute_many`: one command on many hosts through the daemon's `Exec.RunMany`, each
//! host's output bounded, progress as hosts finish, the result gathered (`results/fleet.rs`).

use mcp_ssh_proto::pb;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mcp::results::fleet::{Gatherer, ManyResult};
use crate::mcp::results::ok;
use crate::mcp::schema::output_schema;
use crate::mcp::{Call, Shim, error_result, output_limit, status_text};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManyParams {
    /// Host names, @groups, globs
    pub hosts: Vec<String>,
    pub command: String,
    /// Seconds without output before stopping
    #[serde(default)]
    pub timeout: Option<u32>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes per stream per host
    #[serde(default)]
    pub max_output: Option<u32>,
    /// Start no more hosts after a failure
    #[serde(default)]
    pub stop_on_error: bool,
}

#[tool_router(router = fleet_router, vis = "pub(super)")]
impl Shim {
    /// Run one command on many hosts at once; alike results gathered.
    #[tool(output_schema = output_schema::<ManyResult>())]
    async fn ssh_execute_many(
        &self,
        Parameters(p): Parameters<ManyParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let budget = match self.default_output_limit(&ctx).await {
            Ok(limit) => limit as usize,
            Err(text) => return error_result(text),
        };
        let (per_host, note) = match p.max_output.map(output_limit) {
            Some((limit, note)) => (limit as usize, note),
            None => (budget, None),
        };
        let request = pb::RunManyRequest {
            targets: p.hosts.clone(),
            command: p.command,
            cwd: p.cwd.unwrap_or_default(),
            timeout_secs: p.timeout.unwrap_or(0),
            stop_on_error: p.stop_on_error,
        };
        let label = p.hosts.join(", ");
        let stream = self
            .with_daemon(&ctx, Call::Command(&label), |client| {
                let request = request.clone();
                async move {
                    client
                        .exec()
                        .run_many(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(text) => return error_result(text),
        };
        let progress = ctx.meta.get_progress_token();
        let mut gatherer = Gatherer::new(per_host);
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = ctx.ct.cancelled() => {
                    // Dropping the stream makes the daemon stop every remote command.
                    drop(stream);
                    return error_result(
                        "cancelled by the client; the remote commands are being stopped (some may have run)".into(),
                    );
                }
            };
            let event = match message {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(status) => return error_result(status_text(&status, Call::Command(&label))),
            };
            if gatherer.apply(event).is_some()
                && let Some(token) = progress.clone()
            {
                let (done, total) = gatherer.progress();
                let param = ProgressNotificationParam::new(token, done as f64)
                    .with_total(total as f64)
                    .with_message(format!("{done}/{total} done"));
                let _ = ctx.peer.notify_progress(param).await;
            }
        }
        let gathered = gatherer.finish();
        let mut result = ManyResult::new(gathered, budget);
        if let Some(note) = note {
            result.summary.push_str(&format!(" (note: {note})"));
        }
        ok(result.text(), &result)
    }
}
