//! `partials`: the temporary files of large transfers that were cut off, kept by the daemon so
//! that the same transfer asked again resumes; `--discard ID` or `--all` removes them.

use std::process::ExitCode;

use indicatif::HumanBytes;
use mcp_ssh_proto::pb;
use mcp_ssh_shim::client::ClientError;
use serde_json::json;

use super::Ctx;
use crate::EXIT_ERROR;
use crate::output::{TextTable, ago, fail};

pub fn partial_json(p: &pb::PartialTransfer) -> serde_json::Value {
    json!({
        "id": p.id, "host": p.host, "direction": if p.upload { "upload" } else { "download" },
        "temp_path": p.temp_path, "source": p.source, "destination": p.destination,
        "size": p.size,
        // 0 is "not known": the daemon was stopped before it could tell.
        "kept_bytes": (p.kept_bytes > 0).then_some(p.kept_bytes), "kept_at_unix_ms": p.kept_at_unix_ms,
        "expires_at_unix_ms": p.expires_at_unix_ms, "running": p.running,
    })
}

/// The kept transfers as `partials` and `status` print them.
pub fn table(partials: &[pb::PartialTransfer]) -> String {
    let mut table = TextTable::new(
        &["ID", "TRANSFER", "KEPT", "SINCE", "TEMPORARY FILE"],
        &[1, 4],
    );
    for p in partials {
        let transfer = if p.upload {
            format!("{} → {}:{}", p.source, p.host, p.destination)
        } else {
            format!("{}:{} → {}", p.host, p.source, p.destination)
        };
        // 0 kept bytes: the daemon was stopped before it could tell; the resume checks the file.
        let kept = match (p.running, p.kept_bytes) {
            (true, _) => "running".to_string(),
            (false, 0) => format!("? of {}", HumanBytes(p.size)),
            (false, kept) => format!("{} of {}", HumanBytes(kept), HumanBytes(p.size)),
        };
        table.row(vec![
            p.id.clone(),
            transfer,
            kept,
            ago(p.kept_at_unix_ms),
            p.temp_path.clone(),
        ]);
    }
    table.render()
}

pub async fn partials(ctx: &Ctx, discard: Vec<String>, all: bool) -> Result<ExitCode, ClientError> {
    let client = ctx.connect().await?;
    let request = pb::PartialsRequest {
        discard,
        discard_all: all,
    };
    let reply = client.files().partials(request).await?.into_inner();
    if ctx.json {
        let kept: Vec<_> = reply.kept.iter().map(partial_json).collect();
        let discarded: Vec<_> = reply.discarded.iter().map(partial_json).collect();
        println!(
            "{:#}",
            json!({ "kept": kept, "discarded": discarded, "unknown": reply.unknown })
        );
    } else {
        for p in &reply.discarded {
            println!("discarded {} ({})", p.id, p.temp_path);
        }
        if !reply.unknown.is_empty() {
            fail(
                false,
                &format!(
                    "nothing kept under {} (or it is running now)",
                    reply.unknown.join(", ")
                ),
            );
        }
        if reply.kept.is_empty() {
            println!("no partial transfers kept");
        } else {
            println!(
                "partial transfers kept for a resume ({}); the same upload or download asked again resumes",
                reply.kept.len()
            );
            print!("{}", table(&reply.kept));
        }
    }
    Ok(if reply.unknown.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_ERROR)
    })
}
