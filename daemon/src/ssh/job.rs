//! Jobs on the host: the supervisor that runs a command detached from the SSH session, the probe
//! that reads a job's state and bounded windows of its output, the kill, and the removal.
//!
//! Everything a job is lives in its directory on the host
//! (`${XDG_CACHE_HOME:-~/.cache}/mcp-ssh/jobs/<hex>`, 0700):
//! - `command`: the command as given, for a human looking at the directory;
//! - `pid`: `<supervisor pid> <process group> <start time> [<start ticks>]`, written by the
//!   supervisor;
//! - `stdout`, `stderr`: the command's output streams, appended to as it runs;
//! - `rc`: `<exit status> <end time> [<uptime>]`, written by the supervisor once the command
//!   ended (a shell reports death by signal N as 128+N);
//! - `killed`: the signal `Kill` sent, written before sending it.
//!
//! Beside it, `<hex>.claim` holds the id from the start on (see [`start_script`]); it is empty
//! unless the supervisor could not create the directory, and is removed with the directory.
//!
//! The supervisor is a `sh` in a session of its own (`setsid`) with stdin, stdout and stderr on
//! /dev/null, so no SSH channel holds it: closing the connection or killing sshd's session leaves
//! it running. It traps TERM, INT and HUP (a caught signal is reset in the command it runs, an
//! ignored one would not be), so a kill of the whole group still lets it record the status; a
//! signal that arrives before the command started (the kill found the `pid` file first) is
//! remembered, and the command is then not started: the job ends as killed by it.
//!
//! Every script here runs under `sh -c`, whatever the login shell is; the user's command itself
//! runs under the login shell (`$SHELL -c`), as `ssh_execute`'s does. Scripts only use POSIX sh
//! and the utilities every Linux and BSD has (`head -c`, `tail -c`, `wc -c`).

use std::time::Duration;

use russh::ChannelMsg;

use super::connection::ChannelSlot;
use super::exec::{shell_quote, stop_group_script};
use super::{Connection, SshError};

/// The name the supervisor runs under (its `$0`): how the probe tells our supervisor from an
/// unrelated process that reused its pid.
const SUPERVISOR_NAME: &str = "mcp-ssh-job";
/// How much of the end of the latest stream the probe sends for the "last line".
const TAIL_FOR_LAST_LINE: u64 = 512;
/// A job directory's last component: lowercase hex, as `jobs.rs` makes them.
const HEX_LEN: usize = 6;

/// Output a daemon-owned script produced.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<u32>,
}

/// The login shells that run our POSIX scripts as `sh` would. Others (zsh splits words
/// differently, fish and csh are not POSIX shells) get them through `sh -c`.
const POSIX_SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "ksh", "mksh"];
/// What a script prints first when the login shell is not known yet: `$SHELL` (which sshd sets
/// to the login shell) after a marker, so that anything a shell startup file printed before it
/// is not taken for it.
const SHELL_MARKER: &[u8] = b"\x1eMCPSSH-SHELL ";
const SHELL_LINE: &str = "printf '\\036MCPSSH-SHELL %s\\n' \"${SHELL:-}\"\n";

/// Runs a script of ours (not a user's command) on `channel` and collects everything it prints,
/// within `deadline`.
///
/// sshd hands every command to the user's login shell. Where that is a POSIX shell the script
/// goes to it directly, which saves starting `sh` (a process is most of what a job probe costs);
/// the connection's first script runs under `sh -c` and reports the login shell.
pub async fn capture(
    conn: &Connection,
    (mut channel, _slot): (russh::Channel<russh::client::Msg>, ChannelSlot),
    script: &str,
    deadline: Duration,
) -> Result<Captured, SshError> {
    let known = conn.posix_login_shell();
    let command = match known {
        Some(true) => script.to_string(),
        Some(false) => format!("sh -c {}", shell_quote(script)),
        None => format!("sh -c {}", shell_quote(&format!("{SHELL_LINE}{script}"))),
    };
    let run = async {
        channel
            .exec(true, command.into_bytes())
            .await
            .map_err(|_| conn.lost_error())?;
        let mut out = Captured::default();
        loop {
            tokio::select! {
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => out.stdout.extend_from_slice(&data),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        out.stderr.extend_from_slice(&data);
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => out.code = Some(exit_status),
                    Some(ChannelMsg::Close) | None => {
                        if out.code.is_none() && !conn.is_alive() {
                            return Err(conn.lost_error());
                        }
                        return Ok(out);
                    }
                    Some(_) => {}
                },
                () = conn.lost() => return Err(conn.lost_error()),
            }
        }
    };
    match tokio::time::timeout(deadline, run).await {
        Ok(Ok(mut out)) if known.is_none() => {
            if let Some(shell) = take_shell_line(&mut out.stdout) {
                conn.learn_login_shell(is_posix_shell(&shell));
            }
            Ok(out)
        }
        Ok(result) => result,
        Err(_) => {
            let _ = channel.close().await;
            Err(SshError::HostTimeout {
                target: conn.host().target(),
                secs: deadline.as_secs(),
            })
        }
    }
}

