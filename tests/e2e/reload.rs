//! Config reload: `mcp-sshctl reload` and SIGHUP re-read hosts.json; a broken file changes
//! nothing; untouched hosts keep their SSH connection (counted in the sshd log); shims hear of
//! new host names.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::rpc;
use mcp_ssh_tests::shim::Shim;
use mcp_ssh_tests::sshd::{Sshd, login_user};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::common::{eventually, stdout_json};

fn ctl_json(daemon: &Daemon, args: &[&str]) -> (Option<i32>, Value) {
    let out = daemon.ctl(args);
    (out.status.code(), stdout_json(&out))
}

fn names(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_should_add_drain_reconnect_and_keep_untouched_hosts() {
    let sshd = Sshd::start();
    let user = login_user();
    let policy = {
        let mut h = sshd.host("policy", &user);
        h["allowed_commands"] = json!(["echo", "sleep"]);
        h
    };
    let daemon = Daemon::start(&hosts_json(&[
        sshd.host("keep", &user),
        sshd.host("change", &user),
        sshd.host("gone", &user),
        policy.clone(),
    ]));
    let client = daemon.client().await;
    for host in ["keep", "change", "gone", "policy"] {
        assert_eq!(rpc::run(&client, host, "echo", 10).await.code(), Some(0));
    }
    assert_eq!(sshd.accepted_logins(), 4);

    // Calls in flight on the hosts that change or go must finish normally.
    let slow = |host: &'static str| {
        let client = client.clone();
        tokio::spawn(async move { rpc::run(&client, host, "sleep 2; echo finished", 10).await })
    };
    let (on_gone, on_change) = (slow("gone"), slow("change"));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut changed = sshd.host("change", &user);
    changed["keepalive_interval"] = json!(7);
    let mut policy = policy;
    policy["allowed_commands"] = json!(["echo"]);
    std::fs::write(
        &daemon.config,
        hosts_json(&[
            sshd.host("keep", &user),
            changed,
            policy,
            sshd.host("new", &user),
        ]),
    )
    .unwrap();
    let (code, summary) = ctl_json(&daemon, &["reload", "--json"]);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(names(&summary["added"]), ["new"]);
    assert_eq!(names(&summary["removed"]), ["gone"]);
    assert_eq!(names(&summary["reconnecting"]), ["change"]);
    assert_eq!(names(&summary["updated"]), ["policy"]);
    assert_eq!(names(&summary["unchanged"]), ["keep"]);
    assert_eq!(summary["config_generation"], 2);

    for (host, call) in [("gone", on_gone), ("change", on_change)] {
        let result = call.await.unwrap();
        assert_eq!(
            (result.code(), result.stdout_text().as_str()),
            (Some(0), "finished\n"),
            "the call in flight on {host} was cut off: {}",
            result.error_message()
        );
    }

    // Untouched: same connection. Changed and new: one login each. Removed: unknown.
    assert_eq!(rpc::run(&client, "keep", "true", 10).await.code(), Some(0));
    assert_eq!(sshd.accepted_logins(), 4, "keep must not reconnect");
    assert_eq!(
        rpc::run(&client, "change", "true", 10).await.code(),
        Some(0)
    );
    assert_eq!(rpc::run(&client, "new", "true", 10).await.code(), Some(0));
    assert_eq!(sshd.accepted_logins(), 6);
    let gone = rpc::run(&client, "gone", "true", 10).await;
    assert_eq!(gone.error_code(), tonic::Code::NotFound);
    assert!(gone.error_message().contains("unknown host"));
    // The policy applies at once, on the kept connection.
    let refused = rpc::run(&client, "policy", "sleep 0", 10).await;
    assert_eq!(refused.error_code(), tonic::Code::PermissionDenied);
    assert_eq!(
        rpc::run(&client, "policy", "echo ok", 10).await.code(),
        Some(0)
    );
    assert_eq!(sshd.accepted_logins(), 6, "policy must not reconnect");

    // The drained connections were closed once idle.
    assert!(eventually(Duration::from_secs(5), || {
        let log = daemon.log_text();
        log.contains("closing connection: the host was removed from hosts.json")
            && log
                .contains("closing connection: hosts.json changed this host's connection settings")
    }));
    let status = rpc::status(&client).await;
    let hosts: Vec<_> = status.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(hosts, ["change", "keep", "new", "policy"]);
    assert!(status.hosts.iter().all(|h| h.channels_in_use == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_should_keep_the_running_config_and_say_why() {
    let sshd = Sshd::start();
    let good = hosts_json(&[sshd.host("box", &login_user())]);
    let mut daemon = Daemon::start(&good);
    let client = daemon.client().await;
    assert_eq!(rpc::run(&client, "box", "true", 10).await.code(), Some(0));

    let broken = good.replace("\"hostname\"", "\"hostnme\"");
    std::fs::write(&daemon.config, broken).unwrap();
    let out = daemon.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("hostnme") && stderr.contains("line"),
        "the error names the field and where: {stderr}"
    );
    assert!(stderr.contains("previous configuration"), "{stderr}");
    // Still serving, still the same connection.
    assert_eq!(rpc::run(&client, "box", "true", 10).await.code(), Some(0));
    assert_eq!(sshd.accepted_logins(), 1);
    let (_, status) = ctl_json(&daemon, &["status", "--json"]);
    assert!(
        status["config_error"].as_str().unwrap().contains("hostnme"),
        "{status}"
    );
    assert_eq!(status["config_generation"], 1);
    let text = String::from_utf8_lossy(&daemon.ctl(&["status"]).stdout).to_string();
    assert!(text.contains("RELOAD FAILED"), "{text}");

    // Fixed file, reloaded by SIGHUP: the error is gone, the connection kept.
    std::fs::write(&daemon.config, &good).unwrap();
    daemon.signal(Signal::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        let (_, status) = ctl_json(&daemon, &["status", "--json"]);
        status["config_generation"] == 2 && status["config_error"].is_null()
    }));
    assert_eq!(rpc::run(&client, "box", "true", 10).await.code(), Some(0));
    assert_eq!(sshd.accepted_logins(), 1);
    assert!(
        daemon.wait_exit(Duration::from_millis(100)).is_none(),
        "SIGHUP must not stop the daemon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shims_should_list_host_names_and_hear_when_they_change() {
    let sshd = Sshd::start();
    let user = login_user();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("alpha", &user)]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let description = |tools: &[rmcp::model::Tool]| {
        tools
            .iter()
            .find(|t| t.name == "ssh_execute")
            .and_then(|t| t.description.clone())
            .unwrap_or_default()
            .to_string()
    };
    let tools = shim.service.list_all_tools().await.unwrap();
    assert!(
        description(&tools).ends_with("Hosts: alpha."),
        "{}",
        description(&tools)
    );

    std::fs::write(
        &daemon.config,
        hosts_json(&[sshd.host("alpha", &user), sshd.host("beta", &user)]),
    )
    .unwrap();
    assert_eq!(daemon.ctl(&["reload"]).status.code(), Some(0));
    let notified = async {
        while shim.tools_changed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("no notifications/tools/list_changed after the reload");
    let tools = shim.service.list_all_tools().await.unwrap();
    assert!(description(&tools).ends_with("Hosts: alpha, beta."));
    let result = shim
        .call(
            "ssh_execute",
            json!({ "host": "beta", "command": "echo hi" }),
        )
        .await;
    assert_eq!(result.structured_content.unwrap()["stdout"], "hi\n");

    // A reload that changes no host name is not announced.
    let before = shim.tools_changed.load(Ordering::SeqCst);
    assert_eq!(daemon.ctl(&["reload"]).status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shim.tools_changed.load(Ordering::SeqCst), before);
}

/// The first `tools/list` of a session that has to start the daemon already names the hosts;
/// learning them is not a change to announce (it raced with the watcher of changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_tools_list_that_starts_the_daemon_should_not_be_followed_by_list_changed() {
    let sshd = Sshd::start();
    let user = login_user();
    // Several fresh sessions, each the one that starts the daemon: the race was a coin toss.
    for round in 0..3 {
        let daemon = Daemon::prepare(&hosts_json(&[sshd.host("alpha", &user)]));
        let shim = Shim::attach(&daemon, &format!("fresh-{round}")).await;
        let tools = shim.service.list_all_tools().await.unwrap();
        let execute = tools.iter().find(|t| t.name == "ssh_execute").unwrap();
        assert!(
            execute
                .description
                .as_deref()
                .unwrap_or_default()
                .ends_with("Hosts: alpha."),
            "{:?}",
            execute.description
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            shim.tools_changed.load(Ordering::SeqCst),
            0,
            "round {round}: notifications/tools/list_changed although nothing changed"
        );
    }
}
