//! The real `mcp-sshd` binary on a socket in a private temporary directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mcp_ssh_shim::client::{ClientKind, ClientOptions, DaemonClient, Identity};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::bins::bin;

pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the daemon process (e.g. SSH_AUTH_SOCK).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A hosts.json with these host entries and defaults for everything else.
pub fn hosts_json(hosts: &[serde_json::Value]) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "log_level": "DEBUG", "hosts": hosts }))
        .unwrap()
}

impl Daemon {
    /// A socket directory and config, without starting anything (for autostart tests).
    pub fn prepare(config_text: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("mcpssh-d-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("hosts.json");
        fs::write(&config, config_text).unwrap();
        Daemon {
            socket: dir.path().join("run").join("d.sock"),
            log: dir.path().join("run").join("d.sock.log"),
            config,
            dir,
            env: Vec::new(),
            child: None,
        }
    }

    /// Starts mcp-sshd and waits until it answers.
    pub fn start(config_text: &str) -> Daemon {
        let mut d = Daemon::prepare(config_text);
        d.spawn();
        d
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(bin("mcp-sshd"));
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket);
        command
            .env_remove("MCP_SSH_SOCKET")
            .env_remove("MCP_SSH_CONFIG")
            .env_remove("RUST_LOG")
            .env_remove("SSH_AUTH_SOCK")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn spawn(&mut self) {
        fs::create_dir_all(self.socket.parent().unwrap()).unwrap();
        fs::set_permissions(
            self.socket.parent().unwrap(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot run mcp-sshd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "mcp-sshd exited at once ({status}); log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "mcp-sshd did not answer within 10 s; log:\n{}",
            self.log_text()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Waits for the daemon process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs mcp-sshctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.socket, &self.config, args)
    }

    /// A handshaken client of this daemon, as mcp-sshctl would be.
    pub async fn client(&self) -> DaemonClient {
        DaemonClient::connect(&self.client_options())
            .await
            .expect("cannot connect to the daemon")
    }

    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            socket: Some(self.socket.clone()),
            config: Some(self.config.clone()),
            identity: Identity {
                kind: ClientKind::Ctl,
                name: "e2e-test".into(),
                version: "0".into(),
                program: "e2e",
            },
        }
    }
}

/// Runs mcp-sshctl with an explicit socket and config.
pub fn ctl_at(socket: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(bin("mcp-sshctl"))
        .arg("--socket")
        .arg(socket)
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MCP_SSH_SOCKET")
        .env_remove("MCP_SSH_CONFIG")
        .output()
        .expect("cannot run mcp-sshctl")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            // A daemon some client autostarted: its pid is in the instance lock file.
            stop_by_lock_file(&self.socket);
        }
        if std::thread::panicking() {
            eprintln!("---- mcp-sshd log ----\n{}", self.log_text());
        }
    }
}

/// Stops the daemon recorded in `<socket>.lock`, if it is still running.
pub fn stop_by_lock_file(socket: &Path) {
    let mut lock = socket.as_os_str().to_owned();
    lock.push(".lock");
    let Some(pid) = fs::read_to_string(PathBuf::from(lock))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
    else {
        return;
    };
    let pid = Pid::from_raw(pid);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && kill(pid, None).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}
