//! Results and arguments as a model reads them, through the real shim: some clients show the
//! model only `structuredContent`, so the JSON must read well alone; argument mistakes are said
//! in terms of the tool's arguments.

use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Sshd, login_user};
use rmcp::model::CallToolRequestParams;
use serde_json::json;

use crate::common::stdout_json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_output_below_the_minimum_should_be_raised_and_said() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let tools = shim.service.list_all_tools().await.unwrap();
    let execute = tools.iter().find(|t| t.name == "ssh_execute").unwrap();
    assert_eq!(
        execute.input_schema["properties"]["max_output"]["minimum"], 1024,
        "the schema states the minimum"
    );

    let r = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "seq 1 2000", "max_output": 100 }),
        )
        .await;
    let s = structured(&r);
    assert!(!is_error(&r), "{}", text(&r));
    let kept = s["stdout"].as_str().unwrap().len();
    assert!(
        kept > 900 && kept < 1200,
        "1024 bytes kept, not 100: {kept}"
    );
    let note = s["note"].as_str().unwrap_or_default();
    assert!(note.contains("max_output 100 is below the minimum"), "{s}");
    assert!(
        text(&r).contains("1024 bytes per stream were kept"),
        "{}",
        text(&r)
    );

    let r = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "true", "max_output": 2048 }),
        )
        .await;
    assert!(structured(&r).get("note").is_none(), "{}", structured(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_results_should_read_well_alone() {
    let sshd = Sshd::start();
    let user = login_user();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = sshd.host("down", &user);
    down["port"] = closed_port.into();
    let daemon = Daemon::start(&hosts_json(&[
        sshd.host("box", &user),
        sshd.host("idle", &user),
        down,
    ]));
    let shim = Shim::attach(&daemon, "e2e-client").await;

    // Batch counts that cannot be misread.
    let batch = shim
        .call(
            "ssh_execute_batch",
            json!({ "host": "box", "commands": ["echo one", "exit 2", "echo three"] }),
        )
        .await;
    let b = structured(&batch);
    assert_eq!(
        (&b["ran"], &b["succeeded"], &b["not_run"]),
        (&json!(2), &json!(1), &json!(1)),
        "{b}"
    );
    assert!(b.get("completed").is_none(), "{b}");
    let all = shim
        .call(
            "ssh_execute_batch",
            json!({ "host": "box", "commands": ["true", "true"] }),
        )
        .await;
    let a = structured(&all);
    assert_eq!(
        (&a["ran"], &a["succeeded"], &a["not_run"]),
        (&json!(2), &json!(2), &json!(0))
    );

    // No transfer rate for a small file; one for a large one.
    let local = tempfile::tempdir().unwrap();
    let small = local.path().join("small.txt");
    std::fs::write(&small, "data").unwrap();
    let large = local.path().join("large.bin");
    std::fs::write(&large, vec![7u8; 3 * 1024 * 1024]).unwrap();
    let remote = format!("/tmp/mcpssh-results-{}", std::process::id());
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": small, "remote_path": remote }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    assert!(
        structured(&up).get("mib_per_s").is_none(),
        "{}",
        structured(&up)
    );
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": large, "remote_path": remote }),
        )
        .await;
    assert!(structured(&up)["mib_per_s"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(&remote);

    // The same channel limit connected (box), never connected (idle) and unreachable (down).
    let hosts = stdout_json(&daemon.ctl(&["hosts", "--json"]));
    let limit_of = |name: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["channel_limit"].clone())
            .unwrap()
    };
    assert_eq!(limit_of("box"), limit_of("idle"), "{hosts}");
    assert_eq!(limit_of("box"), limit_of("down"), "{hosts}");
    let connected = structured(&shim.call("ssh_status", json!({ "host": "box" })).await);
    let unreachable = structured(&shim.call("ssh_status", json!({ "host": "down" })).await);
    assert_eq!(unreachable["reachable"], false);
    assert_eq!(
        connected["channel_limit"], unreachable["channel_limit"],
        "{connected} / {unreachable}"
    );
    assert_eq!(connected["channel_limit"], limit_of("box"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_mistakes_should_name_the_argument_and_unknown_tools_themselves() {
    let daemon = Daemon::start(&hosts_json(&[]));
    let shim = Shim::attach(&daemon, "e2e-client").await;
    let missing = shim.call("ssh_execute", json!({ "host": "box" })).await;
    assert!(is_error(&missing));
    let t = text(&missing);
    assert!(
        t.starts_with("invalid arguments for ssh_execute: `command` is missing."),
        "{t}"
    );
    assert!(
        t.contains("ssh_execute takes host (a string), command (a string)"),
        "{t}"
    );
    assert!(!t.contains("deserialize") && !t.contains("field"), "{t}");

    let wrong = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "true", "timeout": "5", "sudo": true }),
        )
        .await;
    let t = text(&wrong);
    assert!(
        t.contains("`sudo` is not an argument of ssh_execute"),
        "{t}"
    );
    assert!(
        t.contains("`timeout` must be a whole number ≥ 0 (got \"5\")"),
        "{t}"
    );

    let unknown = shim
        .service
        .call_tool(CallToolRequestParams::new("ssh_exec"))
        .await
        .expect_err("an unknown tool is a protocol error");
    let message = unknown.to_string();
    assert!(
        message.contains("unknown tool \"ssh_exec\"; the tools are: list_hosts, "),
        "{message}"
    );
    assert!(message.contains("ssh_execute"), "{message}");
}
