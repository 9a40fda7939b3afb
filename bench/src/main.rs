//! `cargo run --release -p mcp-ssh-bench`: mcp-ssh next to OpenSSH, measured in the same run on
//! the same throwaway sshd (machines are shared and noisy, so the ratios are what count).
//!
//! It starts its own sshd (logging in as a clean user), its own daemon and real shims, prints a
//! table (figure, ours, OpenSSH, ratio) and writes it as JSON. `--smoke` runs a few iterations of
//! everything, to keep the benchmark working in CI; it asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod fleet;
mod forwards;
mod reach;
mod sync;

use anyhow::{Context, bail};
use clap::Parser;
use mcp_ssh_tests::daemon::{Daemon, hosts_json, stop_by_lock_file};
use mcp_ssh_tests::shim::{Shim, ShimOptions, is_error, structured, text};
use mcp_ssh_tests::{Sshd, SshdOptions, login_user};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "mcp-ssh-bench")]
struct Args {
    /// A few iterations of everything (CI keeps the benchmark working; no timing claims)
    #[arg(long)]
    smoke: bool,
    /// Where to write the results as JSON
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Run only these sections (comma-separated: exec, startup, transfers, sync, jobs,
    /// forwards, reach, fleet, concurrency, memory); all of them by default
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One row of the table: our figure and OpenSSH's, in the same unit.
struct Row {
    figure: String,
    unit: &'static str,
    ours: f64,
    openssh: Option<f64>,
    note: String,
}

struct Bench {
    smoke: bool,
    sshd: Sshd,
    user: String,
    rows: Vec<Row>,
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let rank = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(rank).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Bench {
    fn n(&self, full: usize) -> usize {
        if self.smoke { full.clamp(1, 3) } else { full }
    }

    fn row(
        &mut self,
        figure: impl Into<String>,
        unit: &'static str,
        ours: f64,
        openssh: Option<f64>,
        note: impl Into<String>,
    ) {
        self.rows.push(Row {
            figure: figure.into(),
            unit,
            ours,
            openssh,
            note: note.into(),
        });
    }

    /// Common OpenSSH client options against the fixture.
    fn ssh_base(&self) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
        ])
        .arg(&self.sshd.client_key)
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            self.sshd.known_hosts.display()
        ))
        .args(["-p", &self.sshd.port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        c
    }

    fn time_ssh(&self, extra: &[String], command: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let status = self
                .ssh_base()
                .args(extra)
                .arg(format!("{}@127.0.0.1", self.user))
                .arg(command)
                .status()?;
            samples.push(ms(started.elapsed()));
            if !status.success() {
                bail!("ssh {command} failed: {status}");
            }
        }
        Ok(samples)
    }
}

/// hosts.json with `aliases` names for the same server: `box`, `box1`, `box2`, ...
fn config_for(sshd: &Sshd, user: &str, aliases: usize) -> String {
    let hosts: Vec<Value> = (0..aliases.max(1))
        .map(|i| {
            sshd.host(
                &if i == 0 {
                    "box".to_string()
                } else {
                    format!("box{i}")
                },
                user,
            )
        })
        .collect();
    quiet_hosts_json(&hosts)
}

/// An OpenSSH client config (`-F`) in `dir` naming each `(alias, sshd)` as hosts.json would,
/// with one known_hosts for all of them. With -J every hop is an ssh process of its own that
/// gets `-F` but none of the command line's `-o` options: what must hold for every hop goes in
/// the file. OpenSSH keeps the first value it reads, so the per-host blocks come before `Host *`.
fn openssh_config(dir: &Path, hosts: &[(&str, &Sshd)], user: &str) -> anyhow::Result<PathBuf> {
    let known = dir.join("known_hosts_all");
    let mut lines: Vec<String> = hosts.iter().map(|(_, s)| s.known_hosts_line()).collect();
    lines.sort_unstable();
    lines.dedup();
    std::fs::write(&known, lines.join("\n") + "\n")?;
    let mut config = String::new();
    for (name, sshd) in hosts {
        config.push_str(&format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n",
            sshd.port,
            sshd.client_key.display()
        ));
    }
    config.push_str(&format!(
        "Host *\n  User {user}\n  BatchMode yes\n  IdentitiesOnly yes\n  \
         StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  LogLevel ERROR\n",
        known.display()
    ));
    let path = dir.join("ssh_config");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// hosts.json for these hosts with quiet logs: the daemon's own logging is not what is measured.