/// Removes the line [`SHELL_LINE`] printed from `stdout` and returns the shell it named.
fn take_shell_line(stdout: &mut Vec<u8>) -> Option<String> {
    let start = stdout
        .windows(SHELL_MARKER.len())
        .position(|w| w == SHELL_MARKER)?;
    let name_at = start + SHELL_MARKER.len();
    let end = name_at + stdout[name_at..].iter().position(|b| *b == b'\n')?;
    let shell = String::from_utf8_lossy(&stdout[name_at..end]).into_owned();
    stdout.drain(start..=end);
    Some(shell)
}

fn is_posix_shell(path: &str) -> bool {
    let name = path.trim().rsplit('/').next().unwrap_or("");
    POSIX_SHELLS.contains(&name)
}

/// Whether `dir` is a job directory as [`start_script`] makes them, so it is safe to remove.
pub fn is_job_dir(dir: &str) -> bool {
    let Some((parent, hex)) = dir.rsplit_once('/') else {
        return false;
    };
    dir.starts_with('/')
        && parent.ends_with("/mcp-ssh/jobs")
        && hex.len() == HEX_LEN
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && !dir.contains(['\n', '\0'])
        && !dir.split('/').any(|part| part == "..")
}

/// `pstat PID` sets `sstate` (R, S, Z, …) and `sticks` (its start time in clock ticks since boot)
/// from `/proc/PID/stat` with builtins only, or fails. The fields are counted after the last
/// `) `, which ends the command name (a name may hold spaces and parentheses); the start time
/// is the 22nd field, the 20th after the name. Shared by the supervisor and the probe, so the
/// ticks one writes are the ticks the other compares.
const STAT_FUNCTION: &str = r#"pstat() { sstate=; sticks=; read -r a < "/proc/$1/stat" 2>/dev/null || return 1; a=${a##*") "}; set -- $a; [ $# -ge 20 ] || return 1; sstate=$1; shift 19; sticks=$1; }"#;

/// A script with [`STAT_FUNCTION`] in place of its `STAT_FUNCTION` line.
fn with_stat_function(script: &str) -> String {
    script.replacen("STAT_FUNCTION", STAT_FUNCTION, 1)
}

