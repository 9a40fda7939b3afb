//! `ssh_upload` and `ssh_download`: atomic transfers through the daemon's `Files` service, with
//! progress notifications.

use std::path::PathBuf;

use mcp_ssh_proto::pb;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::client::resolve_local_path;
use crate::mcp::results::{self, TransferResult};
use crate::mcp::schema::output_schema;
use crate::mcp::{Call, PROGRESS_EVERY, Shim, error_result, status_text};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    pub host: String,
    /// Relative: to the client's cwd
    pub local_path: String,
    /// Dest; for a dir, the tree itself (ending /: into it)
    pub remote_path: String,
    /// Check SHA-256 on the host too
    #[serde(default)]
    pub verify: Option<bool>,
    /// Gitignore-style patterns
    #[serde(default)]
    pub exclude: Option<Vec<String>>,
    #[serde(default)]
    pub gitignore: Option<bool>,
    /// Remove files the source lacks
    #[serde(default)]
    pub delete: Option<bool>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Compare contents, not size+mtime
    #[serde(default)]
    pub checksum: Option<bool>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    pub host: String,
    pub remote_path: String,
    /// Dest (relative: client's cwd), as ssh_upload's remote_path
    pub local_path: String,
    /// Check SHA-256 on the host too
    #[serde(default)]
    pub verify: Option<bool>,
    /// Gitignore-style patterns
    #[serde(default)]
    pub exclude: Option<Vec<String>>,
    #[serde(default)]
    pub gitignore: Option<bool>,
    /// Remove files the source lacks
    #[serde(default)]
    pub delete: Option<bool>,
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Compare contents, not size+mtime
    #[serde(default)]
    pub checksum: Option<bool>,
}

#[tool_router(router = files_router, vis = "pub(super)")]
impl Shim {
    /// Upload a file or directory (atomic; directories sync).
    #[tool(output_schema = output_schema::<TransferResult>())]
    async fn ssh_upload(
        &self,
        Parameters(p): Parameters<UploadParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let verify = p.verify.unwrap_or(false);
        self.run_transfer(
            &ctx,
            true,
            pb::TransferRequest {
                host: p.host,
                local_path: p.local_path,
                remote_path: p.remote_path,
                verify,
                exclude: p.exclude.unwrap_or_default(),
                gitignore: p.gitignore.unwrap_or(false),
                delete: p.delete.unwrap_or(false),
                dry_run: p.dry_run.unwrap_or(false),
                checksum: p.checksum.unwrap_or(false),
            },
        )
        .await
    }

    /// Download a file or directory (atomic; directories sync).
    #[tool(output_schema = output_schema::<TransferResult>())]
    async fn ssh_download(
        &self,
        Parameters(p): Parameters<DownloadParams>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let verify = p.verify.unwrap_or(false);
        self.run_transfer(
            &ctx,
            false,
            pb::TransferRequest {
                host: p.host,
                local_path: p.local_path,
                remote_path: p.remote_path,
                verify,
                exclude: p.exclude.unwrap_or_default(),
                gitignore: p.gitignore.unwrap_or(false),
                delete: p.delete.unwrap_or(false),
                dry_run: p.dry_run.unwrap_or(false),
                checksum: p.checksum.unwrap_or(false),
            },
        )
        .await
    }
}

impl Shim {
    /// Runs a transfer through the daemon, turning its progress into MCP progress notifications.
    async fn run_transfer(
        &self,
        ctx: &RequestContext<RoleServer>,
        upload: bool,
        mut request: pb::TransferRequest,
    ) -> CallToolResult {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        request.local_path = resolve_local_path(&request.local_path, &cwd)
            .display()
            .to_string();
        let verify = request.verify;
        let host = request.host.clone();
        let call = Call::Transfer {
            host: &host,
            upload,
        };
        let started = self
            .with_daemon(ctx, call, |client| {
                let request = request.clone();
                async move {
                    let mut files = client.files();
                    let stream = if upload {
                        files.upload(request).await
                    } else {
                        files.download(request).await
                    };
                    stream.map(tonic::Response::into_inner)
                }
            })
            .await;
        let mut stream = match started {
            Ok(stream) => stream,
            Err(text) => return error_result(text),
        };
        let token = ctx.meta.get_progress_token();
        let mut last = pb::TransferProgress::default();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        loop {
            let event = tokio::select! {
                message = stream.message() => message,
                _ = ticker.tick(), if token.is_some() => {
                    if let Some(token) = token.clone() {
                        let _ = ctx.peer.notify_progress(transfer_progress(token, &last)).await;
                    }
                    continue;
                }
                () = ctx.ct.cancelled() => {
                    drop(stream);
                    return error_result("cancelled by the client; the transfer was stopped and its temporary file removed".into());
                }
            };
            match event {
                Ok(Some(pb::TransferEvent {
                    event: Some(pb::transfer_event::Event::Progress(p)),
                })) => last = p,
                Ok(Some(pb::TransferEvent {
                    event: Some(pb::transfer_event::Event::Done(done)),
                })) => {
                    let result = TransferResult::new(done, verify);
                    let text = result.text(if upload { "uploaded" } else { "downloaded" });
                    return if result.verified == Some(false) {
                        error_result(text)
                    } else {
                        results::ok(text, &result)
                    };
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return error_result("the daemon ended the transfer without a result".into());
                }
                Err(status) => return error_result(status_text(&status, call)),
            }
        }
    }
}

fn transfer_progress(
    token: rmcp::model::ProgressToken,
    p: &pb::TransferProgress,
) -> ProgressNotificationParam {
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let message = format!(
        "{:.1} of {:.1} MiB, {} of {} files",
        mib(p.bytes_done),
        mib(p.bytes_total),
        p.files_done,
        p.files_total
    );
    ProgressNotificationParam::new(token, p.bytes_done as f64)
        .with_total(p.bytes_total as f64)
        .with_message(message)
}
