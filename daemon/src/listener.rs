//! The daemon's private Unix socket: one daemon per socket (a kernel lock), a private directory,
//! stale socket replacement, and a peer uid check on every accepted connection.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mcp_ssh_proto::paths::{self, PathError, SocketLocation};
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "mcp-sshd is already running (pid {pid}) for socket {socket}; stop it with `mcp-sshctl stop`"
    )]
    AlreadyRunning { pid: String, socket: PathBuf },
    #[error("cannot open lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to replace {0}: it exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the daemon's whole life; the kernel releases it even on SIGKILL.
pub struct InstanceLock {
    _lock: Flock<File>,
}

/// Takes the instance lock next to the socket and records our pid in it.
pub fn acquire_instance_lock(loc: &SocketLocation) -> Result<InstanceLock, ListenError> {
    let path = loc.instance_lock();
    let lock_err = |source| ListenError::Lock {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lock_err)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            lock.set_len(0).map_err(lock_err)?;
            lock.rewind().map_err(lock_err)?;
            writeln!(
                lock,
                "{}\n{}",
                std::process::id(),
                mcp_ssh_proto::version::PACKAGE_VERSION
            )
            .map_err(lock_err)?;
            Ok(InstanceLock { _lock: lock })
        }
        Err((mut file, _)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.lines().next().unwrap_or("unknown").trim().to_string();
            Err(ListenError::AlreadyRunning {
                pid,
                socket: loc.socket.clone(),
            })
        }
    }
}

/// Binds the socket (mode 0600) in its private directory. Call with the instance lock held: any
/// socket file already there is then stale (left by a crashed daemon) and is replaced.
pub fn bind(loc: &SocketLocation) -> Result<UnixListener, ListenError> {
    let path = &loc.socket;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!("replacing stale socket {}", path.display());
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(ListenError::NotASocket(path.clone())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| ListenError::Bind {
        path: path.clone(),
        source,
    })?;
    // The directory is already 0700; the mode on the socket is a second fence (as ssh-agent does).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ListenError::Bind {
            path: path.clone(),
            source,
        }
    })?;
    Ok(listener)
}

/// Prepares the socket directory, takes the lock and binds: the whole "get a listener" step.
pub fn listen(loc: &SocketLocation) -> Result<(InstanceLock, UnixListener), ListenError> {
    paths::ensure_private_dir(loc.dir())?;
    let lock = acquire_instance_lock(loc)?;
    let listener = bind(loc)?;
    Ok((lock, listener))
}

/// Takes over a listening socket passed by systemd: checks its directory like our own, takes
/// the instance lock beside it, and returns the path clients reach it at.
pub fn adopt(
    std_listener: std::os::unix::net::UnixListener,
) -> Result<(InstanceLock, UnixListener, PathBuf), ListenError> {
    let bind_err = |source| ListenError::Bind {
        path: PathBuf::from("<systemd socket>"),
        source,
    };
    let path = std_listener
        .local_addr()
        .map_err(bind_err)?
        .as_pathname()
        .map(Path::to_path_buf)
        .ok_or_else(|| bind_err(std::io::Error::other("the passed socket has no path")))?;
    let loc = SocketLocation {
        socket: path.clone(),
        rule: paths::SocketRule::Override,
    };
    paths::check_private_dir(loc.dir())?;
    let lock = acquire_instance_lock(&loc)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
    tracing::info!("using the socket passed by systemd: {}", path.display());
    Ok((lock, listener, path))
}

/// Removes the socket at shutdown, but only if it is still the one we bound.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// What a request handler knows about the socket connection it came in on.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    pub conn_id: u64,
    pub pid: Option<i32>,
}

/// An accepted connection from our own uid. Runs `on_close` when the connection is dropped,
/// which is how the daemon knows a client went away.
pub struct PeerStream {
    inner: UnixStream,
    info: PeerInfo,
    on_close: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        if let Some(f) = self.on_close.take() {
            f(self.info.conn_id);
        }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections, dropping any whose peer is not our own uid before a byte of HTTP/2 is
/// read. Root is not special-cased: it can read our files anyway, but it does not get our socket.
/// The accept task ends when the returned stream is dropped (the server stopped).
pub fn accept_own_uid(
    listener: UnixListener,
    on_close: Arc<dyn Fn(u64) + Send + Sync>,
) -> ReceiverStream<std::io::Result<PeerStream>> {
    let (tx, rx) = mpsc::channel(16);
    let me = nix::unistd::getuid().as_raw();
    tokio::spawn(async move {
        let mut next_id = 1u64;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: report, back off, keep serving.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::warn!("dropping a connection whose credentials cannot be read: {e}");
                    continue;
                }
            };
            if cred.uid() != me {
                tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a connection from another user");
                continue;
            }
            let conn_id = next_id;
            next_id += 1;
            let on_close = on_close.clone();
            let peer = PeerStream {
                inner: stream,
                info: PeerInfo {
                    conn_id,
                    pid: cred.pid(),
                },
                on_close: Some(Box::new(move |id| on_close(id))),
            };
            if tx.send(Ok(peer)).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}
