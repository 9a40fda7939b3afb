//! One command over a fleet: `ssh_execute_many` over 200 host entries (spread over four sshd
//! fixtures, each entry its own connection), next to what people use instead in the same run:
//! OpenSSH ControlMaster clients 32 at a time (`xargs -P 32 ssh -S …`, masters opened
//! beforehand: the same sshd work, no logins) and ClusterShell's `clush -b` (fresh logins, its
//! default fanout). Then the daemon holding 500 connected hosts: its memory, and how fast
//! `list_hosts` and `mcp-sshctl status` stay.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use mcp_ssh_tests::daemon::{Daemon, stop_by_lock_file};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Sshd, SshdOptions};
use serde_json::{Value, json};

use super::{Bench, ms, openssh_config, percentile, quiet_hosts_json, rss_mib, shim};

/// What every host runs.
const COMMAND: &str = "uname -r";

struct Fleet {
    sshds: Vec<Sshd>,
    names: Vec<String>,
    /// The OpenSSH client config (`-F`) naming every host as hosts.json does.
    ssh_config: PathBuf,
    /// Where the ControlMaster sockets go.
    control_dir: PathBuf,
    user: String,
}

impl Fleet {
    fn start(user: &str, hosts: usize) -> anyhow::Result<Fleet> {
        // Not about MaxStartups: both sides open many connections to each sshd at once.
        let sshds: Vec<Sshd> = (0..4)
            .map(|_| {
                Sshd::start_with(SshdOptions {
                    extra: "MaxStartups 600:30:1200\n".into(),
                    ..SshdOptions::default()
                })
            })
            .collect();
        let names: Vec<String> = (1..=hosts).map(|i| format!("fleet-{i:03}")).collect();
        let dir = sshds[0].dir.path();
        // Each sshd's line once: the hosts behind one sshd share its key.
        let hosts: Vec<(&str, &Sshd)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), &sshds[i % sshds.len()]))
            .collect();
        let ssh_config = openssh_config(dir, &hosts, user)?;
        let control_dir = dir.join("cm");
        std::fs::create_dir_all(&control_dir)?;
        Ok(Fleet {
            sshds,
            names,
            ssh_config,
            control_dir,
            user: user.to_string(),
        })
    }

    /// hosts.json with the first `count` names (more than `names` wrap around the sshds).
    fn hosts_json(&self, count: usize) -> String {
        let hosts: Vec<Value> = (1..=count)
            .map(|i| {
                self.sshds[(i - 1) % self.sshds.len()].host(&format!("fleet-{i:03}"), &self.user)
            })
            .collect();
        quiet_hosts_json(&hosts)
    }

    fn logins(&self) -> usize {
        self.sshds.iter().map(Sshd::accepted_logins).sum()
    }

    fn control_path(&self) -> String {
        self.control_dir.join("%n").display().to_string()
    }

    /// Opens a ControlMaster per host, 8 at a time (below sshd's startup throttling).
    fn open_masters(&self) -> anyhow::Result<()> {
        for chunk in self.names.chunks(8) {
            let children: Vec<_> = chunk
                .iter()
                .map(|name| {
                    Command::new("ssh")
                        .arg("-F")
                        .arg(&self.ssh_config)
                        .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=600"])
                        .args(["-S", &self.control_path(), "-fN", name])
                        .stdin(Stdio::null())
                        .status()
                })
                .collect();
            for status in children {
                if !status?.success() {
                    bail!("could not open an OpenSSH ControlMaster");
                }
            }
        }
        Ok(())
    }

    fn close_masters(&self) {
        for name in &self.names {
            let _ = Command::new("ssh")
                .arg("-F")
                .arg(&self.ssh_config)
                .args(["-S", &self.control_path(), "-O", "exit", name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// `xargs -P 32 ssh -S … HOST uname -r` over every host: milliseconds.
    fn xargs(&self) -> anyhow::Result<f64> {
        let list = self.control_dir.join("names");
        std::fs::write(&list, self.names.join("\n") + "\n")?;
        let started = Instant::now();
        let status = Command::new("xargs")
            .args(["-P", "32", "-I{}", "ssh", "-F"])
            .arg(&self.ssh_config)
            .args(["-S", &self.control_path(), "{}", COMMAND])
            .stdin(std::fs::File::open(&list)?)
            .stdout(Stdio::null())
            .status()?;
        let took = ms(started.elapsed());
        if !status.success() {
            bail!("xargs -P 32 ssh failed: {status}");
        }
        Ok(took)
    }

    /// `clush -b -w fleet-[001-N] uname -r`, fresh logins at clush's default fanout.
    fn clush(&self) -> anyhow::Result<f64> {
        let nodes = format!("fleet-[001-{:03}]", self.names.len());
        let ssh_options = format!("-F {}", self.ssh_config.display());
        let started = Instant::now();
        let out = Command::new("clush")
            .args(["-b", "-w", &nodes, "-o", &ssh_options, COMMAND])
            .stdin(Stdio::null())
            .output()
            .context(
                "clush not found: install clustershell (Debian: apt-get install clustershell)",
            )?;
        let took = ms(started.elapsed());
        if !out.status.success() {
            bail!(
                "clush failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    }
}

/// One `ssh_execute_many` over every host; fails unless all of them exited 0.
async fn many(shim: &Shim, hosts: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let result = shim
        .call(
            "ssh_execute_many",
            json!({ "hosts": ["fleet-*"], "command": COMMAND }),
        )
        .await;
    let took = ms(started.elapsed());
    let expected = format!("{hosts} hosts: {hosts} exit 0");
    if is_error(&result) || !text(&result).starts_with(&expected) {
        bail!("ssh_execute_many over {hosts} hosts: {}", text(&result));
    }
    Ok(took)
}

pub async fn fleet(b: &mut Bench) -> anyhow::Result<()> {
    let hosts = if b.smoke { 8 } else { 200 };
    let f = Fleet::start(&b.user, hosts)?;
    warm(b, &f).await?;
    cold(b, &f).await?;
    scale(b, &f, if b.smoke { 12 } else { 500 }).await
}

/// 200 warm hosts: ours against ControlMaster clients 32 at a time and against clush.
async fn warm(b: &mut Bench, f: &Fleet) -> anyhow::Result<()> {
    let hosts = f.names.len();
    let daemon = Daemon::start(&f.hosts_json(hosts));
    let s = shim(&daemon, "bench-fleet").await;
    many(&s, hosts).await?; // connects every host
    f.open_masters()?;
    f.xargs()?;
    let rounds = b.n(7);
    let (mut ours, mut masters, mut clush) = (Vec::new(), Vec::new(), Vec::new());
    let before = f.logins();
    for _ in 0..rounds {
        ours.push(many(&s, hosts).await?);
        masters.push(f.xargs()?);
    }
    if f.logins() != before {
        bail!("warm fan-outs logged in again");
    }
    for _ in 0..rounds.min(3) {
        clush.push(f.clush()?);
    }
    f.close_masters();
    let ours50 = percentile(&mut ours, 0.5);
    b.row(
        format!("ssh_execute_many `uname -r`, {hosts} warm hosts, p50 vs xargs -P 32 ssh -S"),
        "ms",
        ours50,
        Some(percentile(&mut masters, 0.5)),
        format!("{rounds} rounds, interleaved; fanout 32 both; masters opened beforehand"),
    );
    b.row(
        format!("ssh_execute_many `uname -r`, {hosts} warm hosts, p50 vs clush -b"),
        "ms",
        ours50,
        Some(percentile(&mut clush, 0.5)),
        "clush logs in to every host each time (fanout 64, its default)",
    );
    drop(s);
    stop_by_lock_file(&daemon.socket);
    Ok(())
}

/// 200 hosts, nothing connected yet: a daemon just started, against clush.
async fn cold(b: &mut Bench, f: &Fleet) -> anyhow::Result<()> {
    let hosts = f.names.len();
    let config = f.hosts_json(hosts);
    let rounds = b.n(3);
    let (mut ours, mut clush) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let daemon = Daemon::start(&config);
        let s = shim(&daemon, "bench-fleet-cold").await;
        let before = f.logins();
        ours.push(many(&s, hosts).await?);
        if f.logins() - before != hosts {
            bail!("a cold fan-out did not log in to every host once");
        }
        drop(s);
        stop_by_lock_file(&daemon.socket);
        clush.push(f.clush()?);
    }
    b.row(
        format!("ssh_execute_many `uname -r`, {hosts} cold hosts, p50 vs clush -b"),
        "ms",
        percentile(&mut ours, 0.5),
        Some(percentile(&mut clush, 0.5)),
        format!("{rounds} rounds; daemon running, nothing connected; fanout 32 vs clush's 64"),
    );
    Ok(())
}

/// The daemon with `count` hosts connected: its memory, list_hosts and status.
async fn scale(b: &mut Bench, f: &Fleet, count: usize) -> anyhow::Result<()> {
    let daemon = Daemon::start(&f.hosts_json(count));
    let s = shim(&daemon, "bench-fleet-scale").await;
    let pid = daemon.pid().context("daemon pid")?;
    // Connected, so the baseline counts the runtime and the config, not the connections.
    let baseline = rss_mib(pid, "VmRSS")?;
    many(&s, count).await?;
    let connected = rss_mib(pid, "VmRSS")?;
    b.row(
        format!("mcp-sshd RSS, {count} hosts connected"),
        "MiB",
        connected,
        None,
        format!(
            "target ≤ 64 MiB; {:.0} KiB per connection over the {baseline:.1} MiB before connecting; peak {:.1} MiB",
            (connected - baseline) * 1024.0 / count as f64,
            rss_mib(pid, "VmHWM")?
        ),
    );
    let mut listing = Vec::new();
    for _ in 0..b.n(20) {
        let started = Instant::now();
        let listed = s.call("list_hosts", json!({})).await;
        listing.push(ms(started.elapsed()));
        let all = structured(&listed)["hosts"].as_array().map_or(0, Vec::len);
        if all != count || text(&listed).len() > 8192 {
            bail!(
                "list_hosts with {count} hosts: {all} listed, text {} bytes",
                text(&listed).len()
            );
        }
    }
    b.row(
        format!("list_hosts p50, {count} hosts connected"),
        "ms",
        percentile(&mut listing, 0.5),
        None,
        "the text summarises; structuredContent lists every host",
    );
    let mut status = Vec::new();
    for _ in 0..b.n(10) {
        let started = Instant::now();
        let out = daemon.ctl(&["status"]);
        status.push(ms(started.elapsed()));
        if !out.status.success() || out.stdout.len() > 8192 {
            bail!(
                "mcp-sshctl status with {count} hosts: {} bytes",
                out.stdout.len()
            );
        }
    }
    b.row(
        format!("mcp-sshctl status p50, {count} hosts connected"),
        "ms",
        percentile(&mut status, 0.5),
        None,
        "a process start included; the text summarises",
    );
    drop(s);
    stop_by_lock_file(&daemon.socket);
    Ok(())
}
