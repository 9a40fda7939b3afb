//! `proxy_jump`: hosts reached through bastions (OpenSSH's ProxyJump), each hop a real sshd
//! with its own host-key check and login. The route tests put each target in a network
//! namespace of its own that holds nothing but a loopback: only a bastion serving connections
//! inside it (`Place::Between`) can reach it, so a login on the target proves the route.

use std::time::{Duration, Instant};

use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::shim::{Shim, is_error, structured, text};
use mcp_ssh_tests::{Daemon, Netns, Place, Sshd, SshdOptions, login_user};
use serde_json::{Value, json};

use crate::common::{eventually, stdout_json};
use crate::transfer::{random_file, shared_dir};

fn sshd(place: Place) -> Sshd {
    Sshd::start_with(SshdOptions {
        place,
        ..SshdOptions::default()
    })
}

/// A bastion reached from `outside` (None: here) that serves its connections inside `inside`.
fn bastion(outside: Option<&Netns>, inside: &Netns) -> Sshd {
    Sshd::start_with(SshdOptions {
        place: Place::Between {
            outside: outside.map(|n| n.name.clone()),
            inside: inside.name.clone(),
        },
        debug_log: true,
        ..SshdOptions::default()
    })
}

/// `host` reached through `jump`.
fn behind(mut host: Value, jump: &str) -> Value {
    host["proxy_jump"] = jump.into();
    host
}

