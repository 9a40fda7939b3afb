//! One file up: written to a temporary file beside the destination, pipelined, then given its
//! mode (and time) and renamed over the destination only when complete and closed without
//! error. Large files get a temporary name of their own transfer and keep it when cut off, so
//! the same upload asked again resumes (see `resume`).

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use futures_util::stream::{FuturesUnordered, StreamExt};
use russh_sftp::protocol::FileType;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::resume::{self, RESUME_MIN, Start};
use super::{
    BLOCK, Checked, Ctx, IN_FLIGHT, OpError, QUICK, Sftp, SshError, TransferKind, absolute, fail,
    local_error, phrase, remote_join, remote_split, remove_remote_temp, shown, unique_suffix,
    verify,
};
use crate::partials::{Claim, Partial};

/// What one file's transfer did.
#[derive(Debug, Default)]
pub struct Sent {
    /// The file's SHA-256, when the transfer was asked to compute it (`Ctx::hash`).
    pub sha256: Option<String>,
    /// Bytes that were already in place from a kept temporary file.
    pub resumed_from: u64,
    /// Why a kept temporary file was not used.
    pub note: Option<String>,
    /// (matched, how it was checked), when `verify` was asked for a single file.
    pub verification: Option<(bool, String)>,
}

/// Uploads one file atomically, with `mode` (and `mtime`, when given: a sync's).
pub(super) async fn upload_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    local: &Path,
    dest: &str,
    (mode, mtime): (u32, Option<u32>),
) -> Result<Sent, SshError> {
    let (dir, name) = remote_split(dest);
    let file = std::fs::File::open(local).map_err(|e| local_error(e, "read", local))?;
    let size = file
        .metadata()
        .map_err(|e| local_error(e, "read", local))?
        .len();
    let mut claim = None;
    let tmp = if size >= RESUME_MIN {
        let (tmp, held) =
            claim_upload(ctx, home, local, dest, size).map_err(|e| fail(TransferKind::Other, e))?;
        claim = Some(held);
        tmp
    } else {
        let tmp = remote_join(
            &dir,
            &format!(".{name}.mcpssh-upload-{}.tmp", unique_suffix()),
        );
        ctx.pending.add(&tmp);
        tmp
    };
    let started = match &claim {
        Some((_, earlier)) => resumable_start(ctx, sftp, local, &tmp, earlier.as_ref(), size).await,
        None => Ok(Start::default()),
    };
    let mut start = match started {
        Ok(start) => start,
        Err(e) => {
            resume::untouched(claim);
            return Err(e);
        }
    };
    let (opened, earlier_gone) = open_remote_temp(sftp, &tmp, &mut start, claim.is_some()).await;
    let handle = match opened {
        Ok(handle) => handle,
        Err(e) => {
            ctx.pending.done(&tmp);
            match claim {
                Some((claim, _)) if start.from == 0 && earlier_gone => claim.done(),
                claim => resume::untouched(claim),
            }
            let what = "write into directory";
            return Err(match e {
                OpError::NotFound => fail(
                    TransferKind::NotFound,
                    format!(
                        "remote directory {} does not exist",
                        shown(sftp, home, &dir)
                    ),
                ),
                e => phrase(ctx, sftp, home, e, what, &dir).await,
            });
        }
    };
    let resumed_from = start.from;
    let note = start.note.clone();
    let (result, written) = send_file(ctx, sftp, home, file, &handle, &tmp, local, start).await;
    let result = match result {
        Ok(sha) => match sftp.close(&handle).await {
            Ok(()) => Ok(sha),
            Err(e) => Err(phrase(ctx, sftp, home, e, "finish writing", &tmp).await),
        },
        Err(e) => {
            sftp.close_after_failure(&handle).await;
            Err(e)
        }
    };
    // `verify` checks the written file before it can replace the destination.
    let mut verification = None;
    let result = match result {
        Ok(Some(sha)) if ctx.hash => match verify(ctx, &tmp, &sha, (local, true)).await {
            Ok(Checked::Mismatch(why)) => {
                discard(ctx, sftp, &tmp, claim).await;
                return Ok(Sent {
                    sha256: Some(sha),
                    resumed_from,
                    note,
                    verification: Some((false, why)),
                });
            }
            Ok(checked) => {
                verification = Some(checked.into_pair());
                Ok(Some(sha))
            }
            Err(e) => Err(e),
        },
        result => result,
    };
    let finished = match result {
        Ok(sha) => {
            let renamed = match sftp.set_attrs(&tmp, mode & 0o7777, mtime).await {
                Ok(()) => sftp.rename_over(&tmp, dest).await,
                Err(e) => Err(e),
            };
            match renamed {
                Ok(()) => Ok(sha),
                Err(e) => Err(phrase(ctx, sftp, home, e, "replace", dest).await),
            }
        }
        Err(e) => Err(e),
    };
    match (finished, claim) {
        (Ok(sha256), claim) => {
            ctx.pending.done(&tmp);
            if let Some((claim, _)) = claim {
                claim.done();
            }
            ctx.advance(0, 1);
            Ok(Sent {
                sha256,
                resumed_from,
                note,
                verification,
            })
        }
        (Err(e), Some((claim, _))) if written > 0 && resume::worth_keeping(&e) => {
            claim.keep(written);
            let temp = shown(sftp, home, &tmp);
            Err(resume::noting(e, &resume::kept_note(written, &temp, true)))
        }
        (Err(e), claim) => {
            discard(ctx, sftp, &tmp, claim).await;
            Err(e)
        }
    }
}

