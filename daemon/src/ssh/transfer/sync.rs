//! Directory transfers as syncs: the destination tree is made to match the source, sending only
//! the files whose size or modification time differ (rsync's quick check; with `checksum`, the
//! files whose contents differ), each through the same atomic single-file path as any upload or
//! download, then given the source's modification time and mode so the next run skips it.
//!
//! Nothing outside the destination tree is touched: both trees are listed without following
//! links, a link in the destination where the source has a file or directory is removed (the
//! link, not what it points at) before anything is written there, and `delete` removes only
//! entries listed inside the destination. Links and special files of the source are skipped and
//! counted.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use futures_util::stream::StreamExt;
use sha2::{Digest, Sha256};

use super::super::tree::{self, Filter, Kind, Node, Tree};
use super::{
    Ctx, OpError, Sftp, SshError, TransferKind, TransferOutcome, capture, download_file, fail,
    local_error, phrase, quote, remote_join, upload_file,
};

/// What a directory transfer may do beyond copying.
#[derive(Debug, Clone, Default)]
pub struct SyncOptions {
    /// gitignore-style patterns left out on both sides (never sent, never deleted).
    pub exclude: Vec<String>,
    /// Also honour the source tree's `.gitignore` and `.ignore` files.
    pub gitignore: bool,
    /// Remove destination entries the source does not have.
    pub delete: bool,
    /// Report what would be sent and removed; change nothing.
    pub dry_run: bool,
    /// Compare contents (SHA-256 on both sides) instead of size and modification time.
    pub checksum: bool,
}

impl SyncOptions {
    /// The sync options mean nothing for a single file: asking for them (a dry run above all)
    /// is refused before anything is written, rather than ignored.
    pub(super) fn refuse_for_a_file(&self) -> Result<(), String> {
        let asked: Vec<&str> = [
            (self.dry_run, "dry_run"),
            (!self.exclude.is_empty(), "exclude"),
            (self.gitignore, "gitignore"),
            (self.delete, "delete"),
            (self.checksum, "checksum"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if asked.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} appl{} to directories only; the source is a file, and nothing was transferred",
            asked.join(", "),
            if asked.len() == 1 { "ies" } else { "y" }
        ))
    }
}

/// How many changed and removed paths a result lists (the counts are always whole).
const LISTED: usize = 20;
/// Files sent at once.
const FILES_AT_ONCE: usize = 8;
/// Files per `sha256sum` command on the host.
const HASH_BATCH: usize = 200;

/// What a sync will do, computed from the two listings.
#[derive(Debug, Default)]
struct Plan {
    /// Destination entries in the way, removed first (deepest first).
    clear: Vec<(String, Kind)>,
    /// Directories to create, parents first.
    mkdirs: Vec<(String, u32)>,
    /// Files to send: path, size, modification time, mode.
    send: Vec<(String, u64, i64, u32)>,
    /// Files whose size and time match; with `checksum`, those of the same size, to compare.
    same: Vec<(String, i64, u32)>,
    /// Existing entries whose mode differs (dirs; files are added once found unchanged).
    chmod: Vec<(String, u32)>,
    /// Destination entries the source lacks (with `delete`), deepest first.
    delete: Vec<(String, Kind)>,
    skipped: u32,
}

