//! Jobs through the daemon's socket, against a real sshd: supervised on the host, they outlive
//! the call, the client, the daemon and the connection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mcp_ssh_proto::pb::{self, job_output_event};
use mcp_ssh_shim::client::DaemonClient;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::proxy::FaultProxy;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, is_root, join_all, login_user};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tonic::Code;

use crate::common::{eventually, processes_matching, unique_token};

const MIB: u32 = 1024 * 1024;

pub async fn start_job(client: &DaemonClient, host: &str, command: &str) -> pb::JobInfo {
    try_start(client, host, command, "")
        .await
        .expect("job start")
}

async fn try_start(
    client: &DaemonClient,
    host: &str,
    command: &str,
    cwd: &str,
) -> Result<pb::JobInfo, tonic::Status> {
    Ok(client
        .jobs()
        .start(pb::JobStartRequest {
            host: host.into(),
            command: command.into(),
            cwd: cwd.into(),
        })
        .await?
        .into_inner()
        .job
        .expect("a job"))
}

/// Jobs.Output: (heartbeats seen, the final answer).
pub async fn job_output(
    client: &DaemonClient,
    request: pb::JobOutputRequest,
) -> Result<(usize, pb::JobOutput), tonic::Status> {
    let mut stream = client.jobs().output(request).await?.into_inner();
    let mut beats = 0;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(job_output_event::Event::Heartbeat(_)) => beats += 1,
            Some(job_output_event::Event::Output(out)) => return Ok((beats, out)),
            None => {}
        }
    }
    Err(tonic::Status::internal(
        "the stream ended without an answer",
    ))
}

pub fn wait_for(job: &str, secs: u64) -> pb::JobOutputRequest {
    pb::JobOutputRequest {
        job: job.into(),
        wait_ms: secs * 1000,
        ..Default::default()
    }
}

/// Both streams from `offset`s, up to `max` bytes each, without waiting.
fn window_at(job: &str, stdout: u64, stderr: u64, max: u32) -> pb::JobOutputRequest {
    pb::JobOutputRequest {
        job: job.into(),
        stdout_offset: Some(stdout),
        stderr_offset: Some(stderr),
        max_bytes: max,
        ..Default::default()
    }
}

/// Waits (up to `secs`) for the job to end and returns its whole output (up to 1 MiB a stream).
async fn finished(client: &DaemonClient, job: &str, secs: u64) -> pb::JobOutput {
    let (_, out) = job_output(
        client,
        pb::JobOutputRequest {
            wait_ms: secs * 1000,
            ..window_at(job, 0, 0, MIB)
        },
    )
    .await
    .expect("job output");
    let info = out.job.as_ref().unwrap();
    assert_ne!(
        info.state(),
        pb::JobState::Running,
        "still running: {info:?}"
    );
    out
}

async fn list_jobs(client: &DaemonClient) -> Vec<pb::JobInfo> {
    client
        .jobs()
        .list(pb::JobListRequest::default())
        .await
        .expect("job list")
        .into_inner()
        .jobs
}

async fn kill_job(client: &DaemonClient, job: &str, signal: &str) -> pb::JobKillReply {
    client
        .jobs()
        .kill(pb::JobKillRequest {
            job: job.into(),
            signal: signal.into(),
        })
        .await
        .expect("job kill")
        .into_inner()
}

async fn forget_job(client: &DaemonClient, job: &str) -> Result<pb::JobForgetReply, tonic::Status> {
    Ok(client
        .jobs()
        .forget(pb::JobForgetRequest { job: job.into() })
        .await?
        .into_inner())
}

/// Kills what still runs and forgets every job, so job directories do not pile up in the login
/// user's home across runs.
async fn forget_all(client: &DaemonClient) {
    let jobs = list_jobs(client).await;
    join_all(
        jobs.iter()
            .map(|job| async move {
                if job.state() == pb::JobState::Running {
                    kill_job(client, &job.id, "KILL").await;
                }
                let _ = forget_job(client, &job.id).await;
            })
            .collect(),
    )
    .await;
}

