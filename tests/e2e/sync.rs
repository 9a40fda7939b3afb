//! Directory transfers as syncs, against a real sshd: only what changed is sent, in both
//! directions; excludes, ignore files, delete and dry_run; modes and times kept; links never
//! followed, on either side.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use mcp_ssh_tests::daemon::{Daemon, hosts_json};
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Sshd, login_user};
use serde_json::{Value, json};

use crate::transfer::shared_dir;

/// 2,000 small files in nested directories (`d00/s0/f000` …), some executable.
fn make_tree(root: &Path) {
    for d in 0..20 {
        for s in 0..2 {
            let dir = root.join(format!("d{d:02}/s{s}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..50 {
                let path = dir.join(format!("f{f:03}"));
                std::fs::write(&path, format!("file {d} {s} {f}\n").repeat(f + 1)).unwrap();
                if f % 10 == 0 {
                    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o750)).unwrap();
                }
            }
        }
    }
}

/// Rewrites `count` files under `root` with new contents and a new time.
fn touch(root: &Path, count: usize) -> Vec<String> {
    let later = SystemTime::now() + Duration::from_secs(3600);
    (0..count)
        .map(|i| {
            let rel = format!("d{:02}/s1/f{:03}", i, i * 3);
            let path = root.join(&rel);
            std::fs::write(&path, format!("changed {i}\n")).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(later)
                .unwrap();
            rel
        })
        .collect()
}

async fn call(shim: &Shim, tool: &str, args: Value) -> Value {
    let result = shim.call(tool, args).await;
    assert!(!is_error(&result), "{tool}: {}", text(&result));
    let mut s = structured(&result);
    s["text"] = text(&result).into();
    s
}

