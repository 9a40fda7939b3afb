//! MCP tasks (the `io.modelcontextprotocol/tasks` extension, protocol 2026-07-28) from rmcp's
//! client: a `tools/call` that declares the extension in its own `_meta` (as a 2026-07-28 client
//! does per request), `tasks/get` and `tasks/cancel`, and a shim driven by a client that speaks
//! 2026-07-28 from the start (`server/discover`, every request carrying its capabilities).

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, CancelTaskRequest,
    ClientCapabilities, ClientConfig, ClientRequest, GetTaskParams, GetTaskRequest, GetTaskResult,
    Implementation, ProtocolVersion, Request, RequestMetaObject, ServerResult,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, PeerRequestOptions, RequestHandle, RunningService,
    ServiceError,
};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, Peer, RoleClient};

use crate::bins::bin;

/// Request options whose `_meta` declares the tasks extension for this one request.
pub fn declaring_tasks() -> PeerRequestOptions {
    let mut meta = RequestMetaObject::new();
    meta.set_client_capabilities(ClientCapabilities::builder().enable_tasks().build());
    PeerRequestOptions::no_options().with_meta(meta)
}

/// `tools/call` declaring the tasks extension: the final result, or the task created for it.
pub async fn call_as_task(
    peer: &Peer<RoleClient>,
    tool: &str,
    args: serde_json::Value,
) -> CallToolResponse {
    let serde_json::Value::Object(arguments) = args else {
        panic!("arguments must be an object")
    };
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    let response = peer
        .send_request_with_option(
            ClientRequest::CallToolRequest(Request::new(params)),
            declaring_tasks(),
        )
        .await
        .expect("cannot send tools/call")
        .await_response()
        .await
        .unwrap_or_else(|e| panic!("tools/call {tool} failed at the protocol level: {e}"));
    match response {
        ServerResult::CallToolResult(result) => CallToolResponse::Complete(result),
        ServerResult::CreateTaskResult(task) => CallToolResponse::Task(task),
        other => panic!("tools/call {tool}: unexpected answer {other:?}"),
    }
}

/// `tasks/get`, declaring the extension in the request.
pub async fn get_task(peer: &Peer<RoleClient>, id: &str) -> Result<GetTaskResult, ServiceError> {
    let request = ClientRequest::GetTaskRequest(GetTaskRequest::new(GetTaskParams::new(id)));
    match peer
        .send_request_with_option(request, declaring_tasks())
        .await?
        .await_response()
        .await?
    {
        ServerResult::GetTaskResult(result) => Ok(result),
        _ => Err(ServiceError::UnexpectedResponse),
    }
}

/// `tasks/cancel`, declaring the extension in the request.
pub async fn cancel_task(peer: &Peer<RoleClient>, id: &str) -> Result<(), ServiceError> {
    let request =
        ClientRequest::CancelTaskRequest(CancelTaskRequest::new(CancelTaskParams::new(id)));
    match peer
        .send_request_with_option(request, declaring_tasks())
        .await?
        .await_response()
        .await?
    {
        ServerResult::TaskAckResult(_) | ServerResult::EmptyResult(_) => Ok(()),
        _ => Err(ServiceError::UnexpectedResponse),
    }
}

/// A client that speaks protocol 2026-07-28 and declares the tasks extension (in every request,
/// as that protocol carries capabilities per request).
#[derive(Clone)]
pub struct TasksClient {
    name: String,
}

impl ClientHandler for TasksClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_tasks().build(),
            Implementation::new(self.name.clone(), "2.0.0"),
        )
    }
}

/// Spawns `mcp-ssh-shim` for `daemon` and opens a 2026-07-28 session with it (`server/discover`,
/// no `initialize`), as a client named `client_name` that declares the tasks extension.
pub async fn spawn_discovering(
    daemon: &crate::daemon::Daemon,
    client_name: &str,
) -> RunningService<RoleClient, TasksClient> {
    let mut command = tokio::process::Command::new(bin("mcp-ssh-shim"));
    command
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--config")
        .arg(&daemon.config)
        .arg("--log-file")
        .arg(daemon.dir.path().join(format!("shim-{client_name}.log")))
        .env_remove("MCP_SSH_SOCKET")
        .env_remove("MCP_SSH_CONFIG");
    let transport = TokioChildProcess::new(command).expect("cannot spawn mcp-ssh-shim");
    let client = TasksClient {
        name: client_name.to_string(),
    };
    client
        .serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("server/discover with the shim failed")
}

/// Starts a `tools/call` declaring the tasks extension that can be cancelled
/// (`notifications/cancelled`) before it is answered.
pub async fn start_call_as_task(
    peer: &Peer<RoleClient>,
    tool: &str,
    args: serde_json::Value,
) -> RequestHandle<RoleClient> {
    let serde_json::Value::Object(arguments) = args else {
        panic!("arguments must be an object")
    };
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    peer.send_cancellable_request(
        ClientRequest::CallToolRequest(Request::new(params)),
        declaring_tasks(),
    )
    .await
    .expect("cannot send tools/call")
}
