//! The MCP server of `mcp-ssh-shim`: the Python tool's tools, each a thin translation of one or
//! a few daemon calls. Tool failures (unreachable host, refused, timed out) are tool results with
//! `isError: true` and an actionable message; JSON-RPC errors are left to rmcp for malformed
//! requests.

mod link;
pub mod output;
mod results;
pub mod stdio;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_ssh_proto::pb::{self, run_event};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

pub use link::DaemonLink;
use link::is_transport_failure;
use output::CappedBuffer;
use results::{
    BatchItem, BatchResult, DisconnectResult, ExecResult, HostInfo, HostsResult, StatusResult,
};

use crate::client::{ClientError, DaemonClient};

/// Hard ceiling on the per-call `max_output` override, per stream.
const HARD_MAX_OUTPUT: u32 = 1024 * 1024;
/// Progress heartbeat interval: clients reset their own timeouts on it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub host: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteParams {
    /// Host name from list_hosts
    pub host: String,
    /// Shell command to run
    pub command: String,
    /// Seconds without output before stopping it (default: host's command_timeout)
    #[serde(default)]
    pub timeout: Option<u32>,
    /// Remote working directory
    #[serde(default)]
    pub cwd: Option<String>,
    /// Max bytes kept per stream (head+tail)
    #[serde(default)]
    pub max_output: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    pub host: String,
    pub commands: Vec<String>,
    /// Seconds without output before stopping one
    #[serde(default)]
    pub timeout: Option<u32>,
}

#[derive(Clone)]
pub struct Shim {
    tool_router: ToolRouter<Shim>,
    link: Arc<DaemonLink>,
}

/// One command to run, as a tool call describes it.
struct CommandCall {
    host: String,
    command: String,
    cwd: Option<String>,
    timeout: Option<u32>,
    max_output: Option<u32>,
    batch: Option<pb::Batch>,
}

/// What one command produced, before it becomes a tool result.
struct Ran {
    result: ExecResult,
    /// Set when the command could not run or was stopped (timeout, lost connection, ...).
    error: Option<String>,
}

impl Shim {
    pub fn new(socket: Option<PathBuf>, config: Option<PathBuf>) -> Shim {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            route.attr.input_schema = Arc::new(compact_schema(&route.attr.input_schema));
            if let Some(out) = &route.attr.output_schema {
                // Results explain themselves; their schema only needs the shape.
                let mut shape = compact_schema(out);
                strip_keys(&mut shape, &["description", "required"]);
                route.attr.output_schema = Some(Arc::new(shape));
            }
        }
        Shim {
            tool_router,
            link: Arc::new(DaemonLink::new(socket, config)),
        }
    }

    async fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<DaemonClient, String> {
        let (name, version) = ctx
            .peer
            .peer_info()
            .map(|info| {
                (
                    info.client_info.name.clone(),
                    info.client_info.version.clone(),
                )
            })
            .unwrap_or_else(|| ("unknown MCP client".into(), String::new()));
        self.link
            .get(&name, &version)
            .await
            .map_err(|e| client_error_text(&e))
    }

    /// Calls `f` with the daemon client; if the daemon turned out to be gone before the call was
    /// accepted, reconnects (restarting it) and tries once more. Such a call cannot have run.
    async fn with_daemon<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        f: F,
    ) -> Result<T, String>
    where
        F: Fn(DaemonClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let client = self.client(ctx).await?;
        match f(client).await {
            Ok(v) => Ok(v),
            Err(status) if is_transport_failure(&status) => {
                tracing::warn!("lost the daemon ({status}); reconnecting");
                self.link.reset().await;
                let client = self.client(ctx).await?;
                f(client).await.map_err(|s| status_text(&s))
            }
            Err(status) => Err(status_text(&status)),
        }
    }

    /// Runs one command through the daemon, collecting bounded output and sending progress
    /// heartbeats; cancellation drops the call, which stops the remote command.
    async fn run_command(
        &self,
        ctx: &RequestContext<RoleServer>,
        call: CommandCall,
    ) -> Result<Ran, String> {
        let limit = match call.max_output {
            Some(n) => n.clamp(1024, HARD_MAX_OUTPUT),
            None => self.default_output_limit(ctx).await?,
        } as usize;
        let request = pb::RunRequest {
            host: call.host,
            command: call.command,
            cwd: call.cwd.unwrap_or_default(),
            timeout_secs: call.timeout.unwrap_or(0),
            batch: call.batch,
        };
        let mut stream = self
            .with_daemon(ctx, |client| {
                let request = request.clone();
                async move {
                    client
                        .exec()
                        .run(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        let started = Instant::now();
        let (mut stdout, mut stderr) = (CappedBuffer::new(limit), CappedBuffer::new(limit));
        let mut exit = None;
        let mut failure = None;
        let progress = ctx.meta.get_progress_token();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(event)) => match event.event {
                        Some(run_event::Event::Stdout(data)) => stdout.push(&data),
                        Some(run_event::Event::Stderr(data)) => stderr.push(&data),
                        Some(run_event::Event::Exit(e)) => exit = Some(e),
                        Some(run_event::Event::Started(_)) | None => {}
                    },
                    Ok(None) => break,
                    Err(status) => {
                        failure = Some(status_text(&status));
                        break;
                    }
                },
                _ = ticker.tick(), if progress.is_some() => {
                    if let Some(token) = progress.clone() {
                        let elapsed = started.elapsed().as_secs_f64();
                        let last = stdout.last_line().or_else(|| stderr.last_line());
                        let message = match last {
                            Some(line) => format!("running {elapsed:.0} s; last output: {line}"),
                            None => format!("running {elapsed:.0} s; no output yet"),
                        };
                        let param = ProgressNotificationParam::new(token, elapsed).with_message(message);
                        let _ = ctx.peer.notify_progress(param).await;
                    }
                }
                () = ctx.ct.cancelled() => {
                    // Dropping the stream makes the daemon stop the remote command.
                    drop(stream);
                    return Err("cancelled by the client; the remote command is being stopped".into());
                }
            }
        }
        if exit.is_none() && failure.is_none() {
            failure = Some("the daemon ended the call without an exit status".into());
        }
        let result = ExecResult::new(
            exit.as_ref(),
            started.elapsed(),
            stdout.finish(),
            stderr.finish(),
        );
        Ok(Ran {
            result,
            error: failure,
        })
    }

    async fn default_output_limit(&self, ctx: &RequestContext<RoleServer>) -> Result<u32, String> {
        let client = self.client(ctx).await?;
        Ok(match client.hello.max_output_bytes {
            0 => 32 * 1024,
            n => n,
        })
    }
}

