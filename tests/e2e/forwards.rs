//! Port forwards the daemon keeps, through a real sshd to a small HTTP server, fetched with a
//! real HTTP client (curl).

use std::path::Path;
use std::time::Duration;

use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::http::{HttpServer, is_pattern};
use mcp_ssh_tests::proxy::FaultProxy;
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, login_user};
use serde_json::{Value, json};

use crate::common::stdout_json;

/// `curl` GET of `url`: the body, or curl's complaint.
async fn curl(url: &str) -> Result<Vec<u8>, String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "60", url])
        .output()
        .await
        .expect("curl is needed by the forwarding tests: apt-get install -y curl (tests/run.sh installs it)");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn forwards(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.ctl(&["--json", "forward", "--list"]);
    assert!(out.status.success(), "{out:?}");
    stdout_json(&out)["forwards"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_should_relay_http_and_outlive_the_shim_that_opened_it() {
    let sshd = Sshd::start();
    let web = HttpServer::start();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = json!({ "audit_log_file": audit, "hosts": [sshd.host("box", &login_user())] });
    let daemon = Daemon::start(&config.to_string());
    let shim = Shim::attach(&daemon, "forward-client").await;

    let opened = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port }),
        )
        .await;
    assert!(!is_error(&opened), "{}", text(&opened));
    let s = structured(&opened);
    assert_eq!(s["state"], "opened", "{s}");
    assert_eq!(s["remote"], format!("localhost:{}", web.port));
    let local = s["local_address"].as_str().unwrap().to_string();
    assert!(local.starts_with("127.0.0.1:"), "{local}");
    let url = s["url"].as_str().unwrap().to_string();
    assert_eq!(url, format!("http://{local}/"));
    assert!(text(&opened).contains(&url), "{}", text(&opened));

    // The same call again returns the same forward.
    let again = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port }),
        )
        .await;
    assert_eq!(structured(&again)["state"], "already_open");
    assert_eq!(structured(&again)["local_address"], local.as_str());

    // A 100 MiB body, byte-identical.
    let big = curl(&format!("{url}bytes/{}", 100 << 20)).await.unwrap();
    assert_eq!(big.len(), 100 << 20);
    assert!(is_pattern(&big), "the body through the forward differs");
    drop(big);

    // 20 connections at once.
    let fetches: Vec<_> = (0..20)
        .map(|i| {
            let url = format!("{url}bytes/{}", 100_000 + i);
            tokio::spawn(async move { curl(&url).await })
        })
        .collect();
    for (i, fetch) in fetches.into_iter().enumerate() {
        let body = fetch.await.unwrap().unwrap();
        assert_eq!(body.len(), 100_000 + i);
        assert!(is_pattern(&body));
    }

    // Every client sees it: list_hosts and ssh_status.
    let hosts = shim.call("list_hosts", json!({})).await;
    assert_eq!(
        structured(&hosts)["hosts"][0]["forwards"][0]["local_address"],
        local.as_str(),
        "{}",
        structured(&hosts)
    );
    assert!(text(&hosts).contains(&local), "{}", text(&hosts));
    let status = shim.call("ssh_status", json!({ "host": "box" })).await;
    assert_eq!(
        structured(&status)["forwards"][0]["local_address"],
        local.as_str()
    );

    // The shim goes away; the forward stays.
    drop(shim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(curl(&format!("{url}hello")).await.unwrap(), b"hello\n");
    let listed = forwards(&daemon);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0]["connections_total"].as_u64().unwrap() >= 22);
    assert!(listed[0]["bytes_from_host"].as_u64().unwrap() > 100 << 20);
    let human = daemon.ctl(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(human.contains(&local), "{human}");

    // Closed by another client: the port no longer answers. With two forwards to the same
    // port, the one to close is named by its local port.
    let shim = Shim::attach(&daemon, "second-client").await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second_port = free.local_addr().unwrap().port();
    drop(free);
    let second = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port, "local_port": second_port }),
        )
        .await;
    assert_eq!(structured(&second)["state"], "opened", "{}", text(&second));
    let ambiguous = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port, "close": true }),
        )
        .await;
    assert!(is_error(&ambiguous));
    assert!(
        text(&ambiguous).contains("give local_port"),
        "{}",
        text(&ambiguous)
    );
    let closed = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port, "local_port": second_port, "close": true }),
        )
        .await;
    assert_eq!(structured(&closed)["state"], "closed", "{}", text(&closed));
    let closed = shim
        .call(
            "ssh_forward",
            json!({ "host": "box", "remote_port": web.port, "close": true }),
        )
        .await;
    assert_eq!(structured(&closed)["state"], "closed", "{}", text(&closed));
    assert!(curl(&format!("{url}hello")).await.is_err());
    assert!(forwards(&daemon).is_empty());

    let records = audit_records(&audit);
    let actions: Vec<&str> = records
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| a.starts_with("forward"))
        .collect();
    assert_eq!(actions.first(), Some(&"forward_opened"), "{actions:?}");
    assert_eq!(actions.last(), Some(&"forward_closed"), "{actions:?}");
    let relayed = actions
        .iter()
        .filter(|a| **a == "forward_connection")
        .count();
    // A burst of 20 records, then a bounded rate: the rest are counted, not written one by one.
    assert!(
        (20..24).contains(&relayed),
        "{relayed} records: {actions:?}"
    );
    let opened = records
        .iter()
        .find(|r| r["action"] == "forward_opened")
        .unwrap();
    assert_eq!(opened["client"]["name"], "forward-client", "{opened}");
    let closed = records
        .iter()
        .find(|r| r["action"] == "forward_closed" && r["forward"] == "f1")
        .unwrap();
    // Every connection is accounted for: a record of its own, or counted as suppressed (how
    // many of each depends on how long the test took, one more record per 3 s). The next
    // record written after a suppression carries its count; the closing record, what is left.
    let own: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "forward_connection" && r["forward"] == "f1")
        .collect();
    let carried: u64 = own.iter().filter_map(|r| r["suppressed"].as_u64()).sum();
    let (own, suppressed) = (
        own.len() as u64,
        carried + closed["suppressed"].as_u64().unwrap_or(0),
    );
    assert_eq!(
        own + suppressed,
        closed["connections"].as_u64().unwrap(),
        "{closed}"
    );
    let allowed = 20 + closed["duration_ms"].as_u64().unwrap() / 3000 + 1;
    assert!(own <= allowed, "{own} records in {closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_should_come_back_after_its_connection_is_cut() {
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(sshd.port);
    sshd.trust_port(proxy.port);
    let web = HttpServer::start();
    let mut host = sshd.host("box", &login_user());
    host["port"] = proxy.port.into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let out = daemon.ctl(&["--json", "forward", "box", &web.port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let local = stdout_json(&out)["local_address"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{local}/hello");
    assert_eq!(curl(&url).await.unwrap(), b"hello\n");

    proxy.reset_all();
    // The next request is served over a new connection, without anyone reopening the forward.
    let mut served = None;
    for _ in 0..20 {
        match curl(&url).await {
            Ok(body) => {
                served = Some(body);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(served.as_deref(), Some(&b"hello\n"[..]));
    assert!(proxy.accepted() >= 2, "no new SSH connection was made");
    assert_eq!(forwards(&daemon).len(), 1);

    // A reload that turns forwarding off for the host closes the forward.
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&daemon.config).unwrap()).unwrap();
    config["hosts"][0]["allow_forwarding"] = false.into();
    std::fs::write(&daemon.config, config.to_string()).unwrap();
    let out = daemon.ctl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    let closed = crate::common::eventually(Duration::from_secs(5), || forwards(&daemon).is_empty());
    assert!(
        closed,
        "the forward outlived the reload: {:?}",
        forwards(&daemon)
    );
    assert!(curl(&url).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_nobody_listens_on_should_fail_each_connection_not_the_forward() {
    let sshd = Sshd::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let shim = Shim::attach(&daemon, "forward-client").await;
    let opened = shim
        .call("ssh_forward", json!({ "host": "box", "remote_port": port }))
        .await;
    assert!(!is_error(&opened), "{}", text(&opened));
    let s = structured(&opened);
    // Opened, and the result says nothing listens there yet.
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing listens there"),
        "{s}"
    );
    let url = format!("http://{}/hello", s["local_address"].as_str().unwrap());
    assert!(curl(&url).await.is_err());
    let listed = forwards(&daemon);
    assert!(
        listed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains(&format!("localhost:{port}")),
        "{listed:?}"
    );
    // Once the service is up, the same forward relays to it.
    let _web = HttpServer::start_on(port);
    assert_eq!(curl(&url).await.unwrap(), b"hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_should_be_refused_where_hosts_json_or_sshd_forbid_them() {
    let sshd = Sshd::start();
    let locked = Sshd::start_with(SshdOptions {
        extra: "AllowTcpForwarding no\n".into(),
        ..SshdOptions::default()
    });
    let user = login_user();
    let mut off = sshd.host("off", &user);
    off["allow_forwarding"] = false.into();
    let mut narrow = sshd.host("narrow", &user);
    narrow["allowed_forward_ports"] = json!([6006]);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config =
        json!({ "audit_log_file": audit, "hosts": [off, narrow, locked.host("locked", &user)] });
    let daemon = Daemon::start(&config.to_string());
    let shim = Shim::attach(&daemon, "forward-client").await;

    let refused = shim
        .call("ssh_forward", json!({ "host": "off", "remote_port": 6006 }))
        .await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("allow_forwarding: false"),
        "{}",
        text(&refused)
    );

    let refused = shim
        .call(
            "ssh_forward",
            json!({ "host": "narrow", "remote_port": 22 }),
        )
        .await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("allowed_forward_ports"),
        "{}",
        text(&refused)
    );
    let refused = shim
        .call(
            "ssh_forward",
            json!({ "host": "narrow", "remote_port": 6006, "remote_host": "10.0.0.5" }),
        )
        .await;
    assert!(is_error(&refused));
    assert!(
        text(&refused).contains("not to 10.0.0.5"),
        "{}",
        text(&refused)
    );

    let refused = shim
        .call(
            "ssh_forward",
            json!({ "host": "locked", "remote_port": 6006 }),
        )
        .await;
    assert!(is_error(&refused), "{}", text(&refused));
    assert!(
        text(&refused).contains("AllowTcpForwarding"),
        "{}",
        text(&refused)
    );
    assert!(forwards(&daemon).is_empty());
    // Every refusal is audited, naming the client and what was asked.
    let refusals: Vec<Value> = audit_records(&audit)
        .into_iter()
        .filter(|r| r["action"] == "forward_opened")
        .collect();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r["outcome"] != "ok"),
        "{refusals:?}"
    );
    assert_eq!(refusals[0]["outcome"], "refused");
    assert_eq!(refusals[0]["client"]["name"], "forward-client");
    assert_eq!(refusals[2]["remote_address"], "10.0.0.5:6006");

    // allow_forwarding: false refuses remote forwards as well.
    let out = daemon.ctl(&["forward", "-R", "off", "8080:localhost:3000"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow_forwarding: false"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_forward_should_relay_a_port_on_the_host_to_this_machine() {
    let sshd = Sshd::start();
    let web = HttpServer::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let spec = format!("0:127.0.0.1:{}", web.port);
    let out = daemon.ctl(&["--json", "forward", "-R", "box", &spec]);
    assert!(out.status.success(), "{out:?}");
    let f = stdout_json(&out);
    assert_eq!(f["direction"], "remote");
    // The port the host's sshd listens on (it picked one: 0 was asked).
    let remote = f["remote_address"].as_str().unwrap().to_string();
    let port: u16 = remote.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{f}");
    let body = curl(&format!("http://127.0.0.1:{port}/bytes/300000"))
        .await
        .unwrap();
    assert!(is_pattern(&body) && body.len() == 300_000);
    let id = f["id"].as_str().unwrap();
    let out = daemon.ctl(&["forward", "--close", id]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        curl(&format!("http://127.0.0.1:{port}/hello"))
            .await
            .is_err(),
        "the host still listens after the close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_on_a_unix_socket_should_be_private_and_removed_when_closed() {
    let sshd = Sshd::start();
    let web = HttpServer::start();
    let daemon = Daemon::start(&hosts_json(&[sshd.host("box", &login_user())]));
    let out = daemon.ctl(&["--json", "forward", "--unix", "box", &web.port.to_string()]);
    assert!(out.status.success(), "{out:?}");
    let f = stdout_json(&out);
    let socket = std::path::PathBuf::from(f["local_address"].as_str().unwrap());
    assert_eq!(socket.parent(), daemon.socket.parent(), "{f}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let fetched = tokio::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30", "--unix-socket"])
        .arg(&socket)
        .arg("http://forward/hello")
        .output()
        .await
        .unwrap();
    assert_eq!(fetched.stdout, b"hello\n", "{fetched:?}");
    let out = daemon.ctl(&["forward", "--close", f["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(!socket.exists(), "the socket outlived its forward");
}
