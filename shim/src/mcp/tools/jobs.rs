//! The job tools: commands supervised on the host (daemon service `Jobs`) that outlive the call,
//! the client, the daemon and the connection. `ssh_job_start` starts one, `ssh_job_output`
//! reads its state and bounded windows of its output (waiting with progress heartbeats),
//! `ssh_job_kill` stops it, `ssh_jobs` lists every job of every client.

use mcp_ssh_proto::pb::{self, job_output_event};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::mcp::link::is_transport_failure;
use crate::mcp::results;
use crate::mcp::results::jobs::{
    JobKillResult, JobOutputResult, JobStartResult, JobsResult, heartbeat_text, now_ms,
    parse_state, window_sizes,
};
use crate::mcp::schema::output_schema;
use crate::mcp::{HARD_MAX_OUTPUT, Shim, error_result};

const DEFAULT_START_WAIT: u32 = 5;
const MAX_START_WAIT: u32 = 60;
const MAX_OUTPUT_WAIT: u32 = 600;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStartParams {
    pub host: String,
    pub command: String,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds to wait for it to end (default 5, max 60)
    #[serde(default)]
    pub wait: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobOutputParams {
    pub job: String,
    /// stdout byte offset (default: the tail)
    #[serde(default)]
    pub offset: Option<u64>,
    /// stderr byte offset (default: the tail)
    #[serde(default)]
    pub stderr_offset: Option<u64>,
    /// Bytes per stream
    #[serde(default)]
    pub max_output: Option<u32>,
    /// Seconds to wait for it to end (max 600)
    #[serde(default)]
    pub wait: Option<u32>,
    /// Regex: stop waiting at a new output line matching it
    #[serde(default)]
    pub until: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobKillParams {
    pub job: String,
    /// TERM (default), INT or KILL
    #[serde(default)]
    pub signal: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobsParams {
    #[serde(default)]
    pub host: Option<String>,
    /// running, exited, killed or lost
    #[serde(default)]
    pub state: Option<String>,
}

/// Why a job's output could not be read.
pub(crate) enum OutputError {
    /// The daemon refused the request as asked: no such job (never started, forgotten, past
    /// its retention) or a malformed id or `until`.
    Refused(String),
    Other(String),
}

impl OutputError {
    pub(crate) fn text(self) -> String {
        match self {
            OutputError::Refused(text) | OutputError::Other(text) => text,
        }
    }
}

/// Whether the daemon refused a job request as asked (no such job, malformed id).
pub(crate) fn is_refusal(status: &tonic::Status) -> bool {
    !is_transport_failure(status)
        && matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::InvalidArgument
        )
}

/// The daemon's words for a failed job call.
fn jobs_status_text(status: &tonic::Status) -> String {
    if is_transport_failure(status) {
        // In words, without the transport's internals (`h2 protocol error: …`).
        return crate::mcp::status_text(status, crate::mcp::Call::Unknown);
    }
    match status.code() {
        tonic::Code::Unimplemented => "the running mcp-sshd does not support jobs (it is older \
             than this shim); `mcp-sshctl stop` lets the next call start a current one (this \
             ends its SSH sessions)"
            .into(),
        _ => status.message().to_string(),
    }
}

/// A failed call in words: the daemon's status, or why the daemon could not be reached.
fn failure_text(failure: Result<tonic::Status, String>) -> String {
    failure.map_or_else(|text| text, |status| jobs_status_text(&status))
}

/// Whether a failed call cannot have reached a daemon: nothing listened on the socket.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

impl Shim {
    /// Whether the daemon runs jobs (an older one does not).
    pub(crate) async fn jobs_supported(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<bool, String> {
        let client = self.client(ctx).await?;
        Ok(client.hello.capabilities.iter().any(|c| c == "jobs"))
    }

    async fn require_jobs(&self, ctx: &RequestContext<RoleServer>) -> Result<(), String> {
        if self.jobs_supported(ctx).await? {
            return Ok(());
        }
        let client = self.client(ctx).await?;
        Err(format!(
            "the running mcp-sshd {} does not support jobs (it is older than this shim); \
             `mcp-sshctl stop` lets the next call start a current one (this ends its SSH sessions)",
            client.hello.daemon_version
        ))
    }

    /// Jobs.Start. A call the daemon may have received is never sent again: its failure says
    /// the job may have started and to look with `ssh_jobs` first.
    pub(crate) async fn start_job(
        &self,
        ctx: &RequestContext<RoleServer>,
        request: pb::JobStartRequest,
    ) -> Result<pb::JobInfo, String> {
        let may_have_started = format!(
            "; the job may have started: check ssh_jobs (host {}) before starting it again",
            request.host
        );
        let mut attempt = 0;
        let reply = loop {
            let client = self.client(ctx).await?;
            match client.jobs().start(request.clone()).await {
                Ok(reply) => break reply.into_inner(),
                // Nothing listened: no daemon got the call, so it can be sent to a new one.
                Err(status) if is_transport_failure(&status) && never_sent(&status) => {
                    self.link.reset().await;
                    attempt += 1;
                    if attempt > 1 {
                        return Err(jobs_status_text(&status));
                    }
                }
                Err(status) if is_transport_failure(&status) => {
                    self.link.reset().await;
                    return Err(format!("{}{may_have_started}", jobs_status_text(&status)));
                }
                Err(status) => {
                    let text = jobs_status_text(&status);
                    return Err(match status.code() {
                        tonic::Code::Unknown
                        | tonic::Code::Internal
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Aborted
                        | tonic::Code::DataLoss => format!("{text}{may_have_started}"),
                        _ => text,
                    });
                }
            }
        };
        reply
            .job
            .ok_or_else(|| format!("mcp-sshd started the job without naming it{may_have_started}"))
    }

    /// Jobs.Output to its end: heartbeats become `notifications/progress` when `progress` is
    /// set (the wait in seconds) and the client gave a token. `Ok(None)`: the client cancelled
    /// the call; the stream is dropped, which only stops waiting (the job keeps running).
    pub(crate) async fn job_output(
        &self,
        ctx: &RequestContext<RoleServer>,
        request: pb::JobOutputRequest,
        progress: Option<u32>,
    ) -> Result<Option<pb::JobOutput>, OutputError> {
        let opened = self
            .with_daemon_status(ctx, |client| {
                let request = request.clone();
                async move {
                    client
                        .jobs()
                        .output(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await;
        let fail = |status: &tonic::Status| {
            if is_refusal(status) {
                OutputError::Refused(jobs_status_text(status))
            } else {
                OutputError::Other(jobs_status_text(status))
            }
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(Ok(status)) => return Err(fail(&status)),
            Err(Err(text)) => return Err(OutputError::Other(text)),
        };
        let token = progress.and(ctx.meta.get_progress_token());
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = ctx.ct.cancelled() => return Ok(None),
            };
            match message {
                Ok(Some(pb::JobOutputEvent {
                    event: Some(job_output_event::Event::Output(output)),
                })) => return Ok(Some(output)),
                Ok(Some(pb::JobOutputEvent {
                    event: Some(job_output_event::Event::Heartbeat(beat)),
                })) => {
                    if let (Some(token), Some(wait)) = (token.clone(), progress) {
                        let param =
                            ProgressNotificationParam::new(token, beat.waited_ms as f64 / 1000.0)
                                .with_total(f64::from(wait))
                                .with_message(heartbeat_text(&beat, wait));
                        let _ = ctx.peer.notify_progress(param).await;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(OutputError::Other(
                        "mcp-sshd ended the call without the job's output".into(),
                    ));
                }
                Err(status) => return Err(fail(&status)),
            }
        }
    }

    async fn output_limit(
        &self,
        ctx: &RequestContext<RoleServer>,
        asked: Option<u32>,
    ) -> Result<u32, String> {
        match asked {
            Some(n) => Ok(n.clamp(1024, HARD_MAX_OUTPUT)),
            None => self.default_output_limit(ctx).await,
        }
    }
}

#[tool_router(router = jobs_router, vis = "pub(super)")]
impl Shim {
    #[tool(
        description = "Start a long-running command as a job that survives disconnects and \
                       restarts; follow it with ssh_job_output.",
        output_schema = output_schema::<JobStartResult>())]
    async fn ssh_job_start(
        &self,
        Parameters(p): Parameters<JobStartParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let wait = p.wait.unwrap_or(DEFAULT_START_WAIT).min(MAX_START_WAIT);
        let prepared = async {
            self.require_jobs(&ctx).await?;
            self.output_limit(&ctx, None).await
        };
        let limit = match prepared.await {
            Ok(limit) => limit,
            Err(text) => return error_result(text),
        };
        let request = pb::JobStartRequest {
            host: p.host,
            command: p.command,
            cwd: p.cwd.unwrap_or_default(),
        };
        let job = match self.start_job(&ctx, request).await {
            Ok(job) => job,
            Err(text) => return error_result(text),
        };
        let (max_bytes, head_bytes) = window_sizes(limit);
        let mut note = None;
        let output = if wait == 0 {
            None
        } else {
            let request = pb::JobOutputRequest {
                job: job.id.clone(),
                max_bytes,
                head_bytes,
                wait_ms: u64::from(wait) * 1000,
                ..Default::default()
            };
            match self.job_output(&ctx, request, Some(wait)).await {
                Ok(Some(output)) => Some(output),
                Ok(None) => {
                    note = Some("stopped waiting (cancelled by the client); the job keeps running");
                    None
                }
                Err(e) => {
                    let text = e.text();
                    tracing::warn!("job {} started, its output unread: {text}", job.id);
                    note = Some("its output could not be read yet; ssh_job_output reads it");
                    None
                }
            }
        };
        let result = JobStartResult::new(
            &job,
            output.as_ref(),
            limit as usize,
            now_ms(),
            note.map(String::from),
        );
        results::ok(result.text(), &result)
    }

    #[tool(
        description = "A job's state, exit code and output (default: the tail; continue from \
                       next_offset). wait: until it ends or a new line matches until.",
        output_schema = output_schema::<JobOutputResult>(), annotations(read_only_hint = true))]
    async fn ssh_job_output(
        &self,
        Parameters(p): Parameters<JobOutputParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let wait = p.wait.unwrap_or(0).min(MAX_OUTPUT_WAIT);
        let limit = match self.output_limit(&ctx, p.max_output).await {
            Ok(limit) => limit,
            Err(text) => return error_result(text),
        };
        let until_given = p.until.as_deref().is_some_and(|u| !u.trim().is_empty());
        let request = pb::JobOutputRequest {
            job: p.job.trim().to_string(),
            stdout_offset: p.offset,
            stderr_offset: p.stderr_offset,
            max_bytes: limit,
            head_bytes: 0,
            wait_ms: u64::from(wait) * 1000,
            until: p.until.unwrap_or_default(),
        };
        match self
            .job_output(&ctx, request, (wait > 0).then_some(wait))
            .await
        {
            Ok(Some(output)) => {
                let mut result = JobOutputResult::new(&output, now_ms());
                if until_given && result.matched_line.is_none() && result.state == "running" {
                    // Say why the call returned, so a model does not read it as a match.
                    let why = format!(
                        "no line matched `until` within {wait} s; the job is still running"
                    );
                    result.note = Some(match result.note.take() {
                        Some(note) => format!("{why}. {note}"),
                        None => why,
                    });
                }
                results::ok(result.text(&output.job.unwrap_or_default()), &result)
            }
            Ok(None) => error_result(format!(
                "stopped waiting (cancelled by the client); job {} keeps running (ssh_job_kill \
                 stops it)",
                p.job
            )),
            Err(e) => error_result(e.text()),
        }
    }

    /// Stop a job's whole process group (the signal, then KILL after a grace).
    #[tool(output_schema = output_schema::<JobKillResult>(), annotations(idempotent_hint = true))]
    async fn ssh_job_kill(
        &self,
        Parameters(p): Parameters<JobKillParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let signal = match p.signal.as_deref().map(signal_name) {
            None => "TERM",
            Some(Some(signal)) => signal,
            Some(None) => return error_result("signal must be TERM, INT or KILL".into()),
        };
        let job = p.job.trim().to_string();
        let killed = self
            .with_daemon_status(&ctx, |client| {
                let request = pb::JobKillRequest {
                    job: job.clone(),
                    signal: signal.into(),
                };
                async move { client.jobs().kill(request).await }
            })
            .await;
        match killed {
            Ok(reply) => {
                let result = JobKillResult::new(reply.into_inner(), &job);
                let mut answer = results::ok(result.text(), &result);
                if !result.confirmed_gone {
                    answer.is_error = Some(true);
                }
                answer
            }
            Err(failure) => error_result(failure_text(failure)),
        }
    }

    /// List jobs (every client's): state, duration, exit code, last output line.
    #[tool(output_schema = output_schema::<JobsResult>(), annotations(read_only_hint = true))]
    async fn ssh_jobs(
        &self,
        Parameters(p): Parameters<JobsParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let state = match p.state.as_deref().filter(|s| !s.trim().is_empty()) {
            None => pb::JobState::Unspecified,
            Some(word) => match parse_state(word) {
                Some(state) => state,
                None => {
                    return error_result("state must be running, exited, killed or lost".into());
                }
            },
        };
        if let Err(text) = self.require_jobs(&ctx).await {
            return error_result(text);
        }
        // All states are fetched so the counts tell the whole picture; the list is filtered.
        let request = pb::JobListRequest {
            host: p.host.unwrap_or_default(),
            state: pb::JobState::Unspecified as i32,
        };
        let listed = self
            .with_daemon_status(&ctx, |client| {
                let request = request.clone();
                async move { client.jobs().list(request).await }
            })
            .await;
        match listed {
            Ok(reply) => {
                let wanted = (state != pb::JobState::Unspecified).then_some(state);
                let result = JobsResult::new(reply.into_inner().jobs, wanted, now_ms());
                results::ok(result.text(), &result)
            }
            Err(failure) => error_result(failure_text(failure)),
        }
    }
}

/// `TERM`, `SIGterm`, `int` → the daemon's names; anything else is refused.
fn signal_name(word: &str) -> Option<&'static str> {
    let upper = word.trim().to_ascii_uppercase();
    match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "TERM" => Some("TERM"),
        "INT" => Some("INT"),
        "KILL" => Some("KILL"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_should_be_named_as_the_daemon_expects() {
        assert_eq!(signal_name("term"), Some("TERM"));
        assert_eq!(signal_name(" SIGINT"), Some("INT"));
        assert_eq!(signal_name("KILL"), Some("KILL"));
        assert_eq!(signal_name("HUP"), None);
    }

    #[test]
    fn job_errors_should_be_plain_words() {
        let status = tonic::Status::not_found("unknown job box/000000");
        assert_eq!(jobs_status_text(&status), "unknown job box/000000");
        let old = tonic::Status::unimplemented("");
        assert!(jobs_status_text(&old).starts_with("the running mcp-sshd does not support jobs"));
        assert!(!never_sent(&status));
    }
}
