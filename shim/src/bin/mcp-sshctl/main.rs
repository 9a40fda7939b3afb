//! `mcp-sshctl`: the human's view of and handle on the mcp-ssh daemon.
//!
//! This file holds the command line and the dispatch; each group of subcommands lives in its own
//! module under `cmd/`, and `output.rs` holds how things are printed (failures, tables,
//! durations).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args as ClapArgs, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use mcp_ssh_proto::paths;
use mcp_ssh_shim::client::{ClientError, ClientKind, ClientOptions, Identity};

mod cmd;
mod output;

use cmd::{ConfigArg, Ctx};

/// Control and inspect mcp-sshd, the daemon behind mcp-ssh-shim.
///
/// Exit codes: 0 success; 1 failure; 2 bad usage; 3 mcp-sshd is not running; 4 hosts.json is
/// invalid (reload); for `exec`, the remote command's own code, or 255 when it could not run;
/// for `job logs --follow`, the job's code once it ends.
#[derive(Parser, Debug)]
#[command(name = "mcp-sshctl", version)]
struct Args {
    /// Print JSON (one document on stdout; errors as {"error": ...})
    #[arg(long, global = true)]
    json: bool,
    /// hosts.json for a daemon this command starts (a running one keeps its own; mcp-sshctl
    /// says so) [default: ~/.config/mcp-ssh/hosts.json]
    #[arg(long, global = true, env = paths::CONFIG_ENV)]
    config: Option<PathBuf>,
    /// Daemon socket [default: per-user runtime directory]
    #[arg(long, global = true, env = paths::SOCKET_ENV)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the daemon, its hosts, jobs and attached clients (never starts a daemon)
    Status,
    /// List configured hosts and their connection state
    Hosts,
    /// Run a command on a host, or on many, through the daemon's connections; exits with its
    /// exit code (the highest of them; 255 when a host could not run it)
    ///
    /// As with ssh, options go between the host and the command, and everything from the
    /// command's first word on belongs to it (`--` is optional): `mcp-sshctl exec gpu-box
    /// --cwd /data ls -la`, `mcp-sshctl exec @gpus -- nvidia-smi -L`.
    Exec {
        /// Host name from hosts.json; or many: @group, glob (`web-*`), comma-separated list
        #[arg(value_name = "HOSTS")]
        host: String,
        #[command(flatten)]
        run: RunOptions,
        /// The command; words are joined with spaces, as ssh does
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Upload a file or directory (atomic; a progress bar on a terminal); a directory is
    /// synced: only files whose size or modification time differ are sent
    Upload {
        host: String,
        /// Local file or directory
        local: String,
        /// Remote destination: an existing directory receives a file by name; a directory
        /// names the tree itself (ending in '/': the tree goes into it by its name)
        remote: String,
        /// Compare the SHA-256 with one computed on the host
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        sync: SyncFlags,
    },
    /// Download a file or directory (atomic; a progress bar on a terminal); a directory is
    /// synced as with upload
    Download {
        host: String,
        /// Remote file or directory
        remote: String,
        /// Local destination, as the remote one of upload
        local: String,
        /// Compare the SHA-256 with one computed on the host
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        sync: SyncFlags,
    },
    /// List jobs (commands that outlive the call), whoever started them
    Jobs {
        /// Only this host's jobs
        #[arg(long)]
        host: Option<String>,
        /// Only jobs in this state
        #[arg(long, value_enum)]
        state: Option<JobStateArg>,
    },
    /// Start, read, kill or forget a job
    #[command(subcommand)]
    Job(JobCmd),
    /// Forward a host's port to 127.0.0.1 (as ssh -L), kept by the daemon; list or close
    /// forwards; or relay a port on the host to this machine (-R)
    ///
    /// `forward gpu-box 6006` (a free local port), `forward gpu-box 8080:6006`,
    /// `forward -R gpu-box 8080:localhost:3000`, `forward --list`, `forward --close f1`.
    Forward {
        /// Host name from hosts.json
        #[arg(required_unless_present_any = ["list", "close"])]
        host: Option<String>,
        /// [LOCAL_PORT:]REMOTE_PORT; with -R, [BIND:]PORT:LOCAL_HOST:LOCAL_PORT
        #[arg(required_unless_present_any = ["list", "close"], value_name = "SPEC")]
        spec: Option<String>,
        /// Where the port is, as seen from the host [default: localhost]
        #[arg(long, value_name = "H")]
        remote_host: Option<String>,
        /// Listen on a Unix socket (0600) beside the daemon's socket instead of a port
        #[arg(long, conflicts_with = "remote")]
        unix: bool,
        /// Relay a port on the host to this machine (as ssh -R)
        #[arg(short = 'R', long = "remote")]
        remote: bool,
        /// List the forwards
        #[arg(long, conflicts_with_all = ["host", "close"])]
        list: bool,
        /// Close the forward with this id
        #[arg(long, value_name = "ID", conflicts_with = "host")]
        close: Option<String>,
    },
    /// List the temporary files of large transfers that were cut off, kept so that the same
    /// upload or download asked again resumes; or remove them
    Partials {
        /// Remove the kept transfer with this id and its temporary file (repeatable)
        #[arg(long, value_name = "ID")]
        discard: Vec<String>,
        /// Remove every kept transfer that is not running
        #[arg(long, conflicts_with = "discard")]
        all: bool,
    },
    /// Close the daemon's connection to a host
    Disconnect { host: String },
    /// Re-read hosts.json (as SIGHUP does); an invalid file changes nothing and exits 4
    Reload,
    /// Stop the daemon (in-flight calls get a grace period; jobs keep running on their hosts)
    Stop,
    /// Check the setup: config, permissions, socket, daemon, ssh-agent, and each host
    /// (DNS, TCP, host key, authentication); says how to fix what is wrong
    Doctor,
    /// Where the daemon logs; with --tail N, its last N lines
    Logs {
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
}

/// What a directory transfer (a sync) may leave out, remove, or only report.
#[derive(ClapArgs, Debug)]
struct SyncFlags {
    /// Leave out paths matching this gitignore-style pattern (repeatable)
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Also honour the source tree's .gitignore and .ignore files
    #[arg(long)]
    gitignore: bool,
    /// Remove destination files and directories the source does not have
    #[arg(long)]
    delete: bool,
    /// Say what would be sent and removed; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Compare contents (SHA-256 on both sides) instead of size and modification time
    #[arg(long)]
    checksum: bool,
}

impl SyncFlags {
    fn into_args(self) -> cmd::transfer::SyncArgs {
        cmd::transfer::SyncArgs {
            exclude: self.exclude,
            gitignore: self.gitignore,
            delete: self.delete,
            dry_run: self.dry_run,
            checksum: self.checksum,
        }
    }
}

/// Options of `exec`; they go between the host and the command, as ssh's do.
#[derive(ClapArgs, Debug)]
struct RunOptions {
    /// Inactivity timeout in seconds [default: the host's command_timeout]
    #[arg(long)]
    timeout: Option<u32>,
    /// Remote working directory
    #[arg(long)]
    cwd: Option<String>,
    /// Many hosts: print each host's lines as it ends, prefixed with its name, instead of the
    /// hosts that ended alike gathered once
    #[arg(long)]
    per_host: bool,
    /// Many hosts: start no more hosts once one has failed
    #[arg(long)]
    stop_on_error: bool,
}

#[derive(Subcommand, Debug)]
enum JobCmd {
    /// Start a command as a job on a host and print its id (`--json`: the whole job)
    Start {
        /// Host name from hosts.json
        host: String,
        /// Working directory on the host ("~" and "~/dir" are the remote home)
        #[arg(long)]
        cwd: Option<String>,
        /// The command; words are joined with spaces, as ssh does (`--` is optional)
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "COMMAND"
        )]
        command: Vec<String>,
    },
    /// Print a job's output from the start, as written (stdout, or stderr with --stderr)
    Logs {
        /// Job id, as `mcp-sshctl jobs` lists it (HOST/ID)
        id: String,
        /// Keep printing new output until the job ends, then exit with its exit code
        #[arg(long, short = 'f')]
        follow: bool,
        /// Print stderr instead of stdout
        #[arg(long)]
        stderr: bool,
    },
    /// Stop a job's whole process group (TERM, then KILL after a grace period)
    Kill {
        id: String,
        #[arg(long, value_enum, default_value_t = SignalArg::Term)]
        signal: SignalArg,
    },
    /// Remove a finished job: its directory on the host and the daemon's record of it
    Forget { id: String },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum JobStateArg {
    Running,
    Exited,
    Killed,
    Lost,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "UPPER")]
