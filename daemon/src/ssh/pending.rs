//! Remote temporary files of uploads that were cut off with their connection, per host. They are
//! removed once the host is reached again; the list is also kept in a file beside the socket
//! (`<socket>.pending.json`, 0600) so that a daemon restarted in between still removes them.
//!
//! Every upload adds its temporary file before the first byte and takes it out when done, so a
//! sync of 2,000 small files changes the list 4,000 times: rewriting the file each time cost a
//! first full sync 40 % of its time. The file is a journal instead, one JSON line per change
//! appended with a single `write` (whole lines survive a killed daemon; a torn last one is
//! ignored), emptied when the list is, and rewritten whole only when it has grown long.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::sync::lock;

type Map = BTreeMap<String, BTreeSet<String>>;

/// Journal lines after which the file is rewritten as the list it describes.
const COMPACT_AFTER: usize = 10_000;

/// One change of the list.
#[derive(Debug, Serialize, Deserialize)]
struct Change {
    host: String,
    path: String,
    /// Added (true) or taken out.
    add: bool,
}

#[derive(Debug, Default)]
struct State {
    map: Map,
    /// The journal open for appending, and how many lines it holds.
    journal: Option<File>,
    lines: usize,
}

/// Every host's pending files, and where they are kept.
#[derive(Debug, Default)]
pub struct PendingStore {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

impl PendingStore {
    /// Loads `file` if it exists (unreadable lines are reported and skipped); `None` keeps the
    /// list in memory only.
    pub fn open(file: Option<PathBuf>) -> Arc<PendingStore> {
        let map = file.as_deref().map(load).unwrap_or_default();
        let store = PendingStore {
            file,
            state: Mutex::new(State {
                map,
                ..State::default()
            }),
        };
        store.compact(&mut lock(&store.state));
        Arc::new(store)
    }

    /// The pending files of one host.
    pub fn for_host(self: &Arc<Self>, host: &str) -> PendingTemps {
        PendingTemps {
            store: self.clone(),
            host: host.to_string(),
        }
    }

    /// Adds (or takes out) `paths` of `host`; the journal records what changed.
    fn change(&self, host: &str, paths: Vec<String>, add: bool) -> Vec<String> {
        let mut state = lock(&self.state);
        let set = state.map.entry(host.to_string()).or_default();
        let changed: Vec<String> = paths
            .into_iter()
            .filter(|p| {
                if add {
                    set.insert(p.clone())
                } else {
                    set.remove(p)
                }
            })
            .collect();
        state.map.retain(|_, paths| !paths.is_empty());
        if changed.is_empty() || self.file.is_none() {
            return changed;
        }
        if state.map.is_empty() {
            // Nothing pending: an empty journal (one call, where a rewrite is three).
            let emptied = state.journal.as_ref().map(|j| j.set_len(0));
            match emptied {
                Some(Ok(())) => state.lines = 0,
                _ => self.compact(&mut state),
            }
            return changed;
        }
        if state.lines + changed.len() > COMPACT_AFTER {
            self.compact(&mut state);
            return changed;
        }
        let mut text = String::new();
        for path in &changed {
            journal_line(&mut text, host, path, add);
        }
        let written = match &mut state.journal {
            Some(journal) => journal.write_all(text.as_bytes()),
            None => Err(std::io::Error::other("the journal is not open")),
        };
        match written {
            Ok(()) => state.lines += changed.len(),
            // Whatever happened to the file, a whole rewrite puts it right (or says why not).
            Err(_) => self.compact(&mut state),
        }
        changed
    }

    /// Rewrites the journal as the current list (empty when there is none), then appends to it.
    fn compact(&self, state: &mut State) {
        let Some(path) = &self.file else { return };
        state.journal = None;
        state.lines = 0;
        let mut text = String::new();
        for (host, paths) in &state.map {
            for path in paths {
                journal_line(&mut text, host, path, true);
                state.lines += 1;
            }
        }
        let tmp = path.with_extension("json.tmp");
        let rewritten = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| File::options().append(true).open(path));
        match rewritten {
            Ok(journal) => state.journal = Some(journal),
            Err(e) => tracing::warn!(
                "cannot record pending temporary files in {}: {e}",
                path.display()
            ),
        }
    }
}

/// Appends one change as a JSON line.
fn journal_line(text: &mut String, host: &str, path: &str, add: bool) {
    let line = Change {
        host: host.to_string(),
        path: path.to_string(),
        add,
    };
    if let Ok(json) = serde_json::to_string(&line) {
        text.push_str(&json);
        text.push('\n');
    }
}

/// Replays the journal (or reads the list as earlier versions wrote it, one JSON object).
fn load(path: &Path) -> Map {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Map::new(),
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            return Map::new();
        }
    };
    if let Ok(map) = serde_json::from_str::<Map>(&text) {
        return map;
    }
    let mut map = Map::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Change>(line) {
            Ok(c) if c.add => {
                map.entry(c.host).or_default().insert(c.path);
            }
            Ok(c) => {
                if let Some(set) = map.get_mut(&c.host) {
                    set.remove(&c.path);
                }
            }
            Err(e) => tracing::warn!("ignoring a line of {}: {e}", path.display()),
        }
    }
    map.retain(|_, paths| !paths.is_empty());
    map
}

/// One host's view of the [`PendingStore`].
#[derive(Debug, Clone)]
pub struct PendingTemps {
    store: Arc<PendingStore>,
    host: String,
}

impl Default for PendingTemps {
    /// In memory only, for transfers that leave nothing on the host (downloads).
    fn default() -> PendingTemps {
        Arc::new(PendingStore::default()).for_host("")
    }
}

impl PendingTemps {
    pub fn add(&self, path: &str) {
        self.store.change(&self.host, vec![path.to_string()], true);
    }

    pub fn done(&self, path: &str) {
        self.store.change(&self.host, vec![path.to_string()], false);
    }

    pub fn take(&self) -> Vec<String> {
        let all: Vec<String> = lock(&self.store.state)
            .map
            .get(&self.host)
            .map(|paths| paths.iter().cloned().collect())
            .unwrap_or_default();
        self.store.change(&self.host, all, false)
    }

    pub fn restore(&self, paths: Vec<String>) {
        self.store.change(&self.host, paths, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_files_should_survive_a_restart_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.sock.pending.json");
        let store = PendingStore::open(Some(file.clone()));
        store.for_host("a").add("/x/.f.mcpssh-upload-1.tmp");
        store.for_host("b").add("/y/.g.mcpssh-upload-2.tmp");
        store.for_host("b").done("/y/.g.mcpssh-upload-2.tmp");
        // As a daemon killed now would leave it.
        let again = PendingStore::open(Some(file.clone()));
        assert_eq!(again.for_host("a").take(), ["/x/.f.mcpssh-upload-1.tmp"]);
        assert!(again.for_host("b").take().is_empty());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"",
            "an empty list leaves an empty file"
        );

        // A torn last line (a write cut off) is ignored; the list before it stays.
        std::fs::write(
            &file,
            "{\"host\":\"a\",\"path\":\"/p\",\"add\":true}\n{\"host\":\"a\",\"pa",
        )
        .unwrap();
        let torn = PendingStore::open(Some(file.clone()));
        assert_eq!(torn.for_host("a").take(), ["/p"]);
        // The list as earlier versions wrote it.
        std::fs::write(&file, r#"{"c":["/q"]}"#).unwrap();
        let old = PendingStore::open(Some(file));
        assert_eq!(old.for_host("c").take(), ["/q"]);
    }
}
