//! `ssh_execute` and `ssh_execute_batch`: one command (or a few in order) run through the
//! daemon's `Exec.Run`, with bounded output and progress heartbeats. An `ssh_execute` whose
//! request declares the MCP tasks extension runs as a job instead (`mcp/tasks.rs`).

use std::time::Instant;

use mcp_ssh_proto::pb::{self, run_event};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResponse, CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mcp::output::CappedBuffer;
use crate::mcp::results::{self, BatchItem, BatchResult, ExecResult};
use crate::mcp::schema::output_schema;
use crate::mcp::{Call, PROGRESS_EVERY, Shim, error_result, output_limit, status_text};

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
    #[schemars(range(min = 1024, max = 1048576))]
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
    /// Runs one command through the daemon, collecting bounded output and sending progress
    /// heartbeats; cancellation drops the call, which stops the remote command.
    async fn run_command(
        &self,
        ctx: &RequestContext<RoleServer>,
        call: CommandCall,
    ) -> Result<Ran, String> {
        let (limit, limit_note) = match call.max_output {
            Some(asked) => output_limit(asked),
            None => (self.default_output_limit(ctx).await?, None),
        };
        let limit = limit as usize;
        let host = call.host;
        let request = pb::RunRequest {
            host: host.clone(),
            command: call.command,
            cwd: call.cwd.unwrap_or_default(),
            timeout_secs: call.timeout.unwrap_or(0),
            batch: call.batch,
        };
        let mut stream = self
            .with_daemon(ctx, Call::Command(&host), |client| {
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
                        failure = Some(status_text(&status, Call::Command(&host)));
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
        let mut result = ExecResult::new(
            exit.as_ref(),
            started.elapsed(),
            stdout.finish(),
            stderr.finish(),
        );
        result.note = limit_note;
        Ok(Ran {
            result,
            error: failure,
        })
    }
}

#[tool_router(router = exec_router, vis = "pub(super)")]
impl Shim {
    /// Run a shell command on a host.
    #[tool(output_schema = output_schema::<ExecResult>())]
    async fn ssh_execute(
        &self,
        Parameters(p): Parameters<ExecuteParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        if Shim::tasks_declared(&ctx)
            && let Some(response) = self.execute_as_task(&p, &ctx).await
        {
            return response;
        }
        let call = CommandCall {
            host: p.host,
            command: p.command,
            cwd: p.cwd,
            timeout: p.timeout,
            max_output: p.max_output,
            batch: None,
        };
        let result: CallToolResult = match self.run_command(&ctx, call).await {
            Ok(Ran {
                result,
                error: None,
            }) => results::ok(result.text(), &result),
            Ok(Ran {
                result,
                error: Some(error),
            }) => error_result(result.failure_text(&error)),
            Err(text) => error_result(text),
        };
        result.into()
    }

    /// Run commands in order; stops at the first failure.
    #[tool(output_schema = output_schema::<BatchResult>())]
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
