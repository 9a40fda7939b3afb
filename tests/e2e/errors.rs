//! What failures say: in plain words, never Rust's `Debug` output or the transport's internals,
//! and never "retry" for a call that may have done its work.

use std::time::Duration;

use mcp_ssh_tests::daemon::{Daemon, ctl_at, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, text, tool_result};
use mcp_ssh_tests::{Sshd, login_user};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::common::{eventually, processes_matching, unique_token};

/// What only Rust's `Debug` output or hyper/h2/tonic internals look like.
const INTERNALS: &[&str] = &[
    "Status {",
    "code: '",
    "source:",
    "details:",
    "metadata:",
    "MetadataMap",
    "hyper::",
    "h2 ",
    "Some(",
    "Error(",
    "Kind(",
];

fn assert_plain(what: &str, text: &str) {
    for marker in INTERNALS {
        assert!(
            !text.contains(marker),
            "{what} shows internals ({marker:?}): {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_a_command_should_say_it_may_have_run() {
    let sshd = Sshd::start();
    let mut daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let token = unique_token();
    let needle = format!("30.{token}");
    let handle = shim
        .start_call(
            "ssh_execute",
            json!({ "host": "box", "command": format!("sleep {needle}") }),
        )
        .await;
    assert!(
        eventually(Duration::from_secs(10), || !processes_matching(&needle)
            .is_empty()),
        "the command did not start"
    );
    daemon.signal(Signal::SIGKILL);
    // Reaped now: if anything fails below, Drop stops whatever daemon then serves the socket.
    daemon.wait_exit(Duration::from_secs(5));
    let response = tokio::time::timeout(Duration::from_secs(20), handle.await_response())
        .await
        .expect("the call must end when the daemon dies")
        .unwrap();
    let result = tool_result(response);
    let t = text(&result);
    eprintln!("{t}");
    assert!(is_error(&result), "{t}");
    assert!(t.contains("mcp-sshd stopped during the call"), "{t}");
    assert!(t.contains("may or may not have run on box"), "{t}");
    assert!(
        !t.to_lowercase().contains("retry"),
        "a command that may have run is not to be retried blindly: {t}"
    );
    assert_plain("the result of a call cut off by the daemon's death", &t);
    // End the orphaned command.
    for pid in processes_matching(&needle) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

#[test]
fn mcp_sshctl_cut_off_by_the_daemon_dying_should_say_the_command_may_have_run() {
    let sshd = Sshd::start();
    let mut daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let needle = format!("30.{}", unique_token());
    let command = format!("sleep {needle}");
    let ctl = std::process::Command::new(mcp_ssh_tests::bins::bin("mcp-sshctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--config")
        .arg(&daemon.config)
        .args(["exec", "box", "--", &command])
        .env_remove("MCP_SSH_SOCKET")
        .env_remove("MCP_SSH_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The remote one, not mcp-sshctl itself (its arguments hold the command too).
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .iter()
            .any(|&pid| pid != ctl.id())),
        "the command did not start"
    );
    daemon.signal(Signal::SIGKILL);
    // Reaped now: if anything fails below, Drop stops whatever daemon then serves the socket.
    daemon.wait_exit(Duration::from_secs(5));
    let out = ctl.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("may or may not have run on box"),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("retry"), "{stderr}");
    assert_plain("mcp-sshctl exec cut off by the daemon's death", &stderr);
    for pid in processes_matching(&needle) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Every failure these tests can produce cheaply, through the shim and through mcp-sshctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_should_be_plain_words_in_tool_results_and_cli_messages() {
    let sshd = Sshd::start();
    let user = login_user();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = sshd.host("down", &user);
    down["port"] = closed_port.into();
    let mut wrong = sshd.host("wrong", &user);
    wrong["identity_file"] = sshd.foreign_key().display().to_string().into();
    let mut nokey = sshd.host("nokey", &user);
    nokey["identity_file"] = sshd
        .dir
        .path()
        .join("no-such-key")
        .display()
        .to_string()
        .into();
    let mut strict = sshd.host("strict", &user);
    strict["allowed_commands"] = json!(["echo"]);
    let daemon = Daemon::start(&hosts_json(&[
        sshd.host("box", &user),
        down,
        wrong,
        nokey,
        strict,
    ]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let local = tempfile::tempdir().unwrap();
    let missing_local = local.path().join("no-such-file");
    let missing_local = missing_local.to_str().unwrap();
    let into_nowhere = local.path().join("x");
    let into_nowhere = into_nowhere.to_str().unwrap();

    let calls = [
        (
            "unknown host",
            "ssh_execute",
            json!({ "host": "nope", "command": "true" }),
        ),
        (
            "unreachable port",
            "ssh_execute",
            json!({ "host": "down", "command": "true" }),
        ),
        (
            "wrong key",
            "ssh_execute",
            json!({ "host": "wrong", "command": "true" }),
        ),
        (
            "missing identity file",
            "ssh_execute",
            json!({ "host": "nokey", "command": "true" }),
        ),
        (
            "refused by allowed_commands",
            "ssh_execute",
            json!({ "host": "strict", "command": "rm -rf /tmp/nothing" }),
        ),
        (
            "missing local file to upload",
            "ssh_upload",
            json!({ "host": "box", "local_path": missing_local, "remote_path": "/tmp/x" }),
        ),
        (
            "missing remote file to download",
            "ssh_download",
            json!({ "host": "box", "remote_path": "/nonexistent/x", "local_path": into_nowhere }),
        ),
        (
            "unknown job id",
            "ssh_job_output",
            json!({ "job": "box/000000" }),
        ),
        (
            "malformed job id",
            "ssh_job_kill",
            json!({ "job": "not a job" }),
        ),
        (
            "unknown host in a batch",
            "ssh_execute_batch",
            json!({ "host": "nope", "commands": ["true"] }),
        ),
        (
            "status of an unknown host",
            "ssh_status",
            json!({ "host": "nope" }),
        ),
        (
            "disconnect of an unknown host",
            "ssh_disconnect",
            json!({ "host": "nope" }),
        ),
        ("missing argument", "ssh_execute", json!({ "host": "box" })),
        (
            "wrong argument type",
            "ssh_execute",
            json!({ "host": "box", "command": "true", "timeout": "5" }),
        ),
    ];
    for (what, tool, args) in calls {
        let result = shim.call(tool, args).await;
        let t = text(&result);
        assert!(is_error(&result), "{what}: not an error: {t}");
        assert_plain(what, &t);
        eprintln!("{what}: {t}");
    }
    // The host that can only be unreachable is a status, not an error.
    let status = shim.call("ssh_status", json!({ "host": "down" })).await;
    assert_plain("ssh_status of an unreachable host", &text(&status));

    let ctl_calls: [(&str, Vec<&str>); 9] = [
        ("unknown host", vec!["exec", "nope", "--", "true"]),
        ("unreachable port", vec!["exec", "down", "--", "true"]),
        ("wrong key", vec!["exec", "wrong", "--", "true"]),
        ("missing identity file", vec!["exec", "nokey", "--", "true"]),
        (
            "refused by allowed_commands",
            vec!["exec", "strict", "--", "rm", "-rf", "/tmp/nothing"],
        ),
        (
            "missing local file to upload",
            vec!["upload", "box", missing_local, "/tmp/x"],
        ),
        (
            "missing remote file to download",
            vec!["download", "box", "/nonexistent/x", into_nowhere],
        ),
        ("unknown job id", vec!["job", "logs", "box/000000"]),
        ("unknown host to disconnect", vec!["disconnect", "nope"]),
    ];
    for (what, args) in ctl_calls {
        let out = daemon.ctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{what}: succeeded: {stderr}");
        assert!(!stderr.trim().is_empty(), "{what}: says nothing");
        assert_plain(&format!("mcp-sshctl ({what})"), &stderr);
        let json = daemon.ctl(&[&["--json"], args.as_slice()].concat());
        assert_plain(
            &format!("mcp-sshctl --json ({what})"),
            &String::from_utf8_lossy(&json.stdout),
        );
        eprintln!("mcp-sshctl, {what}: {}", stderr.trim());
    }
    // No daemon at all (mcp-sshctl never starts one for status).
    let nowhere = local.path().join("run").join("none.sock");
    let out = ctl_at(&nowhere, &daemon.config, &["status"]);
    assert_plain(
        "mcp-sshctl status without a daemon",
        &String::from_utf8_lossy(&out.stderr),
    );
}
