//! Hosts behind bastions (`proxy_jump`): a warm command behind one hop next to `ssh -J` over a
//! ControlMaster, and the first call through a cold two-hop chain next to a fresh
//! `ssh -J a,b`. Three sshd fixtures on 127.0.0.1: bastions `a` and `b`, and the target.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use mcp_ssh_tests::Sshd;
use mcp_ssh_tests::daemon::{Daemon, stop_by_lock_file};

use super::{Bench, execute, ms, openssh_config, percentile, quiet_hosts_json, shim};

/// Host names, the same in hosts.json and in the OpenSSH config, so both sides read alike.
const A: &str = "bastion-a";
const B: &str = "bastion-b";
/// The target reached directly, through `a`, and through `a,b`.
const DIRECT: &str = "target";
const ONE_HOP: &str = "target-via-a";
const TWO_HOPS: &str = "target-via-ab";

struct Fixtures {
    a: Sshd,
    b: Sshd,
    target: Sshd,
    /// The OpenSSH client config passed with `-F`.
    ssh_config: PathBuf,
    user: String,
}

impl Fixtures {
    fn start(user: &str) -> anyhow::Result<Fixtures> {
        let (a, b, target) = (Sshd::start(), Sshd::start(), Sshd::start());
        let hops = [(A, &a), (B, &b), (DIRECT, &target)];
        let ssh_config = openssh_config(target.dir.path(), &hops, user)?;
        Ok(Fixtures {
            a,
            b,
            target,
            ssh_config,
            user: user.to_string(),
        })
    }

    /// hosts.json: both bastions, the target directly, behind `a`, and behind `a,b`.
    fn hosts_json(&self) -> String {
        let mut one = self.target.host(ONE_HOP, &self.user);
        one["proxy_jump"] = A.into();
        let mut two = self.target.host(TWO_HOPS, &self.user);
        two["proxy_jump"] = format!("{A},{B}").into();
        quiet_hosts_json(&[
            self.a.host(A, &self.user),
            self.b.host(B, &self.user),
            self.target.host(DIRECT, &self.user),
            one,
            two,
        ])
    }

    /// Logins each server accepted so far (a, b, target): a check that a route really went
    /// through the hops it names, and that a multiplexed run did not log in again.
    fn logins(&self) -> [usize; 3] {
        [
            self.a.accepted_logins(),
            self.b.accepted_logins(),
            self.target.accepted_logins(),
        ]
    }

