//! Resuming a large file from the temporary file an earlier, cut-off run of the same transfer
//! kept (see `crate::partials`). The kept part is trusted only after its SHA-256 is computed on
//! both sides and found equal: on the host with `head -c N | sha256sum`, here from the file.
//! When it differs, or the host cannot compute it, the transfer starts over and says why.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Connection, SshError, TransferKind, capture, fail, quote};
use crate::partials::{Claim, Partial};

/// Files from this size on keep their temporary file when cut off; below it, starting over
/// costs less than checking what is there.
pub const RESUME_MIN: u64 = 8 * 1024 * 1024;
/// When the daemon was stopped before it could record how much was written, this much of the end
/// of the kept file is sent again: writes still in flight then may have left holes there.
const UNSURE_TAIL: u64 = 8 * 1024 * 1024;

/// The temporary file's name, the same for every run of one transfer.
pub fn temp_name(name: &str, id: &str) -> String {
    format!(".{name}.mcpssh-part-{id}.tmp")
}

/// Where a transfer starts, decided from what an earlier run kept.
#[derive(Debug, Default)]
pub struct Start {
    /// Bytes already in place (checked); 0 starts over.
    pub from: u64,
    /// The source's SHA-256 state after `from` bytes, when the whole file's hash is wanted.
    pub hasher: Option<Sha256>,
    /// Why a kept part was not used.
    pub note: Option<String>,
}

/// How much of a kept temporary of `found` bytes is worth checking, for a source of `size`.
pub fn candidate(earlier: Option<&Partial>, found: u64, size: u64) -> u64 {
    let known = match earlier.and_then(|p| p.kept) {
        Some(kept) => kept.min(found),
        None => found.saturating_sub(UNSURE_TAIL),
    };
    known.min(size)
}

/// Checks the first `len` bytes of `local` against those of `remote` on the host; `hash` keeps
/// the local hasher for the whole file. Any doubt starts over.
pub async fn check(
    conn: &Connection,
    local: &Path,
    remote: &str,
    len: u64,
    hash: bool,
    upload: bool,
) -> Result<Start, SshError> {
    let what = if upload { "upload" } else { "download" };
    let path = local.to_path_buf();
    let here = tokio::task::spawn_blocking(move || prefix_hash(&path, len));
    let there = remote_prefix(conn, remote, len);
    let (here, there) = tokio::join!(here, there);
    let here = here
        .map_err(|e| fail(TransferKind::Other, format!("local reader failed: {e}")))?
        .map_err(|e| super::local_error(e, "read", local))?;
    let over = |why: String| Start {
        note: Some(why),
        ..Start::default()
    };
    let there = match there {
        Ok(sha) => sha,
        Err(why) => {
            return Ok(over(format!(
                "the kept part of an earlier {what} could not be checked ({why}), so it started over"
            )));
        }
    };
    if hex::encode(here.clone().finalize()) != there {
        return Ok(over(format!(
            "the kept part of an earlier {what} did not match the source (SHA-256 of its first {len} bytes), so it started over"
        )));
    }
    Ok(Start {
        from: len,
        hasher: hash.then_some(here),
        note: None,
    })
}

/// SHA-256 state after the first `len` bytes of a local file.
pub fn prefix_hash(path: &Path, len: u64) -> std::io::Result<Sha256> {
    let file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut limited = file.take(len);
    let mut block = vec![0u8; super::BLOCK];
    let mut total = 0;
    loop {
        let n = limited.read(&mut block)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&block[..n]);
    }
    if total < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file is shorter than it was",
        ));
    }
    Ok(hasher)
}

/// SHA-256 (hex) of the first `len` bytes of a remote file, computed on the host.
async fn remote_prefix(conn: &Connection, path: &str, len: u64) -> Result<String, String> {
    let path = quote(path);
    // A failing `head` adds a byte, so its output cannot pass for the real prefix.
    let command = format!(
        "{{ head -c {len} -- {path} || echo failed; }} | {{ sha256sum 2>/dev/null || shasum -a 256; }}"
    );
    let output = capture(conn, &command).await.map_err(|e| e.to_string())?;
    let sha = output.split_whitespace().next().unwrap_or_default();
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha.to_string())
    } else {
        Err(format!(
            "{} has neither sha256sum nor shasum",
            conn.host().name
        ))
    }
}

/// A claimed transfer refused before it wrote anything: its record goes back to what an earlier
/// run left.
pub fn untouched(claim: Option<(Claim, Option<Partial>)>) {
    if let Some((claim, earlier)) = claim {
        claim.untouched(earlier);
    }
}

/// Whether a transfer that failed this way is worth resuming: it was cut off, not refused.
pub fn worth_keeping(e: &SshError) -> bool {
    matches!(
        e,
        SshError::ConnectionLost { .. }
            | SshError::Transfer {
                kind: TransferKind::Cancelled | TransferKind::Timeout,
                ..
            }
    )
}

/// Adds what was kept to the error's message.
pub fn noting(e: SshError, note: &str) -> SshError {
    match e {
        SshError::ConnectionLost { target, reason } => SshError::ConnectionLost {
            target,
            reason: format!("{reason}; {note}"),
        },
        SshError::Transfer { kind, message } => SshError::Transfer {
            kind,
            message: format!("{message}; {note}"),
        },
        e => e,
    }
}

/// "the first N bytes (128.0 MiB) are kept on the host in PATH, and the same upload asked again
/// resumes from them after checking them".
pub fn kept_note(kept: u64, temp: &str, upload: bool) -> String {
    let (what, place) = if upload {
        ("upload", "on the host")
    } else {
        ("download", "here")
    };
    format!(
        "the first {kept} bytes ({:.1} MiB) are kept {place} in {temp}, and the same {what} asked again resumes from them after checking them",
        kept as f64 / 1_048_576.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_candidate_should_trust_only_what_was_recorded() {
        let mib = 1024 * 1024;
        let mut p = Partial {
            id: "i".into(),
            host: "h".into(),
            upload: true,
            temp: "t".into(),
            source: "s".into(),
            destination: "d".into(),
            size: 100 * mib,
            kept: Some(40 * mib),
            at_ms: 0,
        };
        assert_eq!(candidate(Some(&p), 50 * mib, 100 * mib), 40 * mib);
        assert_eq!(candidate(Some(&p), 30 * mib, 100 * mib), 30 * mib);
        p.kept = None;
        assert_eq!(candidate(Some(&p), 50 * mib, 100 * mib), 42 * mib);
        assert_eq!(candidate(None, 4 * mib, 100 * mib), 0);
        assert_eq!(candidate(None, 200 * mib, 100 * mib), 100 * mib);
    }

    #[test]
    fn the_prefix_hash_should_cover_exactly_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").unwrap();
        let h = prefix_hash(&path, 5).unwrap();
        assert_eq!(h.finalize(), Sha256::digest(b"hello"));
        assert!(prefix_hash(&path, 50).is_err());
    }
}
