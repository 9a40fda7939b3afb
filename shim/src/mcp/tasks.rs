//! MCP tasks (the `io.modelcontextprotocol/tasks` extension of protocol 2026-07-28, which rmcp
//! implements): an `ssh_execute` whose request declares the extension runs as a job. When the
//! job ends within [`TASK_WAIT`] the call gets the usual `ssh_execute` result; otherwise it
//! gets a task whose id **is** the job id.
//!
//! The shim keeps no task state: `tasks/get` asks the daemon about the job (Jobs.Output, no
//! wait) and `tasks/cancel` kills it (Jobs.Kill), so a new shim (the client restarted) answers
//! for tasks its predecessor created. The TTL is the daemon's `job_retention` (finished jobs are
//! kept that long), never rmcp's `TaskManager` default of 5 minutes, which would fail long jobs.
//!
//! Status mapping: running → `working` (status message: the last output line); exited →
//! `completed` with what a synchronous `ssh_execute` would have returned; lost → `completed`
//! with that call's error result (`isError`, as the synchronous call would give; the spec keeps
//! `failed` for JSON-RPC errors); killed → `cancelled`; a state this shim does not know →
//! `failed`.

use std::time::Duration;

use mcp_ssh_proto::pb;
use rmcp::ErrorData;
use rmcp::RoleServer;
use rmcp::model::{
    CallToolResponse, CreateTaskResult, DetailedTask, ErrorCode, GetTaskResult, JsonObject, Task,
    TaskPayload, TaskStatus,
};
use rmcp::service::RequestContext;

use super::results::jobs::{
    duration_ms, exec_tool_result, job_outcome, now_ms, rfc3339, window_sizes,
};
use super::tools::{ExecuteParams, OutputError, is_refusal};
use super::{HARD_MAX_OUTPUT, Shim, error_result};

/// How long an `ssh_execute` waits for its job before answering with a task.
const TASK_WAIT: Duration = Duration::from_secs(5);
/// Poll interval suggested to clients: a tenth of the job's age, within these bounds.
const MIN_POLL_MS: u64 = 1000;
const MAX_POLL_MS: u64 = 30_000;

