//! Fleets: groups, `ssh_execute_many` and `mcp-sshctl exec @group`, against a few real sshds
//! that many host entries point at (each entry is its own connection, as separate machines'
//! would be).

use std::time::{Duration, Instant};

use mcp_ssh_tests::daemon::Daemon;
use mcp_ssh_tests::proxy::{Fault, FaultProxy};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text, tool_result};
use mcp_ssh_tests::sshd::free_port;
use mcp_ssh_tests::{Sshd, SshdOptions, login_user};
use serde_json::{Value, json};

use crate::common::{eventually, processes_matching, stdout_json, unique_token};

/// An sshd that takes many connections at once: these tests are not about MaxStartups.
fn roomy_sshd() -> Sshd {
    Sshd::start_with(SshdOptions {
        max_sessions: Some(64),
        extra: "MaxStartups 300:30:600\n".into(),
        ..SshdOptions::default()
    })
}

/// `count` host entries named `{prefix}-NNN`, spread over `sshds` in turn.
fn spread(sshds: &[Sshd], prefix: &str, count: usize) -> Vec<Value> {
    (1..=count)
        .map(|i| sshds[i % sshds.len()].host(&format!("{prefix}-{i:03}"), &login_user()))
        .collect()
}

/// A host entry nobody listens for: connecting is refused.
fn refusing(name: &str, sshd: &Sshd) -> Value {
    let mut host = sshd.host(name, &login_user());
    host["port"] = free_port().into();
    host
}

