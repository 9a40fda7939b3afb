//! Hosts taken from the user's OpenSSH configuration (`ssh_config_host`, `ssh_config_hosts`),
//! logging in with the keys it lists, in its order, as `ssh` would.

use std::path::Path;
use std::process::Command;

use mcp_ssh_tests::agent::Agent;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Daemon, Sshd, login_user};

use crate::common::stdout_json;

/// `ssh-keygen -l`'s SHA256 fingerprint of a public key file.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(1).unwrap().to_string()
}

/// The key fingerprints sshd accepted, in order.
fn accepted_keys(sshd: &Sshd) -> Vec<String> {
    sshd.log()
        .lines()
        .filter(|l| l.contains("Accepted publickey"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect()
}

/// A daemon with an empty HOME, reading `config_text`, with the agent when given.
fn daemon(config_text: &str, agent: Option<&Agent>) -> Daemon {
    let mut d = Daemon::prepare(config_text);
    let home = d.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    d.env.push(("HOME".into(), home.display().to_string()));
    if let Some(agent) = agent {
        d.env
            .push(("SSH_AUTH_SOCK".into(), agent.socket.display().to_string()));
    }
    d.spawn();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_of_ssh_config_should_resolve_as_ssh_does_and_use_its_keys_in_order() {
    let sshd = Sshd::start();
    let encrypted = sshd.authorized_key("enc", "correct horse");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/db.conf"),
        format!(
            "Host db1\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n",
            sshd.port,
            login_user(),
            sshd.client_key.display()
        ),
    )
    .unwrap();
    let ssh_config = dir.path().join("config");
    std::fs::write(
        &ssh_config,
        format!(
            "Include {d}/conf.d/*.conf\n\
             Host web-* !web-bad\n  User {user}\n  IdentityFile {enc}\n  IdentityFile {plain}\n  IdentitiesOnly yes\n\
             Host web-prod web-bad\n  HostName 127.0.0.1\n  Port {port}\n\
             Host *\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n",
            user = login_user(),
            enc = encrypted.display(),
            plain = sshd.client_key.display(),
            port = sshd.port,
            kh = sshd.known_hosts.display(),
        ),
    )
    .unwrap();
    let config = serde_json::json!({
        "ssh_config_file": ssh_config,
        "ssh_config_hosts": ["web-*", "db*"],
        "hosts": [{"name": "web", "ssh_config_host": "web-prod", "command_timeout": 5}],
    })
    .to_string();

    // With the agent holding the encrypted key, the first IdentityFile is the one used.
    let agent = Agent::start();
    agent.add(&encrypted, "correct horse");
    let with_agent = daemon(&config, Some(&agent));
    let hosts = stdout_json(&with_agent.ctl(&["hosts", "--json"]));
    let mut seen: Vec<(String, String)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "db1".to_string(),
                "ssh_config db1 (ssh_config_hosts)".to_string()
            ),
            ("web".into(), "hosts.json + ssh_config web-prod".into()),
            (
                "web-bad".into(),
                "ssh_config web-bad (ssh_config_hosts)".into()
            ),
            (
                "web-prod".into(),
                "ssh_config web-prod (ssh_config_hosts)".into()
            ),
        ],
        "{hosts:#}"
    );
    // What `ssh -G` says is what the daemon uses.
    for host in hosts.as_array().unwrap() {
        let name = host["name"].as_str().unwrap();
        let alias = if name == "web" { "web-prod" } else { name };
        let out = Command::new("ssh")
            .arg("-G")
            .arg("-F")
            .arg(&ssh_config)
            .arg(alias)
            .output()
            .unwrap();
        let g = String::from_utf8_lossy(&out.stdout).to_string();
        let value = |key: &str| {
            g.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} ")))
                .unwrap()
                .to_string()
        };
        assert_eq!(host["hostname"], value("hostname"), "{name}");
        assert_eq!(host["username"], value("user"), "{name}");
        assert_eq!(host["port"].to_string(), value("port"), "{name}");
    }
    let result = run(&with_agent.client().await, "web", "echo from web", 0).await;
    assert_eq!(result.stdout_text(), "from web\n", "{result:?}");
    let result = run(&with_agent.client().await, "db1", "echo from db1", 0).await;
    assert_eq!(result.stdout_text(), "from db1\n", "{result:?}");
    let enc_fp = fingerprint(&encrypted.with_extension("pub"));
    let plain_fp = fingerprint(&sshd.client_key.with_extension("pub"));
    assert_eq!(accepted_keys(&sshd), [enc_fp.clone(), plain_fp.clone()]);
    drop(with_agent);

    // Without an agent the encrypted key cannot be used: the plain second one is.
    let without = daemon(&config, None);
    let result = run(&without.client().await, "web-prod", "echo plain", 0).await;
    assert_eq!(result.stdout_text(), "plain\n", "{result:?}");
    assert_eq!(accepted_keys(&sshd).last(), Some(&plain_fp));
    // Negation: web-bad has neither the User nor the keys of `Host web-* !web-bad`.
    let bad = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "web-bad")
        .unwrap();
    assert_ne!(bad["username"], login_user());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ssh_config_or_alias_should_be_a_clear_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-config");
    let config = serde_json::json!({
        "ssh_config_file": missing,
        "hosts": [{"name": "web", "ssh_config_host": "web-prod"}],
    })
    .to_string();
    let d = Daemon::prepare(&config);
    let out = d.command().arg("--check-config").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("host web: ssh_config_host \"web-prod\""),
        "{text}"
    );
    assert!(text.contains("no-such-config"), "{text}");
}
