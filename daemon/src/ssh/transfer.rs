//! Uploads and downloads: atomic on both sides, pipelined, hashed, inactivity-timed, cancellable.
//!
//! Upload: data goes to `.NAME.mcpssh-upload-ID.tmp` beside the destination and is renamed over it
//! (`posix-rename`) only when complete and closed without error; the mode follows the local
//! file. Download: the same with `.NAME.mcpssh-download-ID.tmp` locally, synced before the rename.
//! On failure the temporary file is removed; if the connection is gone, the remote one is
//! remembered and removed when the host is reached again.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::exec::{self, ExecRequest, Output};
use super::pending::PendingTemps;
use super::sftp::{OpError, Sftp};
use super::{Connection, SshError};
use crate::policy::quote;

mod sync;
pub use sync::SyncOptions;

/// Most SFTP requests kept in flight (about 4 MiB of data is the aim; see `send_file`).
const IN_FLIGHT: usize = 64;
/// Deadline for housekeeping on a session that may have just failed (diagnosis, cleanup).
const QUICK: Duration = Duration::from_secs(5);
/// Downloads start flushing to disk every this many bytes (see `receive_file`).
const EARLY_SYNC_EVERY: u64 = 32 * 1024 * 1024;
/// Local reads and writes go in blocks this large.
const BLOCK: usize = 256 * 1024;

/// Why a transfer failed, for the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    NotFound,
    PermissionDenied,
    NoSpace,
    TooLarge,
    Timeout,
    Cancelled,
    Other,
}

#[derive(Debug, Clone)]
pub struct TransferSpec {
    /// Absolute local path.
    pub local: PathBuf,
    pub remote: String,
    pub verify: bool,
    /// No byte moved for this long: give up.
    pub idle_timeout: Duration,
    /// For a directory: what the sync may leave out, remove, or only report.
    pub sync: SyncOptions,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u32,
    pub files_total: u32,
}

#[derive(Debug, Clone, Default)]
pub struct TransferOutcome {
    pub bytes: u64,
    pub files: u32,
    pub skipped: u32,
    pub duration: Duration,
    pub sha256: String,
    pub destination: String,
    /// (matched, how it was checked) when verification was asked for.
    pub verification: Option<(bool, String)>,
    /// Directories: files already alike (not sent), entries removed (`delete`), entries left
    /// out by `exclude`/`gitignore`, the bytes of every source file, whether nothing changed
    /// (`dry_run`), and the first paths sent and removed.
    pub unchanged: u32,
    pub deleted: u32,
    pub excluded: u32,
    pub bytes_total: u64,
    pub dry_run: bool,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// Shared state of one transfer.
struct Ctx<'a> {
    conn: &'a Connection,
    progress: &'a watch::Sender<Progress>,
    cancel: &'a CancellationToken,
    pending: &'a PendingTemps,
    idle: Duration,
}

impl Ctx<'_> {
    fn advance(&self, bytes: u64, files: u32) {
        self.progress.send_modify(|p| {
            p.bytes_done += bytes;
            p.files_done += files;
        });
    }
}

