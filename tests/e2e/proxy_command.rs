//! `proxy_command`: the SSH session runs over a local command's stdio (OpenSSH's ProxyCommand),
//! through real sshds: `ssh -W %h:%p` via a bastion, a plain TCP relay, and a command that fails.

use std::time::Duration;

use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Daemon, Sshd, login_user};
use tonic::Code;

use crate::common::{eventually, processes_matching, unique_token};

/// `ssh -W %h:%p` through `bastion`, as a ProxyCommand line; `token` marks the process.
fn ssh_w(bastion: &Sshd, token: &str) -> String {
    format!(
        "ssh -i {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} \
         -o SendEnv=MCPSSH_T_{token} -p {} -W %h:%p {}@127.0.0.1",
        bastion.client_key.display(),
        bastion.known_hosts.display(),
        bastion.port,
        login_user()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_should_be_reached_through_ssh_w_on_a_bastion_and_the_command_killed_with_it() {
    let bastion = Sshd::start();
    let target = Sshd::start();
    let token = unique_token();
    let mut host = target.host("inner", &login_user());
    host["proxy_command"] = ssh_w(&bastion, &token).into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let client = daemon.client().await;
    let result = run(&client, "inner", "echo through the bastion", 0).await;
    assert_eq!(result.stdout_text(), "through the bastion\n", "{result:?}");
    // The route: a login on the bastion (ssh -W), then one on the target.
    assert_eq!(bastion.accepted_logins(), 1, "{}", bastion.log());
    assert_eq!(target.accepted_logins(), 1);
    assert_eq!(processes_matching(&format!("MCPSSH_T_{token}")).len(), 1);
    let hosts = crate::common::stdout_json(&daemon.ctl(&["hosts", "--json"]));
    assert!(
        hosts[0]["route"]
            .as_str()
            .unwrap()
            .starts_with("proxy command `ssh -i "),
        "{hosts}"
    );

    let out = daemon.ctl(&["disconnect", "inner"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        eventually(Duration::from_secs(5), || processes_matching(&format!(
            "MCPSSH_T_{token}"
        ))
        .is_empty()),
        "the proxy command outlived its connection"
    );
    // The next call starts it again.
    let result = run(&client, "inner", "echo again", 0).await;
    assert_eq!(result.stdout_text(), "again\n", "{result:?}");
    assert_eq!(bastion.accepted_logins(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tcp_relay_should_carry_the_session() {
    let sshd = Sshd::start();
    let mut host = sshd.host("relayed", &login_user());
    // bash's /dev/tcp: a relay with nothing but the shell and cat.
    host["proxy_command"] = "bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'".into();
    let daemon = Daemon::start(&hosts_json(&[host]));
    let client = daemon.client().await;
    let result = run(&client, "relayed", "echo relayed", 0).await;
    assert_eq!(result.stdout_text(), "relayed\n", "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_command_that_fails_should_be_named_with_its_status_and_words() {
    let sshd = Sshd::start();
    let mut host = sshd.host("broken", &login_user());
    host["proxy_command"] = "sh -c 'echo no route to %h >&2; exit 7'".into();
    let mut missing = sshd.host("missing", &login_user());
    missing["proxy_command"] = "/nonexistent/proxy %h".into();
    let daemon = Daemon::start(&hosts_json(&[host, missing]));
    let client = daemon.client().await;

    let result = run(&client, "broken", "true", 0).await;
    assert_eq!(result.error_code(), Code::Unavailable, "{result:?}");
    let message = result.error_message();
    assert!(message.contains("proxy_command"), "{message}");
    assert!(message.contains("exited with status 7"), "{message}");
    assert!(message.contains("no route to 127.0.0.1"), "{message}");

    let result = run(&client, "missing", "true", 0).await;
    let message = result.error_message();
    assert!(message.contains("exited with status 127"), "{message}");
    assert!(message.contains("/nonexistent/proxy"), "{message}");
    assert_eq!(sshd.accepted_logins(), 0);
}
