//! Resuming large transfers from the temporary file a cut-off run kept: a kept part that does
//! not match the source is detected and the transfer starts over; kept parts are listed,
//! expire, and are removed on request. (Cuts by the fault proxy, a killed sshd and a killed
//! daemon are in `faults.rs` and `transfer.rs`.)

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use mcp_ssh_proto::pb;
use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Sshd, login_user};
use serde_json::{Value, json};

use crate::common::{eventually, stdout_json};
use crate::transfer::{kept_parts, leftovers, random_file, shared_dir, start_moving_past};

const SIZE: usize = 256 * 1024 * 1024;

fn request(local: &Path, remote: &Path) -> pb::TransferRequest {
    pb::TransferRequest {
        host: "box".into(),
        local_path: local.display().to_string(),
        remote_path: remote.display().to_string(),
        ..Default::default()
    }
}

/// Starts the transfer, lets about half of it move, then goes away (the daemon cancels it) and
/// waits until the daemon has recorded what it kept.
async fn cut_by_cancel(daemon: &Daemon, upload: bool, request: pb::TransferRequest) -> Value {
    let stream = start_moving_past(daemon, upload, request, 0.3).await;
    drop(stream);
    let mut listed = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            listed = stdout_json(&daemon.ctl(&["partials", "--json"]));
            listed["kept"][0]["running"] == false
                && listed["kept"][0]["kept_bytes"]
                    .as_u64()
                    .is_some_and(|kept| kept > 0)
        }),
        "{listed}"
    );
    listed["kept"][0].clone()
}

/// Overwrites a few bytes in the middle of the first `len` bytes of `path`.
fn corrupt(path: &Path, len: u64) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(len / 2)).unwrap();
    file.write_all(b"not what was sent").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_part_that_does_not_match_should_be_sent_again_whole() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "claude-code").await;
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("model.bin");
    random_file(&big, SIZE);
    let dest = remote.path().join("model.bin");

    // Upload: the kept part on the host is changed before the resume.
    let kept = cut_by_cancel(&daemon, true, request(&big, &dest)).await;
    let part = kept_parts(remote.path());
    assert_eq!(part.len(), 1, "{:?}", leftovers(remote.path()));
    assert_eq!(kept["temp_path"], part[0].display().to_string(), "{kept}");
    corrupt(&part[0], kept["kept_bytes"].as_u64().unwrap());
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": dest, "verify": true }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    let s = structured(&up);
    assert!(s.get("resumed_from").is_none(), "{s}");
    assert!(
        s["resume_note"].as_str().unwrap().contains("did not match"),
        "{s}"
    );
    assert!(
        text(&up).contains("did not match the source"),
        "{}",
        text(&up)
    );
    assert_eq!(s["verified"], true, "{s}");
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&big).unwrap());
    assert!(
        leftovers(remote.path()).is_empty(),
        "{:?}",
        leftovers(remote.path())
    );

    // Download: the same with the part kept here.
    let back = tempfile::tempdir().unwrap();
    let copy = back.path().join("model.bin");
    let kept = cut_by_cancel(&daemon, false, request(&copy, &dest)).await;
    let part = kept_parts(back.path());
    assert_eq!(part.len(), 1, "{:?}", leftovers(back.path()));
    corrupt(&part[0], kept["kept_bytes"].as_u64().unwrap());
    let down = shim
        .call(
            "ssh_download",
            json!({ "host": "box", "remote_path": dest, "local_path": copy }),
        )
        .await;
    assert!(!is_error(&down), "{}", text(&down));
    assert!(
        structured(&down)["resume_note"]
            .as_str()
            .unwrap()
            .contains("did not match"),
        "{}",
        text(&down)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), std::fs::read(&big).unwrap());
    assert!(
        leftovers(back.path()).is_empty(),
        "{:?}",
        leftovers(back.path())
    );

    // And a part that does match resumes, as the tool's result says.
    let kept = cut_by_cancel(&daemon, true, request(&big, &dest)).await;
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": dest }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    let from = structured(&up)["resumed_from"].as_u64().unwrap();
    assert!(
        from > 0 && from <= kept["kept_bytes"].as_u64().unwrap(),
        "{}",
        text(&up)
    );
    assert!(
        text(&up).contains(&format!("resumed from byte {from}")),
        "{}",
        text(&up)
    );
    assert!(
        structured(&up).get("sha256").is_none(),
        "no hash without verify"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&big).unwrap());

    // A source that shrank below the kept part since the cut: the part is cut to it.
    let kept = cut_by_cancel(&daemon, true, request(&big, &dest)).await;
    let shorter = kept["kept_bytes"].as_u64().unwrap() / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(shorter)
        .unwrap();
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": dest }),
        )
        .await;
    assert!(!is_error(&up), "{}", text(&up));
    assert_eq!(structured(&up)["resumed_from"], shorter, "{}", text(&up));
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&big).unwrap());

    // Refused before anything was written: nothing is listed as kept.
    let nowhere = remote.path().join("missing/model.bin");
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "box", "local_path": big, "remote_path": nowhere }),
        )
        .await;
    assert!(is_error(&up), "{}", text(&up));
    let listed = stdout_json(&daemon.ctl(&["partials", "--json"]));
    assert_eq!(listed["kept"], json!([]), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_parts_should_be_listed_discarded_on_request_and_expire() {
    let sshd = Sshd::start();
    let mut config: Value =
        serde_json::from_str(&hosts_json(&[sshd.host("box", &login_user())])).unwrap();
    config["partial_retention"] = 4.into();
    let daemon = Daemon::start(&config.to_string());
    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let big = local.path().join("data.bin");
    random_file(&big, SIZE);

    // An upload's part, discarded by id: the file on the host goes too.
    let kept = cut_by_cancel(
        &daemon,
        true,
        request(&big, &remote.path().join("data.bin")),
    )
    .await;
    let id = kept["id"].as_str().unwrap().to_string();
    let status = daemon.ctl(&["status"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("partial transfers kept for a resume (1"),
        "{shown}"
    );
    assert!(shown.contains(&id), "{shown}");
    let out = daemon.ctl(&["partials", "--discard", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("discarded {id}")));
    assert!(
        eventually(Duration::from_secs(10), || leftovers(remote.path())
            .is_empty()),
        "{:?}",
        leftovers(remote.path())
    );
    let out = daemon.ctl(&["partials", "--discard", &id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an id that names nothing: {out:?}"
    );

    // A download's part, left to expire.
    let back = tempfile::tempdir().unwrap();
    std::fs::copy(&big, remote.path().join("src.bin")).unwrap();
    cut_by_cancel(
        &daemon,
        false,
        request(
            &back.path().join("copy.bin"),
            &remote.path().join("src.bin"),
        ),
    )
    .await;
    assert_eq!(kept_parts(back.path()).len(), 1);
    std::thread::sleep(Duration::from_secs(5));
    let listed = stdout_json(&daemon.ctl(&["partials", "--json"]));
    assert_eq!(listed["kept"], json!([]), "{listed}");
    assert!(
        leftovers(back.path()).is_empty(),
        "{:?}",
        leftovers(back.path())
    );
}
