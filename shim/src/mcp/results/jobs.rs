//! Results of the job tools (`ssh_job_start`, `ssh_job_output`, `ssh_job_kill`, `ssh_jobs`) and
//! the `ssh_execute` result rebuilt from a job (for MCP tasks). Same conventions as the other
//! results: outcome first, bounded, lossy UTF-8 flagged, escapes stripped, and JSON that reads
//! well alone (Claude Code shows the model only `structuredContent`).

use std::time::Duration;

use mcp_ssh_proto::pb;
use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Serialize;

use super::{ExecResult, is_zero, ok};
use crate::mcp::output::{CappedBuffer, CleanOutput, decode_window};

/// How many jobs `ssh_jobs` lists; the counts cover all of them.
pub const LISTED_JOBS: usize = 50;
const COMMAND_CHARS: usize = 80;
const LAST_LINE_CHARS: usize = 120;

/// A job's state as one word.
pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Exited) => "exited",
        Ok(pb::JobState::Killed) => "killed",
        Ok(pb::JobState::Lost) => "lost",
        Ok(pb::JobState::Unspecified) | Err(_) => "unknown",
    }
}

/// The state a word names (`ssh_jobs`'s filter).
pub fn parse_state(word: &str) -> Option<pb::JobState> {
    match word.trim().to_ascii_lowercase().as_str() {
        "running" => Some(pb::JobState::Running),
        "exited" => Some(pb::JobState::Exited),
        "killed" => Some(pb::JobState::Killed),
        "lost" => Some(pb::JobState::Lost),
        _ => None,
    }
}

fn state_of(job: &pb::JobInfo) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long the job ran, or has run so far (`now` for a running job).
pub fn duration_ms(job: &pb::JobInfo, now: i64) -> u64 {
    let end = match (job.ended_at_unix_ms, state_of(job)) {
        (end, _) if end > 0 => end,
        (_, pb::JobState::Running) => now,
        _ if job.checked_at_unix_ms > 0 => job.checked_at_unix_ms,
        _ => now,
    };
    u64::try_from(end.saturating_sub(job.started_at_unix_ms)).unwrap_or(0)
}

/// `2026-10-12T08:30:00Z` (UTC, whole seconds).
pub fn rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}

/// `850 ms`, `12 s`, `4 min 5 s`, `2 h 3 min`, `3 d 4 h`.
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms} ms"),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// At most `n` characters, `…` marking a cut.
fn shorten(text: &str, n: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut short: String = text.chars().take(n.saturating_sub(1)).collect();
    short.push('…');
    short
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// One stream as `ssh_execute` gives it: head and tail of `limit` bytes, from the window (the
/// tail) and the head the daemon read.
fn capped(window: Option<&pb::OutputWindow>, limit: usize) -> CleanOutput {
    let w = window.cloned().unwrap_or_default();
    CappedBuffer::from_parts(limit, &w.head, w.offset, &w.data).finish()
}

/// The `ssh_execute` result of a job's output read with `max_bytes = limit - limit / 2` and
/// `head_bytes = limit / 2` (see [`window_sizes`]): the same fields and capping as a
/// synchronous call.
pub fn exec_result(out: &pb::JobOutput, limit: usize, now: i64) -> ExecResult {
    let job = out.job.clone().unwrap_or_default();
    let duration_ms = duration_ms(&job, now);
    let exit = match state_of(&job) {
        pb::JobState::Exited => Some(pb::Exit {
            code: job.exit_code,
            // A synchronous call reports a signal only when there is no exit code.
            signal: if job.exit_code.is_some() {
                String::new()
            } else {
                job.signal.clone()
            },
            core_dumped: false,
            duration_ms,
        }),
        pb::JobState::Killed => Some(pb::Exit {
            code: None,
            signal: job.signal.clone(),
            core_dumped: false,
            duration_ms,
        }),
        _ => None,
    };
    ExecResult::new(
        exit.as_ref(),
        Duration::from_millis(duration_ms),
        capped(out.stdout.as_ref(), limit),
        capped(out.stderr.as_ref(), limit),
    )
}

/// `(max_bytes, head_bytes)` of a Jobs.Output request that gives [`exec_result`] what it needs.
pub fn window_sizes(limit: u32) -> (u32, u32) {
    let limit = limit.max(2);
    (limit - limit / 2, limit / 2)
}

/// A progress message while waiting for a job: `running, waited 12 of 60 s; last output: …`.
pub fn heartbeat_text(beat: &pb::JobHeartbeat, wait_secs: u32) -> String {
    let waited = format!("running, waited {} of {wait_secs} s", beat.waited_ms / 1000);
    match shorten(&beat.last_line, LAST_LINE_CHARS) {
        line if line.is_empty() => format!("{waited}; no output yet"),
        line => format!("{waited}; last output: {line}"),
    }
}

/// Why a lost job has no result, in words.
fn lost_reason(job: &pb::JobInfo) -> String {
    let mut text = format!(
        "the command's processes on {} are gone without an exit status",
        job.host
    );
    if !job.note.is_empty() {
        text.push_str(&format!(" ({})", job.note));
    }
    text
}

/// The tool result a synchronous `ssh_execute` of this (finished) job would have given.
pub fn exec_tool_result(out: &pb::JobOutput, limit: usize, now: i64) -> CallToolResult {
    let result = exec_result(out, limit, now);
    let job = out.job.clone().unwrap_or_default();
    if state_of(&job) == pb::JobState::Lost {
        return CallToolResult::error(vec![ContentBlock::text(
            result.failure_text(&lost_reason(&job)),
        )]);
    }
    ok(result.text(), &result)
}

/// `ssh_job_start`: the job id and state, with the exit code and output as `ssh_execute` gives
/// them when it ended within the wait, or the output so far.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobStartResult {
    pub job: String,
    /// running, exited, killed or lost
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub stdout_cut: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub stderr_cut: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip)]
    text: String,
}

