//! A real OpenSSH `sshd` on 127.0.0.1 with its own temporary host key, client key, config and
//! known_hosts. Started in the foreground, killed on drop; its log is printed when a test fails.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The unprivileged login used when the tests run as root (created by `tests/run.sh`).
pub const TEST_USER: &str = "mcptest";

/// Where `tests/run.sh` passes the password it gave [`TEST_USER`] for its run.
pub const TEST_PASSWORD_VAR: &str = "MCP_SSH_TEST_PASSWORD";

/// The password of [`TEST_USER`] for this run: `tests/run.sh` makes a random one each run (it is
/// in no file) and leaves the account with no usable password when the run ends. Panics, saying
/// what to run, when the variable is missing: a password test must not pass without testing.
pub fn test_password() -> String {
    match std::env::var(TEST_PASSWORD_VAR) {
        Ok(password) if !password.is_empty() => password,
        _ => panic!(
            "{TEST_PASSWORD_VAR} is not set: the password tests log in as {TEST_USER} with the \
             random password that `bash tests/run.sh` sets for its run only. Run them with \
             `bash tests/run.sh` (as root), e.g. `bash tests/run.sh -- password`"
        ),
    }
}

/// Options for the sshd config.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    pub max_sessions: Option<u32>,
    pub password_auth: bool,
    /// RLIMIT_FSIZE for sshd and its sessions, in KiB (`ulimit -f`): writes beyond it fail.
    pub file_size_limit_kib: Option<u64>,
    /// Extra lines appended to sshd_config.
    pub extra: String,
    /// Which network namespace sshd runs in and is reached from.
    pub place: Place,
    /// `LogLevel DEBUG1` instead of `VERBOSE`: what a bastion forwards is logged only there.
    pub debug_log: bool,
    /// No `Subsystem sftp` line: a server that refuses SFTP (minimal images often lack it).
    pub no_sftp: bool,
}

/// Where sshd runs: what it reaches for `direct-tcpip` is what its namespace reaches.
#[derive(Debug, Clone, Default)]
pub enum Place {
    /// The tests' own namespace, listening on 127.0.0.1.
    #[default]
    Here,
    /// Inside this namespace (a [`crate::netns::Netns`] name), listening on its 127.0.0.1:
    /// reachable only from processes inside it.
    Inside(String),
    /// A bastion between two namespaces: it listens on 127.0.0.1 of `outside` (None: the
    /// tests' own) and serves each connection with `sshd -i` inside `inside`.
    Between {
        outside: Option<String>,
        inside: String,
    },
}

