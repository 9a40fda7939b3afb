//! The Files service: uploads and downloads, streaming progress to the caller.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mcp_ssh_proto::pb::{self, transfer_event};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Service, peer};
use crate::audit::Record;
use crate::error::Error;
use crate::registry::millis;
use crate::ssh::transfer::MISMATCH;
use crate::ssh::transfer::{Progress, SyncOptions, TransferSpec};

/// Progress events are sent at most this often (the shim turns them into MCP notifications).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

type EventStream = ReceiverStream<Result<pb::TransferEvent, Status>>;

impl Service {
    async fn transfer(
        &self,
        req: Request<pb::TransferRequest>,
        upload: bool,
    ) -> Result<Response<EventStream>, Status> {
        self.refuse_when_shutting_down()?;
        let caller = self.registry.caller(peer(&req).map(|p| p.conn_id));
        let req = req.into_inner();
        let host = self.registry.host(&req.host)?;
        // One view of the host's settings for the whole call, even if a reload lands meanwhile.
        let config = host.config();
        let local = PathBuf::from(&req.local_path);
        if !local.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "local path {:?} must be absolute",
                req.local_path
            ))
            .into());
        }
        if req.remote_path.contains('\0') || req.local_path.contains('\0') {
            return Err(Error::InvalidArgument("paths must not contain NUL bytes".into()).into());
        }
        let spec = TransferSpec {
            local,
            remote: req.remote_path.clone(),
            verify: req.verify,
            idle_timeout: config.transfer_timeout,
            sync: SyncOptions {
                exclude: req.exclude.clone(),
                gitignore: req.gitignore,
                delete: req.delete,
                dry_run: req.dry_run,
                checksum: req.checksum,
            },
        };
        let audit = self.registry.audit.clone();
        let mut record = Record {
            action: if upload { "upload" } else { "download" },
            outcome: "ok",
            host: Some(config.name.clone()),
            client: caller.clone(),
            local_path: Some(req.local_path),
            remote_path: Some(req.remote_path),
            ..Record::default()
        };
        let (tx, rx) = mpsc::channel(16);
        let in_flight = self.registry.call_started();
        tokio::spawn(async move {
            let _in_flight = in_flight;
            let started = Instant::now();
            let (progress_tx, mut progress_rx) = watch::channel(Progress::default());
            let cancel = CancellationToken::new();
            let work = host.transfer(&caller, upload, &spec, &progress_tx, &cancel);
            tokio::pin!(work);
            let mut last_sent = Instant::now();
            let mut caller_gone = false;
            let result = loop {
                tokio::select! {
                    result = &mut work => break result,
                    changed = progress_rx.changed(), if !caller_gone => {
                        if changed.is_ok() && last_sent.elapsed() >= PROGRESS_EVERY {
                            last_sent = Instant::now();
                            let p = *progress_rx.borrow_and_update();
                            let _ = tx.try_send(Ok(progress_event(p)));
                        }
                    }
                    () = tx.closed(), if !caller_gone => {
                        // The caller went away: stop, and let the transfer clean up after itself.
                        caller_gone = true;
                        cancel.cancel();
                    }
                }
            };
            record.duration_ms = Some(millis(started.elapsed()));
            let last = match result {
                Ok(done) => {
                    record.bytes = Some(done.bytes);
                    record.remote_path = record
                        .remote_path
                        .map(|p| if upload { done.destination.clone() } else { p });
                    let (verified, verification) = done.verification.clone().unwrap_or_default();
                    if !verified && verification.starts_with(MISMATCH) {
                        record.outcome = "error";
                        record.error = Some(verification.clone());
                    }
                    Ok(pb::TransferEvent {
                        event: Some(transfer_event::Event::Done(pb::TransferDone {
                            bytes: done.bytes,
                            files: done.files,
                            duration_ms: millis(done.duration),
                            sha256: done.sha256,
                            destination: done.destination,
                            verification,
                            verified,
                            skipped: done.skipped,
                            unchanged: done.unchanged,
                            deleted: done.deleted,
                            excluded: done.excluded,
                            bytes_total: done.bytes_total,
                            dry_run: done.dry_run,
                            changed: done.changed,
                            removed: done.removed,
                            resumed_from: done.resumed_from,
                            resume_note: done.resume_note.unwrap_or_default(),
                        })),
                    })
                }
                Err(e) => {
                    record.outcome = "error";
                    record.error = Some(e.to_string());
                    Err(Status::from(e))
                }
            };
            audit.record(record);
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn progress_event(p: Progress) -> pb::TransferEvent {
    pb::TransferEvent {
        event: Some(transfer_event::Event::Progress(pb::TransferProgress {
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            files_done: p.files_done,
            files_total: p.files_total,
        })),
    }
}

#[tonic::async_trait]
impl pb::files_server::Files for Service {
    type UploadStream = EventStream;
    type DownloadStream = EventStream;

    async fn upload(
        &self,
        req: Request<pb::TransferRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.transfer(req, true).await
    }

    async fn download(
        &self,
        req: Request<pb::TransferRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.transfer(req, false).await
    }

    async fn partials(
        &self,
        req: Request<pb::PartialsRequest>,
    ) -> Result<Response<pb::PartialsReply>, Status> {
        Service::partials(self, req).await
    }
}
