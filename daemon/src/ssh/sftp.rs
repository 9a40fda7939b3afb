//! A thin layer over russh-sftp's raw session: the SFTP operations transfers need, with the
//! `posix-rename@openssh.com` extension (the high-level session does not expose it) and errors
//! phrased for people, naming the path and the host.

use std::time::Duration;

use russh::ChannelMsg;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::connection::ChannelSlot;
use super::{Connection, SshError};

const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// An SFTP session on its own channel of the host's connection (it counts against the budget).
pub struct Sftp {
    raw: RawSftpSession,
    /// Fired when the server ends the session (e.g. sftp-server killed by a file size limit):
    /// russh-sftp would otherwise let outstanding requests wait for their full timeout.
    ended: CancellationToken,
    posix_rename: bool,
    read_len: u32,
    write_len: u32,
    host: String,
    _slot: ChannelSlot,
}

/// What went wrong with one SFTP operation, before it is phrased.
#[derive(Debug)]
pub enum OpError {
    NotFound,
    PermissionDenied,
    /// The server said "failure" (OpenSSH's answer to ENOSPC, EFBIG and the like).
    Failure(String),
    /// No answer within the inactivity timeout.
    Timeout,
    /// The SFTP channel or the connection is gone.
    Gone(String),
    Other(String),
}

impl From<SftpError> for OpError {
    fn from(e: SftpError) -> OpError {
        match e {
            SftpError::Status(s) => match s.status_code {
                StatusCode::NoSuchFile => OpError::NotFound,
                StatusCode::PermissionDenied => OpError::PermissionDenied,
                StatusCode::Failure => OpError::Failure(s.error_message),
                StatusCode::NoConnection | StatusCode::ConnectionLost => {
                    OpError::Gone(s.error_message)
                }
                other => OpError::Other(format!("{other}: {}", s.error_message)),
            },
            SftpError::Timeout => OpError::Timeout,
            // The session's channel is gone ("sender dropped", "session closed", send errors).
            SftpError::IO(m) | SftpError::UnexpectedBehavior(m) => OpError::Gone(m),
            other => OpError::Other(other.to_string()),
        }
    }
}

pub type OpResult<T> = Result<T, OpError>;

/// A remote entry as listed or stat'ed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub attrs: FileAttributes,
}

impl Sftp {
    /// Opens the `sftp` subsystem on a new channel; `timeout` bounds every request.
    pub async fn open(conn: &Connection, timeout: Duration) -> Result<Sftp, SshError> {
        let (mut channel, slot) = conn.open_work_channel().await?;
        let target = conn.host().target();
        let failed = |message: String| SshError::Protocol {
            target: target.clone(),
            message,
        };
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| failed(format!("cannot start the sftp subsystem: {e}")))?;
        // russh does not wait for the answer. Without it a server with no sftp subsystem would
        // leave the SFTP handshake waiting out the whole idle timeout. A server that does not
        // answer in time gets the handshake (and its own deadline) as before.
        let answer = async {
            loop {
                match channel.wait().await {
                    Some(ChannelMsg::Success) => return true,
                    Some(ChannelMsg::Failure | ChannelMsg::Eof | ChannelMsg::Close) | None => {
                        return false;
                    }
                    Some(_) => {}
                }
            }
        };
        if let Ok(false) = tokio::time::timeout(conn.host().connect_timeout, answer).await {
            return Err(failed(
                "its sshd refused the sftp subsystem (is `Subsystem sftp` configured in its sshd_config?); nothing was transferred"
                    .into(),
            ));
        }
        let config = russh_sftp::client::Config {
            max_packet_len: 512 * 1024,
            ..Default::default()
        };
        let ended = CancellationToken::new();
        let stream = WatchedStream {
            inner: channel.into_stream(),
            ended: ended.clone(),
        };
        let mut raw = RawSftpSession::new_with_config(stream, config);
        raw.set_timeout(timeout.as_secs().max(1));
        let version = raw
            .init()
            .await
            .map_err(|e| failed(format!("the server's sftp subsystem did not start ({e}); is `Subsystem sftp` configured in sshd_config?")))?;
        let posix_rename = version
            .extensions
            .get(POSIX_RENAME)
            .is_some_and(|v| v == "1");
        // Large reads when the server says it allows them (OpenSSH: ~255 KiB), as its own sftp does.
        let mut read_len = 32 * 1024;
        let mut write_len = 32 * 1024;
        if version
            .extensions
            .get("limits@openssh.com")
            .is_some_and(|v| v == "1")
            && let Ok(limits) = raw.limits().await
        {
            let limits = russh_sftp::client::rawsession::Limits::from(limits);
            raw.set_limits(limits);
            if let Some(max) = limits.read_len {
                read_len = u32::try_from(max.min(256 * 1024)).unwrap_or(read_len);
            }
            if let Some(max) = limits.write_len {
                write_len = u32::try_from(max.min(256 * 1024)).unwrap_or(write_len);
            }
        }
        Ok(Sftp {
            raw,
            ended,
            posix_rename,
            read_len,
            write_len,
            host: conn.host().name.clone(),
            _slot: slot,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Resolves when the server has ended the SFTP session.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }

    /// The largest write the server accepts in one request.
    pub fn write_len(&self) -> u32 {
        self.write_len
    }

    /// The largest read the server serves in one request.
    pub fn read_len(&self) -> u32 {
        self.read_len
    }

    pub async fn stat(&self, path: &str) -> OpResult<FileAttributes> {
        Ok(self.raw.stat(path).await?.attrs)
    }

    /// The remote login directory (where relative paths start).
    pub async fn home(&self) -> OpResult<String> {
        let name = self.raw.realpath(".").await?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| OpError::Other("empty realpath reply".into()))
    }

