//! The Jobs service: protobuf ↔ `jobs.rs`, with the policy check and the audit records.

use std::time::Duration;

use mcp_ssh_proto::pb::{self, job_output_event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Service, authorize, check_command, command_record, peer};
use crate::audit::Record;
use crate::error::Error;
use crate::jobs::{Heartbeat, JobRecord, JobState, OutputAsk};
use crate::ssh::job::{Window, WindowAsk};

/// The longest wait one `Output` call may ask for.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The largest window of one stream in one `Output` answer, and the largest head: both streams'
/// windows and heads together stay well within a gRPC message (4 MiB by default, beyond which
/// clients refuse it). Larger asks are capped; the window says where to continue.
const MAX_WINDOW: u64 = crate::config::HARD_MAX_OUTPUT_BYTES;
const MAX_HEAD: u64 = MAX_WINDOW / 2;

fn state(s: JobState) -> pb::JobState {
    match s {
        JobState::Running => pb::JobState::Running,
        JobState::Exited => pb::JobState::Exited,
        JobState::Killed => pb::JobState::Killed,
        JobState::Lost => pb::JobState::Lost,
    }
}

pub(super) fn job_info(r: JobRecord) -> pb::JobInfo {
    pb::JobInfo {
        state: state(r.state) as i32,
        id: r.id,
        host: r.host,
        command: r.command,
        cwd: r.cwd,
        exit_code: r.exit_code,
        signal: r.signal.unwrap_or_default(),
        started_at_unix_ms: r.started_at_ms,
        ended_at_unix_ms: r.ended_at_ms.unwrap_or(0),
        stdout_bytes: r.stdout_bytes,
        stderr_bytes: r.stderr_bytes,
        last_line: r.last_line,
        checked_at_unix_ms: r.checked_at_ms,
        stale_reason: r.stale_reason.unwrap_or_default(),
        note: r.note.unwrap_or_default(),
        started_by: r.started_by,
        remote_dir: r.dir,
    }
}

fn window(w: Window, total: u64) -> pb::OutputWindow {
    pb::OutputWindow {
        offset: w.offset,
        data: w.data,
        total,
        head: w.head,
    }
}

