//! Where the daemon's socket lives, decided the same way by every process of a user.
//!
//! A GUI-launched editor, a terminal, tmux and a systemd unit disagree about environment
//! variables such as `XDG_RUNTIME_DIR` and `TMPDIR`, so the rule reads none of them (GnuPG does
//! the same). In order:
//! 1. an explicit override: `--socket PATH` or `MCP_SSH_SOCKET`;
//! 2. `/run/user/<uid>/mcp-ssh/daemon.sock` when `/run/user/<uid>` is a 0700 directory owned by
//!    the user (this is also systemd's `%t`, so socket activation and manual starts agree);
//! 3. `<home>/.mcp-ssh/run/<host hash>/daemon.sock`, home taken from the password database, the
//!    host hash keeping NFS-shared homes apart;
//! 4. `/tmp/mcp-ssh-<uid>/daemon.sock` when 3 would not fit in `sun_path`.
//!
//! Every directory holding the socket must be a real directory (not a symlink), owned by the
//! user, with no group or other permission bits.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User};

/// Environment variable that overrides the socket path.
pub const SOCKET_ENV: &str = "MCP_SSH_SOCKET";
/// Environment variable that overrides the hosts.json path.
pub const CONFIG_ENV: &str = "MCP_SSH_CONFIG";
/// The socket's file name under a default directory.
pub const SOCKET_NAME: &str = "daemon.sock";

/// Longest socket path the platform accepts (`sun_path` minus the terminating NUL).
#[cfg(target_os = "linux")]
pub const SUN_PATH_MAX: usize = 107;
#[cfg(not(target_os = "linux"))]
pub const SUN_PATH_MAX: usize = 103;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("socket path {path} is {len} bytes long; Unix sockets allow at most {max}")]
    TooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("socket path {0} must be absolute")]
    NotAbsolute(PathBuf),
    #[error("cannot find the home directory of uid {0}")]
    NoHome(u32),
    #[error("cannot create directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to use {path}: it is a symlink, not a directory")]
    Symlink { path: PathBuf },
    #[error("refusing to use {path}: it is not a directory")]
    NotDirectory { path: PathBuf },
    #[error("refusing to use {path}: it is owned by uid {owner}, not by you (uid {me})")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "refusing to use {path}: its mode is {mode:o}, group and others must have no access (chmod 700 {path})"
    )]
    OpenMode { path: PathBuf, mode: u32 },
}

/// The hosts.json to use: `--config PATH`, else `MCP_SSH_CONFIG`, else the platform's config
/// directory (`~/.config/mcp-ssh/hosts.json` on Linux). A relative path is made absolute against
/// the current directory, so a daemon started elsewhere reads the same file.
pub fn resolve_config(explicit: Option<&Path>) -> PathBuf {
    let chosen = explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(CONFIG_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| {
            directories::ProjectDirs::from("", "", "mcp-ssh")
                .map(|d| d.config_dir().join("hosts.json"))
                .unwrap_or_else(|| PathBuf::from("hosts.json"))
        });
    std::path::absolute(&chosen).unwrap_or(chosen)
}

/// Which step of the rule chose the socket path (shown by `mcp-sshctl doctor` and `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRule {
    Override,
    RunUser,
    Home,
    Tmp,
}

impl SocketRule {
    pub fn describe(self) -> &'static str {
        match self {
            SocketRule::Override => "--socket / MCP_SSH_SOCKET",
            SocketRule::RunUser => "/run/user/<uid>",
            SocketRule::Home => "~/.mcp-ssh/run",
            SocketRule::Tmp => "/tmp/mcp-ssh-<uid>",
        }
    }
}

/// The socket path and the files kept beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLocation {
    pub socket: PathBuf,
    pub rule: SocketRule,
}

impl SocketLocation {
    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.socket.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

    /// The directory holding the socket; it must be private (see [`ensure_private_dir`]).
    pub fn dir(&self) -> &Path {
        self.socket.parent().unwrap_or_else(|| Path::new("/"))
    }

    /// Held with `flock` for the daemon's whole life: one daemon per socket.
    pub fn instance_lock(&self) -> PathBuf {
        self.sibling(".lock")
    }

    /// Held by a client while it starts a daemon, so racing clients start exactly one.
    pub fn startup_lock(&self) -> PathBuf {
        self.sibling(".startup.lock")
    }