fn quiet_hosts_json(hosts: &[Value]) -> String {
    hosts_json(hosts).replace("\"DEBUG\"", "\"WARNING\"")
}

async fn shim(daemon: &Daemon, name: &str) -> Shim {
    Shim::spawn(ShimOptions {
        socket: &daemon.socket,
        config: Some(&daemon.config),
        cwd: None,
        client_name: name,
    })
    .await
}

async fn execute(shim: &Shim, host: &str, command: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let result = shim
        .call("ssh_execute", json!({ "host": host, "command": command }))
        .await;
    let elapsed = started.elapsed();
    if is_error(&result) {
        bail!("ssh_execute {command} failed: {}", text(&result));
    }
    Ok(elapsed)
}

/// Figure 1, warm command latency: through the shim over MCP, vs ControlMaster, vs a fresh ssh.
async fn warm_exec(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let shim = shim(daemon, "bench").await;
    execute(&shim, "box", "echo hi").await?; // connect
    let runs = b.n(200);
    let mut ours = Vec::with_capacity(runs);
    for _ in 0..runs {
        ours.push(ms(execute(&shim, "box", "echo hi").await?));
    }
    let control = b.sshd.dir.path().join("cm-%C");
    let cm: Vec<String> = ["-o", "ControlMaster=auto", "-o", "ControlPersist=120", "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("ControlPath={}", control.display())])
        .collect();
    b.time_ssh(&cm, "true", 1)?; // open the master
    let mut master = b.time_ssh(&cm, "echo hi", runs)?;
    let mut fresh = b.time_ssh(&[], "echo hi", b.n(20))?;
    let (o50, o95) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.95));
    let (m50, m95) = (percentile(&mut master, 0.5), percentile(&mut master, 0.95));
    b.row(
        "ssh_execute `echo hi` p50 (shim, MCP) vs ssh ControlMaster",
        "ms",
        o50,
        Some(m50),
        format!("{runs} calls"),
    );
    b.row(
        "ssh_execute `echo hi` p95 (shim, MCP) vs ssh ControlMaster",
        "ms",
        o95,
        Some(m95),
        format!("{runs} calls"),
    );
    b.row(
        "ssh_execute `echo hi` p50 vs fresh `ssh host echo hi`",
        "ms",
        o50,
        Some(percentile(&mut fresh, 0.5)),
        "",
    );

    // mcp-sshctl exec spawns a process per call, as ssh does: the like-for-like comparison.
    let ctl = mcp_ssh_tests::bins::bin("mcp-sshctl");
    let mut ctl_samples = Vec::new();
    for _ in 0..b.n(100) {
        let started = Instant::now();
        let status = Command::new(&ctl)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["exec", "box", "--", "true"])
            .stdout(Stdio::null())
            .status()?;
        ctl_samples.push(ms(started.elapsed()));
        if !status.success() {
            bail!("mcp-sshctl exec failed");
        }
    }
    let mut master_true = b.time_ssh(&cm, "true", b.n(100))?;
    b.row(
        "`mcp-sshctl exec box -- true` p50 vs ssh ControlMaster `true`",
        "ms",
        percentile(&mut ctl_samples, 0.5),
        Some(percentile(&mut master_true, 0.5)),
        "both spawn a client process per call",
    );
    let _ = b
        .ssh_base()
        .args(&cm)
        .args(["-O", "exit"])
        .arg(format!("{}@127.0.0.1", b.user))
        .stderr(Stdio::null())
        .status();
    Ok(())
}

