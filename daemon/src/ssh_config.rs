//! The user's OpenSSH client configuration (`~/.ssh/config`), read the way `ssh` reads it.
//!
//! A host is resolved by running `ssh -G` (OpenSSH's own evaluation: first value wins, `Host`
//! patterns with negation, `Include`, every `Match` form, tokens), so a host resolves exactly
//! as the user's `ssh HOST` would. Only the list of concrete `Host` aliases that
//! `ssh_config_hosts` imports is read here, since `ssh -G` cannot list them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::HostKeyPolicy;
use crate::ssh::known_hosts::wildcard_match;

/// Include depth OpenSSH allows.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Which ssh configuration to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfigFile {
    /// The user configuration file.
    pub path: PathBuf,
    /// Whether that is the file `ssh` reads by itself (then `ssh -G` runs without `-F`, and
    /// also reads the system-wide `/etc/ssh/ssh_config`, exactly as `ssh HOST` does).
    own: bool,
}

/// What `ssh -G` says about one host, in the terms hosts.json uses. `None`: OpenSSH's default,
/// which leaves mcp-ssh's own default in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub hostname: String,
    pub user: String,
    pub port: u16,
    /// IdentityFile entries, in order, `~` and tokens expanded; `None` when only OpenSSH's
    /// default list is there (the daemon then tries ssh-agent and its own default keys).
    pub identity_files: Option<Vec<PathBuf>>,
    pub identities_only: bool,
    pub proxy_jump: Option<String>,
    pub proxy_command: Option<String>,
    /// UserKnownHostsFile when not OpenSSH's default.
    pub known_hosts_files: Option<Vec<PathBuf>>,
    pub host_key_policy: Option<HostKeyPolicy>,
    pub connect_timeout: Option<Duration>,
    /// ServerAliveInterval (when not 0, OpenSSH's default) and ServerAliveCountMax.
    pub keepalive: Option<(Duration, u64)>,
}

/// The home directory `ssh` uses: the password database's, not `$HOME`.
fn ssh_home() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.dir)
}

fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

/// `~` and `~/…` with `ssh`'s home directory.
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix('~'), ssh_home()) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            home.join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(path),
    }
}

impl SshConfigFile {
    /// `setting` is hosts.json's `ssh_config_file` (already `~`-expanded with `$HOME`), or
    /// `None` for the default `$HOME/.ssh/config`.
    pub fn new(setting: Option<PathBuf>) -> SshConfigFile {
        let default = crate::config::expand_tilde("~/.ssh/config");
        let path = setting.unwrap_or(default);
        let own = ssh_home().is_some_and(|home| home.join(".ssh/config") == path);
        SshConfigFile { path, own }
    }

    /// Resolves `alias` as `ssh [-l user] [-p port] alias` would.
    pub fn resolve(
        &self,
        alias: &str,
        user: Option<&str>,
        port: Option<u16>,
    ) -> Result<Resolved, String> {
        if alias.starts_with('-') || alias.contains(char::is_whitespace) {
            return Err(format!("{alias:?} is not a host alias"));
        }
        let mut command = Command::new("ssh");
        command.arg("-G");
        if !self.own {
            command.arg("-F").arg(&self.path);
        }
        if let Some(user) = user {
            command.arg("-l").arg(user);
        }
        if let Some(port) = port {
            command.arg("-p").arg(port.to_string());
        }
        let output = command
            .arg("--")
            .arg(alias)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "resolving ssh_config hosts needs OpenSSH's `ssh` \
                     (it reads ~/.ssh/config exactly as ssh does): install openssh-client"
                    .to_string(),
                _ => format!("cannot run `ssh -G`: {e}"),
            })?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said
                .lines()
                .filter(|l| !l.starts_with("Pseudo-terminal"))
                .collect::<Vec<_>>()
                .join(" / ");
            return Err(format!(
                "`ssh -G {alias}` with {} failed: {}",
                self.path.display(),
                said.trim()
            ));
        }
        Ok(parse_g(&String::from_utf8_lossy(&output.stdout)))
    }

    /// The concrete aliases (`Host` patterns without wildcards or negation) of the file and
    /// the files it includes, in order, each once.
    pub fn aliases(&self) -> Result<Vec<String>, String> {
        let mut found = Vec::new();
        read_aliases(&self.path, 0, &mut found)?;
        Ok(found)
    }
}

