//! The Exec service: `Run` (one command on one host) and `RunMany` (one command on many hosts,
//! `fanout` at a time). Every host's command passes the same policy check and leaves the same
//! audit records, whichever way it came.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mcp_ssh_proto::pb::{self, run_event, run_many_event};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Service, peer};
use crate::audit::{Audit, BatchRef, ClientRef, Record};
use crate::config::HostConfig;
use crate::error::Error;
use crate::registry::{HostEntry, Registry, millis};
use crate::ssh::{ExecRequest, Output, SshError};

/// Events of one host's command: Started, output, then Exit (or the error that ended it).
type RunSender = mpsc::Sender<Result<pb::RunEvent, Status>>;

/// One command on one host, checked and audited as started, ready to run.
struct Prepared {
    host: Arc<HostEntry>,
    caller: Option<ClientRef>,
    exec: ExecRequest,
    /// The audit record the end of the command completes.
    finished: Record,
    conn_id: Option<u64>,
}

/// What a caller asks of one host.
struct Ask<'a> {
    command: &'a str,
    cwd: &'a str,
    timeout_secs: u32,
    batch: Option<BatchRef>,
    fanout: Option<String>,
}

impl Service {
    /// The policy check and the `command_started` record; a refusal is audited and returned.
    fn prepare(
        &self,
        host: Arc<HostEntry>,
        caller: &Option<ClientRef>,
        conn_id: Option<u64>,
        ask: Ask<'_>,
    ) -> Result<Prepared, Status> {
        // One view of the host's settings for the whole call, even if a reload lands meanwhile.
        let config = host.config();
        let audit = &self.registry.audit;
        let record = |action, outcome| Record {
            action,
            outcome,
            batch: ask.batch.clone(),
            fanout: ask.fanout.clone(),
            ..command_record(&config, caller, ask.command, ask.cwd)
        };
        let command = authorize(audit, &config, ask.command, record("command", "refused"))?;
        tracing::debug!(host = %config.name, command = %audit.scrub(&command), "exec");
        audit.record(record("command_started", "started"));
        let idle_timeout = match ask.timeout_secs {
            0 => config.command_timeout,
            secs => Duration::from_secs(u64::from(secs)),
        };
        Ok(Prepared {
            host,
            caller: caller.clone(),
            exec: ExecRequest {
                command,
                cwd: (!ask.cwd.is_empty()).then(|| ask.cwd.to_string()),
                idle_timeout,
            },
            finished: record("command_finished", "ok"),
            conn_id,
        })
    }
}

/// Runs a prepared command, sending its events to `tx` (the last one its exit, or the error
/// status), and audits how it ended. Returns the error, if any, for callers that fold them.
async fn execute(registry: &Arc<Registry>, p: Prepared, tx: &RunSender) -> Option<Error> {
    let _in_flight = registry.call_started();
    let shutdown = registry.shutdown_now.clone();
    let started = std::time::Instant::now();
    let (result, bytes) = forward_exec(&p.host, &p.caller, &p.exec, &shutdown, tx).await;
    let mut finished = Record {
        bytes: Some(bytes),
        duration_ms: Some(millis(started.elapsed())),
        ..p.finished
    };
    let (last, error) = match result {
        Ok(outcome) => {
            finished.exit_code = outcome.code;
            finished.signal = outcome.signal.clone();
            let exit = pb::Exit {
                code: outcome.code,
                signal: outcome.signal.unwrap_or_default(),
                core_dumped: outcome.core_dumped,
                duration_ms: millis(outcome.duration),
            };
            let event = pb::RunEvent {
                event: Some(run_event::Event::Exit(exit)),
            };
            (Ok(event), None)
        }
        Err(e) => {
            finished.outcome = "error";
            finished.error = Some(e.to_string());
            if let Error::Ssh(ssh) = &e
                && let SshError::Cancelled { stop, .. } = ssh.as_ref()
            {
                // The stream ends the same way when the client cancels the call and when the
                // client itself is gone; its socket connection tells them apart.
                finished.outcome = "cancelled";
                let client = p.conn_id.and_then(|id| registry.client_for_connection(id));
                finished.error = Some(match client {
                    Some(c) => format!("cancelled by {} (pid {}): {stop}", c.name, c.pid),
                    None if shutdown.is_cancelled() => {
                        format!("stopped: mcp-sshd is shutting down: {stop}")
                    }
                    None => format!("the client disconnected during the call: {stop}"),
                });
            }
            let status = Status::new(e.code(), e.to_string());
            (Err(status), Some(e))
        }
    };
    registry.audit.record(finished);
    let _ = tx.send(last).await;
    error
}

#[tonic::async_trait]
impl pb::exec_server::Exec for Service {
    type RunStream = ReceiverStream<Result<pb::RunEvent, Status>>;
    type RunManyStream = ReceiverStream<Result<pb::RunManyEvent, Status>>;

