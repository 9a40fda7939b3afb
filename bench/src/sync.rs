//! Directory sync: `ssh_upload` of a tree of 2,000 files (~50 MiB) next to `rsync -a` over a
//! fresh ssh and over a ControlMaster, to the same sshd: the first full sync, then syncs with 10
//! files changed (new contents and times), interleaved.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use mcp_ssh_tests::daemon::Daemon;
use mcp_ssh_tests::shim::{is_error, structured, text};
use serde_json::json;

use super::{Bench, ms, percentile, shim, tempfile_dir};

const FILES: usize = 2000;

/// `FILES` files of about 25 KiB of random bytes in 40 directories.
fn make_tree(root: &Path, files: usize, size: usize) -> anyhow::Result<()> {
    let mut random = std::fs::File::open("/dev/urandom")?;
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i % 40));
        std::fs::create_dir_all(&dir)?;
        let mut data = vec![0u8; size];
        std::io::Read::read_exact(&mut random, &mut data)?;
        std::fs::write(dir.join(format!("f{i:04}")), data)?;
    }
    Ok(())
}

/// Gives 10 files of round `round` new contents and a new time.
fn change(root: &Path, files: usize, round: usize) -> anyhow::Result<()> {
    let later = SystemTime::now() + Duration::from_secs(60 * (round as u64 + 1));
    for k in 0..10 {
        let i = (round * 97 + k * 13) % files;
        let path = root.join(format!("d{:02}/f{i:04}", i % 40));
        std::fs::write(&path, format!("round {round} file {k}\n").repeat(500))?;
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(later)?;
    }
    Ok(())
}

pub async fn sync(b: &mut Bench, daemon: &Daemon) -> anyhow::Result<()> {
    let (files, size) = if b.smoke {
        (50, 4096)
    } else {
        (FILES, 25 * 1024)
    };
    let work = tempfile_dir("mcpssh-bench-sync-")?;
    let remote = tempfile_dir("mcpssh-bench-sync-remote-")?;
    std::fs::set_permissions(&remote, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let tree = work.join("tree");
    make_tree(&tree, files, size)?;
    let s = shim(daemon, "bench-sync").await;
    let ours_dest = remote.join("ours");
    let upload = |dest: &PathBuf| json!({ "host": "box", "local_path": tree, "remote_path": dest });

    let control = work.join("cm");
    let ssh = |multiplexed: bool| {
        let mut e = format!(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o LogLevel=ERROR -i {} -o UserKnownHostsFile={} -p {}",
            b.sshd.client_key.display(),
            b.sshd.known_hosts.display(),
            b.sshd.port
        );
        if multiplexed {
            e.push_str(&format!(" -S {}", control.display()));
        }
        e
    };
    let rsync = |dest: &Path, multiplexed: bool| -> anyhow::Result<f64> {
        let started = Instant::now();
        let out = Command::new("rsync")
            .args(["-a", "-e", &ssh(multiplexed)])
            .arg(format!("{}/", tree.display()))
            .arg(format!("{}@127.0.0.1:{}/", b.user, dest.display()))
            .stdin(Stdio::null())
            .output()
            .context("rsync not found: install rsync (Debian: apt-get install rsync)")?;
        let took = ms(started.elapsed());
        if !out.status.success() {
            bail!(
                "rsync failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(took)
    };
    let master = b
        .ssh_base()
        .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=300", "-S"])
        .arg(&control)
        .args(["-fN", &format!("{}@127.0.0.1", b.user)])
        .status()?;
    if !master.success() {
        bail!("could not open the ControlMaster");
    }

    // The first full sync: ours, and rsync over a fresh ssh, each to an empty destination.
    let started = Instant::now();
    let first = s.call("ssh_upload", upload(&ours_dest)).await;
    let ours_full = ms(started.elapsed());
    if is_error(&first) || structured(&first)["files"] != files {
        bail!("the first sync: {}", text(&first));
    }
    let fresh_dest = remote.join("fresh");
    let theirs_full = rsync(&fresh_dest, false)?;
    let cm_dest = remote.join("cm");
    rsync(&cm_dest, true)?;

    let rounds = b.n(5);
    let (mut ours, mut fresh, mut cm) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        change(&tree, files, round)?;
        let started = Instant::now();
        let result = s.call("ssh_upload", upload(&ours_dest)).await;
        ours.push(ms(started.elapsed()));
        if is_error(&result) || structured(&result)["files"] != 10 {
            bail!("a sync of 10 changed files: {}", text(&result));
        }
        fresh.push(rsync(&fresh_dest, false)?);
        cm.push(rsync(&cm_dest, true)?);
    }
    let _ = b
        .ssh_base()
        .arg("-S")
        .arg(&control)
        .args(["-O", "exit", &format!("{}@127.0.0.1", b.user)])
        .stderr(Stdio::null())
        .status();
    let label = format!("{files} files, {} MiB", (files * size) >> 20);
    let ours50 = percentile(&mut ours, 0.5);
    b.row(
        format!("ssh_upload sync, {label}, 10 changed, p50 vs rsync -a, fresh ssh"),
        "ms",
        ours50,
        Some(percentile(&mut fresh, 0.5)),
        format!("{rounds} rounds, interleaved"),
    );
    b.row(
        format!("ssh_upload sync, {label}, 10 changed, p50 vs rsync -a, ControlMaster"),
        "ms",
        ours50,
        Some(percentile(&mut cm, 0.5)),
        "rsync's ssh multiplexed over a master opened beforehand",
    );
    b.row(
        format!("ssh_upload first full sync, {label}, vs rsync -a, fresh ssh"),
        "ms",
        ours_full,
        Some(theirs_full),
        "to empty destinations",
    );
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&remote);
    Ok(())
}
