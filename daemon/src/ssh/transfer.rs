//! Uploads and downloads: atomic on both sides, pipelined, inactivity-timed, cancellable,
//! resumable for large files.
//!
//! Upload ([`send`]): data goes to `.NAME.mcpssh-upload-ID.tmp` beside the destination and is
//! renamed over it (`posix-rename`) only when complete and closed without error; the mode
//! follows the local file. Download ([`receive`]): the same with `.NAME.mcpssh-download-ID.tmp`
//! locally, synced before the rename. On failure the temporary file is removed; if the
//! connection is gone, the remote one is remembered and removed when the host is reached again.
//! Files from [`resume::RESUME_MIN`] on use `.NAME.mcpssh-part-ID.tmp`, named for the transfer,
//! and keep it when cut off ([`resume`]). Directories are synced ([`sync`]).
//!
//! Integrity: SSH's MAC (or AEAD cipher) already guarantees every byte arrives as sent, and the
//! rename that the destination holds the whole file. `verify` adds an end-to-end SHA-256: of the
//! data as read here, while it moves, against one computed on the host from what landed on its
//! disk. Without `verify` nothing is hashed, which on two cores is a third of the CPU.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::exec::{self, ExecRequest, Output};
use super::pending::PendingTemps;
use super::sftp::{OpError, Sftp};
use super::{Connection, SshError, io_text};
use crate::partials::Partials;
use crate::policy::quote;

mod receive;
mod resume;
mod send;
mod sync;
use receive::download_file;
use send::upload_file;
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
    /// A single file: bytes that were already in place from a kept temporary file, or why a
    /// kept one was not used.
    pub resumed_from: u64,
    pub resume_note: Option<String>,
}

/// Where a transfer keeps what it needs beyond the connection.
pub struct Keeping<'a> {
    /// Remote temporary files to remove once the host is reached again.
    pub pending: &'a PendingTemps,
    /// Large files' temporary files kept for a resume.
    pub partials: &'a Arc<Partials>,
}

/// Shared state of one transfer.
struct Ctx<'a> {
    conn: &'a Connection,
    progress: &'a watch::Sender<Progress>,
    cancel: &'a CancellationToken,
    pending: &'a PendingTemps,
    partials: &'a Arc<Partials>,
    idle: Duration,
    /// Compute the SHA-256 of each file's data as it moves (a single file's `verify`).
    hash: bool,
    /// Flush each downloaded file to disk before it is renamed into place (`verify`), so a power
    /// loss right after cannot leave an empty or torn file in its place.
    durable: bool,
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

/// A remote path made absolute against the login directory.
fn absolute(home: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        remote_join(home, path)
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into())
}