    async fn run(&self, req: Request<pb::RunRequest>) -> Result<Response<Self::RunStream>, Status> {
        self.refuse_when_shutting_down()?;
        let conn_id = peer(&req).map(|p| p.conn_id);
        let caller = self.registry.caller(conn_id);
        let req = req.into_inner();
        let host = self.registry.host(&req.host)?;
        check_command(&req.command, &req.cwd)?;
        let batch = req.batch.map(|b| BatchRef {
            id: b.id,
            index: b.index,
            size: b.size,
        });
        let ask = Ask {
            command: &req.command,
            cwd: &req.cwd,
            timeout_secs: req.timeout_secs,
            batch,
            fanout: None,
        };
        let prepared = self.prepare(host, &caller, conn_id, ask)?;
        let (tx, rx) = mpsc::channel(32);
        let registry = self.registry.clone();
        tokio::spawn(async move { execute(&registry, prepared, &tx).await });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn run_many(
        &self,
        req: Request<pb::RunManyRequest>,
    ) -> Result<Response<Self::RunManyStream>, Status> {
        self.refuse_when_shutting_down()?;
        let conn_id = peer(&req).map(|p| p.conn_id);
        let caller = self.registry.caller(conn_id);
        let req = req.into_inner();
        check_command(&req.command, &req.cwd)?;
        let settings = self.registry.settings();
        let hosts = settings
            .groups
            .targets(&req.targets, &settings.host_order)
            .map_err(Error::InvalidArgument)?;
        let entries = hosts
            .iter()
            .map(|name| self.registry.host(name))
            .collect::<Result<Vec<_>, Error>>()?;
        let fanout_id = fanout_id();
        let (tx, rx) = mpsc::channel(64);
        let resolved = pb::RunManyEvent {
            index: 0,
            event: Some(run_many_event::Event::Resolved(pb::Resolved {
                hosts,
                fanout_id: fanout_id.clone(),
                fanout: settings.fanout,
            })),
        };
        let _ = tx.try_send(Ok(resolved));
        let room = Arc::new(Semaphore::new(settings.fanout as usize));
        let failed = Arc::new(AtomicBool::new(false));
        let req = Arc::new(req);
        let service = self.clone();
        // Hosts start in the order asked, `fanout` at a time.
        tokio::spawn(async move {
            for (index, host) in (0u32..).zip(entries) {
                let Ok(permit) = room.clone().acquire_owned().await else {
                    return;
                };
                if tx.is_closed() {
                    return;
                }
                if req.stop_on_error && failed.load(Ordering::Relaxed) {
                    let why = "stop_on_error: another host failed first".to_string();
                    let event = pb::RunManyEvent {
                        index,
                        event: Some(run_many_event::Event::NotRun(why)),
                    };
                    let _ = tx.send(Ok(event)).await;
                    continue;
                }
                let (service, tx, failed, req) =
                    (service.clone(), tx.clone(), failed.clone(), req.clone());
                let (caller, fanout_id) = (caller.clone(), fanout_id.clone());
                tokio::spawn(async move {
                    let config = host.config();
                    let ask = Ask {
                        command: &req.command,
                        cwd: &req.cwd,
                        timeout_secs: req.timeout_secs,
                        batch: None,
                        fanout: Some(fanout_id),
                    };
                    let ok = match service.prepare(host, &caller, conn_id, ask) {
                        Ok(prepared) => {
                            relay(&service.registry, prepared, &config, index, &tx).await
                        }
                        Err(status) => {
                            let event = pb::RunManyEvent {
                                index,
                                event: Some(run_many_event::Event::Failed(failure(
                                    "refused",
                                    status.message(),
                                    &config,
                                ))),
                            };
                            let _ = tx.send(Ok(event)).await;
                            false
                        }
                    };
                    if !ok {
                        failed.store(true, Ordering::Relaxed);
                    }
                    // Only now may the next host start: after `failed` tells how this one went.
                    drop(permit);
                });
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs one host's command of a `RunMany`, passing its events on tagged with `index`. When the
/// caller drops the stream, this host's channel closes and its command is stopped. True when
/// the command exited 0.
async fn relay(
    registry: &Arc<Registry>,
    prepared: Prepared,
    config: &HostConfig,
    index: u32,
    out: &mpsc::Sender<Result<pb::RunManyEvent, Status>>,
) -> bool {
    let (tx, mut rx) = mpsc::channel(32);
    let registry = registry.clone();
    let run = tokio::spawn(async move { execute(&registry, prepared, &tx).await });
    let tagged = |event| pb::RunManyEvent {
        index,
        event: Some(event),
    };
    let (mut ok, mut ended_with, mut caller_gone) = (false, None, false);
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            // A quiet command sends nothing to notice a caller gone by: watch for it.
            () = out.closed(), if !caller_gone => {
                caller_gone = true;
                // Closing our end stops the command; its last events still arrive.
                rx.close();
                continue;
            }
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(pb::RunEvent { event: Some(e) }) => match e {
                run_event::Event::Started(s) => run_many_event::Event::Started(s),
                run_event::Event::Stdout(d) => run_many_event::Event::Stdout(d),
                run_event::Event::Stderr(d) => run_many_event::Event::Stderr(d),
                run_event::Event::Exit(exit) => {
                    ok = exit.code == Some(0);
                    run_many_event::Event::Exit(exit)
                }
            },
            Ok(pb::RunEvent { event: None }) => continue,
            // The last event: sent once the error's kind is known, below.
            Err(status) => {
                ended_with = Some(status);
                continue;
            }
        };
        if !caller_gone && out.send(Ok(tagged(event))).await.is_err() {
            caller_gone = true;
            rx.close();
        }
    }
    let error = run.await.ok().flatten();
    if let Some(status) = ended_with {
        let kind = error.as_ref().map_or("error", Error::kind);
        let failed = failure(kind, status.message(), config);
        let _ = out
            .send(Ok(tagged(run_many_event::Event::Failed(failed))))
            .await;
    }
    ok
}

/// A host's failure, with its reason stripped of the host's name and address.
fn failure(kind: &str, message: &str, config: &HostConfig) -> pb::HostFailure {
    let reason = message
        .replace(&config.target(), "the host")
        .replace(&format!("{}:{}", config.hostname, config.port), "the host")
        .replace(&format!("host {}", config.name), "the host");
    pb::HostFailure {
        kind: kind.to_string(),
        message: message.to_string(),
        reason,
    }
}

/// Identifies one call over many hosts in the audit log.
fn fanout_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("m{now}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The audit record of a command (or job) `caller` asked `config`'s host to run; callers set
/// `action` and `outcome`.
pub(crate) fn command_record(
    config: &HostConfig,
    caller: &Option<ClientRef>,
    command: &str,
    cwd: &str,
) -> Record {
    Record {
        host: Some(config.name.clone()),
        client: caller.clone(),
        command: Some(command.to_string()),
        cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
        ..Record::default()
    }
}

/// Refuses commands and working directories no shell could be given.
pub(crate) fn check_command(command: &str, cwd: &str) -> Result<(), Status> {
    if command.trim().is_empty() {
        return Err(Error::InvalidArgument("command must not be empty".into()).into());
    }
    if command.contains('\0') || cwd.contains('\0') {
        return Err(
            Error::InvalidArgument("command and cwd must not contain NUL bytes".into()).into(),
        );
    }
    Ok(())
}

/// `allowed_commands`: the one check every command passes, however it reaches a host (exec,
/// jobs). Returns what to send: the command re-quoted from its parsed words when the host has a
/// policy. A refusal is audited as `refused`, completed with the error.
pub(crate) fn authorize(
    audit: &Audit,
    config: &HostConfig,
    command: &str,
    refused: Record,
) -> Result<String, Status> {
    let Some(policy) = &config.policy else {
        return Ok(command.to_string());
    };
    policy.check(command).map_err(|refusal| {
        let error = Error::Refused {
            host: config.name.clone(),
            reason: refusal.to_string(),
            allowed: policy.describe(),
        };
        audit.record(Record {
            error: Some(error.to_string()),
            ..refused
        });
        error.into()
    })
}

/// Runs the command and forwards its output to the caller's stream as it arrives. If the caller
/// goes away, closes the output channel so the command sees it and is stopped remotely.
/// Returns the outcome and the number of output bytes.
async fn forward_exec(
    host: &HostEntry,
    caller: &Option<ClientRef>,
    exec: &ExecRequest,
    shutdown: &tokio_util::sync::CancellationToken,
    tx: &RunSender,
) -> (Result<crate::ssh::ExecOutcome, Error>, u64) {
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(32);
    let on_started = |connected_now| {
        let started = pb::RunEvent {
            event: Some(run_event::Event::Started(pb::Started { connected_now })),
        };
        let _ = tx.try_send(Ok(started));
    };
    let mut bytes = 0u64;
    let mut caller_gone = false;
    let run = host.exec(caller, exec, &out_tx, shutdown, on_started);
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            Some(out) = out_rx.recv() => {
                bytes += out.len() as u64;
                if tx.send(Ok(output_event(out))).await.is_err() {
                    caller_gone = true;
                    out_rx.close();
                }
            }
            () = tx.closed(), if !caller_gone => {
                tracing::debug!("caller dropped the exec stream; stopping the command");
                caller_gone = true;
                out_rx.close();
            }
        }
    };
    // The command is over and the sender is no longer in use: drain what is left.
    out_rx.close();
    while let Some(out) = out_rx.recv().await {
        bytes += out.len() as u64;
        let _ = tx.send(Ok(output_event(out))).await;
    }
    (result, bytes)
}

fn output_event(out: Output) -> pb::RunEvent {
    let event = match out {
        Output::Stdout(data) => run_event::Event::Stdout(data),
        Output::Stderr(data) => run_event::Event::Stderr(data),
    };
    pb::RunEvent { event: Some(event) }
}
