//! Host key verification against OpenSSH `known_hosts` files.
//!
//! Written here rather than using russh's helper because we need what it lacks: correct line
//! numbers for the "changed key" message (it skips comment lines when counting), wildcard and
//! negated host patterns, `@revoked` and `@cert-authority` markers, any whitespace between
//! fields, and lines with key types we cannot parse being skipped instead of failing the check.

use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;
use sha1::Sha1;

/// What the known_hosts files say about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    Unknown,
    /// The host is listed with a different key of the same type.
    Changed {
        path: PathBuf,
        line: usize,
    },
    /// The key is listed as `@revoked`.
    Revoked {
        path: PathBuf,
        line: usize,
    },
}

/// How OpenSSH names a host in known_hosts: `host` on port 22, `[host]:port` otherwise.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` for `host:port` against every file in `files` (missing files are skipped).
pub fn check(files: &[PathBuf], host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = host_pattern(host, port);
    let mut changed = None;
    for path in files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            match check_line(line, &name, key) {
                LineMatch::None => {}
                LineMatch::Same => return Verdict::Known,
                LineMatch::Revoked => {
                    return Verdict::Revoked {
                        path: path.clone(),
                        line: line_no,
                    };
                }
                LineMatch::Different => {
                    changed.get_or_insert(Verdict::Changed {
                        path: path.clone(),
                        line: line_no,
                    });
                }
            }
        }
    }
    changed.unwrap_or(Verdict::Unknown)
}

enum LineMatch {
    None,
    Same,
    Different,
    Revoked,
}

fn check_line(line: &str, name: &str, key: &PublicKey) -> LineMatch {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return LineMatch::None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next().unwrap_or_default();
    let mut revoked = false;
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            // CA lines certify other keys; plain host keys never match them.
            _ => return LineMatch::None,
        }
        first = fields.next().unwrap_or_default();
    }
    let (Some(_key_type), Some(blob)) = (fields.next(), fields.next()) else {
        return LineMatch::None;
    };
    if !hosts_match(first, name) {
        return LineMatch::None;
    }
    let Ok(recorded) = russh::keys::parse_public_key_base64(blob) else {
        return LineMatch::None;
    };
    let same = recorded.key_data() == key.key_data();
    match (revoked, same) {
        (true, true) => LineMatch::Revoked,
        (true, false) => LineMatch::None,
        (false, true) => LineMatch::Same,
        (false, false) if recorded.algorithm() == key.algorithm() => LineMatch::Different,
        (false, false) => LineMatch::None,
    }
}

/// OpenSSH's host field: comma-separated patterns, `*`/`?` wildcards, `!` negation (a negated
/// match rules the line out), or a single hashed entry `|1|salt|hash`.
fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(hashed) = field.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut matched = false;
    for pattern in field.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, name) {
                return false;
            }
        } else if wildcard_match(pattern, name) {
            matched = true;
        }
    }
    matched
}