/// "TERM", "sigterm", "int", … → the signal name the kill script sends.
fn kill_signal(text: &str) -> Result<&'static str, Error> {
    let upper = text.trim().to_ascii_uppercase();
    match upper.strip_prefix("SIG").unwrap_or(&upper) {
        "" | "TERM" => Ok("TERM"),
        "INT" => Ok("INT"),
        "KILL" => Ok("KILL"),
        _ => Err(Error::InvalidArgument(format!(
            "signal {text:?} is not one of TERM, INT, KILL"
        ))),
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Service {
    async fn start(
        &self,
        req: Request<pb::JobStartRequest>,
    ) -> Result<Response<pb::JobStartReply>, Status> {
        self.refuse_when_shutting_down()?;
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let req = req.into_inner();
        let host = self.registry.host(&req.host)?;
        check_command(&req.command, &req.cwd)?;
        let config = host.config();
        let audit = self.registry.audit.clone();
        let record = |action, outcome| Record {
            action,
            outcome,
            ..command_record(&config, &caller, &req.command, &req.cwd)
        };
        let command = authorize(&audit, &config, &req.command, record("job", "refused"))?;
        let _in_flight = self.registry.call_started();
        match self
            .jobs
            .start(&caller, &host, &req.command, &command, &req.cwd)
            .await
        {
            Ok(job) => {
                audit.record(Record {
                    job: Some(job.id.clone()),
                    ..record("job_started", "started")
                });
                Ok(Response::new(pb::JobStartReply {
                    job: Some(job_info(job)),
                }))
            }
            Err(e) => {
                audit.record(Record {
                    error: Some(e.to_string()),
                    ..record("job_started", "error")
                });
                Err(e.into())
            }
        }
    }

    type OutputStream = ReceiverStream<Result<pb::JobOutputEvent, Status>>;

    async fn output(
        &self,
        req: Request<pb::JobOutputRequest>,
    ) -> Result<Response<Self::OutputStream>, Status> {
        self.refuse_when_shutting_down()?;
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let req = req.into_inner();
        let until = match req.until.trim() {
            "" => None,
            pattern => Some(regex::Regex::new(pattern).map_err(|e| {
                Error::InvalidArgument(format!("`until` is not a valid regular expression: {e}"))
            })?),
        };
        let max = match req.max_bytes {
            0 => self.registry.settings().max_output_bytes,
            n => n,
        };
        let ask = OutputAsk {
            windows: [req.stdout_offset, req.stderr_offset].map(|offset| WindowAsk {
                offset,
                max: u64::from(max).min(MAX_WINDOW),
                head: u64::from(req.head_bytes).min(MAX_HEAD),
            }),
            wait: Duration::from_millis(req.wait_ms).min(MAX_WAIT),
            until,
        };
        let jobs = self.jobs.clone();
        let in_flight = self.registry.call_started();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let beats = tx.clone();
            let heartbeat = move |b: Heartbeat| {
                let event = pb::JobOutputEvent {
                    event: Some(job_output_event::Event::Heartbeat(pb::JobHeartbeat {
                        waited_ms: crate::registry::millis(b.waited),
                        stdout_bytes: b.stdout_bytes,
                        stderr_bytes: b.stderr_bytes,
                        last_line: b.last_line,
                    })),
                };
                // A full queue only skips a beat; a closed one means the caller went away.
                !matches!(
                    beats.try_send(Ok(event)),
                    Err(mpsc::error::TrySendError::Closed(_))
                )
            };
            let answer = jobs.output(&caller, &req.job, ask, heartbeat).await;
            let last = answer.map_err(Status::from).map(|a| {
                let [out, err] = a.windows;
                let (stdout_total, stderr_total) = (a.job.stdout_bytes, a.job.stderr_bytes);
                pb::JobOutputEvent {
                    event: Some(job_output_event::Event::Output(pb::JobOutput {
                        job: Some(job_info(a.job)),
                        stdout: Some(window(out, stdout_total)),
                        stderr: Some(window(err, stderr_total)),
                        matched_line: a.matched_line.unwrap_or_default(),
                        waited_ms: crate::registry::millis(a.waited),
                    })),
                }
            });
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn kill(
        &self,
        req: Request<pb::JobKillRequest>,
    ) -> Result<Response<pb::JobKillReply>, Status> {
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let req = req.into_inner();
        let signal = kill_signal(&req.signal)?;
        let _in_flight = self.registry.call_started();
        let result = self.jobs.kill(&caller, &req.job, signal).await;
        let (host, command) = match &result {
            Ok(r) => (Some(r.job.host.clone()), Some(r.job.command.clone())),
            Err(_) => (None, None),
        };
        self.registry.audit.record(Record {
            action: "job_killed",
            outcome: match &result {
                Ok(r) if r.confirmed => "ok",
                Ok(_) => "unconfirmed",
                Err(_) => "error",
            },
            host,
            command,
            job: Some(req.job.clone()),
            client: caller,
            signal: Some(signal.to_string()),
            error: result.as_ref().err().map(ToString::to_string),
            ..Record::default()
        });
        let report = result?;
        Ok(Response::new(pb::JobKillReply {
            job: Some(job_info(report.job)),
            confirmed: report.confirmed,
            outcome: report.outcome,
        }))
    }

    async fn list(
        &self,
        req: Request<pb::JobListRequest>,
    ) -> Result<Response<pb::JobListReply>, Status> {
        let req = req.into_inner();
        let wanted = match pb::JobState::try_from(req.state).unwrap_or_default() {
            pb::JobState::Unspecified => None,
            pb::JobState::Running => Some(JobState::Running),
            pb::JobState::Exited => Some(JobState::Exited),
            pb::JobState::Killed => Some(JobState::Killed),
            pb::JobState::Lost => Some(JobState::Lost),
        };
        let host = (!req.host.is_empty()).then_some(req.host.as_str());
        if let Some(name) = host {
            // An unknown host is a mistake worth naming, unless it still has jobs on record.
            if self.registry.host(name).is_err() && !self.jobs.knows_host(name) {
                self.registry.host(name)?;
            }
        }
        let jobs = self.jobs.list(host, wanted).await;
        Ok(Response::new(pb::JobListReply {
            jobs: jobs.into_iter().map(job_info).collect(),
        }))
    }

    async fn forget(
        &self,
        req: Request<pb::JobForgetRequest>,
    ) -> Result<Response<pb::JobForgetReply>, Status> {
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let id = req.into_inner().job;
        let result = self.jobs.forget(&caller, &id).await;
        self.registry.audit.record(Record {
            action: "job_forgotten",
            outcome: if result.is_ok() { "ok" } else { "error" },
            job: Some(id),
            client: caller,
            error: result.as_ref().err().map(ToString::to_string),
            ..Record::default()
        });
        Ok(Response::new(pb::JobForgetReply {
            removed_remote: result?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_signals_should_be_read_loosely_and_checked() {
        assert_eq!(kill_signal("").ok(), Some("TERM"));
        assert_eq!(kill_signal("sigint").ok(), Some("INT"));
        assert_eq!(kill_signal(" KILL ").ok(), Some("KILL"));
        assert!(kill_signal("HUP").is_err());
    }
}