impl JobStartResult {
    /// From the job as started and, when its output could be read, that output.
    pub fn new(
        started: &pb::JobInfo,
        output: Option<&pb::JobOutput>,
        limit: usize,
        now: i64,
        note: Option<String>,
    ) -> JobStartResult {
        let empty = pb::JobOutput {
            job: Some(started.clone()),
            ..Default::default()
        };
        let output = output.unwrap_or(&empty);
        let job = output.job.clone().unwrap_or_else(|| started.clone());
        let exec = exec_result(output, limit, now);
        let state = state_of(&job);
        let note = match (note, non_empty(&job.note)) {
            (Some(ours), Some(theirs)) => Some(format!("{ours}; {theirs}")),
            (ours, theirs) => ours.or(theirs),
        };
        let mut text = match state {
            pb::JobState::Running | pb::JobState::Unspecified => format!(
                "job {} is running ({} so far); ssh_job_output {} gives its output and exit code",
                job.id,
                human_duration(exec.duration_ms),
                job.id
            ),
            pb::JobState::Lost => format!("job {} lost: {}", job.id, lost_reason(&job)),
            pb::JobState::Exited | pb::JobState::Killed => {
                format!("{}, job {}", exec.outcome(), job.id)
            }
        };
        text.push_str(&exec.output_text());
        if let Some(note) = note.as_ref().filter(|_| state != pb::JobState::Lost) {
            text.push_str(&format!("\nnote: {note}"));
        }
        JobStartResult {
            job: job.id.clone(),
            state: state_name(job.state),
            exit_code: exec.exit_code,
            signal: exec.signal,
            stdout: exec.stdout,
            stderr: exec.stderr,
            duration_ms: exec.duration_ms,
            stdout_cut: exec.stdout_cut,
            stderr_cut: exec.stderr_cut,
            invalid_utf8: exec.invalid_utf8,
            note,
            text,
        }
    }

    pub fn text(&self) -> String {
        self.text.clone()
    }
}

/// One stream's window, decoded, with where it starts and where the next read continues.
struct StreamWindow {
    text: String,
    invalid_utf8: bool,
    start: u64,
    next: u64,
    total: u64,
}

impl StreamWindow {
    fn new(window: Option<&pb::OutputWindow>, still_growing: bool) -> StreamWindow {
        let w = window.cloned().unwrap_or_default();
        let end = w.offset + w.data.len() as u64;
        let total = w.total.max(end);
        // A character cut at the end is left for the next read, unless nothing more can come.
        let decoded = decode_window(&w.data, w.offset > 0, end < total || still_growing);
        StreamWindow {
            text: decoded.text,
            invalid_utf8: decoded.invalid_utf8,
            start: w.offset + decoded.skipped as u64,
            next: w.offset + decoded.used as u64,
            total,
        }
    }