fn fail(kind: TransferKind, message: String) -> SshError {
    SshError::Transfer { kind, message }
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `~` and `~/x` name the remote login directory, which is where relative paths start.
fn remote_relative(path: &str) -> String {
    match path {
        "" | "~" | "~/" => ".".into(),
        p => p.strip_prefix("~/").unwrap_or(p).to_string(),
    }
}

fn remote_join(dir: &str, name: &str) -> String {
    match dir {
        "." | "" => name.to_string(),
        "/" => format!("/{name}"),
        d => format!("{}/{name}", d.trim_end_matches('/')),
    }
}

fn remote_split(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".into(), name.into()),
        Some((dir, name)) => (dir.into(), name.into()),
        None => (".".into(), trimmed.into()),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// A remote path as the user should read it.
fn shown(sftp: &Sftp, home: &str, path: &str) -> String {
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        remote_join(home, path)
    };
    format!("{}:{full}", sftp.host())
}

/// Phrases an SFTP failure on `path` while doing `what`.
async fn phrase(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    e: OpError,
    what: &str,
    path: &str,
) -> SshError {
    let at = shown(sftp, home, path);
    match e {
        OpError::NotFound => fail(
            TransferKind::NotFound,
            format!("cannot {what} {at}: no such file or directory"),
        ),
        OpError::PermissionDenied => fail(
            TransferKind::PermissionDenied,
            format!("cannot {what} {at}: permission denied"),
        ),
        OpError::Timeout => fail(
            TransferKind::Timeout,
            format!(
                "transfer stalled: no data moved for {} s while trying to {what} {at} (transfer_timeout)",
                ctx.idle.as_secs()
            ),
        ),
        // The session died: was it the whole connection? Its loss may be noticed a moment later.
        OpError::Gone(_) if !connection_survives(ctx.conn).await => ctx.conn.lost_error(),
        OpError::Gone(why) => fail(
            TransferKind::TooLarge,
            format!(
                "the SFTP server on {} stopped while trying to {what} {at} ({why}); a file size limit or a server crash",
                sftp.host()
            ),
        ),
        OpError::Failure(msg) => {
            let (dir, _) = remote_split(path);
            // The session may be the thing that failed: ask briefly.
            match tokio::time::timeout(QUICK, sftp.free_space(&dir))
                .await
                .ok()
                .flatten()
            {
                Some(free) if free < 1024 * 1024 => fail(
                    TransferKind::NoSpace,
                    format!(
                        "cannot {what} {at}: no space left on the remote file system ({free} bytes free)"
                    ),
                ),
                _ => fail(
                    TransferKind::TooLarge,
                    format!(
                        "cannot {what} {at}: the server refused ({msg}); the file may exceed a size limit"
                    ),
                ),
            }
        }
        OpError::Other(msg) => fail(TransferKind::Other, format!("cannot {what} {at}: {msg}")),
    }
}

async fn connection_survives(conn: &Connection) -> bool {
    tokio::time::timeout(Duration::from_millis(500), conn.lost())
        .await
        .is_err()
        && conn.is_alive()
}

fn local_error(e: std::io::Error, what: &str, path: &Path) -> SshError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => TransferKind::NotFound,
        std::io::ErrorKind::PermissionDenied => TransferKind::PermissionDenied,
        std::io::ErrorKind::StorageFull => TransferKind::NoSpace,
        std::io::ErrorKind::FileTooLarge => TransferKind::TooLarge,
        _ => TransferKind::Other,
    };
    let detail = match kind {
        TransferKind::NoSpace => "no space left on the local disk".to_string(),
        TransferKind::NotFound => "no such file or directory".to_string(),
        _ => e.to_string(),
    };
    fail(
        kind,
        format!("cannot {what} local {}: {detail}", path.display()),
    )
}

// ---------------------------------------------------------------------------------------------
// Upload

