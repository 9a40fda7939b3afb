//! One file down: written to a temporary file beside the destination (with `verify`, flushed to
//! disk as it grows and synced), then renamed over the destination. Large files get a temporary name of their
//! own transfer and keep it when cut off, so the same download asked again resumes.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use futures_util::stream::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::resume::{self, RESUME_MIN, Start};
use super::send::Sent;
use super::{
    Checked, Ctx, EARLY_SYNC_EVERY, IN_FLIGHT, OpError, Sftp, SshError, TransferKind, absolute,
    fail, file_name, local_error, phrase, unique_suffix, verify,
};
use crate::partials::{Claim, Partial};

/// Downloads one file of `size` bytes atomically, with `mode`; returns the bytes written.
pub(super) async fn download_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    remote: &str,
    dest: &Path,
    (mode, size): (u32, u64),
) -> Result<(u64, Sent), SshError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let mut claim = None;
    let tmp = if size >= RESUME_MIN {
        let (tmp, held) = claim_download(ctx, home, remote, dest, size)
            .map_err(|e| fail(TransferKind::Other, e))?;
        claim = Some(held);
        tmp
    } else {
        parent.join(format!(
            ".{}.mcpssh-download-{}.tmp",
            file_name(dest),
            unique_suffix()
        ))
    };
    let started = match &claim {
        Some((_, earlier)) => resumable_start(ctx, remote, &tmp, earlier.as_ref(), size).await,
        None => Ok(Start::default()),
    };
    let start = match started {
        Ok(start) => start,
        Err(e) => {
            resume::untouched(claim);
            return Err(e);
        }
    };
    let handle = match sftp.open_read(remote).await {
        Ok(handle) => handle,
        Err(e) => {
            resume::untouched(claim);
            return Err(phrase(ctx, sftp, home, e, "read", remote).await);
        }
    };
    let (resumed_from, note) = (start.from, start.note.clone());
    let fresh = claim.is_none();
    let (result, written) =
        receive_file(ctx, sftp, home, (remote, &handle), &tmp, mode, start, fresh).await;
    match &result {
        Ok(_) => {
            if let Err(e) = sftp.close(&handle).await {
                tracing::debug!("closing {remote} after reading it: {e:?}");
            }
        }
        Err(_) => sftp.close_after_failure(&handle).await,
    }
    // `verify` checks the written file before it can replace the destination.
    let mut verification = None;
    let result = match result {
        Ok((bytes, Some(sha))) if ctx.hash => {
            match verify(ctx, remote, &sha, (dest, false)).await {
                Ok(Checked::Mismatch(why)) => {
                    discard(&tmp, claim).await;
                    let sent = Sent {
                        sha256: Some(sha),
                        resumed_from,
                        note,
                        verification: Some((false, why)),
                    };
                    return Ok((bytes, sent));
                }
                Ok(checked) => {
                    verification = Some(checked.into_pair());
                    Ok((bytes, Some(sha)))
                }
                Err(e) => Err(e),
            }
        }
        result => result,
    };
    let finished = match result {
        Ok(done) => tokio::fs::rename(&tmp, dest)
            .await
            .map(|()| done)
            .map_err(|e| local_error(e, "replace", dest)),
        Err(e) => Err(e),
    };
    match (finished, claim) {
        (Ok((bytes, sha256)), claim) => {
            if let Some((claim, _)) = claim {
                claim.done();
            }
            ctx.advance(0, 1);
            let sent = Sent {
                sha256,
                resumed_from,
                note,
                verification,
            };
            Ok((bytes, sent))
        }
        (Err(e), Some((claim, _))) if written > 0 && resume::worth_keeping(&e) => {
            claim.keep(written);
            let temp = tmp.display().to_string();
            Err(resume::noting(e, &resume::kept_note(written, &temp, false)))
        }
        (Err(e), claim) => {
            discard(&tmp, claim).await;
            Err(e)
        }
    }
}

/// Removes a temporary file this run wrote and will not keep. When a large file's part cannot
/// be removed, its record stays, with no byte of it trusted, until it expires or the same
/// download replaces it (as for uploads).
async fn discard(tmp: &Path, claim: Option<(Claim, Option<Partial>)>) {
    let removed = match tokio::fs::remove_file(tmp).await {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    match claim {
        Some((claim, _)) if removed => claim.done(),
        Some((claim, _)) => claim.keep(0),
        None => {}
    }
}

/// Claims the download of `remote` to `dest` for this call; returns its temporary file's path.
fn claim_download(
    ctx: &Ctx<'_>,
    home: &str,
    remote: &str,
    dest: &Path,
    size: u64,
) -> Result<(std::path::PathBuf, (Claim, Option<Partial>)), String> {
    let host = ctx.conn.host().name.clone();
    let (source, destination) = (absolute(home, remote), dest.display().to_string());
    let id = Partial::id_for(&host, false, &source, &destination);
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(resume::temp_name(&file_name(dest), &id));
    let record = Partial {
        id,
        host: host.clone(),
        upload: false,
        temp: tmp.display().to_string(),
        source,
        destination,
        size,
        kept: None,
        at_ms: 0,
    };
    let what = format!("{host}:{} to {}", record.source, record.destination);
    match ctx.partials.begin(record) {
        Ok((earlier, claim)) => Ok((tmp, (claim, earlier))),
        Err(_) => Err(format!(
            "the same download ({what}) is already running; nothing was received"
        )),
    }
}

/// Where a download with a kept temporary file starts.
async fn resumable_start(
    ctx: &Ctx<'_>,
    remote: &str,
    tmp: &Path,
    earlier: Option<&Partial>,
    size: u64,
) -> Result<Start, SshError> {
    let found = match std::fs::symlink_metadata(tmp) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Ok(Start::default()),
    };
    match resume::candidate(earlier, found, size) {
        0 => Ok(Start::default()),
        len => resume::check(ctx.conn, tmp, remote, len, ctx.hash, false).await,
    }
}

