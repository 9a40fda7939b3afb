//! mcp-sshctl's machine-readable side: `--json` on every command, and its exit codes.

use mcp_ssh_tests::daemon::{Daemon, ctl_at, hosts_json};
use mcp_ssh_tests::{Sshd, login_user};

use crate::common::stdout_json;

#[test]
fn every_command_should_speak_json_with_meaningful_exit_codes() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));

    let exec = daemon.ctl(&[
        "exec",
        "--json",
        "box",
        "--",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(exec.status.code(), Some(7));
    let v = stdout_json(&exec);
    assert_eq!(
        (
            v["exit_code"].as_i64(),
            v["stdout"].as_str(),
            v["stderr"].as_str()
        ),
        (Some(7), Some("out\n"), Some("err\n"))
    );

    let unknown = daemon.ctl(&["--json", "exec", "nope", "--", "true"]);
    assert_eq!(unknown.status.code(), Some(255));
    assert!(
        stdout_json(&unknown)["error"]
            .as_str()
            .unwrap()
            .contains("unknown host")
    );

    let hosts = stdout_json(&daemon.ctl(&["hosts", "--json"]));
    assert_eq!(hosts[0]["state"], "connected");

    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("f.txt");
    std::fs::write(&file, "data").unwrap();
    let remote = format!("/tmp/mcpssh-ctl-{}.txt", std::process::id());
    let up = daemon.ctl(&["upload", "--json", "box", file.to_str().unwrap(), &remote]);
    assert_eq!(up.status.code(), Some(0));
    assert_eq!(stdout_json(&up)["bytes"], 4);
    let back = local.path().join("back.txt");
    let down = daemon.ctl(&[
        "download",
        "--json",
        "--verify",
        "box",
        &remote,
        back.to_str().unwrap(),
    ]);
    assert_eq!(down.status.code(), Some(0));
    assert_eq!(stdout_json(&down)["verified"], true);
    let _ = std::fs::remove_file(&remote);
    let missing = daemon.ctl(&[
        "download",
        "--json",
        "box",
        "/nonexistent/x",
        back.to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stdout_json(&missing)["error"].is_string());

    let logs = stdout_json(&daemon.ctl(&["logs", "--json", "--tail", "5"]));
    assert_eq!(logs["lines"].as_array().unwrap().len(), 5);

    let bye = stdout_json(&daemon.ctl(&["disconnect", "--json", "box"]));
    assert_eq!(bye["was_connected"], true);
    let stop = daemon.ctl(&["stop", "--json"]);
    assert_eq!(stdout_json(&stop)["stopped"], true);

    // Nothing running now: status says so (3), in JSON too, and never starts a daemon.
    let status = daemon.ctl(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(3));
    assert_eq!(stdout_json(&status)["running"], false);
    let reload = ctl_at(&daemon.socket, &daemon.config, &["reload", "--json"]);
    assert_eq!(reload.status.code(), Some(3));
    assert!(
        stdout_json(&reload)["error"]
            .as_str()
            .unwrap()
            .contains("not running")
    );
}
