//! Authentication as OpenSSH does it: identity file, ssh-agent (also for encrypted keys),
//! default key files, password.

use mcp_ssh_tests::agent::Agent;
use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Daemon, Sshd, SshdOptions, is_root, login_user, test_password};
use tonic::Code;

/// A daemon whose HOME is empty (no default keys) and with the given agent, if any.
fn daemon(host: serde_json::Value, agent: Option<&Agent>) -> Daemon {
    let mut d = Daemon::prepare(&hosts_json(&[host]));
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

fn without_identity(sshd: &Sshd) -> serde_json::Value {
    let mut host = sshd.host("box", &login_user());
    host.as_object_mut().unwrap().remove("identity_file");
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keys_should_authenticate() {
    let sshd = Sshd::start();
    let agent = Agent::start();
    agent.add(&sshd.client_key, "");
    let d = daemon(without_identity(&sshd), Some(&agent));
    let result = run(&d.client().await, "box", "echo via agent", 0).await;
    assert_eq!(result.stdout_text(), "via agent\n", "{:?}", result.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_identity_file_should_work_through_the_agent_or_say_how() {
    let sshd = Sshd::start();
    let key = sshd.authorized_key("id_locked", "correct horse");
    let mut host = sshd.host("box", &login_user());
    host["identity_file"] = key.display().to_string().into();

    // Without the agent holding it: a clear message, never a passphrase prompt.
    let d = daemon(host.clone(), None);
    let result = run(&d.client().await, "box", "true", 0).await;
    assert_eq!(result.error_code(), Code::Unauthenticated);
    let message = result.error_message();
    assert!(
        message.contains("protected by a passphrase") && message.contains("ssh-add"),
        "{message}"
    );
    drop(d);

    let agent = Agent::start();
    agent.add(&key, "correct horse");
    let d = daemon(host, Some(&agent));
    let result = run(&d.client().await, "box", "echo unlocked", 0).await;
    assert_eq!(result.stdout_text(), "unlocked\n", "{:?}", result.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_key_files_should_be_tried() {
    let sshd = Sshd::start();
    let mut d = Daemon::prepare(&hosts_json(&[without_identity(&sshd)]));
    let ssh_dir = d.dir.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(&sshd.client_key, ssh_dir.join("id_ed25519")).unwrap();
    d.env.push((
        "HOME".into(),
        d.dir.path().join("home").display().to_string(),
    ));
    d.spawn();
    let result = run(&d.client().await, "box", "echo default key", 0).await;
    assert_eq!(result.stdout_text(), "default key\n", "{:?}", result.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_should_say_what_to_configure() {
    let sshd = Sshd::start();
    let d = daemon(without_identity(&sshd), None);
    let result = run(&d.client().await, "box", "true", 0).await;
    assert_eq!(result.error_code(), Code::Unauthenticated);
    let message = result.error_message();
    assert!(
        message.contains("tried: nothing") && message.contains("identity_file or password"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_should_work_and_never_echo_the_password() {
    // A non-root sshd cannot check passwords; CI runs as root.
    if !is_root() {
        return;
    }
    let password = test_password();
    let sshd = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    let mut good = without_identity(&sshd);
    good["password"] = password.as_str().into();
    let mut bad = without_identity(&sshd);
    bad["name"] = "bad".into();
    bad["password"] = "wrong-secret-value".into();
    let mut d = Daemon::prepare(&hosts_json(&[good, bad]));
    d.env
        .push(("HOME".into(), d.dir.path().display().to_string()));
    d.spawn();
    let client = d.client().await;
    let result = run(&client, "box", "echo with password", 0).await;
    assert_eq!(
        result.stdout_text(),
        "with password\n",
        "{:?}",
        result.error
    );
    let result = run(&client, "bad", "true", 0).await;
    let message = result.error_message();
    assert!(message.contains("tried: password"), "{message}");
    assert!(!message.contains("wrong-secret-value"));
    let status = d.ctl(&["status", "--json"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains("wrong-secret-value"));
    assert!(!d.log_text().contains("wrong-secret-value"));
    assert!(!d.log_text().contains(&password));
}

/// A daemon started without an agent (by a service manager, or from another terminal) uses the
/// agent of the client that calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_of_the_calling_client_should_be_used() {
    let sshd = Sshd::start();
    let agent = Agent::start();
    agent.add(&sshd.client_key, "");
    let d = daemon(without_identity(&sshd), None);
    let out = std::process::Command::new(mcp_ssh_tests::bins::bin("mcp-sshctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["exec", "box", "--", "echo via-client-agent"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "via-client-agent\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
