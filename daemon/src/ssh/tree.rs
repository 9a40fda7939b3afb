//! A directory tree as a sync sees it, on either side: every entry by its path relative to the
//! tree's root, with what a quick check compares (size, modification time, mode). Entries are
//! listed without following symbolic links (SFTP's READDIR and `symlink_metadata` both describe
//! the link itself), so nothing a link points at is ever read, written or removed.
//!
//! `Filter` holds what a sync leaves out: the call's `exclude` patterns and, with `gitignore`,
//! the `.gitignore` and `.ignore` files of the source tree, both matched with the `ignore`
//! crate's gitignore matcher. Each directory's rules apply below it, the deepest decisive one
//! winning, as git does; an excluded directory is not entered.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use russh_sftp::protocol::{FileAttributes, FileType};

use super::sftp::{OpResult, Sftp};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File {
        size: u64,
        mtime: i64,
    },
    Dir,
    /// A symbolic link, a device, a socket: never transferred (counted as skipped).
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
}

/// Relative path (`a/b`, `/`-separated) → entry; the root itself is not in it.
#[derive(Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<String, Node>,
    /// Entries left out by the filter.
    pub excluded: u32,
}

/// Names of the files whose rules `gitignore: true` honours, lowest precedence first.
const RULE_FILES: [&str; 2] = [".gitignore", ".ignore"];
/// An ignore file larger than this is not read (a mistake, not a rule set).
const MAX_RULES_BYTES: u64 = 1 << 20;

pub struct Filter {
    excludes: Gitignore,
    gitignore: bool,
    /// Each directory's own rules, by its relative path ("" for the root).
    dirs: Vec<(String, Gitignore)>,
}

fn virtual_path(rel: &str) -> PathBuf {
    Path::new("/").join(rel)
}

impl Filter {
    /// `exclude` patterns (gitignore syntax); with `gitignore`, ignore files found while listing
    /// the source tree add their rules.
    pub fn new(exclude: &[String], gitignore: bool) -> Result<Filter, String> {
        let mut builder = GitignoreBuilder::new("/");
        for pattern in exclude {
            builder
                .add_line(None, pattern)
                .map_err(|e| format!("exclude pattern {pattern:?}: {e}"))?;
        }
        let excludes = builder
            .build()
            .map_err(|e| format!("exclude patterns: {e}"))?;
        Ok(Filter {
            excludes,
            gitignore,
            dirs: Vec::new(),
        })
    }

    /// Adds the rules of directory `dir`'s ignore files (their texts, in [`RULE_FILES`] order).
    fn add_rules(&mut self, dir: &str, texts: &[String]) {
        if texts.is_empty() {
            return;
        }
        let mut builder = GitignoreBuilder::new(virtual_path(dir));
        for text in texts {
            for line in text.lines() {
                // A line the matcher cannot parse is skipped, as git skips it.
                let _ = builder.add_line(None, line);
            }
        }
        if let Ok(rules) = builder.build() {
            self.dirs.push((dir.to_string(), rules));
        }
    }

