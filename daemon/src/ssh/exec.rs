//! One remote command: run it on its own channel, stream its output, and stop it for real when it
//! goes quiet for too long or its caller goes away.
//!
//! Closing a channel does not stop a non-pty command, and OpenSSH ignores the SSH `signal`
//! request for root logins. So the command is wrapped to report its process group first
//! (sshd makes the login shell a session leader, so its pid is the group id), and stopping
//! kills that group through a second channel: TERM, a grace period, then KILL, then a check.

use std::fmt;
use std::time::{Duration, Instant};

use russh::{ChannelMsg, Sig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connection::ChannelSlot;
use super::{Connection, SshError};

/// How long a stopped command gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Bound on the whole stop procedure, so a hung server cannot hold a caller.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Marks the first line of stdout, which carries the process group id.
const MARKER_START: &[u8] = b"\x1eMCPSSH-PGID ";
const MARKER_MAX: usize = 64;
/// How much stderr is kept to explain a login shell that could not run the command.
const STDERR_HEAD: usize = 512;

pub struct ExecRequest {
    pub command: String,
    pub cwd: Option<String>,
    pub idle_timeout: Duration,
}

/// A piece of output, in arrival order.
#[derive(Debug)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

impl Output {
    pub fn len(&self) -> usize {
        match self {
            Output::Stdout(d) | Output::Stderr(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub core_dumped: bool,
    pub duration: Duration,
}

/// Whether a stopped command is known to be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// The remote process group was checked and is gone.
    Confirmed,
    /// It may still be running; the reason says why we could not tell.
    Unconfirmed(String),
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopOutcome::Confirmed => write!(f, "remote process stopped (confirmed)"),
            StopOutcome::Unconfirmed(why) => {
                write!(f, "it may still be running on the host ({why})")
            }
        }
    }
}

/// Why a running command is being stopped.
enum StopCause {
    Idle,
    CallerGone,
    Shutdown,
}

/// Runs `req` on `conn` over `channel` (a work channel of `conn`, opened by the caller so it can
/// reconnect when opening fails, before anything ran), sending output to `sink` as it arrives.
///
/// The command is stopped remotely when no output arrives for `req.idle_timeout`, when `sink` is
/// closed (the caller went away), or when `shutdown` fires.
pub async fn run(
    conn: &Connection,
    (mut channel, _slot): (russh::Channel<russh::client::Msg>, ChannelSlot),
    req: &ExecRequest,
    sink: &mpsc::Sender<Output>,
    shutdown: &CancellationToken,
) -> Result<ExecOutcome, SshError> {
    let started = Instant::now();
    let script = wrap_command(&req.command, req.cwd.as_deref());
    channel
        .exec(true, script.into_bytes())
        .await
        .map_err(|_| conn.lost_error())?;

    let mut marker = Marker::default();
    // The start of stderr, to explain a login shell that could not run the wrapper.
    let mut stderr_head = Vec::new();
    let mut outcome = ExecOutcome {
        code: None,
        signal: None,
        core_dumped: false,
        duration: Duration::ZERO,
    };
    let idle = tokio::time::sleep(req.idle_timeout);
    tokio::pin!(idle);
    let cause = loop {
        tokio::select! {
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + req.idle_timeout);
                    if let Some(bytes) = marker.feed(&data)
                        && sink.send(Output::Stdout(bytes)).await.is_err() {
                            break StopCause::CallerGone;
                        }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + req.idle_timeout);
                    if marker.pgid.is_none() && stderr_head.len() < STDERR_HEAD {
                        stderr_head.extend_from_slice(&data[..data.len().min(STDERR_HEAD)]);
                    }
                    if sink.send(Output::Stderr(data.to_vec())).await.is_err() {
                        break StopCause::CallerGone;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    outcome.code = Some(i32::try_from(exit_status).unwrap_or(i32::MAX));
                }
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, .. }) => {
                    outcome.signal = Some(signal_text(&signal_name));
                    outcome.core_dumped = core_dumped;
                }
                Some(ChannelMsg::Close) | None => {
                    let rest = marker.finish();
                    if outcome.code.is_none() && outcome.signal.is_none() && !conn.is_alive() {
                        return Err(conn.lost_error());
                    }
                    // The wrapper's first line never came: the login shell did not run it.
                    if marker.pgid.is_none() && outcome.code.is_some_and(|c| c != 0) {
                        let mut said = stderr_head;
                        said.extend(rest.unwrap_or_default());
                        let said: String =
                            String::from_utf8_lossy(&said).trim().chars().take(300).collect();
                        return Err(SshError::LoginShell {
                            target: conn.host().target(),
                            said: if said.is_empty() {
                                said
                            } else {
                                format!(". The shell said: {said}")
                            },
                        });
                    }
                    if let Some(rest) = rest {
                        let _ = sink.send(Output::Stdout(rest)).await;
                    }
                    outcome.duration = started.elapsed();
                    return Ok(outcome);
                }
                Some(_) => {}
            },
            () = &mut idle => break StopCause::Idle,
            () = sink.closed() => break StopCause::CallerGone,
            () = shutdown.cancelled() => break StopCause::Shutdown,
            () = conn.lost() => return Err(conn.lost_error()),
        }
    };
    let stop = stop(conn, &mut channel, &mut marker).await;
    Err(match cause {
        StopCause::Idle => SshError::InactivityTimeout {
            idle: req.idle_timeout,
            stop,
        },
        StopCause::CallerGone => SshError::Cancelled {
            why: "the caller went away",
            stop,
        },
        StopCause::Shutdown => SshError::Cancelled {
            why: "the daemon is shutting down",
            stop,
        },
    })
}

