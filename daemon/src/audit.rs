//! The audit log (`audit_log_file`): one JSON line per action, shared by every client of the
//! daemon, created 0600 and appended to. Rotation: move the file away (logrotate's default
//! `create` mode) and the daemon starts a new one at the next record; `copytruncate` works too.
//!
//! No record ever holds a configured password: each line is scrubbed of every host's password
//! before it is written, even where the user typed one into a command.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::sync::lock;

const REDACTED: &str = "[REDACTED]";

/// Who asked for an action.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRef {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    pub pid: u32,
}

/// Batch membership of a command (from `ssh_execute_batch`).
#[derive(Debug, Clone, Serialize)]
pub struct BatchRef {
    pub id: String,
    pub index: u32,
    pub size: u32,
}

/// One audit record. `action` and `outcome` are always present; the rest when they apply.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub action: &'static str,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
    /// The call over many hosts (ssh_execute_many) this command was one host of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// A forward's id, its two ends, who connected through it, and counts for its records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Relayed connections not recorded one by one (the per-forward rate was exceeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    record: &'a Record,
}

pub struct Audit {
    path: Option<PathBuf>,
    file: Mutex<Option<(File, u64)>>,
    /// Strings that must never be written: every configured password, raw and JSON-escaped.
    secrets: Mutex<Vec<SecretString>>,
}

impl Audit {
    /// No audit log configured: records are dropped.
    pub fn disabled() -> Audit {
        Audit {
            path: None,
            file: Mutex::new(None),
            secrets: Mutex::new(Vec::new()),
        }
    }

    /// Opens (creating 0600) the audit log at `path`; fails early so a bad path is a startup error.
    /// Give it the passwords to scrub with [`Audit::set_secrets`] before the first record.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = open_append(path)?;
        Ok(Audit {
            path: Some(path.to_path_buf()),
            file: Mutex::new(Some(file)),
            secrets: Mutex::new(Vec::new()),
        })
    }

    /// Replaces the passwords to scrub (a reload may add or change them).
    pub fn set_secrets(&self, secrets: Vec<SecretString>) {
        let mut expanded = Vec::new();
        for secret in secrets {
            let raw = secret.expose_secret();
            if raw.is_empty() {
                continue;
            }
            let escaped = serde_json::to_string(raw).unwrap_or_default();
            let escaped = escaped.trim_matches('"');
            if escaped != raw {
                expanded.push(SecretString::from(escaped.to_string()));
            }
            expanded.push(secret);
        }
        // Longest first, so a password containing another is scrubbed whole.
        expanded.sort_by_key(|s| std::cmp::Reverse(s.expose_secret().len()));
        *lock(&self.secrets) = expanded;
    }

    /// Where records go, if anywhere.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Replaces every configured password in `text`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in lock(&self.secrets).iter() {
            let s = secret.expose_secret();
            if text.contains(s) {
                text = text.replace(s, REDACTED);
            }
        }
        text
    }

    /// Appends `record`. Failures are logged, never fatal: the action itself already happened.
    pub fn record(&self, record: Record) {
        let Some(path) = &self.path else { return };
        let line = Line {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            record: &record,
        };
        let Ok(json) = serde_json::to_string(&line) else {
            return;
        };
        let mut json = self.scrub(&json);
        json.push('\n');
        let mut guard = lock(&self.file);
        // Reopen when the file was moved away (rotated) or deleted.
        let rotated = match (&*guard, std::fs::metadata(path)) {
            (Some((_, ino)), Ok(meta)) => meta.ino() != *ino,
            _ => true,
        };
        if rotated {
            *guard = open_append(path)
                .map_err(|e| tracing::warn!("cannot open audit log {}: {e}", path.display()))
                .ok();
        }
        if let Some((file, _)) = guard.as_mut()
            && let Err(e) = file.write_all(json.as_bytes())
        {
            tracing::warn!("cannot write audit log {}: {e}", path.display());
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<(File, u64)> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let ino = file.metadata()?.ino();
    Ok((file, ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_should_be_json_lines_0600_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        audit.set_secrets(vec![
            SecretString::from("hunter2".to_string()),
            SecretString::from("q\"uote".to_string()),
        ]);
        audit.record(Record {
            action: "command_started",
            outcome: "started",
            host: Some("box".into()),
            command: Some("echo hunter2 | sudo -S id; echo q\"uote".into()),
            ..Record::default()
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("q\\\"uote"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["action"], "command_started");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            v["command"],
            "echo [REDACTED] | sudo -S id; echo [REDACTED]"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_rotated_file_should_be_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(&path).unwrap();
        audit.record(Record {
            action: "connect",
            outcome: "ok",
            ..Record::default()
        });
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        audit.record(Record {
            action: "disconnect",
            outcome: "ok",
            ..Record::default()
        });
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("disconnect")
        );
        assert!(
            !std::fs::read_to_string(dir.path().join("audit.jsonl.1"))
                .unwrap()
                .contains("disconnect")
        );
    }
}