#[tool_router]
impl Shim {
    /// List configured SSH hosts and their connection state.
    #[tool(output_schema = schema::<HostsResult>(), annotations(read_only_hint = true, open_world_hint = false))]
    async fn list_hosts(&self, ctx: RequestContext<RoleServer>) -> CallToolResult {
        let listed = self
            .with_daemon(&ctx, |client| async move {
                client.hosts().list_hosts(pb::ListHostsRequest {}).await
            })
            .await;
        let hosts = match listed {
            Ok(reply) => reply.into_inner().hosts,
            Err(text) => return error_result(text),
        };
        let mismatch = self.config_note(&ctx).await;
        let result = HostsResult {
            hosts: hosts.into_iter().map(HostInfo::from).collect(),
            note: mismatch,
        };
        results::ok(result.text(), &result)
    }

    /// Run a shell command on a host; returns exit code, stdout, stderr.
    #[tool(output_schema = schema::<ExecResult>(), annotations(destructive_hint = true, open_world_hint = true))]
    async fn ssh_execute(
        &self,
        Parameters(p): Parameters<ExecuteParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let call = CommandCall {
            host: p.host,
            command: p.command,
            cwd: p.cwd,
            timeout: p.timeout,
            max_output: p.max_output,
            batch: None,
        };
        match self.run_command(&ctx, call).await {
            Ok(Ran {
                result,
                error: None,
            }) => results::ok(result.text(), &result),
            Ok(Ran {
                result,
                error: Some(error),
            }) => error_result(result.failure_text(&error)),
            Err(text) => error_result(text),
        }
    }

    /// Run commands in order on a host; stops at the first failure.
    #[tool(output_schema = schema::<BatchResult>(), annotations(destructive_hint = true, open_world_hint = true))]
    async fn ssh_execute_batch(
        &self,
        Parameters(p): Parameters<BatchParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        if p.commands.is_empty() {
            return error_result("commands must not be empty".into());
        }
        let mut items = Vec::new();
        let mut failed = false;
        let id = batch_id();
        let size = u32::try_from(p.commands.len()).unwrap_or(u32::MAX);
        for (index, command) in (0u32..).zip(&p.commands) {
            let batch = Some(pb::Batch {
                id: id.clone(),
                index,
                size,
            });
            if failed || ctx.ct.is_cancelled() {
                items.push(BatchItem::not_run(command));
                continue;
            }
            let call = CommandCall {
                host: p.host.clone(),
                command: command.clone(),
                cwd: None,
                timeout: p.timeout,
                max_output: None,
                batch,
            };
            let item = match self.run_command(&ctx, call).await {
                Ok(Ran { result, error }) => BatchItem::ran(command, result, error),
                Err(text) => BatchItem::failed_to_run(command, text),
            };
            failed = !item.succeeded();
            items.push(item);
        }
        let result = BatchResult::new(&p.host, items);
        if result.any_error() {
            error_result(result.text())
        } else {
            results::ok(result.text(), &result)
        }
    }

