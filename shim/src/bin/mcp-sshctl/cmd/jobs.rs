//! Jobs, commands supervised on their host that outlive the call: `jobs` (the list), `job start`,
//! `job logs` (bounded windows at offsets; `--follow` like `tail -f`), `job kill`, `job forget`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mcp_ssh_proto::pb::{self, job_output_event};
use mcp_ssh_shim::client::{ClientError, DaemonClient};
use serde_json::json;

use super::Ctx;
use super::exec::{exit_code, signal_exit};
use crate::output::{TextTable, ago, fail, first_line, human_duration, non_empty, since_ms};
use crate::{EXIT_ERROR, EXIT_REMOTE_FAILURE, EXIT_USAGE};

/// Bytes of output one Jobs.Output call asks for: a bounded window, never the whole file.
const WINDOW: u32 = 1 << 20;
/// How long one `--follow` round waits for the job to end or write (the daemon sends
/// heartbeats meanwhile).
const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// Between rounds while the host cannot be reached.
const RETRY_AFTER: Duration = Duration::from_secs(5);

pub async fn list(
    ctx: &Ctx,
    host: Option<String>,
    state: Option<pb::JobState>,
) -> Result<ExitCode, ClientError> {
    let client = jobs_client(ctx).await?;
    let request = pb::JobListRequest {
        host: host.clone().unwrap_or_default(),
        state: state.unwrap_or(pb::JobState::Unspecified) as i32,
    };
    let jobs = client
        .jobs()
        .list(request)
        .await
        .map_err(|s| rpc_error(&client, s))?
        .into_inner()
        .jobs;
    if ctx.json {
        println!(
            "{:#}",
            serde_json::Value::Array(jobs.iter().map(job_json).collect())
        );
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        let mut what = String::from("no jobs");
        if let Some(state) = state {
            what.push_str(&format!(" {}", state_name(state as i32)));
        }
        if let Some(host) = host {
            what.push_str(&format!(" on {host}"));
        }
        println!("{what}");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", job_table(&jobs));
    Ok(ExitCode::SUCCESS)
}

fn job_table(jobs: &[pb::JobInfo]) -> String {
    let mut table = TextTable::new(
        &[
            "ID",
            "HOST",
            "STATE",
            "STARTED",
            "DURATION",
            "EXIT",
            "COMMAND",
            "LAST LINE",
        ],
        &[6, 7],
    );
    let mut notes = Vec::new();
    for job in jobs {
        let mut state = state_name(job.state).to_string();
        if !job.stale_reason.is_empty() {
            state.push('*');
            notes.push(format!(
                "{}: * last known state ({})",
                job.id,
                first_line(&job.stale_reason, 200)
            ));
        }
        if !job.note.is_empty() {
            notes.push(format!("{}: {}", job.id, first_line(&job.note, 300)));
        }
        table.row(vec![
            job.id.clone(),
            job.host.clone(),
            state,
            ago(job.started_at_unix_ms),
            duration(job),
            exit_text(job),
            first_line(&job.command, 40),
            first_line(&job.last_line, 120),
        ]);
    }
    let mut out = table.render();
    for note in notes {
        out.push_str(&note);
        out.push('\n');
    }
    out
}

/// How long the job ran (or has been running).
fn duration(job: &pb::JobInfo) -> String {
    if job.started_at_unix_ms <= 0 {
        return "-".into();
    }
    if job.state == pb::JobState::Running as i32 {
        return human_duration(since_ms(job.started_at_unix_ms));
    }
    if job.ended_at_unix_ms <= 0 {
        return "-".into();
    }
    let ms = job.ended_at_unix_ms.saturating_sub(job.started_at_unix_ms);
    human_duration(u64::try_from(ms).unwrap_or(0))
}

/// The EXIT column: the code (with the signal a shell's 128+N names), the signal that killed it.
fn exit_text(job: &pb::JobInfo) -> String {
    match (pb::JobState::try_from(job.state), job.exit_code) {
        (Ok(pb::JobState::Exited), Some(code)) if !job.signal.is_empty() => {
            format!("{code} ({})", job.signal)
        }
        (Ok(pb::JobState::Exited), Some(code)) => code.to_string(),
        (Ok(pb::JobState::Killed), _) if !job.signal.is_empty() => job.signal.clone(),
        (Ok(pb::JobState::Running), _) => String::new(),
        _ => "-".into(),
    }
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Exited) => "exited",
        Ok(pb::JobState::Killed) => "killed",
        Ok(pb::JobState::Lost) => "lost",
        _ => "unknown",
    }
}

