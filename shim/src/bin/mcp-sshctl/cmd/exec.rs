//! `exec HOST CMD…`: one command through the daemon's connection, output streamed through, exit
//! code passed on as ssh does.

use std::io::Write;
use std::process::ExitCode;

use mcp_ssh_proto::pb::{self, run_event};
use mcp_ssh_shim::client::ClientError;
use mcp_ssh_shim::mcp::{Call, status_text};
use serde_json::json;

use super::Ctx;
use crate::output::fail;
use crate::{EXIT_ERROR, EXIT_REMOTE_FAILURE};

pub async fn exec(
    ctx: &Ctx,
    host: String,
    timeout: Option<u32>,
    cwd: Option<String>,
    command: String,
) -> Result<ExitCode, ClientError> {
    let as_json = ctx.json;
    let client = ctx.connect_or_start().await?;
    let request = pb::RunRequest {
        host: host.clone(),
        command: command.clone(),
        cwd: cwd.unwrap_or_default(),
        timeout_secs: timeout.unwrap_or(0),
        ..Default::default()
    };
    let cannot_run = |message: &str| {
        fail(as_json, message);
        Ok(ExitCode::from(EXIT_REMOTE_FAILURE))
    };
    let mut stream = match client.exec().run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return cannot_run(&status_text(&status, Call::Command(&host))),
    };
    // Streamed as it comes for people; gathered into one document with --json.
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    let exit = loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return cannot_run("the daemon ended the call without an exit status"),
            Err(status) => {
                let _ = stdout.flush();
                drop(stdout);
                return cannot_run(&status_text(&status, Call::Command(&host)));
            }
        };
        match event.event {
            Some(run_event::Event::Stdout(data)) if as_json => out_buf.extend_from_slice(&data),
            Some(run_event::Event::Stderr(data)) if as_json => err_buf.extend_from_slice(&data),
            Some(run_event::Event::Stdout(data)) => {
                let _ = stdout.write_all(&data);
                let _ = stdout.flush();
            }
            Some(run_event::Event::Stderr(data)) => {
                let _ = stderr.write_all(&data);
            }
            Some(run_event::Event::Exit(exit)) => break exit,
            Some(run_event::Event::Started(_)) | None => {}
        }
    };
    let _ = stdout.flush();
    drop(stdout);
    if as_json {
        println!(
            "{:#}",
            json!({
                "host": host, "command": command, "exit_code": exit.code,
                "signal": (!exit.signal.is_empty()).then_some(&exit.signal),
                "stdout": String::from_utf8_lossy(&out_buf),
                "stderr": String::from_utf8_lossy(&err_buf),
                "duration_ms": exit.duration_ms,
            })
        );
    }
    Ok(match exit.code {
        Some(code) => exit_code(code),
        None => {
            if !as_json {
                eprintln!(
                    "mcp-sshctl: remote command killed by signal {}",
                    exit.signal
                );
            }
            signal_exit(&exit.signal)
        }
    })
}

/// A remote exit code as ours (its low 8 bits, as a shell sees it).
pub fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(EXIT_ERROR))
}

/// Shell convention: a command killed by signal N exits 128 + N.
pub fn signal_exit(signal: &str) -> ExitCode {
    ExitCode::from(128u8.saturating_add(signal_number(signal)))
}

pub fn signal_number(name: &str) -> u8 {
    match name.trim_start_matches("SIG") {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "ABRT" => 6,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        _ => 0,
    }
}