/// Figure 2, start-up: shim spawn → initialize; → first ssh_execute (daemon connected / no daemon).
async fn startup(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let mut init = Vec::new();
    for _ in 0..b.n(50) {
        let started = Instant::now();
        let s = shim(daemon, "bench-start").await;
        init.push(ms(started.elapsed()));
        drop(s);
    }
    b.row(
        "shim spawn → initialize response p50",
        "ms",
        percentile(&mut init, 0.5),
        None,
        "target ≤ 20 ms",
    );

    let mut first = Vec::new();
    for _ in 0..b.n(20) {
        let started = Instant::now();
        let s = shim(daemon, "bench-first").await;
        execute(&s, "box", "echo hi").await?;
        first.push(ms(started.elapsed()));
    }
    let mut fresh = b.time_ssh(&[], "echo hi", b.n(10))?;
    b.row(
        "shim spawn → first ssh_execute, daemon connected, p50",
        "ms",
        percentile(&mut first, 0.5),
        Some(percentile(&mut fresh, 0.5)),
        "vs fresh ssh",
    );

    let mut cold = Vec::new();
    for _ in 0..b.n(5) {
        let d = Daemon::prepare(&config_for(&b.sshd, &b.user, 1));
        let started = Instant::now();
        let s = shim(&d, "bench-cold").await;
        execute(&s, "box", "echo hi").await?;
        cold.push(ms(started.elapsed()));
        drop(s);
        stop_by_lock_file(&d.socket);
    }
    b.row(
        "shim spawn → first ssh_execute, no daemon (autostart + connect), p50",
        "ms",
        percentile(&mut cold, 0.5),
        Some(percentile(&mut fresh, 0.5)),
        "vs fresh ssh",
    );
    Ok(())
}

/// Every run writes a new file, as a first upload of a checkpoint does: an existing one is
/// removed first. (Over an existing file scp and sftp write in place, which is not atomic, and
/// ext4 starts writing back a file renamed over another, which an atomic replace is.) Then
/// what earlier runs left dirty is written back, so no run pays for another's 512 MiB: the
/// kernel would write it back seconds later, in the middle of whichever run comes next.
fn fresh(destination: &Path) {
    let _ = std::fs::remove_file(destination);
    let _ = Command::new("sync").status();
}