/// The script sent to the login shell: report the process group, change directory, run.
/// The user's command goes last on its own line, untouched, so its syntax is the shell's.
fn wrap_command(command: &str, cwd: Option<&str>) -> String {
    let mut script = String::from("printf '\\036MCPSSH-PGID %s\\036\\n' \"$$\"\n");
    if let Some(dir) = cwd {
        script.push_str(&format!("cd -- {} || exit 1\n", quote_dir(dir)));
    }
    script.push_str(command);
    script
}

/// Quotes a working directory as one shell word, expanding a leading `~` (alone or before `/`)
/// to the remote home, as a user typing it would expect; nothing else is expanded.
pub fn quote_dir(dir: &str) -> String {
    match dir.strip_prefix('~') {
        Some("") => "\"$HOME\"".to_string(),
        Some(rest) if rest.starts_with('/') => format!("\"$HOME\"{}", shell_quote(rest)),
        _ => shell_quote(dir),
    }
}

/// Quotes `s` as one POSIX shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Stops the command: SSH signal (enough for non-root logins), then kill the process group
/// through a control channel, which also works for root logins.
async fn stop(
    conn: &Connection,
    channel: &mut russh::Channel<russh::client::Msg>,
    marker: &mut Marker,
) -> StopOutcome {
    let _ = channel.signal(Sig::TERM).await;
    let attempt = async {
        // A command stopped right after it was sent may not have reported its process group
        // yet (and an early signal finds no process to deliver to): wait for the report.
        if marker.pgid.is_none()
            && let Ok(Reported::ChannelClosed) =
                tokio::time::timeout(STOP_GRACE, read_until_reported(channel, marker)).await
        {
            return StopOutcome::Confirmed;
        }
        match marker.pgid {
            Some(pgid) => kill_group(conn, pgid).await,
            None => {
                // No group id (the wrapper never ran): all we can do is signal and watch.
                let _ = channel.signal(Sig::KILL).await;
                match tokio::time::timeout(STOP_GRACE, wait_closed(channel)).await {
                    Ok(()) => StopOutcome::Confirmed,
                    Err(_) => StopOutcome::Unconfirmed("its process id was never reported".into()),
                }
            }
        }
    };
    let outcome = tokio::time::timeout(STOP_DEADLINE, attempt)
        .await
        .unwrap_or_else(|_| StopOutcome::Unconfirmed("the host did not answer in time".into()));
    let _ = channel.close().await;
    outcome
}

enum Reported {
    ProcessGroup,
    /// The session ended first: the command is over.
    ChannelClosed,
}

/// Reads (and drops) output until the wrapper's process-group line has been seen.
async fn read_until_reported(
    channel: &mut russh::Channel<russh::client::Msg>,
    marker: &mut Marker,
) -> Reported {
    while marker.pgid.is_none() {
        match channel.wait().await {
            Some(ChannelMsg::Data { data }) => {
                marker.feed(&data);
            }
            Some(ChannelMsg::Close) | None => return Reported::ChannelClosed,
            Some(_) => {}
        }
    }
    Reported::ProcessGroup
}

async fn wait_closed(channel: &mut russh::Channel<russh::client::Msg>) {
    while let Some(msg) = channel.wait().await {
        if matches!(msg, ChannelMsg::Close) {
            break;
        }
    }
}

