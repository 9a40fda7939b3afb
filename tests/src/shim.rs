//! The real `mcp-ssh-shim` binary driven by a real MCP client (rmcp's), over stdio.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    Implementation, ProgressNotificationParam, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RequestHandle, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};

use crate::bins::bin;

/// A plain MCP client that records progress notifications.
#[derive(Clone)]
pub struct TestClient {
    name: String,
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    /// How many `notifications/tools/list_changed` arrived.
    pub tools_changed: Arc<std::sync::atomic::AtomicUsize>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(self.name.clone(), "1.2.3"),
        )
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _ctx: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params);
    }

    async fn on_tool_list_changed(&self, _ctx: NotificationContext<RoleClient>) {
        self.tools_changed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Shim {
    pub service: RunningService<RoleClient, TestClient>,
    pub progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
    pub tools_changed: Arc<std::sync::atomic::AtomicUsize>,
}

/// How to start a shim.
pub struct ShimOptions<'a> {
    pub socket: &'a Path,
    pub config: Option<&'a Path>,
    pub cwd: Option<&'a Path>,
    pub client_name: &'a str,
}

impl Shim {
    /// Spawns `mcp-ssh-shim --socket SOCKET [--config CONFIG]` and completes the MCP handshake.
    pub async fn spawn(opts: ShimOptions<'_>) -> Shim {
        let mut command = tokio::process::Command::new(bin("mcp-ssh-shim"));
        command.arg("--socket").arg(opts.socket);
        if let Some(config) = opts.config {
            command.arg("--config").arg(config);
        }
        if let Some(cwd) = opts.cwd {
            command.current_dir(cwd);
        }
        // Keep test output readable: the shim's log goes next to the socket directory.
        let log = opts
            .socket
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/tmp"))
            .join(format!("shim-{}.log", opts.client_name));
        command.arg("--log-file").arg(log);
        command
            .env_remove("MCP_SSH_SOCKET")
            .env_remove("MCP_SSH_CONFIG");
        Shim::spawn_command(command, opts.client_name).await
    }

    /// A shim for `daemon` (its socket and hosts.json), as an MCP client named `client_name`.
    pub async fn attach(daemon: &crate::daemon::Daemon, client_name: &str) -> Shim {
        Shim::spawn(ShimOptions {
            socket: &daemon.socket,
            config: Some(&daemon.config),
            cwd: None,
            client_name,
        })
        .await
    }

    /// Runs a prepared shim command (another binary location, another environment).
    pub async fn spawn_command(command: tokio::process::Command, client_name: &str) -> Shim {
        let transport = TokioChildProcess::new(command).expect("cannot spawn mcp-ssh-shim");
        let progress = Arc::new(Mutex::new(Vec::new()));
        let tools_changed = Arc::default();
        let client = TestClient {
            name: client_name.to_string(),
            progress: progress.clone(),
            tools_changed: Arc::clone(&tools_changed),
        };
        let service = client
            .serve(transport)
            .await
            .expect("MCP initialize with the shim failed");
        Shim {
            service,
            progress,
            tools_changed,
        }
    }

    pub async fn call(&self, tool: &str, args: serde_json::Value) -> CallToolResult {
        let serde_json::Value::Object(arguments) = args else {
            panic!("arguments must be an object")
        };
        self.service
            .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
            .await
            .unwrap_or_else(|e| panic!("tools/call {tool} failed at the protocol level: {e}"))
    }

    /// Starts a call that carries a progress token and can be cancelled.
    pub async fn start_call(
        &self,
        tool: &str,
        args: serde_json::Value,
    ) -> RequestHandle<RoleClient> {
        let serde_json::Value::Object(arguments) = args else {
            panic!("arguments must be an object")
        };
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        self.service
            .send_cancellable_request(
                ClientRequest::CallToolRequest(Request::new(params)),
                PeerRequestOptions::no_options(),
            )
            .await
            .expect("cannot send tools/call")
    }
}

/// The structured content of a tool result (`null` when it has none).
pub fn structured(result: &CallToolResult) -> serde_json::Value {
    result
        .structured_content
        .clone()
        .unwrap_or(serde_json::Value::Null)
}

/// The text of a tool result.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn is_error(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
}

/// The tool result inside a generic server response.
pub fn tool_result(response: ServerResult) -> CallToolResult {
    match response {
        ServerResult::CallToolResult(result) => result,
        other => panic!("expected a tool result, got {other:?}"),
    }
}
