//! Partial transfers kept for resuming: the temporary file of a large upload or download that was
//! cut off (connection lost, stalled, cancelled, daemon killed) stays where it was written, and
//! the same transfer asked again continues from it once its content is checked.
//!
//! A record is written *before* the first byte moves, so a daemon killed mid-transfer still
//! leaves one for the next daemon (`<socket>.partials.json`, 0600). Records say where the
//! temporary file is, what it belongs to and how many of its bytes are known to be good; they
//! expire after `partial_retention`, and `mcp-sshctl partials --discard` removes them on request.
//! Removing the files themselves is the caller's work (a remote one needs the host's connection).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jobs::now_ms;
use crate::sync::lock;

/// One kept temporary file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// Names the transfer: the same host, direction, source and destination give the same id.
    pub id: String,
    pub host: String,
    pub upload: bool,
    /// The temporary file: a remote path for uploads, a local one for downloads.
    pub temp: String,
    pub source: String,
    pub destination: String,
    /// The source's size when the transfer began.
    pub size: u64,
    /// Bytes at the start of the temporary file known to be written; `None` when the daemon
    /// was stopped before it could say (then the resume checks a little less than the file).
    pub kept: Option<u64>,
    /// When the record was last written (ms since the epoch).
    pub at_ms: i64,
}

impl Partial {
    /// The id of a transfer: 16 hex digits of SHA-256 over what it is.
    pub fn id_for(host: &str, upload: bool, source: &str, destination: &str) -> String {
        let what = format!("{host}\0{upload}\0{source}\0{destination}");
        hex::encode(&Sha256::digest(what.as_bytes())[..8])
    }
}

/// The transfer is already running (from another call or client).
#[derive(Debug)]
pub struct AlreadyRunning;

#[derive(Debug, Default)]
struct Inner {
    kept: BTreeMap<String, Partial>,
    running: BTreeSet<String>,
}

/// Every kept partial transfer, and where the list is kept.
#[derive(Debug, Default)]
pub struct Partials {
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
}

impl Partials {
    /// Loads `file` if it exists; `None` keeps the list in memory only.
    pub fn open(file: Option<PathBuf>) -> Arc<Partials> {
        let kept = file
            .as_deref()
            .and_then(crate::state_file::load::<Vec<Partial>>)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        Arc::new(Partials {
            file,
            inner: Mutex::new(Inner {
                kept,
                running: BTreeSet::new(),
            }),
        })
    }

    /// Claims the transfer `record` names and records it; returns what an earlier, cut-off run
    /// left (its record, if any). The claim ends with the [`Claim`].
    pub fn begin(
        self: &Arc<Self>,
        record: Partial,
    ) -> Result<(Option<Partial>, Claim), AlreadyRunning> {
        let mut inner = lock(&self.inner);
        if !inner.running.insert(record.id.clone()) {
            return Err(AlreadyRunning);
        }
        let id = record.id.clone();
        let earlier = inner.kept.insert(
            id.clone(),
            Partial {
                at_ms: now_ms(),
                ..record
            },
        );
        self.save(&inner);
        drop(inner);
        let claim = Claim {
            partials: self.clone(),
            id,
        };
        Ok((earlier, claim))
    }

    /// Every kept partial transfer, and whether it is running now.
    pub fn list(&self) -> Vec<(Partial, bool)> {
        let inner = lock(&self.inner);
        inner
            .kept
            .values()
            .map(|p| (p.clone(), inner.running.contains(&p.id)))
            .collect()
    }

    /// Removes the records that `pick` selects among those not running, and returns them so
    /// that their files can be removed.
    pub fn take(&self, mut pick: impl FnMut(&Partial) -> bool) -> Vec<Partial> {
        let mut inner = lock(&self.inner);
        let Inner { kept, running } = &mut *inner;
        let ids: Vec<String> = kept
            .values()
            .filter(|p| !running.contains(&p.id) && pick(p))
            .map(|p| p.id.clone())
            .collect();
        let taken: Vec<Partial> = ids.iter().filter_map(|id| kept.remove(id)).collect();
        if !taken.is_empty() {
            self.save(&inner);
        }
        taken
    }