/// The server's port as the session sees it: one output per sshd.
const PORT: &str = "${SSH_CONNECTION##* }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_hosts_should_run_in_one_call_with_failures_kept_apart() {
    let sshds: Vec<Sshd> = (0..4).map(|_| roomy_sshd()).collect();
    let holes: Vec<FaultProxy> = (0..2).map(|_| FaultProxy::start(sshds[0].port)).collect();
    let mut hosts = Vec::new();
    // The black holes come first: they hold two of the fanout's places for their whole
    // connect_timeout while every other host goes on.
    for (i, proxy) in holes.iter().enumerate() {
        proxy.set(Fault::BlackHole);
        let mut host = sshds[0].host(&format!("hole-{}", i + 1), &login_user());
        host["port"] = proxy.port.into();
        host["connect_timeout"] = 3.into();
        hosts.push(host);
    }
    hosts.extend(spread(&sshds, "node", 194));
    for i in 1..=3 {
        hosts.push(refusing(&format!("down-{i}"), &sshds[1]));
    }
    let mut strict = sshds[2].host("strict", &login_user());
    strict["allowed_commands"] = json!(["hostname"]);
    hosts.push(strict);
    assert_eq!(hosts.len(), 200);
    let audit = sshds[0].dir.path().join("audit.jsonl");
    let config = json!({
        "audit_log_file": audit,
        "groups": { "nodes": ["node-*"], "all": ["@nodes", "hole-*", "down-*", "strict"] },
        "hosts": hosts,
    });
    let daemon = Daemon::start(&config.to_string());
    let shim = Shim::attach(&daemon, "e2e-fleet").await;

    // Hosts on the last sshd exit 1: two outcomes, each printed once for its hosts.
    let last = sshds[3].port;
    let command = format!("echo port {PORT}; test {PORT} != {last}");
    // Cold, all but the black holes: every connection opened.
    let cold = Instant::now();
    let warm_up = json!({ "hosts": ["@nodes", "down-*", "strict"], "command": command });
    let result = shim.call("ssh_execute_many", warm_up).await;
    let cold = cold.elapsed();
    assert!(
        text(&result).starts_with("198 hosts: "),
        "{}",
        text(&result)
    );
    // Then all 200: the 198 warm hosts are all done long before the black holes' own deadline
    // (connect_timeout 3 s), and the call ends at it.
    shim.progress.lock().unwrap().clear();
    let started = Instant::now();
    let handle = shim
        .start_call(
            "ssh_execute_many",
            json!({ "hosts": ["@all"], "command": command }),
        )
        .await;
    let others_done = {
        let progress = shim.progress.clone();
        tokio::spawn(async move {
            loop {
                if progress.lock().unwrap().len() >= 198 {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let result = tool_result(handle.await_response().await.unwrap());
    let wall = started.elapsed();
    let others_done = others_done.await.unwrap();
    let body = text(&result);
    assert!(!is_error(&result), "{body}");
    println!(
        "198 hosts cold in {cold:.2?}; 200 (198 warm) in {wall:.2?}, the 198 others done after {others_done:.2?}:\n{body}"
    );
    assert!(
        others_done < Duration::from_secs(2) && wall >= Duration::from_secs(3),
        "the 198 others were done after {others_done:.2?}, the call took {wall:.2?}"
    );

    let on_last = (1..=194).filter(|i| i % 4 == 3).count();
    let exit_0 = 194 - on_last;
    assert!(
        body.starts_with(&format!(
            "200 hosts: {exit_0} exit 0, {on_last} exit 1, 1 refused, 5 unreachable"
        )),
        "{body}"
    );
    // Three sshds' hosts exit 0, each with its own port: three gathered outputs, then exit 1.
    for sshd in &sshds[..3] {
        assert!(
            body.contains(&format!("exit 0\nport {}\n", sshd.port))
                || body.contains(&format!("exit 0\nport {}", sshd.port)),
            "{body}"
        );
    }
    assert!(body.contains(&format!("exit 1\nport {last}")), "{body}");
    assert!(
        body.contains("node-[003,007,011,"),
        "node sets folded: {body}"
    );
    assert!(
        !body.contains("node-[1"),
        "one node set per outcome: {body}"
    );
    assert!(
        body.contains("down-[1-3]: cannot connect to the host") && body.contains("refused"),
        "{body}"
    );
    assert!(body.contains("hole-[1-2]"), "{body}");
    assert!(
        body.contains("3 s"),
        "the black holes' own deadline: {body}"
    );
    assert!(
        body.contains("strict: ") && body.contains("hostname"),
        "{body}"
    );
    assert!(!body.contains("retry"), "{body}");

    // structuredContent alone tells every host's exit code and the grouping.
    let s = structured(&result);
    let codes = s["exit_codes"].as_object().unwrap();
    assert_eq!(codes.len(), 200);
    assert_eq!(codes["node-001"], 0);
    assert_eq!(codes["node-003"], 1);
    assert_eq!(codes["down-2"], Value::Null);
    let groups = s["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 4, "{s}");
    let gathered: usize = groups
        .iter()
        .map(|g| g["hosts"].as_array().unwrap().len())
        .sum();
    assert_eq!(gathered, 194);
    let failures = s["failures"].as_array().unwrap();
    let failed: usize = failures
        .iter()
        .map(|f| f["hosts"].as_array().unwrap().len())
        .sum();
    assert_eq!(failed, 6, "{s}");
    let strict_failure = failures
        .iter()
        .find(|f| f["hosts"] == json!(["strict"]))
        .expect("strict's refusal");
    assert_eq!(strict_failure["kind"], "refused");

    // list_hosts and status summarise 200 hosts; structuredContent still lists every one.
    let listed = shim.call("list_hosts", json!({})).await;
    let listing = text(&listed);
    assert!(listing.starts_with("200 hosts: "), "{listing}");
    assert!(
        listing.contains("(structuredContent lists all)"),
        "{listing}"
    );
    assert!(listing.len() < 4096, "{} bytes: {listing}", listing.len());
    assert_eq!(structured(&listed)["hosts"].as_array().unwrap().len(), 200);
    let status = daemon.ctl(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("200 hosts: "), "{status}");
    assert!(status.len() < 8192, "{} bytes: {status}", status.len());

    // Progress went host by host, to 200.
    let progress = shim.progress.lock().unwrap().clone();
    let last_progress = progress.last().expect("progress notifications");
    assert_eq!(last_progress.progress, 200.0);
    assert_eq!(last_progress.message.as_deref(), Some("200/200 done"));

    // One audit record pair per host that ran, all sharing the call's fan-out id.
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finished: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "command_finished")
        .collect();
    assert_eq!(
        finished.len(),
        197 + 199,
        "every host but the refused one, in both calls"
    );
    let fanout = finished.last().unwrap()["fanout"]
        .as_str()
        .expect("a fan-out id");
    let this_call = finished.iter().filter(|r| r["fanout"] == fanout).count();
    assert_eq!(this_call, 199);
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "command" && r["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "strict's refusals are audited");
    assert_eq!(refused[1]["host"], "strict");
    assert_eq!(refused[1]["fanout"], fanout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gathered_result_should_stay_within_the_output_budget() {
    let sshds: Vec<Sshd> = (0..4).map(|_| roomy_sshd()).collect();
    let hosts = spread(&sshds, "big", 40);
    let daemon = Daemon::start(&json!({ "max_output_bytes": 8192, "hosts": hosts }).to_string());
    let shim = Shim::attach(&daemon, "e2e-fleet").await;
    // 40 hosts, each printing 100 KB: four distinct outputs (one per sshd port).
    let command =
        format!("echo start {PORT}; head -c 100000 /dev/zero | tr '\\0' x; echo; echo end {PORT}");
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["big-*"], "command": command }),
        )
        .await;
    let body = text(&result);
    assert!(!is_error(&result), "{body}");
    assert!(body.starts_with("40 hosts: 40 exit 0"), "{body}");
    assert!(body.len() < 8192 + 1024, "{} bytes", body.len());
    assert_eq!(body.matches("bytes of output cut").count(), 4, "{body}");
    for sshd in &sshds {
        assert!(body.contains(&format!("start {}", sshd.port)), "head kept");
        assert!(body.contains(&format!("end {}", sshd.port)), "tail kept");
    }
    let s = structured(&result);
    assert_eq!(s["groups"].as_array().unwrap().len(), 4);
    assert!(s["groups"][0]["cut"].as_u64().unwrap() > 90_000);
    assert!(serde_json::to_string(&s).unwrap().len() < 8192 + 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_should_stop_every_remote_command() {
    let sshds: Vec<Sshd> = (0..2).map(|_| roomy_sshd()).collect();
    let daemon = Daemon::start(&json!({ "hosts": spread(&sshds, "gpu", 20) }).to_string());
    let shim = Shim::attach(&daemon, "e2e-fleet").await;
    let token = unique_token();
    let handle = shim
        .start_call(
            "ssh_execute_many",
            json!({ "hosts": ["gpu-*"], "command": format!("sleep 3600.{token}") }),
        )
        .await;
    let needle = format!("3600.{token}");
    assert!(
        eventually(Duration::from_secs(20), || processes_matching(&needle)
            .len()
            >= 20),
        "{} of 20 commands started",
        processes_matching(&needle).len()
    );
    handle
        .cancel(Some("user pressed stop".into()))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&needle)
            .is_empty()),
        "{} remote commands survived the cancellation",
        processes_matching(&needle).len()
    );
    // The connections stay, and serve the next call.
    let after = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["gpu-*"], "command": "echo still here" }),
        )
        .await;
    assert!(
        text(&after).starts_with("20 hosts: 20 exit 0"),
        "{}",
        text(&after)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_on_error_should_start_no_more_hosts() {
    let sshd = roomy_sshd();
    let mut hosts = vec![refusing("a-1", &sshd), refusing("a-2", &sshd)];
    hosts.extend((3..=6).map(|i| sshd.host(&format!("a-{i}"), &login_user())));
    let daemon = Daemon::start(&json!({ "fanout": 2, "hosts": hosts }).to_string());
    let shim = Shim::attach(&daemon, "e2e-fleet").await;
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["a-*"], "command": "true", "stop_on_error": true }),
        )
        .await;
    let body = text(&result);
    assert!(
        body.starts_with("6 hosts: 2 unreachable, 4 not run"),
        "{body}"
    );
    assert!(
        body.ends_with("not run (4, stop_on_error): a-[3-6]"),
        "{body}"
    );
    assert_eq!(
        structured(&result)["not_run"],
        json!(["a-3", "a-4", "a-5", "a-6"])
    );
    // Without it, every host runs.
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["a-*"], "command": "true" }),
        )
        .await;
    assert!(
        text(&result).starts_with("6 hosts: 4 exit 0, 2 unreachable"),
        "{}",
        text(&result)
    );
}

