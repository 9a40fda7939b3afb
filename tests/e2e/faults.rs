//! Fault injection: a TCP proxy between the daemon and a real sshd black-holes, resets or
//! delays the connection. Each test prints what it measured (`cargo test -- --nocapture`).

use std::time::{Duration, Instant};

use mcp_ssh_proto::pb;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::proxy::{Fault, FaultProxy};
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::shim::Shim;
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, join_all, login_user};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::{eventually, processes_matching, stdout_json, unique_token};
use crate::transfer::{Step, assert_cut_transfers_resume};

/// A host entry reaching `sshd` through `proxy`, with short keepalive and connect deadlines.
fn via_proxy(sshd: &Sshd, proxy: &FaultProxy, name: &str) -> Value {
    sshd.trust_port(proxy.port);
    let mut host = sshd.host(name, &login_user());
    host["port"] = proxy.port.into();
    host["keepalive_interval"] = 1.into();
    host["keepalive_max"] = 2.into();
    host["connect_timeout"] = 2.into();
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_black_holed_mid_command_should_fail_fast_and_recover() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    let daemon = Daemon::start(&hosts_json(&[via_proxy(&sshd, &proxy, "box")]));
    let client = daemon.client().await;
    let token = unique_token();
    let call = {
        let client = client.clone();
        let command = format!("echo started; sleep 60.{token}");
        tokio::spawn(async move { run(&client, "box", &command, 0).await })
    };
    assert!(eventually(Duration::from_secs(10), || !processes_matching(
        &format!("60.{token}")
    )
    .is_empty()));
    proxy.set(Fault::BlackHole);
    let cut = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("the call hung on a dead network")
        .unwrap();
    let detected = cut.elapsed();
    assert_eq!(result.error_code(), Code::Unavailable, "{result:?}");
    let message = result.error_message();
    assert!(
        message.contains("connection to")
            && message.contains("lost")
            && message.contains("keepalive"),
        "{message}"
    );
    assert_eq!(
        result.stdout_text(),
        "started\n",
        "output before the cut is kept"
    );
    // keepalive_interval 1 s, keepalive_max 2: silent for ~3 s means lost.
    assert!(
        detected < Duration::from_secs(6),
        "detected after {detected:?}"
    );
    eprintln!(
        "black hole mid-command detected after {:.1} s (keepalive 1 s x 2)",
        detected.as_secs_f64()
    );

    // While the network is down, calls fail at once with the reason.
    let started = Instant::now();
    let down = run(&client, "box", "true", 0).await;
    let fail_fast = started.elapsed();
    assert_eq!(down.error_code(), Code::Unavailable, "{down:?}");
    assert!(
        down.error_message().contains("unreachable"),
        "{}",
        down.error_message()
    );
    assert!(fail_fast < Duration::from_millis(500), "took {fail_fast:?}");
    eprintln!(
        "calls while down failed after {:.0} ms",
        fail_fast.as_secs_f64() * 1000.0
    );

    // Once the network is back, calls succeed again without anyone doing anything.
    proxy.set(Fault::Pass);
    let back = Instant::now();
    let mut recovered = None;
    while back.elapsed() < Duration::from_secs(15) {
        let result = run(&client, "box", "echo back", 0).await;
        if result.code() == Some(0) {
            recovered = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let recovered = recovered.expect("no call succeeded after the network came back");
    eprintln!(
        "recovered {:.1} s after the network came back",
        recovered.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_host_should_fail_within_its_deadline_without_delaying_others() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    proxy.set(Fault::BlackHole);
    let daemon = Daemon::start(&hosts_json(&[
        via_proxy(&sshd, &proxy, "dark"),
        sshd.host("lit", &login_user()),
    ]));
    let client = daemon.client().await;
    assert_eq!(run(&client, "lit", "true", 0).await.code(), Some(0));
    let dark = {
        let client = client.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (run(&client, "dark", "true", 0).await, started.elapsed())
        })
    };
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(run(&client, "lit", "echo ok", 0).await.code(), Some(0));
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (result, took) = dark.await.unwrap();
    assert_eq!(result.error_code(), Code::Unavailable, "{result:?}");
    let message = result.error_message();
    assert!(message.contains("timed out after 2 s"), "{message}");
    assert!(
        message.contains("key exchange"),
        "names the stage: {message}"
    );
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    assert!(
        slowest < Duration::from_millis(500),
        "the other host waited {slowest:?}"
    );
    eprintln!(
        "black-holed host failed after {:.1} s (connect_timeout 2 s); slowest call to another host {:.0} ms",
        took.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0
    );
}

/// An sshd past its MaxStartups closes new connections before its banner: nothing ran, so the
/// daemon tries again (four attempts in all) and says what happened when every one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_turned_away_before_the_banner_should_be_tried_again() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    let audit = sshd.dir.path().join("audit.jsonl");
    let config = json!({
        "audit_log_file": audit,
        "hosts": [via_proxy(&sshd, &proxy, "busy"), via_proxy(&sshd, &proxy, "full")],
    });
    let daemon = Daemon::start(&config.to_string());
    let client = daemon.client().await;
    proxy.turn_away(2);
    let result = run(&client, "busy", "echo in", 0).await;
    assert_eq!(result.code(), Some(0), "{result:?}");
    assert_eq!(result.stdout_text(), "in\n");
    assert_eq!(proxy.accepted(), 3, "two turned away, the third got in");

    proxy.turn_away(usize::MAX);
    let started = Instant::now();
    let refused = run(&client, "full", "echo in", 0).await;
    let took = started.elapsed();
    assert_eq!(refused.error_code(), Code::Unavailable, "{refused:?}");
    let message = refused.error_message();
    assert!(
        message.contains("closed before the SSH handshake") && message.contains("MaxStartups"),
        "{message}"
    );
    assert_eq!(proxy.accepted(), 3 + 4, "four attempts in all");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let connects: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "connect" && r["host"] == "full")
        .collect();
    assert_eq!(connects.len(), 1, "one connect record: {connects:?}");
    assert_eq!(connects[0]["outcome"], "error");

    proxy.turn_away(0);
    let again = run(&client, "full", "echo in", 0).await;
    assert_eq!(again.code(), Some(0), "{again:?}");
    eprintln!(
        "turned away four times: refused after {:.2} s",
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cut_by_a_connection_reset_should_resume() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    let daemon = Daemon::start(&hosts_json(&[via_proxy(&sshd, &proxy, "box")]));
    assert_cut_transfers_resume(&daemon, |step| match step {
        // Slow enough that the reset lands mid-transfer.
        Step::Start => proxy.set(Fault::Delay(Duration::from_millis(2))),
        Step::Cut => proxy.reset_all(),
        Step::Heal => proxy.set(Fault::Pass),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_from_five_shims_should_share_ten_sessions() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(10),
        ..Default::default()
    });
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shims = join_all(
        (0..5)
            .map(|i| Shim::attach(&daemon, if i % 2 == 0 { "claude-code" } else { "cursor" }))
            .collect(),
    )
    .await;
    let calls = shims
        .iter()
        .flat_map(|shim| {
            (0..10).map(move |i| async move {
                let command = format!("sleep 0.2; echo {i}");
                let result = shim
                    .call("ssh_execute", json!({ "host": "box", "command": command }))
                    .await;
                (i, result)
            })
        })
        .collect::<Vec<_>>();
    let results = join_all(calls).await;
    assert_eq!(results.len(), 50);
    for (i, result) in results {
        let value = result.structured_content.clone().unwrap_or(Value::Null);
        assert_eq!(value["stdout"], format!("{i}\n"), "{result:?}");
    }
    let out = daemon.ctl(&["status", "--json"]);
    let status = stdout_json(&out);
    assert_eq!(status["hosts"][0]["channels_in_use"], 0, "{status}");
    let shims = status["clients"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "shim")
        .count();
    assert_eq!(shims, 5, "{status}");
    eprintln!(
        "50 calls from 5 shims: channel budget after the burst {}",
        status["hosts"][0]["channel_limit"]
    );
    assert_eq!(sshd.accepted_logins(), 1);
}

