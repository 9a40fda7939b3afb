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
use rmcp::model::{
    CallToolResult, Implementation, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

pub use link::DaemonLink;
use link::is_transport_failure;
use output::CappedBuffer;
use results::{
    BatchItem, BatchResult, DisconnectResult, ExecResult, HostInfo, HostsResult, StatusResult,
    TransferResult,
};

use crate::client::{ClientError, DaemonClient, resolve_local_path};

/// Hard ceiling on the per-call `max_output` override, per stream.
const HARD_MAX_OUTPUT: u32 = 1024 * 1024;
/// Progress heartbeat interval: clients reset their own timeouts on it.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long `tools/list` waits for the daemon to name the hosts (it starts the daemon when
/// none runs, ~0.1 s); without an answer the tools are listed without host names.
const HOST_NAMES_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostParams {
    pub host: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteParams {
    pub host: String,
    pub command: String,
    /// Seconds without output before stopping
    #[serde(default)]
    pub timeout: Option<u32>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes kept per stream
    #[serde(default)]
    pub max_output: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchParams {
    pub host: String,
    pub commands: Vec<String>,
    /// Seconds without output before stopping
    #[serde(default)]
    pub timeout: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    pub host: String,
    /// Local path (relative: to the client's cwd)
    pub local_path: String,
    /// Destination (a directory gets it by name)
    pub remote_path: String,
    /// Check SHA-256 on the host too
    #[serde(default)]
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    pub host: String,
    pub remote_path: String,
    /// Destination (relative: to the client's cwd; a directory gets it by name)
    pub local_path: String,
    /// Check SHA-256 on the host too
    #[serde(default)]
    pub verify: Option<bool>,
}

#[derive(Clone)]
pub struct Shim {
    tool_router: ToolRouter<Shim>,
    link: Arc<DaemonLink>,
    /// Host names in the last `tools/list` answer or list-changed notification.
    announced: Arc<std::sync::Mutex<Option<Vec<String>>>>,
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
            let mut input = compact_schema(&route.attr.input_schema);
            drop_null_unions(&mut input);
            route.attr.input_schema = Arc::new(input);
            if let Some(out) = &route.attr.output_schema {
                // Results explain themselves; their schema only needs the shape.
                let mut shape = compact_schema(out);
                strip_keys(&mut shape, &["description", "required"]);
                drop_leaf_types(&mut shape);
                route.attr.output_schema = Some(Arc::new(shape));
            }
        }
        Shim {
            tool_router,
            link: Arc::new(DaemonLink::new(socket, config)),
            announced: Arc::default(),
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
        // A reload may have changed it since the handshake.
        let reloaded = self
            .link
            .watch_config()
            .borrow()
            .as_ref()
            .map(|view| view.max_output_bytes);
        Ok(match reloaded.unwrap_or(client.hello.max_output_bytes) {
            0 => 32 * 1024,
            n => n,
        })
    }

    /// The configured host names, connecting to (or starting) the daemon if needed, within
    /// [`HOST_NAMES_WAIT`]; `None` when the daemon cannot tell them in time.
    async fn host_names(&self, ctx: &RequestContext<RoleServer>) -> Option<Vec<String>> {
        let ask = async {
            self.client(ctx).await.ok()?;
            let mut view = self.link.watch_config();
            view.wait_for(Option::is_some)
                .await
                .ok()?
                .as_ref()
                .map(|v| v.host_names.clone())
        };
        tokio::time::timeout(HOST_NAMES_WAIT, ask)
            .await
            .ok()
            .flatten()
    }
}

#[tool_router]
impl Shim {
    /// List configured SSH hosts and their state.
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

    /// Run a shell command on a host.
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

    /// Run commands in order; stops at the first failure.
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

    /// Upload a file or directory (atomic).
    #[tool(output_schema = schema::<TransferResult>(), annotations(destructive_hint = true, open_world_hint = true))]
    async fn ssh_upload(
        &self,
        Parameters(p): Parameters<UploadParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let verify = p.verify.unwrap_or(false);
        self.run_transfer(
            &ctx,
            true,
            pb::TransferRequest {
                host: p.host,
                local_path: p.local_path,
                remote_path: p.remote_path,
                verify,
            },
        )
        .await
    }

    /// Download a file or directory (atomic).
    #[tool(output_schema = schema::<TransferResult>(), annotations(destructive_hint = true, open_world_hint = true))]
    async fn ssh_download(
        &self,
        Parameters(p): Parameters<DownloadParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let verify = p.verify.unwrap_or(false);
        self.run_transfer(
            &ctx,
            false,
            pb::TransferRequest {
                host: p.host,
                local_path: p.local_path,
                remote_path: p.remote_path,
                verify,
            },
        )
        .await
    }

    /// Check a host is reachable (connects if needed).
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

    /// Close the SSH connection to a host.
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
    /// Runs a transfer through the daemon, turning its progress into MCP progress notifications.
    async fn run_transfer(
        &self,
        ctx: &RequestContext<RoleServer>,
        upload: bool,
        mut request: pb::TransferRequest,
    ) -> CallToolResult {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        request.local_path = resolve_local_path(&request.local_path, &cwd)
            .display()
            .to_string();
        let verify = request.verify;
        let started = self
            .with_daemon(ctx, |client| {
                let request = request.clone();
                async move {
                    let mut files = client.files();
                    let stream = if upload {
                        files.upload(request).await
                    } else {
                        files.download(request).await
                    };
                    stream.map(tonic::Response::into_inner)
                }
            })
            .await;
        let mut stream = match started {
            Ok(stream) => stream,
            Err(text) => return error_result(text),
        };
        let token = ctx.meta.get_progress_token();
        let mut last = pb::TransferProgress::default();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        loop {
            let event = tokio::select! {
                message = stream.message() => message,
                _ = ticker.tick(), if token.is_some() => {
                    if let Some(token) = token.clone() {
                        let _ = ctx.peer.notify_progress(transfer_progress(token, &last)).await;
                    }
                    continue;
                }
                () = ctx.ct.cancelled() => {
                    drop(stream);
                    return error_result("cancelled by the client; the transfer was stopped and its temporary file removed".into());
                }
            };
            match event {
                Ok(Some(pb::TransferEvent {
                    event: Some(pb::transfer_event::Event::Progress(p)),
                })) => last = p,
                Ok(Some(pb::TransferEvent {
                    event: Some(pb::transfer_event::Event::Done(done)),
                })) => {
                    let result = TransferResult::new(done, verify);
                    let text = result.text(if upload { "uploaded" } else { "downloaded" });
                    return if result.verified == Some(false) {
                        error_result(text)
                    } else {
                        results::ok(text, &result)
                    };
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return error_result("the daemon ended the transfer without a result".into());
                }
                Err(status) => return error_result(status_text(&status)),
            }
        }
    }

    /// A note when the running daemon serves another hosts.json than this shim was given.
    async fn config_note(&self, ctx: &RequestContext<RoleServer>) -> Option<String> {
        let client = self.client(ctx).await.ok()?;
        client.config_mismatch(self.link.config())
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Shim {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("mcp-ssh", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Run commands and move files on the SSH hosts configured in hosts.json. \
             Call list_hosts to see host names and their state."
                .to_string(),
        )
    }

    /// The tools, with the configured host names in `ssh_execute`'s description when the
    /// daemon can tell them; `notifications/tools/list_changed` follows when they change.
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let names = self.host_names(&context).await;
        let mut tools = self.tool_router.list_all();
        if let Some(names) = &names
            && let Some(tool) = tools.iter_mut().find(|t| t.name == "ssh_execute")
        {
            let base = tool.description.as_deref().unwrap_or_default();
            tool.description = Some(format!("{base} {}", hosts_sentence(names)).into());
        }
        *lock(&self.announced) = names;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut changes = self.link.watch_config();
        let announced = self.announced.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let names = changes
                    .borrow_and_update()
                    .as_ref()
                    .map(|view| view.host_names.clone());
                let Some(names) = names else { continue };
                if lock(&announced).replace(names.clone()) == Some(names) {
                    continue;
                }
                tracing::info!("the daemon's hosts changed; telling the client");
                if context.peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// "Hosts: a, b, c." — at most 20 names, so a long hosts.json cannot bloat every turn.
fn hosts_sentence(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return "No hosts are configured.".into();
    }
    let mut text = format!("Hosts: {}", names[..names.len().min(SHOWN)].join(", "));
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more (list_hosts)", names.len() - SHOWN));
    }
    text.push('.');
    text
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// `["integer", "null"]` → `"integer"` for optional arguments: leaving one out is how to say
/// "default" (an explicit null is still accepted).
fn drop_null_unions(schema: &mut rmcp::model::JsonObject) {
    fn walk(value: &mut serde_json::Value, key: &str) {
        let serde_json::Value::Object(map) = value else {
            return;
        };
        if key != "exit_code"
            && let Some(serde_json::Value::Array(types)) = map.get("type")
            && types.len() == 2
            && types.iter().any(|t| t == "null")
            && let Some(kept) = types.iter().find(|t| *t != "null").cloned()
        {
            map.insert("type".into(), kept);
        }
        for (k, v) in map.iter_mut() {
            walk(v, k);
        }
    }
    for (k, v) in schema.iter_mut() {
        walk(v, k);
    }
}

/// Output schemas keep the shape (objects, arrays, property names) and leave out the scalar type
/// of each field: a result's JSON says that itself, and tools/list is sent on every turn.
fn drop_leaf_types(schema: &mut rmcp::model::JsonObject) {
    fn is_leaf(map: &serde_json::Map<String, serde_json::Value>) -> bool {
        let scalar = |t: &serde_json::Value| {
            matches!(
                t.as_str(),
                Some("string" | "integer" | "number" | "boolean" | "null")
            )
        };
        match map.get("type") {
            Some(serde_json::Value::Array(types)) => types.iter().all(scalar),
            Some(t) => scalar(t),
            None => false,
        }
    }
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if is_leaf(map) {
                    map.remove("type");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    schema.values_mut().for_each(walk);
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

fn transfer_progress(
    token: rmcp::model::ProgressToken,
    p: &pb::TransferProgress,
) -> ProgressNotificationParam {
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let message = format!(
        "{:.1} of {:.1} MiB, {} of {} files",
        mib(p.bytes_done),
        mib(p.bytes_total),
        p.files_done,
        p.files_total
    );
    ProgressNotificationParam::new(token, p.bytes_done as f64)
        .with_total(p.bytes_total as f64)
        .with_message(message)
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
