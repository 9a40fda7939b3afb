//! mcp-sshctl's machine-readable side: `--json` on every command, and its exit codes.

use std::time::Duration;

use mcp_ssh_tests::daemon::{Daemon, ctl_at, hosts_json};
use mcp_ssh_tests::{Sshd, login_user};

use crate::common::{eventually, stdout_json};

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

/// `exec HOST CMD…` works without `--`, as `ssh HOST CMD…` does: our options may stand between
/// the host and the command, and everything from the command's first word on is the command's.
#[test]
fn exec_should_take_the_command_without_a_double_dash() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let out = daemon.ctl(&["exec", "box", "--cwd", "/", "ls", "-d", "--", "/tmp"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp\n");
    // An option of ours after the command's first word belongs to the command.
    let out = daemon.ctl(&["exec", "box", "echo", "--timeout", "5"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--timeout 5\n");
    let out = daemon.ctl(&["exec", "box", "--", "echo", "x"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "x\n");
}

/// A --config the running daemon does not serve is named on stderr (never silently used or
/// ignored); `reload` refuses, since it would re-read the daemon's file, not the named one.
#[test]
fn a_config_the_daemon_does_not_serve_should_be_said() {
    let daemon = Daemon::start(&hosts_json(&[]));
    let other = daemon.dir.path().join("other.json");
    std::fs::write(&other, hosts_json(&[])).unwrap();
    let out = ctl_at(&daemon.socket, &other, &["hosts", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("serves {}", daemon.config.display()))
            && stderr.contains("was not applied")
            && stderr.contains("mcp-sshctl stop"),
        "{stderr}"
    );
    stdout_json(&out); // stdout is still one JSON document
    let reload = ctl_at(&daemon.socket, &other, &["reload"]);
    assert_eq!(reload.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reload.stderr).contains("nothing reloaded"));
    // The same file through a symlink is the same config: no note.
    let link = daemon.dir.path().join("link.json");
    std::os::unix::fs::symlink(&daemon.config, &link).unwrap();
    let out = ctl_at(&daemon.socket, &link, &["hosts"]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The job commands: start prints the id, the list shows it, logs prints the bytes as written
/// (from offset 0, in windows), --follow ends with the job's exit code, kill and forget work,
/// and status counts running jobs.
#[test]
fn job_commands_should_start_list_follow_kill_and_forget() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));

    // 3 MiB of non-UTF-8 output: several windows, bytes unchanged.
    let start = daemon.ctl(&[
        "job",
        "start",
        "box",
        "--",
        "head -c 3145728 /dev/zero | tr '\\0' '\\377'; echo; echo done; echo oops >&2; exit 3",
    ]);
    assert_eq!(
        start.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    let id = String::from_utf8_lossy(&start.stdout).trim().to_string();
    assert!(id.starts_with("box/"), "{id}");
    let follow = daemon.ctl(&["job", "logs", "--follow", &id]);
    assert_eq!(
        follow.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&follow.stderr)
    );
    assert_eq!(follow.stdout.len(), 3145728 + 6);
    assert!(follow.stdout[..3145728].iter().all(|b| *b == 0xff));
    assert!(follow.stdout.ends_with(b"\ndone\n"));
    let err = daemon.ctl(&["job", "logs", "--stderr", &id]);
    assert_eq!(err.stdout, b"oops\n");

    let list = stdout_json(&daemon.ctl(&["jobs", "--json"]));
    let job = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .unwrap();
    assert_eq!(
        (job["state"].as_str(), job["exit_code"].as_i64()),
        (Some("exited"), Some(3))
    );
    let table = daemon.ctl(&["jobs", "--host", "box"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().next().unwrap().starts_with("ID "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&id) && l.contains("exited")),
        "{text}"
    );

    // A running job: counted by status, killed by TERM, followed to 128 + 15.
    let start = daemon.ctl(&["job", "start", "box", "sleep", "600"]);
    let sleeper = String::from_utf8_lossy(&start.stdout).trim().to_string();
    assert!(eventually(Duration::from_secs(10), || {
        let status = stdout_json(&daemon.ctl(&["status", "--json"]));
        status["jobs_running"] == 1 && status["hosts"][0]["jobs_running"] == 1
    }));
    let running = stdout_json(&daemon.ctl(&["jobs", "--json", "--state", "running"]));
    assert_eq!(running.as_array().unwrap().len(), 1);
    let kill = daemon.ctl(&["job", "kill", &sleeper]);
    assert_eq!(
        kill.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    let follow = daemon.ctl(&["job", "logs", "-f", &sleeper]);
    assert_eq!(follow.status.code(), Some(143));

    let forget = daemon.ctl(&["job", "forget", "--json", &sleeper]);
    assert_eq!(stdout_json(&forget)["removed_remote"], true);
    let list = stdout_json(&daemon.ctl(&["jobs", "--json"]));
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|j| j["id"] != sleeper.as_str())
    );
}