fn plan(src: &Tree, dst: &Tree, opts: &SyncOptions) -> Result<Plan, String> {
    let mut p = Plan::default();
    let in_the_way = |rel: &str, what: &str, p: &mut Plan, kind: Kind| -> Result<(), String> {
        match kind {
            // A link (or device) in the destination is replaced: never written through.
            Kind::Other => {
                p.clear.push((rel.to_string(), kind));
                Ok(())
            }
            _ if opts.delete => {
                // A directory goes with everything listed below it.
                let below = format!("{rel}/");
                p.clear.extend(
                    dst.entries
                        .range(below.clone()..)
                        .take_while(|(r, _)| r.starts_with(&below))
                        .map(|(r, n)| (r.clone(), n.kind)),
                );
                p.clear.push((rel.to_string(), kind));
                Ok(())
            }
            _ => Err(format!(
                "{rel} is a {what} in the destination where the source has the other kind; remove it, or pass delete: true"
            )),
        }
    };
    for (rel, node) in &src.entries {
        let there = dst.entries.get(rel);
        match node.kind {
            Kind::Other => p.skipped += 1,
            Kind::Dir => match there.map(|n| n.kind) {
                None => p.mkdirs.push((rel.clone(), node.mode)),
                Some(Kind::Dir) => {
                    if there.map(|n| n.mode) != Some(node.mode) {
                        p.chmod.push((rel.clone(), node.mode));
                    }
                }
                Some(kind) => {
                    in_the_way(rel, "file", &mut p, kind)?;
                    p.mkdirs.push((rel.clone(), node.mode));
                }
            },
            Kind::File { size, mtime } => match there.map(|n| n.kind) {
                None => p.send.push((rel.clone(), size, mtime, node.mode)),
                Some(Kind::File {
                    size: dst_size,
                    mtime: dst_mtime,
                }) => {
                    let quick_same = size == dst_size && mtime == dst_mtime;
                    if quick_same || (opts.checksum && size == dst_size) {
                        p.same.push((rel.clone(), mtime, node.mode));
                    } else {
                        p.send.push((rel.clone(), size, mtime, node.mode));
                    }
                }
                Some(kind) => {
                    in_the_way(rel, "directory", &mut p, kind)?;
                    p.send.push((rel.clone(), size, mtime, node.mode));
                }
            },
        }
    }
    if opts.delete {
        p.delete = dst
            .entries
            .iter()
            .filter(|(rel, _)| !src.entries.contains_key(*rel))
            .map(|(rel, n)| (rel.clone(), n.kind))
            .collect();
    }
    // Reverse path order puts every entry before the directory holding it.
    p.clear.sort_by(|a, b| b.0.cmp(&a.0));
    p.clear.dedup_by(|a, b| a.0 == b.0);
    p.delete.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(p)
}

/// Which direction the files go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Up,
    Down,
}