    /// Whether the window shows the whole stream.
    fn whole(&self) -> bool {
        self.start == 0 && self.next == self.total
    }

    fn range(&self, name: &str) -> String {
        format!(
            "[{name} bytes {}-{} of {}]",
            self.start, self.next, self.total
        )
    }
}

/// `ssh_job_output`: the job's state and one window of each stream.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobOutputResult {
    pub job: String,
    /// running, exited, killed or lost
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Ran for, or running for so far
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_line: Option<String>,
    pub stdout: String,
    pub stdout_start: u64,
    pub next_offset: u64,
    pub stdout_total_bytes: u64,
    pub stderr: String,
    pub stderr_start: u64,
    pub next_stderr_offset: u64,
    pub stderr_total_bytes: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
}

/// `exit 0 after 3 min 2 s`, `killed by TERM after 5 s`, `running for 12 s`.
pub fn job_outcome(job: &pb::JobInfo, duration_ms: u64) -> String {
    let took = human_duration(duration_ms);
    match state_of(job) {
        pb::JobState::Running => format!("running for {took}"),
        pb::JobState::Exited => match (job.exit_code, job.signal.as_str()) {
            (Some(code), "") => format!("exit {code} after {took}"),
            (Some(code), sig) => format!("exit {code} (signal {sig}?) after {took}"),
            (None, "") => format!("ended without an exit code after {took}"),
            (None, sig) => format!("killed by signal {sig} after {took}"),
        },
        pb::JobState::Killed if job.signal.is_empty() => format!("killed after {took}"),
        pb::JobState::Killed => format!("killed by {} after {took}", job.signal),
        pb::JobState::Lost => "lost: its processes are gone without an exit status".into(),
        pb::JobState::Unspecified => "in an unknown state".into(),
    }
}

impl JobOutputResult {
    pub fn new(out: &pb::JobOutput, now: i64) -> JobOutputResult {
        let job = out.job.clone().unwrap_or_default();
        let running = state_of(&job) == pb::JobState::Running;
        let stdout = StreamWindow::new(out.stdout.as_ref(), running);
        let stderr = StreamWindow::new(out.stderr.as_ref(), running);
        JobOutputResult {
            state: state_name(job.state),
            exit_code: job.exit_code,
            signal: non_empty(&job.signal),
            duration_ms: duration_ms(&job, now),
            matched_line: non_empty(&out.matched_line),
            stdout: stdout.text,
            stdout_start: stdout.start,
            next_offset: stdout.next,
            stdout_total_bytes: stdout.total,
            stderr: stderr.text,
            stderr_start: stderr.start,
            next_stderr_offset: stderr.next,
            stderr_total_bytes: stderr.total,
            invalid_utf8: stdout.invalid_utf8 || stderr.invalid_utf8,
            note: non_empty(&job.note),
            stale_reason: non_empty(&job.stale_reason),
            job: job.id,
        }
    }

    fn windows(&self) -> (StreamWindow, StreamWindow) {
        let w = |text: &str, start, next, total| StreamWindow {
            text: text.to_string(),
            invalid_utf8: false,
            start,
            next,
            total,
        };
        (
            w(
                &self.stdout,
                self.stdout_start,
                self.next_offset,
                self.stdout_total_bytes,
            ),
            w(
                &self.stderr,
                self.stderr_start,
                self.next_stderr_offset,
                self.stderr_total_bytes,
            ),
        )
    }

    pub fn text(&self, job: &pb::JobInfo) -> String {
        let mut text = format!("job {}: {}", self.job, job_outcome(job, self.duration_ms));
        if let Some(stale) = &self.stale_reason {
            text.push_str(&format!(
                " (last known state: the host could not be asked just now: {stale})"
            ));
        }
        if let Some(line) = &self.matched_line {
            text.push_str(&format!("\nmatched: {line}"));
        }
        let (stdout, stderr) = self.windows();
        if stdout.total > 0 {
            text.push('\n');
            if !stdout.whole() {
                text.push_str(&stdout.range("stdout"));
                text.push('\n');
            }
            text.push_str(&stdout.text);
        }
        if stderr.total > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("--- stderr ---\n");
            if !stderr.whole() {
                text.push_str(&stderr.range("stderr"));
                text.push('\n');
            }
            text.push_str(&stderr.text);
        }
        if stdout.total == 0 && stderr.total == 0 {
            text.push_str("\n(no output yet)");
        }
        if stdout.next < stdout.total || stderr.next < stderr.total {
            text.push_str(&format!(
                "\n[more output: offset {}, stderr_offset {}]",
                self.next_offset, self.next_stderr_offset
            ));
        }
        if self.invalid_utf8 {
            text.push_str("\n[output was not valid UTF-8; invalid bytes shown as \u{FFFD}]");
        }
        if let Some(note) = &self.note {
            text.push_str(&format!("\nnote: {note}"));
        }
        text
    }
}

