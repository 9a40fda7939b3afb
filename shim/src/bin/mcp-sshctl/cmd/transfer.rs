//! `upload` and `download`: atomic transfers through the daemon, with a progress bar (rate and
//! ETA) on a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::{ClientError, resolve_local_path};
use mcp_ssh_shim::mcp::results::TransferResult;
use mcp_ssh_shim::mcp::{Call, status_text};
use serde_json::json;

use super::Ctx;
use crate::EXIT_ERROR;
use crate::output::fail;

/// A directory transfer's sync options, as the command line gave them.
#[derive(Debug, Default)]
pub struct SyncArgs {
    pub exclude: Vec<String>,
    pub gitignore: bool,
    pub delete: bool,
    pub dry_run: bool,
    pub checksum: bool,
}

pub async fn transfer(
    ctx: &Ctx,
    upload: bool,
    (host, local, remote): (String, String, String),
    verify: bool,
    sync: SyncArgs,
) -> Result<ExitCode, ClientError> {
    let as_json = ctx.json;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let local_path = resolve_local_path(&local, &cwd).display().to_string();
    let client = ctx.connect_or_start().await?;
    let request = pb::TransferRequest {
        host: host.clone(),
        local_path,
        remote_path: remote,
        verify,
        exclude: sync.exclude,
        gitignore: sync.gitignore,
        delete: sync.delete,
        dry_run: sync.dry_run,
        checksum: sync.checksum,
    };
    let mut files = client.files();
    let started = if upload {
        files.upload(request).await
    } else {
        files.download(request).await
    };
    let failed = |message: &str| {
        fail(as_json, message);
        Ok(ExitCode::from(EXIT_ERROR))
    };
    let call = Call::Transfer {
        host: &host,
        upload,
    };
    let mut stream = match started {
        Ok(response) => response.into_inner(),
        Err(status) => return failed(&status_text(&status, call)),
    };
    let bar = progress_bar(!as_json && std::io::stderr().is_terminal());
    let done = loop {
        match stream.message().await {
            Ok(Some(pb::TransferEvent {
                event: Some(pb::transfer_event::Event::Progress(p)),
            })) => show_progress(&bar, &p),
            Ok(Some(pb::TransferEvent {
                event: Some(pb::transfer_event::Event::Done(done)),
            })) => break done,
            Ok(Some(_)) => {}
            Ok(None) => {
                bar.finish_and_clear();
                return failed("the daemon ended the transfer without a result");
            }
            Err(status) => {
                bar.finish_and_clear();
                return failed(&status_text(&status, call));
            }
        }
    };
    bar.finish_and_clear();
    let verb = if upload { "uploaded" } else { "downloaded" };
    let result = TransferResult::new(done.clone(), verify);
    if as_json {
        // The MCP tool's structured result, with what this command was asked.
        let mut value = json!(result);
        value["host"] = json!(host);
        value["direction"] = json!(if upload { "upload" } else { "download" });
        println!("{value:#}");
    } else {
        // The same account as the MCP tool's text: sent, unchanged, deleted, resumed, verified.
        println!("{}", result.text(verb));
    }
    Ok(if verify && !done.verified && !done.dry_run {
        ExitCode::from(EXIT_ERROR)
    } else {
        ExitCode::SUCCESS
    })
}

/// `[########>-----------]  45%  230.00 MiB/512.00 MiB  310.20 MiB/s  ETA 1s`, on stderr, as wide
/// as the terminal; hidden when stderr is not a terminal or the output is JSON.
fn progress_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "[{wide_bar}] {percent:>3}%  {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}{msg}",
    ) {
        bar.set_style(style.progress_chars("#>-"));
    }
    bar
}

fn show_progress(bar: &ProgressBar, p: &pb::TransferProgress) {
    if bar.is_hidden() {
        return;
    }
    bar.set_length(p.bytes_total);
    bar.set_position(p.bytes_done);
    if p.files_total > 1 {
        bar.set_message(format!("  {}/{} files", p.files_done, p.files_total));
    }
}