/// The supervisor, run by `sh -c` with `$1` the job directory, `$2` the working directory, `$3`
/// the command and `$4` either `s` (it leads a session of its own) or its process group.
/// Its `pid` file also holds its start time in the kernel's clock ticks (`/proc/PID/stat`'s 22nd
/// field, where there is a /proc), which tells it from a later process given the same pid. A
/// reader may find `pid` empty for a moment (it is written in place, one short write): the job
/// then counts as starting.
/// Times are taken on the host, so a duration never mixes two machines' clocks: where there is a
/// `/proc/uptime`, as `u` and hundredths of a second since boot, read by a builtin (the start
/// costs no `date`, whose fork and exec would compete with the command for the CPU); elsewhere
/// as nanoseconds since the epoch (whole seconds where `date` has no `%N`). `rc` holds the exit
/// status, the epoch time and, where there is one, the uptime.
const SUPERVISOR: &str = r#"d=$1; k=; trap 'k=15' TERM; trap 'k=2' INT; trap 'k=1' HUP
mkdir "$d" 2>/dev/null || { echo "cannot create $d" > "$d.claim"; exit 1; }
printf '%s\n' "$3" > "$d/command"; : > "$d/stdout"; : > "$d/stderr"
STAT_FUNCTION
now() { t=$(date +%s%N 2>/dev/null); case $t in *[!0-9]*|"") t=$(date +%s)000000000 ;; esac; echo "$t"; }
up() { u=; [ -r /proc/uptime ] && read -r u _ < /proc/uptime; case $u in *[0-9].[0-9][0-9]) u=u${u%.*}${u#*.} ;; *) u= ;; esac; }
g=$4; [ "$g" = s ] && g=$$; pstat $$; up; [ -n "$u" ] || u=$(now)
echo "$$ $g $u $sticks" > "$d/pid"
if [ -n "$k" ]; then r=$((128 + k)); elif [ -n "$2" ] && ! cd -- "$2" 2>>"$d/stderr"; then r=1; else
"${SHELL:-/bin/sh}" -c "$3" </dev/null >>"$d/stdout" 2>>"$d/stderr"; r=$?; fi
up; echo "$r $(now) $u" > "$d/rc.tmp" && mv -f "$d/rc.tmp" "$d/rc"
"#;

/// What [`start_script`] reported.
#[derive(Debug, PartialEq, Eq)]
pub enum StartOutcome {
    Started {
        dir: String,
        /// The host's boot id when the job started (`-` where the host has none).
        boot_id: String,
    },
    /// A directory of that name exists (another daemon's job): pick another id.
    IdTaken,
    /// The working directory does not exist.
    NoCwd,
    /// The job directory could not be created; the text says why.
    Failed(String),
}

/// The script that claims the job's id and starts the supervisor in the background, which
/// creates the job directory.
///
/// The id is claimed with a file created exclusively by the shell itself (`set -C`, O_EXCL),
/// `<hex>.claim` beside the directory: a `mkdir` here would cost a process launch, about a
/// fifth of the whole start, while the caller waits. Until the supervisor made the directory,
/// the probe reports the job as running with no output; a supervisor that could not make it
/// writes why into the claim, and the job is then lost.
///
/// `setsid -f` (util-linux ≥ 2.31) is preferred: the supervisor is then no asynchronous list of
/// the shell, which POSIX makes ignore SIGINT (and an ignored signal cannot be trapped or reset,
/// so the command would ignore `Kill`'s INT). Without it: `setsid … &`, then a plain `&` in the
/// login session's process group (macOS and some BSDs have no setsid).
pub fn start_script(hex: &str, command: &str, cwd: Option<&str>) -> String {
    format!(
        r#"umask 077
b="${{XDG_CACHE_HOME:-$HOME/.cache}}/mcp-ssh/jobs"
[ -d "$b" ] || mkdir -p "$b" || {{ echo "MCPSSH-FAILED cannot create $b"; exit 0; }}
d=$b/{hex}
c={cwd}
case $c in "~") c=$HOME ;; "~/"*) c=$HOME/${{c#"~/"}} ;; esac
if [ -n "$c" ] && [ ! -d "$c" ]; then echo MCPSSH-NOCWD; exit 0; fi
[ -e "$d" ] && {{ echo MCPSSH-TAKEN; exit 0; }}
set -C; if ! true 2>/dev/null > "$d.claim"; then [ -e "$d.claim" ] && echo MCPSSH-TAKEN || echo "MCPSSH-FAILED cannot create $d.claim"; exit 0; fi; set +C
sup={sup}; cmd={cmd}
if setsid -f sh -c "$sup" {name} "$d" "$c" "$cmd" s </dev/null >/dev/null 2>&1; then :
elif command -v setsid >/dev/null 2>&1; then setsid sh -c "$sup" {name} "$d" "$c" "$cmd" s </dev/null >/dev/null 2>&1 &
else g=$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' '); sh -c "$sup" {name} "$d" "$c" "$cmd" "${{g:-$$}}" </dev/null >/dev/null 2>&1 &
fi
i=-; [ -r /proc/sys/kernel/random/boot_id ] && read -r i < /proc/sys/kernel/random/boot_id
printf 'MCPSSH-JOB %s %s\n' "$i" "$d"
"#,
        cwd = shell_quote(cwd.unwrap_or("")),
        sup = shell_quote(&with_stat_function(SUPERVISOR)),
        cmd = shell_quote(command),
        name = SUPERVISOR_NAME,
    )
}

pub fn parse_start(out: &Captured) -> StartOutcome {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("").trim_end();
    if let Some(rest) = line.strip_prefix("MCPSSH-JOB ")
        && let Some((boot_id, dir)) = rest.split_once(' ')
    {
        return StartOutcome::Started {
            dir: dir.to_string(),
            boot_id: boot_id.to_string(),
        };
    }
    match line {
        "MCPSSH-TAKEN" => StartOutcome::IdTaken,
        "MCPSSH-NOCWD" => StartOutcome::NoCwd,
        _ => StartOutcome::Failed(match line.strip_prefix("MCPSSH-FAILED ") {
            Some(why) => why.to_string(),
            None => {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = said.trim();
                if said.is_empty() {
                    match out.code {
                        Some(code) => format!("the start script ended with status {code}"),
                        None => "the start script ended without an exit status".to_string(),
                    }
                } else {
                    said.chars().take(300).collect()
                }
            }
        }),
    }
}

/// Which part of a stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAsk {
    /// Start of the window; `None`: the last `max` bytes.
    pub offset: Option<u64>,
    pub max: u64,
    /// Also the first bytes of the stream, up to this many, when the window starts after them.
    pub head: u64,
}

