//! Starting the daemon when none answers, so that any number of clients racing to do it end with
//! exactly one daemon: take the startup lock, check again, spawn, wait until it answers.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcp_ssh_proto::paths::{self, SocketLocation};
use nix::fcntl::{Flock, FlockArg};

use super::ClientError;

/// How long we wait for another client's start (the lock) and for our daemon to answer.
const LOCK_WAIT: Duration = Duration::from_secs(15);
const READY_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn start(
    socket: &SocketLocation,
    config: Option<&Path>,
) -> Result<(), ClientError> {
    paths::ensure_private_dir(socket.dir())?;
    let log = socket.log_file();
    let failed = |reason: String| ClientError::StartFailed {
        reason,
        log: log.clone(),
    };
    let lock_path = socket.startup_lock();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| failed(format!("cannot open {}: {e}", lock_path.display())))?;
    let _lock = lock_with_timeout(file, LOCK_WAIT).await.ok_or_else(|| {
        failed(format!(
            "another client held {} for {} s",
            lock_path.display(),
            LOCK_WAIT.as_secs()
        ))
    })?;

    // Another client may have started it while we waited for the lock.
    if answers(socket).await {
        return Ok(());
    }
    // A daemon the service manager knows is started through it, so it does not end up in the
    // AI client's process tree (or cgroup) and restarts on failure.
    if let Some(manager) = start_through_service_manager(socket) {
        if wait_until_answers(socket, READY_WAIT).await {
            return Ok(());
        }
        return Err(failed(format!(
            "{manager} started mcp-sshd but it does not answer; see {}",
            manager_logs(manager)
        )));
    }
    let program = daemon_program();
    let mut command = Command::new(&program);
    command
        .arg("--detach")
        .arg("--socket")
        .arg(&socket.socket)
        .arg("--log-file")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(config) = config {
        command
            .arg("--config")
            .arg(std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf()));
    }
    tracing::info!("starting {} (log: {})", program.display(), log.display());
    let mut child = command.spawn().map_err(|e| {
        failed(format!(
            "cannot run {}: {e}; is mcp-sshd installed next to this program or on PATH?",
            program.display()
        ))
    })?;

    let deadline = Instant::now() + READY_WAIT;
    let mut backoff = Duration::from_millis(10);
    loop {
        if answers(socket).await {
            // Reap the daemon if it ever exits while we live; it runs in its own session.
            std::thread::spawn(move || child.wait());
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!(
                "it exited at once ({status}): {}",
                last_log_line(&log)
            )));
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "it did not answer within {} s",
                READY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

#[derive(Clone, Copy)]
enum Manager {
    Systemd,
    Launchd,
}

impl std::fmt::Display for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
        })
    }
}

fn manager_logs(manager: Manager) -> &'static str {
    match manager {
        Manager::Systemd => "`journalctl --user -u mcp-sshd`",
        Manager::Launchd => "~/Library/Logs/mcp-sshd.log",
    }
}

/// Starts the daemon through systemd or launchd when the user installed our unit (README,
/// "Running as a service") and the socket is the default one the unit listens on. Returns the
/// manager that accepted the request.
fn start_through_service_manager(socket: &SocketLocation) -> Option<Manager> {
    if socket.rule == paths::SocketRule::Override {
        return None;
    }
    let dirs = directories::BaseDirs::new()?;
    let quiet = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let unit = dirs.config_dir().join("systemd/user/mcp-sshd.socket");
    if unit.is_file()
        && quiet(
            "systemctl",
            &["--user", "start", "mcp-sshd.socket", "mcp-sshd.service"],
        )
    {
        tracing::info!("started mcp-sshd through systemd");
        return Some(Manager::Systemd);
    }
    let agent = dirs
        .home_dir()
        .join("Library/LaunchAgents/dev.mcp-ssh.daemon.plist");
    let target = format!("gui/{}/dev.mcp-ssh.daemon", nix::unistd::getuid());
    if agent.is_file() && quiet("launchctl", &["kickstart", &target]) {
        tracing::info!("started mcp-sshd through launchd");
        return Some(Manager::Launchd);
    }
    None
}

async fn wait_until_answers(socket: &SocketLocation, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(10);
    while Instant::now() < deadline {
        if answers(socket).await {
            return true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
    false
}

/// Polls a non-blocking flock, so waiting never blocks the async runtime.
async fn lock_with_timeout(
    mut file: std::fs::File,
    wait: Duration,
) -> Option<Flock<std::fs::File>> {
    let deadline = Instant::now() + wait;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((f, _)) => file = f,
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answers(socket: &SocketLocation) -> bool {
    super::open_channel(socket).await.is_ok()
}

/// `mcp-sshd` next to this program (an install puts all three together), else from PATH. The
/// shim's start check and `mcp-sshctl doctor` run the same one.
pub fn daemon_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("mcp-sshd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("mcp-sshd"))
}

/// The daemon's last error line, to say why it would not start.
fn last_log_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no log output".into())
}
