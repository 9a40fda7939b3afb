//! The security promises, end to end: allowed_commands through the shim, host key policy, the
//! audit log, secrets that never leave the daemon, and a socket nobody else can use.

use std::os::unix::fs::PermissionsExt;

use mcp_ssh_tests::daemon::{Daemon, ctl_at, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Sshd, SshdOptions, is_root, login_user, test_password};
use serde_json::{Value, json};

use crate::common::unique_token;

async fn shim_for(daemon: &Daemon) -> Shim {
    Shim::attach(daemon, "e2e-client").await
}

fn audit_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_commands_should_pass_plain_words_intact_and_refuse_the_rest() {
    let sshd = Sshd::start();
    let mut host = sshd.host("locked", &login_user());
    host["allowed_commands"] = json!(["printf", "ls -l", "echo"]);
    let audit = tempfile::NamedTempFile::new().unwrap();
    let config = json!({ "audit_log_file": audit.path(), "hosts": [host] });
    let daemon = Daemon::start(&config.to_string());
    let shim = shim_for(&daemon).await;

    let ok = shim.call("ssh_execute", json!({ "host": "locked", "command": r#"printf '%s|' 'a b' "c'd" 'x;y' "$(not run)""# })).await;
    assert!(is_error(&ok), "\"$(\" inside double quotes must be refused");
    let ok = shim.call("ssh_execute", json!({ "host": "locked", "command": r#"printf '%s|' 'a b' "c'd" 'x;y|z' '$HOME' '*'"# })).await;
    assert!(!is_error(&ok), "{}", text(&ok));
    assert_eq!(
        structured(&ok)["stdout"],
        "a b|c'd|x;y|z|$HOME|*|",
        "arguments arrive exactly as checked"
    );
    let ok = shim
        .call(
            "ssh_execute",
            json!({ "host": "locked", "command": "ls -l /" }),
        )
        .await;
    assert_eq!(structured(&ok)["exit_code"], 0);

    let token = unique_token();
    let marker = format!("/tmp/mcpssh-pwned-{token}");
    for attempt in [
        format!("echo hi; touch {marker}"),
        format!("echo hi && touch {marker}"),
        format!("echo hi | tee {marker}"),
        format!("echo hi > {marker}"),
        format!("echo $(touch {marker})"),
        format!("echo `touch {marker}`"),
        format!("echo hi\ntouch {marker}"),
        format!("ls -la; touch {marker}"),
        format!("l''s -l; touch {marker}"),
        format!("touch {marker}"),
        format!("FOO=1 touch {marker}"),
    ] {
        let refused = shim
            .call(
                "ssh_execute",
                json!({ "host": "locked", "command": attempt }),
            )
            .await;
        assert!(is_error(&refused), "not refused: {attempt:?}");
        let t = text(&refused);
        assert!(
            t.contains("refused by the allowed_commands of host locked"),
            "{t}"
        );
        assert!(
            t.contains("Allowed on this host: \"printf\", \"ls -l\", \"echo\""),
            "{t}"
        );
    }
    let cwd = shim
        .call("ssh_execute", json!({ "host": "locked", "command": "echo x", "cwd": format!("/tmp; touch {marker}") }))
        .await;
    // The directory name is quoted whole: cd fails on it, nothing else runs.
    assert_eq!(structured(&cwd)["exit_code"], 1, "{}", text(&cwd));
    assert!(text(&cwd).contains(&format!("/tmp; touch {marker}")));
    let batch = shim
        .call("ssh_execute_batch", json!({ "host": "locked", "commands": ["echo one", format!("echo two; touch {marker}"), "echo three"] }))
        .await;
    assert!(is_error(&batch));
    let t = text(&batch);
    assert!(
        t.contains("[2] $ echo two") && t.contains("refused by the allowed_commands"),
        "{t}"
    );
    assert!(t.contains("[3] $ echo three\nnot run"), "{t}");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "a refused command ran"
    );

    let records = audit_records(audit.path());
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .collect();
    assert!(refusals.len() >= 12, "refusals audited: {}", refusals.len());
    assert!(
        refusals[0]["error"]
            .as_str()
            .unwrap()
            .contains("allowed_commands")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_should_name_the_client_and_record_every_action() {
    let sshd = Sshd::start();
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let mut host = sshd.host("cloud", &login_user());
    host["auto_accept_host_key"] = true.into();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let daemon = Daemon::start(&json!({ "audit_log_file": audit, "hosts": [host] }).to_string());
    let shim = shim_for(&daemon).await;
    shim.call(
        "ssh_execute",
        json!({ "host": "cloud", "command": "echo hello" }),
    )
    .await;
    shim.call(
        "ssh_execute",
        json!({ "host": "cloud", "command": "exit 3" }),
    )
    .await;
    shim.call(
        "ssh_execute_batch",
        json!({ "host": "cloud", "commands": ["true", "true"] }),
    )
    .await;
    shim.call("ssh_disconnect", json!({ "host": "cloud" }))
        .await;

    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let records = audit_records(&audit);
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for expected in [
        "host_key",
        "connect",
        "command_started",
        "command_finished",
        "disconnect",
    ] {
        assert!(
            actions.contains(&expected),
            "no {expected} record in {actions:?}"
        );
    }
    let key = records.iter().find(|r| r["action"] == "host_key").unwrap();
    assert_eq!(key["outcome"], "auto_accepted");
    assert!(key["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    let finished: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "command_finished")
        .collect();
    assert_eq!(finished[0]["command"], "echo hello");
    assert_eq!(finished[0]["exit_code"], 0);
    assert_eq!(finished[0]["bytes"], 6);
    assert!(finished[0]["duration_ms"].is_u64());
    assert_eq!(finished[1]["exit_code"], 3);
    assert_eq!(finished[0]["client"]["name"], "e2e-client");
    assert_eq!(finished[0]["client"]["version"], "1.2.3");
    assert!(finished[0]["client"]["pid"].as_u64().unwrap() > 0);
    assert!(finished[0]["ts"].as_str().unwrap().ends_with('Z'));
    let batch: Vec<&Value> = finished
        .iter()
        .copied()
        .filter(|r| r["batch"].is_object())
        .collect();
    assert_eq!(batch.len(), 2);
    assert_eq!(batch[0]["batch"]["id"], batch[1]["batch"]["id"]);
    assert_eq!(batch[1]["batch"]["index"], 1);
    assert_eq!(batch[1]["batch"]["size"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_policy_should_hold_through_the_shim() {
    let sshd = Sshd::start();
    let mut changed = sshd.host("changed", &login_user());
    let stale_file = sshd.dir.path().join("stale_known_hosts");
    let other = std::fs::read_to_string(sshd.foreign_key().with_extension("pub")).unwrap();
    let mut f = other.split_whitespace();
    std::fs::write(
        &stale_file,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            f.next().unwrap(),
            f.next().unwrap()
        ),
    )
    .unwrap();
    changed["known_hosts_file"] = stale_file.display().to_string().into();
    let mut unknown = sshd.host("unknown", &login_user());
    let empty = sshd.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    unknown["known_hosts_file"] = empty.display().to_string().into();
    let daemon = Daemon::start(&hosts_json(&[changed, unknown]));
    let shim = shim_for(&daemon).await;

    let r = shim
        .call(
            "ssh_execute",
            json!({ "host": "unknown", "command": "true" }),
        )
        .await;
    assert!(is_error(&r));
    assert!(
        text(&r).contains("is not known")
            && text(&r).contains("SHA256:")
            && text(&r).contains("accept-new"),
        "{}",
        text(&r)
    );
    let r = shim
        .call(
            "ssh_execute",
            json!({ "host": "changed", "command": "true" }),
        )
        .await;
    assert!(is_error(&r));
    assert!(
        text(&r).contains(&format!("line 1 of {}", stale_file.display())),
        "{}",
        text(&r)
    );
    assert_eq!(sshd.accepted_logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_should_never_leave_the_daemon() {
    // Password logins need a root sshd (a non-root one cannot read shadow); CI runs as root.
    if !is_root() {
        return;
    }
    let password = test_password();
    let sshd = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    let mut good = sshd.host("pw", &login_user());
    good.as_object_mut().unwrap().remove("identity_file");
    good["password"] = password.as_str().into();
    let mut bad = good.clone();
    bad["name"] = "pw-wrong".into();
    bad["password"] = "Wr0ng-S3cret!".into();
    let mut unreachable = good.clone();
    unreachable["name"] = "pw-down".into();
    unreachable["port"] = 1.into();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config =
        json!({ "log_level": "DEBUG", "audit_log_file": audit, "hosts": [good, bad, unreachable] });
    let mut daemon = Daemon::prepare(&config.to_string());
    // Readable by others: the daemon must warn, with the fix.
    std::fs::set_permissions(&daemon.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    daemon
        .env
        .push(("HOME".into(), dir.path().display().to_string()));
    daemon.spawn();
    let shim = shim_for(&daemon).await;

    let mut produced = String::new();
    let calls = [
        ("list_hosts", json!({})),
        ("ssh_status", json!({ "host": "pw" })),
        (
            "ssh_execute",
            json!({ "host": "pw", "command": format!("echo typed {password} here") }),
        ),
        ("ssh_execute", json!({ "host": "pw", "command": "exit 2" })),
        (
            "ssh_execute",
            json!({ "host": "pw", "command": "sleep 5", "timeout": 1 }),
        ),
        (
            "ssh_execute_batch",
            json!({ "host": "pw", "commands": ["true", "false"] }),
        ),
        (
            "ssh_execute",
            json!({ "host": "pw-wrong", "command": "true" }),
        ),
        ("ssh_status", json!({ "host": "pw-wrong" })),
        (
            "ssh_execute",
            json!({ "host": "pw-down", "command": "true" }),
        ),
        ("ssh_disconnect", json!({ "host": "pw" })),
    ];
    for (tool, args) in calls {
        let result = shim.call(tool, args).await;
        produced.push_str(&serde_json::to_string(&result).unwrap());
    }
    let echoed = shim
        .call("ssh_execute", json!({ "host": "pw", "command": "echo ok" }))
        .await;
    assert_eq!(
        structured(&echoed)["stdout"],
        "ok\n",
        "the password login works"
    );
    let status = daemon.ctl(&["status"]);
    let status_json = daemon.ctl(&["status", "--json"]);
    let status_text = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status_text.contains("chmod 600"), "{status_text}");
    produced.push_str(&status_text);
    produced.push_str(&String::from_utf8_lossy(&status_json.stdout));
    produced.push_str(&daemon.log_text());
    produced.push_str(&std::fs::read_to_string(&audit).unwrap());
    for log in std::fs::read_dir(daemon.dir.path()).unwrap().flatten() {
        if log.file_name().to_string_lossy().starts_with("shim-") {
            produced.push_str(&std::fs::read_to_string(log.path()).unwrap());
        }
    }
    // The user typed it into a command: the command's own output may show it (that is the
    // command's business), but no record of ours may.
    let ours = produced.replace(&format!("typed {password} here\\n"), "");
    for secret in [password.as_str(), "Wr0ng-S3cret!"] {
        assert!(
            !ours.contains(secret),
            "{secret} leaked:\n{}",
            &ours[ours.find(secret).unwrap().saturating_sub(300)..][..600.min(ours.len())]
        );
    }
    assert!(
        std::fs::read_to_string(&audit)
            .unwrap()
            .contains("echo typed [REDACTED] here")
    );
}

#[test]
fn clients_should_refuse_a_planted_socket_directory() {
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), daemon.socket.parent().unwrap()).unwrap();
    let out = ctl_at(&daemon.socket, &daemon.config, &["hosts"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a symlink"), "{err}");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn a_socket_directory_owned_by_someone_else_should_be_refused() {
    if !is_root() {
        return; // needs chown
    }
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let dir = daemon.socket.parent().unwrap();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    let out = daemon.command().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("owned by uid 65534"), "{err}");
    let out = ctl_at(&daemon.socket, &daemon.config, &["hosts"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"));
}
