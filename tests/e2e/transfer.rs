//! ssh_upload / ssh_download against a real sshd: byte-identical, atomic, cleaned up, bounded.
//! The fixture's sshd runs on this machine, so "remote" paths are visible to the test directly.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_ssh_proto::pb::{self, transfer_event};
use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, ShimOptions, is_error, structured, text, tool_result};
use mcp_ssh_tests::{Sshd, SshdOptions, is_root, login_user};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::common::eventually;

/// A directory both the test and the SSH login user can write ("remote" side).
pub(crate) fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mcpssh-remote-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

pub(crate) fn random_file(path: &Path, bytes: usize) {
    let status = Command::new("head")
        .arg("-c")
        .arg(bytes.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(path).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub(crate) fn leftovers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".mcpssh-") {
            found.push(name);
        }
    }
    found
}

async fn setup(host: Value) -> (Daemon, Shim) {
    let daemon = Daemon::start(&hosts_json(&[host]));
    let shim = Shim::spawn(ShimOptions {
        socket: &daemon.socket,
        config: Some(&daemon.config),
        cwd: None,
        client_name: "e2e",
    })
    .await;
    (daemon, shim)
}

/// `verify` checks the file before it replaces the destination: a host whose `sha256sum`
/// disagrees (here one that lies) leaves both destinations as they were and no temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_mismatch_should_leave_the_destination_as_it_was() {
    let bin = tempfile::Builder::new()
        .prefix("mcpssh-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let liar = bin.path().join("sha256sum");
    let zeros = "0".repeat(64);
    std::fs::write(&liar, format!("#!/bin/sh\necho \"{zeros}  $2\"\n")).unwrap();
    std::fs::set_permissions(&liar, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sshd = Sshd::start_with(SshdOptions {
        extra: format!("SetEnv PATH={}:/usr/bin:/bin\n", bin.path().display()),
        ..Default::default()
    });
    let (daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let dest = remote.path().join("kept.bin");
    std::fs::write(&dest, b"old remote").unwrap();
    let back = local.path().join("back.bin");
    std::fs::write(&back, b"old local").unwrap();
    // A small file, and a large one (which would keep its part when cut off): neither leaves
    // anything behind after a mismatch, nor a kept record.
    for (name, size) in [("new.bin", 300_000), ("big.bin", 9 * 1024 * 1024)] {
        let file = local.path().join(name);
        random_file(&file, size);
        let up = shim
            .call(
                "ssh_upload",
                json!({ "host": "box", "local_path": file, "remote_path": dest, "verify": true }),
            )
            .await;
        assert!(is_error(&up), "{}", text(&up));
        assert!(text(&up).starts_with("MISMATCH"), "{}", text(&up));
        assert!(text(&up).contains("not replaced"), "{}", text(&up));
        assert_eq!(std::fs::read(&dest).unwrap(), b"old remote");
        assert!(
            leftovers(remote.path()).is_empty(),
            "{:?}",
            leftovers(remote.path())
        );

        let source = remote.path().join(format!("source-{name}"));
        random_file(&source, size);
        let down = shim
            .call(
                "ssh_download",
                json!({ "host": "box", "remote_path": source, "local_path": back, "verify": true }),
            )
            .await;
        assert!(is_error(&down), "{}", text(&down));
        assert!(text(&down).starts_with("MISMATCH"), "{}", text(&down));
        assert_eq!(std::fs::read(&back).unwrap(), b"old local");
        assert!(
            leftovers(local.path()).is_empty(),
            "{:?}",
            leftovers(local.path())
        );
    }
    let listed = crate::common::stdout_json(&daemon.ctl(&["partials", "--json"]));
    assert_eq!(listed["kept"], json!([]), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_sftp_should_say_so_at_once() {
    let sshd = Sshd::start_with(SshdOptions {
        no_sftp: true,
        ..Default::default()
    });
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("a.txt");
    std::fs::write(&file, b"hello").unwrap();
    let remote = shared_dir();
    let dest = remote.path().join("a.txt");
    let started = std::time::Instant::now();
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": file, "remote_path": dest }),
        )
        .await;
    assert!(is_error(&up), "{}", text(&up));
    assert!(text(&up).contains("Subsystem sftp"), "{}", text(&up));
    // Not the transfer's 120 s idle limit: sshd's refusal is the answer.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_should_be_byte_identical() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let back = tempfile::tempdir().unwrap();

    let big = local.path().join("big.bin");
    random_file(&big, 5 * 1024 * 1024 + 123);
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640)).unwrap();
    let empty = local.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let binary = local.path().join("all-bytes");
    std::fs::write(
        &binary,
        (0..=255u8).cycle().take(70_000).collect::<Vec<u8>>(),
    )
    .unwrap();

    for file in [&big, &empty, &binary] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let dest = remote.path().join(name);
        let up = shim
            .call(
                "ssh_upload",
                json!({ "host": "box", "local_path": file, "remote_path": dest, "verify": true }),
            )
            .await;
        assert!(!is_error(&up), "{}", text(&up));
        let s = structured(&up);
        assert_eq!(s["sha256"], sha256(file));
        assert_eq!(s["bytes"], std::fs::metadata(file).unwrap().len());
        assert_eq!(s["verified"], true, "{}", text(&up));
        assert!(text(&up).contains("verified"), "{}", text(&up));
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(file).unwrap());
        assert_eq!(mode(&dest), mode(file), "the mode follows the local file");

        let down_path = back.path().join(name);
        let down = shim
            .call("ssh_download", json!({ "host": "box", "remote_path": dest, "local_path": down_path, "verify": true }))
            .await;
        assert!(!is_error(&down), "{}", text(&down));
        assert_eq!(structured(&down)["sha256"], sha256(file));
        assert_eq!(
            std::fs::read(&down_path).unwrap(),
            std::fs::read(file).unwrap()
        );
        assert_eq!(mode(&down_path), mode(file));
    }

    // An existing destination is replaced whole.
    let dest = remote.path().join("big.bin");
    std::fs::write(&empty, b"new content").unwrap();
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": empty, "remote_path": dest }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    assert_eq!(std::fs::read(&dest).unwrap(), b"new content");
    assert!(leftovers(remote.path()).is_empty());
    assert!(leftovers(back.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_should_transfer_recursively_with_modes() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("project");
    std::fs::create_dir_all(tree.join("src/deep")).unwrap();
    std::fs::write(tree.join("README"), b"readme").unwrap();
    std::fs::write(tree.join("src/main.py"), b"print('hi')\n").unwrap();
    random_file(&tree.join("src/deep/data.bin"), 300_000);
    std::fs::write(tree.join("run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let remote = shared_dir();

    // The destination ends in '/': the tree lands in it under its own name.
    let into = format!("{}/", remote.path().display());
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": tree, "remote_path": into, "verify": true }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    let s = structured(&up);
    assert_eq!(s["files"], 4);
    assert_eq!(s["bytes"], 6 + 12 + 300_000 + 19);
    assert_eq!(s["verified"], true, "{}", text(&up));
    let landed = remote.path().join("project");
    assert_eq!(
        std::fs::read(landed.join("src/deep/data.bin")).unwrap(),
        std::fs::read(tree.join("src/deep/data.bin")).unwrap()
    );
    assert_eq!(mode(&landed.join("run.sh")), 0o755);

    let back = tempfile::tempdir().unwrap();
    let down = shim
        .call(
            "ssh_download",
            json!({ "host": "box", "remote_path": landed, "local_path": format!("{}/", back.path().display()) }),
        )
        .await;
    assert!(!is_error(&down), "{}", text(&down));
    assert_eq!(structured(&down)["files"], 4);
    assert!(
        structured(&down).get("sha256").is_none(),
        "a tree has no one hash"
    );
    let got = back.path().join("project");
    for rel in ["README", "src/main.py", "src/deep/data.bin", "run.sh"] {
        assert_eq!(
            std::fs::read(got.join(rel)).unwrap(),
            std::fs::read(tree.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(mode(&got.join("run.sh")), 0o755);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_local_paths_should_follow_the_clients_directory() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let client_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        client_dir.path().join("notes.txt"),
        b"from the client's cwd",
    )
    .unwrap();
    let shim = Shim::spawn(ShimOptions {
        socket: &daemon.socket,
        config: Some(&daemon.config),
        cwd: Some(client_dir.path()),
        client_name: "e2e",
    })
    .await;
    let remote = shared_dir();
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": "notes.txt", "remote_path": remote.path() }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    assert_eq!(
        std::fs::read(remote.path().join("notes.txt")).unwrap(),
        b"from the client's cwd"
    );
    let down = shim.call("ssh_download", json!({ "host": "box", "remote_path": remote.path().join("notes.txt"), "local_path": "copy.txt" })).await;
    assert!(!is_error(&down), "{}", text(&down));
    assert!(client_dir.path().join("copy.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_errors_should_say_what_and_where() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let cases = [
        (
            "ssh_upload",
            json!({ "host": "box", "local_path": local.path().join("missing"), "remote_path": "/tmp/x" }),
            "no such file",
        ),
        (
            "ssh_upload",
            json!({ "host": "box", "local_path": file, "remote_path": "/nonexistent-dir/x" }),
            "remote directory box:/nonexistent-dir does not exist",
        ),
        (
            "ssh_download",
            json!({ "host": "box", "remote_path": "/nonexistent-file", "local_path": local.path() }),
            "remote file not found: box:/nonexistent-file",
        ),
        (
            "ssh_download",
            json!({ "host": "box", "remote_path": "/etc/hostname", "local_path": local.path().join("no/such/dir/x") }),
            "local directory",
        ),
        (
            "ssh_upload",
            json!({ "host": "nope", "local_path": file, "remote_path": "/tmp/x" }),
            "unknown host",
        ),
    ];
    for (tool, args, expected) in cases {
        let result = shim.call(tool, args.clone()).await;
        assert!(is_error(&result), "{tool} {args}");
        assert!(
            text(&result).contains(expected),
            "{tool} {args}: {}",
            text(&result)
        );
    }
    if is_root() {
        // The login user (mcptest) cannot write into a root-owned 0755 directory.
        let locked = tempfile::tempdir().unwrap();
        std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let result = shim.call("ssh_upload", json!({ "host": "box", "local_path": file, "remote_path": locked.path().join("x") })).await;
        assert!(is_error(&result));
        assert!(
            text(&result).contains("permission denied"),
            "{}",
            text(&result)
        );
    }
}

async fn open_transfer(
    daemon: &Daemon,
    upload: bool,
    request: pb::TransferRequest,
) -> tonic::Streaming<pb::TransferEvent> {
    let client = daemon.client().await;
    let mut files = client.files();
    if upload {
        files.upload(request).await
    } else {
        files.download(request).await
    }
    .unwrap()
    .into_inner()
}

/// Starts a gRPC transfer and waits until data is moving.
pub(crate) async fn start_moving(
    daemon: &Daemon,
    upload: bool,
    request: pb::TransferRequest,
) -> tonic::Streaming<pb::TransferEvent> {
    let mut stream = open_transfer(daemon, upload, request).await;
    loop {
        let event = stream
            .message()
            .await
            .unwrap()
            .expect("transfer ended before any progress");
        if let Some(transfer_event::Event::Progress(p)) = event.event
            && p.bytes_done > 0
        {
            return stream;
        }
    }
}

pub(crate) async fn final_error(mut stream: tonic::Streaming<pb::TransferEvent>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("transfer left hanging")
        {
            Ok(Some(pb::TransferEvent {
                event: Some(transfer_event::Event::Done(_)),
            })) => panic!("transfer completed"),
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => return status,
        }
    }
}

/// When [`assert_cut_transfers_leave_nothing`] asks its fault to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A transfer is about to start.
    Start,
    /// Data is moving: cut the connection now.
    Cut,
    /// Make the host reachable again.
    Heal,
}

/// Starts a gRPC transfer and waits until at least `share` of it has moved.
pub(crate) async fn start_moving_past(
    daemon: &Daemon,
    upload: bool,
    request: pb::TransferRequest,
    share: f64,
) -> tonic::Streaming<pb::TransferEvent> {
    let mut stream = start_moving(daemon, upload, request).await;
    loop {
        let event = stream
            .message()
            .await
            .unwrap()
            .expect("transfer ended before the cut");
        if let Some(transfer_event::Event::Progress(p)) = event.event
            && p.bytes_done as f64 >= share * p.bytes_total as f64
        {
            return stream;
        }
    }
}

/// Runs a gRPC transfer to its end and returns its result.
pub(crate) async fn transfer_done(
    daemon: &Daemon,
    upload: bool,
    request: pb::TransferRequest,
) -> pb::TransferDone {
    let mut stream = open_transfer(daemon, upload, request).await;
    loop {
        match stream.message().await {
            Ok(Some(pb::TransferEvent {
                event: Some(transfer_event::Event::Done(done)),
            })) => return done,
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a result"),
            Err(status) => panic!("transfer failed: {status:?}"),
        }
    }
}

/// The kept temporary files (`.NAME.mcpssh-part-ID.tmp`) in `dir`.
pub(crate) fn kept_parts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".mcpssh-part-"))
        .collect()
}