/// `ssh_job_kill`: whether the job is confirmed gone.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobKillResult {
    pub job: String,
    pub confirmed_gone: bool,
    /// What happened, in words
    pub outcome: String,
    /// running, exited, killed or lost
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl JobKillResult {
    pub fn new(reply: pb::JobKillReply, asked: &str) -> JobKillResult {
        let job = reply.job.unwrap_or_default();
        JobKillResult {
            job: if job.id.is_empty() {
                asked.to_string()
            } else {
                job.id.clone()
            },
            confirmed_gone: reply.confirmed,
            outcome: reply.outcome,
            state: state_name(job.state),
            exit_code: job.exit_code,
            signal: non_empty(&job.signal),
            note: non_empty(&job.note),
        }
    }

    pub fn text(&self) -> String {
        let mut text = if self.confirmed_gone {
            format!("{}: {}; its processes are gone", self.job, self.outcome)
        } else {
            format!(
                "{} may still be running: {} (its processes could not be confirmed gone; \
                 check with ssh_job_output)",
                self.job, self.outcome
            )
        };
        if let Some(note) = &self.note {
            text.push_str(&format!("\nnote: {note}"));
        }
        text
    }
}

/// One line of `ssh_jobs`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobSummary {
    pub job: String,
    pub host: String,
    /// Shortened
    pub command: String,
    /// running, exited, killed or lost
    pub state: &'static str,
    /// UTC, ISO 8601
    pub started: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
}

impl JobSummary {
    fn new(job: &pb::JobInfo, now: i64) -> JobSummary {
        JobSummary {
            job: job.id.clone(),
            host: job.host.clone(),
            command: shorten(&job.command, COMMAND_CHARS),
            state: state_name(job.state),
            started: rfc3339(job.started_at_unix_ms),
            duration_ms: duration_ms(job, now),
            exit_code: job.exit_code,
            signal: non_empty(&job.signal),
            last_line: non_empty(&shorten(&job.last_line, LAST_LINE_CHARS)),
            stale_reason: non_empty(&job.stale_reason),
        }
    }
}

/// How many jobs `ssh_jobs` found, by state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobCounts {
    pub total: usize,
    pub running: usize,
    pub exited: usize,
    pub killed: usize,
    pub lost: usize,
    /// Set when fewer than `total` are listed
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listed: Option<usize>,
    /// The state asked for, when the list is filtered
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Jobs in that state
    #[serde(skip)]
    pub matching: usize,
}

/// `ssh_jobs`: the counts (first: JSON keys are sorted), then the most relevant jobs (running
/// first, newest first).
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobsResult {
    pub counts: JobCounts,
    pub jobs: Vec<JobSummary>,
}

impl JobsResult {
    /// Counts over every job; the list holds those in `wanted` (all when `None`).
    pub fn new(mut jobs: Vec<pb::JobInfo>, wanted: Option<pb::JobState>, now: i64) -> JobsResult {
        let count = |s: pb::JobState| jobs.iter().filter(|j| state_of(j) == s).count();
        let (running, exited, killed, lost) = (
            count(pb::JobState::Running),
            count(pb::JobState::Exited),
            count(pb::JobState::Killed),
            count(pb::JobState::Lost),
        );
        let total = jobs.len();
        jobs.sort_by(|a, b| {
            let running = |j: &pb::JobInfo| state_of(j) != pb::JobState::Running;
            (running(a), std::cmp::Reverse(a.started_at_unix_ms))
                .cmp(&(running(b), std::cmp::Reverse(b.started_at_unix_ms)))
        });
        jobs.retain(|j| wanted.is_none_or(|w| state_of(j) == w));
        let matching = jobs.len();
        jobs.truncate(LISTED_JOBS);
        JobsResult {
            counts: JobCounts {
                total,
                running,
                exited,
                killed,
                lost,
                listed: (jobs.len() < total).then_some(jobs.len()),
                filter: wanted.map(|w| state_name(w as i32).to_string()),
                matching,
            },
            jobs: jobs.iter().map(|j| JobSummary::new(j, now)).collect(),
        }
    }

