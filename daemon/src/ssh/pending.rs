//! Remote temporary files of uploads that were cut off with their connection, per host. They are
//! removed once the host is reached again; the list is also kept in a file beside the socket
//! (`<socket>.pending.json`, 0600) so that a daemon restarted in between still removes them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

type Map = BTreeMap<String, BTreeSet<String>>;

/// Every host's pending files, and where they are kept.
#[derive(Debug, Default)]
pub struct PendingStore {
    file: Option<PathBuf>,
    map: Mutex<Map>,
}

impl PendingStore {
    /// Loads `file` if it exists (an unreadable one is reported and replaced); `None` keeps
    /// the list in memory only.
    pub fn open(file: Option<PathBuf>) -> Arc<PendingStore> {
        let map = file
            .as_deref()
            .and_then(crate::state_file::load::<Map>)
            .unwrap_or_default();
        Arc::new(PendingStore {
            file,
            map: Mutex::new(map),
        })
    }

    /// The pending files of one host.
    pub fn for_host(self: &Arc<Self>, host: &str) -> PendingTemps {
        PendingTemps {
            store: self.clone(),
            host: host.to_string(),
        }
    }

    /// Applies `f` to `host`'s set; the file is rewritten only when `f` says it changed it.
    fn change(&self, host: &str, f: impl FnOnce(&mut BTreeSet<String>) -> bool) {
        let mut map = lock(&self.map);
        let changed = f(map.entry(host.to_string()).or_default());
        map.retain(|_, paths| !paths.is_empty());
        if changed {
            self.save(&map);
        }
    }

    /// Writes the list beside the socket (temporary file, then rename); removes it when empty.
    fn save(&self, map: &Map) {
        let Some(path) = &self.file else { return };
        if map.is_empty() {
            let _ = std::fs::remove_file(path);
            return;
        }
        crate::state_file::save(path, map, "pending temporary files");
    }
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
        self.store
            .change(&self.host, |paths| paths.insert(path.to_string()));
    }

    pub fn done(&self, path: &str) {
        self.store.change(&self.host, |paths| paths.remove(path));
    }

    pub fn take(&self) -> Vec<String> {
        let mut taken = Vec::new();
        self.store.change(&self.host, |paths| {
            taken = std::mem::take(paths).into_iter().collect();
            !taken.is_empty()
        });
        taken
    }

    pub fn restore(&self, paths: Vec<String>) {
        self.store.change(&self.host, |kept| {
            let before = kept.len();
            kept.extend(paths);
            kept.len() != before
        });
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
        let again = PendingStore::open(Some(file.clone()));
        assert_eq!(again.for_host("a").take(), ["/x/.f.mcpssh-upload-1.tmp"]);
        assert!(again.for_host("b").take().is_empty());
        assert!(!file.exists(), "an empty list leaves no file");
    }
}