/// Opens the temporary file: anew (a name of our own: `fresh`, or a kept one replaced), or kept
/// and cut to the checked part.
fn open_temp(tmp: &Path, from: u64, fresh: bool) -> std::io::Result<std::fs::File> {
    if from > 0 {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(tmp)?;
        file.set_len(from)?;
        file.seek(SeekFrom::Start(from))?;
        return Ok(file);
    }
    if !fresh {
        match std::fs::remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
}

/// Reads the remote file from `start.from` into the temporary file. Returns the outcome (bytes
/// of the whole file, its SHA-256 when asked) and how many bytes of the temporary file are on
/// disk.
#[allow(clippy::too_many_arguments)]
async fn receive_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    (remote, handle): (&str, &str),
    tmp: &Path,
    mode: u32,
    start: Start,
    fresh: bool,
) -> (Result<(u64, Option<String>), SshError>, u64) {
    let from = start.from;
    let std_file = match open_temp(tmp, from, fresh) {
        Ok(file) => file,
        // Named by its directory: the temporary file's name means nothing to the reader.
        Err(e) => {
            let dir = tmp.parent().unwrap_or(Path::new("/"));
            return (Err(local_error(e, "write into", dir)), 0);
        }
    };
    let mut hasher = if from > 0 {
        start.hasher
    } else {
        ctx.hash.then(Sha256::new)
    };
    ctx.advance(from, 0);
    // Disk writes (and hashing) run on a thread of their own, so the network never waits.
    let (to_disk, mut from_net) = mpsc::channel::<Vec<u8>>(32);
    let durable = ctx.durable;
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Option<String>)> {
        // With `verify` the file must be on disk before it is renamed into place. Flushing it
        // as it grows, on a helper thread, leaves only the tail for the final sync.
        let (sync_now, sync_requests) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = if durable {
            let early = std_file.try_clone()?;
            Some(std::thread::spawn(move || {
                while sync_requests.recv().is_ok() {
                    let _ = early.sync_data();
                }
            }))
        } else {
            None
        };
        // Each piece is one read of the server's largest (~255 KiB): written as it comes, since
        // a buffer would only add a copy.
        let mut file = std_file;
        let mut written = from;
        let mut synced_at = from;
        while let Some(data) = from_net.blocking_recv() {
            if let Some(hasher) = &mut hasher {
                hasher.update(&data);
            }
            file.write_all(&data)?;
            written += data.len() as u64;
            if syncer.is_some() && written - synced_at >= EARLY_SYNC_EVERY {
                synced_at = written;
                let _ = sync_now.try_send(());
            }
        }
        drop(sync_now);
        if let Some(syncer) = syncer {
            let _ = syncer.join();
        }
        if durable {
            file.sync_all()?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        Ok((written, hasher.map(|h| hex::encode(h.finalize()))))
    });
    let received = receive(ctx, sftp, home, (remote, handle), from, &to_disk).await;
    drop(to_disk);
    let (written, sha) = match writer.await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return (Err(local_error(e, "write", tmp)), 0),
        Err(e) => {
            let e = fail(TransferKind::Other, format!("local writer failed: {e}"));
            return (Err(e), 0);
        }
    };
    (received.map(|()| (written, sha)), written)
}

/// Reads the remote file from `from` on, in order, with about 4 MiB of reads in flight, and
/// hands the data to the disk writer.
async fn receive(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    (remote, handle): (&str, &str),
    from: u64,
    to_disk: &mpsc::Sender<Vec<u8>>,
) -> Result<(), SshError> {
    let chunk = sftp.read_len() as usize;
    let in_flight = (4 * 1024 * 1024 / chunk).clamp(8, IN_FLIGHT);
    let mut reads = futures_util::stream::iter((0u64..).map(|i| from + i * chunk as u64))
        .map(|at| async move {
            sftp.read(handle, at, chunk as u32)
                .await
                .map(|data| (at, data))
        })
        .buffered(in_flight);
    loop {
        let next = tokio::select! {
            next = reads.next() => next,
            () = ctx.cancel.cancelled() => return Err(fail(TransferKind::Cancelled, "transfer cancelled".into())),
            () = ctx.conn.lost() => return Err(ctx.conn.lost_error()),
            () = sftp.ended() => {
                return Err(phrase(ctx, sftp, home, OpError::Gone("the server ended the SFTP session".into()), "read", remote).await);
            }
        };
        let (at, mut data) = match next {
            Some(Ok(read)) => read,
            Some(Err(e)) => return Err(phrase(ctx, sftp, home, e, "read", remote).await),
            None => return Ok(()),
        };
        if data.is_empty() {
            return Ok(()); // end of file
        }
        // A short read before the end: fetch the rest of this chunk before moving on.
        while data.len() < chunk {
            match sftp
                .read(handle, at + data.len() as u64, (chunk - data.len()) as u32)
                .await
            {
                Ok(more) if more.is_empty() => break,
                Ok(more) => data.extend_from_slice(&more),
                Err(e) => return Err(phrase(ctx, sftp, home, e, "read", remote).await),
            }
        }
        let len = data.len();
        if to_disk.send(data).await.is_err() {
            return Ok(()); // the writer failed; its error is reported by the caller
        }
        ctx.advance(len as u64, 0);
        if len < chunk {
            return Ok(());
        }
    }
}
