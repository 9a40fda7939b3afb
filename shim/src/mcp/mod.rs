//! The MCP server of `mcp-ssh-shim`: the tools (in `tools/`), each a thin translation of one or
//! a few daemon calls, and MCP tasks (`tasks.rs`). Tool failures (unreachable host, refused,
//! timed out) are tool results with `isError: true` and an actionable message; JSON-RPC errors
//! are left to rmcp for malformed requests.

mod arguments;
mod link;
pub mod output;
pub mod results;
mod schema;
pub mod stdio;
mod tasks;
mod tools;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, GetTaskParams,
    GetTaskResult, Implementation, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};

pub use link::DaemonLink;
use link::{is_transport_failure, never_sent};

use crate::client::{ClientError, DaemonClient};

/// Hard ceiling on the per-call `max_output` override, per stream.
pub(crate) const HARD_MAX_OUTPUT: u32 = 1024 * 1024;
/// Progress heartbeat interval: clients reset their own timeouts on it.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long `tools/list` waits for the daemon to name the hosts (it starts the daemon when
/// none runs, ~0.1 s); without an answer the tools are listed without host names.
const HOST_NAMES_WAIT: Duration = Duration::from_secs(3);
/// The least `max_output` a call may ask for, per stream; a smaller value is raised to it.
pub(crate) const MIN_OUTPUT: u32 = 1024;

/// What a call does to the hosts, for saying what it means when the daemon is lost during it
/// (and whether the shim may send it again to a new daemon). mcp-sshctl words its failures
/// with it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call<'a> {
    /// Only reads state (`list_hosts`, `ssh_status`): calling again is safe.
    Read,
    /// Changes nothing more when repeated (`ssh_disconnect`).
    Idempotent,
    /// Runs a command on this host: once the daemon had it, it may have run.
    Command(&'a str),
    /// Moves files to (`upload`) or from this host.
    Transfer { host: &'a str, upload: bool },
    /// Any other call, whose effect is not known here.
    Unknown,
}

impl Call<'_> {
    /// Whether sending the call again cannot do anything twice.
    fn repeatable(self) -> bool {
        matches!(self, Call::Read | Call::Idempotent)
    }
}

/// What the client was last told about the host names in `ssh_execute`'s description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Announced {
    /// No `tools/list` answered yet: there is nothing to announce, the first answer is current.
    #[default]
    Nothing,
    /// The names of the last `tools/list` answer or list-changed notification (`None`: the
    /// tools were listed without names, the daemon did not tell them in time).
    Names(Option<Vec<String>>),
}

#[derive(Clone)]
pub struct Shim {
    tool_router: ToolRouter<Shim>,
    link: Arc<DaemonLink>,
    /// What the client was told about the host names; `tools/list` and the watcher of
    /// configuration changes read the daemon's view and update this under its lock, so a change
    /// is announced only when it differs from what the client has.
    announced: Arc<std::sync::Mutex<Announced>>,
}

impl Shim {
    pub fn new(socket: Option<PathBuf>, config: Option<PathBuf>) -> Shim {
        let mut tool_router = tools::router();
        schema::compact_router(&mut tool_router);
        Shim {
            tool_router,
            link: Arc::new(DaemonLink::new(socket, config)),
            announced: Arc::default(),
        }
    }

    async fn client(&self, ctx: &RequestContext<RoleServer>) -> Result<DaemonClient, String> {
        // Per request under protocol 2026-07-28, from `initialize` before it.
        let (name, version) = ctx
            .client_info()
            .map(|info| (info.name, info.version))
            .unwrap_or_else(|| ("unknown MCP client".into(), String::new()));
        self.link
            .get(&name, &version)
            .await
            .map_err(|e| client_error_text(&e))
    }

    /// Calls `f` with the daemon client; if the daemon turned out to be gone, reconnects
    /// (restarting it) and sends the call once more when that cannot do anything twice: `call`
    /// only reads or is idempotent, or no daemon can have received it. Failures in words.
    async fn with_daemon<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        call: Call<'_>,
        f: F,
    ) -> Result<T, String>
    where
        F: Fn(DaemonClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_daemon_once_more(ctx, call.repeatable(), f)
            .await
            .map_err(|e| e.map_or_else(|text| text, |status| status_text(&status, call)))
    }

    /// [`Shim::with_daemon`] for calls that only read or are idempotent (sent again to a new
    /// daemon after any transport failure), keeping the daemon's status (`Err(Ok)`) apart from
    /// failures to reach it (`Err(Err)`, in words).
    async fn with_daemon_status<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        f: F,
    ) -> Result<T, Result<tonic::Status, String>>
    where
        F: Fn(DaemonClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.with_daemon_once_more(ctx, true, f).await
    }

    /// Sends the call; after a transport failure, reconnects and sends it once more if
    /// `repeatable` or nothing can have received it (invariant 5).
    async fn with_daemon_once_more<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        repeatable: bool,
        f: F,
    ) -> Result<T, Result<tonic::Status, String>>
    where
        F: Fn(DaemonClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let client = self.client(ctx).await.map_err(Err)?;
        match f(client).await {
            Err(status) if is_transport_failure(&status) => {
                tracing::warn!("lost the daemon ({}); reconnecting", status.message());
                self.link.reset().await;
                if !repeatable && !never_sent(&status) {
                    return Err(Ok(status));
                }
                let client = self.client(ctx).await.map_err(Err)?;
                f(client).await.map_err(Ok)
            }
            other => other.map_err(Ok),
        }
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

    /// Waits until the daemon has told the configured host names, connecting to (or starting)
    /// it if needed, within [`HOST_NAMES_WAIT`].
    async fn wait_for_host_names(&self, ctx: &RequestContext<RoleServer>) {
        let ask = async {
            self.client(ctx).await.ok()?;
            let mut view = self.link.watch_config();
            view.wait_for(Option::is_some).await.ok().map(drop)
        };
        let _ = tokio::time::timeout(HOST_NAMES_WAIT, ask).await;
    }

    /// The host names as the daemon last told them (`None` before it did).
    fn current_host_names(&self) -> Option<Vec<String>> {
        self.link
            .watch_config()
            .borrow()
            .as_ref()
            .map(|view| view.host_names.clone())
    }
}

