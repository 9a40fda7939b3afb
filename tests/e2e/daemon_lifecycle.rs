//! The daemon as a process: one per socket, stale sockets, signals, the socket's private
//! directory and peer uid check, and `mcp-sshctl status`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use mcp_ssh_tests::daemon::{ctl_at, hosts_json};
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::{Daemon, Sshd, is_root, login_user};
use nix::sys::signal::Signal;

#[test]
fn status_should_say_when_no_daemon_runs() {
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let out = ctl_at(&daemon.socket, &daemon.config, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mcp-sshd is not running"), "{text}");
    assert!(!daemon.socket.exists(), "status must not start a daemon");
    let out = ctl_at(&daemon.socket, &daemon.config, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["running"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_should_show_hosts_and_clients() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[
        sshd.host("alpha", &login_user()),
        sshd.host("beta", &login_user()),
    ]));
    let client = daemon.client().await;
    assert_eq!(run(&client, "alpha", "true", 0).await.code(), Some(0));

    let out = daemon.ctl(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pid {}", daemon.pid().unwrap())),
        "{text}"
    );
    assert!(
        text.contains(&daemon.socket.display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&daemon.config.display().to_string()),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("alpha") && l.contains("connected") && l.contains("0/9")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("beta") && l.contains("disconnected")),
        "{text}"
    );
    assert!(
        text.contains("e2e-test"),
        "attached client missing:\n{text}"
    );

    let out = daemon.ctl(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["hosts"][0]["name"], "alpha");
    assert_eq!(json["hosts"][0]["state"], "connected");
    assert!(
        json["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "e2e-test")
    );
}

#[test]
fn second_daemon_should_refuse_and_name_the_first() {
    let daemon = Daemon::start(&hosts_json(&[]));
    let out = daemon.command().output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("already running (pid {})", daemon.pid().unwrap())),
        "{text}"
    );
    // The first one still serves.
    assert!(daemon.ctl(&["status"]).status.success());
}

#[test]
fn stale_socket_should_be_replaced() {
    let mut daemon = Daemon::start(&hosts_json(&[]));
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    assert!(daemon.socket.exists(), "SIGKILL leaves the socket behind");
    daemon.spawn();
    assert!(daemon.ctl(&["status"]).status.success());
}

#[test]
fn sigterm_should_exit_cleanly_and_remove_the_socket() {
    let mut daemon = Daemon::start(&hosts_json(&[]));
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!daemon.socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_should_let_an_in_flight_command_finish() {
    let sshd = Sshd::start();
    let mut daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let call = tokio::spawn(async move { run(&client, "box", "sleep 1; echo finished", 0).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    daemon.signal(Signal::SIGTERM);
    let result = call.await.unwrap();
    assert_eq!(result.stdout_text(), "finished\n", "{result:?}");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn socket_directory_open_to_others_should_be_refused() {
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let dir = daemon.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = daemon.command().output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("chmod 700"), "{text}");
}

#[test]
fn symlinked_socket_directory_should_be_refused() {
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), daemon.socket.parent().unwrap()).unwrap();
    let out = daemon.command().output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("is a symlink"), "{text}");
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing may be created through the link"
    );
}

#[test]
fn another_uid_should_be_refused_at_the_socket() {
    if !is_root() {
        return; // Needs root to act as another user; CI runs as root.
    }
    let daemon = Daemon::start(&hosts_json(&[]));
    // Open the directory and socket so only the peer uid check stands in the way.
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // As nobody: connect, send the HTTP/2 preface and a SETTINGS frame, read the answer.
    // SIGPIPE ignored: the daemon may drop us before the write, which is a refusal too.
    let script = r#"use IO::Socket::UNIX; $SIG{PIPE} = 'IGNORE';
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!";
        print $s "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0" or print "error write\n";
        my $n = sysread($s, my $buf, 64);
        print defined $n ? "read $n\n" : "error $!\n";"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "perl",
            "-e",
            script,
        ])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("read 0") || text.contains("error"),
        "another uid got an answer: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        daemon
            .log_text()
            .contains("refused a connection from another user"),
        "{}",
        daemon.log_text()
    );
    // Our own uid is still served.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(daemon.ctl(&["status"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_should_tell_in_flight_calls() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { run(&client, "box", "sleep 30", 0).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = daemon.ctl(&["disconnect", "box"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("call left hanging")
        .unwrap();
    let message = result.error_message();
    assert!(
        message.contains("connection to") && message.contains("lost"),
        "{message}"
    );
    assert!(message.contains("mcp-sshctl"), "{message}");
    // The next call reconnects.
    assert_eq!(run(&client, "box", "true", 0).await.code(), Some(0));
    assert_eq!(rpc::status(&client).await.hosts[0].connections_opened, 2);
}