async fn kill_group(conn: &Connection, pgid: u32) -> StopOutcome {
    let script = format!("p={pgid}; {}", stop_group_script("TERM", ""));
    let script = format!("sh -c {}", shell_quote(&script));
    let (mut control, _slot) = match conn.open_control_channel().await {
        Ok(opened) => opened,
        Err(e) => {
            return StopOutcome::Unconfirmed(format!("could not reach the host to stop it: {e}"));
        }
    };
    if control.exec(true, script.into_bytes()).await.is_err() {
        return StopOutcome::Unconfirmed("could not run kill on the host".into());
    }
    let mut answer = Vec::new();
    while let Some(msg) = control.wait().await {
        match msg {
            ChannelMsg::Data { data } => answer.extend_from_slice(&data),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    match String::from_utf8_lossy(&answer).trim() {
        "gone" => StopOutcome::Confirmed,
        "alive" => StopOutcome::Unconfirmed(format!("process group {pgid} survived SIGKILL")),
        other => StopOutcome::Unconfirmed(format!("unexpected answer from kill: {other:?}")),
    }
}

/// The shell text that stops process group `$p` (set before it): `first` signal, up to
/// [`STOP_GRACE`] for it to go, then KILL (running `on_kill` first), then a check. Prints `gone`
/// or `alive`. Meant for `sh -c`, whatever the login shell is. `--` before the negative id: dash
/// reads `-PGID` as an option otherwise. A member that is only a zombie (killed, waiting for its
/// parent or init to reap it) counts as gone; without /proc, kill -0 has the last word.
pub(super) fn stop_group_script(first: &str, on_kill: &str) -> String {
    let tenths = STOP_GRACE.as_millis() / 100;
    format!(
        "alive() {{ kill -s 0 -- -$p 2>/dev/null || return 1; [ -r /proc/self/stat ] || return 0; \
           for d in /proc/[0-9]*; do read -r s < $d/stat 2>/dev/null || continue; s=${{s##*\") \"}}; \
             set -- $s; [ \"$3\" = \"$p\" ] && [ \"$1\" != Z ] && return 0; done; return 1; }}; \
         alive || {{ echo gone; exit 0; }}; \
         kill -s {first} -- -$p 2>/dev/null; i=0; \
         while alive; do \
           if [ $i -ge {tenths} ]; then {on_kill} kill -s KILL -- -$p 2>/dev/null; j=0; \
             while alive && [ $j -lt 10 ]; do sleep 0.1 2>/dev/null || sleep 1; j=$((j+1)); done; break; fi; \
           sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); \
         done; \
         if alive; then echo alive; else echo gone; fi"
    )
}

fn signal_text(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// Strips the process-group line from the start of stdout.
#[derive(Default)]
struct Marker {
    pending: Vec<u8>,
    done: bool,
    pgid: Option<u32>,
}

impl Marker {
    /// Takes a stdout chunk; returns what should go to the caller, if anything yet.
    fn feed(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if self.done {
            return Some(data.to_vec());
        }
        self.pending.extend_from_slice(data);
        let newline = self.pending.iter().position(|b| *b == b'\n');
        match newline {
            Some(end) => {
                self.done = true;
                let line = &self.pending[..end];
                self.pgid = line
                    .strip_prefix(MARKER_START)
                    .and_then(|rest| rest.strip_suffix(b"\x1e"))
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse().ok());
                let mut rest = std::mem::take(&mut self.pending);
                if self.pgid.is_some() {
                    rest.drain(..=end);
                }
                (!rest.is_empty()).then_some(rest)
            }
            None if self.pending.len() > MARKER_MAX
                || !MARKER_START
                    .starts_with(&self.pending[..self.pending.len().min(MARKER_START.len())]) =>
            {
                self.done = true;
                Some(std::mem::take(&mut self.pending))
            }
            None => None,
        }
    }

    /// Whatever was held back when the stream ends.
    fn finish(&mut self) -> Option<Vec<u8>> {
        self.done = true;
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_should_be_stripped_even_when_split() {
        let mut m = Marker::default();
        assert_eq!(m.feed(b"\x1eMCPSSH-PG"), None);
        assert_eq!(m.feed(b"ID 4242\x1e\nhello"), Some(b"hello".to_vec()));
        assert_eq!(m.pgid, Some(4242));
        assert_eq!(m.feed(b" world"), Some(b" world".to_vec()));
        assert_eq!(m.finish(), None);
    }

    #[test]
    fn output_without_marker_should_pass_through() {
        let mut m = Marker::default();
        assert_eq!(m.feed(b"plain output\n"), Some(b"plain output\n".to_vec()));
        assert_eq!(m.pgid, None);
        let mut m = Marker::default();
        assert_eq!(m.feed(b"\x1eMCPSSH-PGID 12"), None);
        assert_eq!(m.finish(), Some(b"\x1eMCPSSH-PGID 12".to_vec()));
    }

    #[test]
    fn cwd_should_expand_only_a_leading_tilde() {
        assert_eq!(quote_dir("~"), "\"$HOME\"");
        assert_eq!(quote_dir("~/a b"), "\"$HOME\"'/a b'");
        assert_eq!(quote_dir("~user/x"), "'~user/x'");
        assert_eq!(quote_dir("/x/~"), "'/x/~'");
    }

    #[test]
    fn cwd_should_be_quoted_not_interpolated() {
        let script = wrap_command("ls", Some("/tmp/it's $(here)"));
        assert!(
            script.contains("cd -- '/tmp/it'\\''s $(here)' || exit 1\nls"),
            "{script}"
        );
    }
}
