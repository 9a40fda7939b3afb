//! Small JSON files the daemon keeps beside its socket (0600 by the daemon's umask), written
//! whole through a temporary file and a rename so a crash never leaves half a file.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reads `path`; `None` when it does not exist or cannot be read or parsed (reported).
pub fn load<T: DeserializeOwned>(path: &Path) -> Option<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| tracing::warn!("ignoring {}: {e}", path.display()))
            .ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("cannot read {}: {e}", path.display());
            None
        }
    }
}

/// Writes `value` to `path` atomically; failures are logged (`what` names the content).
pub fn save<T: Serialize + ?Sized>(path: &Path, value: &T, what: &str) {
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec(value)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!("cannot record {what} in {}: {e}", path.display());
    }
}
