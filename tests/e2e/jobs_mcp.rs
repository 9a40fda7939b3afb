//! Jobs and MCP tasks as AI clients see them: the real shim binary over stdio, driven by rmcp's
//! MCP client, with a real daemon and a real sshd behind it.

use std::time::{Duration, Instant};

use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::tasks::{
    call_as_task, cancel_task, get_task, spawn_discovering, start_call_as_task,
};
use mcp_ssh_tests::{Sshd, login_user};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rmcp::ServiceError;
use rmcp::model::{CallToolResponse, CallToolResult, GetTaskParams, TaskPayload, TaskStatus};
use serde_json::{Value, json};

use crate::common::{eventually, processes_matching, unique_token};

/// `host/` and six lowercase hex digits.
fn is_job_id(id: &Value, host: &str) -> bool {
    let Some(hex) = id
        .as_str()
        .and_then(|id| id.strip_prefix(&format!("{host}/")))
    else {
        return false;
    };
    hex.len() == 6
        && hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The pids of the shim `Shim::attach(daemon, name)` (or `spawn_discovering`) started: its log
/// file, named after the client, is in the daemon's temporary directory.
fn shim_pids(daemon: &Daemon, client_name: &str) -> Vec<u32> {
    let log = daemon.dir.path().join(format!("shim-{client_name}.log"));
    processes_matching(&format!("--log-file {}", log.display()))
}

/// SIGKILLs a shim process, as a crashing AI client would leave it, and waits until it is gone.
fn kill_shim(daemon: &Daemon, client_name: &str) {
    let pids = shim_pids(daemon, client_name);
    assert_eq!(pids.len(), 1, "the shim of {client_name}: {pids:?}");
    let _ = kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL);
    assert!(
        eventually(Duration::from_secs(5), || shim_pids(daemon, client_name)
            .is_empty()),
        "the shim of {client_name} is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_tools_should_start_wait_match_list_and_kill() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "jobs-client").await;

    // A quick job ends within the wait: its result is what ssh_execute gives.
    let quick_command = "echo hi; echo oops >&2; exit 3";
    let quick = shim
        .call(
            "ssh_job_start",
            json!({ "host": "box", "command": quick_command }),
        )
        .await;
    let sync = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": quick_command }),
        )
        .await;
    assert!(!is_error(&quick), "{}", text(&quick));
    let q = structured(&quick);
    assert!(is_job_id(&q["job"], "box"), "{q}");
    assert_eq!(q["state"], "exited", "{q}");
    assert_eq!(q["exit_code"], 3, "{q}");
    assert_eq!(q["stdout"], "hi\n");
    assert_eq!(q["stderr"], "oops\n");
    for field in ["exit_code", "stdout", "stderr"] {
        assert_eq!(q[field], structured(&sync)[field], "{field}");
    }
    let t = text(&quick);
    assert!(t.starts_with("exit 3"), "{t}");
    assert!(t.contains(q["job"].as_str().unwrap()), "{t}");
    assert!(t.contains("\nhi\n--- stderr ---\noops\n"), "{t}");

    // A slow one is running when the call returns.
    let slow_command = "echo start; sleep 1; echo ready-now; sleep 3; echo bye; exit 5";
    let slow = shim
        .call(
            "ssh_job_start",
            json!({ "host": "box", "command": slow_command, "wait": 0 }),
        )
        .await;
    let started = Instant::now();
    assert!(!is_error(&slow), "{}", text(&slow));
    let s = structured(&slow);
    let id = s["job"].as_str().unwrap().to_string();
    assert!(is_job_id(&s["job"], "box"), "{s}");
    assert_eq!(s["state"], "running", "{s}");
    assert!(s.get("exit_code").is_none(), "{s}");
    assert!(text(&slow).contains("is running"), "{}", text(&slow));

    // `until` returns at the matching line, long before the wait.
    let matched = shim
        .call(
            "ssh_job_output",
            json!({ "job": id, "offset": 0, "until": "^ready", "wait": 30 }),
        )
        .await;
    assert!(!is_error(&matched), "{}", text(&matched));
    let m = structured(&matched);
    assert_eq!(m["matched_line"], "ready-now", "{m}");
    assert_eq!(m["state"], "running", "{m}");
    assert!(m.get("exit_code").is_none(), "{m}");
    assert!(
        started.elapsed() < Duration::from_millis(2800),
        "until matched after {:?}",
        started.elapsed()
    );
    assert!(
        m["stdout"]
            .as_str()
            .unwrap()
            .starts_with("start\nready-now\n"),
        "{m}"
    );
    assert_eq!(m["stdout_start"], 0);
    assert!(
        text(&matched).contains("matched: ready-now"),
        "{}",
        text(&matched)
    );

    // ssh_jobs lists it as running (from any filter that fits).
    for args in [json!({}), json!({ "host": "box", "state": "running" })] {
        let listed = shim.call("ssh_jobs", args.clone()).await;
        assert!(!is_error(&listed), "{}", text(&listed));
        let l = structured(&listed);
        assert!(l["counts"]["running"].as_u64().unwrap() >= 1, "{args}: {l}");
        let entry = l["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == id)
            .unwrap_or_else(|| panic!("{id} not listed for {args}: {l}"))
            .clone();
        assert_eq!(entry["state"], "running", "{entry}");
        assert_eq!(entry["host"], "box");
        assert_eq!(entry["command"], slow_command);
        assert!(text(&listed).contains(&id), "{}", text(&listed));
    }

    // `wait` returns at exit, continuing where the last read ended.
    let next = m["next_offset"].as_u64().unwrap();
    let waited_from = Instant::now();
    let done = shim
        .call(
            "ssh_job_output",
            json!({ "job": id, "offset": next, "wait": 30 }),
        )
        .await;
    assert!(!is_error(&done), "{}", text(&done));
    let d = structured(&done);
    assert_eq!(d["state"], "exited", "{d}");
    assert_eq!(d["exit_code"], 5, "{d}");
    assert_eq!(d["stdout_start"], next, "{d}");
    assert_eq!(d["stdout"], "bye\n", "{d}");
    let total = "start\nready-now\nbye\n".len() as u64;
    assert_eq!(d["stdout_total_bytes"], total, "{d}");
    assert_eq!(d["next_offset"], total, "{d}");
    assert!(
        waited_from.elapsed() < Duration::from_secs(6),
        "wait returned {:?} after the job's exit was due",
        waited_from.elapsed()
    );
    assert!(text(&done).contains("exit 5"), "{}", text(&done));
    let beats = shim.progress.lock().unwrap().clone();
    assert!(
        beats.iter().any(|p| p
            .message
            .as_deref()
            .unwrap_or_default()
            .starts_with("running, waited")),
        "no progress heartbeat while waiting: {beats:?}"
    );

    // Without an offset: the tail, here the whole output.
    let tail = shim.call("ssh_job_output", json!({ "job": id })).await;
    assert_eq!(structured(&tail)["stdout"], "start\nready-now\nbye\n");

    // A job with children: the kill is confirmed and leaves nothing behind.
    let token = unique_token();
    let needle = format!("3600.{token}");
    let forks = shim
        .call(
            "ssh_job_start",
            json!({
                "host": "box",
                "command": format!("sleep {needle} & sleep {needle} & wait"),
                "wait": 0,
            }),
        )
        .await;
    let forks_id = structured(&forks)["job"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(5), || processes_matching(&needle).len()
            >= 2),
        "the job's two children never ran"
    );
    let killed = shim.call("ssh_job_kill", json!({ "job": forks_id })).await;
    assert!(!is_error(&killed), "{}", text(&killed));
    let k = structured(&killed);
    assert_eq!(k["confirmed_gone"], true, "{k}");
    assert_eq!(k["state"], "killed", "{k}");
    assert_eq!(k["job"], forks_id);
    assert!(k["outcome"].as_str().is_some_and(|o| !o.is_empty()), "{k}");
    assert!(
        processes_matching(&needle).is_empty(),
        "confirmed gone, yet {:?} still run",
        processes_matching(&needle)
    );
    let listed = shim.call("ssh_jobs", json!({ "state": "killed" })).await;
    let l = structured(&listed);
    assert!(
        l["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["job"] == forks_id),
        "{l}"
    );
    assert!(
        l["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "killed"),
        "{l}"
    );

    // An unknown job is a tool error naming it.
    let unknown = shim
        .call("ssh_job_output", json!({ "job": "box/000000" }))
        .await;
    assert!(is_error(&unknown));
    assert!(text(&unknown).contains("box/000000"), "{}", text(&unknown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_should_outlive_the_shim_that_started_it() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let first = Shim::attach(&daemon, "client-a").await;
    let started = first
        .call(
            "ssh_job_start",
            json!({ "host": "box", "command": "sleep 3; echo done; exit 7", "wait": 0 }),
        )
        .await;
    let began = Instant::now();
    assert!(!is_error(&started), "{}", text(&started));
    let id = structured(&started)["job"].as_str().unwrap().to_string();
    assert_eq!(structured(&started)["state"], "running");

    // The AI client crashes: its shim is SIGKILLed mid-job.
    kill_shim(&daemon, "client-a");
    drop(first);
    assert!(
        eventually(Duration::from_secs(5), || {
            let status = daemon.ctl(&["status"]);
            !String::from_utf8_lossy(&status.stdout).contains("client-a 1.2.3")
        }),
        "the daemon still lists the killed shim's client"
    );
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "the job ended too soon to tell"
    );

    // Another client, another shim process, reads its output and exit code.
    let second = Shim::attach(&daemon, "client-b").await;
    let out = second
        .call("ssh_job_output", json!({ "job": id, "wait": 30 }))
        .await;
    assert!(!is_error(&out), "{}", text(&out));
    let o = structured(&out);
    assert_eq!(o["state"], "exited", "{o}");
    assert_eq!(o["exit_code"], 7, "{o}");
    assert_eq!(o["stdout"], "done\n", "{o}");
    assert!(began.elapsed() < Duration::from_secs(10));

    let listed = second.call("ssh_jobs", json!({ "host": "box" })).await;
    let l = structured(&listed);
    let entry = l["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job"] == id)
        .unwrap_or_else(|| panic!("{l}"))
        .clone();
    assert_eq!(entry["state"], "exited");
    assert_eq!(entry["exit_code"], 7);
    assert_eq!(entry["last_line"], "done");

    // The job ran `sleep 3`: its duration cannot be less than that.
    assert!(
        o["duration_ms"].as_u64().unwrap() >= 3000,
        "a job of `sleep 3` reports duration_ms {} (started_at is the daemon's clock in ms, \
         ended_at the host's `date +%s` in whole seconds)",
        o["duration_ms"]
    );
}

/// A tool result as JSON, its duration taken out (two runs of one command differ only there).
fn without_duration(result: &CallToolResult) -> (String, Value) {
    let t = text(result);
    let (first, rest) = t.split_once('\n').unwrap_or((&t, ""));
    let outcome = first.split(" (").next().unwrap_or(first);
    let mut s = structured(result);
    s.as_object_mut().unwrap().remove("duration_ms");
    (format!("{outcome}\n{rest}"), s)
}

fn error_code(e: &ServiceError) -> Option<i32> {
    match e {
        ServiceError::McpError(data) => Some(data.code.0),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_execute_declaring_tasks_should_become_a_task_that_outlives_its_shim() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let plain = Shim::attach(&daemon, "plain-client").await;
    let tasker = Shim::attach(&daemon, "tasks-client").await;
    let command = "sleep 8; echo finished; exit 4";
    let token = unique_token();
    let needle = format!("3600.{token}");

    // The same command without the extension: it blocks and returns the result (concurrently).
    let t0 = Instant::now();
    let sync = tokio::spawn(async move {
        let result = plain
            .call("ssh_execute", json!({ "host": "box", "command": command }))
            .await;
        (result, t0.elapsed(), plain)
    });
    // Cancelled (notifications/cancelled) before it became a task: the command is stopped, as
    // a synchronous call's would be.
    let early_needle = format!("3600.{}", unique_token());
    let early = async {
        let handle = start_call_as_task(
            &tasker.service,
            "ssh_execute",
            json!({ "host": "box", "command": format!("sleep {early_needle}") }),
        )
        .await;
        let needle = early_needle.clone();
        let running = tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(4), || {
                !processes_matching(&needle).is_empty()
            })
        });
        assert!(running.await.unwrap(), "the command to cancel never ran");
        handle
            .cancel(Some("user pressed stop".into()))
            .await
            .unwrap();
        let needle = early_needle.clone();
        tokio::task::spawn_blocking(move || {
            eventually(Duration::from_secs(6), || {
                processes_matching(&needle).is_empty()
            })
        })
        .await
        .unwrap()
    };
    let (first, second, quick, early_stopped) = tokio::join!(
        call_as_task(
            &tasker.service,
            "ssh_execute",
            json!({ "host": "box", "command": command }),
        ),
        call_as_task(
            &tasker.service,
            "ssh_execute",
            json!({ "host": "box", "command": format!("echo warming-up; sleep {needle}") }),
        ),
        call_as_task(
            &tasker.service,
            "ssh_execute",
            json!({ "host": "box", "command": "echo quick; exit 2" }),
        ),
        early,
    );
    let created_after = t0.elapsed();
    let CallToolResponse::Task(first) = first else {
        panic!("a long ssh_execute declaring tasks was answered without a task: {first:?}")
    };
    let CallToolResponse::Task(second) = second else {
        panic!("{second:?}")
    };
    assert!(
        early_stopped,
        "a call cancelled before it became a task left its command running: {:?}",
        processes_matching(&early_needle)
    );
    // A command that ends within the wait is answered as without the extension.
    let CallToolResponse::Complete(quick) = quick else {
        panic!("a quick ssh_execute declaring tasks became a task: {quick:?}")
    };
    assert!(!is_error(&quick), "{}", text(&quick));
    assert_eq!(structured(&quick)["exit_code"], 2);
    assert_eq!(structured(&quick)["stdout"], "quick\n");
    assert!(text(&quick).starts_with("exit 2 ("), "{}", text(&quick));
    println!(
        "task create response (after {created_after:?}): {}",
        serde_json::to_string(&first).unwrap()
    );
    assert!(
        created_after >= Duration::from_millis(4500) && created_after < Duration::from_secs(8),
        "the task came after {created_after:?}"
    );
    let wire = serde_json::to_value(&first).unwrap();
    assert_eq!(wire["resultType"], "task", "{wire}");
    assert_eq!(wire["status"], "working", "{wire}");
    let task = &first.task;
    let id = task.task_id.clone();
    assert!(is_job_id(&json!(id), "box"), "{wire}");
    assert!(is_job_id(&json!(second.task.task_id), "box"));
    assert_ne!(id, second.task.task_id);
    // The daemon's job_retention (7 days by default), not rmcp's five minutes.
    let week_ms = 7 * 86_400 * 1000;
    assert!(
        task.ttl_ms.is_some_and(|ttl| ttl >= week_ms),
        "ttlMs {:?}",
        task.ttl_ms
    );
    assert_ne!(task.ttl_ms, Some(300_000));
    assert!(task.poll_interval_ms.is_some(), "{wire}");
    assert!(task.status_message.is_some(), "{wire}");
    assert!(
        task.created_at.ends_with('Z') && task.created_at.len() == 20,
        "{wire}"
    );
    assert!(
        !processes_matching(&needle).is_empty(),
        "the second task's command is not running"
    );

    // Its shim answers tasks/get while it runs.
    let working = get_task(&tasker.service, &id).await.unwrap();
    assert_eq!(working.task.status(), TaskStatus::Working, "{working:?}");
    assert_eq!(working.task.payload, TaskPayload::Working);

    // The status message is the last output line.
    let warming = get_task(&tasker.service, &second.task.task_id)
        .await
        .unwrap();
    assert_eq!(warming.task.status(), TaskStatus::Working, "{warming:?}");
    assert_eq!(
        warming.task.task.status_message.as_deref(),
        Some("warming-up"),
        "{warming:?}"
    );

    // The AI client restarts: the shim is killed; a new one (speaking 2026-07-28 from the start,
    // capabilities in every request) answers for its predecessor's tasks.
    kill_shim(&daemon, "tasks-client");
    drop(tasker);
    let fresh = spawn_discovering(&daemon, "tasks-client-2").await;

    // tasks/cancel kills the job: its remote process is gone.
    cancel_task(&fresh, &second.task.task_id)
        .await
        .expect("tasks/cancel");
    assert!(
        eventually(Duration::from_secs(3), || processes_matching(&needle)
            .is_empty()),
        "the cancelled task's command still runs: {:?}",
        processes_matching(&needle)
    );
    let cancelled = get_task(&fresh, &second.task.task_id).await.unwrap();
    assert_eq!(
        cancelled.task.status(),
        TaskStatus::Cancelled,
        "{cancelled:?}"
    );
    // The new shim names its client from the 2026-07-28 request metadata.
    let status = daemon.ctl(&["status"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("tasks-client-2 2.0.0"), "{status}");

    // tasks/get polls the first to completion.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let got = get_task(&fresh, &id).await.expect("tasks/get");
        if got.task.status().is_terminal() {
            break got;
        }
        assert_eq!(got.task.status(), TaskStatus::Working, "{got:?}");
        assert!(
            Instant::now() < deadline,
            "the task never completed: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "tasks/get completed response: {}",
        serde_json::to_string(&done).unwrap()
    );
    assert_eq!(done.task.status(), TaskStatus::Completed, "{done:?}");
    assert!(
        done.task.task.ttl_ms.is_some_and(|ttl| ttl >= week_ms),
        "{done:?}"
    );
    let TaskPayload::Completed { result } = &done.task.payload else {
        panic!("{done:?}")
    };
    let from_task: CallToolResult = serde_json::from_value(Value::Object(result.clone()))
        .unwrap_or_else(|e| panic!("the task's result is not a tool result ({e}): {result:?}"));
    assert!(!is_error(&from_task), "{}", text(&from_task));
    assert_eq!(structured(&from_task)["exit_code"], 4);
    assert_eq!(structured(&from_task)["stdout"], "finished\n");
    assert!(
        text(&from_task).starts_with("exit 4 ("),
        "{}",
        text(&from_task)
    );

    // Cancelling a finished task changes nothing.
    cancel_task(&fresh, &id)
        .await
        .expect("tasks/cancel of a finished task");
    let still = get_task(&fresh, &id).await.unwrap();
    assert_eq!(still.task.status(), TaskStatus::Completed, "{still:?}");

    // ... the same as the synchronous call, which blocked until the end.
    let (sync_result, sync_took, plain) = sync.await.unwrap();
    assert!(sync_took >= Duration::from_secs(8), "{sync_took:?}");
    assert!(!is_error(&sync_result), "{}", text(&sync_result));
    assert_eq!(
        without_duration(&from_task),
        without_duration(&sync_result),
        "the task's result differs from the synchronous call's"
    );

    // An unknown task is "invalid params"; a client that did not declare tasks is refused.
    let unknown = get_task(&fresh, "box/000000").await.unwrap_err();
    assert_eq!(error_code(&unknown), Some(-32602), "{unknown:?}");
    let undeclared = plain
        .service
        .get_task(GetTaskParams::new(id.clone()))
        .await
        .unwrap_err();
    assert_eq!(error_code(&undeclared), Some(-32021), "{undeclared:?}");
    let _ = fresh.cancel().await;

    // The job ran `sleep 8`: the task's duration cannot be less (the synchronous call's is not).
    let (task_ms, sync_ms) = (
        structured(&from_task)["duration_ms"].as_u64().unwrap(),
        structured(&sync_result)["duration_ms"].as_u64().unwrap(),
    );
    assert!(
        sync_ms >= 8000 && task_ms >= 8000,
        "`sleep 8` took {task_ms} ms as a task, {sync_ms} ms synchronously (the job's start is \
         the daemon's clock in ms, its end the host's `date +%s` in whole seconds)"
    );
}

/// Checks that every property and array item of an output schema says its type: no `{}` (MCP
/// Inspector flags those, and clients validate structuredContent against the schema).
fn untyped_properties(path: &str, schema: &Value, found: &mut Vec<String>, checked: &mut usize) {
    let Some(map) = schema.as_object() else {
        return;
    };
    let typed = |v: &Value| {
        v.get("type").is_some()
            || v.get("$ref").is_some()
            || ["anyOf", "oneOf"].iter().any(|k| {
                v.get(*k).and_then(Value::as_array).is_some_and(|variants| {
                    variants
                        .iter()
                        .all(|x| x.get("type").is_some() || x.get("$ref").is_some())
                })
            })
    };
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            *checked += 1;
            if !typed(prop) {
                found.push(format!("{path}.{name}: {prop}"));
            }
        }
    }
    if let Some(items) = map.get("items")
        && !typed(items)
    {
        found.push(format!("{path}[]: {items}"));
    }
    for (key, v) in map {
        untyped_properties(&format!("{path}.{key}"), v, found, checked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_list_through_the_shim_should_stay_within_the_budget() {
    let sshd = Sshd::start();
    let hosts: Vec<Value> = (1..=8)
        .map(|i| sshd.host(&format!("host-{i}"), &login_user()))
        .collect();
    let daemon = Daemon::start(&hosts_json(&hosts));
    let shim = Shim::attach(&daemon, "budget-client").await;
    let listed = shim.service.list_tools(None).await.unwrap();
    assert!(listed.next_cursor.is_none(), "one page");
    let tools = &listed.tools;
    assert_eq!(tools.len(), 13);
    let execute = tools.iter().find(|t| t.name == "ssh_execute").unwrap();
    assert!(
        execute
            .description
            .as_deref()
            .unwrap_or_default()
            .ends_with("Hosts: host-1, host-2, host-3, host-4, host-5, host-6, host-7, host-8."),
        "{:?}",
        execute.description
    );
    let whole = serde_json::to_string(&listed).unwrap().len();
    let read: usize = tools
        .iter()
        .map(|t| {
            serde_json::to_string(&json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": t.input_schema,
            }))
            .unwrap()
            .len()
        })
        .sum();
    println!(
        "tools/list through the shim ({} tools, 8 hosts): {read} bytes read by the model \
         (names, descriptions, input schemas), {whole} bytes in all",
        tools.len()
    );
    assert!(
        read <= 6 * 1024,
        "the model reads {read} bytes of tools/list"
    );
    assert!(whole <= 12 * 1024, "tools/list is {whole} bytes");

    let (mut untyped, mut checked) = (Vec::new(), 0);
    for t in tools {
        let schema = t
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no output schema", t.name));
        untyped_properties(
            &t.name,
            &Value::Object((**schema).clone()),
            &mut untyped,
            &mut checked,
        );
    }
    println!("{checked} output schema properties, all typed");
    assert!(
        checked >= 50,
        "only {checked} output schema properties found"
    );
    assert!(
        untyped.is_empty(),
        "untyped output schema properties:\n{}",
        untyped.join("\n")
    );
}