/// A job as JSON: JobInfo's fields by their protobuf names, the state by name, unset strings
/// and times as null.
fn job_json(job: &pb::JobInfo) -> serde_json::Value {
    let time = |ms: i64| (ms > 0).then_some(ms);
    json!({
        "id": job.id, "host": job.host, "command": job.command, "cwd": non_empty(&job.cwd),
        "state": state_name(job.state), "exit_code": job.exit_code,
        "signal": non_empty(&job.signal),
        "started_at_unix_ms": time(job.started_at_unix_ms),
        "ended_at_unix_ms": time(job.ended_at_unix_ms),
        "stdout_bytes": job.stdout_bytes, "stderr_bytes": job.stderr_bytes,
        "last_line": non_empty(&job.last_line),
        "checked_at_unix_ms": time(job.checked_at_unix_ms),
        "stale_reason": non_empty(&job.stale_reason), "note": non_empty(&job.note),
        "started_by": non_empty(&job.started_by), "remote_dir": non_empty(&job.remote_dir),
    })
}

pub async fn start(
    ctx: &Ctx,
    host: String,
    cwd: Option<String>,
    command: String,
) -> Result<ExitCode, ClientError> {
    let client = jobs_client(ctx).await?;
    let reply = client
        .jobs()
        .start(pb::JobStartRequest {
            host,
            command,
            cwd: cwd.unwrap_or_default(),
        })
        .await
        .map_err(|s| rpc_error(&client, s))?
        .into_inner();
    let Some(job) = reply.job else {
        fail(
            ctx.json,
            "the daemon started the job but did not say which one",
        );
        return Ok(ExitCode::from(EXIT_ERROR));
    };
    if ctx.json {
        println!("{:#}", job_json(&job));
    } else {
        // The id alone on stdout, for `ID=$(mcp-sshctl job start …)`; the hint for people.
        println!("{}", job.id);
        if std::io::stderr().is_terminal() {
            eprintln!("follow it with: mcp-sshctl job logs --follow {}", job.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn kill(ctx: &Ctx, id: String, signal: &str) -> Result<ExitCode, ClientError> {
    let client = jobs_client(ctx).await?;
    let reply = client
        .jobs()
        .kill(pb::JobKillRequest {
            job: id.clone(),
            signal: signal.into(),
        })
        .await
        .map_err(|s| rpc_error(&client, s))?
        .into_inner();
    if ctx.json {
        println!(
            "{:#}",
            json!({
                "job": reply.job.as_ref().map(job_json), "confirmed": reply.confirmed,
                "outcome": reply.outcome,
            })
        );
    } else if reply.confirmed {
        println!("{id}: {}", reply.outcome);
    } else {
        println!(
            "{id}: {} (not confirmed: its processes may still run)",
            reply.outcome
        );
    }
    Ok(if reply.confirmed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}

pub async fn forget(ctx: &Ctx, id: String) -> Result<ExitCode, ClientError> {
    let client = jobs_client(ctx).await?;
    let reply = client
        .jobs()
        .forget(pb::JobForgetRequest { job: id.clone() })
        .await
        .map_err(|s| rpc_error(&client, s))?
        .into_inner();
    if ctx.json {
        println!(
            "{:#}",
            json!({ "job": id, "removed_remote": reply.removed_remote })
        );
    } else if reply.removed_remote {
        println!("forgot {id} (its directory on the host is removed)");
    } else {
        let host = id.split_once('/').map_or("the host", |(host, _)| host);
        println!(
            "forgot {id}; its directory on {host} is removed once {host} can be reached again"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Which stream `job logs` prints, and where it is.
struct Reader {
    stderr: bool,
    /// Offset of the next byte of the printed stream.
    offset: u64,
    /// Where to read the other stream from: its end as last seen (so its windows stay empty),
    /// unknown before the first reply.
    other: Option<u64>,
}

impl Reader {
    fn request(&self, job: &str, wait: Option<Duration>) -> pb::JobOutputRequest {
        let (stdout_offset, stderr_offset) = if self.stderr {
            (self.other, Some(self.offset))
        } else {
            (Some(self.offset), self.other)
        };
        pb::JobOutputRequest {
            job: job.into(),
            stdout_offset,
            stderr_offset,
            max_bytes: WINDOW,
            head_bytes: 0,
            wait_ms: wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            // Any new line ends the wait at once, so following is prompt.
            until: if wait.is_some() {
                "^".into()
            } else {
                String::new()
            },
        }
    }

    /// The bytes of our stream in the heartbeat's count.
    fn grew(&self, beat: &pb::JobHeartbeat) -> bool {
        let total = if self.stderr {
            beat.stderr_bytes
        } else {
            beat.stdout_bytes
        };
        total > self.offset
    }

    /// Takes a reply: returns our stream's window (data and the stream's size then).
    fn take(&mut self, output: pb::JobOutput) -> (Option<pb::JobInfo>, pb::OutputWindow) {
        let (ours, other) = if self.stderr {
            (output.stderr, output.stdout)
        } else {
            (output.stdout, output.stderr)
        };
        if let Some(other) = other {
            let end = other.offset + other.data.len() as u64;
            self.other = Some(end.max(other.total));
        }
        (output.job, ours.unwrap_or_default())
    }
}

/// Prints a job's stdout (or stderr) from its first byte, window by window; with `follow`,
/// keeps printing what it writes until it ends, then exits with its exit code.
pub async fn logs(
    ctx: &Ctx,
    id: String,
    follow: bool,
    stderr: bool,
) -> Result<ExitCode, ClientError> {
    if ctx.json && follow {
        fail(
            true,
            "--follow writes the output as it comes, not as JSON; drop --json or --follow",
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let client = jobs_client(ctx).await?;
    let mut jobs = client.jobs();
    let mut reader = Reader {
        stderr,
        offset: 0,
        other: None,
    };
    let mut collected = Vec::new();
    let mut stdout = std::io::stdout();
    let mut wait = false;
    let mut seen_end = false;
    let mut said_stale = false;
    let mut unreachable = false;
    loop {
        let asked = Instant::now();
        let request = reader.request(&id, wait.then_some(FOLLOW_WAIT));
        let output = match read_once(&mut jobs, request, &reader).await {
            Ok(Some(output)) => output,
            // New output arrived during the wait: read it now.
            Ok(None) => {
                wait = false;
                continue;
            }
            Err(status) if follow && status.code() == tonic::Code::Unavailable => {
                if !unreachable {
                    eprintln!(
                        "mcp-sshctl: {} (trying again every {} s)",
                        status.message(),
                        RETRY_AFTER.as_secs()
                    );
                    unreachable = true;
                }
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
            Err(status) => return Err(rpc_error(&client, status)),
        };
        unreachable = false;
        let (job, window) = reader.take(output);
        let Some(job) = job else {
            fail(ctx.json, "the daemon answered without the job's state");
            return Ok(ExitCode::from(EXIT_ERROR));
        };
        if window.offset > reader.offset {
            eprintln!(
                "mcp-sshctl: {} byte(s) of output at offset {} are no longer available",
                window.offset - reader.offset,
                reader.offset
            );
        }
        if !window.data.is_empty() {
            if ctx.json {
                collected.extend_from_slice(&window.data);
            } else if let Err(e) = stdout.write_all(&window.data).and_then(|()| stdout.flush()) {
                // A closed pipe (`| head`) ends the reading quietly, as `tail` does.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                fail(false, &format!("cannot write the output: {e}"));
                return Ok(ExitCode::from(EXIT_ERROR));
            }
        }
        reader.offset = window.offset + window.data.len() as u64;
        if !job.stale_reason.is_empty() && !said_stale {
            eprintln!(
                "mcp-sshctl: {}: last known state, the host cannot be asked now ({})",
                job.id, job.stale_reason
            );
            said_stale = true;
        }
        let caught_up = reader.offset >= window.total;
        let running = job.state == pb::JobState::Running as i32;
        if !caught_up {
            wait = false;
            continue;
        }
        if !follow {
            return Ok(finish_json(ctx, &job, stderr, &collected));
        }
        if !running {
            // Once more after the end was first seen: output written just before it is read.
            if seen_end {
                return Ok(job_exit(&job));
            }
            seen_end = true;
            wait = false;
            continue;
        }
        // A wait that came back at once with nothing new: do not spin.
        if wait && asked.elapsed() < Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        wait = true;
    }
}

/// One Jobs.Output call. `Ok(None)`: a heartbeat said our stream grew, so the wait was cut
/// short (dropping the stream cancels the call).
async fn read_once(
    jobs: &mut pb::jobs_client::JobsClient<tonic::transport::Channel>,
    request: pb::JobOutputRequest,
    reader: &Reader,
) -> Result<Option<pb::JobOutput>, tonic::Status> {
    let waiting = request.wait_ms > 0;
    let mut stream = jobs.output(request).await?.into_inner();
    loop {
        match stream.message().await? {
            Some(pb::JobOutputEvent {
                event: Some(job_output_event::Event::Output(output)),
            }) => return Ok(Some(output)),
            Some(pb::JobOutputEvent {
                event: Some(job_output_event::Event::Heartbeat(beat)),
            }) if waiting && reader.grew(&beat) => return Ok(None),
            Some(_) => {}
            None => {
                return Err(tonic::Status::unknown(
                    "the daemon ended the output call without the output",
                ));
            }
        }
    }
}

fn finish_json(ctx: &Ctx, job: &pb::JobInfo, stderr: bool, collected: &[u8]) -> ExitCode {
    if ctx.json {
        let text = String::from_utf8_lossy(collected);
        println!(
            "{:#}",
            json!({
                "job": job_json(job), "stream": if stderr { "stderr" } else { "stdout" },
                "bytes": collected.len(),
                "lossy_utf8": matches!(text, std::borrow::Cow::Owned(_)),
                "output": text,
            })
        );
    }
    ExitCode::SUCCESS
}

/// A finished job's exit code as ours, as `exec` gives a command's: its code, 128 + N for a
/// signal, 255 when it was lost.
fn job_exit(job: &pb::JobInfo) -> ExitCode {
    match (pb::JobState::try_from(job.state), job.exit_code) {
        (Ok(pb::JobState::Exited), Some(code)) => exit_code(code),
        (Ok(pb::JobState::Exited), None) => {
            eprintln!("mcp-sshctl: job {} ended without an exit code", job.id);
            ExitCode::from(EXIT_REMOTE_FAILURE)
        }
        (Ok(pb::JobState::Killed), _) => {
            eprintln!("mcp-sshctl: job {} was killed by {}", job.id, job.signal);
            signal_exit(&job.signal)
        }
        _ => {
            let why = if job.note.is_empty() {
                "its processes are gone without an exit code".to_string()
            } else {
                job.note.clone()
            };
            eprintln!("mcp-sshctl: job {} was lost: {why}", job.id);
            ExitCode::from(EXIT_REMOTE_FAILURE)
        }
    }
}

/// Connects (starting the daemon if needed: a new daemon lists the jobs of the last one) and
/// checks that this daemon serves jobs at all.
async fn jobs_client(ctx: &Ctx) -> Result<DaemonClient, ClientError> {
    let client = ctx.connect_or_start().await?;
    if !client.hello.capabilities.iter().any(|c| c == "jobs") {
        return Err(no_jobs(&client));
    }
    Ok(client)
}

fn rpc_error(client: &DaemonClient, status: tonic::Status) -> ClientError {
    if status.code() == tonic::Code::Unimplemented {
        return no_jobs(client);
    }
    ClientError::Rpc(status)
}

fn no_jobs(client: &DaemonClient) -> ClientError {
    ClientError::Rpc(tonic::Status::unimplemented(format!(
        "the running mcp-sshd {} (pid {}) does not serve jobs; mcp-sshctl stop, then run again to start the current one",
        client.hello.daemon_version, client.hello.daemon_pid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::JobState) -> pb::JobInfo {
        pb::JobInfo {
            id: "box/7f3a2c".into(),
            host: "box".into(),
            command: "python train.py --epochs 100 --lr 0.001 --data /datasets/imagenet".into(),
            state: state as i32,
            started_at_unix_ms: 1,
            ended_at_unix_ms: 3_601,
            last_line: "epoch 3/100 loss 0.41".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_exit_column_says_how_a_job_ended() {
        let mut exited = job(pb::JobState::Exited);
        exited.exit_code = Some(0);
        assert_eq!(exit_text(&exited), "0");
        exited.exit_code = Some(137);
        exited.signal = "KILL".into();
        assert_eq!(exit_text(&exited), "137 (KILL)");
        let mut killed = job(pb::JobState::Killed);
        killed.signal = "TERM".into();
        assert_eq!(exit_text(&killed), "TERM");
        assert_eq!(exit_text(&job(pb::JobState::Lost)), "-");
        assert_eq!(exit_text(&job(pb::JobState::Running)), "");
        assert_eq!(duration(&exited), "3s");
    }

    #[test]
    fn the_other_stream_is_read_from_its_end() {
        let mut reader = Reader {
            stderr: false,
            offset: 0,
            other: None,
        };
        let first = reader.request("box/1", None);
        assert_eq!((first.stdout_offset, first.stderr_offset), (Some(0), None));
        let (_, window) = reader.take(pb::JobOutput {
            stdout: Some(pb::OutputWindow {
                offset: 0,
                data: b"abc".to_vec(),
                total: 10,
                head: vec![],
            }),
            stderr: Some(pb::OutputWindow {
                offset: 90,
                data: vec![b'e'; 10],
                total: 100,
                head: vec![],
            }),
            ..Default::default()
        });
        reader.offset = window.offset + window.data.len() as u64;
        let next = reader.request("box/1", Some(FOLLOW_WAIT));
        assert_eq!(
            (next.stdout_offset, next.stderr_offset, next.wait_ms),
            (Some(3), Some(100), 30_000)
        );
        assert!(next.max_bytes > 0);
    }

    #[test]
    fn a_job_table_keeps_one_line_per_job_and_notes_below() {
        let mut stale = job(pb::JobState::Running);
        stale.stale_reason = "connect timed out".into();
        let text = job_table(&[job(pb::JobState::Lost), stale]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(lines[1].starts_with("box/7f3a2c  box   lost "), "{text}");
        assert!(lines[2].contains("running*"), "{text}");
        assert!(
            lines[1].contains("python train.py --epochs 100 --lr 0.001…"),
            "{text}"
        );
        assert!(
            lines[3].contains("last known state (connect timed out)"),
            "{text}"
        );
    }
}