impl Shim {
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
                .enable_tasks()
                .build(),
        )
        .with_server_info(Implementation::new("mcp-ssh", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Run commands and move files on the SSH hosts configured in hosts.json. \
             Call list_hosts to see host names and their state. Start commands that may run \
             for minutes or more with ssh_job_start."
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
        self.wait_for_host_names(&context).await;
        let names = {
            // Read and recorded under the lock the change watcher takes: a change is announced
            // only if it is not in this answer.
            let mut announced = lock(&self.announced);
            let names = self.current_host_names();
            *announced = Announced::Names(names.clone());
            names
        };
        Ok(ListToolsResult::with_all_items(
            self.tools(names.as_deref()),
        ))
    }

    /// `tools/call` through the router, with plain words for what rmcp reports in serde's
    /// terms: an unknown tool, arguments that do not fit the tool (`arguments.rs`).
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let Some(tool) = self.tool_router.get(&request.name).cloned() else {
            return Err(ErrorData::invalid_params(
                arguments::unknown_tool_text(&request.name, &self.tool_router.list_all()),
                None,
            ));
        };
        let given = request.arguments.clone();
        let response = self
            .tool_router
            .call(ToolCallContext::new(self, request, context))
            .await?;
        Ok(arguments::explain(&tool, given.as_ref(), response))
    }

    /// `tasks/get`: the task is a job; the daemon knows its state (see `tasks.rs`).
    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        self.get_job_task(&request.task_id, &context).await
    }

    /// `tasks/cancel`: kills the job.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.cancel_job_task(&request.task_id, &context).await
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut changes = self.link.watch_config();
        let announced = self.announced.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                {
                    let mut told = lock(&announced);
                    let names = changes
                        .borrow_and_update()
                        .as_ref()
                        .map(|view| view.host_names.clone());
                    let Some(names) = names else { continue };
                    match &*told {
                        // Not listed yet: the first tools/list will have these names.
                        Announced::Nothing => continue,
                        Announced::Names(Some(old)) if *old == names => continue,
                        Announced::Names(_) => *told = Announced::Names(Some(names)),
                    }
                }
                tracing::info!("the daemon's hosts changed; telling the client");
                if context.peer.notify_tool_list_changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Shim {
    /// The tools as `tools/list` gives them, `ssh_execute`'s description ending with the host
    /// names when they are known.
    fn tools(&self, host_names: Option<&[String]>) -> Vec<Tool> {
        let mut tools = self.tool_router.list_all();
        if let Some(names) = host_names
            && let Some(tool) = tools.iter_mut().find(|t| t.name == "ssh_execute")
        {
            let base = tool.description.as_deref().unwrap_or_default();
            tool.description = Some(format!("{base} {}", hosts_sentence(names)).into());
        }
        tools
    }
}