    /// Whether the entry at `rel` is left out.
    pub fn excluded(&self, rel: &str, is_dir: bool) -> bool {
        let path = virtual_path(rel);
        if self.excludes.matched(&path, is_dir).is_ignore() {
            return true;
        }
        // The deepest directory with a rule about it decides.
        for (dir, rules) in self.dirs.iter().rev() {
            let applies = dir.is_empty()
                || rel
                    .strip_prefix(dir.as_str())
                    .is_some_and(|below| below.starts_with('/'));
            if !applies {
                continue;
            }
            match rules.matched(&path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Lists the local tree at `root` (which must be a directory). With `read_rules`, ignore files
/// found add their rules to `filter` before their directory's entries are matched.
pub fn local(root: &Path, filter: &mut Filter, read_rules: bool) -> std::io::Result<Tree> {
    let mut tree = Tree::default();
    let mut queue = vec![String::new()];
    while let Some(rel) = queue.pop() {
        let dir = root.join(&rel);
        if read_rules && filter.gitignore {
            let texts: Vec<String> = RULE_FILES
                .iter()
                .filter_map(|name| {
                    let path = dir.join(name);
                    let meta = std::fs::symlink_metadata(&path).ok()?;
                    (meta.is_file() && meta.len() <= MAX_RULES_BYTES)
                        .then(|| std::fs::read_to_string(&path).ok())
                        .flatten()
                })
                .collect();
            filter.add_rules(&rel, &texts);
        }
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let child = join(&rel, &entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(entry.path())?;
            let kind = if meta.is_dir() {
                Kind::Dir
            } else if meta.is_file() {
                Kind::File {
                    size: meta.len(),
                    mtime: meta.mtime(),
                }
            } else {
                Kind::Other
            };
            if filter.excluded(&child, kind == Kind::Dir) {
                tree.excluded += 1;
                continue;
            }
            if kind == Kind::Dir {
                queue.push(child.clone());
            }
            let mode = meta.permissions().mode() & 0o7777;
            tree.entries.insert(child, Node { kind, mode });
        }
    }
    Ok(tree)
}

/// An SFTP entry's kind, judged on its exact file type (a link's mode bits contain those of a
/// regular file: `is_regular()` would take a link for a file).
pub fn remote_kind(attrs: &FileAttributes) -> Kind {
    match attrs.file_type() {
        FileType::Dir => Kind::Dir,
        FileType::File => Kind::File {
            size: attrs.len(),
            mtime: i64::from(attrs.mtime.unwrap_or(0)),
        },
        FileType::Symlink | FileType::Other => Kind::Other,
    }
}

/// Lists the remote tree at `root` as [`local`] does.
pub async fn remote(
    sftp: &Sftp,
    root: &str,
    filter: &mut Filter,
    read_rules: bool,
) -> OpResult<Tree> {
    let mut tree = Tree::default();
    let mut queue = vec![String::new()];
    while let Some(rel) = queue.pop() {
        let dir = if rel.is_empty() {
            root.to_string()
        } else {
            format!("{}/{rel}", root.trim_end_matches('/'))
        };
        let entries = sftp.list(&dir).await?;
        if read_rules && filter.gitignore {
            let mut texts = Vec::new();
            for name in RULE_FILES {
                let found = entries.iter().find(|e| e.name == name);
                if let Some(e) = found
                    && matches!(remote_kind(&e.attrs), Kind::File { .. })
                    && e.attrs.len() <= MAX_RULES_BYTES
                    && let Ok(data) = sftp.read_whole(&format!("{dir}/{name}")).await
                {
                    texts.push(String::from_utf8_lossy(&data).into_owned());
                }
            }
            filter.add_rules(&rel, &texts);
        }
        for entry in entries {
            let child = join(&rel, &entry.name);
            let kind = remote_kind(&entry.attrs);
            if filter.excluded(&child, kind == Kind::Dir) {
                tree.excluded += 1;
                continue;
            }
            if kind == Kind::Dir {
                queue.push(child.clone());
            }
            let mode = entry.attrs.permissions.unwrap_or(0o644) & 0o7777;
            tree.entries.insert(child, Node { kind, mode });
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_and_ignore_files_should_decide_like_git() {
        let mut f = Filter::new(&["*.log".into(), "/build/".into()], true).unwrap();
        f.add_rules("", &["target/\n*.tmp\n!keep.tmp\n".into()]);
        f.add_rules("sub", &["local.txt\n".into(), "!*.log\n".into()]);
        assert!(f.excluded("a.log", false));
        assert!(f.excluded("build", true));
        assert!(!f.excluded("src/build", true), "anchored to the root");
        assert!(f.excluded("target", true));
        assert!(
            !f.excluded("target", false),
            "target/ names directories only"
        );
        assert!(f.excluded("x.tmp", false));
        assert!(!f.excluded("keep.tmp", false));
        assert!(f.excluded("sub/local.txt", false));
        assert!(!f.excluded("local.txt", false), "sub's rules stay in sub");
        // The call's excludes win over an ignore file's negation.
        assert!(f.excluded("sub/x.log", false));
        assert!(Filter::new(&["[z-a]".into()], false).is_err());
    }
}