fn request(local: &Path, remote: &Path) -> pb::TransferRequest {
    pb::TransferRequest {
        host: "box".into(),
        local_path: local.display().to_string(),
        remote_path: remote.display().to_string(),
        verify: true,
        ..Default::default()
    }
}

/// Cuts off an upload and then a download of a 256 MiB file with `fault` at about half, checks
/// that neither leaves a partial destination but each keeps its temporary file, and that the
/// same transfer asked again resumes from it and ends byte-identical.
pub(crate) async fn assert_cut_transfers_resume(daemon: &Daemon, mut fault: impl FnMut(Step)) {
    const SIZE: usize = 256 * 1024 * 1024;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("big.bin");
    random_file(&big, SIZE);

    let dest = remote.path().join("big.bin");
    fault(Step::Start);
    let stream = start_moving_past(daemon, true, request(&big, &dest), 0.5).await;
    fault(Step::Cut);
    let status = final_error(stream).await;
    assert!(status.message().contains("lost"), "{status:?}");
    assert!(
        status.message().contains("asked again resumes"),
        "says what was kept: {status:?}"
    );
    assert!(!dest.exists(), "no partial destination");
    assert_eq!(
        kept_parts(remote.path()).len(),
        1,
        "{:?}",
        leftovers(remote.path())
    );
    fault(Step::Heal);
    let done = transfer_done(daemon, true, request(&big, &dest)).await;
    assert!(
        done.resumed_from >= (SIZE / 4) as u64,
        "resumed from {} of {SIZE}: {done:?}",
        done.resumed_from
    );
    assert!(done.verified, "{done:?}");
    assert_eq!(done.sha256, sha256(&big));
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&big).unwrap());
    assert!(
        leftovers(remote.path()).is_empty(),
        "{:?}",
        leftovers(remote.path())
    );
    eprintln!("upload cut at half resumed from byte {}", done.resumed_from);

    let source = remote.path().join("source.bin");
    std::fs::copy(&big, &source).unwrap();
    let back = tempfile::tempdir().unwrap();
    let target = back.path().join("copy.bin");
    fault(Step::Start);
    let stream = start_moving_past(daemon, false, request(&target, &source), 0.5).await;
    fault(Step::Cut);
    let status = final_error(stream).await;
    assert!(status.message().contains("lost"), "{status:?}");
    assert!(!target.exists());
    assert_eq!(
        kept_parts(back.path()).len(),
        1,
        "{:?}",
        leftovers(back.path())
    );
    fault(Step::Heal);
    let done = transfer_done(daemon, false, request(&target, &source)).await;
    assert!(done.resumed_from >= (SIZE / 4) as u64, "{done:?}");
    assert!(done.verified, "{done:?}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&big).unwrap()
    );
    assert!(
        leftovers(back.path()).is_empty(),
        "{:?}",
        leftovers(back.path())
    );
    eprintln!(
        "download cut at half resumed from byte {}",
        done.resumed_from
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cut_by_a_killed_sshd_should_resume() {
    let mut sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    assert_cut_transfers_resume(&daemon, |step| match step {
        Step::Start => {}
        Step::Cut => {
            // Stopped first, so the kill cannot let a last packet through.
            sshd.signal_connections(Signal::SIGSTOP);
            sshd.kill();
        }
        Step::Heal => sshd.restart(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_write_failure_should_keep_the_old_destination() {
    let sshd = Sshd::start_with(SshdOptions {
        file_size_limit_kib: Some(1024),
        ..Default::default()
    });
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let dest = remote.path().join("model.bin");
    std::fs::write(&dest, b"old, complete version").unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o666)).unwrap();
    let big = local.path().join("model.bin");
    random_file(&big, 4 * 1024 * 1024);
    let result = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": dest }),
        )
        .await;
    assert!(is_error(&result), "{}", text(&result));
    assert_eq!(std::fs::read(&dest).unwrap(), b"old, complete version");
    assert!(
        eventually(Duration::from_secs(5), || leftovers(remote.path())
            .is_empty()),
        "{:?}",
        leftovers(remote.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_should_time_out() {
    let sshd = Sshd::start();
    let mut host = sshd.host("box", &login_user());
    host["transfer_timeout"] = 2.into();
    host["keepalive_interval"] = 60.into();
    host["connect_timeout"] = 3.into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("big.bin");
    random_file(&big, 96 * 1024 * 1024);
    let dest = remote.path().join("big.bin");
    let request = pb::TransferRequest {
        host: "box".into(),
        local_path: big.display().to_string(),
        remote_path: dest.display().to_string(),
        verify: false,
        ..Default::default()
    };
    let stream = start_moving(&daemon, true, request).await;
    sshd.signal_connections(Signal::SIGSTOP);
    let started = std::time::Instant::now();
    let status = final_error(stream).await;
    sshd.signal_connections(Signal::SIGCONT);
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("no data moved for 2 s"),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_transfer_should_stop_it_and_clean_up() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("big.bin");
    random_file(&big, 96 * 1024 * 1024);
    let dest = remote.path().join("big.bin");
    let handle = shim
        .start_call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": dest }),
        )
        .await;
    assert!(
        eventually(Duration::from_secs(10), || !leftovers(remote.path())
            .is_empty()),
        "the upload never started"
    );
    handle.cancel(Some("changed my mind".into())).await.unwrap();
    // What was sent is kept for a resume, under the transfer's own name, and nothing else.
    assert!(
        eventually(Duration::from_secs(10), || {
            let left = leftovers(remote.path());
            left.len() == 1 && left[0].contains(".mcpssh-part-")
        }),
        "{:?}",
        leftovers(remote.path())
    );
    assert!(!dest.exists());
    // The session is still usable.
    let ok = shim
        .call(
            "ssh_execute",
            json!({ "host": "box", "command": "echo fine" }),
        )
        .await;
    assert_eq!(structured(&ok)["stdout"], "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_should_report_progress() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("big.bin");
    random_file(&big, 64 * 1024 * 1024);
    let handle = shim
        .start_call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": remote.path().join("x") }),
        )
        .await;
    let result = tool_result(handle.await_response().await.unwrap());
    assert!(!is_error(&result), "{}", text(&result));
    let progress = shim.progress.lock().unwrap().clone();
    // Debug builds move ~50-100 MiB/s here: at least one heartbeat with byte counts.
    if structured(&result)["duration_ms"].as_u64().unwrap() > 1500 {
        assert!(!progress.is_empty());
        let last = progress.last().unwrap();
        assert_eq!(last.total, Some((64 * 1024 * 1024) as f64));
        assert!(last.message.as_deref().unwrap_or_default().contains("MiB"));
    }
    let _: PathBuf = big;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_upload_should_leave_its_successor_a_part_to_resume() {
    const SIZE: usize = 256 * 1024 * 1024;
    let sshd = Sshd::start();
    let mut daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("big.bin");
    random_file(&big, SIZE);
    let dest = remote.path().join("big.bin");
    let stream = start_moving_past(&daemon, true, request(&big, &dest), 0.5).await;
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    assert!(daemon.pid().is_none(), "the daemon survived SIGKILL");
    drop(stream);
    assert_eq!(
        kept_parts(remote.path()).len(),
        1,
        "{:?}",
        leftovers(remote.path())
    );
    assert!(!dest.exists());

    // The next daemon knows about it: listed, then resumed after checking it.
    daemon.spawn();
    let out = daemon.ctl(&["partials", "--json"]);
    let listed = crate::common::stdout_json(&out);
    assert_eq!(
        listed["kept"][0]["destination"],
        dest.display().to_string(),
        "{listed}"
    );
    assert_eq!(listed["kept"][0]["direction"], "upload");
    let done = transfer_done(&daemon, true, request(&big, &dest)).await;
    assert!(
        done.resumed_from >= (SIZE / 4) as u64,
        "resumed from {}: {done:?}",
        done.resumed_from
    );
    assert!(done.verified, "{done:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&big).unwrap());
    assert!(
        leftovers(remote.path()).is_empty(),
        "{:?}",
        leftovers(remote.path())
    );
    let out = daemon.ctl(&["partials", "--json"]);
    assert_eq!(crate::common::stdout_json(&out)["kept"], json!([]));
    eprintln!(
        "upload cut by SIGKILL resumed by the next daemon from byte {}",
        done.resumed_from
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_into_a_missing_directory_should_fail_before_sending() {
    let sshd = Sshd::start();
    let (_daemon, shim) = setup(sshd.host("box", &login_user())).await;
    let local = tempfile::tempdir().unwrap();
    // 2 GiB (sparse): sending it before noticing would take seconds.
    let big = local.path().join("big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    for remote in [
        "/nonexistent-dir/big.bin",
        "/nonexistent-dir/",
        "/nonexistent-dir/sub/",
    ] {
        let started = std::time::Instant::now();
        let result = shim
            .call(
                "ssh_upload",
                json!({ "host": "box", "local_path": big, "remote_path": remote }),
            )
            .await;
        assert!(is_error(&result), "{remote}: {}", text(&result));
        assert!(
            text(&result).contains("does not exist"),
            "{remote}: {}",
            text(&result)
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{remote}: failed only after {:?}",
            started.elapsed()
        );
    }
}