/// "Hosts: a, b, c." — at most 20 names and about 120 bytes of them, so a long hosts.json
/// cannot bloat every turn.
fn hosts_sentence(names: &[String]) -> String {
    const SHOWN: usize = 20;
    const BYTES: usize = 120;
    if names.is_empty() {
        return "No hosts are configured.".into();
    }
    let mut shown = Vec::new();
    let mut bytes = 0;
    for name in names.iter().take(SHOWN) {
        if !shown.is_empty() && bytes + name.len() > BYTES {
            break;
        }
        bytes += name.len() + 2;
        shown.push(name.as_str());
    }
    let mut text = format!("Hosts: {}", shown.join(", "));
    if names.len() > shown.len() {
        text.push_str(&format!(
            " and {} more (list_hosts)",
            names.len() - shown.len()
        ));
    }
    text.push('.');
    text
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn error_result(text: String) -> CallToolResult {
    CallToolResult::error(vec![rmcp::model::ContentBlock::text(text)])
}

/// A failed daemon call in words: the daemon's own message, or, when the daemon itself was lost,
/// what that means for this `call` (never the transport's internals).
pub fn status_text(status: &tonic::Status, call: Call<'_>) -> String {
    if is_transport_failure(status) {
        tracing::warn!("lost mcp-sshd during a call: {}", status.message());
        return lost_daemon_text(never_sent(status), call);
    }
    status.message().to_string()
}

/// What a daemon lost during `call` means, and what to do: a command that may have run is to be
/// checked, not run again blindly. `never_sent`: nothing listened, so nothing was done.
fn lost_daemon_text(never_sent: bool, call: Call<'_>) -> String {
    const NEXT: &str = "the next call starts a new mcp-sshd";
    if never_sent {
        return format!(
            "the call did not reach mcp-sshd (nothing listens on its socket), so nothing was done; \
             {NEXT}"
        );
    }
    match call {
        Call::Unknown => format!(
            "mcp-sshd stopped during the call, so whether it took effect is unknown: check \
             before doing it again; {NEXT}"
        ),
        Call::Read | Call::Idempotent => format!(
            "mcp-sshd stopped during the call, so it has no result; calling it again is safe \
             ({NEXT})"
        ),
        Call::Command(host) => format!(
            "mcp-sshd stopped during the call, so its result is lost: the command may or may not \
             have run on {host}, and may still be running there. Check on {host} whether it ran \
             (its effects, or its processes) before running it again; {NEXT}."
        ),
        Call::Transfer { host, upload } => {
            let (what, destination) = if upload {
                ("upload to", format!("the destination on {host}"))
            } else {
                ("download from", "the local destination".to_string())
            };
            format!(
                "mcp-sshd stopped during the {what} {host}, so its result is lost: each file of \
                 {destination} is either complete or as it was before (files are replaced whole), \
                 and a large file cut off keeps its part, so the same transfer asked again \
                 resumes it; {NEXT}."
            )
        }
    }
}

/// The per-stream output limit for a call's `max_output`: within [`MIN_OUTPUT`] and
/// [`HARD_MAX_OUTPUT`], with a note for the result when the value asked for was changed.
pub(crate) fn output_limit(asked: u32) -> (u32, Option<String>) {
    let note = if asked < MIN_OUTPUT {
        Some(format!(
            "max_output {asked} is below the minimum: {MIN_OUTPUT} bytes per stream were kept"
        ))
    } else if asked > HARD_MAX_OUTPUT {
        Some(format!(
            "max_output {asked} is above the maximum: {HARD_MAX_OUTPUT} bytes per stream were kept"
        ))
    } else {
        None
    };
    (asked.clamp(MIN_OUTPUT, HARD_MAX_OUTPUT), note)
}

fn client_error_text(e: &ClientError) -> String {
    match e {
        // The handshake itself failed: the daemon's words, or the daemon lost in words.
        ClientError::Rpc(status) => status_text(status, Call::Unknown),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(kind: std::io::ErrorKind) -> tonic::Status {
        tonic::Status::from_error(Box::new(std::io::Error::new(kind, "h2 protocol error")))
    }

    #[test]
    fn a_daemon_lost_during_a_call_is_said_in_words_for_what_the_call_does() {
        let status = lost(std::io::ErrorKind::BrokenPipe);
        let command = status_text(&status, Call::Command("gpu"));
        assert!(
            command.contains("the command may or may not have run on gpu"),
            "{command}"
        );
        assert!(command.contains("Check on gpu"), "{command}");
        let read = status_text(&status, Call::Read);
        assert!(read.contains("calling it again is safe"), "{read}");
        let upload = status_text(
            &status,
            Call::Transfer {
                host: "gpu",
                upload: true,
            },
        );
        assert!(upload.contains("upload to gpu"), "{upload}");
        let refused = status_text(&lost(std::io::ErrorKind::ConnectionRefused), Call::Unknown);
        assert!(refused.contains("nothing was done"), "{refused}");
        for text in [
            command,
            read,
            upload,
            refused,
            status_text(&status, Call::Unknown),
        ] {
            assert!(!text.to_lowercase().contains("retry"), "{text}");
            for internal in ["h2 ", "code:", "source:", "Custom", "Kind("] {
                assert!(!text.contains(internal), "{internal}: {text}");
            }
        }
        // The daemon's own statuses are its words.
        let own = tonic::Status::not_found("unknown host \"x\"");
        assert_eq!(status_text(&own, Call::Command("x")), "unknown host \"x\"");
    }

    #[test]
    fn max_output_outside_its_range_is_changed_and_said() {
        assert_eq!(output_limit(4096), (4096, None));
        let (limit, note) = output_limit(10);
        assert_eq!(limit, MIN_OUTPUT);
        assert!(note.unwrap().contains("below the minimum"));
        let (limit, note) = output_limit(u32::MAX);
        assert_eq!(limit, HARD_MAX_OUTPUT);
        assert!(note.unwrap().contains("above the maximum"));
    }
}