/// Figure 3, throughput: a large file through the shim vs OpenSSH's sftp and scp (same sshd,
/// same cipher, OpenSSH multiplexed over a ControlMaster so neither side pays a login).
async fn transfers(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let mib = if b.smoke { 8 } else { 512 };
    let work = tempfile_dir("mcpssh-bench-")?;
    let remote = tempfile_dir("mcpssh-bench-remote-")?;
    std::fs::set_permissions(&remote, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let source = work.join("payload.bin");
    let status = Command::new("head")
        .args(["-c", &(mib * 1024 * 1024).to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&source)?)
        .status()?;
    if !status.success() {
        bail!("cannot create the payload");
    }
    let cipher = if std::arch::is_x86_feature_detected!("aes") {
        "aes256-gcm@openssh.com"
    } else {
        "chacha20-poly1305@openssh.com"
    };
    let throughput = |d: Duration| mib as f64 / d.as_secs_f64();
    let shim = shim(daemon, "bench-transfer").await;
    execute(&shim, "box", "true").await?;

    let timed = |tool: &'static str, args: Value| {
        let shim = &shim;
        async move {
            let started = Instant::now();
            let result = shim.call(tool, args).await;
            if is_error(&result) {
                bail!("{tool} failed: {}", text(&result));
            }
            anyhow::Ok(started.elapsed())
        }
    };
    // Each figure is the median of `rounds` runs: single transfers on a shared machine vary a lot.
    let rounds = if b.smoke { 1 } else { 7 };
    let median = |mut runs: Vec<Duration>| {
        runs.sort();
        runs[runs.len() / 2]
    };

    let control = b.sshd.dir.path().join("cmx-%C");
    let common: Vec<String> = vec![
        "-i".into(),
        b.sshd.client_key.display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", b.sshd.known_hosts.display()),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ControlMaster=auto".into(),
        "-o".into(),
        format!("ControlPath={}", control.display()),
        "-o".into(),
        "ControlPersist=60".into(),
        "-c".into(),
        cipher.into(),
    ];
    let target = format!("{}@127.0.0.1", b.user);
    let port = b.sshd.port.to_string();
    let run = |program: &str, args: &[String]| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("{program} failed");
        }
        Ok(started.elapsed())
    };
    // Open the master first so neither tool pays the login.
    run(
        "ssh",
        &[
            common.clone(),
            vec!["-p".into(), port.clone(), target.clone(), "true".into()],
        ]
        .concat(),
    )?;
    let batch = work.join("batch");
    let sftp = |command: &str, from: &Path, to: &Path| -> anyhow::Result<Duration> {
        std::fs::write(
            &batch,
            format!("{command} {} {}\n", from.display(), to.display()),
        )?;
        let args = [
            common.clone(),
            vec![
                "-P".into(),
                port.clone(),
                "-b".into(),
                batch.display().to_string(),
                target.clone(),
            ],
        ]
        .concat();
        run("sftp", &args)
    };
    let scp = |from: String, to: String| {
        run(
            "scp",
            &[common.clone(), vec!["-P".into(), port.clone(), from, to]].concat(),
        )
    };
    let there = |name: &str| remote.join(name);
    let on_host = |name: &str| format!("{target}:{}", remote.join(name).display());
    let here = |name: &str| work.join(name);

    // The tools take turns within each round, and each goes first in turn, so a slow moment
    // or a position in the round weighs on all of them alike.
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    let (mut sftp_ups, mut sftp_downs, mut scp_ups, mut scp_downs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Uploads first (the downloads read what they wrote), each tool first in turn.
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => {
                    fresh(&there("ours.bin"));
                    ups.push(timed("ssh_upload", json!({ "host": "box", "local_path": source, "remote_path": there("ours.bin") })).await?);
                }
                1 => {
                    fresh(&there("sftp.bin"));
                    sftp_ups.push(sftp("put", &source, &there("sftp.bin"))?);
                }
                _ => {
                    fresh(&there("scp.bin"));
                    scp_ups.push(scp(source.display().to_string(), on_host("scp.bin"))?);
                }
            }
        }
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => {
                    fresh(&here("ours.back"));
                    downs.push(timed("ssh_download", json!({ "host": "box", "remote_path": there("ours.bin"), "local_path": here("ours.back") })).await?);
                }
                1 => {
                    fresh(&here("sftp.back"));
                    sftp_downs.push(sftp("get", &there("sftp.bin"), &here("sftp.back"))?);
                }
                _ => {
                    fresh(&here("scp.back"));
                    scp_downs.push(scp(
                        on_host("scp.bin"),
                        here("scp.back").display().to_string(),
                    )?);
                }
            }
        }
    }
    let (up, down) = (median(ups), median(downs));
    let (sftp_up, sftp_down, scp_up, scp_down) = (
        median(sftp_ups),
        median(sftp_downs),
        median(scp_ups),
        median(scp_downs),
    );
    let _ = Command::new("ssh")
        .args(&common)
        .args(["-p", &port, "-O", "exit", &target])
        .stderr(Stdio::null())
        .status();

    let note = format!(
        "{mib} MiB to a new file, {cipher}, median of {rounds}; OpenSSH multiplexed (no login cost); no fsync on either side (ours fsyncs downloads with verify)"
    );
    b.row(
        "ssh_upload throughput vs sftp put",
        "MiB/s",
        throughput(up),
        Some(throughput(sftp_up)),
        note.clone(),
    );
    b.row(
        "ssh_upload throughput vs scp",
        "MiB/s",
        throughput(up),
        Some(throughput(scp_up)),
        note.clone(),
    );
    b.row(
        "ssh_download throughput vs sftp get",
        "MiB/s",
        throughput(down),
        Some(throughput(sftp_down)),
        note.clone(),
    );
    b.row(
        "ssh_download throughput vs scp",
        "MiB/s",
        throughput(down),
        Some(throughput(scp_down)),
        note,
    );
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&remote);
    Ok(())
}