/// Reads `ssh -G` output.
fn parse_g(text: &str) -> Resolved {
    let mut r = Resolved::default();
    let (mut identities, mut interval, mut count_max) = (Vec::new(), 0u64, 3u64);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value = value.trim();
        match key {
            "hostname" => r.hostname = value.to_string(),
            "user" => r.user = value.to_string(),
            "port" => r.port = value.parse().unwrap_or(22),
            "identityfile" => identities.push(value.to_string()),
            "identitiesonly" => r.identities_only = value == "yes",
            "proxyjump" if value != "none" => r.proxy_jump = Some(value.to_string()),
            "proxycommand" if value != "none" => r.proxy_command = Some(value.to_string()),
            "userknownhostsfile" => {
                let files: Vec<PathBuf> = value.split_whitespace().map(expand_home).collect();
                let default = ["known_hosts", "known_hosts2"]
                    .map(|f| expand_home(&format!("~/.ssh/{f}")))
                    .to_vec();
                if files != default {
                    r.known_hosts_files = Some(files);
                }
            }
            "stricthostkeychecking" => {
                r.host_key_policy = match value {
                    "accept-new" => Some(HostKeyPolicy::AcceptNew),
                    "false" | "no" | "off" => Some(HostKeyPolicy::AcceptAny),
                    // "ask" is OpenSSH's default: mcp-ssh's own default (strict) stays.
                    "true" | "yes" => Some(HostKeyPolicy::Strict),
                    _ => None,
                }
            }
            "connecttimeout" => {
                r.connect_timeout = value.parse().ok().map(Duration::from_secs);
            }
            "serveraliveinterval" => interval = value.parse().unwrap_or(0),
            "serveralivecountmax" => count_max = value.parse().unwrap_or(3),
            _ => {}
        }
    }
    if interval > 0 {
        r.keepalive = Some((Duration::from_secs(interval), count_max));
    }
    const DEFAULT_IDENTITIES: &[&str] = &[
        "~/.ssh/id_rsa",
        "~/.ssh/id_ecdsa",
        "~/.ssh/id_ecdsa_sk",
        "~/.ssh/id_ed25519",
        "~/.ssh/id_ed25519_sk",
        "~/.ssh/id_xmss",
        "~/.ssh/id_dsa",
    ];
    if identities != DEFAULT_IDENTITIES {
        r.identity_files = Some(
            identities
                .iter()
                .map(|f| expand_home(&expand_identity_tokens(f, &r)))
                .collect(),
        );
    }
    r
}

/// The tokens OpenSSH expands in IdentityFile: `%d` (home), `%u` (local user), `%h`, `%r`,
/// `%p`, `%%`; others are kept as written.
fn expand_identity_tokens(text: &str, r: &Resolved) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&ssh_home().unwrap_or_default().to_string_lossy()),
            Some('u') => out.push_str(&local_user()),
            Some('h') => out.push_str(&r.hostname),
            Some('r') => out.push_str(&r.user),
            Some('p') => out.push_str(&r.port.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// One line's keyword (lowercased) and arguments (double quotes grouping words).
fn split_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line
        .find(|c: char| c.is_whitespace() || c == '=')
        .unwrap_or(line.len());
    let keyword = line[..end].to_ascii_lowercase();
    let rest = line[end..]
        .trim_start()
        .trim_start_matches('=')
        .trim_start();
    let (mut args, mut word, mut quoted) = (Vec::new(), String::new(), false);
    for c in rest.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    args.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        args.push(word);
    }
    Some((keyword, args))
}

