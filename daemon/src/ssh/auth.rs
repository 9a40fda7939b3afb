//! Authentication, in OpenSSH's order: the configured identity files in order (each through
//! ssh-agent when it is encrypted; then the agent's other keys unless only those may be used),
//! else the agent's keys and the default key files, then the password if configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::Handle;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use secrecy::ExposeSecret;

use super::SshError;
use super::connection::describe_russh_error;
use crate::config::{HostConfig, expand_tilde};

const DEFAULT_KEYS: &[&str] = &["~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"];

/// What was tried, for the "authentication failed (tried: ...)" message.
#[derive(Default)]
struct Attempts {
    tried: Vec<String>,
    hints: Vec<String>,
}

/// The ssh-agent sockets the daemon may use: those its clients announced (most recent first;
/// a daemon started by one terminal or run by a service manager would otherwise be stuck with
/// the agent of whoever started it, or none), then its own `SSH_AUTH_SOCK`. Only processes of
/// the daemon's own user can announce one (peer uids are checked at accept).
#[derive(Debug, Default)]
pub struct AgentSockets {
    announced: std::sync::Mutex<Vec<PathBuf>>,
}

impl AgentSockets {
    const KEPT: usize = 4;

    /// A client's `SSH_AUTH_SOCK`.
    pub fn announce(&self, path: PathBuf) {
        if path.as_os_str().is_empty() {
            return;
        }
        let mut announced = crate::sync::lock(&self.announced);
        announced.retain(|p| *p != path);
        announced.insert(0, path);
        announced.truncate(Self::KEPT);
    }

    /// Where to look for an agent, in order; only sockets that exist.
    fn candidates(&self) -> Vec<PathBuf> {
        let mut found = crate::sync::lock(&self.announced).clone();
        if let Some(own) = std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from)
            && !found.contains(&own)
        {
            found.push(own);
        }
        found.retain(|p| p.exists());
        found
    }

    /// The first agent that answers.
    async fn connect(&self) -> Option<AgentClient<tokio::net::UnixStream>> {
        for path in self.candidates() {
            match AgentClient::connect_uds(&path).await {
                Ok(agent) => return Some(agent),
                Err(e) => tracing::debug!("ssh-agent at {} did not answer: {e}", path.display()),
            }
        }
        None
    }
}

pub(super) async fn authenticate<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    host: &HostConfig,
    agents: &AgentSockets,
) -> Result<(), SshError> {
    let mut attempts = Attempts::default();
    let target = host.target();
    let protocol = |e: russh::Error| SshError::Protocol {
        target: target.clone(),
        message: describe_russh_error(&e),
    };

    let identities = &host.identities;
    if identities.files.is_empty() {
        if agent_keys(handle, host, agents, None, &mut attempts)
            .await
            .map_err(protocol)?
        {
            return Ok(());
        }
        for candidate in DEFAULT_KEYS.iter().map(|p| expand_tilde(p)) {
            if candidate.exists()
                && identity_file(handle, host, agents, &candidate, &mut attempts)
                    .await
                    .map_err(|e| e.or_protocol(&target))?
            {
                return Ok(());
            }
        }
    } else {
        for path in &identities.files {
            // As ssh: an IdentityFile of ssh_config that is not there is skipped.
            if !identities.required && !path.exists() {
                continue;
            }
            if identity_file(handle, host, agents, path, &mut attempts)
                .await
                .map_err(|e| e.or_protocol(&target))?
            {
                return Ok(());
            }
        }
        if !identities.only
            && agent_keys(handle, host, agents, None, &mut attempts)
                .await
                .map_err(protocol)?
        {
            return Ok(());
        }
    }
    if let Some(password) = &host.password {
        attempts.tried.push("password".into());
        let result = handle
            .authenticate_password(&host.username, password.expose_secret())
            .await
            .map_err(protocol)?;
        if result.success() {
            return Ok(());
        }
    }
    if attempts.tried.is_empty() {
        attempts.hints.push(
            "no credentials available: set identity_file or password for this host, or load a key into ssh-agent"
                .into(),
        );
    }
    Err(SshError::AuthFailed {
        target,
        tried: if attempts.tried.is_empty() {
            "nothing".into()
        } else {
            attempts.tried.join(", ")
        },
        hint: attempts.hints.iter().map(|h| format!("; {h}")).collect(),
    })
}