    /// The records older than `retention`, taken as [`Partials::take`] does.
    pub fn take_expired(&self, retention: Duration) -> Vec<Partial> {
        let limit =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        self.take(|p| p.at_ms <= limit)
    }

    fn save(&self, inner: &Inner) {
        let Some(path) = &self.file else { return };
        if inner.kept.is_empty() {
            let _ = std::fs::remove_file(path);
            return;
        }
        let list: Vec<&Partial> = inner.kept.values().collect();
        crate::state_file::save(path, &list, "partial transfers");
    }
}

/// A running transfer's hold on its record: [`Claim::done`] forgets the record (the file was
/// renamed into place or removed), [`Claim::keep`] updates it for a later resume. Dropped
/// without either (the task was stopped), the record stays as it was.
#[derive(Debug)]
pub struct Claim {
    partials: Arc<Partials>,
    id: String,
}

impl Claim {
    pub fn done(self) {
        let mut inner = lock(&self.partials.inner);
        if inner.kept.remove(&self.id).is_some() {
            self.partials.save(&inner);
        }
    }

    /// `kept` bytes at the start of the temporary file are known to be good.
    pub fn keep(self, kept: u64) {
        let mut inner = lock(&self.partials.inner);
        if let Some(p) = inner.kept.get_mut(&self.id) {
            p.kept = Some(kept);
            p.at_ms = now_ms();
            self.partials.save(&inner);
        }
    }

    /// This run touched nothing (it was refused before writing): the record goes back to what
    /// an earlier run left, or away when there was none.
    pub fn untouched(self, earlier: Option<Partial>) {
        let mut inner = lock(&self.partials.inner);
        match earlier {
            Some(earlier) => inner.kept.insert(self.id.clone(), earlier),
            None => inner.kept.remove(&self.id),
        };
        self.partials.save(&inner);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.partials.inner).running.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Partial {
        Partial {
            id: id.into(),
            host: "box".into(),
            upload: true,
            temp: format!("/w/.f.mcpssh-part-{id}.tmp"),
            source: "/home/u/f".into(),
            destination: "/w/f".into(),
            size: 100,
            kept: None,
            at_ms: 0,
        }
    }

    #[test]
    fn a_kept_record_should_survive_a_restart_and_a_finished_one_should_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.sock.partials.json");
        let partials = Partials::open(Some(file.clone()));
        let (earlier, claim) = partials.begin(record("a")).unwrap();
        assert!(earlier.is_none());
        assert!(partials.begin(record("a")).is_err(), "one run at a time");
        claim.keep(40);
        let (_, claim) = partials.begin(record("b")).unwrap();
        claim.done();
        // A daemon killed mid-transfer: the record was written at the start.
        let (_, claim) = partials.begin(record("c")).unwrap();
        std::mem::forget(claim);

        let again = Partials::open(Some(file.clone()));
        let ids: Vec<(String, Option<u64>)> = again
            .list()
            .into_iter()
            .map(|(p, _)| (p.id, p.kept))
            .collect();
        assert_eq!(ids, [("a".into(), Some(40)), ("c".into(), None)]);
        let (earlier, _claim) = again.begin(record("a")).unwrap();
        assert_eq!(earlier.and_then(|p| p.kept), Some(40));
        assert!(
            again.take(|_| true).iter().all(|p| p.id == "c"),
            "running ones stay"
        );
    }

    #[test]
    fn records_should_expire() {
        let partials = Partials::open(None);
        let (_, claim) = partials.begin(record("a")).unwrap();
        claim.keep(1);
        assert!(partials.take_expired(Duration::from_secs(3600)).is_empty());
        assert_eq!(partials.take_expired(Duration::ZERO).len(), 1);
        assert!(partials.list().is_empty());
    }

    #[test]
    fn ids_should_name_the_transfer() {
        let a = Partial::id_for("box", true, "/l/f", "/r/f");
        assert_eq!(a.len(), 16);
        assert_eq!(a, Partial::id_for("box", true, "/l/f", "/r/f"));
        assert_ne!(a, Partial::id_for("box", false, "/l/f", "/r/f"));
    }
}