enum SignalArg {
    Term,
    Int,
    Kill,
}

/// Exit codes: the remote command's own for `exec` (and `job logs --follow`); otherwise these.
const EXIT_ERROR: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_RUNNING: u8 = 3;
const EXIT_INVALID_CONFIG: u8 = 4;
/// As ssh: 255 when the command could not be run at all (or a job was lost).
const EXIT_REMOTE_FAILURE: u8 = 255;

/// A closed pipe (`mcp-sshctl status | head`) ends the program quietly, as it does `ls`, instead
/// of making `println!` panic: Rust ignores SIGPIPE by default.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in `main`, before any other thread exists, and SIG_DFL runs no
    // handler code of ours.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    default_sigpipe();
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    // Whether the config came from --config or from the environment, for messages about it.
    let config_from_env = matches!(
        matches.value_source("config"),
        Some(ValueSource::EnvVariable)
    );
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-sshctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    runtime.block_on(run(args, config_from_env))
}

async fn run(args: Args, config_from_env: bool) -> ExitCode {
    let ctx = Ctx {
        opts: ClientOptions {
            socket: args.socket.clone(),
            config: args.config.clone(),
            identity: Identity {
                kind: ClientKind::Ctl,
                name: "mcp-sshctl".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                program: "mcp-sshctl",
            },
        },
        json: args.json,
        config_arg: args.config.map(|path| ConfigArg {
            path,
            from_env: config_from_env,
        }),
    };
    let result = match args.command {
        Cmd::Status => cmd::status::status(&ctx).await,
        Cmd::Partials { discard, all } => cmd::partials::partials(&ctx, discard, all).await,
        Cmd::Hosts => cmd::status::hosts(&ctx).await,
        Cmd::Exec { host, run, command } if cmd::fleet::is_many(&host) => {
            let ask = cmd::fleet::ManyAsk {
                targets: host,
                command: command.join(" "),
                timeout: run.timeout,
                cwd: run.cwd,
                per_host: run.per_host,
                stop_on_error: run.stop_on_error,
            };
            cmd::fleet::exec_many(&ctx, ask).await
        }
        Cmd::Exec { host, run, command } => {
            cmd::exec::exec(&ctx, host, run.timeout, run.cwd, command.join(" ")).await
        }
        Cmd::Upload {
            host,
            local,
            remote,
            verify,
            sync,
        } => {
            let paths = (host, local, remote);
            cmd::transfer::transfer(&ctx, true, paths, verify, sync.into_args()).await
        }
        Cmd::Download {
            host,
            remote,
            local,
            verify,
            sync,
        } => {
            let paths = (host, local, remote);
            cmd::transfer::transfer(&ctx, false, paths, verify, sync.into_args()).await
        }
        Cmd::Jobs { host, state } => cmd::jobs::list(&ctx, host, state.map(job_state)).await,
        Cmd::Job(JobCmd::Start { host, cwd, command }) => {
            cmd::jobs::start(&ctx, host, cwd, command.join(" ")).await
        }
        Cmd::Job(JobCmd::Logs { id, follow, stderr }) => {
            cmd::jobs::logs(&ctx, id, follow, stderr).await
        }
        Cmd::Job(JobCmd::Kill { id, signal }) => {
            let signal = match signal {
                SignalArg::Term => "TERM",
                SignalArg::Int => "INT",
                SignalArg::Kill => "KILL",
            };
            cmd::jobs::kill(&ctx, id, signal).await
        }
        Cmd::Job(JobCmd::Forget { id }) => cmd::jobs::forget(&ctx, id).await,
        Cmd::Forward {
            host,
            spec,
            remote_host,
            unix,
            remote,
            list,
            close,
        } => {
            let ask = match (list, close, host, spec) {
                (true, _, _, _) => cmd::forward::ForwardAsk::List,
                (_, Some(id), _, _) => cmd::forward::ForwardAsk::Close(id),
                (_, _, Some(host), Some(spec)) => cmd::forward::ForwardAsk::Open {
                    host,
                    spec,
                    remote_host,
                    unix,
                    remote,
                },
                // clap requires HOST and SPEC without --list or --close.
                _ => cmd::forward::ForwardAsk::List,
            };
            cmd::forward::forward(&ctx, ask).await
        }
        Cmd::Disconnect { host } => cmd::daemon::disconnect(&ctx, host).await,
        Cmd::Reload => cmd::daemon::reload(&ctx).await,
        Cmd::Stop => cmd::daemon::stop(&ctx).await,
        Cmd::Logs { tail } => cmd::daemon::logs(&ctx, tail),
        Cmd::Doctor => cmd::doctor::run(&ctx.opts, ctx.json).await,
        Cmd::Completions { shell } => {
            cmd::daemon::completions(shell, &mut Args::command());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            output::fail(ctx.json, &output::error_text(&e));
            ExitCode::from(match e {
                ClientError::NotRunning(_) => EXIT_NOT_RUNNING,
                _ => EXIT_ERROR,
            })
        }
    }
}

fn job_state(state: JobStateArg) -> mcp_ssh_proto::pb::JobState {
    use mcp_ssh_proto::pb::JobState;
    match state {
        JobStateArg::Running => JobState::Running,
        JobStateArg::Exited => JobState::Exited,
        JobStateArg::Killed => JobState::Killed,
        JobStateArg::Lost => JobState::Lost,
    }
}
