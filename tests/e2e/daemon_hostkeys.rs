//! Host key verification against known_hosts, end to end with a real sshd.

use std::process::Command;

use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::{Daemon, Sshd, login_user};
use tonic::Code;

/// The SHA256 fingerprint of the fixture's host key, as ssh-keygen prints it.
fn fingerprint(sshd: &Sshd) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(sshd.dir.path().join("host_ed25519.pub"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_should_be_refused_with_fingerprint_and_fix() {
    let sshd = Sshd::start();
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let result = run(&client, "box", "true", 0).await;
    assert_eq!(result.error_code(), Code::FailedPrecondition);
    let message = result.error_message();
    assert!(message.contains("is not known"), "{message}");
    assert!(message.contains(&fingerprint(&sshd)), "{message}");
    assert!(
        message.contains(&format!("ssh -p {} ", sshd.port)),
        "{message}"
    );
    assert!(message.contains("accept-new"), "{message}");
    assert_eq!(
        sshd.accepted_logins(),
        0,
        "no login may happen before the key is trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_should_be_refused_naming_the_line() {
    let sshd = Sshd::start();
    let other = sshd.foreign_key();
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut fields = other_pub.split_whitespace();
    let stale = format!(
        "# managed by hand\n\n[127.0.0.1]:{} {} {}\n",
        sshd.port,
        fields.next().unwrap(),
        fields.next().unwrap()
    );
    std::fs::write(&sshd.known_hosts, stale).unwrap();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let result = run(&client, "box", "true", 0).await;
    assert_eq!(result.error_code(), Code::FailedPrecondition);
    let message = result.error_message();
    assert!(message.contains("HOST KEY CHANGED"), "{message}");
    assert!(
        message.contains(&format!("line 3 of {}", sshd.known_hosts.display())),
        "{message}"
    );
    assert!(message.contains(&fingerprint(&sshd)), "{message}");
    assert!(message.contains("ssh-keygen -R"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accept_should_connect_and_log_the_fingerprint() {
    let sshd = Sshd::start();
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let mut host = sshd.host("cloud", &login_user());
    host["auto_accept_host_key"] = true.into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let client = daemon.client().await;
    assert_eq!(run(&client, "cloud", "true", 0).await.code(), Some(0));
    let fp = fingerprint(&sshd);
    assert!(
        daemon.log_text().contains(&fp),
        "daemon log lacks {fp}:\n{}",
        daemon.log_text()
    );
    let status = rpc::status(&client).await;
    assert_eq!(status.hosts[0].host_key_fingerprint, fp);
    assert!(
        status.hosts[0]
            .server_version
            .starts_with("SSH-2.0-OpenSSH")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entries_should_verify() {
    let sshd = Sshd::start();
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&sshd.known_hosts)
        .output()
        .unwrap();
    assert!(status.status.success());
    assert!(
        std::fs::read_to_string(&sshd.known_hosts)
            .unwrap()
            .starts_with("|1|")
    );
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    assert_eq!(run(&client, "box", "true", 0).await.code(), Some(0));
}

/// Trust on first use: the first connection records the key as `ssh` would, so plain `ssh`
/// with `StrictHostKeyChecking=yes` then trusts the host; a changed key is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_should_record_the_first_key_and_refuse_a_changed_one() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    // A known_hosts file that does not exist yet, in a directory that does not either.
    let known = dir.path().join("ssh").join("known_hosts");
    let audit = dir.path().join("audit.jsonl");
    let mut host = sshd.host("fresh", &login_user());
    host["known_hosts_file"] = known.display().to_string().into();
    host["host_key_policy"] = "accept-new".into();
    let config = serde_json::json!({ "audit_log_file": audit, "hosts": [host] });
    let daemon = Daemon::start(&config.to_string());
    let client = daemon.client().await;
    let result = run(&client, "fresh", "echo first", 0).await;
    assert_eq!(result.stdout_text(), "first\n", "{result:?}");

    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port)),
        "{recorded}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&known).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let records = std::fs::read_to_string(&audit).unwrap();
    let accepted = records
        .lines()
        .find(|l| l.contains("\"action\":\"host_key\"") && l.contains("accepted_new"))
        .unwrap_or_else(|| panic!("no accepted_new record: {records}"));
    assert!(accepted.contains(&fingerprint(&sshd)), "{accepted}");

    // OpenSSH itself trusts what was recorded.
    let ssh = Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
        ])
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .arg("-i")
        .arg(&sshd.client_key)
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{}@127.0.0.1", login_user()))
        .arg("echo trusted")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ssh.stdout),
        "trusted\n",
        "{}",
        String::from_utf8_lossy(&ssh.stderr)
    );

    // The next connection finds the key known: nothing more is recorded.
    let out = daemon.ctl(&["disconnect", "fresh"]);
    assert!(out.status.success());
    let result = run(&client, "fresh", "true", 0).await;
    assert_eq!(result.code(), Some(0), "{result:?}");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded);

    // A changed key is refused, whatever the policy.
    let other = sshd.foreign_key();
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut fields = other_pub.split_whitespace();
    let stale = format!(
        "[127.0.0.1]:{} {} {}\n",
        sshd.port,
        fields.next().unwrap(),
        fields.next().unwrap()
    );
    std::fs::write(&known, stale).unwrap();
    let out = daemon.ctl(&["disconnect", "fresh"]);
    assert!(out.status.success());
    let result = run(&client, "fresh", "true", 0).await;
    assert_eq!(result.error_code(), Code::FailedPrecondition);
    assert!(
        result.error_message().contains("HOST KEY CHANGED"),
        "{}",
        result.error_message()
    );
}