pub async fn upload(
    conn: &Connection,
    spec: &TransferSpec,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
    pending: &PendingTemps,
) -> Result<TransferOutcome, SshError> {
    let started = Instant::now();
    let ctx = Ctx {
        conn,
        progress,
        cancel,
        pending,
        idle: spec.idle_timeout,
    };
    let meta = tokio::fs::metadata(&spec.local)
        .await
        .map_err(|e| local_error(e, "read", &spec.local))?;
    let sftp = Sftp::open(conn, spec.idle_timeout).await?;
    let home = sftp.home().await.unwrap_or_else(|_| ".".into());
    let remote = remote_relative(&spec.remote);
    let remote_is_dir = sftp
        .stat(&remote)
        .await
        .map(|a| a.is_dir())
        .unwrap_or(false);
    // A trailing slash names a directory to upload into, as with scp: it must exist, and saying
    // so now beats sending the data first.
    if !remote_is_dir && spec.remote.len() > 1 && spec.remote.ends_with('/') {
        return Err(fail(
            TransferKind::NotFound,
            format!(
                "remote directory {} does not exist",
                shown(&sftp, &home, remote.trim_end_matches('/'))
            ),
        ));
    }
    // A file goes into an existing directory by its name (scp's rule). A directory names the
    // destination tree itself, unless the destination ends in '/': then the tree goes into it
    // by its name. Either way the same call twice syncs the same tree.
    let into = if meta.is_dir() {
        spec.remote.len() > 1 && spec.remote.ends_with('/')
    } else {
        remote_is_dir
    };
    let dest = if into {
        remote_join(&remote, &file_name(&spec.local))
    } else {
        remote
    };
    if !meta.is_dir() {
        spec.sync
            .refuse_for_a_file()
            .map_err(|e| fail(TransferKind::Other, e))?;
    }
    let mut outcome = if meta.is_dir() {
        let (dest_dir, exists) = match sftp.stat(&dest).await {
            Ok(a) => (a.is_dir(), true),
            Err(_) => (false, false),
        };
        if exists && !dest_dir {
            return Err(fail(
                TransferKind::Other,
                format!(
                    "remote {} is not a directory; a directory upload syncs a directory tree",
                    shown(&sftp, &home, &dest)
                ),
            ));
        }
        let paths = (spec.local.as_path(), dest.as_str());
        sync::sync_tree(&ctx, &sftp, &home, paths, true, &spec.sync, spec.verify).await?
    } else {
        progress.send_modify(|p| {
            p.bytes_total = meta.len();
            p.files_total = 1;
        });
        let sha = upload_file(
            &ctx,
            &sftp,
            &home,
            &spec.local,
            &dest,
            (meta.permissions().mode(), None),
        )
        .await?;
        TransferOutcome {
            bytes: meta.len(),
            files: 1,
            sha256: sha,
            ..TransferOutcome::default()
        }
    };
    outcome.destination = shown(&sftp, &home, &dest);
    drop(sftp);
    if spec.verify && !meta.is_dir() {
        outcome.verification = Some(verify(conn, &dest, &outcome, &spec.local).await);
    }
    outcome.duration = started.elapsed();
    Ok(outcome)
}

