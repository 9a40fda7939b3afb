//! How an SSH session's bytes reach the host: a TCP connection, a `direct-tcpip` channel of the
//! bastion's connection (`proxy_jump`, as OpenSSH's ProxyJump), or the stdin and stdout of a
//! local `proxy_command` (as OpenSSH's ProxyCommand: `cloudflared access ssh`, `aws ssm
//! start-session`, `ssh -W %h:%p bastion`).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{Connection, SshError, io_text};
use crate::config::HostConfig;
use crate::sync::lock;

/// Lines of the proxy command's stderr kept for an error message (all of it goes to the log).
const STDERR_KEPT: usize = 3;
/// How long a failed session waits for its proxy command to have exited.
const EXIT_WAIT: Duration = Duration::from_millis(100);

/// A byte stream an SSH session can run over.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// A running proxy command: killed when dropped (with the connection it carries).
pub struct ProxyProcess {
    child: Child,
    command: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Why the command is no use, if it has exited (or does within [`EXIT_WAIT`]: its exit is
    /// what ended the session, and may not be reaped yet): its status and last words on stderr.
    pub async fn exit_reason(&mut self) -> Option<String> {
        let status = tokio::time::timeout(EXIT_WAIT, self.child.wait())
            .await
            .ok()?
            .ok()?;
        let said = lock(&self.stderr).join(" / ");
        let status = match status.code() {
            // The shell's "not found" (126: found but not executable).
            Some(code @ (126 | 127)) => format!(
                "exited with status {code} (not found or not executable: install it, or give its full path in proxy_command)"
            ),
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        Some(if said.is_empty() {
            format!("the proxy command `{}` {status}", self.command)
        } else {
            format!("the proxy command `{}` {status}: {said}", self.command)
        })
    }
}

/// `%h` (hostname), `%p` (port), `%r` (user), `%n` (the host's name in hosts.json) and `%%`,
/// as OpenSSH expands them in a ProxyCommand; other `%` sequences are kept as written.
pub fn expand_tokens(command: &str, host: &HostConfig) -> String {
    let mut out = String::with_capacity(command.len());
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('h') => out.push_str(&host.hostname),
            Some('p') => out.push_str(&host.port.to_string()),
            Some('r') => out.push_str(&host.username),
            Some('n') => out.push_str(&host.name),
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

/// Opens the way to `host`: a channel through `bastion` (its connection, for a host with a
/// `proxy_jump`), its proxy command when it has one, else TCP (with `TCP_NODELAY`: without it
/// every small exchange waits for delayed ACKs, ~40 ms per command).
pub async fn open(
    host: &HostConfig,
    bastion: Option<&Connection>,
) -> Result<(Box<dyn Link>, Option<ProxyProcess>), SshError> {
    let target = host.target();
    if let Some(bastion) = bastion {
        // The name goes unresolved: names only the bastion can resolve work.
        let channel = bastion
            .open_direct_tcpip(&host.hostname, host.port, ("127.0.0.1", 0))
            .await
            .map_err(|e| SshError::Jump {
                target: target.clone(),
                bastion: bastion.host_name().to_string(),
                reason: match e {
                    SshError::Forward { reason, .. }
                    | SshError::ForwardProhibited { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
        return Ok((Box::new(channel), None));
    }
    let Some(command) = &host.proxy_command else {
        let tcp = TcpStream::connect((host.hostname.as_str(), host.port))
            .await
            .map_err(|source| match source.kind() {
                // Accepted, then closed before connect() returned: turned away, as sshd past
                // its MaxStartups does, not refused.
                std::io::ErrorKind::ConnectionReset => SshError::NoHandshake {
                    target: target.clone(),
                    port: host.port,
                    reason: io_text(&source),
                },
                _ => SshError::Connect {
                    target: target.clone(),
                    source,
                },
            })?;
        // It fails only on a socket already reset (sshd dropping it past MaxStartups): the
        // handshake then reports the reset as a close before the banner, which is tried again.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(host = %host.name, "TCP_NODELAY not set: {e}");
        }
        return Ok((Box::new(tcp), None));
    };
    let command = expand_tokens(command, host);
    // As OpenSSH: through `sh -c` with `exec`, so the process we kill is the command itself.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SshError::ProxyCommand {
            target: target.clone(),
            reason: format!("cannot start the proxy command `{command}`: {e}"),
        })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(SshError::ProxyCommand {
            target,
            reason: "the proxy command has no stdio".into(),
        });
    };
    let kept = Arc::new(Mutex::new(Vec::new()));
    let (lines, name) = (kept.clone(), host.name.clone());
    tokio::spawn(async move {
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            tracing::info!(host = %name, "proxy command: {line}");
            let mut kept = lock(&lines);
            if kept.len() == STDERR_KEPT {
                kept.remove(0);
            }
            kept.push(line);
        }
    });
    tracing::debug!(host = %host.name, "proxy command started: {command}");
    let link = tokio::io::join(stdout, stdin);
    Ok((
        Box::new(link),
        Some(ProxyProcess {
            child,
            command,
            stderr: kept,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn tokens_should_expand_as_openssh_does() {
        let text = r#"{"hosts": [{"name": "web", "hostname": "10.0.0.7", "port": 2222, "username": "deploy",
            "proxy_command": "ssh -W %h:%p bastion"}]}"#;
        let config = Config::parse(text, std::path::Path::new("/cfg/hosts.json")).unwrap();
        let host = &config.hosts[0];
        assert_eq!(
            expand_tokens("ssh -W %h:%p -l %r jump # %n 100%% %x %", host),
            "ssh -W 10.0.0.7:2222 -l deploy jump # web 100% %x %"
        );
    }
}