fn hashed_match(hashed: &str, name: &str) -> bool {
    let mut parts = hashed.split('|');
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let Ok(mac) = Hmac::<Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// Case-insensitive glob with `*` and `?`, as OpenSSH's `match_pattern`.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ni;
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ni = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// Appends `host:port`'s key to `file` as `ssh` writes it (`host` on port 22, `[host]:port`
/// otherwise, unhashed), creating the file (0600) and its directory (0700) when missing, so
/// plain `ssh` trusts the host from then on too.
pub fn record(file: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let key = key.to_openssh().map_err(std::io::Error::other)?;
    // The comment, if the key carries one, is not part of what ssh matches.
    let mut fields = key.split_whitespace();
    let (Some(algorithm), Some(data)) = (fields.next(), fields.next()) else {
        return Err(std::io::Error::other("the key has no OpenSSH form"));
    };
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    // A file not ending in a newline would glue our line to its last one.
    let ends_clean = std::fs::read(file).map_or(true, |t| t.is_empty() || t.ends_with(b"\n"));
    let lead = if ends_clean { "" } else { "\n" };
    writeln!(out, "{lead}{} {algorithm} {data}", host_pattern(host, port))?;
    out.sync_data()
}

/// Where to point the user when the first known_hosts file is meant.
pub fn primary_file(files: &[PathBuf]) -> &Path {
    files
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("~/.ssh/known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBmzCuHxpHmkKnpYBOsZOm3IL5QjAa5HqZFYT6B1BHfA";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    fn check_text(text: &str, host: &str, port: u16, k: &str) -> Verdict {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).unwrap();
        match check(&[path], host, port, &key(k)) {
            Verdict::Changed { line, .. } => Verdict::Changed {
                path: PathBuf::new(),
                line,
            },
            Verdict::Revoked { line, .. } => Verdict::Revoked {
                path: PathBuf::new(),
                line,
            },
            v => v,
        }
    }

    #[test]
    fn plain_and_bracketed_entries_should_match() {
        let text =
            format!("example.org ssh-ed25519 {KEY_A}\n[10.0.0.1]:2222 ssh-ed25519 {KEY_B}\n");
        assert_eq!(check_text(&text, "example.org", 22, KEY_A), Verdict::Known);
        assert_eq!(check_text(&text, "10.0.0.1", 2222, KEY_B), Verdict::Known);
        assert_eq!(check_text(&text, "10.0.0.1", 22, KEY_B), Verdict::Unknown);
    }

    #[test]
    fn changed_key_should_name_the_real_line_counting_comments() {
        let text = format!(
            "# comment\n\nother ssh-ed25519 {KEY_B}\nexample.org   ssh-ed25519  {KEY_B} c\n"
        );
        assert_eq!(
            check_text(&text, "example.org", 22, KEY_A),
            Verdict::Changed {
                path: PathBuf::new(),
                line: 4
            }
        );
    }

    #[test]
    fn a_second_matching_line_should_win_over_a_stale_one() {
        let text = format!("example.org ssh-ed25519 {KEY_B}\nexample.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(check_text(&text, "example.org", 22, KEY_A), Verdict::Known);
    }

    #[test]
    fn hashed_entries_should_match() {
        // HMAC-SHA1 of "[127.0.0.1]:2222" with this salt, as `ssh-keygen -H` writes it.
        let salt = [7u8; 20];
        let mac = Hmac::<Sha1>::new_from_slice(&salt)
            .unwrap()
            .chain_update(b"[127.0.0.1]:2222");
        let hash = mac.finalize().into_bytes();
        let text = format!(
            "|1|{}|{} ssh-ed25519 {KEY_A}\n",
            BASE64.encode(&salt),
            BASE64.encode(&hash)
        );
        assert_eq!(check_text(&text, "127.0.0.1", 2222, KEY_A), Verdict::Known);
        assert_eq!(
            check_text(&text, "127.0.0.2", 2222, KEY_A),
            Verdict::Unknown
        );
    }

    #[test]
    fn wildcards_negation_and_markers_should_follow_openssh() {
        let text = format!("*.example.org,!bad.example.org ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            check_text(&text, "a.example.org", 22, KEY_A),
            Verdict::Known
        );
        assert_eq!(
            check_text(&text, "bad.example.org", 22, KEY_A),
            Verdict::Unknown
        );
        let text = format!("@cert-authority * ssh-ed25519 {KEY_A}\n");
        assert_eq!(check_text(&text, "x", 22, KEY_A), Verdict::Unknown);
        let text = format!("@revoked * ssh-ed25519 {KEY_A}\nx ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            check_text(&text, "x", 22, KEY_A),
            Verdict::Revoked {
                path: PathBuf::new(),
                line: 1
            }
        );
    }

    #[test]
    fn other_key_types_and_garbage_should_not_count_as_changed() {
        let text = "x ecdsa-sha2-nistp256 AAAAnotbase64!!\nx ssh-rsa\n".to_string();
        assert_eq!(check_text(&text, "x", 22, KEY_A), Verdict::Unknown);
    }

    #[test]
    fn glob_should_match_like_openssh() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("h?st", "host"));
        assert!(wildcard_match("HOST*", "host.example"));
        assert!(!wildcard_match("h*z", "host"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

        /// A known_hosts file is untrusted text: any content gives a verdict, never a panic,
        /// and a garbage line never makes an unknown key known.
        #[test]
        fn arbitrary_lines_should_never_panic_or_trust(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "\\PC{0,80}",
                    "(@revoked |@cert-authority )?(\\[?[a-z0-9.*?!,|=]{0,20}\\]?(:[0-9]{1,5})?) ssh-ed25519 [A-Za-z0-9+/=]{0,70}",
                ],
                0..8,
            ),
            port in 1u16..,
        ) {
            let text = lines.join("\n");
            let verdict = check_text(&text, "example.org", port, KEY_A);
            proptest::prop_assert!(verdict != Verdict::Known || text.contains(KEY_A));
        }
    }
}