fn read_aliases(path: &Path, depth: usize, found: &mut Vec<String>) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!(
            "{}: Include nested deeper than {MAX_INCLUDE_DEPTH}",
            path.display()
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // As ssh: a missing included file is skipped; the top file must exist.
        Err(e) if depth > 0 && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    for (keyword, args) in text.lines().filter_map(split_line) {
        match keyword.as_str() {
            "host" => {
                for alias in args {
                    if !alias.contains(['*', '?', '!']) && !found.contains(&alias) {
                        found.push(alias);
                    }
                }
            }
            "include" => {
                for pattern in args {
                    let pattern = expand_home(&pattern);
                    // Relative names are relative to ~/.ssh, as ssh reads a user config.
                    let pattern = if pattern.is_relative() {
                        expand_home("~/.ssh").join(pattern)
                    } else {
                        pattern
                    };
                    let mut files: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
                        .map_err(|e| {
                            format!("{}: Include {}: {e}", path.display(), pattern.display())
                        })?
                        .filter_map(Result::ok)
                        .collect();
                    files.sort();
                    for file in files {
                        read_aliases(&file, depth + 1, found)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `alias` matches one of `patterns` (`*` and `?` wildcards, `!` negating, as in a
/// `Host` line: a negated match excludes whatever else matched).
pub fn selected(alias: &str, patterns: &[String]) -> bool {
    let mut hit = false;
    for pattern in patterns {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(negated, alias) {
                return false;
            }
        } else if wildcard_match(pattern, alias) {
            hit = true;
        }
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_g_output_should_read_with_openssh_defaults_left_out() {
        let text = "host web\nuser deploy\nhostname 10.1.2.3\nport 2200\nidentitiesonly yes\n\
                    identityfile /keys/a\nidentityfile /keys/%r-%h\nproxyjump bastion,jump2\n\
                    userknownhostsfile /kh/one /kh/two\nstricthostkeychecking accept-new\n\
                    connecttimeout 7\nserveraliveinterval 15\nserveralivecountmax 4\n";
        let r = parse_g(text);
        assert_eq!(
            (r.hostname.as_str(), r.user.as_str(), r.port),
            ("10.1.2.3", "deploy", 2200)
        );
        assert_eq!(
            r.identity_files,
            Some(vec![
                PathBuf::from("/keys/a"),
                PathBuf::from("/keys/deploy-10.1.2.3")
            ])
        );
        assert!(r.identities_only);
        assert_eq!(r.proxy_jump.as_deref(), Some("bastion,jump2"));
        assert_eq!(
            r.known_hosts_files,
            Some(vec![PathBuf::from("/kh/one"), PathBuf::from("/kh/two")])
        );
        assert_eq!(r.host_key_policy, Some(HostKeyPolicy::AcceptNew));
        assert_eq!(r.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(r.keepalive, Some((Duration::from_secs(15), 4)));

        let defaults = "hostname h\nuser u\nport 22\nidentityfile ~/.ssh/id_rsa\nidentityfile ~/.ssh/id_ecdsa\n\
            identityfile ~/.ssh/id_ecdsa_sk\nidentityfile ~/.ssh/id_ed25519\nidentityfile ~/.ssh/id_ed25519_sk\n\
            identityfile ~/.ssh/id_xmss\nidentityfile ~/.ssh/id_dsa\nstricthostkeychecking ask\n\
            connecttimeout none\nserveraliveinterval 0\n";
        let r = parse_g(defaults);
        assert_eq!(r.identity_files, None);
        assert_eq!(r.host_key_policy, None);
        assert_eq!(r.connect_timeout, None);
        assert_eq!(r.keepalive, None);
        assert_eq!(r.proxy_jump, None);
    }

    #[test]
    fn aliases_should_follow_includes_and_skip_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let inc = dir.path().join("conf.d");
        std::fs::create_dir(&inc).unwrap();
        std::fs::write(inc.join("b.conf"), "Host db1 db2\n  HostName x\n").unwrap();
        std::fs::write(inc.join("a.conf"), "host=gpu-1 \"gpu-2\"\n").unwrap();
        let main = dir.path().join("config");
        std::fs::write(
            &main,
            format!(
                "# comment\nHost web-* !web-bad web-prod\n  User deploy\nInclude {}/*.conf {}/missing\nHost *\n  Port 22\nHost gpu-1\n",
                inc.display(),
                inc.display()
            ),
        )
        .unwrap();
        let file = SshConfigFile::new(Some(main));
        assert_eq!(
            file.aliases().unwrap(),
            ["web-prod", "gpu-1", "gpu-2", "db1", "db2"]
        );
        let missing = SshConfigFile::new(Some(dir.path().join("nope")));
        assert!(missing.aliases().unwrap_err().contains("cannot read"));
    }

    #[test]
    fn selection_should_glob_and_negate() {
        let patterns = ["gpu-*".to_string(), "db1".into(), "!gpu-9".into()];
        assert!(selected("gpu-1", &patterns));
        assert!(selected("db1", &patterns));
        assert!(!selected("gpu-9", &patterns));
        assert!(!selected("db2", &patterns));
    }
}