/// The listener of a [`Place::Between`] sshd and the `sshd -i` it started per connection.
struct Gateway {
    stop: Arc<AtomicBool>,
    sessions: Arc<Mutex<Vec<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub struct Sshd {
    pub dir: TempDir,
    pub port: u16,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    opts: SshdOptions,
    child: Option<Child>,
    gateway: Option<Gateway>,
}

fn sshd_binary() -> PathBuf {
    for candidate in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd"] {
        if Path::new(candidate).is_file() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "sshd not found: these tests need a real OpenSSH server. Install it with \
         `apt-get install -y openssh-server` (Debian/Ubuntu) or `dnf install openssh-server`, \
         or run `bash tests/run.sh`, which installs what the tests need"
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The account the fixture logs in as: `mcptest` when running as root, else ourselves.
pub fn login_user() -> String {
    if is_root() {
        if nix::unistd::User::from_name(TEST_USER)
            .ok()
            .flatten()
            .is_none()
        {
            panic!(
                "test user {TEST_USER:?} is missing: run `bash tests/run.sh` (it creates it), or \
                 `useradd -m -s /bin/sh {TEST_USER} && usermod -p '*' {TEST_USER}`"
            );
        }
        TEST_USER.to_string()
    } else {
        current_user()
    }
}

/// The name of the user running this process.
pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| std::env::var("USER").unwrap_or_default())
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "mcp-ssh-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen not found: install openssh-client");
    assert!(status.success(), "ssh-keygen failed");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("mcpssh-sshd-")
            .tempdir()
            .unwrap();
        // sshd reads authorized_keys as the login user, who must be able to reach it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        keygen(&dir.path().join("host_ed25519"));
        keygen(&dir.path().join("id_ed25519"));
        fs::copy(
            dir.path().join("id_ed25519.pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        fs::set_permissions(
            dir.path().join("authorized_keys"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        if is_root() {
            // Debian's privilege separation directory; the package only creates it via its service.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let mut sshd = Sshd {
            client_key: dir.path().join("id_ed25519"),
            known_hosts: dir.path().join("known_hosts"),
            port: 0,
            dir,
            opts,
            child: None,
            gateway: None,
        };
        for _ in 0..5 {
            sshd.port = free_port();
            if sshd.spawn() {
                sshd.write_known_hosts();
                return sshd;
            }
        }
        panic!("sshd would not start; log:\n{}", sshd.log());
    }

    fn write_known_hosts(&self) {
        fs::write(&self.known_hosts, format!("{}\n", self.known_hosts_line())).unwrap();
    }

    /// This server's known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        let public = fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}", self.port)
    }

    /// Adds this server's key to its known_hosts under `name` (a name only a bastion resolves).
    pub fn trust_name(&self, name: &str) {
        self.add_known_host(&self.known_hosts_line().replacen(
            "[127.0.0.1]",
            &format!("[{name}]"),
            1,
        ));
    }

    fn add_known_host(&self, line: &str) {
        let mut known = fs::read_to_string(&self.known_hosts).unwrap();
        known.push_str(line);
        known.push('\n');
        fs::write(&self.known_hosts, known).unwrap();
    }

    /// Adds this server's key to its known_hosts for another port of 127.0.0.1 (a proxy in
    /// front of it).
    pub fn trust_port(&self, port: u16) {
        let line = self.known_hosts_line().replacen(
            &format!("]:{} ", self.port),
            &format!("]:{port} "),
            1,
        );
        self.add_known_host(&line);
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("sshd_config")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\n{sftp}\
             LogLevel {level}\nUseDNS no\nPermitRootLogin prohibit-password\n",
            port = self.port,
            sftp = if self.opts.no_sftp {
                ""
            } else {
                "Subsystem sftp internal-sftp\n"
            },
            level = if self.opts.debug_log {
                "DEBUG1"
            } else {
                "VERBOSE"
            },
        );
        if let Some(n) = self.opts.max_sessions {
            config.push_str(&format!("MaxSessions {n}\n"));
        }
        config.push_str(if self.opts.password_auth {
            "PasswordAuthentication yes\n"
        } else {
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        });
        config.push_str(&self.opts.extra);
        fs::write(self.config_path(), config).unwrap();
    }

    /// Starts sshd on `self.port`; false when the port was taken.
    fn spawn(&mut self) -> bool {
        self.write_config();
        if let Place::Between { outside, inside } = self.opts.place.clone() {
            return self.spawn_gateway(outside, inside);
        }
        let log = self.log_path();
        let before = fs::read_to_string(&log).map(|t| t.len()).unwrap_or(0);
        let mut command = match self.opts.file_size_limit_kib {
            // `ulimit -f` counts 512-byte blocks.
            Some(kib) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -f {}; exec \"$0\" \"$@\"", kib * 2))
                    .arg(sshd_binary());
                c
            }
            None => Command::new(sshd_binary()),
        };
        if let Place::Inside(ns) = &self.opts.place {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
            command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program).args(args);
        }
        let child = command
            .arg("-D")
            .arg("-f")
            .arg(self.config_path())
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let new = text.get(before..).unwrap_or_default();
            if new.contains("Server listening on") {
                return true;
            }
            if new.contains("Address already in use") {
                self.kill();
                return false;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("sshd exited at once ({status}); log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "sshd did not start listening within 10 s; log:\n{}",
            self.log()
        );
    }

    /// Listens on 127.0.0.1:`self.port` (any port when 0) of `outside` and serves each
    /// connection with `sshd -i` inside `inside`. Binding happens on a thread of its own that
    /// enters `outside` first: a network namespace is a per-thread setting.
    fn spawn_gateway(&mut self, outside: Option<String>, inside: String) -> bool {
        let stop = Arc::new(AtomicBool::new(false));
        let sessions: Arc<Mutex<Vec<Child>>> = Arc::default();
        let (bound, port) = std::sync::mpsc::channel();
        let wanted = self.port;
        let (stopping, started) = (stop.clone(), sessions.clone());
        let (sshd, config, log) = (sshd_binary(), self.config_path(), self.log_path());
        let thread = std::thread::spawn(move || {
            if let Some(ns) = outside {
                let file = fs::File::open(Path::new("/run/netns").join(&ns)).unwrap();
                nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            }
            let listener = match std::net::TcpListener::bind(("127.0.0.1", wanted)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = bound.send(None);
                    return;
                }
            };
            let _ = bound.send(listener.local_addr().ok().map(|a| a.port()));
            listener.set_nonblocking(true).unwrap();
            while !stopping.load(Ordering::Relaxed) {
                let Ok((socket, _)) = listener.accept() else {
                    lock(&started).retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                socket.set_nonblocking(false).unwrap();
                let input = socket.try_clone().unwrap();
                let session = Command::new("ip")
                    .args(["netns", "exec", &inside])
                    .arg(&sshd)
                    .arg("-i")
                    .arg("-f")
                    .arg(&config)
                    .arg("-E")
                    .arg(&log)
                    .stdin(Stdio::from(std::os::fd::OwnedFd::from(input)))
                    .stdout(Stdio::from(std::os::fd::OwnedFd::from(socket)))
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot run sshd -i");
                lock(&started).push(session);
            }
        });
        match port.recv().ok().flatten() {
            Some(port) => {
                self.port = port;
                self.gateway = Some(Gateway {
                    stop,
                    sessions,
                    thread: Some(thread),
                });
                true
            }
            None => {
                let _ = thread.join();
                false
            }
        }
    }

    /// The processes serving connections: sshd's children, or a gateway's `sshd -i`s.
    fn connection_pids(&self) -> Vec<u32> {
        match (&self.child, &self.gateway) {
            (Some(child), _) => descendants(child.id()),
            (None, Some(gateway)) => lock(&gateway.sessions)
                .iter()
                .flat_map(|c| std::iter::once(c.id()).chain(descendants(c.id())))
                .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Kills every connection sshd serves, leaving the listener: the peer sees them drop.
    pub fn kill_connections(&self) {
        self.signal_connections(nix::sys::signal::Signal::SIGKILL);
    }

    /// Kills sshd and every connection it serves (as a crash or reboot would; a plain restart of
    /// the listener would leave the per-connection processes, which run in their own sessions).
    pub fn kill(&mut self) {
        // A gateway's listener first, so that no new connection is served meanwhile.
        if let Some(gateway) = &mut self.gateway {
            gateway.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = gateway.thread.take() {
                let _ = thread.join();
            }
        }
        self.kill_connections();
        if let Some(gateway) = self.gateway.take() {
            for mut child in lock(&gateway.sessions).drain(..) {
                let _ = child.wait();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to every process serving a connection (not to the listener): SIGSTOP
    /// makes the network look black-holed, SIGCONT brings it back.
    pub fn signal_connections(&self, signal: nix::sys::signal::Signal) {
        for pid in self.connection_pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Stops and starts sshd on the same port with the same keys.
    pub fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sshd would not restart on port {}", self.port);
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many logins sshd accepted so far (one per SSH connection).
    pub fn accepted_logins(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("Accepted publickey") || l.contains("Accepted password"))
            .count()
    }

    /// Generates another key pair that the server does not accept.
    pub fn foreign_key(&self) -> PathBuf {
        let path = self.dir.path().join("id_other");
        if !path.exists() {
            keygen(&path);
        }
        path
    }

    /// Generates a key pair (with `passphrase`, if any) and adds it to authorized_keys.
    pub fn authorized_key(&self, name: &str, passphrase: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let public = fs::read_to_string(path.with_extension("pub")).unwrap();
        let mut keys = fs::read_to_string(self.dir.path().join("authorized_keys")).unwrap();
        keys.push_str(&public);
        fs::write(self.dir.path().join("authorized_keys"), keys).unwrap();
        path
    }

    /// A hosts.json entry for this server.
    pub fn host(&self, name: &str, user: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "hostname": "127.0.0.1",
            "port": self.port,
            "username": user,
            "identity_file": self.client_key,
            "known_hosts_file": self.known_hosts,
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- sshd log (port {}) ----\n{}", self.port, self.log());
        }
    }
}

/// All processes below `root` in the process tree.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
