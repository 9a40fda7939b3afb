//! Running as a service: systemd socket activation and readiness (with systemd's own
//! `systemd-socket-activate`), and the shipped unit and LaunchAgent files.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mcp_ssh_proto::paths::SOCKET_NAME;
use mcp_ssh_shim::client::{ClientKind, ClientOptions, DaemonClient, Identity};
use mcp_ssh_tests::bins::bin;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Sshd, login_user};

use crate::common::eventually;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// `key=value` lines of a unit file (sections ignored: our keys are unique).
fn unit_values(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix(&format!("{key}="))
                .map(str::to_string)
        })
        .collect()
}

fn activator() -> &'static str {
    if Path::new("/usr/bin/systemd-socket-activate").exists()
        || Path::new("/bin/systemd-socket-activate").exists()
    {
        return "systemd-socket-activate";
    }
    panic!(
        "systemd-socket-activate not found: install systemd (`apt-get install -y systemd`), or run `bash tests/run.sh`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_should_serve_and_report_ready() {
    let sshd = Sshd::start();
    let dir = tempfile::Builder::new()
        .prefix("mcpssh-act-")
        .tempdir()
        .unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let socket = run_dir.join(SOCKET_NAME);
    let config = dir.path().join("hosts.json");
    std::fs::write(&config, hosts_json(&[sshd.host("box", &login_user())])).unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // The activator passes on only the environment named with -E.
    let mut child = Command::new(activator())
        .arg("-l")
        .arg(&socket)
        .arg(format!("-ENOTIFY_SOCKET={}", notify_path.display()))
        .arg(format!("-EMCP_SSH_SOCKET={}", socket.display()))
        .arg(bin("mcp-sshd"))
        .arg("--config")
        .arg(&config)
        .arg("--foreground")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || socket.exists()),
        "the activator did not create the socket"
    );

    // The first connection starts the daemon; it reports READY=1 once serving.
    let opts = ClientOptions {
        socket: Some(socket.clone()),
        config: Some(config.clone()),
        identity: Identity {
            kind: ClientKind::Ctl,
            name: "e2e".into(),
            version: "0".into(),
            program: "e2e",
        },
    };
    let client = DaemonClient::connect(&opts)
        .await
        .expect("the activated daemon answers");
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no sd_notify message");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert_eq!(
        client.hello.daemon_pid,
        child.id(),
        "the daemon runs in the activated process"
    );
    assert_eq!(
        run(&client, "box", "echo activated", 0).await.stdout_text(),
        "activated\n"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        socket.exists(),
        "the socket belongs to systemd: the daemon must not remove it"
    );
}

#[test]
fn systemd_units_should_match_the_socket_rule() {
    let socket_unit = repo_file("systemd/mcp-sshd.socket");
    let service_unit = repo_file("systemd/mcp-sshd.service");
    assert_eq!(
        unit_values(&socket_unit, "ListenStream"),
        [format!("%t/mcp-ssh/{SOCKET_NAME}")]
    );
    assert_eq!(unit_values(&socket_unit, "SocketMode"), ["0600"]);
    assert_eq!(unit_values(&socket_unit, "DirectoryMode"), ["0700"]);
    assert_eq!(unit_values(&service_unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&service_unit, "Restart"), ["on-failure"]);
    let exec = unit_values(&service_unit, "ExecStart");
    assert!(
        exec.len() == 1 && exec[0].ends_with("/mcp-sshd --foreground"),
        "{exec:?}"
    );
}

#[test]
fn launch_agent_should_be_a_valid_plist_naming_mcp_sshd() {
    let value = plist::Value::from_file(repo_file("launchd/dev.mcp-ssh.daemon.plist"))
        .expect("invalid plist");
    let dict = value.as_dictionary().unwrap();
    assert_eq!(
        dict.get("Label").and_then(plist::Value::as_string),
        Some("dev.mcp-ssh.daemon")
    );
    let args: Vec<&str> = dict
        .get("ProgramArguments")
        .and_then(plist::Value::as_array)
        .unwrap()
        .iter()
        .filter_map(plist::Value::as_string)
        .collect();
    assert!(
        args[0].ends_with("/mcp-sshd") && args[0].starts_with("__HOME__/"),
        "{args:?}"
    );
    assert_eq!(args[1..], ["--foreground"], "never --detach under launchd");
    assert_eq!(
        dict.get("RunAtLoad").and_then(plist::Value::as_boolean),
        Some(true)
    );
    let keep_alive = dict
        .get("KeepAlive")
        .and_then(plist::Value::as_dictionary)
        .unwrap();
    assert_eq!(
        keep_alive
            .get("SuccessfulExit")
            .and_then(plist::Value::as_boolean),
        Some(false)
    );
    let log = dict
        .get("StandardErrorPath")
        .and_then(plist::Value::as_string)
        .unwrap();
    assert_eq!(log, "__HOME__/Library/Logs/mcp-sshd.log");
}