impl Shim {
    /// Whether this very request declared the tasks extension in its `_meta` (protocol
    /// 2026-07-28). Capabilities from an older session's `initialize` do not count: that
    /// session expects the older task form (a `task` parameter in the call), which rmcp 3
    /// cannot serve, and a task it did not ask for reads as an empty result.
    pub(super) fn tasks_declared(ctx: &RequestContext<RoleServer>) -> bool {
        ctx.meta
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks())
    }

    /// Runs an `ssh_execute` as a job. `None` when the daemon cannot run jobs: the caller runs
    /// it synchronously, as without the extension.
    ///
    /// The call's `timeout` (seconds without output) does not apply: a job is never stopped for
    /// being quiet; the client can cancel the task (`tasks/cancel` kills the job). Its
    /// `max_output` applies to a result given within the wait; `tasks/get` uses the configured
    /// `max_output_bytes` (the shim keeps no state about the call).
    pub(crate) async fn execute_as_task(
        &self,
        p: &ExecuteParams,
        ctx: &RequestContext<RoleServer>,
    ) -> Option<CallToolResponse> {
        let prepared = async {
            if !self.jobs_supported(ctx).await? {
                return Ok(None);
            }
            let limit = match p.max_output {
                Some(n) => n.clamp(1024, HARD_MAX_OUTPUT),
                None => self.default_output_limit(ctx).await?,
            };
            let retention = self.client(ctx).await?.hello.job_retention_secs;
            Ok(Some((limit, retention)))
        };
        let (limit, retention) = match prepared.await {
            Ok(Some(ready)) => ready,
            Ok(None) => return None,
            Err(text) => return Some(error_result(text).into()),
        };
        let request = pb::JobStartRequest {
            host: p.host.clone(),
            command: p.command.clone(),
            cwd: p.cwd.clone().unwrap_or_default(),
        };
        let job = match self.start_job(ctx, request).await {
            Ok(job) => job,
            Err(text) => return Some(error_result(text).into()),
        };
        let (max_bytes, head_bytes) = window_sizes(limit);
        let request = pb::JobOutputRequest {
            job: job.id.clone(),
            max_bytes,
            head_bytes,
            wait_ms: u64::try_from(TASK_WAIT.as_millis()).unwrap_or(5000),
            ..Default::default()
        };
        let task = |job: &pb::JobInfo, message: Option<String>| {
            let mut task = working_task(job, now_ms(), message);
            task.ttl_ms = (retention > 0).then(|| retention.saturating_mul(1000));
            Some(CallToolResponse::Task(CreateTaskResult::new(task)))
        };
        match self.job_output(ctx, request, None).await {
            Ok(Some(out)) => match out.job.as_ref() {
                Some(running) if running.state == pb::JobState::Running as i32 => {
                    task(running, None)
                }
                _ => {
                    // It never became a task: the caller got the whole result, as from a
                    // synchronous call, so the job is not left behind for ssh_jobs to list.
                    let (shim, ctx, id) = (self.clone(), ctx.clone(), job.id.clone());
                    tokio::spawn(async move {
                        if let Ok(client) = shim.client(&ctx).await {
                            let forget = pb::JobForgetRequest { job: id };
                            if let Err(e) = client.jobs().forget(forget).await {
                                tracing::debug!(
                                    "could not forget a finished task job: {}",
                                    e.message()
                                );
                            }
                        }
                    });
                    Some(exec_tool_result(&out, limit as usize, now_ms()).into())
                }
            },
            Ok(None) => {
                // Cancelled before it became a task: stop the command, as the cancellation of
                // a synchronous call does. The client no longer waits for this answer.
                let (shim, ctx, id) = (self.clone(), ctx.clone(), job.id.clone());
                tokio::spawn(async move {
                    let why = match shim.kill_job(&ctx, &id).await {
                        Ok(reply) if reply.confirmed => return,
                        Ok(reply) => reply.outcome,
                        Err(Ok(status)) => status.message().to_string(),
                        Err(Err(text)) => text,
                    };
                    tracing::warn!("cancelled call: job {id} not confirmed stopped: {why}");
                });
                Some(
                    error_result(format!(
                        "cancelled by the client; the command (job {}) is being stopped",
                        job.id
                    ))
                    .into(),
                )
            }
            // The job runs; `tasks/get` will read it.
            Err(e) => task(
                &job,
                Some(format!("its output could not be read yet: {}", e.text())),
            ),
        }
    }

    /// `tasks/get`: the job's state as a task, with the finished result inline.
    pub(super) async fn get_job_task(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let internal = |text: String| ErrorData::internal_error(text, None);
        let limit = self.default_output_limit(ctx).await.map_err(internal)?;
        let retention = self
            .client(ctx)
            .await
            .map_err(internal)?
            .hello
            .job_retention_secs;
        let (max_bytes, head_bytes) = window_sizes(limit);
        let request = pb::JobOutputRequest {
            job: id.to_string(),
            max_bytes,
            head_bytes,
            ..Default::default()
        };
        match self.job_output(ctx, request, None).await {
            Ok(Some(out)) => Ok(GetTaskResult::new(detailed_task(
                &out,
                limit as usize,
                retention,
                now_ms(),
            ))),
            Ok(None) => Err(internal("cancelled by the client".into())),
            Err(OutputError::Refused(text)) => Err(unknown_task(id, &text)),
            Err(OutputError::Other(text)) => Err(internal(text)),
        }
    }

    /// `tasks/cancel`: kills the job (TERM, then KILL after the daemon's grace).
    pub(super) async fn cancel_job_task(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        match self.kill_job(ctx, id).await {
            Ok(reply) if reply.confirmed => Ok(()),
            Ok(reply) => Err(ErrorData::internal_error(
                format!("job {id} could not be confirmed stopped: {}", reply.outcome),
                None,
            )),
            Err(Ok(status)) if is_refusal(&status) => Err(unknown_task(id, status.message())),
            Err(Ok(status)) => Err(ErrorData::internal_error(
                status.message().to_string(),
                None,
            )),
            Err(Err(text)) => Err(ErrorData::internal_error(text, None)),
        }
    }

    async fn kill_job(
        &self,
        ctx: &RequestContext<RoleServer>,
        id: &str,
    ) -> Result<pb::JobKillReply, Result<tonic::Status, String>> {
        self.with_daemon_status(ctx, |client| {
            let request = pb::JobKillRequest {
                job: id.to_string(),
                signal: "TERM".into(),
            };
            async move { client.jobs().kill(request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
}

/// SEP-2663: an unknown task id is "invalid params".
fn unknown_task(id: &str, why: &str) -> ErrorData {
    ErrorData::invalid_params(
        format!("unknown task {id}: {why} (finished jobs are kept for hosts.json's job_retention)"),
        None,
    )
}

/// The base task of a job: created when the job started, updated when its state was read.
fn base_task(job: &pb::JobInfo, now: i64) -> Task {
    let created = if job.started_at_unix_ms > 0 {
        job.started_at_unix_ms
    } else {
        now
    };
    let updated = if job.checked_at_unix_ms > 0 {
        job.checked_at_unix_ms
    } else {
        now
    };
    let age = duration_ms(job, now);
    Task::new(
        job.id.clone(),
        TaskStatus::Working,
        rfc3339(created),
        rfc3339(updated),
    )
    .with_poll_interval_ms((age / 10).clamp(MIN_POLL_MS, MAX_POLL_MS))
}

/// A running job's task; its status message is the last output line.
fn working_task(job: &pb::JobInfo, now: i64, message: Option<String>) -> Task {
    let mut message = message.unwrap_or_else(|| match job.last_line.trim() {
        "" => "running, no output yet".to_string(),
        line => line.to_string(),
    });
    if !job.stale_reason.is_empty() {
        message.push_str(&format!(" (last known state: {})", job.stale_reason));
    }
    base_task(job, now).with_status_message(message)
}

/// The task `tasks/get` answers for a job's output, read with [`window_sizes`] of `limit`.
/// The TTL counts from the job's start: its run so far plus the retention after it ends.
fn detailed_task(out: &pb::JobOutput, limit: usize, retention_secs: u64, now: i64) -> DetailedTask {
    let job = out.job.clone().unwrap_or_default();
    let state = pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified);
    let mut task = match state {
        pb::JobState::Running => working_task(&job, now, None),
        _ => base_task(&job, now).with_status_message(job_outcome(&job, duration_ms(&job, now))),
    };
    task.ttl_ms = (retention_secs > 0)
        .then(|| duration_ms(&job, now).saturating_add(retention_secs.saturating_mul(1000)));
    let payload = match state {
        pb::JobState::Running => TaskPayload::Working,
        pb::JobState::Exited | pb::JobState::Lost => {
            match serde_json::to_value(exec_tool_result(out, limit, now)) {
                Ok(serde_json::Value::Object(result)) => TaskPayload::Completed { result },
                _ => failed(format!("the result of job {} could not be encoded", job.id)),
            }
        }
        pb::JobState::Killed => TaskPayload::Cancelled,
        pb::JobState::Unspecified => failed(format!(
            "mcp-sshd reports a job state this shim does not know ({}); ssh_job_output {} \
             shows the job",
            job.state, job.id
        )),
    };
    DetailedTask::new(task, payload)
}

/// A `failed` payload: a JSON-RPC internal error.
fn failed(message: String) -> TaskPayload {
    let mut error = JsonObject::new();
    error.insert("code".into(), ErrorCode::INTERNAL_ERROR.0.into());
    error.insert("message".into(), message.into());
    TaskPayload::Failed { error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::JobState) -> pb::JobInfo {
        pb::JobInfo {
            id: "box/7f3a2c".into(),
            host: "box".into(),
            state: state as i32,
            started_at_unix_ms: 1_700_000_000_000,
            checked_at_unix_ms: 1_700_000_600_000,
            ..Default::default()
        }
    }

    fn output(job: pb::JobInfo, stdout: &[u8]) -> pb::JobOutput {
        pb::JobOutput {
            job: Some(job),
            stdout: Some(pb::OutputWindow {
                offset: 0,
                data: stdout.to_vec(),
                total: stdout.len() as u64,
                head: Vec::new(),
            }),
            ..Default::default()
        }
    }

    const NOW: i64 = 1_700_000_600_000;
    const WEEK: u64 = 7 * 86_400;

    #[test]
    fn running_job_should_be_a_working_task_with_its_last_line() {
        let mut j = job(pb::JobState::Running);
        j.last_line = "epoch 3/10".into();
        let t = detailed_task(&output(j, b"epoch 3/10\n"), 1000, WEEK, NOW);
        assert_eq!(t.status(), TaskStatus::Working);
        assert_eq!(t.payload, TaskPayload::Working);
        assert_eq!(t.task.task_id, "box/7f3a2c");
        assert_eq!(t.task.status_message.as_deref(), Some("epoch 3/10"));
        assert_eq!(t.task.created_at, "2023-11-14T22:13:20Z");
        assert_eq!(t.task.last_updated_at, "2023-11-14T22:23:20Z");
        // Ten minutes old: a minute of polling interval, capped at 30 s.
        assert_eq!(t.task.poll_interval_ms, Some(30_000));
        assert_eq!(t.task.ttl_ms, Some(600_000 + WEEK * 1000));
        let wire = serde_json::to_value(GetTaskResult::new(t)).unwrap();
        assert_eq!(wire["status"], "working");
        assert_eq!(wire["taskId"], "box/7f3a2c");
        assert!(wire.get("result").is_none());
    }

    #[test]
    fn exited_job_should_complete_with_the_synchronous_result() {
        let mut j = job(pb::JobState::Exited);
        j.exit_code = Some(2);
        j.ended_at_unix_ms = 1_700_000_001_500;
        let out = output(j, b"done\n");
        let t = detailed_task(&out, 1000, WEEK, NOW);
        assert_eq!(t.status(), TaskStatus::Completed);
        assert_eq!(t.task.status_message.as_deref(), Some("exit 2 after 1 s"));
        assert_eq!(t.task.ttl_ms, Some(1500 + WEEK * 1000));
        let TaskPayload::Completed { result } = &t.payload else {
            panic!("{t:?}")
        };
        let sync = serde_json::to_value(exec_tool_result(&out, 1000, NOW)).unwrap();
        assert_eq!(&serde_json::Value::Object(result.clone()), &sync);
        assert_eq!(result["isError"], false);
        assert_eq!(result["structuredContent"]["exit_code"], 2);
        assert_eq!(result["structuredContent"]["stdout"], "done\n");
        assert_eq!(result["content"][0]["text"], "exit 2 (1.50 s)\ndone\n");
    }

    #[test]
    fn killed_lost_and_unknown_jobs_should_map_to_terminal_statuses() {
        let mut killed = job(pb::JobState::Killed);
        killed.signal = "TERM".into();
        killed.ended_at_unix_ms = 1_700_000_010_000;
        let t = detailed_task(&output(killed, b""), 1000, WEEK, NOW);
        assert_eq!(t.status(), TaskStatus::Cancelled);
        assert_eq!(
            t.task.status_message.as_deref(),
            Some("killed by TERM after 10 s")
        );

        let mut lost = job(pb::JobState::Lost);
        lost.note = "the host rebooted".into();
        let t = detailed_task(&output(lost, b"partial\n"), 1000, WEEK, NOW);
        assert_eq!(t.status(), TaskStatus::Completed);
        let TaskPayload::Completed { result } = &t.payload else {
            panic!("{t:?}")
        };
        assert_eq!(result["isError"], true);
        let text = result["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("the host rebooted") && text.contains("partial"),
            "{text}"
        );

        let mut odd = job(pb::JobState::Running);
        odd.state = 42;
        let t = detailed_task(&output(odd, b""), 1000, 0, NOW);
        assert_eq!(t.status(), TaskStatus::Failed);
        assert_eq!(t.task.ttl_ms, None, "no retention known: unlimited");
        let wire = serde_json::to_value(&t).unwrap();
        assert_eq!(wire["error"]["code"], -32603);
    }

    #[test]
    fn a_new_task_should_carry_the_retention_as_ttl() {
        let j = job(pb::JobState::Running);
        let mut task = working_task(&j, 1_700_000_005_000, None);
        task.ttl_ms = Some(WEEK * 1000);
        let wire = serde_json::to_value(CreateTaskResult::new(task)).unwrap();
        assert_eq!(wire["resultType"], "task");
        assert_eq!(wire["status"], "working");
        assert_eq!(wire["statusMessage"], "running, no output yet");
        assert_eq!(wire["ttlMs"], WEEK * 1000);
        assert_eq!(wire["pollIntervalMs"], 1000);
    }
}
