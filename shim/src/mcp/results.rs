//! Tool results: each has a structured form (with an output schema) and a short text form that
//! leads with the outcome. The job tools' results are in `results/jobs.rs`.

pub mod fleet;
pub mod forward;
pub mod jobs;

use std::collections::BTreeMap;
use std::time::Duration;

use mcp_ssh_proto::pb;
use rmcp::model::{CallToolResult, ContentBlock};
use schemars::JsonSchema;
use serde::Serialize;

use super::output::CleanOutput;
use crate::client::state_name;

/// A successful tool result: the text for people and models, the structure for programs.
pub fn ok<T: Serialize>(text: String, value: &T) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = serde_json::to_value(value).ok();
    result
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExecResult {
    /// null if killed by a signal
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub stdout_cut: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub stderr_cut: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
    /// e.g. that `max_output` was raised to the minimum
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ExecResult {
    pub fn new(
        exit: Option<&pb::Exit>,
        elapsed: Duration,
        stdout: CleanOutput,
        stderr: CleanOutput,
    ) -> ExecResult {
        ExecResult {
            exit_code: exit.and_then(|e| e.code),
            signal: exit.map(|e| e.signal.clone()).filter(|s| !s.is_empty()),
            duration_ms: exit
                .map(|e| e.duration_ms)
                .unwrap_or_else(|| u64::try_from(elapsed.as_millis()).unwrap_or(0)),
            invalid_utf8: stdout.invalid_utf8 || stderr.invalid_utf8,
            stdout_cut: stdout.cut_bytes,
            stderr_cut: stderr.cut_bytes,
            stdout: stdout.text,
            stderr: stderr.text,
            note: None,
        }
    }

    fn outcome(&self) -> String {
        match (&self.exit_code, &self.signal) {
            (Some(code), _) => format!("exit {code} ({})", seconds(self.duration_ms)),
            (None, Some(sig)) => format!("killed by signal {sig} ({})", seconds(self.duration_ms)),
            (None, None) => format!("no exit status ({})", seconds(self.duration_ms)),
        }
    }

    fn output_text(&self) -> String {
        let mut text = String::new();
        if !self.stdout.is_empty() {
            text.push('\n');
            text.push_str(&self.stdout);
        }
        if !self.stderr.is_empty() {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str("--- stderr ---\n");
            text.push_str(&self.stderr);
        }
        if self.invalid_utf8 {
            text.push_str("\n[output was not valid UTF-8; invalid bytes shown as \u{FFFD}]");
        }
        text
    }

    fn note_text(&self) -> String {
        self.note
            .as_ref()
            .map(|note| format!("\n[{note}]"))
            .unwrap_or_default()
    }

    /// `exit 0 (0.01 s)`, then stdout, then stderr under its own heading.
    pub fn text(&self) -> String {
        format!(
            "{}{}{}",
            self.outcome(),
            self.output_text(),
            self.note_text()
        )
    }

    /// The error first, then whatever output arrived before it.
    pub fn failure_text(&self, error: &str) -> String {
        let output = self.output_text();
        let note = self.note_text();
        if output.is_empty() {
            format!("{error}{note}")
        } else {
            format!("{error}\n\noutput before that:{output}{note}")
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BatchItem {
    pub command: String,
    /// ok, failed, error or not_run
    pub status: &'static str,
    #[serde(flatten)]
    pub result: Option<ExecResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BatchItem {
    pub fn ran(command: &str, result: ExecResult, error: Option<String>) -> BatchItem {
        let status = match (&error, result.exit_code) {
            (Some(_), _) => "error",
            (None, Some(0)) => "ok",
            (None, _) => "failed",
        };
        BatchItem {
            command: command.into(),
            status,
            result: Some(result),
            error,
        }
    }

    pub fn failed_to_run(command: &str, error: String) -> BatchItem {
        BatchItem {
            command: command.into(),
            status: "error",
            result: None,
            error: Some(error),
        }
    }

    pub fn not_run(command: &str) -> BatchItem {
        BatchItem {
            command: command.into(),
            status: "not_run",
            result: None,
            error: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == "ok"
    }
}

/// A batch as JSON alone reads it: how many commands ran, how many of those succeeded (exit
/// 0), how many were not run because an earlier one failed.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BatchResult {
    pub host: String,
    pub ran: usize,
    pub succeeded: usize,
    pub not_run: usize,
    pub results: Vec<BatchItem>,
}

impl BatchResult {
    pub fn new(host: &str, results: Vec<BatchItem>) -> BatchResult {
        let count = |status: &str| results.iter().filter(|i| i.status == status).count();
        let (succeeded, not_run) = (count("ok"), count("not_run"));
        // A command that could not start (host unreachable) has no result: it did not run.
        let ran = results.iter().filter(|i| i.result.is_some()).count();
        BatchResult {
            host: host.into(),
            ran,
            succeeded,
            not_run,
            results,
        }
    }

    pub fn any_error(&self) -> bool {
        self.results.iter().any(|i| i.status == "error")
    }

    pub fn text(&self) -> String {
        let mut text = format!(
            "{} of {} commands succeeded on {}",
            self.succeeded,
            self.results.len(),
            self.host
        );
        if self.not_run > 0 {
            text.push_str(&format!(" ({} not run)", self.not_run));
        }
        text.push('\n');
        for (n, item) in self.results.iter().enumerate() {
            let body = match (&item.result, &item.error) {
                (Some(r), Some(e)) => r.failure_text(e),
                (Some(r), None) => r.text(),
                (None, Some(e)) => e.clone(),
                (None, None) => "not run (an earlier command failed)".to_string(),
            };
            text.push_str(&format!(
                "\n[{}] $ {}\n{}\n",
                n + 1,
                item.command,
                body.trim_end()
            ));
        }
        text
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostInfo {
    pub name: String,
    pub hostname: String,
    pub port: u32,
    pub username: String,
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How the host is reached when not directly (bastions, a proxy command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Where its settings came from when not hosts.json alone (ssh_config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Port forwards open to this host (ssh_forward).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<forward::ForwardBrief>,
}

impl From<pb::HostState> for HostInfo {
    fn from(h: pb::HostState) -> HostInfo {
        HostInfo {
            route: (!h.route.is_empty()).then(|| h.route.clone()),
            source: (!h.source.is_empty() && h.source != "hosts.json").then(|| h.source.clone()),
            forwards: forward::briefs(&h.forwards),
            state: state_name(h.state),
            last_error: (!h.last_error.is_empty()).then_some(h.last_error),
            name: h.name,
            hostname: h.hostname,
            port: h.port,
            username: h.username,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostsResult {
    pub hosts: Vec<HostInfo>,
    /// @group → its hosts
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl HostsResult {
    /// More hosts than this and the text lists only those that are not simply idle or connected.
    const LISTED: usize = 40;

    pub fn text(&self) -> String {
        let mut text = match self.hosts.len() {
            0 => "no hosts configured (add them to hosts.json)".to_string(),
            n => format!("{n} host{}:", if n == 1 { "" } else { "s" }),
        };
        let many = self.hosts.len() > Self::LISTED;
        if many {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for h in &self.hosts {
                *counts.entry(h.state).or_default() += 1;
            }
            let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            text.push_str(&format!(
                " {} (structuredContent lists all)",
                counts.join(", ")
            ));
        }
        for (name, members) in &self.groups {
            text.push_str(&format!(
                "\n@{name} ({}): {}",
                members.len(),
                fleet::fold(members)
            ));
        }
        let shown = self
            .hosts
            .iter()
            .filter(|h| !many || h.state == "failed" || !h.forwards.is_empty())
            .take(Self::LISTED);
        for h in shown {
            text.push_str(&format!(
                "\n{}  {}@{}:{}  {}",
                h.name, h.username, h.hostname, h.port, h.state
            ));
            if let Some(route) = &h.route {
                text.push_str(&format!(" (via {route})"));
            }
            if let Some(source) = &h.source {
                text.push_str(&format!(" [{source}]"));
            }
            if let Some(e) = &h.last_error {
                text.push_str(&format!(" ({})", e.lines().next().unwrap_or_default()));
            }
            for f in &h.forwards {
                text.push_str(&format!(
                    "\n  forward {}: {} → {}",
                    f.id, f.local_address, f.remote
                ));
            }
        }
        if let Some(note) = &self.note {
            text.push_str(&format!("\nnote: {note}"));
        }
        text
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusResult {
    pub host: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since_unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key_fingerprint: Option<String>,
    pub channels_in_use: u32,
    pub channel_limit: u32,
    /// How the host is reached when not directly (a proxy command).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Port forwards open to this host (ssh_forward).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<forward::ForwardBrief>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl StatusResult {
    pub fn reachable(h: pb::HostState, note: Option<String>) -> StatusResult {
        StatusResult {
            forwards: forward::briefs(&h.forwards),
            route: (!h.route.is_empty()).then(|| h.route.clone()),
            host: h.name,
            reachable: true,
            error: None,
            connected_since_unix_ms: Some(h.since_unix_ms),
            server_version: Some(h.server_version),
            host_key_fingerprint: Some(h.host_key_fingerprint),
            channels_in_use: h.channels_in_use,
            channel_limit: h.channel_limit,
            note,
        }
    }

    /// `channel_limit`: what a connection would have (as `list_hosts` tells it), so the field
    /// means the same whether connected or not.
    pub fn unreachable(
        host: &str,
        error: String,
        channel_limit: u32,
        note: Option<String>,
    ) -> StatusResult {
        StatusResult {
            host: host.into(),
            reachable: false,
            error: Some(error),
            connected_since_unix_ms: None,
            server_version: None,
            host_key_fingerprint: None,
            channels_in_use: 0,
            channel_limit,
            route: None,
            forwards: Vec::new(),
            note,
        }
    }

    pub fn text(&self) -> String {
        let mut text = if self.reachable {
            format!(
                "{} is reachable: {}, host key {}, {} of {} channels in use",
                self.host,
                self.server_version.as_deref().unwrap_or("unknown server"),
                self.host_key_fingerprint.as_deref().unwrap_or("unknown"),
                self.channels_in_use,
                self.channel_limit
            ) + &self
                .route
                .as_ref()
                .map(|r| format!(" (via {r})"))
                .unwrap_or_default()
        } else {
            format!(
                "{} is not reachable: {}",
                self.host,
                self.error.as_deref().unwrap_or("unknown error")
            )
        };
        for f in &self.forwards {
            text.push_str(&format!(
                "\nforward {}: {} → {} ({} connections open)",
                f.id, f.local_address, f.remote, f.connections_open
            ));
        }
        if let Some(note) = &self.note {
            text.push_str(&format!("\nnote: {note}"));
        }
        text
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DisconnectResult {
    pub host: String,
    pub was_connected: bool,
    pub interrupted_calls: u32,
}

impl DisconnectResult {
    pub fn text(&self) -> String {
        if self.was_connected {
            format!(
                "disconnected {} ({} call(s) in flight were interrupted)",
                self.host, self.interrupted_calls
            )
        } else {
            format!("{} was not connected", self.host)
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TransferResult {
    pub bytes: u64,
    pub files: u32,
    pub duration_ms: u64,
    /// Only from 1 MiB on: below, the rate says more about latency than throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    /// A single file with verify: its SHA-256, checked on both sides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub destination: String,
    /// Bytes already there from a cut-off earlier run (checked), or why those were not used.
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub resumed_from: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_note: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub skipped: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
    /// Directories: every source file's bytes, files not sent (already alike), removed
    /// (delete), left out (exclude, gitignore), the first paths sent and removed
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub unchanged: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub deleted: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub excluded: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl TransferResult {
    pub fn new(done: pb::TransferDone, verify: bool) -> TransferResult {
        let secs = (done.duration_ms as f64 / 1000.0).max(0.000_001);
        let tree = is_tree(&done);
        let moved = done.bytes.saturating_sub(done.resumed_from);
        TransferResult {
            bytes: done.bytes,
            files: done.files,
            duration_ms: done.duration_ms,
            // Of what moved in this call: a resumed file's kept part did not.
            mib_per_s: (moved >= 1_048_576)
                .then(|| ((moved as f64 / 1_048_576.0) / secs * 10.0).round() / 10.0),
            sha256: (!done.sha256.is_empty()).then_some(done.sha256),
            destination: done.destination,
            resumed_from: done.resumed_from,
            resume_note: (!done.resume_note.is_empty()).then_some(done.resume_note),
            skipped: done.skipped,
            verified: verify.then_some(done.verified && !done.dry_run),
            verification: verify.then_some(done.verification),
            bytes_total: tree.then_some(done.bytes_total),
            unchanged: done.unchanged,
            deleted: done.deleted,
            excluded: done.excluded,
            dry_run: done.dry_run,
            changed: done.changed,
            removed: done.removed,
        }
    }

    pub fn text(&self, verb: &str) -> String {
        let files = if self.files == 1 {
            "1 file".to_string()
        } else {
            format!("{} files", self.files)
        };
        let rate = self
            .mib_per_s
            .map(|rate| format!(" ({rate} MiB/s)"))
            .unwrap_or_default();
        let download = verb.starts_with("down");
        let mismatch = self.verified == Some(false)
            && self
                .verification
                .as_deref()
                .is_some_and(|v| v.starts_with("MISMATCH"));
        let mut text = match self.bytes_total {
            None if mismatch => format!(
                "{} {} ({files}) in {}{rate}, then removed the copy that was to replace {}",
                if download { "received" } else { "sent" },
                human_bytes(self.bytes),
                seconds(self.duration_ms),
                self.destination,
            ),
            Some(total) if self.dry_run => format!(
                "dry run, nothing changed: would {} {} ({files}) of {} to {}, {} unchanged, {} to delete",
                if download { "download" } else { "upload" },
                human_bytes(self.bytes),
                human_bytes(total),
                self.destination,
                self.unchanged,
                entries(self.deleted)
            ),
            Some(total) => format!(
                "{verb} {} ({files}; {} unchanged, {} deleted; {} in all) to {} in {}{rate}",
                human_bytes(self.bytes),
                self.unchanged,
                entries(self.deleted),
                human_bytes(total),
                self.destination,
                seconds(self.duration_ms),
            ),
            None => format!(
                "{verb} {} ({files}) to {} in {}{rate}",
                human_bytes(self.bytes),
                self.destination,
                seconds(self.duration_ms),
            ),
        };
        if self.resumed_from > 0 {
            text.push_str(&format!(
                "\nresumed from byte {}: the {} kept from an earlier, cut-off run matched the source (SHA-256 on both sides) and were not sent again",
                self.resumed_from,
                human_bytes(self.resumed_from)
            ));
        }
        if let Some(note) = &self.resume_note {
            text.push('\n');
            text.push_str(note);
        }
        if let Some(sha) = &self.sha256 {
            text.push_str(&format!("\nsha256 {sha}"));
        }
        let listed = |label: &str, paths: &[String], count: u32| {
            let more = (count as usize).saturating_sub(paths.len());
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("\n{label}: {}{tail}", paths.join(", "))
        };
        if !self.changed.is_empty() {
            let sent = match (self.dry_run, download) {
                (true, false) => "to send",
                (true, true) => "to receive",
                (false, false) => "sent",
                (false, true) => "received",
            };
            text.push_str(&listed(sent, &self.changed, self.files));
        }
        if !self.removed.is_empty() {
            let gone = if self.dry_run { "to delete" } else { "deleted" };
            text.push_str(&listed(gone, &self.removed, self.deleted));
        }
        if self.excluded > 0 {
            text.push_str(&format!(
                "\n{} left out by exclude or ignore rules",
                entries(self.excluded)
            ));
        }
        if self.skipped > 0 {
            text.push_str(&format!(
                "\n{} skipped (not regular files or directories)",
                entries(self.skipped)
            ));
        }
        match &self.verification {
            // A mismatch is the news: the destination was left as it was.
            Some(v) if mismatch => {
                text = format!("{v}\n{text}");
            }
            Some(v) => {
                text.push('\n');
                text.push_str(v);
            }
            None => {}
        }
        text
    }
}

/// "1 entry", "3 entries".
fn entries(n: u32) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

/// Whether a transfer's result is a directory's (a sync).
fn is_tree(done: &pb::TransferDone) -> bool {
    done.bytes_total > 0 || done.unchanged > 0 || done.dry_run || !done.changed.is_empty()
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_should_say_what_moved_and_what_was_resumed() {
        let done = pb::TransferDone {
            bytes: 28,
            files: 1,
            duration_ms: 5,
            destination: "box:/tmp/x".into(),
            ..Default::default()
        };
        let plain = TransferResult::new(done, false);
        assert_eq!(
            plain.text("uploaded"),
            "uploaded 28 B (1 file) to box:/tmp/x in 5 ms"
        );
        assert!(plain.sha256.is_none());

        let resumed = pb::TransferDone {
            bytes: 512 << 20,
            files: 1,
            duration_ms: 1_000,
            destination: "/d".into(),
            resumed_from: 256 << 20,
            sha256: "ab".repeat(32),
            verified: true,
            verification: "verified: …".into(),
            ..Default::default()
        };
        let result = TransferResult::new(resumed, true);
        // The rate is of what moved in this call.
        assert_eq!(result.mib_per_s, Some(256.0));
        let text = result.text("downloaded");
        assert!(text.contains("resumed from byte 268435456"), "{text}");
        assert!(
            text.contains(&format!("sha256 {}", "ab".repeat(32))),
            "{text}"
        );
    }
}