/// Syncs the local directory `local` to the remote `remote` (upload) or the other way.
pub(super) async fn sync_tree(
    ctx: &Ctx<'_>,
    sftp: &Sftp,
    home: &str,
    (local, remote): (&Path, &str),
    upload: bool,
    opts: &SyncOptions,
    verify: bool,
) -> Result<TransferOutcome, SshError> {
    let way = if upload { Way::Up } else { Way::Down };
    let mut filter = Filter::new(&opts.exclude, opts.gitignore)
        .map_err(|e| fail(TransferKind::Other, format!("invalid exclude: {e}")))?;
    let list_remote = async |filter: &mut Filter, read_rules: bool| -> Result<Tree, SshError> {
        match tree::remote(sftp, remote, filter, read_rules).await {
            Ok(tree) => Ok(tree),
            Err(OpError::NotFound) if way == Way::Up => Ok(Tree::default()),
            Err(e) => Err(phrase(ctx, sftp, home, e, "list", remote).await),
        }
    };
    let list_local = |filter: &mut Filter, read_rules: bool| -> std::io::Result<Tree> {
        match tree::local(local, filter, read_rules) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && way == Way::Down => {
                Ok(Tree::default())
            }
            listed => listed,
        }
    };
    let listing_failed = |e| local_error(e, "list", local);
    // The source first: its ignore files make rules that also protect destination entries.
    let (src, dst) = match way {
        Way::Up => {
            let src = list_local(&mut filter, true).map_err(listing_failed)?;
            (src, list_remote(&mut filter, false).await?)
        }
        Way::Down => {
            let src = list_remote(&mut filter, true).await?;
            (src, list_local(&mut filter, false).map_err(listing_failed)?)
        }
    };
    let dest_exists = match way {
        Way::Up => sftp.stat(remote).await.is_ok(),
        Way::Down => local.exists(),
    };
    let mut p = plan(&src, &dst, opts).map_err(|e| fail(TransferKind::Other, e))?;
    let mut outcome = TransferOutcome {
        skipped: p.skipped,
        excluded: src.excluded,
        bytes_total: src
            .entries
            .values()
            .map(|n| match n.kind {
                Kind::File { size, .. } => size,
                _ => 0,
            })
            .sum(),
        dry_run: opts.dry_run,
        ..TransferOutcome::default()
    };
    if opts.checksum && !p.same.is_empty() {
        let differ = differing(ctx, local, remote, &p.same).await?;
        let (changed, same): (Vec<_>, Vec<_>) =
            p.same.drain(..).partition(|(rel, ..)| differ.contains(rel));
        for (rel, mtime, mode) in changed {
            if let Some(Node {
                kind: Kind::File { size, .. },
                ..
            }) = src.entries.get(&rel)
            {
                p.send.push((rel, *size, mtime, mode));
            }
        }
        p.same = same;
    }
    outcome.unchanged = u32::try_from(p.same.len()).unwrap_or(u32::MAX);
    outcome.changed = p
        .send
        .iter()
        .take(LISTED)
        .map(|(rel, ..)| rel.clone())
        .collect();
    outcome.deleted = u32::try_from(p.delete.len()).unwrap_or(u32::MAX);
    outcome.removed = p
        .delete
        .iter()
        .rev()
        .take(LISTED)
        .map(|(rel, _)| rel.clone())
        .collect();
    let to_send: u64 = p.send.iter().map(|f| f.1).sum();
    if opts.dry_run {
        outcome.files = u32::try_from(p.send.len()).unwrap_or(u32::MAX);
        outcome.bytes = to_send;
        return Ok(outcome);
    }
    ctx.progress.send_modify(|pr| {
        pr.bytes_total = to_send;
        pr.files_total = u32::try_from(p.send.len()).unwrap_or(u32::MAX);
    });
    let side = Side {
        ctx,
        sftp,
        home,
        local,
        remote,
        way,
    };
    for (rel, kind) in &p.clear {
        side.remove(rel, *kind).await?;
    }
    let root_mode = match way {
        Way::Up => std::fs::metadata(local).map(|m| m.permissions().mode() & 0o7777),
        Way::Down => Ok(sftp
            .stat(remote)
            .await
            .ok()
            .and_then(|a| a.permissions)
            .unwrap_or(0o755)
            & 0o7777),
    }
    .unwrap_or(0o755);
    if !dest_exists {
        side.mkdir("", root_mode).await?;
    }
    for (rel, mode) in &p.mkdirs {
        side.mkdir(rel, *mode).await?;
    }
    // Several files at once: small files cost round trips more than bytes. After a failure no
    // more start, and those under way finish (none is dropped halfway, leaving its temporary).
    let failed = std::sync::atomic::AtomicBool::new(false);
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let (failed, send) = (&failed, &p.send);
    let mut sends = futures_util::stream::iter(0..send.len())
        .map(|i| {
            let side = &side;
            async move {
                let (rel, size, mtime, mode) = &send[i];
                if failed.load(relaxed) {
                    return (rel, *size, None);
                }
                (rel, *size, Some(side.send(rel, *size, *mode, *mtime).await))
            }
        })
        .buffer_unordered(FILES_AT_ONCE);
    let mut first_error = None;
    while let Some((_, size, sent)) = sends.next().await {
        match sent {
            // Not started: another file failed first.
            None => {}
            Some(Ok(())) => {
                outcome.bytes += size;
                outcome.files += 1;
            }
            Some(Err(e)) => {
                failed.store(true, relaxed);
                first_error.get_or_insert(e);
            }
        }
    }
    drop(sends);
    if let Some(e) = first_error {
        return Err(e);
    }
    for (rel, mtime, mode) in &p.same {
        let there = dst.entries.get(rel);
        if there.map(|n| n.mode) != Some(*mode) {
            p.chmod.push((rel.clone(), *mode));
        }
        // Equal contents found by checksum: the time too, so the next quick check agrees.
        if let Some(Node {
            kind: Kind::File { mtime: t, .. },
            ..
        }) = there
            && t != mtime
        {
            side.set_mtime(rel, *mtime).await?;
        }
    }
    // The destination directory itself keeps its mode when it was there already (it may be
    // a shared one such as /workspace); what is inside follows the source.
    for (rel, mode) in &p.chmod {
        side.chmod(rel, *mode).await?;
    }
    for (rel, kind) in &p.delete {
        side.remove(rel, *kind).await?;
    }
    if verify {
        let files: Vec<(String, i64, u32)> = src
            .entries
            .iter()
            .filter(|(_, n)| matches!(n.kind, Kind::File { .. }))
            .map(|(rel, n)| (rel.clone(), 0, n.mode))
            .collect();
        let host = &ctx.conn.host().name;
        outcome.verification = Some(match differing(ctx, local, remote, &files).await {
            Ok(differ) if differ.is_empty() => (
                true,
                format!(
                    "verified: the SHA-256 of each of the {} files, computed here and on {host}, match",
                    files.len()
                ),
            ),
            Ok(differ) => (
                false,
                format!(
                    "MISMATCH: {} of {} files differ between here and {host} (first: {})",
                    differ.len(),
                    files.len(),
                    differ[0]
                ),
            ),
            Err(e) => (
                false,
                format!("not verified: could not run sha256sum on {host}: {e}"),
            ),
        });
    }
    Ok(outcome)
}

