//! One module per group of subcommands, and what they share: the options every command has and
//! the way to reach the daemon.

pub mod daemon;
pub mod doctor;
pub mod exec;
pub mod fleet;
pub mod forward;
pub mod jobs;
pub mod partials;
pub mod status;
pub mod transfer;

use std::path::{Path, PathBuf};

use mcp_ssh_proto::paths;
use mcp_ssh_shim::client::{ClientError, ClientOptions, DaemonClient};

/// What every command gets: how to reach the daemon, and how to print.
pub struct Ctx {
    pub opts: ClientOptions,
    pub json: bool,
    /// The config the user named, if any (a daemon that already runs keeps its own).
    pub config_arg: Option<ConfigArg>,
}

pub struct ConfigArg {
    pub path: PathBuf,
    /// Named by $MCP_SSH_CONFIG rather than --config.
    pub from_env: bool,
}

impl Ctx {
    /// Connects to a running daemon (never starts one); says so when it serves another config
    /// than the one named.
    pub async fn connect(&self) -> Result<DaemonClient, ClientError> {
        let client = DaemonClient::connect(&self.opts).await?;
        self.warn_config(&client);
        Ok(client)
    }

    /// Connects, starting the daemon with the named config when none runs.
    pub async fn connect_or_start(&self) -> Result<DaemonClient, ClientError> {
        let client = DaemonClient::connect_or_start(&self.opts).await?;
        self.warn_config(&client);
        Ok(client)
    }

    fn warn_config(&self, client: &DaemonClient) {
        if let Some(message) = self.config_not_applied(client) {
            // On stderr even with --json: stdout stays one JSON document.
            eprintln!("mcp-sshctl: {message}");
        }
    }

    /// When the user named a config and the running daemon serves another one: what to say.
    pub fn config_not_applied(&self, client: &DaemonClient) -> Option<String> {
        let named = self.config_arg.as_ref()?;
        let serving = Path::new(&client.hello.config_path);
        if same_file(&named.path, serving) {
            return None;
        }
        let how = if named.from_env {
            format!("{}={}", paths::CONFIG_ENV, named.path.display())
        } else {
            format!("--config {}", named.path.display())
        };
        Some(format!(
            "the running mcp-sshd serves {}; {how} was not applied (mcp-sshctl stop, then run again to use it)",
            serving.display()
        ))
    }
}

/// Whether two paths name the same file: compared in their canonical form when they exist
/// (symlinks, `..`, relative paths), else as absolute paths.
fn same_file(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::same_file;

    #[test]
    fn a_config_is_recognised_through_relative_paths_and_symlinks() {
        let dir = std::env::temp_dir().join(format!("mcpsshctl-same-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("sub"));
        let file = dir.join("hosts.json");
        let _ = std::fs::write(&file, "{}");
        let link = dir.join("link.json");
        let _ = std::os::unix::fs::symlink(&file, &link);
        assert!(same_file(&link, &file));
        assert!(same_file(&dir.join("sub/../hosts.json"), &file));
        assert!(!same_file(&dir.join("other.json"), &file));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