    /// Check a host is reachable (connects if needed); shows connection details.
    #[tool(output_schema = schema::<StatusResult>(), annotations(read_only_hint = true, open_world_hint = true))]
    async fn ssh_status(
        &self,
        Parameters(p): Parameters<HostParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let host = p.host.clone();
        let probed = self
            .with_daemon(&ctx, |client| {
                let host = host.clone();
                async move { client.hosts().probe(pb::ProbeRequest { host }).await }
            })
            .await;
        let note = self.config_note(&ctx).await;
        let result = match probed {
            Ok(reply) => StatusResult::reachable(reply.into_inner().host.unwrap_or_default(), note),
            // An unknown host name is a mistake to fix, not a status.
            Err(text) if text.starts_with("unknown host") => return error_result(text),
            Err(text) => StatusResult::unreachable(&p.host, text, note),
        };
        results::ok(result.text(), &result)
    }

    /// Close the SSH connection to a host (next call reconnects).
    #[tool(output_schema = schema::<DisconnectResult>(), annotations(idempotent_hint = true, destructive_hint = false, open_world_hint = false))]
    async fn ssh_disconnect(
        &self,
        Parameters(p): Parameters<HostParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let host = p.host.clone();
        let done = self
            .with_daemon(&ctx, |client| {
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

impl Shim {
    /// A note when the running daemon serves another hosts.json than this shim was given.
    async fn config_note(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        let client = self.client(ctx).await.ok()?;
        client.config_mismatch(self.link.config())
    }
}

#[tool_handler(
    router = self.tool_router,
    name = "mcp-ssh",
    instructions = "Run commands and check connections on the SSH hosts configured in hosts.json. Call list_hosts to see host names."
)]
impl ServerHandler for Shim {}

/// Drops schema keywords that cost context on every turn and tell a model nothing it needs
/// (`$schema`, integer `format`s, `minimum: 0` on counts, `default: null`,
/// `additionalProperties`); arguments are still validated in full (unknown ones refused) when
/// they are deserialized.
fn compact_schema(schema: &rmcp::model::JsonObject) -> rmcp::model::JsonObject {
    fn noise(key: &str, value: &serde_json::Value) -> bool {
        match key {
            "$schema" | "format" | "additionalProperties" => true,
            "minimum" => value.as_u64() == Some(0),
            "default" => value.is_null(),
            _ => false,
        }
    }
    fn walk(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => serde_json::Value::Object(
                map.iter()
                    .filter(|(k, v)| !noise(k, v))
                    .map(|(k, v)| (k.clone(), walk(v)))
                    .collect(),
            ),
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(walk).collect())
            }
            other => other.clone(),
        }
    }
    match walk(&serde_json::Value::Object(schema.clone())) {
        serde_json::Value::Object(map) => map,
        _ => schema.clone(),
    }
}

fn strip_keys(schema: &mut rmcp::model::JsonObject, keys: &[&str]) {
    fn walk(value: &mut serde_json::Value, keys: &[&str]) {
        match value {
            serde_json::Value::Object(map) => {
                for key in keys {
                    // A property may itself be named like a keyword; only drop keyword values.
                    if map.get(*key).is_some_and(|v| v.is_string() || v.is_array()) {
                        map.remove(*key);
                    }
                }
                map.values_mut().for_each(|v| walk(v, keys));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, keys)),
            _ => {}
        }
    }
    for key in keys {
        if schema
            .get(*key)
            .is_some_and(|v| v.is_string() || v.is_array())
        {
            schema.remove(*key);
        }
    }
    schema.values_mut().for_each(|v| walk(v, keys));
}

fn schema<T: JsonSchema + 'static>() -> Arc<rmcp::model::JsonObject> {
    rmcp::handler::server::common::schema_for_output::<T>()
}

/// Identifies one batch in the audit log: this shim's pid, the time, and a counter.
fn batch_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!(
        "{}-{now}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![rmcp::model::ContentBlock::text(text)])
}

fn status_text(status: &tonic::Status) -> String {
    if is_transport_failure(status) {
        return format!("lost the connection to mcp-sshd ({status}); retry the call");
    }
    status.message().to_string()
}

fn client_error_text(e: &ClientError) -> String {
    e.to_string()
}