/// The job directories' parent on the (local) host for `user`.
fn jobs_dir_of(user: &str) -> PathBuf {
    let home = nix::unistd::User::from_name(user)
        .unwrap()
        .expect("the login user exists")
        .dir;
    home.join(".cache/mcp-ssh/jobs")
}

/// Error texts are for people: no Rust `Debug` renderings in them.
fn assert_plain(message: &str) {
    for debug in ["Some(", "None", "Error {", "Ssh(", "Status {", "\\n"] {
        assert!(
            !message.contains(debug),
            "Debug text {debug:?} in {message:?}"
        );
    }
}

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

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
        .collect()
}

/// `seq FIRST LAST` as the host prints it.
fn seq(first: u64, last: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in first..=last {
        out.extend_from_slice(format!("{i}\n").as_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_should_run_and_report_its_exit_code_and_output() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let job = start_job(&client, "box", "echo out; echo err >&2; sleep 1; exit 3").await;
    assert!(job.id.starts_with("box/"), "{job:?}");
    assert_eq!(job.state(), pb::JobState::Running);
    let started = std::time::Instant::now();
    let (_, out) = job_output(&client, wait_for(&job.id, 20)).await.unwrap();
    let info = out.job.unwrap();
    assert_eq!(info.state(), pb::JobState::Exited, "{info:?}");
    assert_eq!(info.exit_code, Some(3));
    assert_eq!(out.stdout.unwrap().data, b"out\n");
    assert_eq!(out.stderr.unwrap().data, b"err\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_should_outlive_a_stopped_or_sigkilled_daemon() {
    let sshd = Sshd::start();
    let mut daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    let long = start_job(&client, "box", &format!("sleep 60.{token}")).await;
    let command = format!("seq 1 3000; sleep 3.{token}; seq 3001 6000 >&2; seq 3001 6000; exit 7");
    let job = start_job(&client, "box", &command).await;
    assert!(eventually(Duration::from_secs(5), || !processes_matching(
        &format!("sleep 3.{token}")
    )
    .is_empty()));
    // A daemon that stops (SIGTERM, as on upgrade) leaves jobs running.
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    drop(client);
    assert!(
        !processes_matching(&format!("sleep 60.{token}")).is_empty(),
        "stopped with the daemon"
    );
    daemon.spawn();
    let client = daemon.client().await;
    let jobs = list_jobs(&client).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs.iter().all(|j| j.state() == pb::JobState::Running),
        "{jobs:?}"
    );
    // A daemon that dies leaves them running too.
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    assert!(mcp_ssh_tests::daemons_serving(&daemon.socket).is_empty());
    drop(client);
    // The job ends while no daemon runs.
    assert!(
        eventually(Duration::from_secs(10), || processes_matching(&format!(
            "3.{token}"
        ))
        .is_empty()),
        "the job did not end: {:?}",
        processes_matching(&format!("3.{token}"))
    );
    daemon.spawn();
    let client = daemon.client().await;
    let jobs = list_jobs(&client).await;
    let listed = jobs
        .iter()
        .find(|j| j.id == job.id)
        .expect("the job is listed");
    assert_eq!(listed.state(), pb::JobState::Exited, "{listed:?}");
    assert_eq!(listed.exit_code, Some(7));
    assert_eq!(listed.command, command);
    assert_eq!(listed.started_by, job.started_by);
    assert_eq!(listed.last_line, "6000", "{listed:?}");
    let out = finished(&client, &job.id, 0).await;
    assert_eq!(out.stdout.unwrap().data, seq(1, 6000));
    assert_eq!(out.stderr.unwrap().data, seq(3001, 6000));
    let still = jobs.iter().find(|j| j.id == long.id).unwrap();
    assert_eq!(still.state(), pb::JobState::Running, "{still:?}");
    assert!(kill_job(&client, &long.id, "").await.confirmed);
    forget_all(&client).await;
}

/// Reads the job's stdout size, retrying while the daemon notices a cut connection and opens a
/// new one. Returns (size, failed attempts).
async fn stdout_size_after_cut(client: &DaemonClient, job: &str) -> (u64, u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut failures = 0;
    loop {
        match job_output(client, window_at(job, 0, 0, 1)).await {
            Ok((_, out)) => {
                let info = out.job.unwrap();
                assert_eq!(info.state(), pb::JobState::Running, "{info:?}");
                return (info.stdout_bytes, failures);
            }
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_plain(status.message());
                failures += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("the job could not be read again: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_should_survive_a_reset_connection_and_killed_sshd_sessions() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    let daemon = Daemon::start(&hosts_json(&[via_proxy(&sshd, &proxy, "box")]));
    let client = daemon.client().await;
    let token = unique_token();
    // About 5 s: a line every 0.1 s.
    let command = format!("for i in $(seq 1 50); do echo $i; sleep 0.1; done; echo done.{token}");
    let job = start_job(&client, "box", &command).await;
    let mut size = 0;
    let grew = |client: DaemonClient, job: String, before: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (now, failures) = stdout_size_after_cut(&client, &job).await;
            if now > before || Instant::now() > deadline {
                return (now, failures);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    (size, _) = grew(client.clone(), job.id.clone(), size).await;
    assert!(size > 0);
    let logins = sshd.accepted_logins();

    proxy.reset_all();
    let (after_reset, failures) = grew(client.clone(), job.id.clone(), size).await;
    assert!(after_reset > size, "no new output after the reset");
    assert!(
        !processes_matching(&format!("done.{token}")).is_empty(),
        "the job died with the connection"
    );
    eprintln!("read again after a reset ({failures} failed attempts)");

    sshd.signal_connections(Signal::SIGKILL);
    let (after_kill, failures) = grew(client.clone(), job.id.clone(), after_reset).await;
    assert!(
        after_kill > after_reset,
        "no new output after sshd's sessions died"
    );
    assert!(
        !processes_matching(&format!("done.{token}")).is_empty(),
        "the job died with sshd's session"
    );
    eprintln!("read again after killing sshd's sessions ({failures} failed attempts)");
    assert!(
        sshd.accepted_logins() >= logins + 2,
        "the daemon reconnected twice"
    );

    let out = finished(&client, &job.id, 20).await;
    let info = out.job.unwrap();
    assert_eq!(
        (info.state(), info.exit_code),
        (pb::JobState::Exited, Some(0))
    );
    let mut expected = seq(1, 50);
    expected.extend_from_slice(format!("done.{token}\n").as_bytes());
    assert_eq!(
        out.stdout.unwrap().data,
        expected,
        "output lost across the cuts"
    );
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_of_output_should_read_in_windows_without_gap_or_overlap() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    const LAST: u64 = 12_900_000;
    let expected = std::process::Command::new("seq")
        .args(["1", &LAST.to_string()])
        .output()
        .unwrap()
        .stdout;
    assert!(expected.len() > 100 * MIB as usize);
    // Written in two parts, so that part of it is read while it grows.
    let job = start_job(
        &client,
        "box",
        &format!("seq 1 6000000; sleep 1; seq 6000001 {LAST}"),
    )
    .await;
    let started = Instant::now();
    let (mut offset, mut windows, mut short) = (0u64, 0, 0);
    loop {
        let (_, out) = job_output(&client, window_at(&job.id, offset, 0, MIB))
            .await
            .unwrap();
        let info = out.job.unwrap();
        let w = out.stdout.unwrap();
        assert_eq!(w.offset, offset);
        assert_eq!(w.total, info.stdout_bytes);
        let len = w.data.len() as u64;
        assert_eq!(
            len,
            u64::from(MIB).min(w.total - offset),
            "a window is all there is, up to max_bytes"
        );
        let end = (offset + len) as usize;
        assert!(
            w.data == expected[offset as usize..end],
            "the window at {offset} differs from what was written"
        );
        let err = out.stderr.unwrap();
        assert!(err.data.is_empty() && err.total == 0);
        offset += len;
        windows += 1;
        if len < u64::from(MIB) {
            short += 1;
        }
        if info.state() != pb::JobState::Running && offset == info.stdout_bytes {
            assert_eq!(info.exit_code, Some(0));
            break;
        }
        if len == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    }
    assert_eq!(offset, expected.len() as u64);
    eprintln!(
        "100 MiB read in {windows} windows ({short} short, while it grew) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // More than the daemon sends at once is capped, not an error.
    let (_, out) = job_output(&client, window_at(&job.id, 0, 0, 64 * MIB))
        .await
        .expect("a window larger than a gRPC message is capped");
    let w = out.stdout.unwrap();
    assert_eq!(w.data.len(), MIB as usize, "capped at 1 MiB");
    assert!(w.data == expected[..w.data.len()]);
    // The default window is the tail.
    let (_, out) = job_output(&client, wait_for(&job.id, 0)).await.unwrap();
    let tail = out.stdout.unwrap();
    assert_eq!(tail.offset + tail.data.len() as u64, expected.len() as u64);
    assert!(tail.data[..] == expected[tail.offset as usize..]);
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_output_should_keep_each_stream_and_every_byte() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let mixed = start_job(
        &client,
        "box",
        "for i in $(seq 1 2000); do echo \"out $i\"; echo \"err $i\" >&2; done",
    )
    .await;
    let binary = start_job(
        &client,
        "box",
        r"printf 'a\377\376\000b\n\033[31mred\n'; printf '\351t\351\r\n' >&2",
    )
    .await;
    let out = finished(&client, &mixed.id, 30).await;
    let lines = |prefix: &str| -> Vec<u8> {
        (1..=2000)
            .flat_map(|i| format!("{prefix} {i}\n").into_bytes())
            .collect()
    };
    assert!(
        out.stdout.unwrap().data == lines("out"),
        "stdout is not intact"
    );
    assert!(
        out.stderr.unwrap().data == lines("err"),
        "stderr is not intact"
    );
    let out = finished(&client, &binary.id, 10).await;
    assert_eq!(out.stdout.unwrap().data, b"a\xff\xfe\x00b\n\x1b[31mred\n");
    assert_eq!(out.stderr.unwrap().data, b"\xe9t\xe9\r\n");
    let info = out.job.unwrap();
    assert_eq!((info.stdout_bytes, info.stderr_bytes), (15, 5));
    assert_eq!(info.exit_code, Some(0));
    // Windows at arbitrary offsets cut bytes, never lose or add any.
    let (_, out) = job_output(&client, window_at(&binary.id, 1, 2, 3))
        .await
        .unwrap();
    assert_eq!(out.stdout.unwrap().data, b"\xff\xfe\x00");
    assert_eq!(out.stderr.unwrap().data, b"\xe9\r\n");
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_should_return_at_the_matching_line_and_wait_at_exit() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    let job = start_job(
        &client,
        "box",
        &format!(
            "echo starting; sleep 1; echo 'not READY yet'; echo 'READY {token}'; sleep 60.{token}"
        ),
    )
    .await;
    let started = Instant::now();
    let (_, out) = job_output(
        &client,
        pb::JobOutputRequest {
            until: "^READY".into(),
            ..wait_for(&job.id, 20)
        },
    )
    .await
    .unwrap();
    let until_took = started.elapsed();
    assert_eq!(out.matched_line, format!("READY {token}"));
    assert_eq!(out.job.unwrap().state(), pb::JobState::Running);
    assert!(
        until_took < Duration::from_secs(6),
        "until returned after {until_took:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout.unwrap().data).ends_with(&format!("READY {token}\n"))
    );
    // With an offset, output already written is matched too.
    let (_, out) = job_output(
        &client,
        pb::JobOutputRequest {
            until: "^start".into(),
            stdout_offset: Some(0),
            ..wait_for(&job.id, 20)
        },
    )
    .await
    .unwrap();
    assert_eq!(out.matched_line, "starting");
    assert!(out.waited_ms < 3000, "{}", out.waited_ms);

    // A plain wait on a running job lasts the wait, with heartbeats meanwhile; meanwhile, a
    // wait on a job that ends returns as soon as it does.
    let short = start_job(&client, "box", "sleep 1.5; echo bye; exit 4").await;
    let started = Instant::now();
    let (long_wait, short_wait) = tokio::join!(
        async {
            let answer = job_output(&client, wait_for(&job.id, 3)).await;
            (answer, started.elapsed())
        },
        async {
            let answer = job_output(&client, wait_for(&short.id, 30)).await;
            (answer, started.elapsed())
        }
    );
    let ((beats, out), took) = (long_wait.0.unwrap(), long_wait.1);
    assert!(beats >= 1, "no heartbeat in a 3 s wait");
    assert_eq!(out.job.unwrap().state(), pb::JobState::Running);
    assert!(out.matched_line.is_empty());
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "waited {took:?}"
    );
    assert!(out.waited_ms >= 2900, "{}", out.waited_ms);

    let ((_, out), took) = (short_wait.0.unwrap(), short_wait.1);
    let info = out.job.unwrap();
    assert_eq!(
        (info.state(), info.exit_code),
        (pb::JobState::Exited, Some(4))
    );
    assert_eq!(info.last_line, "bye");
    assert!(
        took < Duration::from_secs(5),
        "the wait outlasted the job: {took:?}"
    );
    eprintln!(
        "until matched after {:.1} s; a wait on a 1.5 s job returned after {:.1} s",
        until_took.as_secs_f64(),
        took.as_secs_f64()
    );
    let killed = kill_job(&client, &job.id, "").await;
    assert!(killed.confirmed);
    forget_all(&client).await;
}

/// Kills a job whose command forks (as `user`) and checks that nothing of it is left.
async fn assert_kill_leaves_nothing(client: &DaemonClient, host: &str) {
    let token = unique_token();
    let command = format!("sh -c 'sleep 1000.{token}1 & sleep 1000.{token}2 & wait'");
    let job = start_job(client, host, &command).await;
    assert!(
        eventually(Duration::from_secs(10), || {
            !processes_matching(&format!("sleep 1000.{token}1")).is_empty()
                && !processes_matching(&format!("sleep 1000.{token}2")).is_empty()
        }),
        "the job's children did not start"
    );
    let started = Instant::now();
    let reply = kill_job(client, &job.id, "TERM").await;
    eprintln!(
        "forking job on {host} killed in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(reply.confirmed, "{reply:?}");
    let info = reply.job.unwrap();
    assert_eq!(info.state(), pb::JobState::Killed, "{info:?}");
    assert_eq!(info.signal, "TERM");
    assert!(
        reply.outcome.contains("killed by TERM"),
        "{}",
        reply.outcome
    );
    // Confirmed means gone: at most zombies waiting to be reaped.
    assert!(
        eventually(Duration::from_secs(1), || processes_matching(&token)
            .is_empty()),
        "left behind on {host}: {:?}",
        processes_matching(&token)
    );
    // Killing it again says so.
    let again = kill_job(client, &job.id, "TERM").await;
    assert!(again.confirmed);
    assert!(
        again.outcome.contains("was not running"),
        "{}",
        again.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_forking_job_should_leave_no_process_behind() {
    let sshd = Sshd::start();
    let mut hosts = vec![sshd.host("box", &login_user())];
    if is_root() {
        hosts.push(sshd.host("rootbox", "root"));
    }
    let daemon = Daemon::start(&hosts_json(&hosts));
    let client = daemon.client().await;
    if is_root() {
        join_all(vec![
            Box::pin(assert_kill_leaves_nothing(&client, "box"))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            Box::pin(assert_kill_leaves_nothing(&client, "rootbox")),
        ])
        .await;
    } else {
        assert_kill_leaves_nothing(&client, "box").await;
    }
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_ignoring_term_should_be_killed_after_the_grace() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    let job = start_job(
        &client,
        "box",
        &format!("trap '' TERM; echo started; sleep 1000.{token}; echo never"),
    )
    .await;
    assert!(eventually(Duration::from_secs(10), || !processes_matching(
        &format!("sleep 1000.{token}")
    )
    .is_empty()));
    let started = Instant::now();
    let reply = kill_job(&client, &job.id, "").await;
    let took = started.elapsed();
    assert!(reply.confirmed, "{reply:?}");
    let info = reply.job.unwrap();
    assert_eq!(info.state(), pb::JobState::Killed, "{info:?}");
    assert_eq!(info.signal, "KILL");
    assert_eq!(info.exit_code, None);
    assert!(
        took >= Duration::from_secs(2),
        "KILLed before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        eventually(Duration::from_secs(1), || processes_matching(&token)
            .is_empty()),
        "left behind: {:?}",
        processes_matching(&token)
    );
    let listed = list_jobs(&client).await;
    assert_eq!(listed[0].state(), pb::JobState::Killed);
    assert_eq!(listed[0].signal, "KILL");
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_running_jobs_should_leave_the_channel_budget_free() {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(10),
        ..Default::default()
    });
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();
    let started = Instant::now();
    let jobs = join_all(
        (0..50)
            .map(|i| {
                let client = client.clone();
                let command = format!("sleep 30.{token}{i:02}");
                async move { try_start(&client, "box", &command, "").await }
            })
            .collect(),
    )
    .await;
    let jobs: Vec<pb::JobInfo> = jobs
        .into_iter()
        .map(|j| j.expect("every job starts"))
        .collect();
    eprintln!(
        "50 jobs started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(eventually(Duration::from_secs(10), || {
        processes_matching(&format!("sleep 30.{token}")).len() >= 50
    }));
    let running = list_jobs(&client).await;
    assert_eq!(
        running
            .iter()
            .filter(|j| j.state() == pb::JobState::Running)
            .count(),
        50
    );
    for _ in 0..5 {
        let started = Instant::now();
        let result = run(&client, "box", "echo hi", 0).await;
        assert_eq!(result.stdout_text(), "hi\n", "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a call waited {:?} while 50 jobs ran",
            started.elapsed()
        );
    }
    eprintln!(
        "5 calls beside 50 running jobs, {:.1} s after they started",
        started.elapsed().as_secs_f64()
    );
    let status = mcp_ssh_tests::rpc::status(&client).await;
    assert_eq!(
        status.hosts[0].channels_in_use, 0,
        "running jobs hold channels"
    );
    assert_eq!((status.jobs_known, status.jobs_running), (50, 50));
    assert_eq!(status.hosts[0].jobs_running, 50);
    let filtered = client
        .jobs()
        .list(pb::JobListRequest {
            host: "box".into(),
            state: pb::JobState::Running as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(filtered.len(), 50);
    let none = client
        .jobs()
        .list(pb::JobListRequest {
            host: String::new(),
            state: pb::JobState::Exited as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(none.is_empty(), "{none:?}");
    let killing = Instant::now();
    let kills = join_all(
        jobs.iter()
            .map(|j| {
                let client = client.clone();
                let id = j.id.clone();
                async move { kill_job(&client, &id, "TERM").await }
            })
            .collect(),
    )
    .await;
    assert!(kills.iter().all(|k| k.confirmed), "{kills:?}");
    eprintln!("50 jobs killed in {:.1} s", killing.elapsed().as_secs_f64());
    assert!(
        eventually(Duration::from_secs(2), || processes_matching(&token)
            .is_empty()),
        "left behind: {:?}",
        processes_matching(&token)
    );
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_job_should_never_start_and_jobs_should_be_audited() {
    let sshd = Sshd::start();
    let mut host = sshd.host("locked", &login_user());
    host["allowed_commands"] = json!(["echo", "sleep"]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let daemon = Daemon::start(&json!({ "audit_log_file": audit, "hosts": [host] }).to_string());
    let client = daemon.client().await;
    let token = unique_token();
    let marker = format!("/tmp/mcpssh-job-pwned-{token}");
    for attempt in [
        format!("touch {marker}"),
        format!("echo hi; touch {marker}"),
        format!("echo $(touch {marker})"),
    ] {
        let refused = try_start(&client, "locked", &attempt, "")
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("refused by the allowed_commands of host locked"),
            "{}",
            refused.message()
        );
        assert_plain(refused.message());
    }
    assert!(list_jobs(&client).await.is_empty());
    assert!(!Path::new(&marker).exists(), "a refused job ran");
    // No job directory was made for it.
    let dirs = std::fs::read_dir(jobs_dir_of(&login_user()))
        .into_iter()
        .flatten()
        .flatten();
    for entry in dirs {
        let command = std::fs::read_to_string(entry.path().join("command")).unwrap_or_default();
        assert!(
            !command.contains(&token),
            "a job directory for a refused command: {entry:?}"
        );
    }

    let done = start_job(&client, "locked", "echo hello").await;
    let out = finished(&client, &done.id, 10).await;
    assert_eq!(out.stdout.unwrap().data, b"hello\n");
    let long = start_job(&client, "locked", &format!("sleep 60.{token}")).await;
    assert!(kill_job(&client, &long.id, "INT").await.confirmed);
    forget_job(&client, &done.id).await.unwrap();

    let records = audit_records(&audit);
    let find = |action: &str, job: &str| -> Value {
        records
            .iter()
            .find(|r| r["action"] == action && (job.is_empty() || r["job"] == job))
            .unwrap_or_else(|| panic!("no {action} record for {job:?} in {records:#?}"))
            .clone()
    };
    let refused = find("job", "");
    assert_eq!(refused["outcome"], "refused");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("allowed_commands")
    );
    assert!(
        !records.iter().any(|r| r["action"] == "job_started"
            && r["command"].as_str().unwrap_or("").contains("touch")),
        "a refused job was recorded as started"
    );
    let started = find("job_started", &done.id);
    assert_eq!(started["outcome"], "started");
    assert_eq!(started["command"], "echo hello");
    assert_eq!(started["host"], "locked");
    assert_eq!(started["client"]["name"], "e2e-test");
    let finished = find("job_finished", &done.id);
    assert_eq!(finished["outcome"], "ok");
    assert_eq!(finished["exit_code"], 0);
    assert_eq!(finished["bytes"], 6);
    assert!(finished["duration_ms"].is_u64(), "{finished}");
    assert_eq!(finished["client"]["name"], "e2e-test", "{finished}");
    let killed = find("job_killed", &long.id);
    assert_eq!(killed["outcome"], "ok");
    assert_eq!(killed["signal"], "INT");
    assert_eq!(killed["client"]["name"], "e2e-test");
    assert_eq!(killed["command"], format!("sleep 60.{token}"));
    let finished = find("job_finished", &long.id);
    assert_eq!(finished["outcome"], "killed", "{finished}");
    assert_eq!(finished["signal"], "INT", "{finished}");
    let forgotten = find("job_forgotten", &done.id);
    assert_eq!(forgotten["outcome"], "ok");
    assert_eq!(forgotten["client"]["name"], "e2e-test");
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_should_be_removed_from_the_host_and_the_list() {
    let sshd = Sshd::start();
    let config = json!({ "job_retention": 2, "hosts": [sshd.host("box", &login_user())] });
    let daemon = Daemon::start(&config.to_string());
    let client = daemon.client().await;
    let token = unique_token();
    let done = start_job(&client, "box", "echo bye").await;
    let running = start_job(&client, "box", &format!("sleep 60.{token}")).await;
    finished(&client, &done.id, 10).await;
    let dir = PathBuf::from(&done.remote_dir);
    assert!(dir.join("stdout").is_file(), "{dir:?}");
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || !dir.exists()),
        "the expired job's directory is still there"
    );
    eprintln!(
        "expired job removed {:.1} s after it ended",
        started.elapsed().as_secs_f64()
    );
    let jobs = list_jobs(&client).await;
    assert!(
        !jobs.iter().any(|j| j.id == done.id),
        "still listed: {jobs:?}"
    );
    assert!(
        jobs.iter().any(|j| j.id == running.id),
        "a running job expired"
    );
    assert!(Path::new(&running.remote_dir).is_dir());
    let gone = job_output(&client, wait_for(&done.id, 0))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    forget_all(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_errors_should_be_clear() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client = daemon.client().await;
    let token = unique_token();

    // Unknown ids.
    for id in ["box/abcdef", "nonsense"] {
        let errors = [
            job_output(&client, wait_for(id, 0)).await.unwrap_err(),
            client
                .jobs()
                .kill(pb::JobKillRequest {
                    job: id.into(),
                    signal: String::new(),
                })
                .await
                .unwrap_err(),
            forget_job(&client, id).await.unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert!(
                e.message().contains(&format!("no job \"{id}\"")),
                "{}",
                e.message()
            );
            assert!(
                e.message().contains("host/"),
                "says what ids look like: {}",
                e.message()
            );
            assert_plain(e.message());
        }
    }

    // Working directories.
    for cwd in [
        format!("/nonexistent-{token}"),
        format!("~/nonexistent-{token}"),
    ] {
        let e = try_start(&client, "box", &format!("echo {token}"), &cwd)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(
            e.message().contains("does not exist") && e.message().contains(&cwd),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("nothing was started"),
            "{}",
            e.message()
        );
        assert_plain(e.message());
    }
    assert!(list_jobs(&client).await.is_empty());
    let home = jobs_dir_of(&login_user());
    let home = home.parent().unwrap().parent().unwrap().parent().unwrap();
    for (cwd, expected) in [("/tmp", PathBuf::from("/tmp")), ("~", home.to_path_buf())] {
        let job = try_start(&client, "box", "pwd", cwd).await.unwrap();
        let out = finished(&client, &job.id, 10).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout.unwrap().data).trim_end(),
            expected.display().to_string()
        );
    }

    // Other arguments.
    let e = try_start(&client, "nohost", "true", "").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_plain(e.message());
    let e = client
        .jobs()
        .list(pb::JobListRequest {
            host: "nohost".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("unknown host"), "{}", e.message());
    let e = try_start(&client, "box", "  ", "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let running = start_job(&client, "box", &format!("sleep 60.{token}")).await;
    let e = job_output(
        &client,
        pb::JobOutputRequest {
            until: "(".into(),
            ..wait_for(&running.id, 1)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("`until`"), "{}", e.message());
    let e = client
        .jobs()
        .kill(pb::JobKillRequest {
            job: running.id.clone(),
            signal: "HUP".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("TERM, INT, KILL"), "{}", e.message());

    // Forget refuses a running job, removes a finished one at once.
    let e = forget_job(&client, &running.id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("still running"), "{}", e.message());
    assert_plain(e.message());
    // The supervisor makes the directory after the start answered.
    assert!(eventually(Duration::from_secs(5), || Path::new(
        &running.remote_dir
    )
    .is_dir()));
    assert!(eventually(Duration::from_secs(5), || !processes_matching(
        &format!("sleep 60.{token}")
    )
    .is_empty()));
    assert!(kill_job(&client, &running.id, "KILL").await.confirmed);
    let reply = forget_job(&client, &running.id).await.unwrap();
    assert!(reply.removed_remote);
    assert!(!Path::new(&running.remote_dir).exists());
    assert!(!list_jobs(&client).await.iter().any(|j| j.id == running.id));
    let e = forget_job(&client, &running.id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    forget_all(&client).await;
}
