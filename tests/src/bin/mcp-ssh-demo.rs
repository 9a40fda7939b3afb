//! `mcp-ssh-demo`: mcp-ssh working end to end on this machine, as an AI client sees it.
//!
//! It starts a throwaway OpenSSH sshd on 127.0.0.1 (its own keys, config and known_hosts, all
//! in a temporary directory), writes a hosts.json for it, spawns the given `mcp-ssh-shim` as an
//! MCP client would (the shim starts its own `mcp-sshd` on a private socket, so an installed
//! daemon is not touched) and holds a short MCP conversation, printing each call and result.
//! Run by `install.sh`; `--bin-dir DIR` says where the three programs are.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mcp_ssh_tests::shim::{Shim, is_error, text};
use mcp_ssh_tests::sshd::{Sshd, current_user};
use serde_json::{Value, json};

fn main() -> ExitCode {
    // Failures (no sshd, a program missing) are reported as one line, not as a panic dump.
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unexpected failure");
        eprintln!("\nmcp-ssh demo failed: {message}");
    }));
    let bin_dir = match bin_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("mcp-ssh demo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    match std::panic::catch_unwind(|| runtime.block_on(demo(&bin_dir))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// `--bin-dir DIR`, else the directory holding `mcp-ssh-shim` on PATH.
fn bin_dir() -> Result<PathBuf, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, dir] if flag == "--bin-dir" => Ok(PathBuf::from(dir)),
        [] => std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path).find(|dir| dir.join("mcp-ssh-shim").is_file())
            })
            .ok_or_else(|| "mcp-ssh-shim is not on PATH; pass --bin-dir DIR".to_string()),
        _ => Err("usage: mcp-ssh-demo [--bin-dir DIR]".into()),
    }
}

/// Prints a tool result the way a client shows it to the model: its text, indented.
fn show(result: &rmcp::model::CallToolResult) {
    let marker = if is_error(result) { "← error" } else { "←" };
    let body = text(result);
    let mut lines = body.lines();
    println!("{marker} {}", lines.next().unwrap_or_default());
    for line in lines {
        println!("  {line}");
    }
    println!();
}

async fn call(shim: &Shim, tool: &str, args: Value) -> rmcp::model::CallToolResult {
    println!("→ tools/call {tool} {args}");
    let result = shim.call(tool, args).await;
    show(&result);
    result
}

async fn demo(bins: &Path) {
    let program = |name: &str| {
        let path = bins.join(name);
        assert!(
            path.is_file(),
            "{} not found; install the programs first (bash install.sh)",
            path.display()
        );
        path
    };
    let (shim_bin, ctl_bin) = (program("mcp-ssh-shim"), program("mcp-sshctl"));
    program("mcp-sshd");

    let sshd = Sshd::start();
    let user = current_user();
    let work = tempfile::Builder::new()
        .prefix("mcp-ssh-demo-")
        .tempdir()
        .expect("cannot create a temporary directory");
    let hosts = work.path().join("hosts.json");
    let entry = sshd.host("demo", &user);
    std::fs::write(
        &hosts,
        serde_json::to_string_pretty(&json!({ "hosts": [entry] })).unwrap(),
    )
    .unwrap();
    let socket = work.path().join("run").join("daemon.sock");
    println!(
        "mcp-ssh demo\n  throwaway sshd   127.0.0.1:{} (login {user}, key and known_hosts in {})\n  hosts.json       {}\n  shim             {} (it starts mcp-sshd on {})\n",
        sshd.port,
        sshd.dir.path().display(),
        hosts.display(),
        shim_bin.display(),
        socket.display()
    );
    println!("{}\n", std::fs::read_to_string(&hosts).unwrap());

    let mut command = tokio::process::Command::new(&shim_bin);
    command
        .arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&hosts)
        .arg("--log-file")
        .arg(work.path().join("shim.log"))
        .env_remove("MCP_SSH_SOCKET")
        .env_remove("MCP_SSH_CONFIG");
    println!("→ initialize (as an MCP client named \"demo-client\")");
    let shim = Shim::spawn_command(command, "demo-client").await;
    if let Some(server) = shim
        .service
        .peer_info()
        .and_then(|info| info.server_info.clone())
    {
        println!("← server {} {}\n", server.name, server.version);
    }
    println!("→ tools/list");
    let tools = shim
        .service
        .list_all_tools()
        .await
        .expect("tools/list failed");
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    println!("← {} tools: {}\n", names.len(), names.join(", "));

    call(&shim, "list_hosts", json!({})).await;
    let uname = call(
        &shim,
        "ssh_execute",
        json!({ "host": "demo", "command": "uname -a" }),
    )
    .await;
    assert!(!is_error(&uname), "ssh_execute failed");

    let local = work.path().join("train.py");
    std::fs::write(&local, "print('hello from mcp-ssh')\n").unwrap();
    let remote_dir = work.path().join("remote-workspace");
    std::fs::create_dir(&remote_dir).unwrap();
    let upload = call(
        &shim,
        "ssh_upload",
        json!({ "host": "demo", "local_path": local, "remote_path": remote_dir }),
    )
    .await;
    assert!(!is_error(&upload), "ssh_upload failed");
    let back = work.path().join("train.copy.py");
    let download = call(
        &shim,
        "ssh_download",
        json!({ "host": "demo", "remote_path": remote_dir.join("train.py"), "local_path": back }),
    )
    .await;
    assert!(!is_error(&download), "ssh_download failed");
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&local).unwrap(),
        "the downloaded copy differs"
    );

    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(&ctl_bin)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("cannot run mcp-sshctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    println!("$ mcp-sshctl status");
    println!("{}", ctl(&["status"]));
    drop(shim);
    print!("$ mcp-sshctl stop\n{}", ctl(&["stop"]));
    println!(
        "\nThe demo worked: the same shim is what Claude Code, Cursor or any MCP client runs.\n\
         Next: put your servers in ~/.config/mcp-ssh/hosts.json and add the shim to your client\n\
         (README: \"Use it from your AI client\")."
    );
}