fn tempfile_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Figure 4: 50 concurrent calls from 5 shims against MaxSessions 10, vs the same 50 one at a time.
async fn concurrency(b: &mut Bench) -> anyhow::Result<()> {
    let sshd = Sshd::start_with(SshdOptions {
        max_sessions: Some(10),
        ..Default::default()
    });
    let daemon = Daemon::start(&config_for(&sshd, &b.user, 1));
    let mut shims = Vec::new();
    for i in 0..5 {
        shims.push(shim(&daemon, &format!("bench-c{i}")).await);
    }
    execute(&shims[0], "box", "true").await?;
    let per_shim = if b.smoke { 2 } else { 10 };
    let command = "sleep 0.05; echo done";
    let started = Instant::now();
    let mut failures = 0usize;
    let mut pending = Vec::new();
    for s in &shims {
        for _ in 0..per_shim {
            pending.push(s.call("ssh_execute", json!({ "host": "box", "command": command })));
        }
    }
    let total = pending.len();
    for result in mcp_ssh_tests::join_all(pending).await {
        if is_error(&result) {
            failures += 1;
        }
    }
    let concurrent = ms(started.elapsed());
    let started = Instant::now();
    for _ in 0..total {
        execute(&shims[0], "box", command).await?;
    }
    let sequential = ms(started.elapsed());
    b.row(
        format!("{total} concurrent ssh_execute from 5 shims, MaxSessions 10 (vs one at a time)"),
        "ms",
        concurrent,
        Some(sequential),
        format!("{failures} failures; the reference column is our own sequential run"),
    );
    Ok(())
}

/// Figure 6, jobs: starting one (→ job id) and reading a running one's output, against
/// `ssh_execute echo hi` in the same run; then 50 jobs started at once from 5 shims.
async fn jobs(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let s = shim(daemon, "bench-jobs").await;
    execute(&s, "box", "true").await?; // connect
    let runs = b.n(100);
    let (mut start, mut output, mut echo) = (Vec::new(), Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for _ in 0..runs {
        echo.push(ms(execute(&s, "box", "echo hi").await?));
        let started = Instant::now();
        let result = s
            .call(
                "ssh_job_start",
                json!({ "host": "box", "command": "sleep 60", "wait": 0 }),
            )
            .await;
        start.push(ms(started.elapsed()));
        if is_error(&result) {
            bail!("ssh_job_start failed: {}", text(&result));
        }
        let id = structured(&result)["job"]
            .as_str()
            .context("ssh_job_start gave no job id")?
            .to_string();
        let started = Instant::now();
        let result = s.call("ssh_job_output", json!({ "job": id })).await;
        output.push(ms(started.elapsed()));
        if is_error(&result) {
            bail!("ssh_job_output failed: {}", text(&result));
        }
        ids.push(id);
    }
    let echo50 = percentile(&mut echo, 0.5);
    b.row(
        "ssh_job_start → job id p50 vs ssh_execute `echo hi` p50",
        "ms",
        percentile(&mut start, 0.5),
        Some(echo50),
        format!("{runs} jobs; the reference column is our own ssh_execute (target ≤ 2×)"),
    );
    b.row(
        "ssh_job_output of a running job p50 vs ssh_execute `echo hi` p50",
        "ms",
        percentile(&mut output, 0.5),
        Some(echo50),
        "target ≤ 1.5×",
    );
    let mut shims = vec![s];
    for i in 1..5 {
        shims.push(shim(daemon, &format!("bench-jobs{i}")).await);
    }
    let per_shim = if b.smoke { 2 } else { 10 };
    let mut pending = Vec::new();
    for s in &shims {
        for _ in 0..per_shim {
            pending.push(s.call(
                "ssh_job_start",
                json!({ "host": "box", "command": "sleep 60", "wait": 0 }),
            ));
        }
    }
    let total = pending.len();
    let started = Instant::now();
    let mut failures = 0usize;
    for result in mcp_ssh_tests::join_all(pending).await {
        match structured(&result)["job"].as_str() {
            Some(id) if !is_error(&result) => ids.push(id.to_string()),
            _ => failures += 1,
        }
    }
    b.row(
        format!("{total} ssh_job_start at once from 5 shims"),
        "ms",
        ms(started.elapsed()),
        None,
        format!("{failures} failures"),
    );
    let kills = ids
        .iter()
        .map(|id| shims[0].call("ssh_job_kill", json!({ "job": id, "signal": "KILL" })));
    for result in mcp_ssh_tests::join_all(kills.collect()).await {
        if is_error(&result) {
            bail!("ssh_job_kill failed: {}", text(&result));
        }
    }
    Ok(())
}

/// Figure 5, memory: the daemon with 10 hosts connected, and one shim.
async fn memory(b: &mut Bench) -> anyhow::Result<()> {
    let daemon = Daemon::start(&config_for(&b.sshd, &b.user, 10));
    let s = shim(&daemon, "bench-mem").await;
    for i in 0..10 {
        let host = if i == 0 {
            "box".to_string()
        } else {
            format!("box{i}")
        };
        execute(&s, &host, "echo hi").await?;
    }
    let daemon_pid = daemon.pid().context("daemon pid")?;
    b.row(
        "mcp-sshd peak RSS, 10 hosts connected",
        "MiB",
        rss_mib(daemon_pid, "VmHWM")?,
        None,
        "target ≤ 20 MiB",
    );
    let shim_pid = shim_pid(&daemon.socket).context("shim pid")?;
    b.row(
        "mcp-ssh-shim peak RSS",
        "MiB",
        rss_mib(shim_pid, "VmHWM")?,
        None,
        "target ≤ 10 MiB",
    );
    Ok(())
}

fn rss_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no RSS figure in /proc")?;
    Ok(kb / 1024.0)
}