    pub fn text(&self) -> String {
        let c = &self.counts;
        if c.total == 0 {
            return "no jobs".into();
        }
        let counts: Vec<String> = [
            (c.running, "running"),
            (c.exited, "exited"),
            (c.killed, "killed"),
            (c.lost, "lost"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, word)| format!("{n} {word}"))
        .collect();
        let mut text = format!(
            "{} job{}: {}",
            c.total,
            if c.total == 1 { "" } else { "s" },
            counts.join(", ")
        );
        match (&c.filter, c.listed) {
            (Some(word), _) if c.matching == 0 => {
                text = format!("no {word} jobs ({text})");
            }
            (Some(word), _) => {
                text.push_str(&format!("; {} {word} listed", self.jobs.len()));
            }
            (None, Some(listed)) => text.push_str(&format!(
                " (the {listed} most recent listed; filter by host or state)"
            )),
            (None, None) => {}
        }
        for j in &self.jobs {
            let state = match (j.state, j.exit_code, j.signal.as_deref()) {
                ("exited", Some(code), _) => format!("exit {code}"),
                ("killed", _, Some(sig)) => format!("killed by {sig}"),
                (state, _, _) => state.to_string(),
            };
            text.push_str(&format!(
                "\n{}  {}  {} ({}, started {})  $ {}",
                j.job,
                state,
                human_duration(j.duration_ms),
                j.host,
                j.started,
                j.command
            ));
            if let Some(line) = &j.last_line {
                text.push_str(&format!("\n    last output: {line}"));
            }
            if let Some(stale) = &j.stale_reason {
                text.push_str(&format!("\n    last known state ({stale})"));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::JobState) -> pb::JobInfo {
        pb::JobInfo {
            id: "box/7f3a2c".into(),
            host: "box".into(),
            command: "make test".into(),
            state: state as i32,
            started_at_unix_ms: 1_700_000_000_000,
            ended_at_unix_ms: if state == pb::JobState::Running {
                0
            } else {
                1_700_000_003_500
            },
            checked_at_unix_ms: 1_700_000_004_000,
            ..Default::default()
        }
    }

    fn window(offset: u64, data: &[u8], total: u64, head: &[u8]) -> Option<pb::OutputWindow> {
        Some(pb::OutputWindow {
            offset,
            data: data.to_vec(),
            total,
            head: head.to_vec(),
        })
    }

    #[test]
    fn timestamps_and_durations_should_read_well() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(human_duration(850), "850 ms");
        assert_eq!(human_duration(12_400), "12 s");
        assert_eq!(human_duration(245_000), "4 min 5 s");
        assert_eq!(human_duration(7_380_000), "2 h 3 min");
        assert_eq!(human_duration(273_600_000), "3 d 4 h");
    }

    /// A finished job gives exactly what a synchronous `ssh_execute` gives, head+tail included.
    #[test]
    fn finished_job_should_give_the_synchronous_result() {
        let mut j = job(pb::JobState::Exited);
        j.exit_code = Some(3);
        let stream: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
        let (max, head) = window_sizes(10);
        let offset = 100 - u64::from(max);
        let out = pb::JobOutput {
            job: Some(j),
            stdout: window(
                offset,
                &stream[100 - max as usize..],
                100,
                &stream[..head as usize],
            ),
            stderr: window(0, b"warn\n", 5, b""),
            ..Default::default()
        };
        let r = exec_result(&out, 10, 0);
        let mut sync = CappedBuffer::new(10);
        sync.push(&stream);
        let sync = sync.finish();
        assert_eq!(r.stdout, sync.text);
        assert_eq!(r.stdout_cut, 90);
        assert_eq!((r.exit_code, r.signal.as_deref()), (Some(3), None));
        assert_eq!(r.duration_ms, 3500);
        assert_eq!(r.stderr, "warn\n");
        let result = exec_tool_result(&out, 10, 0);
        assert_eq!(result.is_error, Some(false));
        let t = result.content[0].as_text().map(|t| t.text.clone()).unwrap();
        assert!(
            t.starts_with("exit 3 (3.50 s)\nabcde\n[... 90 bytes"),
            "{t}"
        );
        let s = result.structured_content.unwrap();
        assert_eq!(s["exit_code"], 3);
        assert_eq!(s["stdout_cut"], 90);
    }

    #[test]
    fn killed_and_lost_jobs_should_say_so_like_ssh_execute() {
        let mut j = job(pb::JobState::Killed);
        j.signal = "TERM".into();
        j.exit_code = Some(143);
        let out = pb::JobOutput {
            job: Some(j),
            ..Default::default()
        };
        let r = exec_result(&out, 100, 0);
        assert_eq!((r.exit_code, r.signal.as_deref()), (None, Some("TERM")));
        assert!(r.text().starts_with("killed by signal TERM"));

        let mut j = job(pb::JobState::Lost);
        j.note = "systemd-logind kills processes at logout".into();
        let out = pb::JobOutput {
            job: Some(j),
            stdout: window(0, b"half done\n", 10, b""),
            ..Default::default()
        };
        let result = exec_tool_result(&out, 100, 0);
        assert_eq!(result.is_error, Some(true));
        let t = result.content[0].as_text().map(|t| t.text.clone()).unwrap();
        assert!(
            t.starts_with(
                "the command's processes on box are gone without an exit status (systemd-logind"
            ),
            "{t}"
        );
        assert!(t.contains("half done"), "{t}");
    }

    #[test]
    fn start_result_should_lead_with_the_job_and_its_state() {
        let running = job(pb::JobState::Running);
        let out = pb::JobOutput {
            job: Some(running.clone()),
            stdout: window(0, b"step 1\n", 7, b""),
            ..Default::default()
        };
        let r = JobStartResult::new(&running, Some(&out), 1000, 1_700_000_005_000, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["job"], "box/7f3a2c");
        assert_eq!(v["state"], "running");
        assert!(v.get("exit_code").is_none(), "{v}");
        assert!(v.get("text").is_none(), "{v}");
        assert_eq!(v["duration_ms"], 5000);
        assert!(
            r.text()
                .starts_with("job box/7f3a2c is running (5 s so far)"),
            "{}",
            r.text()
        );
        assert!(r.text().ends_with("\nstep 1\n"), "{}", r.text());

        let mut done = job(pb::JobState::Exited);
        done.exit_code = Some(0);
        let out = pb::JobOutput {
            job: Some(done),
            stdout: window(0, b"hi\n", 3, b""),
            ..Default::default()
        };
        let r = JobStartResult::new(&running, Some(&out), 1000, 0, None);
        assert_eq!(r.text(), "exit 0 (3.50 s), job box/7f3a2c\nhi\n");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["state"].as_str(), v["exit_code"].as_i64()),
            (Some("exited"), Some(0))
        );
    }

    #[test]
    fn output_windows_should_give_offsets_to_continue_from() {
        let mut j = job(pb::JobState::Running);
        j.stale_reason = "host box is unreachable".into();
        // The window ends inside "é" (c3 a9): the next read starts at that character.
        let mut data = b"\x1b[32mline 9\x1b[0m\nline 10 ".to_vec();
        data.push(0xc3);
        let out = pb::JobOutput {
            job: Some(j.clone()),
            stdout: window(1000, &data, 2000, b""),
            stderr: window(0, b"", 0, b""),
            matched_line: "line 9".into(),
            ..Default::default()
        };
        let r = JobOutputResult::new(&out, 1_700_000_060_000);
        assert_eq!(r.stdout, "line 9\nline 10 ");
        assert!(!r.invalid_utf8);
        assert_eq!(
            (r.stdout_start, r.next_offset),
            (1000, 1000 + data.len() as u64 - 1)
        );
        assert_eq!(r.stdout_total_bytes, 2000);
        assert_eq!(
            (r.stderr_start, r.next_stderr_offset, r.stderr_total_bytes),
            (0, 0, 0)
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["state"], "running");
        assert_eq!(v["matched_line"], "line 9");
        assert_eq!(v["stale_reason"], "host box is unreachable");
        assert!(
            v.get("exit_code").is_none() && v.get("note").is_none(),
            "{v}"
        );
        let t = r.text(&j);
        assert!(
            t.starts_with("job box/7f3a2c: running for 1 min 0 s (last known state"),
            "{t}"
        );
        assert!(
            t.contains("\n[stdout bytes 1000-1024 of 2000]\nline 9\n"),
            "{t}"
        );
        assert!(
            t.contains("[more output: offset 1024, stderr_offset 0]"),
            "{t}"
        );
    }

    #[test]
    fn whole_output_of_an_ended_job_should_need_no_ranges() {
        let mut j = job(pb::JobState::Exited);
        j.exit_code = Some(137);
        j.signal = "KILL".into();
        let out = pb::JobOutput {
            job: Some(j.clone()),
            stdout: window(0, b"a\n", 2, b""),
            stderr: window(0, b"b \xff\n", 4, b""),
            ..Default::default()
        };
        let r = JobOutputResult::new(&out, 0);
        let t = r.text(&j);
        assert_eq!(
            t,
            "job box/7f3a2c: exit 137 (signal KILL?) after 3 s\na\n--- stderr ---\nb \u{FFFD}\n\n\
             [output was not valid UTF-8; invalid bytes shown as \u{FFFD}]"
        );
        assert_eq!(r.next_stderr_offset, 4);
    }

    #[test]
    fn heartbeats_should_say_how_long_and_the_last_line() {
        let beat = pb::JobHeartbeat {
            waited_ms: 12_300,
            stdout_bytes: 10,
            stderr_bytes: 0,
            last_line: "epoch 3/10".into(),
        };
        assert_eq!(
            heartbeat_text(&beat, 60),
            "running, waited 12 of 60 s; last output: epoch 3/10"
        );
        let quiet = pb::JobHeartbeat::default();
        assert_eq!(
            heartbeat_text(&quiet, 5),
            "running, waited 0 of 5 s; no output yet"
        );
    }

    #[test]
    fn kill_result_should_say_whether_the_job_is_gone() {
        let reply = pb::JobKillReply {
            job: Some(job(pb::JobState::Killed)),
            confirmed: true,
            outcome: "stopped by TERM".into(),
        };
        let r = JobKillResult::new(reply, "box/7f3a2c");
        assert_eq!(
            r.text(),
            "box/7f3a2c: stopped by TERM; its processes are gone"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["confirmed_gone"], true);
        assert_eq!(v["state"], "killed");
        let reply = pb::JobKillReply {
            job: None,
            confirmed: false,
            outcome: "host box is unreachable".into(),
        };
        let r = JobKillResult::new(reply, "box/7f3a2c");
        assert!(
            r.text().starts_with("box/7f3a2c may still be running"),
            "{}",
            r.text()
        );
    }

    #[test]
    fn job_list_should_count_first_and_list_running_jobs_first() {
        let mut jobs = Vec::new();
        for i in 0..60 {
            let mut j = job(if i == 3 {
                pb::JobState::Running
            } else {
                pb::JobState::Exited
            });
            j.id = format!("box/{i:06x}");
            j.exit_code = (i != 3).then_some(0);
            j.started_at_unix_ms += i64::from(i) * 1000;
            j.command = "x".repeat(200);
            j.last_line = if i == 3 {
                "epoch 3/10".into()
            } else {
                String::new()
            };
            jobs.push(j);
        }
        let r = JobsResult::new(jobs, None, 1_700_000_100_000);
        let c = &r.counts;
        assert_eq!(
            (c.total, c.running, c.exited, c.listed),
            (60, 1, 59, Some(50))
        );
        assert_eq!(r.jobs[0].job, "box/000003");
        assert_eq!(r.jobs[1].job, "box/00003b");
        assert_eq!(r.jobs[0].command.chars().count(), COMMAND_CHARS);
        let v = serde_json::to_value(&r).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["counts", "jobs"]);
        assert_eq!(v["counts"]["lost"], 0);
        assert_eq!(v["jobs"][0]["last_line"], "epoch 3/10");
        assert_eq!(v["jobs"][0]["started"], "2023-11-14T22:13:23Z");
        assert!(v["jobs"][1].get("last_line").is_none());
        let t = r.text();
        assert!(
            t.starts_with("60 jobs: 1 running, 59 exited (the 50 most recent listed"),
            "{t}"
        );
        assert!(
            t.contains("\nbox/000003  running  1 min 37 s (box, started"),
            "{t}"
        );
        assert!(t.contains("\n    last output: epoch 3/10"), "{t}");
        assert_eq!(JobsResult::new(Vec::new(), None, 0).text(), "no jobs");
    }
}