/// A job to probe, and the windows to read (none: state, sizes and last line only).
pub struct ProbeAsk<'a> {
    pub dir: &'a str,
    pub windows: Option<[WindowAsk; 2]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub offset: u64,
    pub data: Vec<u8>,
    pub head: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteState {
    Running,
    /// The supervisor recorded the status.
    Ended {
        status: i32,
        /// How long it ran, by the host's clock (start and end as the supervisor saw them).
        ran_ms: Option<u64>,
    },
    /// The processes are gone and no status was recorded.
    Vanished {
        /// systemd-logind on the host kills a user's processes at logout, and the user has no
        /// linger: the likely cause.
        logind_kills: bool,
    },
    /// The job directory is gone.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub state: RemoteState,
    /// The signal `Kill` sent, if it did.
    pub killed: Option<String>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// The end of the stream written last, for its last line.
    pub tail: Vec<u8>,
    pub windows: Option<[Window; 2]>,
}

/// What the probe knows about the host itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub boot_id: String,
    pub jobs: Vec<Probe>,
}

/// The shell functions of the probe: `j DIR TAIL` prints one job, `w FILE SIZE OFFSET MAX HEAD`
/// one window. A job line: `J state status end killed stdout-size stderr-size logind tail-len
/// start latest`, then the tail bytes (`latest`: `o` when stdout was written last, else `x`); a
/// window: `W offset len head-len`, then the head bytes and the window bytes. Sizes are read
/// once per job, so the byte counts announced are exact (the files only grow).
///
/// Every program the probe runs costs a fork and an exec, which is most of its time, so it runs
/// few: none for a job with no output yet, `wc` for both sizes, `head` for a window from the
/// start and `tail | head` for one further on. Liveness compares the supervisor's start time in
/// `/proc/PID/stat` with the one it recorded (builtins only; a zombie, killed and not yet reaped,
/// is gone); supervisors that recorded none are matched by their command line (a zombie has none).
const PROBE_FUNCTIONS: &str = r#"STAT_FUNCTION
alive() { kill -0 "$1" 2>/dev/null || return 1; [ -r "/proc/$1/stat" ] || return 0
if [ -n "$3" ]; then pstat "$1" && [ "$sstate" != Z ] && [ "$sstate" != X ] && [ "$sticks" = "$3" ]; return; fi
grep -qsF -- "$2" "/proc/$1/cmdline"; }
j() { d=$1; o=0; x=0; if [ ! -d "$d" ]; then
 if [ -s "$d.claim" ]; then echo "J vanished - - - 0 0 0 0 - o"; elif [ -e "$d.claim" ]; then echo "J running - - - 0 0 0 0 - o"; else echo "J missing - - - 0 0 0 0 - o"; fi; return; fi
r=-; e=-; eu=; [ -f "$d/rc" ] && read -r r e eu < "$d/rc"; r=${r:--}
k=-; [ -f "$d/killed" ] && read -r k < "$d/killed"
p=-; g=-; t=-; ps=; [ -f "$d/pid" ] && read -r p g t ps < "$d/pid"; p=${p:--}
s=running; lk=0
if [ "$r" = - ] && [ "$p" != - ]; then
 if ! alive "$p" "$d" "$ps"; then [ -f "$d/rc" ] && read -r r e eu < "$d/rc"; r=${r:--}; [ "$r" = - ] && s=vanished; fi; fi
[ "$r" != - ] && s=ended; case $t in u*) e=${eu:--} ;; esac
if [ $s = vanished ] && grep -qsE '^[[:space:]]*KillUserProcesses[[:space:]]*=[[:space:]]*(yes|true|1)' /etc/systemd/logind.conf /etc/systemd/logind.conf.d/*.conf && [ ! -e "/var/lib/systemd/linger/$(id -un)" ]; then lk=1; fi
if [ -s "$d/stdout" ] || [ -s "$d/stderr" ]; then [ -f "$d/stdout" ] && [ -f "$d/stderr" ] && { read -r o _; read -r x _; } <<EOF
$(wc -c "$d/stdout" "$d/stderr")
EOF
fi; o=$((${o:-0} + 0)); x=$((${x:-0} + 0))
f=$d/stdout; n=$o; lt=o; if [ "$x" -gt 0 ] && { [ "$o" -eq 0 ] || [ "$d/stderr" -nt "$d/stdout" ]; }; then f=$d/stderr; n=$x; lt=x; fi
l=$((n < $2 ? n : $2))
echo "J $s $r $e $k $o $x $lk $l ${t:--} $lt"; [ $l -gt 0 ] && tail -c +$((n - l + 1)) "$f" | head -c $l; return 0; }
w() { wf=$1; wn=$2; wo=$3; wm=$4; wh=$5
[ "$wo" = - ] && wo=$((wn > wm ? wn - wm : 0)); [ "$wo" -gt "$wn" ] && wo=$wn
wl=$((wn - wo)); [ $wl -gt $wm ] && wl=$wm; whl=$((wo < wh ? wo : wh))
echo "W $wo $wl $whl"; [ $whl -gt 0 ] && head -c $whl "$wf"; [ $wl -eq 0 ] && return 0
if [ $wo -eq 0 ]; then head -c $wl "$wf"; else tail -c +$((wo + 1)) "$wf" | head -c $wl; fi; return 0; }
i=-; [ -r /proc/sys/kernel/random/boot_id ] && read -r i < /proc/sys/kernel/random/boot_id
echo "B $i"
"#;

/// Whether the windows asked for end where the streams end and hold at least the tail the last
/// line is read from: then the probe sends no separate tail.
fn windows_hold_tail(windows: &Option<[WindowAsk; 2]>) -> bool {
    windows.is_some_and(|w| {
        w.iter()
            .all(|w| w.offset.is_none() && w.max >= TAIL_FOR_LAST_LINE)
    })
}

pub fn probe_script(asks: &[ProbeAsk]) -> String {
    let mut script = with_stat_function(PROBE_FUNCTIONS);
    for ask in asks {
        let dir = shell_quote(ask.dir);
        let tail = if windows_hold_tail(&ask.windows) {
            0
        } else {
            TAIL_FOR_LAST_LINE
        };
        script.push_str(&format!("j {dir} {tail}\n"));
        if let Some(windows) = &ask.windows {
            for (name, size_var, w) in
                [("stdout", "$o", &windows[0]), ("stderr", "$x", &windows[1])]
            {
                let offset = w.offset.map_or_else(|| "-".to_string(), |o| o.to_string());
                script.push_str(&format!(
                    "w {dir}/{name} {size_var} {offset} {} {}\n",
                    w.max, w.head
                ));
            }
        }
    }
    script
}

/// How long a job ran, from the two times its supervisor took: both hundredths of a second since
/// boot (`u…`), or both nanoseconds since the epoch (a host without `/proc/uptime`).
fn ran_ms(started: &str, ended: &str) -> Option<u64> {
    let span = |start: &str, end: &str| {
        end.parse::<u64>()
            .ok()?
            .checked_sub(start.parse::<u64>().ok()?)
    };
    match (started.strip_prefix('u'), ended.strip_prefix('u')) {
        (Some(start), Some(end)) => span(start, end)?.checked_mul(10),
        (None, None) => Some(span(started, ended)? / 1_000_000),
        _ => None,
    }
}

/// Reads the probe's answer: one [`Probe`] per ask, in order.
pub fn parse_probe(out: &[u8], asks: &[ProbeAsk]) -> Result<ProbeReport, String> {
    let mut reader = Reader { rest: out };
    let boot = reader.line()?;
    let boot_id = boot
        .strip_prefix("B ")
        .ok_or_else(|| format!("unexpected probe answer {boot:?}"))?
        .to_string();
    let mut jobs = Vec::with_capacity(asks.len());
    for ask in asks {
        let line = reader.line()?;
        let fields: Vec<&str> = line.split(' ').collect();
        let [
            "J",
            state,
            status,
            ended,
            killed,
            stdout_bytes,
            stderr_bytes,
            logind,
            tail_len,
            started,
            latest,
        ] = fields[..]
        else {
            return Err(format!("unexpected job line {line:?}"));
        };
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("unexpected number {s:?} in {line:?}"))
        };
        let state = match state {
            "running" => RemoteState::Running,
            "ended" => RemoteState::Ended {
                status: status
                    .parse()
                    .map_err(|_| format!("unexpected status in {line:?}"))?,
                ran_ms: ran_ms(started, ended),
            },
            "vanished" => RemoteState::Vanished {
                logind_kills: logind == "1",
            },
            "missing" => RemoteState::Missing,
            other => return Err(format!("unexpected job state {other:?}")),
        };
        let mut tail = reader.bytes(number(tail_len)?)?;
        let windows = match &ask.windows {
            None => None,
            Some(_) => Some([reader.window()?, reader.window()?]),
        };
        // The probe sent no tail when the windows hold it: the end of the latest stream's.
        if let Some(windows) = &windows
            && windows_hold_tail(&ask.windows)
        {
            let data = &windows[usize::from(latest == "x")].data;
            let keep = data.len().min(TAIL_FOR_LAST_LINE as usize);
            tail = data[data.len() - keep..].to_vec();
        }
        jobs.push(Probe {
            state,
            killed: (killed != "-").then(|| killed.to_string()),
            stdout_bytes: number(stdout_bytes)?,
            stderr_bytes: number(stderr_bytes)?,
            tail,
            windows,
        });
    }
    Ok(ProbeReport { boot_id, jobs })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn line(&mut self) -> Result<String, String> {
        let end = self
            .rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("the probe's answer ended early (did an output file shrink?)")?;
        let line = String::from_utf8_lossy(&self.rest[..end]).into_owned();
        self.rest = &self.rest[end + 1..];
        Ok(line)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        let n = usize::try_from(n).map_err(|_| "window too large")?;
        if self.rest.len() < n {
            return Err("the probe's answer ended early (did an output file shrink?)".into());
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken.to_vec())
    }

    fn window(&mut self) -> Result<Window, String> {
        let line = self.line()?;
        let fields: Vec<u64> = line
            .strip_prefix("W ")
            .map(|f| f.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        let [offset, len, head_len] = fields[..] else {
            return Err(format!("unexpected window line {line:?}"));
        };
        let head = self.bytes(head_len)?;
        let data = self.bytes(len)?;
        Ok(Window { offset, data, head })
    }
}

/// How `kill_script` answered.
#[derive(Debug, PartialEq, Eq)]
pub enum KillAnswer {
    /// The process group is gone; `was_running` is false when the job had already ended.
    Gone {
        was_running: bool,
    },
    Alive,
    /// The job directory is gone.
    Missing,
}

/// Sends `signal` to the job's process group (after recording it in `killed`), then KILL after
/// the grace period (recording that too), and checks.
///
/// The job directory is in `$jd`: the stop script's `alive` uses `$d` (and `$s`, `$i`, `$j`) for
/// itself, and the `on_kill` text runs after it.
pub fn kill_script(dir: &str, signal: &str) -> String {
    let d = shell_quote(dir);
    format!(
        r#"jd={d}; [ -d "$jd" ] || [ -e "$jd.claim" ] || {{ echo missing; exit 0; }}
i=0; while [ ! -f "$jd/pid" ] && [ ! -f "$jd/rc" ] && [ $i -lt 30 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done
if [ -f "$jd/rc" ]; then echo ended; else echo {signal} > "$jd/killed"; echo running; fi
[ -f "$jd/pid" ] || {{ echo gone; exit 0; }}
read -r x p t < "$jd/pid"
{stop}"#,
        stop = stop_group_script(signal, r#"[ -f "$jd/rc" ] || echo KILL > "$jd/killed";"#),
    )
}

pub fn parse_kill(out: &Captured) -> Result<KillAnswer, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        ["missing"] => Ok(KillAnswer::Missing),
        [before, "gone"] => Ok(KillAnswer::Gone {
            was_running: before == "running",
        }),
        [_, "alive"] => Ok(KillAnswer::Alive),
        _ => Err(format!("unexpected answer from kill: {}", text.trim())),
    }
}

/// Removes job directories and their claims (each checked with [`is_job_dir`] by the caller).
pub fn remove_script(dirs: &[&str]) -> String {
    let quoted: Vec<String> = dirs
        .iter()
        .flat_map(|d| [shell_quote(d), shell_quote(&format!("{d}.claim"))])
        .collect();
    format!("rm -rf -- {} && echo removed", quoted.join(" "))
}

/// The usual name of signal `n` (Linux numbering, shared by the BSDs for these).
pub fn signal_name(n: i32) -> String {
    match n {
        1 => "HUP".into(),
        2 => "INT".into(),
        3 => "QUIT".into(),
        4 => "ILL".into(),
        6 => "ABRT".into(),
        8 => "FPE".into(),
        9 => "KILL".into(),
        11 => "SEGV".into(),
        13 => "PIPE".into(),
        14 => "ALRM".into(),
        15 => "TERM".into(),
        n => format!("SIG{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one of our scripts the way sshd runs a command: `SHELL -c SCRIPT`, in `home`.
    fn run_in(shell: &str, home: &std::path::Path, script: &str) -> Captured {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(script)
            .env("HOME", home)
            .env("SHELL", shell)
            .env_remove("XDG_CACHE_HOME")
            .output()
            .expect("cannot run the shell");
        Captured {
            stdout: out.stdout,
            stderr: out.stderr,
            code: out.status.code().and_then(|c| u32::try_from(c).ok()),
        }
    }

    /// The scripts go straight to a POSIX login shell: each one this machine has must run them
    /// as `sh` does (start, probe with windows, kill, remove).
    #[test]
    fn scripts_should_run_in_every_posix_login_shell() {
        let shells: Vec<String> = POSIX_SHELLS
            .iter()
            .map(|name| format!("/bin/{name}"))
            .filter(|path| std::path::Path::new(path).exists())
            .collect();
        assert!(shells.iter().any(|s| s == "/bin/sh"), "{shells:?}");
        for shell in &shells {
            let home = tempfile::tempdir().unwrap();
            let out = run_in(
                shell,
                home.path(),
                &start_script("00aa11", "echo one; echo two >&2; echo three", None),
            );
            let StartOutcome::Started { dir, .. } = parse_start(&out) else {
                panic!("{shell}: {out:?}");
            };
            let tail = WindowAsk {
                offset: None,
                max: 4096,
                head: 0,
            };
            let asks = [ProbeAsk {
                dir: &dir,
                windows: Some([tail; 2]),
            }];
            let mut ended = None;
            for _ in 0..100 {
                let out = run_in(shell, home.path(), &probe_script(&asks));
                let report = parse_probe(&out.stdout, &asks)
                    .unwrap_or_else(|e| panic!("{shell}: {e}: {out:?}"));
                if report.jobs[0].state != RemoteState::Running {
                    ended = Some(report.jobs.into_iter().next().unwrap());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let job = ended.unwrap_or_else(|| panic!("{shell}: the job never ended"));
            assert!(
                matches!(
                    job.state,
                    RemoteState::Ended {
                        status: 0,
                        ran_ms: Some(_)
                    }
                ),
                "{shell}: {job:?}"
            );
            let windows = job.windows.unwrap();
            assert_eq!(windows[0].data, b"one\nthree\n", "{shell}");
            assert_eq!(windows[1].data, b"two\n", "{shell}");
            assert_eq!((job.stdout_bytes, job.stderr_bytes), (10, 4), "{shell}");

            let out = run_in(
                shell,
                home.path(),
                &start_script("00aa12", "sleep 30", None),
            );
            let StartOutcome::Started { dir: sleeping, .. } = parse_start(&out) else {
                panic!("{shell}: {out:?}");
            };
            // Liveness by start time: the supervisor recorded its ticks (this is Linux).
            let mut pid = String::new();
            for _ in 0..100 {
                pid = std::fs::read_to_string(format!("{sleeping}/pid")).unwrap_or_default();
                if pid.ends_with('\n') {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(pid.split_whitespace().count(), 4, "{shell}: {pid:?}");
            let asks = [ProbeAsk {
                dir: &sleeping,
                windows: None,
            }];
            let out = run_in(shell, home.path(), &probe_script(&asks));
            let report = parse_probe(&out.stdout, &asks).unwrap();
            assert_eq!(
                report.jobs[0].state,
                RemoteState::Running,
                "{shell}: {out:?}"
            );
            let out = run_in(shell, home.path(), &kill_script(&sleeping, "TERM"));
            assert_eq!(
                parse_kill(&out),
                Ok(KillAnswer::Gone { was_running: true }),
                "{shell}: {out:?}"
            );
            let out = run_in(shell, home.path(), &remove_script(&[&dir, &sleeping]));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "removed",
                "{shell}"
            );
            assert!(!std::path::Path::new(&dir).exists());
            assert!(!std::path::Path::new(&format!("{dir}.claim")).exists());
        }
    }

    /// Between the start's answer and the supervisor's `mkdir`, the claim alone says the job
    /// is starting; a claim holding a reason says the supervisor could not make the directory.
    #[test]
    fn a_claimed_id_without_its_directory_should_be_starting_or_lost() {
        let home = tempfile::tempdir().unwrap();
        let dir = format!("{}/.cache/mcp-ssh/jobs/00bb11", home.path().display());
        std::fs::create_dir_all(format!("{}/.cache/mcp-ssh/jobs", home.path().display())).unwrap();
        std::fs::write(format!("{dir}.claim"), "").unwrap();
        let asks = [ProbeAsk {
            dir: &dir,
            windows: None,
        }];
        let probe = |what: &str| {
            let out = run_in("/bin/sh", home.path(), &probe_script(&asks));
            let report = parse_probe(&out.stdout, &asks).unwrap_or_else(|e| panic!("{what}: {e}"));
            report.jobs[0].state.clone()
        };
        assert_eq!(probe("claimed"), RemoteState::Running);
        std::fs::write(format!("{dir}.claim"), "cannot create it\n").unwrap();
        assert!(matches!(probe("failed"), RemoteState::Vanished { .. }));
        // The same id is not handed out again while its claim exists.
        let out = run_in(
            "/bin/sh",
            home.path(),
            &start_script("00bb11", "true", None),
        );
        assert_eq!(parse_start(&out), StartOutcome::IdTaken, "{out:?}");
    }

    #[test]
    fn the_shell_line_should_be_found_after_what_a_startup_file_printed() {
        let mut out = b"welcome\n\x1eMCPSSH-SHELL /bin/bash\nB -\n".to_vec();
        assert_eq!(take_shell_line(&mut out).as_deref(), Some("/bin/bash"));
        assert_eq!(out, b"welcome\nB -\n");
        let mut out = b"B -\n".to_vec();
        assert_eq!(take_shell_line(&mut out), None);
        assert_eq!(out, b"B -\n");
    }

    #[test]
    fn login_shells_should_be_told_apart() {
        assert!(is_posix_shell("/bin/bash"));
        assert!(is_posix_shell("/usr/bin/dash\n"));
        assert!(!is_posix_shell("/usr/bin/zsh"));
        assert!(!is_posix_shell("/usr/bin/fish"));
        assert!(!is_posix_shell(""));
    }

    #[test]
    fn only_our_job_directories_should_be_removable() {
        assert!(is_job_dir("/home/a/.cache/mcp-ssh/jobs/7f3a2c"));
        assert!(!is_job_dir("/home/a/.cache/mcp-ssh/jobs"));
        assert!(!is_job_dir("/home/a/.cache/mcp-ssh/jobs/../../x"));
        assert!(!is_job_dir("/home/a/.cache/mcp-ssh/jobs/7f3a2g"));
        assert!(!is_job_dir("relative/mcp-ssh/jobs/7f3a2c"));
        assert!(!is_job_dir("/"));
        assert!(!is_job_dir("/x/../mcp-ssh/jobs/7f3a2c"));
    }

    #[test]
    fn the_kill_script_should_keep_the_job_directory_apart_from_the_stop_script() {
        // The stop script's `alive` loops with `$d`; the job directory must not live there, or
        // `killed` is never updated to KILL after the grace.
        let script = kill_script("/h/.cache/mcp-ssh/jobs/00aa11", "TERM");
        assert!(script.contains(r#"echo KILL > "$jd/killed""#), "{script}");
        assert!(!script.contains("\"$d/"), "{script}");
    }

    #[test]
    fn start_answers_should_be_read() {
        let out = |s: &str| Captured {
            stdout: s.as_bytes().to_vec(),
            ..Captured::default()
        };
        assert_eq!(
            parse_start(&out("MCPSSH-JOB abc /h/.cache/mcp-ssh/jobs/00aa11\n")),
            StartOutcome::Started {
                dir: "/h/.cache/mcp-ssh/jobs/00aa11".into(),
                boot_id: "abc".into()
            }
        );
        assert_eq!(parse_start(&out("MCPSSH-TAKEN\n")), StartOutcome::IdTaken);
        assert_eq!(parse_start(&out("MCPSSH-NOCWD\n")), StartOutcome::NoCwd);
        assert!(matches!(
            parse_start(&out("MCPSSH-FAILED cannot create /x\n")),
            StartOutcome::Failed(why) if why == "cannot create /x"
        ));
    }

    #[test]
    fn probe_answers_should_be_framed_by_their_lengths() {
        let windows = Some([
            WindowAsk {
                offset: None,
                max: 4,
                head: 2,
            },
            WindowAsk {
                offset: Some(0),
                max: 10,
                head: 0,
            },
        ]);
        let asks = [
            ProbeAsk { dir: "/a", windows },
            ProbeAsk {
                dir: "/b",
                windows: None,
            },
        ];
        let mut answer =
            b"B boot-1\nJ running - - - 8 3 0 3 - x\nerrW 4 4 2\nab5678W 0 3 0\nerr".to_vec();
        answer.extend_from_slice(
            b"J ended 137 1700000002000000000 KILL 0 0 0 0 1700000000000000000 o\n",
        );
        let report = parse_probe(&answer, &asks).unwrap();
        assert_eq!(report.boot_id, "boot-1");
        let [a, b] = &report.jobs[..] else { panic!() };
        assert_eq!(a.state, RemoteState::Running);
        assert_eq!(a.tail, b"err");
        let w = a.windows.as_ref().unwrap();
        assert_eq!(
            (w[0].offset, &w[0].head[..], &w[0].data[..]),
            (4, &b"ab"[..], &b"5678"[..])
        );
        assert_eq!(&w[1].data[..], b"err");
        assert_eq!(
            b.state,
            RemoteState::Ended {
                status: 137,
                ran_ms: Some(2000)
            }
        );
        assert_eq!(b.killed.as_deref(), Some("KILL"));
        assert_eq!(ran_ms("u12345", "u12470"), Some(1250));
        assert_eq!(ran_ms("u12345", "1700000002000000000"), None);
        assert_eq!(ran_ms("u12345", "-"), None);
        assert!(parse_probe(b"B x\nJ running - - - 8 3 0 9 - o\nshort", &asks).is_err());
    }

    #[test]
    fn tail_windows_should_give_the_last_line_without_a_separate_tail() {
        let tail = WindowAsk {
            offset: None,
            max: 4096,
            head: 0,
        };
        let asks = [ProbeAsk {
            dir: "/a",
            windows: Some([tail; 2]),
        }];
        let script = probe_script(&asks);
        assert!(script.contains("j '/a' 0\n"), "{script}");
        let answer = b"B -\nJ running - - - 4 6 0 0 - x\nW 0 4 0\nout\nW 0 6 0\nerr 1\n";
        let report = parse_probe(answer, &asks).unwrap();
        assert_eq!(report.jobs[0].tail, b"err 1\n");
        let windows = Some([
            tail,
            WindowAsk {
                offset: Some(0),
                max: 10,
                head: 0,
            },
        ]);
        let asks = [ProbeAsk { dir: "/a", windows }];
        assert!(probe_script(&asks).contains(&format!("j '/a' {TAIL_FOR_LAST_LINE}\n")));
    }
}