/// The same black hole with the default keepalive (10 s x 2): slow, so run on demand:
/// `cargo test -p mcp-ssh-tests --test e2e default_keepalive -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes half a minute; measures the default detection time"]
async fn default_keepalive_detection_time() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    sshd.trust_port(proxy.port);
    let mut host = sshd.host("box", &login_user());
    host["port"] = proxy.port.into();
    // Longer than the keepalive window, so that the keepalive is what notices.
    host["command_timeout"] = 600.into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let client = daemon.client().await;
    assert_eq!(run(&client, "box", "true", 0).await.code(), Some(0));
    let call = {
        let client = client.clone();
        tokio::spawn(async move { run(&client, "box", "sleep 300", 0).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Fault::BlackHole);
    let cut = Instant::now();
    let result = call.await.unwrap();
    assert_eq!(result.error_code(), Code::Unavailable, "{result:?}");
    eprintln!(
        "default keepalive: black hole detected after {:.1} s",
        cut.elapsed().as_secs_f64()
    );
    assert!(cut.elapsed() < Duration::from_secs(40));
    let _ = rpc::status(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_ignoring_sigterm_should_be_killed_after_the_grace_period() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    // `trap '' TERM` makes the shell and the sleep it starts ignore SIGTERM.
    let command = format!("trap '' TERM; echo started; sleep 3600.{token}; echo never");
    let started = Instant::now();
    let result = run(&client, "box", &command, 1).await;
    let took = started.elapsed();
    assert_eq!(result.error_code(), Code::DeadlineExceeded, "{result:?}");
    assert!(
        result.error_message().contains("stopped (confirmed)"),
        "{}",
        result.error_message()
    );
    assert!(
        processes_matching(&format!("3600.{token}")).is_empty(),
        "the command survived"
    );
    // 1 s of silence, 2 s of grace after SIGTERM, then SIGKILL.
    assert!(
        took >= Duration::from_secs(3),
        "killed before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    eprintln!(
        "SIGTERM-proof command killed {:.1} s after it started (timeout 1 s + grace 2 s)",
        took.as_secs_f64()
    );
}

/// A call dropped the moment it started (before the remote shell reported its process group)
/// must still stop the remote command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_as_they_start_should_leave_no_remote_process() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    for i in 0..10 {
        let request = pb::RunRequest {
            host: "box".into(),
            command: format!("sleep 60.{token}{i}"),
            ..Default::default()
        };
        let mut stream = client.exec().run(request).await.unwrap().into_inner();
        // The first event says the command was sent; drop the call right there.
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(
            first.event,
            Some(pb::run_event::Event::Started(_))
        ));
        drop(stream);
    }
    assert!(
        eventually(Duration::from_secs(15), || processes_matching(&format!(
            "60.{token}"
        ))
        .is_empty()),
        "left running: {:?}",
        processes_matching(&format!("60.{token}"))
    );
    assert!(eventually(Duration::from_secs(5), || {
        let out = daemon.ctl(&["status", "--json"]);
        let status = stdout_json(&out);
        status["calls_in_flight"] == 0 && status["hosts"][0]["channels_in_use"] == 0
    }));
}
