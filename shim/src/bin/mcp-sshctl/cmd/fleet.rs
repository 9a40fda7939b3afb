//! `exec @group CMD…` (or globs, or a comma-separated list): one command on many hosts through
//! the daemon's `Exec.RunMany`, printed gathered (hosts that ended alike once, as `clush -b`) or
//! with `--per-host` as each host ends, one line per output line prefixed with the host's name.

use std::process::ExitCode;

use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::ClientError;
use mcp_ssh_shim::mcp::results::fleet::{Gatherer, ManyResult, Outcome};
use mcp_ssh_shim::mcp::{Call, status_text};
use tonic::Code;

use super::Ctx;
use super::exec::signal_number;
use crate::output::fail;
use crate::{EXIT_REMOTE_FAILURE, EXIT_USAGE};

/// What one host keeps of each stream: a human reads it, but a runaway command on 500 hosts
/// must not fill this process's memory.
const PER_HOST: usize = 1 << 20;

/// Whether `target` names more than one host: a group, a glob, or a list.
pub fn is_many(target: &str) -> bool {
    target.starts_with('@') || target.contains([',', '*', '?', '['])
}

pub struct ManyAsk {
    pub targets: String,
    pub command: String,
    pub timeout: Option<u32>,
    pub cwd: Option<String>,
    pub per_host: bool,
    pub stop_on_error: bool,
}

pub async fn exec_many(ctx: &Ctx, ask: ManyAsk) -> Result<ExitCode, ClientError> {
    let client = ctx.connect_or_start().await?;
    let targets: Vec<String> = ask
        .targets
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    let request = pb::RunManyRequest {
        targets,
        command: ask.command,
        cwd: ask.cwd.unwrap_or_default(),
        timeout_secs: ask.timeout.unwrap_or(0),
        stop_on_error: ask.stop_on_error,
    };
    let call = Call::Command(&ask.targets);
    let mut stream = match client.exec().run_many(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            fail(ctx.json, &status_text(&status, call));
            // Targets that name no host are a usage mistake; nothing ran.
            let unresolved = matches!(status.code(), Code::InvalidArgument | Code::NotFound);
            return Ok(ExitCode::from(if unresolved {
                EXIT_USAGE
            } else {
                EXIT_REMOTE_FAILURE
            }));
        }
    };
    let mut gatherer = Gatherer::new(PER_HOST);
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => {
                fail(ctx.json, &status_text(&status, call));
                return Ok(ExitCode::from(EXIT_REMOTE_FAILURE));
            }
        };
        if let Some(index) = gatherer.apply(event)
            && ask.per_host
            && !ctx.json
            && let Some((name, Some(outcome))) = gatherer.host(index)
        {
            print!("{}", per_host_lines(name, outcome));
        }
    }
    let hosts = gatherer.finish();
    let code = highest_exit(&hosts);
    let result = ManyResult::new(hosts, usize::MAX / 2);
    if ctx.json {
        match serde_json::to_string_pretty(&result) {
            Ok(json) => println!("{json}"),
            Err(e) => fail(true, &format!("cannot print the result: {e}")),
        }
    } else if ask.per_host {
        eprintln!("{}", result.summary);
    } else {
        println!("{}", result.text());
    }
    Ok(ExitCode::from(code))
}

/// A host's output, each line prefixed with its name; an exit other than 0 and a failure get a
/// line of their own.
fn per_host_lines(name: &str, outcome: &Outcome) -> String {
    let mut out = String::new();
    match outcome {
        Outcome::Exited {
            code,
            signal,
            stdout,
            stderr,
        } => {
            let (stdout, stderr) = (stdout.clone().finish(), stderr.clone().finish());
            for line in stdout.text.lines().chain(stderr.text.lines()) {
                out.push_str(&format!("{name}: {line}\n"));
            }
            match code {
                Some(0) => {}
                Some(code) => out.push_str(&format!("{name}: exit {code}\n")),
                None => out.push_str(&format!("{name}: killed by signal {signal}\n")),
            }
        }
        Outcome::Failed { kind, reason } => out.push_str(&format!("{name}: {kind}: {reason}\n")),
        Outcome::NotRun => out.push_str(&format!("{name}: not run (stop_on_error)\n")),
    }
    out
}

/// The highest remote exit code (a signal counts as 128 + N), or 255 when a host could not run
/// the command.
fn highest_exit(hosts: &[(String, Outcome)]) -> u8 {
    hosts
        .iter()
        .map(|(_, outcome)| match outcome {
            Outcome::Exited {
                code: Some(code), ..
            } => u8::try_from(code & 0xff).unwrap_or(1),
            Outcome::Exited { signal, .. } => 128u8.saturating_add(signal_number(signal)),
            Outcome::Failed { .. } | Outcome::NotRun => EXIT_REMOTE_FAILURE,
        })
        .max()
        .unwrap_or(0)
}