    /// Where a daemon started by a client writes its log.
    pub fn log_file(&self) -> PathBuf {
        self.sibling(".log")
    }
}

/// Resolves the socket path. `explicit` is the `--socket` argument; the environment override is
/// read here so every binary applies the same precedence.
pub fn resolve_socket(explicit: Option<&Path>) -> Result<SocketLocation, PathError> {
    let from_env = std::env::var_os(SOCKET_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        if !path.is_absolute() {
            return Err(PathError::NotAbsolute(path));
        }
        check_length(&path)?;
        return Ok(SocketLocation {
            socket: path,
            rule: SocketRule::Override,
        });
    }
    let uid = Uid::current();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if check_private_dir(&run_user).is_ok() {
        return Ok(SocketLocation {
            socket: run_user.join("mcp-ssh").join(SOCKET_NAME),
            rule: SocketRule::RunUser,
        });
    }
    let home = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .ok_or(PathError::NoHome(uid.as_raw()))?;
    let socket = home
        .join(".mcp-ssh")
        .join("run")
        .join(host_hash())
        .join(SOCKET_NAME);
    if check_length(&socket).is_ok() {
        return Ok(SocketLocation {
            socket,
            rule: SocketRule::Home,
        });
    }
    let socket = PathBuf::from(format!("/tmp/mcp-ssh-{uid}")).join(SOCKET_NAME);
    Ok(SocketLocation {
        socket,
        rule: SocketRule::Tmp,
    })
}

fn check_length(path: &Path) -> Result<(), PathError> {
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(PathError::TooLong {
            path: path.to_path_buf(),
            len,
            max: SUN_PATH_MAX,
        });
    }
    Ok(())
}

/// A short, stable hash of the host name (FNV-1a), so two machines sharing an NFS home do not
/// share a socket directory.
fn host_hash() -> String {
    let name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

/// Checks that `dir` is a real directory owned by the current user with mode `0700` or stricter.
pub fn check_private_dir(dir: &Path) -> Result<(), PathError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| PathError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(PathError::Symlink {
            path: dir.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(PathError::NotDirectory {
            path: dir.to_path_buf(),
        });
    }
    let me = Uid::current().as_raw();
    if meta.uid() != me {
        return Err(PathError::WrongOwner {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PathError::OpenMode {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates the socket directory (and missing parents) with mode 0700, then checks it.
/// An existing directory is never loosened or tightened silently: a wrong one is an error.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PathError> {
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| PathError::Create {
                path: dir.to_path_buf(),
                source,
            })?;
        // `recursive` applies the mode before the umask; make the leaf exact.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            PathError::Create {
                path: dir.to_path_buf(),
                source,
            }
        })?;
    }
    check_private_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_socket_should_win_and_derive_siblings() {
        let loc = resolve_socket(Some(Path::new("/tmp/x/d.sock"))).unwrap();
        assert_eq!(loc.rule, SocketRule::Override);
        assert_eq!(loc.instance_lock(), PathBuf::from("/tmp/x/d.sock.lock"));
        assert_eq!(
            loc.startup_lock(),
            PathBuf::from("/tmp/x/d.sock.startup.lock")
        );
        assert_eq!(loc.dir(), Path::new("/tmp/x"));
    }

    #[test]
    fn relative_or_long_override_should_be_refused() {
        assert!(matches!(
            resolve_socket(Some(Path::new("rel.sock"))),
            Err(PathError::NotAbsolute(_))
        ));
        let long = format!("/{}", "a".repeat(200));
        assert!(matches!(
            resolve_socket(Some(Path::new(&long))),
            Err(PathError::TooLong { .. })
        ));
    }

    #[test]
    fn default_socket_should_fit_sun_path() {
        // Only meaningful without an override in the environment.
        if std::env::var_os(SOCKET_ENV).is_none() {
            let loc = resolve_socket(None).unwrap();
            assert!(loc.socket.as_os_str().len() <= SUN_PATH_MAX);
            assert!(loc.socket.ends_with(SOCKET_NAME));
        }
    }

    #[test]
    fn private_dir_should_be_created_0700_and_open_dirs_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            ensure_private_dir(&dir),
            Err(PathError::OpenMode { .. })
        ));

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            check_private_dir(&link),
            Err(PathError::Symlink { .. })
        ));
    }
}
