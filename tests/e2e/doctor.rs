//! `mcp-sshctl doctor` on a broken setup: each problem reported with its fix.

use std::os::unix::fs::PermissionsExt;

use mcp_ssh_tests::daemon::{Daemon, ctl_at};
use mcp_ssh_tests::{Sshd, login_user};
use serde_json::{Value, json};

fn checks(out: &std::process::Output) -> Vec<Value> {
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    report["checks"].as_array().unwrap().clone()
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[test]
fn doctor_should_report_a_broken_setup_with_fixes() {
    let sshd = Sshd::start();
    let mut good = sshd.host("good", &login_user());
    good["password"] = "not-used-secret".into();
    let mut unknown_key = sshd.host("newbox", &login_user());
    let empty = sshd.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    unknown_key["known_hosts_file"] = empty.display().to_string().into();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = sshd.host("down", &login_user());
    down["port"] = closed.into();
    let mut daemon = Daemon::prepare(&json!({ "hosts": [good, unknown_key, down] }).to_string());
    std::fs::set_permissions(&daemon.config, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Daemon down: said so, with how to start it; not an error by itself.
    let out = ctl_at(&daemon.socket, &daemon.config, &["doctor", "--json"]);
    let c = checks(&out);
    assert_eq!(find(&c, "daemon")["level"], "warn");
    assert!(
        find(&c, "daemon")["detail"]
            .as_str()
            .unwrap()
            .contains("not running")
    );
    assert!(!daemon.socket.exists(), "doctor never starts the daemon");
    let perms = find(&c, "config permissions");
    assert_eq!(perms["level"], "warn");
    assert!(perms["fix"].as_str().unwrap().starts_with("chmod 600"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("not-used-secret"));

    daemon.spawn();
    let out = ctl_at(&daemon.socket, &daemon.config, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "failures give a non-zero exit");
    let c = checks(&out);
    assert_eq!(find(&c, "daemon")["level"], "ok");
    assert_eq!(find(&c, "host good")["level"], "ok");
    let key = find(&c, "host newbox");
    assert_eq!(key["level"], "fail");
    let detail = key["detail"].as_str().unwrap();
    assert!(
        detail.contains("is not known")
            && detail.contains("SHA256:")
            && detail.contains("accept-new"),
        "{detail}"
    );
    let down = find(&c, "host down");
    assert_eq!(down["level"], "fail");
    assert!(down["detail"].as_str().unwrap().contains("TCP"), "{down}");
    assert!(down["fix"].as_str().unwrap().contains("port"));

    // The human form carries the same, with fixes on their own lines.
    let out = ctl_at(&daemon.socket, &daemon.config, &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  host newbox") && text.contains("fix: chmod 600"),
        "{text}"
    );
}

#[test]
fn doctor_should_flag_an_invalid_config() {
    let daemon = Daemon::prepare(
        "{ \"hosts\": [ { \"name\": \"a\", \"hostname\": \"h\", \"username\": \"u\", \"passwrd\": \"x\" } ] }",
    );
    let out = ctl_at(&daemon.socket, &daemon.config, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let c = checks(&out);
    let config = find(&c, "config");
    assert_eq!(config["level"], "fail");
    assert!(
        config["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `passwrd`"),
        "{config}"
    );
}

#[test]
fn check_config_should_name_a_missing_identity_file() {
    let sshd = Sshd::start();
    let mut host = sshd.host("box", &login_user());
    host["identity_file"] = "/nonexistent/id_ed25519".into();
    let daemon = Daemon::prepare(&json!({ "hosts": [host] }).to_string());
    let out = std::process::Command::new(mcp_ssh_tests::bins::bin("mcp-sshd"))
        .arg("--check-config")
        .arg("--config")
        .arg(&daemon.config)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("host box: identity_file /nonexistent/id_ed25519 does not exist"),
        "{said}"
    );
}

/// Right after install no daemon runs: doctor checks every host anyway, through a private daemon
/// it stops afterwards, and every problem comes with a fix that names what to check.
#[test]
fn doctor_without_a_daemon_should_check_every_host_and_leave_nothing_running() {
    let sshd = Sshd::start();
    let good = sshd.host("good", &login_user());
    let mut refused = sshd.host("refused", &login_user());
    let foreign = sshd.foreign_key();
    refused["identity_file"] = foreign.display().to_string().into();
    let mut nokey = sshd.host("nokey", &login_user());
    nokey["identity_file"] = "/nonexistent/id_ed25519".into();
    // A port that answers, but not SSH.
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_port = web.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in web.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.0 200 OK\r\n\r\n");
        }
    });
    let mut http = sshd.host("http", &login_user());
    http["port"] = web_port.into();
    let daemon = Daemon::prepare(&json!({ "hosts": [good, refused, nokey, http] }).to_string());

    let out = ctl_at(&daemon.socket, &daemon.config, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "failures give a non-zero exit");
    let c = checks(&out);
    assert_eq!(find(&c, "daemon")["level"], "warn");
    assert_eq!(find(&c, "host good")["level"], "ok", "{c:?}");

    let auth = find(&c, "host refused");
    assert_eq!(auth["level"], "fail");
    let detail = auth["detail"].as_str().unwrap();
    assert!(
        detail.contains("authentication failed")
            && detail.contains(&login_user())
            && detail.contains(&foreign.display().to_string()),
        "which user and keys were tried: {detail}"
    );
    let fix = auth["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("authorized_keys")
            && fix.contains("ssh-add -l")
            && fix.contains(&login_user()),
        "{fix}"
    );

    let key = find(&c, "host nokey");
    assert_eq!(key["level"], "fail");
    assert!(
        key["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/id_ed25519"),
        "{key}"
    );
    assert!(
        key["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("fix the path"),
        "{key}"
    );

    let not_ssh = find(&c, "host http");
    assert_eq!(not_ssh["level"], "fail");
    let detail = not_ssh["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "127.0.0.1:{web_port} answered but does not speak SSH"
        )) && detail.contains("HTTP/1.0 200 OK"),
        "{detail}"
    );
    assert!(
        not_ssh["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("right port"),
        "{not_ssh}"
    );
    for check in c.iter().filter(|c| c["level"] == "fail") {
        assert!(
            check["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "every problem has a fix: {check}"
        );
    }

    // Nothing left behind: not the user's daemon, not doctor's own, not its socket.
    assert!(
        !daemon.socket.exists(),
        "doctor never starts the user's daemon"
    );
    let private = find(&c, "private daemon");
    let detail = private["detail"].as_str().unwrap();
    assert_eq!(private["level"], "ok", "stopped, not killed: {detail}");
    let socket = detail
        .split_whitespace()
        .find(|w| w.ends_with("d.sock;"))
        .map(|w| std::path::PathBuf::from(w.trim_end_matches(';')))
        .unwrap_or_else(|| panic!("no socket named in {detail}"));
    assert!(!socket.exists(), "{} left behind", socket.display());
    assert!(
        !socket.parent().unwrap().exists(),
        "its directory is removed"
    );
    assert!(
        mcp_ssh_tests::daemons_serving(&socket).is_empty(),
        "doctor's daemon is stopped"
    );
}
