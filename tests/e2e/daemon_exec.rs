//! Remote commands through the daemon's socket, against a real sshd.

use std::time::Duration;

use mcp_ssh_proto::pb;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::{self, run};
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, is_root, login_user};
use tonic::Code;

use crate::common::{eventually, processes_matching, unique_token};

fn one_host(sshd: &Sshd) -> Daemon {
    Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_should_report_stdout_stderr_and_exit_codes() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;

    let ok = run(&client, "box", "echo hello; echo oops >&2", 0).await;
    assert_eq!(ok.stdout_text(), "hello\n", "{ok:?}");
    assert_eq!(ok.stderr_text(), "oops\n");
    assert_eq!(ok.code(), Some(0));
    assert!(ok.connected_now);

    let failed = run(&client, "box", "exit 3", 0).await;
    assert_eq!(failed.code(), Some(3), "{failed:?}");
    assert!(failed.error.is_none());
    assert!(
        !failed.connected_now,
        "the second call must reuse the connection"
    );

    let missing = run(&client, "box", "no-such-command-xyz", 0).await;
    assert_eq!(missing.code(), Some(127));
    assert!(missing.stderr_text().contains("not found"), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_should_report_death_by_signal() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    let killed = run(&client, "box", "kill -TERM $$", 0).await;
    let exit = killed.exit.expect("an exit event");
    assert_eq!(exit.code, None);
    assert_eq!(exit.signal, "TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_should_stream_several_megabytes_intact() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    // 6 MB on stdout and 1 MB on stderr, interleaved by the remote side.
    let big = run(
        &client,
        "box",
        "head -c 6000000 /dev/zero | tr '\\0' a; head -c 1000000 /dev/zero | tr '\\0' b >&2",
        0,
    )
    .await;
    assert_eq!(big.code(), Some(0), "{:?}", big.error);
    assert_eq!(big.stdout.len(), 6_000_000);
    assert!(big.stdout.iter().all(|b| *b == b'a'));
    assert_eq!(big.stderr.len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_should_honour_cwd_quoted() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    let request = pb::RunRequest {
        host: "box".into(),
        command: "pwd".into(),
        cwd: "/tmp".into(),
        timeout_secs: 0,
        ..Default::default()
    };
    assert_eq!(
        rpc::run_request(&client, request).await.stdout_text(),
        "/tmp\n"
    );
    let request = pb::RunRequest {
        host: "box".into(),
        command: "pwd".into(),
        cwd: "/nonexistent dir; touch /tmp/pwned".into(),
        timeout_secs: 0,
        ..Default::default()
    };
    let bad = rpc::run_request(&client, request).await;
    assert_eq!(bad.code(), Some(1));
    assert!(
        bad.stderr_text().contains("nonexistent dir; touch"),
        "{bad:?}"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    // A leading ~ is the remote home (as typed in a shell); nothing else is expanded.
    let home = run(&client, "box", "echo $HOME", 0).await.stdout_text();
    for (cwd, want) in [("~", home.clone()), ("~/", home.clone())] {
        let request = pb::RunRequest {
            host: "box".into(),
            command: "pwd -P".into(),
            cwd: cwd.into(),
            ..Default::default()
        };
        let got = rpc::run_request(&client, request).await;
        let want = run(&client, "box", &format!("cd {} && pwd -P", want.trim()), 0).await;
        assert_eq!(
            got.stdout_text(),
            want.stdout_text(),
            "cwd {cwd:?}: {got:?}"
        );
    }
    let request = pb::RunRequest {
        host: "box".into(),
        command: "pwd".into(),
        cwd: "~/$(touch /tmp/pwned-tilde)".into(),
        ..Default::default()
    };
    assert_eq!(rpc::run_request(&client, request).await.code(), Some(1));
    assert!(!std::path::Path::new("/tmp/pwned-tilde").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_should_be_not_found_and_list_the_hosts() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    let result = run(&client, "nope", "true", 0).await;
    assert_eq!(result.error_code(), Code::NotFound);
    let message = result.error_message();
    assert!(message.contains("unknown host \"nope\""), "{message}");
    assert!(message.contains("box"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_missing_identity_should_say_so() {
    let sshd = Sshd::start();
    let mut wrong = sshd.host("wrong", &login_user());
    wrong["identity_file"] = sshd.foreign_key().display().to_string().into();
    let mut missing = sshd.host("missing", &login_user());
    missing["identity_file"] = "/nonexistent/id_ed25519".into();
    let daemon = Daemon::start(&hosts_json(&[wrong, missing]));
    let client = daemon.client().await;

    let result = run(&client, "wrong", "true", 0).await;
    assert_eq!(result.error_code(), Code::Unauthenticated);
    let message = result.error_message();
    assert!(
        message.starts_with(&format!(
            "authentication failed for {}@127.0.0.1:{}",
            login_user(),
            sshd.port
        )),
        "{message}"
    );
    assert!(message.contains("tried: key"), "{message}");

    let result = run(&client, "missing", "true", 0).await;
    assert_eq!(result.error_code(), Code::FailedPrecondition);
    assert_eq!(
        result.error_message(),
        "Identity file not found: /nonexistent/id_ed25519"
    );

    let status = rpc::status(&client).await;
    let wrong = status.hosts.iter().find(|h| h.name == "wrong").unwrap();
    assert_eq!(wrong.state, pb::ConnectionState::Failed as i32);
    assert!(wrong.last_error.contains("authentication failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_should_share_one_connection() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    for i in 0..25 {
        let r = run(&client, "box", &format!("echo {i}"), 0).await;
        assert_eq!(r.stdout_text(), format!("{i}\n"));
    }
    // A second client of the same daemon shares it too.
    let other = daemon.client().await;
    assert_eq!(run(&other, "box", "true", 0).await.code(), Some(0));
    assert_eq!(sshd.accepted_logins(), 1, "sshd log:\n{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_beyond_max_sessions_should_all_succeed() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(10),
        ..Default::default()
    });
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let client = client.clone();
        calls.spawn(async move {
            (
                i,
                run(&client, "box", &format!("sleep 0.3; echo {i}"), 0).await,
            )
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (i, result) = joined.unwrap();
        assert_eq!(result.code(), Some(0), "call {i}: {:?}", result.error);
        assert_eq!(result.stdout_text(), format!("{i}\n"));
    }
    let status = rpc::status(&client).await;
    assert_eq!(status.hosts[0].channels_in_use, 0);
    assert_eq!(sshd.accepted_logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sshd_restart_between_calls_should_reconnect() {
    let mut sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    assert_eq!(run(&client, "box", "true", 0).await.code(), Some(0));
    sshd.restart();
    // The daemon notices the dead connection (EOF) and opens a new one for the next call.
    let again = run(&client, "box", "echo back", 0).await;
    assert_eq!(again.stdout_text(), "back\n", "{again:?}");
    assert!(again.connected_now);
}

async fn assert_timeout_stops_remote_process(user: &str) {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", user)]));
    let client = daemon.client().await;
    let token = unique_token();
    let command = format!("echo started; sleep 3600.{token}; echo never");
    let result = run(&client, "box", &command, 2).await;
    assert_eq!(result.error_code(), Code::DeadlineExceeded, "{result:?}");
    let message = result.error_message();
    assert!(message.contains("no output for 2 s"), "{message}");
    assert!(message.contains("stopped (confirmed)"), "{message}");
    assert_eq!(
        result.stdout_text(),
        "started\n",
        "output before the timeout is kept"
    );
    assert!(
        eventually(Duration::from_secs(3), || processes_matching(&format!(
            "3600.{token}"
        ))
        .is_empty()),
        "remote sleep still running"
    );
    let status = rpc::status(&client).await;
    assert_eq!(status.hosts[0].channels_in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_timeout_should_kill_the_remote_command() {
    assert_timeout_stops_remote_process(&login_user()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_timeout_should_kill_the_remote_command_for_root_logins() {
    // OpenSSH ignores signal requests for root sessions; the process-group kill must still work.
    if is_root() {
        assert_timeout_stops_remote_process("root").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_should_reset_the_inactivity_timeout() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    // Runs 3 s in total but never 2 s without output.
    let result = run(
        &client,
        "box",
        "for i in 1 2 3 4 5 6; do echo $i; sleep 0.5; done",
        2,
    )
    .await;
    assert_eq!(result.code(), Some(0), "{:?}", result.error);
    assert_eq!(result.stdout_text().lines().count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_should_stop_the_remote_command() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let client = daemon.client().await;
    let token = unique_token();
    let request = pb::RunRequest {
        host: "box".into(),
        command: format!("echo up; sleep 3600.{token}"),
        cwd: String::new(),
        timeout_secs: 0,
        ..Default::default()
    };
    let mut stream = client.exec().run(request).await.unwrap().into_inner();
    // Wait until it runs, then walk away.
    loop {
        let event = stream.message().await.unwrap().unwrap();
        if matches!(event.event, Some(pb::run_event::Event::Stdout(_))) {
            break;
        }
    }
    assert!(!processes_matching(&format!("3600.{token}")).is_empty());
    drop(stream);
    assert!(
        eventually(Duration::from_secs(5), || processes_matching(&format!(
            "3600.{token}"
        ))
        .is_empty()),
        "remote command survived its caller"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_exec_should_stream_and_exit_with_the_remote_code() {
    let sshd = Sshd::start();
    let daemon = one_host(&sshd);
    let out = daemon.ctl(&[
        "exec", "box", "--", "echo", "out;", "echo", "err", ">&2;", "exit", "7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = daemon.ctl(&["exec", "nope", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown host"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_shell_that_cannot_run_commands_should_be_named() {
    // Needs a second account (created by tests/run.sh as root).
    if !is_root() {
        return;
    }
    assert!(
        nix::unistd::User::from_name("mcptest-nologin")
            .ok()
            .flatten()
            .is_some(),
        "user mcptest-nologin is missing: run `bash tests/run.sh` (it creates it)"
    );
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", "mcptest-nologin")]));
    let client = daemon.client().await;
    let result = run(&client, "box", "echo hi", 0).await;
    assert_eq!(result.error_code(), Code::FailedPrecondition, "{result:?}");
    let message = result.error_message();
    assert!(
        message.contains("login shell") && message.contains("POSIX"),
        "{message}"
    );
    assert!(!message.ends_with(": "), "{message}");
}
