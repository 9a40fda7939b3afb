//! The first minutes with a broken setup: the shim fails at start, as MCP clients' health checks
//! (spawn, then `initialize`) can see, with one plain line naming the file and the fix.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcp_ssh_tests::bins::bin;
use mcp_ssh_tests::daemon::Daemon;
use mcp_ssh_tests::sshd::login_user;

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"health-check","version":"0"}}}"#;

/// Runs the shim as a client's health check does: spawn, send `initialize`, wait (at most 10 s).
fn health_check(config: &Path, socket: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(bin("mcp-ssh-shim"))
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .env_remove("MCP_SSH_SOCKET")
        .env_remove("MCP_SSH_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The shim may be gone already: a failed write is what a client would see too.
    let mut stdin = child.stdin.take().unwrap();
    let _ = writeln!(stdin, "{INITIALIZE}");
    let _ = stdin.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A shim that serves keeps running until stdin closes.
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a start failure: non-zero exit, no MCP answer, one stderr line that names the file,
/// says `expected`, and carries no log timestamp or level; nothing started.
fn assert_fails_at_start(config: &Path, socket: &Path, expected: &str) -> String {
    let (code, stdout, stderr) = health_check(config, socket);
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}; stderr: {stderr}"
    );
    assert!(
        !stdout.contains("\"result\""),
        "answered initialize: {stdout}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr:?}");
    let line = lines[0];
    assert!(
        line.contains(&config.display().to_string()),
        "names the file: {line}"
    );
    assert!(line.contains(expected), "{line}");
    assert!(
        line.starts_with("mcp-ssh-shim: ")
            && !line.starts_with(|c: char| c.is_ascii_digit())
            && !["ERROR", "WARN", "INFO"].iter().any(|l| line.contains(l)),
        "no timestamp or level: {line}"
    );
    assert!(
        !socket.exists(),
        "no daemon was started for a broken config"
    );
    line.to_string()
}

#[test]
fn a_missing_config_should_fail_the_shim_at_start() {
    let daemon = Daemon::prepare("{}");
    let missing = daemon.dir.path().join("no-such-hosts.json");
    let line = assert_fails_at_start(&missing, &daemon.socket, "Config file not found");
    assert!(
        line.contains("--config") && line.contains("hosts.example.json"),
        "the fix: {line}"
    );
}

#[test]
fn invalid_json_should_fail_the_shim_at_start() {
    let daemon = Daemon::prepare("{ \"hosts\": [ broken");
    let line = assert_fails_at_start(&daemon.config, &daemon.socket, "line 1 column");
    assert!(line.contains("not valid JSON"), "{line}");
}

#[test]
fn an_unknown_field_should_fail_the_shim_at_start() {
    let daemon = Daemon::prepare(
        r#"{ "hosts": [ { "name": "a", "hostname": "h", "username": "u", "passwrd": "x" } ] }"#,
    );
    let line = assert_fails_at_start(&daemon.config, &daemon.socket, "unknown field `passwrd`");
    assert!(line.contains("Configuration reference"), "the fix: {line}");
}

/// A key file that is not there (yet) is the first call's business, not a start failure.
#[test]
fn a_missing_identity_file_should_not_stop_the_shim() {
    let daemon = Daemon::prepare(
        &serde_json::json!({ "hosts": [ {
            "name": "a", "hostname": "127.0.0.1", "username": login_user(),
            "identity_file": "/nonexistent/id_ed25519",
        } ] })
        .to_string(),
    );
    let (_, stdout, stderr) = health_check(&daemon.config, &daemon.socket);
    assert!(
        stdout.contains("\"result\""),
        "initialize answered: {stdout} {stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/id_ed25519"),
        "and logged: {stderr}"
    );
}