    pub async fn create_exclusive(&self, path: &str, mode: u32) -> OpResult<String> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::TRUNCATE;
        Ok(self.raw.open(path, flags, attrs).await?.handle)
    }

    /// Opens an existing file for writing, as it is (a kept temporary file being resumed).
    pub async fn open_write(&self, path: &str) -> OpResult<String> {
        let flags = OpenFlags::WRITE;
        Ok(self
            .raw
            .open(path, flags, FileAttributes::empty())
            .await?
            .handle)
    }

    /// The attributes of `path` itself, not of what a link there points at.
    pub async fn lstat(&self, path: &str) -> OpResult<FileAttributes> {
        Ok(self.raw.lstat(path).await?.attrs)
    }

    pub async fn open_read(&self, path: &str) -> OpResult<String> {
        Ok(self
            .raw
            .open(path, OpenFlags::READ, FileAttributes::empty())
            .await?
            .handle)
    }

    pub async fn write(&self, handle: &str, offset: u64, data: Vec<u8>) -> OpResult<()> {
        self.raw.write(handle, offset, data).await?;
        Ok(())
    }

    /// Reads up to `len` bytes; an empty result means end of file.
    pub async fn read(&self, handle: &str, offset: u64, len: u32) -> OpResult<Vec<u8>> {
        match self.raw.read(handle, offset, len).await {
            Ok(data) => Ok(data.data),
            Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The whole of a small file (ignore files); `open_read` follows a link, so callers read
    /// only what was listed as a regular file.
    pub async fn read_whole(&self, path: &str) -> OpResult<Vec<u8>> {
        let handle = self.open_read(path).await?;
        let mut data = Vec::new();
        let read = loop {
            match self.read(&handle, data.len() as u64, self.read_len).await {
                Ok(chunk) if chunk.is_empty() => break Ok(()),
                Ok(chunk) => data.extend(chunk),
                Err(e) => break Err(e),
            }
        };
        let _ = self.close(&handle).await;
        read.map(|()| data)
    }

    /// Sets a path's modification time (its access time too: SFTP sets both together).
    pub async fn set_mtime(&self, path: &str, mtime: u32) -> OpResult<()> {
        let attrs = FileAttributes {
            atime: Some(mtime),
            mtime: Some(mtime),
            ..FileAttributes::empty()
        };
        self.raw.setstat(path, attrs).await?;
        Ok(())
    }

    pub async fn remove_dir(&self, path: &str) -> OpResult<()> {
        self.raw.rmdir(path).await?;
        Ok(())
    }

    /// Closes a handle, reporting the server's verdict (write errors can surface only here).
    pub async fn close(&self, handle: &str) -> OpResult<()> {
        self.raw.close(handle).await?;
        Ok(())
    }

    /// Closes a handle after a failure, without waiting long on a session that may be dead.
    pub async fn close_after_failure(&self, handle: &str) {
        if !self.ended.is_cancelled() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.raw.close(handle))
                .await;
        }
    }

    /// Cuts the open file to `len` bytes (a resumed temporary file longer than its checked part).
    pub async fn truncate(&self, handle: &str, len: u64) -> OpResult<()> {
        let attrs = FileAttributes {
            size: Some(len),
            ..FileAttributes::empty()
        };
        self.raw.fsetstat(handle, attrs).await?;
        Ok(())
    }

    /// The mode, and the modification (and access) time when given, in one request.
    pub async fn set_attrs(&self, path: &str, mode: u32, mtime: Option<u32>) -> OpResult<()> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            atime: mtime,
            mtime,
            ..FileAttributes::empty()
        };
        self.raw.setstat(path, attrs).await?;
        Ok(())
    }

    pub async fn set_mode(&self, path: &str, mode: u32) -> OpResult<()> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        self.raw.setstat(path, attrs).await?;
        Ok(())
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> OpResult<()> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..FileAttributes::empty()
        };
        self.raw.mkdir(path, attrs).await?;
        Ok(())
    }

    pub async fn remove(&self, path: &str) -> OpResult<()> {
        self.raw.remove(path).await?;
        Ok(())
    }

    /// Lists a directory (without `.` and `..`).
    pub async fn list(&self, path: &str) -> OpResult<Vec<Entry>> {
        let handle = self.raw.opendir(path).await?.handle;
        let mut entries = Vec::new();
        loop {
            match self.raw.readdir(&handle).await {
                Ok(name) => entries.extend(
                    name.files
                        .into_iter()
                        .filter(|f| f.filename != "." && f.filename != "..")
                        .map(|f| Entry {
                            name: f.filename,
                            attrs: f.attrs,
                        }),
                ),
                Err(SftpError::Status(s)) if s.status_code == StatusCode::Eof => break,
                Err(e) => {
                    let _ = self.raw.close(&handle).await;
                    return Err(e.into());
                }
            }
        }
        self.raw.close(&handle).await?;
        Ok(entries)
    }

    /// Renames `from` over `to`, replacing it atomically (`posix-rename@openssh.com`). Servers
    /// without the extension cannot replace atomically: the old file is removed first.
    pub async fn rename_over(&self, from: &str, to: &str) -> OpResult<()> {
        if self.posix_rename {
            let mut data = Vec::with_capacity(8 + from.len() + to.len());
            for s in [from, to] {
                data.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
                data.extend_from_slice(s.as_bytes());
            }
            return match self.raw.extended(POSIX_RENAME, data).await? {
                russh_sftp::protocol::Packet::Status(s) if s.status_code == StatusCode::Ok => {
                    Ok(())
                }
                russh_sftp::protocol::Packet::Status(s) => Err(SftpError::Status(s).into()),
                _ => Err(OpError::Other("unexpected reply to posix-rename".into())),
            };
        }
        match self.raw.rename(from, to).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.remove(to).await?;
                self.raw.rename(from, to).await?;
                Ok(())
            }
        }
    }

    /// Free bytes on the file system holding `path`, when the server can say.
    pub async fn free_space(&self, path: &str) -> Option<u64> {
        let mut data = Vec::new();
        data.extend_from_slice(&u32::try_from(path.len()).ok()?.to_be_bytes());
        data.extend_from_slice(path.as_bytes());
        match self.raw.extended("statvfs@openssh.com", data).await.ok()? {
            russh_sftp::protocol::Packet::ExtendedReply(reply) => {
                // f_bsize, f_frsize, f_blocks, f_bfree, f_bavail, ... as u64s.
                let field = |i: usize| {
                    reply
                        .data
                        .get(i * 8..i * 8 + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                };
                Some(field(1)?.saturating_mul(field(4)?))
            }
            _ => None,
        }
    }
}

/// The channel stream, reporting its end (EOF or error on read) through `ended`.
struct WatchedStream<S> {
    inner: S,
    ended: CancellationToken,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(r) = &result
            && (r.is_err() || buf.filled().len() == before)
        {
            self.ended.cancel();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