/// The destination side's operations, on the host (upload) or here (download).
struct Side<'a> {
    ctx: &'a Ctx<'a>,
    sftp: &'a Sftp,
    home: &'a str,
    local: &'a Path,
    remote: &'a str,
    way: Way,
}

impl Side<'_> {
    fn remote_path(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.remote.to_string()
        } else {
            remote_join(self.remote, rel)
        }
    }

    fn local_path(&self, rel: &str) -> std::path::PathBuf {
        if rel.is_empty() {
            self.local.to_path_buf()
        } else {
            self.local.join(rel)
        }
    }

    async fn remote_failed(&self, e: OpError, what: &str, path: &str) -> SshError {
        phrase(self.ctx, self.sftp, self.home, e, what, path).await
    }

    async fn remove(&self, rel: &str, kind: Kind) -> Result<(), SshError> {
        match self.way {
            Way::Up => {
                let path = self.remote_path(rel);
                let removed = match kind {
                    Kind::Dir => self.sftp.remove_dir(&path).await,
                    _ => self.sftp.remove(&path).await,
                };
                match removed {
                    Ok(()) | Err(OpError::NotFound) => Ok(()),
                    Err(e) => Err(self.remote_failed(e, "remove", &path).await),
                }
            }
            Way::Down => {
                let path = self.local_path(rel);
                let removed = match kind {
                    Kind::Dir => std::fs::remove_dir(&path),
                    _ => std::fs::remove_file(&path),
                };
                match removed {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(local_error(e, "remove", &path)),
                }
            }
        }
    }

    async fn mkdir(&self, rel: &str, mode: u32) -> Result<(), SshError> {
        match self.way {
            Way::Up => {
                let path = self.remote_path(rel);
                if let Err(e) = self.sftp.mkdir(&path, mode).await {
                    return Err(self.remote_failed(e, "create directory", &path).await);
                }
                Ok(())
            }
            Way::Down => {
                let path = self.local_path(rel);
                std::fs::create_dir(&path)
                    .and_then(|()| {
                        // Kept writable for us while files land in it.
                        std::fs::set_permissions(&path, PermissionsExt::from_mode(mode | 0o700))
                    })
                    .map_err(|e| local_error(e, "create directory", &path))
            }
        }
    }

    async fn chmod(&self, rel: &str, mode: u32) -> Result<(), SshError> {
        match self.way {
            Way::Up => {
                let path = self.remote_path(rel);
                match self.sftp.set_mode(&path, mode).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.remote_failed(e, "change the mode of", &path).await),
                }
            }
            Way::Down => {
                let path = self.local_path(rel);
                std::fs::set_permissions(&path, PermissionsExt::from_mode(mode))
                    .map_err(|e| local_error(e, "change the mode of", &path))
            }
        }
    }

    async fn set_mtime(&self, rel: &str, mtime: i64) -> Result<(), SshError> {
        match self.way {
            Way::Up => {
                let path = self.remote_path(rel);
                let secs = u32::try_from(mtime.max(0)).unwrap_or(u32::MAX);
                match self.sftp.set_mtime(&path, secs).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(self.remote_failed(e, "set the time of", &path).await),
                }
            }
            Way::Down => {
                let path = self.local_path(rel);
                let when = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u64::try_from(mtime.max(0)).unwrap_or(0));
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(when))
                    .map_err(|e| local_error(e, "set the time of", &path))
            }
        }
    }

    /// Sends one file of `size` bytes (atomically) with the source's mode and time.
    async fn send(&self, rel: &str, size: u64, mode: u32, mtime: i64) -> Result<(), SshError> {
        let (local, remote) = (self.local_path(rel), self.remote_path(rel));
        match self.way {
            Way::Up => {
                // Set on the temporary file with its mode, before the rename: no extra request.
                let secs = u32::try_from(mtime.max(0)).unwrap_or(u32::MAX);
                let attrs = (mode, Some(secs));
                upload_file(self.ctx, self.sftp, self.home, &local, &remote, attrs).await?;
                Ok(())
            }
            Way::Down => {
                let attrs = (mode, size);
                download_file(self.ctx, self.sftp, self.home, &remote, &local, attrs).await?;
                self.set_mtime(rel, mtime).await
            }
        }
    }
}