/// OpenSSH's default `MaxStartups 10:30:100` drops unauthenticated connections at random once
/// 10 are in progress; a hundred cold hosts behind one sshd must all get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_cold_hosts_behind_default_max_startups_should_all_connect() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(64),
        ..SshdOptions::default()
    });
    let hosts = spread(std::slice::from_ref(&sshd), "cold", 100);
    let daemon = Daemon::start(
        &json!({ "fanout": 100, "groups": { "cold": ["cold-*"] }, "hosts": hosts }).to_string(),
    );
    let out = daemon.ctl(&["exec", "@cold", "--", "echo", "in"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}\nsshd:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert!(stdout.starts_with("100 hosts: 100 exit 0"), "{stdout}");
    assert!(
        stdout.contains("cold-[001-100] (100 hosts): exit 0\nin"),
        "{stdout}"
    );
    // Pacing keeps sshd below MaxStartups but for the moments it is slow to count a login
    // (without it, most of the first hundred would be dropped); those few are tried again.
    let log = sshd.log();
    let dropped = log.matches("past MaxStartups").count();
    assert!(dropped <= 10, "sshd dropped {dropped} connections:\n{log}");
    assert_eq!(sshd.accepted_logins(), 100);
    eprintln!("100 cold hosts behind one sshd: {dropped} dropped at MaxStartups, tried again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_should_resolve_and_show_in_hosts_and_the_cli() {
    let sshd = roomy_sshd();
    let mut hosts: Vec<Value> = ["gpu-1", "gpu-2", "gpu-3", "web-a", "db"]
        .iter()
        .map(|n| sshd.host(n, &login_user()))
        .collect();
    hosts.push(refusing("gpu-9", &sshd));
    let config = json!({
        "groups": {
            "gpus": ["gpu-*"],
            "front": ["web-*", "db"],
            "everything": ["@gpus", "@front"],
        },
        "hosts": hosts,
    });
    let daemon = Daemon::start(&serde_json::to_string_pretty(&config).unwrap());

    // mcp-sshctl hosts lists the groups; --json says which groups each host is in.
    let out = daemon.ctl(&["hosts"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("@gpus (4): gpu-1 gpu-2 gpu-3 gpu-9"),
        "{listing}"
    );
    assert!(listing.contains("@everything (6)"), "{listing}");
    let json_hosts = stdout_json(&daemon.ctl(&["hosts", "--json"]));
    let db = json_hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "db")
        .unwrap();
    assert_eq!(db["groups"], json!(["everything", "front"]));

    let shim = Shim::attach(&daemon, "e2e-fleet").await;
    let listed = shim.call("list_hosts", json!({})).await;
    assert!(
        text(&listed).contains("@gpus (4): gpu-[1-3,9]"),
        "{}",
        text(&listed)
    );
    assert_eq!(
        structured(&listed)["groups"]["front"],
        json!(["web-a", "db"])
    );

    // Names, groups and globs mix; each host once, in hosts.json order.
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["db", "@gpus", "gpu-1", "web-?"], "command": "true" }),
        )
        .await;
    let codes = structured(&result)["exit_codes"].clone();
    let names: Vec<&String> = codes.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 6, "{codes}");
    // A max_output below the minimum is raised, and the result says so.
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["db"], "command": "true", "max_output": 10 }),
        )
        .await;
    assert!(
        text(&result).starts_with("1 host: 1 exit 0 (note: max_output 10 is below the minimum: 1024 bytes per stream were kept)"),
        "{}",
        text(&result)
    );
    // What matches nothing is an error naming it, and nothing runs.
    for (targets, needle) in [
        (json!(["@nope"]), "@nope"),
        (json!(["gpu-1", "zz-*"]), "zz-*"),
        (json!([]), "at least one"),
    ] {
        let result = shim
            .call(
                "ssh_execute_many",
                json!({ "hosts": targets, "command": "true" }),
            )
            .await;
        assert!(is_error(&result), "{targets}: {}", text(&result));
        assert!(
            text(&result).contains(needle),
            "{targets}: {}",
            text(&result)
        );
    }

    // The CLI: gathered, per host, and the highest exit code (255: a host could not run it).
    let out = daemon.ctl(&["exec", "@gpus", "--", "echo", "hi"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(255), "{stdout}");
    assert!(
        stdout.starts_with("4 hosts: 3 exit 0, 1 unreachable"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gpu-[1-3] (3 hosts): exit 0\nhi"),
        "{stdout}"
    );
    let out = daemon.ctl(&[
        "exec",
        "gpu-1,gpu-2,db",
        "--per-host",
        "--",
        "echo hi; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "db: exit 3",
            "db: hi",
            "gpu-1: exit 3",
            "gpu-1: hi",
            "gpu-2: exit 3",
            "gpu-2: hi"
        ]
    );
    let out = daemon.ctl(&["exec", "@nope", "--", "true"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a target naming nothing is a usage mistake"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no group \"@nope\"; groups: @everything, @front, @gpus")
    );
    let out = daemon.ctl(&["exec", "@front", "--json", "--", "echo", "hi"]);
    let doc = stdout_json(&out);
    assert_eq!(doc["exit_codes"], json!({ "db": 0, "web-a": 0 }));
    assert_eq!(out.status.code(), Some(0));

    // A reload applies changed groups; an unknown member is refused with where it is.
    let mut changed = config.clone();
    changed["groups"]["gpus"] = json!(["gpu-1"]);
    std::fs::write(
        &daemon.config,
        serde_json::to_string_pretty(&changed).unwrap(),
    )
    .unwrap();
    assert_eq!(daemon.ctl(&["reload"]).status.code(), Some(0));
    let out = daemon.ctl(&["exec", "@gpus", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("1 host: 1 exit 0"));
    changed["groups"]["gpus"] = json!(["gpu-1", "tpu-7"]);
    std::fs::write(
        &daemon.config,
        serde_json::to_string_pretty(&changed).unwrap(),
    )
    .unwrap();
    let out = daemon.ctl(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("tpu-7") && stderr.contains("line"),
        "{stderr}"
    );
}

/// The daemon holds a file descriptor per direct connection: past its `RLIMIT_NOFILE` (less a
/// reserve for everything else) a connection is refused with the reason, and status warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_open_file_limit_should_be_refused_clearly() {
    let sshd = roomy_sshd();
    let daemon = Daemon::start(
        &json!({ "hosts": spread(std::slice::from_ref(&sshd), "f", 40) }).to_string(),
    );
    let pid = daemon.pid().unwrap().to_string();
    // Room for a few connections beyond what the daemon has open now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = (open + 64 + 5).to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={limit}:{limit}")])
        .status()
        .expect("prlimit (util-linux) not found");
    assert!(status.success());
    assert_eq!(daemon.ctl(&["reload"]).status.code(), Some(0));
    let out = daemon.ctl(&["exec", "f-*", "--json", "--", "true"]);
    assert_eq!(out.status.code(), Some(255));
    let doc = stdout_json(&out);
    let failure = &doc["failures"][0];
    assert_eq!(failure["kind"], "file limit", "{doc}");
    let reason = failure["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("its limit of {limit} (RLIMIT_NOFILE); raise it")),
        "{reason}"
    );
    let codes = doc["exit_codes"].as_object().unwrap();
    let connected: Vec<&String> = codes
        .iter()
        .filter(|(_, c)| **c == 0)
        .map(|(h, _)| h)
        .collect();
    assert!((1..40).contains(&connected.len()), "{doc}");
    let status = String::from_utf8_lossy(&daemon.ctl(&["status"]).stdout).to_string();
    assert!(
        status.contains("hosts.json has 40 hosts but the open-file limit"),
        "{status}"
    );
    // The hosts already connected keep working.
    let out = daemon.ctl(&["exec", connected[0], "--", "echo", "fine"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n", "{stderr}");
}