/// Uploads one file atomically, with `mode` (and `mtime`, when given: a sync's); returns its
/// SHA-256.
async fn upload_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    local: &Path,
    dest: &str,
    (mode, mtime): (u32, Option<u32>),
) -> Result<String, SshError> {
    let (dir, name) = remote_split(dest);
    let tmp = remote_join(
        &dir,
        &format!(".{name}.mcpssh-upload-{}.tmp", unique_suffix()),
    );
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|e| local_error(e, "read", local))?;
    ctx.pending.add(&tmp);
    let handle = match sftp.create_exclusive(&tmp, 0o600).await {
        Ok(handle) => handle,
        Err(e) => {
            ctx.pending.done(&tmp);
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
    let result = send_file(ctx, sftp, home, file, &handle, &tmp, local).await;
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
    match finished {
        Ok(sha) => {
            ctx.pending.done(&tmp);
            ctx.advance(0, 1);
            Ok(sha)
        }
        Err(e) => {
            remove_remote_temp(ctx.conn, sftp, &tmp, ctx.pending).await;
            Err(e)
        }
    }
}

/// Streams the local file into the open remote handle, keeping about 4 MiB of writes in
/// flight. Reading and hashing run on a thread of their own (hashing alone would otherwise take a
/// third of a core at these speeds).
async fn send_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    file: tokio::fs::File,
    handle: &str,
    tmp: &str,
    local: &Path,
) -> Result<String, SshError> {
    let (blocks_tx, mut blocks) = mpsc::channel::<Vec<u8>>(8);
    let mut file = file.into_std().await;
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut hasher = Sha256::new();
        loop {
            let mut block = vec![0u8; BLOCK];
            let mut filled = 0;
            while filled < BLOCK {
                let n = file.read(&mut block[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            block.truncate(filled);
            hasher.update(&block);
            if blocks_tx.blocking_send(block).is_err() {
                break; // the transfer stopped
            }
        }
        Ok(hex::encode(hasher.finalize()))
    });
    let chunk_len = sftp.write_len() as usize;
    let in_flight = (4 * 1024 * 1024 / chunk_len).clamp(8, IN_FLIGHT);
    let mut offset = 0u64;
    let mut writes = FuturesUnordered::new();
    let mut eof = false;
    let sent: Result<(), SshError> = async {
        loop {
            // Fill the pipeline.
            while !eof && writes.len() < in_flight {
                let Some(block) = blocks.recv().await else {
                    eof = true;
                    break;
                };
                for chunk in block.chunks(chunk_len) {
                    let data = chunk.to_vec();
                    let len = data.len() as u64;
                    let at = offset;
                    offset += len;
                    writes.push(async move { sftp.write(handle, at, data).await.map(|()| len) });
                }
            }
            if writes.is_empty() {
                return Ok(());
            }
            tokio::select! {
                done = writes.next() => match done {
                    Some(Ok(len)) => ctx.advance(len, 0),
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
    drop(blocks);
    let hashed = reader
        .await
        .map_err(|e| fail(TransferKind::Other, format!("local reader failed: {e}")))?;
    sent?;
    hashed.map_err(|e| local_error(e, "read", local))
}

/// Removes a remote temporary file now, or remembers it for when the host is reached again.
async fn remove_remote_temp(conn: &Connection, sftp: &Sftp, tmp: &str, pending: &PendingTemps) {
    if !sftp.is_ended()
        && matches!(
            tokio::time::timeout(QUICK, sftp.remove(tmp)).await,
            Ok(Ok(()))
        )
    {
        pending.done(tmp);
        return;
    }
    // The SFTP session may be what died (a size limit kills sftp-server): try a fresh one.
    if conn.is_alive()
        && let Ok(Ok(fresh)) = tokio::time::timeout(QUICK, Sftp::open(conn, QUICK)).await
        && (fresh.remove(tmp).await.is_ok()
            || matches!(fresh.stat(tmp).await, Err(OpError::NotFound)))
    {
        pending.done(tmp);
    }
}

/// Removes temporary files of transfers cut off earlier (run after reconnecting).
pub async fn clean_pending(conn: &Connection, pending: &PendingTemps) {
    let paths = pending.take();
    if paths.is_empty() {
        return;
    }
    let Ok(sftp) = Sftp::open(conn, Duration::from_secs(10)).await else {
        pending.restore(paths);
        return;
    };
    let mut left = Vec::new();
    for path in paths {
        match sftp.remove(&path).await {
            Ok(()) | Err(OpError::NotFound) => {
                tracing::info!(host = %sftp.host(), "removed leftover temporary file {path}")
            }
            Err(_) => left.push(path),
        }
    }
    pending.restore(left);
}

// ---------------------------------------------------------------------------------------------
// Download

pub async fn download(
    conn: &Connection,
    spec: &TransferSpec,
    progress: &watch::Sender<Progress>,
    cancel: &CancellationToken,
) -> Result<TransferOutcome, SshError> {
    let started = Instant::now();
    let pending = PendingTemps::default();
    let ctx = Ctx {
        conn,
        progress,
        cancel,
        pending: &pending,
        idle: spec.idle_timeout,
    };
    let sftp = Sftp::open(conn, spec.idle_timeout).await?;
    let home = sftp.home().await.unwrap_or_else(|_| ".".into());
    let remote = remote_relative(&spec.remote);
    let attrs = match sftp.stat(&remote).await {
        Ok(attrs) => attrs,
        Err(OpError::NotFound) => {
            return Err(fail(
                TransferKind::NotFound,
                format!("remote file not found: {}", shown(&sftp, &home, &remote)),
            ));
        }
        Err(e) => return Err(phrase(&ctx, &sftp, &home, e, "read", &remote).await),
    };
    let local_is_dir = tokio::fs::metadata(&spec.local)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false);
    // As for uploads: a file into an existing directory by its name; a directory names the
    // local tree itself unless the local path ends in '/'.
    let into = if attrs.is_dir() {
        spec.local.as_os_str().to_string_lossy().ends_with('/')
    } else {
        local_is_dir
    };
    let dest = if into {
        spec.local.join(remote_split(&remote).1)
    } else {
        spec.local.clone()
    };
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !tokio::fs::metadata(&parent)
        .await
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Err(fail(
            TransferKind::NotFound,
            format!("local directory {} does not exist", parent.display()),
        ));
    }
    if !attrs.is_dir() {
        spec.sync
            .refuse_for_a_file()
            .map_err(|e| fail(TransferKind::Other, e))?;
    }
    let mut outcome = if attrs.is_dir() {
        if dest.exists() && !dest.is_dir() {
            return Err(fail(
                TransferKind::Other,
                format!(
                    "local {} is not a directory; a directory download syncs a directory tree",
                    dest.display()
                ),
            ));
        }
        let paths = (dest.as_path(), remote.as_str());
        sync::sync_tree(&ctx, &sftp, &home, paths, false, &spec.sync, spec.verify).await?
    } else {
        progress.send_modify(|p| {
            p.bytes_total = attrs.len();
            p.files_total = 1;
        });
        let (bytes, sha) = download_file(
            &ctx,
            &sftp,
            &home,
            &remote,
            &dest,
            attrs.permissions.unwrap_or(0o644),
        )
        .await?;
        TransferOutcome {
            bytes,
            files: 1,
            sha256: sha,
            ..TransferOutcome::default()
        }
    };
    outcome.destination = dest.display().to_string();
    drop(sftp);
    if spec.verify && !attrs.is_dir() {
        outcome.verification = Some(verify(conn, &remote, &outcome, &dest).await);
    }
    outcome.duration = started.elapsed();
    Ok(outcome)
}

/// Downloads one file atomically; returns its size and SHA-256.
async fn download_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    remote: &str,
    dest: &Path,
    mode: u32,
) -> Result<(u64, String), SshError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let tmp = parent.join(format!(
        ".{}.mcpssh-download-{}.tmp",
        file_name(dest),
        unique_suffix()
    ));
    let handle = match sftp.open_read(remote).await {
        Ok(handle) => handle,
        Err(e) => return Err(phrase(ctx, sftp, home, e, "read", remote).await),
    };
    let result = receive_file(ctx, sftp, home, remote, &handle, &tmp, mode).await;
    match &result {
        Ok(_) => {
            if let Err(e) = sftp.close(&handle).await {
                tracing::debug!("closing {remote} after reading it: {e:?}");
            }
        }
        Err(_) => sftp.close_after_failure(&handle).await,
    }
    let finished = match result {
        Ok(done) => tokio::fs::rename(&tmp, dest)
            .await
            .map(|()| done)
            .map_err(|e| local_error(e, "replace", dest)),
        Err(e) => Err(e),
    };
    if finished.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    } else {
        ctx.advance(0, 1);
    }
    finished
}