/// Where a bastion's sshd (with `debug_log`) opened `direct-tcpip` channels to, as "HOST:PORT",
/// once it logged `n` of them.
fn forwarded_to(bastion: &Sshd, n: usize) -> Vec<String> {
    let opened = || -> Vec<String> {
        bastion
            .log()
            .lines()
            .filter(|l| l.contains("server_request_direct_tcpip: originator "))
            .filter_map(|l| {
                l.split_once(", target ")
                    .map(|(_, to)| to.replace(" port ", ":"))
            })
            .collect()
    };
    // sshd's post-authentication process may log after the channel already carried data.
    eventually(Duration::from_secs(5), || opened().len() >= n);
    opened()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hop_should_reach_a_name_only_the_bastion_resolves() {
    let inside = Netns::new();
    inside.hosts("127.0.0.1 localhost\n127.0.0.1 db-internal\n");
    let target = sshd(Place::Inside(inside.name.clone()));
    target.trust_name("db-internal");
    let jump = bastion(None, &inside);
    let user = login_user();
    let mut db = behind(target.host("db", &user), "jump");
    db["hostname"] = "db-internal".into();
    // The same server asked for directly: nothing outside the namespace reaches it.
    let direct = target.host("db-direct", &user);
    let daemon = Daemon::start(&hosts_json(&[jump.host("jump", &user), db, direct]));
    let client = daemon.client().await;

    let result = run(&client, "db", "echo through the bastion", 0).await;
    assert_eq!(result.stdout_text(), "through the bastion\n", "{result:?}");
    assert_eq!(
        forwarded_to(&jump, 1),
        [format!("db-internal:{}", target.port)],
        "the name went to the bastion unresolved:\n{}",
        jump.log()
    );
    assert_eq!((jump.accepted_logins(), target.accepted_logins()), (1, 1));
    // One session ran on the bastion: `exit`, which makes its sshd send without Nagle's delay.
    assert!(
        eventually(Duration::from_secs(5), || jump
            .log()
            .contains("Starting session: command for")),
        "{}",
        jump.log()
    );

    let refused = run(&client, "db-direct", "true", 0).await;
    assert!(
        refused.error_message().contains("cannot connect"),
        "{refused:?}"
    );
    assert_eq!(
        target.accepted_logins(),
        1,
        "only the route reaches the target"
    );

    // The status shows the route and the shared bastion once.
    let s = stdout_json(&daemon.ctl(&["status", "--json"]));
    let db = s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "db")
        .unwrap();
    assert_eq!(db["route"], "bastion jump", "{s:#}");
    assert_eq!(db["state"], "connected", "{s:#}");
    let text = String::from_utf8_lossy(&daemon.ctl(&["status"]).stdout).to_string();
    assert!(text.contains("bastion jump"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hops_should_carry_all_the_tools_and_reconnect_after_the_bastion_drops() {
    // Here → a (serving inside na) → b (listening in na, serving inside nb) → target (in nb).
    let (na, nb) = (Netns::new(), Netns::new());
    let target = sshd(Place::Inside(nb.name.clone()));
    let a = bastion(None, &na);
    let b = bastion(Some(&na), &nb);
    let user = login_user();
    // `b` is described as it is reached from `a`; the chain says so, as `ssh -J a,b` does.
    let gpu = behind(target.host("gpu", &user), "a,b");
    let config =
        json!({ "log_level": "DEBUG", "hosts": [a.host("a", &user), b.host("b", &user), gpu] });
    let daemon = Daemon::start(&serde_json::to_string_pretty(&config).unwrap());
    let shim = Shim::attach(&daemon, "two-hops").await;

    let out = shim
        .call(
            "ssh_execute",
            json!({ "host": "gpu", "command": "echo deep" }),
        )
        .await;
    assert!(!is_error(&out), "{}", text(&out));
    assert_eq!(structured(&out)["stdout"], "deep\n");
    assert_eq!(
        [
            a.accepted_logins(),
            b.accepted_logins(),
            target.accepted_logins()
        ],
        [1, 1, 1]
    );
    assert_eq!(forwarded_to(&a, 1), [format!("127.0.0.1:{}", b.port)]);
    assert_eq!(forwarded_to(&b, 1), [format!("127.0.0.1:{}", target.port)]);

    let batch = shim
        .call(
            "ssh_execute_batch",
            json!({ "host": "gpu", "commands": ["echo one", "echo two"] }),
        )
        .await;
    assert_eq!(structured(&batch)["succeeded"], 2, "{}", text(&batch));

    let local = tempfile::tempdir().unwrap();
    let remote = shared_dir();
    let file = local.path().join("weights.bin");
    random_file(&file, 3 << 20);
    let up = shim
        .call(
            "ssh_upload",
            json!({ "host": "gpu", "local_path": file, "remote_path": remote.path().join("w.bin"), "verify": true }),
        )
        .await;
    assert_eq!(structured(&up)["verified"], true, "{}", text(&up));
    let back = local.path().join("back.bin");
    let down = shim
        .call(
            "ssh_download",
            json!({ "host": "gpu", "remote_path": remote.path().join("w.bin"), "local_path": back }),
        )
        .await;
    assert!(!is_error(&down), "{}", text(&down));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&file).unwrap());

    let job = shim
        .call(
            "ssh_job_start",
            json!({ "host": "gpu", "command": "echo started; sleep 3; echo finished", "wait": 0 }),
        )
        .await;
    assert!(!is_error(&job), "{}", text(&job));
    let id = structured(&job)["job"].as_str().unwrap().to_string();
    // Still one login on each: every tool shares the chain.
    assert_eq!(
        [
            a.accepted_logins(),
            b.accepted_logins(),
            target.accepted_logins()
        ],
        [1, 1, 1]
    );

    // The first bastion's connection dies: the daemon notices that the whole chain is gone,
    // the next call reconnects all three hops, and the job ran on regardless.
    a.kill_connections();
    assert!(
        eventually(Duration::from_secs(10), || {
            let s = stdout_json(&daemon.ctl(&["status", "--json"]));
            host_of(&s, "gpu")["state"] != "connected"
        }),
        "the lost chain was not noticed"
    );
    let again = shim
        .call(
            "ssh_execute",
            json!({ "host": "gpu", "command": "echo again" }),
        )
        .await;
    assert_eq!(structured(&again)["stdout"], "again\n", "{}", text(&again));
    assert_eq!(
        [
            a.accepted_logins(),
            b.accepted_logins(),
            target.accepted_logins()
        ],
        [2, 2, 2]
    );
    let output = shim
        .call(
            "ssh_job_output",
            json!({ "job": id, "offset": 0, "until": "^finished", "wait": 20 }),
        )
        .await;
    assert!(
        structured(&output)["stdout"]
            .as_str()
            .is_some_and(|s| s.contains("started\nfinished\n")),
        "{}",
        text(&output)
    );
}

/// The host called `name` in `mcp-sshctl status --json`.
fn host_of<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["hosts"]
        .as_array()
        .and_then(|hosts| hosts.iter().find(|h| h["name"] == name))
        .unwrap_or_else(|| panic!("no host {name} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hop_should_be_named_with_its_reason() {
    let user = login_user();
    let jump = Sshd::start();
    let closed = Sshd::start_with(SshdOptions {
        extra: "AllowTcpForwarding no\n".into(),
        ..SshdOptions::default()
    });
    let target = Sshd::start();
    let mut stranger = jump.host("stranger", &user);
    // A known_hosts that has the target's key but not this bastion's.
    stranger["known_hosts_file"] = target.known_hosts.display().to_string().into();
    let mut unknown_target = behind(target.host("unknown-target", &user), "jump");
    unknown_target["known_hosts_file"] = jump.known_hosts.display().to_string().into();
    let daemon = Daemon::start(&hosts_json(&[
        jump.host("jump", &user),
        stranger,
        closed.host("closed", &user),
        behind(target.host("via-stranger", &user), "stranger"),
        unknown_target,
        behind(target.host("via-closed", &user), "closed"),
    ]));
    let client = daemon.client().await;

    for (host, expected) in [
        ("via-stranger", "through bastion stranger"),
        ("unknown-target", "host key"),
        ("via-closed", "through bastion closed"),
    ] {
        let result = run(&client, host, "true", 0).await;
        let message = result.error_message();
        println!("{host}: {message}");
        assert!(message.contains(expected), "{host}: {message}");
        assert!(!message.contains("retry"), "{host}: {message}");
    }
    let stranger = run(&client, "via-stranger", "true", 0)
        .await
        .error_message();
    assert!(stranger.contains("host key"), "{stranger}");
    let closed_reason = run(&client, "via-closed", "true", 0).await.error_message();
    assert!(
        closed_reason.contains("prohibited") || closed_reason.contains("refus"),
        "{closed_reason}"
    );
    let target_key = run(&client, "unknown-target", "true", 0)
        .await
        .error_message();
    assert!(target_key.contains("unknown-target"), "{target_key}");
    assert!(
        !target_key.contains("through bastion"),
        "the bastion was fine: {target_key}"
    );
    // Nothing got as far as a login on the target; the good bastion logged in once.
    assert_eq!(target.accepted_logins(), 0);
    assert_eq!(jump.accepted_logins(), 1, "{}", jump.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bastion_that_cannot_reach_the_host_should_give_up_at_the_deadline() {
    let inside = Netns::new();
    inside.black_hole("10.77.0.1/24", "10.77.0.2");
    let jump = bastion(None, &inside);
    let user = login_user();
    let lost = json!({ "name": "lost", "hostname": "10.77.0.2", "port": 22, "username": user,
        "identity_file": jump.client_key, "known_hosts_file": jump.known_hosts,
        "proxy_jump": "jump", "connect_timeout": 2 });
    let daemon = Daemon::start(&hosts_json(&[jump.host("jump", &user), lost]));
    let client = daemon.client().await;
    let started = Instant::now();
    let result = run(&client, "lost", "true", 0).await;
    let took = started.elapsed();
    let message = result.error_message();
    println!("{message} ({took:?})");
    assert!(took < Duration::from_secs(8), "took {took:?}: {message}");
    assert!(
        message.contains("through bastion jump: no answer within 2 s"),
        "{message}"
    );
    assert!(message.contains("10.77.0.2:22"), "{message}");
    assert_eq!(jump.accepted_logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_jump_alias_should_be_an_error_never_a_direct_connection() {
    let target = Sshd::start();
    let user = login_user();
    let mut d = Daemon::prepare(&hosts_json(&[behind(target.host("t", &user), "nosuch")]));
    let out = d.command().arg("--check-config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("\"nosuch\""), "{stderr}");

    // From ssh_config, an alias defined nowhere is a name to resolve, never a way around it.
    let dir = tempfile::tempdir().unwrap();
    let ssh_config = dir.path().join("config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host t\n  HostName 127.0.0.1\n  Port {}\n  User {user}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n  ProxyJump nosuch-alias.invalid\n",
            target.port,
            target.client_key.display(),
            target.known_hosts.display()
        ),
    )
    .unwrap();
    let config = json!({ "ssh_config_file": ssh_config, "log_level": "DEBUG",
        "hosts": [{ "name": "t", "ssh_config_host": "t" }] });
    std::fs::write(&d.config, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    d.spawn();
    let client = d.client().await;
    let message = run(&client, "t", "true", 0).await.error_message();
    println!("{message}");
    assert!(message.contains("nosuch-alias.invalid"), "{message}");
    assert_eq!(target.accepted_logins(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moving_a_bastion_should_reconnect_the_hosts_behind_it() {
    let (old, new, target) = (Sshd::start(), Sshd::start(), Sshd::start());
    let user = login_user();
    let config = |bastion: &Sshd| {
        hosts_json(&[
            bastion.host("jump", &user),
            behind(target.host("t", &user), "jump"),
        ])
    };
    let daemon = Daemon::start(&config(&old));
    let client = daemon.client().await;
    assert_eq!(run(&client, "t", "echo 1", 0).await.stdout_text(), "1\n");
    std::fs::write(&daemon.config, config(&new)).unwrap();
    assert_eq!(daemon.ctl(&["reload"]).status.code(), Some(0));
    assert_eq!(run(&client, "t", "echo 2", 0).await.stdout_text(), "2\n");
    assert_eq!((old.accepted_logins(), new.accepted_logins()), (1, 1));
    assert_eq!(target.accepted_logins(), 2, "the host behind reconnected");
}
