//! `proxy_jump`: hosts reached through bastions (OpenSSH's ProxyJump), each hop a real sshd
//! with its own host-key check and login.

use mcp_ssh_tests::daemon::hosts_json;
use mcp_ssh_tests::rpc::run;
use mcp_ssh_tests::{Daemon, Sshd, login_user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_should_be_reached_through_a_bastion_of_hosts_json() {
    let bastion = Sshd::start();
    let target = Sshd::start();
    let mut inner = target.host("inner", &login_user());
    inner["proxy_jump"] = "jump".into();
    let daemon = Daemon::start(&hosts_json(&[bastion.host("jump", &login_user()), inner]));
    let client = daemon.client().await;
    let result = run(&client, "inner", "echo through the bastion", 0).await;
    assert_eq!(result.stdout_text(), "through the bastion\n", "{result:?}");
    assert_eq!(bastion.accepted_logins(), 1, "{}", bastion.log());
    assert_eq!(target.accepted_logins(), 1);
    let status = crate::common::stdout_json(&daemon.ctl(&["status", "--json"]));
    println!("{status:#}");
}
