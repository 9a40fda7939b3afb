//! The shim as AI clients use it: the real binary over stdio, driven by rmcp's MCP client,
//! with a real daemon and the real sshd behind it.

use std::time::Duration;

use mcp_ssh_tests::bins::bin;
use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, ShimOptions, is_error, structured, text, tool_result};
use mcp_ssh_tests::{Sshd, login_user};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{eventually, processes_matching, unique_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_should_list_tools_and_run_every_tool() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-client").await;

    let tools = shim.service.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "list_hosts",
            "ssh_disconnect",
            "ssh_download",
            "ssh_execute",
            "ssh_execute_batch",
            "ssh_execute_many",
            "ssh_forward",
            "ssh_job_kill",
            "ssh_job_output",
            "ssh_job_start",
            "ssh_jobs",
            "ssh_status",
            "ssh_upload"
        ]
    );
    let size = serde_json::to_string(&json!({ "tools": tools }))
        .unwrap()
        .len();
    assert!(size <= 12 * 1024, "tools/list is {size} bytes");
    for tool in &tools {
        assert!(
            tool.output_schema.is_some(),
            "{} has no output schema",
            tool.name
        );
        // Hints left out take MCP's defaults: not read-only, destructive, open world.
        let a = tool.annotations.clone().unwrap_or_default();
        match tool.name.as_ref() {
            "list_hosts" | "ssh_status" | "ssh_job_output" | "ssh_jobs" => {
                assert_eq!(a.read_only_hint, Some(true))
            }
            "ssh_execute" | "ssh_execute_batch" | "ssh_execute_many" | "ssh_upload"
            | "ssh_download" | "ssh_job_start" | "ssh_job_kill" => {
                assert_ne!(a.read_only_hint, Some(true));
                assert_ne!(a.destructive_hint, Some(false));
                assert_ne!(a.open_world_hint, Some(false));
            }
            "ssh_disconnect" => assert_eq!(a.idempotent_hint, Some(true)),
            "ssh_forward" => {
                assert_eq!(a.idempotent_hint, Some(true));
                assert_eq!(a.destructive_hint, Some(false));
            }
            _ => unreachable!(),
        }
    }

    let hosts = shim.call("list_hosts", json!({})).await;
    assert!(!is_error(&hosts));
    assert_eq!(structured(&hosts)["hosts"][0]["name"], "box");
    assert_eq!(structured(&hosts)["hosts"][0]["port"], sshd.port);

    let ok = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo hi; echo oops >&2" }),
        )
        .await;
    assert!(!is_error(&ok));
    let t = text(&ok);
    assert!(t.starts_with("exit 0 ("), "{t}");
    assert!(t.contains("\nhi\n--- stderr ---\noops\n"), "{t}");
    assert_eq!(structured(&ok)["exit_code"], 0);
    assert_eq!(structured(&ok)["stdout"], "hi\n");

    let nonzero = shim
        .call("ssh_execute", json!({ "host": "box", "command": "exit 4" }))
        .await;
    assert!(!is_error(&nonzero), "a command that ran is a normal result");
    assert!(text(&nonzero).starts_with("exit 4"));

    let cwd = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "pwd", "cwd": "/tmp" }),
        )
        .await;
    assert_eq!(structured(&cwd)["stdout"], "/tmp\n");

    let batch = shim
        .call(
            "ssh_execute_batch",
            json!({ "host": "box", "commands": ["echo one", "exit 2", "echo three"] }),
        )
        .await;
    assert!(!is_error(&batch));
    let b = structured(&batch);
    assert_eq!(
        (
            b["ran"].as_u64(),
            b["succeeded"].as_u64(),
            b["not_run"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{b}"
    );
    assert_eq!(b["results"][0]["status"], "ok");
    assert_eq!(b["results"][1]["status"], "failed");
    assert_eq!(b["results"][1]["exit_code"], 2);
    assert_eq!(b["results"][2]["status"], "not_run");
    assert!(text(&batch).contains("not run"));

    let many = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["box", "b*"], "command": "echo many" }),
        )
        .await;
    assert!(!is_error(&many), "{}", text(&many));
    assert_eq!(text(&many), "1 host: 1 exit 0\n\nbox: exit 0\nmany");
    assert_eq!(structured(&many)["exit_codes"], json!({ "box": 0 }));

    let status = shim.call("ssh_status", json!({ "host": "box" })).await;
    assert!(!is_error(&status));
    let s = structured(&status);
    assert_eq!(s["reachable"], true);
    assert!(
        s["host_key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    assert!(s["server_version"].as_str().unwrap().contains("OpenSSH"));
    assert!(s["connected_since_unix_ms"].as_i64().unwrap() > 0);

    // A forward to the host's own sshd: its banner comes back through it.
    let forward = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": sshd.port }),
        )
        .await;
    assert!(!is_error(&forward), "{}", text(&forward));
    let local = structured(&forward)["local_address"]
        .as_str()
        .unwrap()
        .to_string();
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let stream = std::net::TcpStream::connect(local).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    assert!(banner.starts_with("SSH-2.0-OpenSSH"), "{banner:?}");
    let closed = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": sshd.port, "close": true }),
        )
        .await;
    assert_eq!(structured(&closed)["state"], "closed", "{}", text(&closed));

    let bye = shim.call("ssh_disconnect", json!({ "host": "box" })).await;
    assert_eq!(structured(&bye)["was_connected"], true);
    let again = shim.call("ssh_disconnect", json!({ "host": "box" })).await;
    assert_eq!(
        structured(&again)["was_connected"],
        false,
        "disconnect is idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_should_be_tool_errors_that_say_what_to_do() {
    let sshd = Sshd::start();
    let mut wrong = sshd.host("wrong", &login_user());
    wrong["identity_file"] = sshd.foreign_key().display().to_string().into();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = sshd.host("down", &login_user());
    down["port"] = closed_port.into();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user()), wrong, down]));
    let shim = Shim::attach(&daemon, "e2e-client").await;

    let unknown = shim
        .call("ssh_execute", json!({ "host": "nope", "command": "true" }))
        .await;
    assert!(is_error(&unknown));
    assert!(
        text(&unknown).contains("unknown host \"nope\""),
        "{}",
        text(&unknown)
    );
    assert!(text(&unknown).contains("box"));

    let auth = shim
        .call("ssh_execute", json!({ "host": "wrong", "command": "true" }))
        .await;
    assert!(is_error(&auth));
    assert!(
        text(&auth).contains("authentication failed"),
        "{}",
        text(&auth)
    );

    let refused = shim
        .call("ssh_execute", json!({ "host": "down", "command": "true" }))
        .await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("cannot connect to"),
        "{}",
        text(&refused)
    );

    let status = shim.call("ssh_status", json!({ "host": "down" })).await;
    assert!(!is_error(&status), "unreachable is a status, not a failure");
    assert_eq!(structured(&status)["reachable"], false);
    assert!(text(&status).contains("not reachable"));

    let unknown_status = shim.call("ssh_status", json!({ "host": "nope" })).await;
    assert!(is_error(&unknown_status));

    let missing = shim.call("ssh_execute", json!({ "host": "box" })).await;
    assert!(is_error(&missing));
    assert!(text(&missing).contains("command"), "{}", text(&missing));
    let extra = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "true", "sudo": true }),
        )
        .await;
    assert!(is_error(&extra), "unknown arguments are refused");

    let timeout = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo before; sleep 30", "timeout": 1 }),
        )
        .await;
    assert!(is_error(&timeout));
    let t = text(&timeout);
    assert!(t.contains("no output for 1 s"), "{t}");
    assert!(t.contains("output before that:\nbefore"), "{t}");

    let empty = shim
        .call(
            "ssh_execute_batch",
            json!({ "host": "box", "commands": [] }),
        )
        .await;
    assert!(is_error(&empty));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_should_be_capped_cleaned_and_flagged() {
    let sshd = Sshd::start();
    let config = json!({ "max_output_bytes": 4096, "hosts": [sshd.host("box", &login_user())] });
    let daemon = Daemon::start(&config.to_string());
    let shim = Shim::attach(&daemon, "e2e-client").await;

    let big = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "seq 1 100000" }),
        )
        .await;
    let s = structured(&big);
    let total = (1..=100_000)
        .map(|n: u32| n.to_string().len() + 1)
        .sum::<usize>() as u64;
    // Cut at line boundaries: at most a line more than the limit on each side.
    let cut = s["stdout_cut"].as_u64().unwrap();
    assert!((total - 4096..total - 4096 + 14).contains(&cut), "{cut}");
    let t = text(&big);
    assert!(
        t.contains(&format!("\n[... {cut} bytes of output cut ...]\n")),
        "{}",
        &t[..200]
    );
    assert!(t.contains("\n1\n2\n3\n"));
    assert!(t.trim_end().ends_with("100000"));
    assert!(t.len() < 5000);
    let stdout = s["stdout"].as_str().unwrap();
    let (head, tail) = stdout.split_once("[... ").unwrap();
    let tail = tail.split_once("...]\n").unwrap().1;
    let numbers = |part: &str| -> Vec<u32> { part.lines().map(|l| l.parse().unwrap()).collect() };
    let (head, tail) = (numbers(head), numbers(tail));
    assert_eq!(
        head,
        (1..=head.len() as u32).collect::<Vec<_>>(),
        "whole lines from 1"
    );
    assert_eq!(
        tail,
        (100_001 - tail.len() as u32..=100_000).collect::<Vec<_>>(),
        "whole lines to the end"
    );

    let wider = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "seq 1 100000", "max_output": 100000 }),
        )
        .await;
    assert!(structured(&wider)["stdout_cut"].as_u64().unwrap() < total - 90_000);

    let binary = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "printf 'ok \\377\\376 end\\n'" }),
        )
        .await;
    assert_eq!(structured(&binary)["invalid_utf8"], true);
    assert!(
        text(&binary).contains("ok \u{FFFD}\u{FFFD} end"),
        "{}",
        text(&binary)
    );
    assert!(text(&binary).contains("not valid UTF-8"));

    let ansi = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "printf '\\033[1;31mred\\033[0m plain\\n'" }),
        )
        .await;
    assert_eq!(structured(&ansi)["stdout"], "red plain\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_commands_should_send_progress() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let handle = shim
        .start_call("ssh_execute", json!({ "host": "box", "command": "for i in 1 2 3 4 5; do echo step $i; sleep 1; done" }))
        .await;
    let result = tool_result(handle.await_response().await.unwrap());
    assert!(!is_error(&result), "{}", text(&result));
    let progress = shim.progress.lock().unwrap().clone();
    assert!(
        progress.len() >= 3,
        "only {} progress notifications in 5 s",
        progress.len()
    );
    let last = progress.last().unwrap();
    assert!(
        last.message
            .as_deref()
            .unwrap_or_default()
            .contains("last output: step"),
        "{last:?}"
    );
    assert!(progress.windows(2).all(|w| w[1].progress >= w[0].progress));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_should_stop_the_remote_command_and_keep_the_session() {
    let sshd = Sshd::start();
    let audit = sshd.dir.path().join("audit.jsonl");
    let daemon = Daemon::start(
        &json!({ "audit_log_file": audit, "hosts": [sshd.host("box", &login_user())] }).to_string(),
    );
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let token = unique_token();
    let handle = shim
        .start_call(
            "ssh_execute",
            json!({ "host": "box", "command": format!("sleep 3600.{token}") }),
        )
        .await;
    let needle = format!("3600.{token}");
    assert!(eventually(Duration::from_secs(5), || !processes_matching(
        &needle
    )
    .is_empty()));
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(6), || processes_matching(&needle)
            .is_empty()),
        "the remote command survived the cancellation"
    );
    let after = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo still here" }),
        )
        .await;
    assert_eq!(structured(&after)["stdout"], "still here\n");
    // The audit log says the client cancelled it (not that it went away). The record is
    // written once the stop procedure has reported back, which may be just after this point.
    let finished_record = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| {
                r["action"] == "command_finished"
                    && r["command"].as_str().unwrap_or("").contains(&token)
            })
    };
    assert!(eventually(Duration::from_secs(10), || finished_record().is_some()));
    let finished: Value = finished_record().expect("a command_finished record");
    assert_eq!(finished["outcome"], "cancelled", "{finished}");
    assert!(
        finished["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("cancelled by e2e-client (pid "),
        "{finished}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_should_share_one_connection_and_restarts_reuse_it() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let claude = Shim::attach(&daemon, "claude-code").await;
    let cursor = Shim::attach(&daemon, "cursor").await;
    assert!(!is_error(
        &claude
            .call("ssh_execute", json!({ "host": "box", "command": "true" }))
            .await
    ));
    assert!(!is_error(
        &cursor
            .call("ssh_execute", json!({ "host": "box", "command": "true" }))
            .await
    ));
    assert_eq!(sshd.accepted_logins(), 1, "two clients, one SSH connection");

    let status = daemon.ctl(&["status"]);
    let listing = String::from_utf8_lossy(&status.stdout);
    assert!(
        listing.contains("claude-code 1.2.3") && listing.contains("cursor 1.2.3"),
        "{listing}"
    );

    // Restart one client: its first call must not open a new SSH connection.
    claude.service.cancel().await.unwrap();
    let claude = Shim::attach(&daemon, "claude-code").await;
    let r = claude
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo reused" }),
        )
        .await;
    assert_eq!(structured(&r)["stdout"], "reused\n");
    assert_eq!(sshd.accepted_logins(), 1);
    drop(cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_given_another_config_should_say_so() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let other = daemon.dir.path().join("other-hosts.json");
    std::fs::write(&other, hosts_json(&[])).unwrap();
    let shim = Shim::spawn(ShimOptions {
        socket: &daemon.socket,
        config: Some(&other),
        cwd: None,
        client_name: "x",
    })
    .await;
    let hosts = shim.call("list_hosts", json!({})).await;
    let note = structured(&hosts)["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        note.contains(&daemon.config.display().to_string()) && note.contains("other-hosts.json"),
        "{note}"
    );
    let status = shim.call("ssh_status", json!({ "host": "box" })).await;
    assert!(
        text(&status).contains("mcp-sshctl stop"),
        "{}",
        text(&status)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_shims_racing_should_start_exactly_one_daemon() {
    let sshd = Sshd::start();
    let daemon = Daemon::prepare(&hosts_json(&[sshd.host("box", &login_user())]));
    let names: Vec<String> = (0..8).map(|i| format!("racer-{i}")).collect();
    let mut shims = Vec::new();
    for name in &names {
        shims.push(Shim::spawn(ShimOptions {
            socket: &daemon.socket,
            config: Some(&daemon.config),
            cwd: None,
            client_name: name,
        }));
    }
    let shims = mcp_ssh_tests::join_all(shims).await;
    let mut calls = Vec::new();
    for shim in &shims {
        calls.push(shim.call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo ok" }),
        ));
    }
    for result in mcp_ssh_tests::join_all(calls).await {
        assert_eq!(structured(&result)["stdout"], "ok\n", "{}", text(&result));
    }
    let daemons = mcp_ssh_tests::daemons_serving(&daemon.socket);
    assert_eq!(daemons.len(), 1, "daemons running: {daemons:?}");
    assert_eq!(sshd.accepted_logins(), 1);
    let status = daemon.ctl(&["status", "--json"]);
    let json: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        json["clients"].as_array().unwrap().len(),
        8 + 1,
        "8 shims and this mcp-sshctl"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_that_cannot_start_should_make_every_call_explain_why() {
    // Valid when the shim starts (it refuses to start otherwise), broken when the daemon does.
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    std::fs::write(&daemon.config, "{ \"hosts\": [ broken").unwrap();
    let calls = [
        ("list_hosts", json!({})),
        ("ssh_execute", json!({ "host": "x", "command": "true" })),
    ];
    for (tool, args) in calls {
        let result = shim.call(tool, args).await;
        assert!(is_error(&result));
        let t = text(&result);
        assert!(t.contains("mcp-sshd could not be started"), "{t}");
        assert!(t.contains(&daemon.log.display().to_string()), "{t}");
        assert!(t.contains("invalid config file"), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_stdin_should_get_json_rpc_errors_and_the_shim_keeps_serving() {
    let daemon = Daemon::start(&hosts_json(&[]));
    let mut child = tokio::process::Command::new(bin("mcp-ssh-shim"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--config")
        .arg(&daemon.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    stdin
        .write_all(format!("{init}\n").as_bytes())
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.contains("\"id\":1"), "{reply}");
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .unwrap();
    let mut exchange = async |line: Vec<u8>| -> Value {
        stdin.write_all(&line).await.unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&reply).unwrap()
    };

    let cases: Vec<(Vec<u8>, i64)> = vec![
        (b"this is not json".to_vec(), -32700),
        (b"\x00\xff\xfe binary \x01".to_vec(), -32700),
        (b"[1, 2, 3]".to_vec(), -32600),
        (br#"{"id": 9, "method": "ping"}"#.to_vec(), -32600),
        (
            br#"{"jsonrpc":"2.0","id":10,"method":"no/such/method"}"#.to_vec(),
            -32601,
        ),
        (
            [
                br#"{"jsonrpc":"2.0","id":11,"method":"ping","params":{"pad":""#.as_slice(),
                &vec![b'x'; 9 << 20],
                b"\"}}",
            ]
            .concat(),
            -32600,
        ),
    ];
    for (line, code) in cases {
        let reply = exchange(line).await;
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    let wrong_type = json!({"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"ssh_execute","arguments":{"host":5,"command":"x"}}});
    let reply = exchange(wrong_type.to_string().into_bytes()).await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    let ping = exchange(br#"{"jsonrpc":"2.0","id":13,"method":"ping"}"#.to_vec()).await;
    assert_eq!(ping["id"], 13, "still serving: {ping}");
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the shim exits cleanly when stdin closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_daemon_binary_should_be_named_in_every_call() {
    // A shim installed alone: no mcp-sshd beside it, none on PATH.
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("mcp-ssh-shim");
    std::fs::copy(bin("mcp-ssh-shim"), &lonely).unwrap();
    let daemon = Daemon::prepare(&hosts_json(&[]));
    let mut command = tokio::process::Command::new(&lonely);
    command
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--config")
        .arg(&daemon.config)
        .arg("--log-file")
        .arg(dir.path().join("shim.log"))
        .env("PATH", "/usr/bin:/bin")
        .env_remove("MCP_SSH_SOCKET");
    let shim = Shim::spawn_command(command, "lonely").await;
    let result = shim.call("list_hosts", json!({})).await;
    assert!(is_error(&result));
    let t = text(&result);
    assert!(
        t.contains("mcp-sshd could not be started")
            && t.contains("installed next to this program or on PATH"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_should_be_restarted_by_the_next_call() {
    let sshd = Sshd::start();
    // No daemon yet: the shims start it, as in real use.
    let daemon = Daemon::prepare(&hosts_json(&[sshd.host("box", &login_user())]));
    let first = Shim::attach(&daemon, "first").await;
    let second = Shim::attach(&daemon, "second").await;
    for shim in [&first, &second] {
        let r = shim
            .call(
                "ssh_execute",
                json!({ "host": "box", "command": "echo before" }),
            )
            .await;
        assert_eq!(structured(&r)["stdout"], "before\n", "{}", text(&r));
    }
    let lock = std::fs::read_to_string(format!("{}.lock", daemon.socket.display())).unwrap();
    let old_pid: i32 = lock.lines().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid), None).is_err()
    }));
    assert!(daemon.socket.exists(), "SIGKILL leaves the socket behind");

    for shim in [&first, &second] {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            shim.call(
                "ssh_execute",
                json!({ "host": "box", "command": "echo after" }),
            ),
        )
        .await
        .expect("a call after the daemon died must not hang");
        assert_eq!(structured(&r)["stdout"], "after\n", "{}", text(&r));
    }
    let lock = std::fs::read_to_string(format!("{}.lock", daemon.socket.display())).unwrap();
    let new_pid: i32 = lock.lines().next().unwrap().parse().unwrap();
    assert_ne!(new_pid, old_pid, "a new daemon serves");
    let daemons = mcp_ssh_tests::daemons_serving(&daemon.socket);
    assert_eq!(daemons.len(), 1, "exactly one new daemon: {daemons:?}");
}

/// The README's quick start ends with this demo; it must keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_demo_should_run() {
    let shim = mcp_ssh_tests::bins::bin("mcp-ssh-shim");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-ssh-demo"))
        .arg("--bin-dir")
        .arg(shim.parent().unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "13 tools: list_hosts",
        "→ tools/call ssh_execute",
        "exit 0",
        "uploaded 28 B",
        "downloaded 28 B",
        "The demo worked",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