async fn receive_file(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    remote: &str,
    handle: &str,
    tmp: &Path,
    mode: u32,
) -> Result<(u64, String), SshError> {
    let std_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| local_error(e, "create", tmp))?;
    // Disk writes and hashing run on a thread of their own, so the network never waits for them.
    let (to_disk, mut from_net) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        use std::io::Write;
        // The file must be on disk before it is renamed into place. Flushing it as it grows, on
        // a helper thread, leaves only the tail for the final sync instead of the whole file.
        let early = std_file.try_clone()?;
        let (sync_now, sync_requests) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = std::thread::spawn(move || {
            while sync_requests.recv().is_ok() {
                let _ = early.sync_data();
            }
        });
        let mut file = std::io::BufWriter::with_capacity(BLOCK, std_file);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut synced_at = 0u64;
        while let Some(data) = from_net.blocking_recv() {
            hasher.update(&data);
            file.write_all(&data)?;
            written += data.len() as u64;
            if written - synced_at >= EARLY_SYNC_EVERY {
                synced_at = written;
                let _ = sync_now.try_send(());
            }
        }
        drop(sync_now);
        let _ = syncer.join();
        let file = file
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        file.sync_all()?;
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        Ok((written, hex::encode(hasher.finalize())))
    });
    let chunk = sftp.read_len() as usize;
    let in_flight = (4 * 1024 * 1024 / chunk).clamp(8, IN_FLIGHT);
    let mut reads = futures_util::stream::iter((0u64..).map(|i| i * chunk as u64))
        .map(|at| async move {
            sftp.read(handle, at, chunk as u32)
                .await
                .map(|data| (at, data))
        })
        .buffered(in_flight);
    let received: Result<(), SshError> = async {
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
                match sftp.read(handle, at + data.len() as u64, (chunk - data.len()) as u32).await {
                    Ok(more) if more.is_empty() => break,
                    Ok(more) => data.extend_from_slice(&more),
                    Err(e) => return Err(phrase(ctx, sftp, home, e, "read", remote).await),
                }
            }
            let len = data.len();
            if to_disk.send(data).await.is_err() {
                return Ok(()); // the writer failed; its error is reported below
            }
            ctx.advance(len as u64, 0);
            if len < chunk {
                return Ok(());
            }
        }
    }
    .await;
    drop(to_disk);
    let written = writer
        .await
        .map_err(|e| fail(TransferKind::Other, format!("local writer failed: {e}")))?;
    received?;
    written.map_err(|e| local_error(e, "write", tmp))
}