    /// Milliseconds for one `ssh -F config ARGS`, which must succeed.
    fn ssh(&self, args: &[&str]) -> anyhow::Result<f64> {
        let started = Instant::now();
        let out = Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let took = ms(started.elapsed());
        if !out.status.success() {
            bail!(
                "ssh {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    }
}

/// Fails unless each server saw exactly the logins expected since `before`.
fn expect_logins(
    f: &Fixtures,
    before: [usize; 3],
    expected: [usize; 3],
    what: &str,
) -> anyhow::Result<()> {
    let now = f.logins();
    let seen = [0, 1, 2].map(|i| now[i] - before[i]);
    if seen != expected {
        bail!("{what}: logins on (a, b, target) were {seen:?}, expected {expected:?}");
    }
    Ok(())
}

pub async fn reach(b: &mut Bench) -> anyhow::Result<()> {
    let f = Fixtures::start(&b.user)?;
    warm(b, &f).await?;
    cold(b, &f).await
}

/// Target 1: a warm `echo hi` behind one hop, through the shim as the exec figure measures
/// it, against `ssh -J a target` multiplexed over a master opened beforehand.
async fn warm(b: &mut Bench, f: &Fixtures) -> anyhow::Result<()> {
    let daemon = Daemon::start(&f.hosts_json());
    let shim = shim(&daemon, "bench-reach").await;
    let before = f.logins();
    execute(&shim, ONE_HOP, "echo hi").await?; // connects a, then the target through it
    execute(&shim, DIRECT, "echo hi").await?;
    expect_logins(f, before, [1, 0, 2], "connecting through a")?;

    let control = f.target.dir.path().join("cm-reach");
    let control = control.to_str().context("control path is not UTF-8")?;
    let before = f.logins();
    f.ssh(&[
        "-o",
        "ControlMaster=yes",
        "-o",
        "ControlPersist=120",
        "-S",
        control,
        "-J",
        A,
        DIRECT,
        "true",
    ])?;
    expect_logins(f, before, [1, 0, 1], "opening the master through a")?;
    // Multiplexing is tried before any ProxyJump is run, so `-J` here costs nothing; should
    // the master be gone, the login check below fails instead of timing fresh logins.
    let multiplexed = ["-S", control, "-J", A, DIRECT, "echo hi"];

    // Interleaved rounds, so a noisy moment weighs on both sides alike.
    let per_round = b.n(200).div_ceil(4);
    let n = per_round * 4;
    let (mut hop, mut direct, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let before = f.logins();
    for _ in 0..4 {
        for _ in 0..per_round {
            hop.push(ms(execute(&shim, ONE_HOP, "echo hi").await?));
        }
        for _ in 0..per_round {
            direct.push(ms(execute(&shim, DIRECT, "echo hi").await?));
        }
        for _ in 0..per_round {
            theirs.push(f.ssh(&multiplexed)?);
        }
    }
    expect_logins(f, before, [0, 0, 0], "warm calls")?;
    let _ = f.ssh(&["-S", control, "-O", "exit", DIRECT]);

    let hop50 = percentile(&mut hop, 0.5);
    b.row(
        "ssh_execute `echo hi` p50 behind 1 proxy_jump hop vs ssh -J, ControlMaster",
        "ms",
        hop50,
        Some(percentile(&mut theirs, 0.5)),
        format!("{n} calls each, interleaved; OpenSSH reuses a master opened through -J"),
    );
    b.row(
        "ssh_execute `echo hi` p95 behind 1 proxy_jump hop vs ssh -J, ControlMaster",
        "ms",
        percentile(&mut hop, 0.95),
        Some(percentile(&mut theirs, 0.95)),
        "the same calls",
    );
    b.row(
        "ssh_execute `echo hi` p50 behind 1 proxy_jump hop vs our own, direct",
        "ms",
        hop50,
        Some(percentile(&mut direct, 0.5)),
        "what the hop costs; the reference column is our own call to the target directly",
    );
    Ok(())
}

/// Target 2: the first call through a cold chain `a,b` (three logins, one after another),
/// against a fresh `ssh -J a,b target true`. As the start-up figures do, the main row starts
/// with no daemon (the shim autostarts it); a second row starts from a daemon already running
/// with nothing connected, which is what `mcp-sshctl disconnect` would leave.
async fn cold(b: &mut Bench, f: &Fixtures) -> anyhow::Result<()> {
    let config = f.hosts_json();
    let jump = format!("{A},{B}");
    let fresh = ["-J", jump.as_str(), DIRECT, "true"];
    let rounds = b.n(15);
    let (mut autostart, mut running, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = Daemon::prepare(&config);
        let before = f.logins();
        let started = Instant::now();
        let s = shim(&d, "bench-reach-cold").await;
        execute(&s, TWO_HOPS, "true").await?;
        autostart.push(ms(started.elapsed()));
        expect_logins(f, before, [1, 1, 1], "a cold chain, autostarted")?;
        drop(s);
        stop_by_lock_file(&d.socket);

        let before = f.logins();
        theirs.push(f.ssh(&fresh)?);
        expect_logins(f, before, [1, 1, 1], "ssh -J a,b")?;

        let d = Daemon::start(&config);
        let s = shim(&d, "bench-reach-cold").await;
        let before = f.logins();
        // Includes the shim's own connection to the daemon, which it makes lazily.
        running.push(ms(execute(&s, TWO_HOPS, "true").await?));
        expect_logins(f, before, [1, 1, 1], "a cold chain, daemon running")?;
    }
    let fresh50 = percentile(&mut theirs, 0.5);
    b.row(
        "shim spawn → first ssh_execute via cold a,b chain, no daemon, p50 vs ssh -J a,b",
        "ms",
        percentile(&mut autostart, 0.5),
        Some(fresh50),
        format!("{rounds} rounds, interleaved; autostart + 3 logins vs a fresh ssh (3 logins)"),
    );
    b.row(
        "first ssh_execute via cold a,b chain, daemon running, p50 vs ssh -J a,b",
        "ms",
        percentile(&mut running, 0.5),
        Some(fresh50),
        "nothing connected yet (as after disconnecting the target and both bastions)",
    );
    Ok(())
}