/// Opens the temporary file: the kept one cut to its checked part, or a new one (removing an
/// earlier run's part that did not match or could not be cut). Returns whether no earlier part
/// is left on the host.
async fn open_remote_temp(
    sftp: &Sftp,
    tmp: &str,
    start: &mut Start,
    claimed: bool,
) -> (Result<String, OpError>, bool) {
    if start.from > 0 {
        // The kept file may be longer than its checked part (the source shrank, or its tail
        // was unsure): what follows is written again, and nothing beyond the new end stays.
        let handle = match sftp.open_write(tmp).await {
            Ok(handle) => handle,
            Err(e) => return (Err(e), false),
        };
        if sftp.truncate(&handle, start.from).await.is_ok() {
            return (Ok(handle), false);
        }
        sftp.close_after_failure(&handle).await;
        *start = Start {
            note: Some(
                "the kept part of an earlier upload could not be cut to its checked length, so it started over"
                    .into(),
            ),
            ..Start::default()
        };
    }
    let gone = !claimed || matches!(sftp.remove(tmp).await, Ok(()) | Err(OpError::NotFound));
    (sftp.create_exclusive(tmp, 0o600).await, gone)
}

/// Removes a temporary file this run wrote and will not keep. A large file's part is named for
/// its transfer, so it stays out of the pending list (whose cleanup on a reconnect could remove
/// a later run's file of that name): when it cannot be removed now, its record stays, with no
/// byte of it trusted, until it expires or the same transfer replaces it.
async fn discard(ctx: &Ctx<'_>, sftp: &Sftp, tmp: &str, claim: Option<(Claim, Option<Partial>)>) {
    match claim {
        Some((claim, _)) => {
            let removed = !sftp.is_ended()
                && matches!(
                    tokio::time::timeout(QUICK, sftp.remove(tmp)).await,
                    Ok(Ok(()) | Err(OpError::NotFound))
                );
            if removed {
                claim.done();
            } else {
                claim.keep(0);
            }
        }
        None => {
            ctx.pending.add(tmp);
            remove_remote_temp(ctx.conn, sftp, tmp, ctx.pending).await;
        }
    }
}

/// Claims the upload of `local` to `dest` for this call; returns its temporary file's path.
fn claim_upload(
    ctx: &Ctx<'_>,
    home: &str,
    local: &Path,
    dest: &str,
    size: u64,
) -> Result<(String, (Claim, Option<Partial>)), String> {
    let (dir, name) = remote_split(dest);
    let host = ctx.conn.host().name.clone();
    let (source, destination) = (local.display().to_string(), absolute(home, dest));
    let id = Partial::id_for(&host, true, &source, &destination);
    let tmp = remote_join(&dir, &resume::temp_name(&name, &id));
    let record = Partial {
        id,
        host,
        upload: true,
        temp: absolute(home, &tmp),
        source,
        destination,
        size,
        kept: None,
        at_ms: 0,
    };
    let what = format!("{} to {}", record.source, record.destination);
    match ctx.partials.begin(record) {
        Ok((earlier, claim)) => Ok((tmp, (claim, earlier))),
        Err(_) => Err(format!(
            "the same upload ({what}) is already running; nothing was sent"
        )),
    }
}