/// A remote path as the user should read it.
fn shown(sftp: &Sftp, home: &str, path: &str) -> String {
    format!("{}:{}", sftp.host(), absolute(home, path))
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
                "the SFTP server on {} stopped while trying to {what} {at} ({why}). A file size limit on the host (ulimit -f) or a crash of its sftp-server does this",
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
        TransferKind::PermissionDenied => "permission denied".to_string(),
        _ => io_text(&e),
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
    keeping: &Keeping<'_>,
) -> Result<TransferOutcome, SshError> {
    let started = Instant::now();
    let meta = tokio::fs::metadata(&spec.local)
        .await
        .map_err(|e| local_error(e, "read", &spec.local))?;
    let ctx = Ctx {
        conn,
        progress,
        cancel,
        pending: keeping.pending,
        partials: keeping.partials,
        idle: spec.idle_timeout,
        hash: spec.verify && !meta.is_dir(),
        durable: spec.verify,
    };
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
        let sent = upload_file(
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
            sha256: sent.sha256.unwrap_or_default(),
            verification: sent.verification,
            resumed_from: sent.resumed_from,
            resume_note: sent.note,
            ..TransferOutcome::default()
        }
    };
    outcome.destination = shown(&sftp, &home, &dest);
    outcome.duration = started.elapsed();
    Ok(outcome)
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
    partials: &Arc<Partials>,
) -> Result<TransferOutcome, SshError> {
    let started = Instant::now();
    let pending = PendingTemps::default();
    let mut ctx = Ctx {
        conn,
        progress,
        cancel,
        pending: &pending,
        partials,
        idle: spec.idle_timeout,
        hash: false,
        durable: spec.verify,
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
    ctx.hash = spec.verify && !attrs.is_dir();
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
        let mode_size = (attrs.permissions.unwrap_or(0o644), attrs.len());
        let (bytes, sent) = download_file(&ctx, &sftp, &home, &remote, &dest, mode_size).await?;
        TransferOutcome {
            bytes,
            files: 1,
            sha256: sent.sha256.unwrap_or_default(),
            verification: sent.verification,
            resumed_from: sent.resumed_from,
            resume_note: sent.note,
            ..TransferOutcome::default()
        }
    };
    outcome.destination = dest.display().to_string();
    outcome.duration = started.elapsed();
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------------
// Local trees and verification

/// How a `verify` whose hashes differ begins its message (the audit log records it as an error).
pub const MISMATCH: &str = "MISMATCH";

/// What `verify` found.
enum Checked {
    Matched(String),
    /// The file must not replace the destination.
    Mismatch(String),
    /// The host could not compute the hash; the file is as good as SSH's integrity makes it.
    Unchecked(String),
}

impl Checked {
    /// (matched, how it was checked), as a transfer's outcome carries it.
    fn into_pair(self) -> (bool, String) {
        match self {
            Checked::Matched(why) => (true, why),
            Checked::Mismatch(why) | Checked::Unchecked(why) => (false, why),
        }
    }
}

/// Checks a transferred file, before it is renamed into place, against a SHA-256 computed on
/// the remote host (`remote` is the written temporary file of an upload, the source of a
/// download; trees are checked file by file by the sync). A cancel or the connection's loss
/// during the check fails the transfer, so nothing unchecked is put in place.
async fn verify(
    ctx: &Ctx<'_>,
    remote: &str,
    sha256: &str,
    local: (&Path, bool),
) -> Result<Checked, SshError> {
    tokio::select! {
        checked = compare(ctx.conn, remote, sha256, local) => Ok(checked),
        () = ctx.cancel.cancelled() => Err(fail(TransferKind::Cancelled, "transfer cancelled".into())),
        () = ctx.conn.lost() => Err(ctx.conn.lost_error()),
    }
}

/// [`verify`]'s comparison.
async fn compare(
    conn: &Connection,
    remote: &str,
    sha256: &str,
    (local, upload): (&Path, bool),
) -> Checked {
    let host = &conn.host().name;
    let path = quote(remote);
    let command = format!("sha256sum -- {path} 2>/dev/null || shasum -a 256 -- {path}");
    let output = match capture(conn, &command).await {
        Ok(output) => output,
        Err(e) => {
            return Checked::Unchecked(format!(
                "not verified: could not run sha256sum on {host} ({e}); the file was put in place unchecked"
            ));
        }
    };
    let remote_sha = output.split_whitespace().next().unwrap_or_default();
    if remote_sha.len() != 64 {
        return Checked::Unchecked(format!(
            "not verified: {host} has neither sha256sum nor shasum; the file was put in place unchecked"
        ));
    }
    let local = local.display();
    let (there, here) = if upload {
        (
            "of the file written on",
            format!("the data read from {local}"),
        )
    } else {
        ("of the source on", format!("the data received for {local}"))
    };
    if remote_sha == sha256 {
        Checked::Matched(format!("verified: SHA-256 {there} {host} matches {here}"))
    } else {
        Checked::Mismatch(format!(
            "{MISMATCH}: SHA-256 {there} {host} is {remote_sha}, {here} has {sha256}; the destination was not replaced"
        ))
    }
}

/// Runs a command of our own on the host and returns its stdout.
async fn capture(conn: &Connection, command: &str) -> Result<String, SshError> {
    let channel = conn.open_work_channel().await?;
    let (tx, mut rx) = mpsc::channel(64);
    let req = ExecRequest {
        command: command.to_string(),
        cwd: None,
        // Hashing prints nothing until the end, and a file of many GiB takes minutes to read.
        idle_timeout: Duration::from_secs(30 * 60),
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