/// The shim attached to this socket, found through /proc.
fn shim_pid(socket: &Path) -> Option<u32> {
    let needle = socket.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        (comm.trim() == "mcp-ssh-shim" && String::from_utf8_lossy(&cmdline).contains(&needle))
            .then_some(pid)
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<78} {:>10} {:>10} {:>7}  note",
        "figure", "ours", "OpenSSH", "ratio"
    );
    for r in rows {
        let reference = r
            .openssh
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "-".into());
        let ratio = r
            .openssh
            .map(|v| format!("{:.2}", r.ours / v))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<78} {:>7.2} {:<2} {:>10} {:>7}  {}",
            r.figure, r.ours, r.unit, reference, ratio, r.note
        );
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let ssh = Command::new("ssh")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    json!({ "cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "openssh": ssh })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sshd = Sshd::start();
    let user = login_user();
    let mut b = Bench {
        smoke: args.smoke,
        sshd,
        user,
        rows: Vec::new(),
    };
    let daemon = Daemon::start(&config_for(&b.sshd, &b.user, 1));
    eprintln!(
        "benchmarking as {} against sshd on 127.0.0.1:{} ...",
        b.user, b.sshd.port
    );
    let runs = |section: &str| args.only.is_empty() || args.only.iter().any(|s| s == section);
    if runs("exec") {
        warm_exec(&mut b, &daemon).await?;
    }
    if runs("startup") {
        startup(&mut b, &daemon).await?;
    }
    if runs("transfers") {
        transfers(&mut b, &daemon).await?;
    }
    if runs("sync") {
        sync::sync(&mut b, &daemon).await?;
    }
    if runs("jobs") {
        jobs(&mut b, &daemon).await?;
    }
    if runs("forwards") {
        forwards::forwards(&mut b, &daemon).await?;
    }
    drop(daemon);
    if runs("reach") {
        reach::reach(&mut b).await?;
    }
    if runs("fleet") {
        fleet::fleet(&mut b).await?;
    }
    if runs("concurrency") {
        concurrency(&mut b).await?;
    }
    if runs("memory") {
        memory(&mut b).await?;
    }
    print_table(&b.rows);
    let rows: Vec<Value> = b
        .rows
        .iter()
        .map(|r| {
            json!({ "figure": r.figure, "unit": r.unit, "ours": r.ours, "openssh": r.openssh,
                         "ratio": r.openssh.map(|v| r.ours / v), "note": r.note })
        })
        .collect();
    let report = json!({ "smoke": args.smoke, "machine": machine(), "rows": rows });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}