/// Where an upload with a kept temporary file starts.
async fn resumable_start(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    local: &Path,
    tmp: &str,
    earlier: Option<&Partial>,
    size: u64,
) -> Result<Start, SshError> {
    let found = match sftp.lstat(tmp).await {
        Ok(attrs) if attrs.file_type() == FileType::File => attrs.len(),
        _ => return Ok(Start::default()),
    };
    match resume::candidate(earlier, found, size) {
        0 => Ok(Start::default()),
        len => resume::check(ctx.conn, local, tmp, len, ctx.hash, true).await,
    }
}

/// Streams the local file from `start.from` into the open remote handle, keeping about 4 MiB
/// of writes in flight; reading (and hashing, when asked) run on a thread of their own. Returns
/// the outcome and how many bytes at the start of the remote file are known to be written.
#[allow(clippy::too_many_arguments)]
async fn send_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    mut file: std::fs::File,
    handle: &str,
    tmp: &str,
    local: &Path,
    start: Start,
) -> (Result<Option<String>, SshError>, u64) {
    let from = start.from;
    let mut hasher = if from > 0 {
        start.hasher
    } else {
        ctx.hash.then(Sha256::new)
    };
    ctx.advance(from, 0);
    // Blocks of exactly one write request each: the server's largest (about 255 KiB), which
    // is not a power of two, so reading in other sizes would split every block in two writes.
    let chunk_len = sftp.write_len() as usize;
    let (blocks_tx, mut blocks) = mpsc::channel::<Vec<u8>>((BLOCK * 8 / chunk_len).max(1));
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<Option<String>> {
        file.seek(SeekFrom::Start(from))?;
        loop {
            // Read into spare capacity: zeroing each block first costs as much as a copy.
            let mut block = Vec::with_capacity(chunk_len);
            if (&mut file).take(chunk_len as u64).read_to_end(&mut block)? == 0 {
                break;
            }
            if let Some(hasher) = &mut hasher {
                hasher.update(&block);
            }
            if blocks_tx.blocking_send(block).is_err() {
                break; // the transfer stopped
            }
        }
        Ok(hasher.map(|h| hex::encode(h.finalize())))
    });
    let in_flight = (4 * 1024 * 1024 / chunk_len).clamp(8, IN_FLIGHT);
    let mut offset = from;
    let mut writes = FuturesUnordered::new();
    // Offsets of the writes not yet acknowledged: everything below the first is on the host.
    let mut unacked = BTreeSet::new();
    let mut eof = false;
    let sent: Result<(), SshError> = async {
        loop {
            // Fill the pipeline.
            while !eof && writes.len() < in_flight {
                let Some(data) = blocks.recv().await else {
                    eof = true;
                    break;
                };
                let len = data.len() as u64;
                let at = offset;
                offset += len;
                unacked.insert(at);
                writes.push(async move { sftp.write(handle, at, data).await.map(|()| (at, len)) });
            }
            if writes.is_empty() {
                return Ok(());
            }
            tokio::select! {
                done = writes.next() => match done {
                    Some(Ok((at, len))) => {
                        unacked.remove(&at);
                        ctx.advance(len, 0);
                    }
                    Some(Err(e)) => return Err(phrase(ctx, sftp, home, e, "write", tmp).await),
                    None => {}
                },
                () = ctx.cancel.cancelled() => return Err(fail(TransferKind::Cancelled, "transfer cancelled".into())),
                () = ctx.conn.lost() => return Err(ctx.conn.lost_error()),
                () = sftp.ended() => {
                    return Err(phrase(ctx, sftp, home, OpError::Gone("the server ended the SFTP session".into()), "write", tmp).await);
                }
            }
        }
    }
    .await;
    let written = unacked.first().copied().unwrap_or(offset);
    drop(blocks);
    let hashed = match reader.await {
        Ok(hashed) => hashed,
        Err(e) => {
            let e = fail(TransferKind::Other, format!("local reader failed: {e}"));
            return (Err(e), written);
        }
    };
    let result = match (sent, hashed) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(local_error(e, "read", local)),
        (Ok(()), Ok(sha)) => Ok(sha),
    };
    (result, written)
}