// ---------------------------------------------------------------------------------------------
// Local trees and verification

/// Checks a transferred file against a SHA-256 computed on the remote host (trees are checked
/// file by file by the sync).
async fn verify(
    conn: &Connection,
    remote: &str,
    outcome: &TransferOutcome,
    local: &Path,
) -> (bool, String) {
    let host = &conn.host().name;
    let path = quote(remote);
    let command = format!("sha256sum -- {path} 2>/dev/null || shasum -a 256 -- {path}");
    let output = match capture(conn, &command).await {
        Ok(output) => output,
        Err(e) => {
            return (
                false,
                format!("not verified: could not run sha256sum on {host}: {e}"),
            );
        }
    };
    let remote_sha = output
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    if remote_sha.len() != 64 {
        return (
            false,
            format!("not verified: {host} has neither sha256sum nor shasum"),
        );
    }
    let what = "SHA-256";
    if remote_sha == outcome.sha256 {
        (
            true,
            format!(
                "verified: {what} computed on {host} matches the data sent ({})",
                local.display()
            ),
        )
    } else {
        (
            false,
            format!(
                "MISMATCH: {what} computed on {host} is {remote_sha}, the transferred data's is {}",
                outcome.sha256
            ),
        )
    }
}

/// Runs a command of our own on the host and returns its stdout.
async fn capture(conn: &Connection, command: &str) -> Result<String, SshError> {
    let channel = conn.open_work_channel().await?;
    let (tx, mut rx) = mpsc::channel(64);
    let req = ExecRequest {
        command: command.to_string(),
        cwd: None,
        idle_timeout: Duration::from_secs(120),
    };
    let never = CancellationToken::new();
    let collect = async {
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            if let Output::Stdout(data) = chunk {
                out.extend(data);
            }
        }
        out
    };
    let run = async move {
        let result = exec::run(conn, channel, &req, &tx, &never).await;
        drop(tx); // ends `collect`
        result
    };
    let (result, out) = tokio::join!(run, collect);
    result?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths_should_resolve_like_scp() {
        assert_eq!(remote_relative("~"), ".");
        assert_eq!(remote_relative("~/data/x"), "data/x");
        assert_eq!(remote_relative("/abs"), "/abs");
        assert_eq!(remote_join(".", "f"), "f");
        assert_eq!(remote_join("/", "f"), "/f");
        assert_eq!(remote_join("/a/", "f"), "/a/f");
        assert_eq!(remote_split("/a/b"), ("/a".into(), "b".into()));
        assert_eq!(remote_split("/b"), ("/".into(), "b".into()));
        assert_eq!(remote_split("b"), (".".into(), "b".into()));
        assert_eq!(remote_split("a/b/"), ("a".into(), "b".into()));
    }
}