enum KeyError {
    User(SshError),
    Protocol(russh::Error),
}

impl KeyError {
    fn or_protocol(self, target: &str) -> SshError {
        match self {
            KeyError::User(e) => e,
            KeyError::Protocol(e) => SshError::Protocol {
                target: target.to_string(),
                message: describe_russh_error(&e),
            },
        }
    }
}

/// Tries one private key file. An encrypted key is used through ssh-agent when the agent holds it.
async fn identity_file<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    host: &HostConfig,
    agents: &AgentSockets,
    path: &Path,
    attempts: &mut Attempts,
) -> Result<bool, KeyError> {
    if !path.exists() {
        return Err(KeyError::User(SshError::IdentityNotFound(
            path.to_path_buf(),
        )));
    }
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => {
            attempts.tried.push(format!("key {}", path.display()));
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(KeyError::Protocol)?
                .flatten();
            let result = handle
                .authenticate_publickey(
                    &host.username,
                    PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                )
                .await
                .map_err(KeyError::Protocol)?;
            Ok(result.success())
        }
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let public = public_key_of(path);
            let Some(public) = public else {
                attempts
                    .tried
                    .push(format!("key {} (encrypted)", path.display()));
                attempts.hints.push(format!(
                    "{} is protected by a passphrase and {}.pub is missing, so the daemon cannot find it in ssh-agent; \
                     run `ssh-add {}` and put the public key next to it",
                    path.display(), path.display(), path.display()
                ));
                return Ok(false);
            };
            let used = agent_keys(handle, host, agents, Some(&public), attempts)
                .await
                .map_err(KeyError::Protocol)?;
            if !used {
                attempts
                    .tried
                    .push(format!("key {} (encrypted)", path.display()));
                attempts.hints.push(format!(
                    "{} is protected by a passphrase and ssh-agent does not hold it: run `ssh-add {}` \
                     in a shell whose SSH_AUTH_SOCK the daemon also sees",
                    path.display(), path.display()
                ));
            }
            Ok(used)
        }
        Err(e) => Err(KeyError::User(SshError::IdentityUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })),
    }
}

fn public_key_of(private: &Path) -> Option<PublicKey> {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    russh::keys::load_public_key(PathBuf::from(name)).ok()
}

/// Tries the agent's keys (only `only` when given). Returns Ok(false) when there is no agent.
async fn agent_keys<H: russh::client::Handler>(
    handle: &mut Handle<H>,
    host: &HostConfig,
    agents: &AgentSockets,
    only: Option<&PublicKey>,
    attempts: &mut Attempts,
) -> Result<bool, russh::Error> {
    let Some(mut agent) = agents.connect().await else {
        return Ok(false);
    };
    let Ok(identities) = agent.request_identities().await else {
        return Ok(false);
    };
    let keys: Vec<PublicKey> = identities
        .into_iter()
        .filter_map(|id| match id {
            AgentIdentity::PublicKey { key, .. } => Some(key),
            _ => None,
        })
        .filter(|key| only.is_none_or(|wanted| wanted.key_data() == key.key_data()))
        .collect();
    if keys.is_empty() {
        return Ok(false);
    }
    attempts.tried.push(format!(
        "ssh-agent ({} key{})",
        keys.len(),
        if keys.len() == 1 { "" } else { "s" }
    ));
    for key in keys {
        let hash = handle.best_supported_rsa_hash().await?.flatten();
        match handle
            .authenticate_publickey_with(&host.username, key, hash, &mut agent)
            .await
        {
            Ok(result) if result.success() => return Ok(true),
            Ok(_) => {}
            Err(e) => tracing::debug!(host = %host.name, "ssh-agent could not sign: {e}"),
        }
    }
    Ok(false)
}
