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
            && detail.contains("auto_accept_host_key"),
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