/// Of `files` (same size on both sides), those whose SHA-256 differs.
async fn differing(
    ctx: &Ctx<'_>,
    local: &Path,
    remote: &str,
    files: &[(String, i64, u32)],
) -> Result<Vec<String>, SshError> {
    let rels: Vec<&str> = files.iter().map(|(rel, ..)| rel.as_str()).collect();
    let theirs = remote_hashes(ctx, remote, &rels).await?;
    let root = local.to_path_buf();
    let names: Vec<String> = rels.iter().map(|r| r.to_string()).collect();
    let ours = tokio::task::spawn_blocking(move || local_hashes(&root, &names))
        .await
        .unwrap_or_default();
    // A file either side could not hash counts as different: it is sent.
    Ok(rels
        .iter()
        .filter(|rel| {
            let (a, b) = (ours.get(**rel), theirs.get(**rel));
            a.is_none() || a != b
        })
        .map(|rel| rel.to_string())
        .collect())
}

/// SHA-256 of each file under `root`, by relative path (files that cannot be read are left out).
fn local_hashes(root: &Path, rels: &[String]) -> BTreeMap<String, String> {
    rels.iter()
        .filter_map(|rel| {
            use std::io::Read;
            let mut file = std::fs::File::open(root.join(rel)).ok()?;
            let mut hasher = Sha256::new();
            let mut block = vec![0u8; 256 * 1024];
            loop {
                match file.read(&mut block).ok()? {
                    0 => break,
                    n => hasher.update(&block[..n]),
                }
            }
            Some((rel.clone(), hex::encode(hasher.finalize())))
        })
        .collect()
}

/// SHA-256 of each file under `root` on the host, computed there with `sha256sum`.
async fn remote_hashes(
    ctx: &Ctx<'_>,
    root: &str,
    rels: &[&str],
) -> Result<BTreeMap<String, String>, SshError> {
    let mut found = BTreeMap::new();
    for batch in rels.chunks(HASH_BATCH) {
        let args: Vec<String> = batch.iter().map(|rel| quote(rel)).collect();
        let command = format!(
            "cd -- {} && sha256sum -- {} 2>/dev/null",
            quote(root),
            args.join(" ")
        );
        let output = capture(ctx.conn, &command).await?;
        for line in output.lines() {
            // Names with a backslash or newline come escaped (a leading '\'): not matched, so
            // those files are sent.
            if let Some((hash, name)) = line.split_once("  ")
                && hash.len() == 64
            {
                found.insert(name.to_string(), hash.to_string());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mtime: i64) -> Node {
        Node {
            kind: Kind::File { size, mtime },
            mode: 0o644,
        }
    }

    fn tree(entries: &[(&str, Node)]) -> Tree {
        Tree {
            entries: entries.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            excluded: 0,
        }
    }

    const DIR: Node = Node {
        kind: Kind::Dir,
        mode: 0o755,
    };
    const LINK: Node = Node {
        kind: Kind::Other,
        mode: 0o777,
    };

    #[test]
    fn the_plan_should_send_only_what_differs_and_replace_links() {
        let src = tree(&[
            ("a", file(1, 10)),
            ("b", file(2, 10)),
            ("d", DIR),
            ("d/c", file(3, 10)),
            ("l", LINK),
        ]);
        let dst = tree(&[
            ("a", file(1, 10)),
            ("b", file(2, 11)),
            ("d", LINK),
            ("old", file(1, 1)),
            ("olddir", DIR),
            ("olddir/x", file(1, 1)),
        ]);
        let p = plan(&src, &dst, &SyncOptions::default()).unwrap();
        assert_eq!(p.same.len(), 1);
        let sent: Vec<&str> = p.send.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(sent, ["b", "d/c"]);
        assert_eq!(p.clear, [("d".to_string(), Kind::Other)]);
        assert_eq!(p.mkdirs, [("d".to_string(), 0o755)]);
        assert!(p.delete.is_empty());
        assert_eq!(p.skipped, 1);
        let deleting = SyncOptions {
            delete: true,
            ..SyncOptions::default()
        };
        let p = plan(&src, &dst, &deleting).unwrap();
        let gone: Vec<&str> = p.delete.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(gone, ["olddir/x", "olddir", "old"], "children first");
        // A directory where the source has a file is an error unless deleting.
        let dst = tree(&[("a", DIR), ("a/x", file(1, 1))]);
        let src = tree(&[("a", file(1, 1))]);
        assert!(plan(&src, &dst, &SyncOptions::default()).is_err());
        let p = plan(&src, &dst, &deleting).unwrap();
        assert_eq!(
            p.clear,
            [
                ("a/x".to_string(), Kind::File { size: 1, mtime: 1 }),
                ("a".to_string(), Kind::Dir)
            ]
        );
    }
}