fn same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut queue = vec![root.to_path_buf()];
        while let Some(dir) = queue.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                if meta.is_dir() {
                    queue.push(e.path());
                    out.push((rel, meta.mode() & 0o7777, 0, Vec::new()));
                } else {
                    let data = std::fs::read(e.path()).unwrap();
                    out.push((rel, meta.mode() & 0o7777, meta.mtime(), data));
                }
            }
        }
        out.sort();
        out
    };
    assert!(
        list(a) == list(b),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_tree_should_send_only_what_changed_both_ways() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-sync").await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("project");
    make_tree(&tree);
    let remote = shared_dir();
    let dest = remote.path().join("project");
    let up = json!({ "host": "box", "local_path": tree, "remote_path": dest });

    let first = call(&shim, "ssh_upload", up.clone()).await;
    assert_eq!(first["files"], 2000, "{}", first["text"]);
    assert_eq!(first.get("unchanged"), None);
    same_tree(&tree, &dest);
    // The same call again: the same tree, nothing sent (no project/project).
    let again = call(&shim, "ssh_upload", up.clone()).await;
    assert_eq!(
        (again["files"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(2000))
    );
    assert!(!dest.join("project").exists());
    assert!(
        again["text"]
            .as_str()
            .unwrap()
            .starts_with("uploaded 0 B (0 files; 2000 unchanged, 0 entries deleted;"),
        "{}",
        again["text"]
    );
    let changed = touch(&tree, 10);
    let third = call(&shim, "ssh_upload", up.clone()).await;
    assert_eq!(
        (third["files"].as_u64(), third["unchanged"].as_u64()),
        (Some(10), Some(1990))
    );
    let mut listed: Vec<String> = serde_json::from_value(third["changed"].clone()).unwrap();
    listed.sort();
    let mut expected = changed.clone();
    expected.sort();
    assert_eq!(listed, expected);
    same_tree(&tree, &dest);
    // A destination ending in '/' receives the tree by its name.
    let into = format!("{}/", remote.path().join("into").display());
    std::fs::create_dir(remote.path().join("into")).unwrap();
    std::fs::set_permissions(remote.path().join("into"), PermissionsExt::from_mode(0o777)).unwrap();
    let nested = call(
        &shim,
        "ssh_upload",
        json!({ "host": "box", "local_path": tree, "remote_path": into }),
    )
    .await;
    assert_eq!(nested["files"], 2000);
    same_tree(&tree, &remote.path().join("into/project"));

    // Down: a fresh local copy, then only what changed on the host.
    let back = tempfile::tempdir().unwrap();
    let copy = back.path().join("copy");
    let down = json!({ "host": "box", "remote_path": dest, "local_path": copy, "verify": true });
    let first = call(&shim, "ssh_download", down.clone()).await;
    assert_eq!(first["files"], 2000);
    assert_eq!(first["verified"], true, "{}", first["text"]);
    same_tree(&dest, &copy);
    let again = call(&shim, "ssh_download", down.clone()).await;
    assert_eq!(
        (again["files"].as_u64(), again["unchanged"].as_u64()),
        (Some(0), Some(2000))
    );
    assert_eq!(
        again["verified"], true,
        "the whole tree is checked: {}",
        again["text"]
    );
    touch(&dest, 10);
    let third = call(&shim, "ssh_download", down.clone()).await;
    assert_eq!(
        (third["files"].as_u64(), third["unchanged"].as_u64()),
        (Some(10), Some(1990))
    );
    same_tree(&dest, &copy);

    // checksum: same size and time, other contents: only a content check sees it.
    let victim = copy.join("d05/s0/f007");
    let meta = std::fs::metadata(&victim).unwrap();
    let mut data = std::fs::read(&victim).unwrap();
    data[0] ^= 1;
    std::fs::write(&victim, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(meta.modified().unwrap())
        .unwrap();
    let mut plain = down.clone();
    plain.as_object_mut().unwrap().remove("verify");
    let quick = call(&shim, "ssh_download", plain.clone()).await;
    assert_eq!(quick["files"], 0);
    let mut checked = plain;
    checked["checksum"] = true.into();
    let thorough = call(&shim, "ssh_download", checked).await;
    assert_eq!(thorough["files"], 1);
    assert_eq!(thorough["changed"], json!(["d05/s0/f007"]));
    same_tree(&dest, &copy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excludes_ignore_files_delete_and_dry_run_should_shape_the_sync() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-sync").await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("src");
    std::fs::create_dir_all(tree.join("build/out")).unwrap();
    std::fs::create_dir_all(tree.join("lib")).unwrap();
    std::fs::write(tree.join(".gitignore"), "*.log\nbuild/\n").unwrap();
    std::fs::write(tree.join("lib/.ignore"), "local.cfg\n").unwrap();
    for rel in [
        "main.py",
        "run.log",
        "build/out/a.o",
        "lib/util.py",
        "lib/local.cfg",
        "secret.key",
    ] {
        std::fs::write(tree.join(rel), rel).unwrap();
    }
    let remote = shared_dir();
    let dest = remote.path().join("src");
    let args = |extra: Value| {
        let mut a = json!({ "host": "box", "local_path": tree, "remote_path": dest,
                            "gitignore": true, "exclude": ["secret*"] });
        for (k, v) in extra.as_object().unwrap() {
            a[k] = v.clone();
        }
        a
    };
    let up = call(&shim, "ssh_upload", args(json!({}))).await;
    assert_eq!(up["files"], 4, "{}", up["text"]); // .gitignore, main.py, lib/.ignore, lib/util.py
    assert_eq!(up["excluded"], 4, "{}", up["text"]); // run.log, build, lib/local.cfg, secret.key
    for gone in ["run.log", "build", "lib/local.cfg", "secret.key"] {
        assert!(!dest.join(gone).exists(), "{gone} was sent");
    }
    // On the host: a stale file, and one the rules protect.
    std::fs::write(dest.join("stale.txt"), "old").unwrap();
    std::fs::write(dest.join("keep.log"), "the host's own log").unwrap();
    let dry = call(
        &shim,
        "ssh_upload",
        args(json!({ "delete": true, "dry_run": true })),
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"], json!(["stale.txt"]), "{}", dry["text"]);
    assert!(
        dry["text"]
            .as_str()
            .unwrap()
            .starts_with("dry run, nothing changed"),
        "{}",
        dry["text"]
    );
    assert!(
        dest.join("stale.txt").exists(),
        "a dry run changed something"
    );
    std::fs::write(tree.join("main.py"), "changed, longer").unwrap();
    let dry = call(&shim, "ssh_upload", args(json!({ "dry_run": true }))).await;
    assert_eq!(dry["changed"], json!(["main.py"]));
    assert_eq!(
        std::fs::read_to_string(dest.join("main.py")).unwrap(),
        "main.py"
    );
    let real = call(&shim, "ssh_upload", args(json!({ "delete": true }))).await;
    assert_eq!(
        (real["files"].as_u64(), real["deleted"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(!dest.join("stale.txt").exists());
    assert!(
        dest.join("keep.log").exists(),
        "excluded entries are never deleted"
    );
    // Without delete, nothing is removed.
    std::fs::write(dest.join("stale2.txt"), "old").unwrap();
    call(&shim, "ssh_upload", args(json!({}))).await;
    assert!(dest.join("stale2.txt").exists());

    // Downloads honour the host tree's ignore files too.
    let back = tempfile::tempdir().unwrap();
    let copy = back.path().join("copy");
    std::fs::write(dest.join("debug.log"), "on the host").unwrap();
    let down = call(
        &shim,
        "ssh_download",
        json!({ "host": "box", "remote_path": dest, "local_path": copy, "gitignore": true }),
    )
    .await;
    assert!(copy.join("main.py").exists());
    assert!(
        !copy.join("debug.log").exists() && !copy.join("keep.log").exists(),
        "{}",
        down["text"]
    );
    // Sync options on a single file are refused, and nothing is written.
    let single = shim.call("ssh_upload", json!({ "host": "box", "local_path": tree.join("main.py"), "remote_path": dest.join("main.py"), "dry_run": true })).await;
    assert!(is_error(&single));
    assert!(
        text(&single).contains("dry_run applies to directories only"),
        "{}",
        text(&single)
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("main.py")).unwrap(),
        "changed, longer"
    );
    std::fs::write(tree.join("main.py"), "not sent").unwrap();
    let single = shim.call("ssh_upload", json!({ "host": "box", "local_path": tree.join("main.py"), "remote_path": dest.join("main.py"), "dry_run": true })).await;
    assert!(is_error(&single));
    assert_eq!(
        std::fs::read_to_string(dest.join("main.py")).unwrap(),
        "changed, longer"
    );
    // A bad pattern is a clear error.
    let bad = shim
        .call("ssh_upload", args(json!({ "exclude": ["[z-a]"] })))
        .await;
    assert!(is_error(&bad));
    assert!(text(&bad).contains("invalid exclude"), "{}", text(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_should_never_lead_a_sync_outside_the_destination() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let shim = Shim::attach(&daemon, "e2e-sync").await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("t");
    std::fs::create_dir_all(tree.join("d")).unwrap();
    std::fs::write(tree.join("d/x"), "inside").unwrap();
    std::fs::write(tree.join("e"), "a file").unwrap();
    std::os::unix::fs::symlink("..", tree.join("up")).unwrap();
    std::os::unix::fs::symlink("/", tree.join("root")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", tree.join("host")).unwrap();

    // The destination already holds links where the source has a directory and a file.
    let remote = shared_dir();
    let outside = shared_dir();
    std::fs::write(outside.path().join("precious"), "untouched").unwrap();
    let dest = remote.path().join("t");
    std::fs::create_dir(&dest).unwrap();
    std::fs::set_permissions(&dest, PermissionsExt::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(outside.path(), dest.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("precious"), dest.join("e")).unwrap();
    std::os::unix::fs::symlink("/", dest.join("gone")).unwrap();
    let up = call(
        &shim,
        "ssh_upload",
        json!({ "host": "box", "local_path": tree, "remote_path": dest, "delete": true }),
    )
    .await;
    assert_eq!(
        up["skipped"], 3,
        "the source's links are skipped: {}",
        up["text"]
    );
    assert!(
        std::fs::symlink_metadata(dest.join("d")).unwrap().is_dir(),
        "the link was replaced"
    );
    assert!(std::fs::symlink_metadata(dest.join("e")).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(dest.join("d/x")).unwrap(), "inside");
    assert!(
        std::fs::symlink_metadata(dest.join("gone")).is_err(),
        "a link removed as a link"
    );
    assert!(Path::new("/etc/hostname").exists() && Path::new("/bin").exists());
    let entries: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), 1, "nothing written outside the destination");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("precious")).unwrap(),
        "untouched"
    );
    for link in ["up", "root", "host"] {
        assert!(
            std::fs::symlink_metadata(dest.join(link)).is_err(),
            "{link} was sent"
        );
    }

    // Down: the host tree's links are skipped, and links in the local destination replaced.
    std::os::unix::fs::symlink("/", dest.join("root")).unwrap();
    std::os::unix::fs::symlink("..", dest.join("up")).unwrap();
    let back = tempfile::tempdir().unwrap();
    let copy = back.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    let local_outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(local_outside.path(), copy.join("d")).unwrap();
    let down = call(
        &shim,
        "ssh_download",
        json!({ "host": "box", "remote_path": dest, "local_path": copy }),
    )
    .await;
    assert_eq!(down["skipped"], 2, "{}", down["text"]);
    assert!(std::fs::symlink_metadata(copy.join("d")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(local_outside.path()).unwrap().count(), 0);
    assert!(std::fs::symlink_metadata(copy.join("root")).is_err());
}
