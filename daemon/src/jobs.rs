//! The daemon's jobs: a record of every job it started, kept in `<socket>.jobs.json` (0600,
//! beside the socket) so a restarted daemon still knows them; ids; reading state and output from
//! the hosts (whose job directories are the truth, see `ssh::job`); waiting; killing; retention.
//!
//! A record is a cache of the host's truth plus what only the daemon knows (who started the job,
//! when, the directory). When the host cannot be asked, the record is shown as it was last seen,
//! with the reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::audit::{ClientRef, Record};
use crate::error::Error;
use crate::registry::{HostEntry, Registry};
use crate::ssh::job::{self, KillAnswer, Probe, ProbeAsk, RemoteState, StartOutcome, WindowAsk};
use crate::sync::lock;

/// How often running jobs are checked in the background (for `job_finished` records, status and
/// retention).
const MONITOR_EVERY: Duration = Duration::from_secs(10);
/// The shortest pause between background checks (when jobs expire sooner than every 10 s).
const MONITOR_MIN_PAUSE: Duration = Duration::from_secs(1);
/// After a host could not be asked, the background check waits this long, doubling to
/// [`MONITOR_BACKOFF_MAX`], so an unreachable host is not dialled every few seconds.
const MONITOR_BACKOFF: Duration = Duration::from_secs(30);
const MONITOR_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Bound on one script of ours on a host (beyond connecting).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(15);
/// How long `List` waits for one host before showing its jobs as last seen.
const LIST_DEADLINE: Duration = Duration::from_secs(5);
/// How much new output one poll reads per stream while matching `until`.
const UNTIL_CHUNK: u64 = 256 * 1024;
/// How often a waiting `Output` reports progress.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Longest line kept as "last line".
const LAST_LINE_CHARS: usize = 200;
/// Attempts at a fresh id when a host already has a directory of that name.
const ID_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Exited,
    Killed,
    Lost,
}

/// What the daemon knows of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub host: String,
    pub command: String,
    pub cwd: String,
    pub dir: String,
    pub boot_id: String,
    pub started_at_ms: i64,
    pub started_by: String,
    /// The client that started it, for the `job_finished` audit record.
    #[serde(default)]
    pub client: Option<StartedBy>,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub ended_at_ms: Option<i64>,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub last_line: String,
    pub checked_at_ms: i64,
    pub stale_reason: Option<String>,
    pub note: Option<String>,
    /// Forgotten by the user while the host could not be reached: hidden, and its directory is
    /// removed once the host is back.
    #[serde(default)]
    pub forget_pending: bool,
}

impl JobRecord {
    pub fn is_running(&self) -> bool {
        self.state == JobState::Running
    }

    /// `exited 0`, `killed by TERM`, …, for messages.
    pub fn state_words(&self) -> String {
        match (self.state, self.exit_code, &self.signal) {
            (JobState::Running, ..) => "running".into(),
            (JobState::Exited, Some(code), _) => format!("exited {code}"),
            (JobState::Exited, None, _) => "exited".into(),
            (JobState::Killed, _, Some(sig)) => format!("killed by {sig}"),
            (JobState::Killed, _, None) => "killed".into(),
            (JobState::Lost, ..) => "lost".into(),
        }
    }

    pub fn duration_ms(&self) -> u64 {
        let end = self.ended_at_ms.unwrap_or_else(now_ms);
        u64::try_from(end.saturating_sub(self.started_at_ms)).unwrap_or(0)
    }
}

/// A job to probe, and the windows of its output to read (none: state and sizes only).
type JobAsk = (String, Option<[WindowAsk; 2]>);

/// [`ClientRef`] as kept in the job records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedBy {
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub pid: u32,
}

impl From<&ClientRef> for StartedBy {
    fn from(c: &ClientRef) -> StartedBy {
        StartedBy {
            name: c.name.clone(),
            version: c.version.clone(),
            pid: c.pid,
        }
    }
}

impl From<&StartedBy> for ClientRef {
    fn from(c: &StartedBy) -> ClientRef {
        ClientRef {
            name: c.name.clone(),
            version: c.version.clone(),
            pid: c.pid,
        }
    }
}

/// Which parts of the output an `Output` call wants, and how long it may wait.
pub struct OutputAsk {
    pub windows: [WindowAsk; 2],
    pub wait: Duration,
    pub until: Option<regex::Regex>,
}

pub struct OutputAnswer {
    pub job: JobRecord,
    pub windows: [job::Window; 2],
    pub matched_line: Option<String>,
    pub waited: Duration,
}

/// Progress of a waiting `Output` call.
pub struct Heartbeat {
    pub waited: Duration,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    pub last_line: String,
}

pub struct KillReport {
    pub job: JobRecord,
    pub confirmed: bool,
    pub outcome: String,
}

pub struct Jobs {
    registry: Arc<Registry>,
    file: Option<PathBuf>,
    records: Mutex<BTreeMap<String, JobRecord>>,
    /// Told when a job is seen ending, so the monitor reconsiders when to check next.
    ended: tokio::sync::Notify,
}

impl Jobs {
    /// Loads the records kept beside the socket (an unreadable file is reported and replaced).
    pub fn open(registry: Arc<Registry>, file: Option<PathBuf>) -> Arc<Jobs> {
        let records = file
            .as_deref()
            .and_then(crate::state_file::load::<Vec<JobRecord>>)
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Arc::new(Jobs {
            registry,
            file,
            records: Mutex::new(records),
            ended: tokio::sync::Notify::new(),
        })
    }

    fn save(&self, records: &BTreeMap<String, JobRecord>) {
        if let Some(path) = &self.file {
            let list: Vec<&JobRecord> = records.values().collect();
            crate::state_file::save(path, &list, "job records");
        }
    }

    fn get(&self, id: &str) -> Result<JobRecord, Error> {
        lock(&self.records)
            .get(id)
            .filter(|r| !r.forget_pending)
            .cloned()
            .ok_or_else(|| Error::UnknownJob(id.to_string()))
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let mut records = lock(&self.records);
        let record = records.get_mut(id)?;
        f(record);
        let copy = record.clone();
        self.save(&records);
        Some(copy)
    }

    /// Whether any job on record ran on `host`.
    pub fn knows_host(&self, host: &str) -> bool {
        lock(&self.records).values().any(|r| r.host == host)
    }

    /// (known, running) counts, and running jobs per host.
    pub fn counts(&self) -> (u32, u32, HashMap<String, u32>) {
        let records = lock(&self.records);
        let mut per_host = HashMap::new();
        let mut running = 0;
        let visible = records.values().filter(|r| !r.forget_pending);
        let mut known = 0;
        for r in visible {
            known += 1;
            if r.is_running() {
                running += 1;
                *per_host.entry(r.host.clone()).or_insert(0) += 1;
            }
        }
        (known, running, per_host)
    }

    /// Starts `command` (already checked against the host's policy) on `host` as a job.
    pub async fn start(
        &self,
        caller: &Option<ClientRef>,
        host: &HostEntry,
        shown_command: &str,
        command: &str,
        cwd: &str,
    ) -> Result<JobRecord, Error> {
        let name = host.name();
        for _ in 0..ID_ATTEMPTS {
            let hex = self.fresh_hex(&name);
            let script = job::start_script(&hex, command, (!cwd.is_empty()).then_some(cwd));
            let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
            let out = host
                .run_script(caller, &script, deadline)
                .await
                .map_err(|e| start_failed(&name, &hex, e))?;
            match job::parse_start(&out) {
                StartOutcome::Started { dir, boot_id } => {
                    let now = now_ms();
                    let record = JobRecord {
                        id: format!("{name}/{hex}"),
                        host: name.clone(),
                        command: shown_command.to_string(),
                        cwd: cwd.to_string(),
                        dir,
                        boot_id,
                        started_at_ms: now,
                        started_by: caller
                            .as_ref()
                            .map(|c| format!("{} (pid {})", c.name, c.pid))
                            .unwrap_or_else(|| "mcp-sshd".into()),
                        client: caller.as_ref().map(StartedBy::from),
                        state: JobState::Running,
                        exit_code: None,
                        signal: None,
                        ended_at_ms: None,
                        stdout_bytes: 0,
                        stderr_bytes: 0,
                        last_line: String::new(),
                        checked_at_ms: now,
                        stale_reason: None,
                        note: None,
                        forget_pending: false,
                    };
                    let mut records = lock(&self.records);
                    records.insert(record.id.clone(), record.clone());
                    self.save(&records);
                    return Ok(record);
                }
                StartOutcome::IdTaken => continue,
                StartOutcome::NoCwd => {
                    return Err(Error::InvalidArgument(format!(
                        "working directory {cwd:?} does not exist on {name}; nothing was started"
                    )));
                }
                StartOutcome::Failed(why) => {
                    return Err(Error::JobFailed(format!(
                        "could not start a job on {name}: {why}; nothing was started"
                    )));
                }
            }
        }
        Err(Error::JobFailed(format!(
            "could not find a free job id on {name}; nothing was started"
        )))
    }

    fn fresh_hex(&self, host: &str) -> String {
        let records = lock(&self.records);
        loop {
            let mut bytes = [0u8; 3];
            // The OS random source; should it fail, the clock still gives distinct ids and a
            // directory that exists is detected on the host anyway.
            if getrandom::fill(&mut bytes).is_err() {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                bytes.copy_from_slice(&nanos.to_le_bytes()[..3]);
            }
            let hex = hex::encode(bytes);
            if !records.contains_key(&format!("{host}/{hex}")) {
                return hex;
            }
        }
    }

    /// Asks `host` about `ids` (with windows when given) and updates their records. Records
    /// `job_finished` for jobs seen ended for the first time.
    async fn probe(
        &self,
        caller: &Option<ClientRef>,
        host: &HostEntry,
        asks: &[JobAsk],
        deadline: Duration,
    ) -> Result<Vec<(JobRecord, Option<[job::Window; 2]>)>, Error> {
        let records: Vec<JobRecord> = {
            let all = lock(&self.records);
            asks.iter()
                .filter_map(|(id, _)| all.get(id).cloned())
                .collect()
        };
        let probe_asks: Vec<ProbeAsk> = records
            .iter()
            .zip(asks)
            .map(|(r, (_, windows))| ProbeAsk {
                dir: &r.dir,
                windows: *windows,
            })
            .collect();
        let script = job::probe_script(&probe_asks);
        let answer = host.run_script(caller, &script, deadline).await;
        let report = answer.and_then(|out| {
            job::parse_probe(&out.stdout, &probe_asks).map_err(|why| {
                Error::JobFailed(format!("could not read the jobs on {}: {why}", host.name()))
            })
        });
        let report = match report {
            Ok(report) => report,
            Err(e) => {
                let reason = e.to_string();
                let mut all = lock(&self.records);
                for r in &records {
                    if let Some(rec) = all.get_mut(&r.id) {
                        rec.stale_reason = Some(reason.clone());
                    }
                }
                self.save(&all);
                return Err(e);
            }
        };
        let now = now_ms();
        let mut finished = Vec::new();
        let mut updated = Vec::new();
        {
            let mut all = lock(&self.records);
            // Only a change worth keeping rewrites the file: a wait polls a quiet job often,
            // and when it was last checked alone is not worth a write.
            let mut changed = false;
            for (r, probe) in records.iter().zip(report.jobs) {
                let Some(rec) = all.get_mut(&r.id) else {
                    continue;
                };
                let was_running = rec.is_running();
                let before = rec.clone();
                apply_probe(rec, &probe, &report.boot_id, now);
                changed |= JobRecord {
                    checked_at_ms: rec.checked_at_ms,
                    ..before
                } != *rec;
                if was_running && !rec.is_running() {
                    finished.push(rec.clone());
                }
                updated.push((rec.clone(), probe.windows));
            }
            if changed {
                self.save(&all);
            }
        }
        if !finished.is_empty() {
            self.ended.notify_one();
        }
        for rec in finished {
            self.audit_finished(&rec);
        }
        Ok(updated)
    }

    fn audit_finished(&self, rec: &JobRecord) {
        self.registry.audit.record(Record {
            action: "job_finished",
            outcome: match rec.state {
                JobState::Exited if rec.exit_code == Some(0) => "ok",
                JobState::Exited => "failed",
                JobState::Killed => "killed",
                JobState::Lost | JobState::Running => "lost",
            },
            host: Some(rec.host.clone()),
            client: rec.client.as_ref().map(ClientRef::from),
            job: Some(rec.id.clone()),
            command: Some(rec.command.clone()),
            exit_code: rec.exit_code,
            signal: rec.signal.clone(),
            duration_ms: Some(rec.duration_ms()),
            bytes: Some(rec.stdout_bytes + rec.stderr_bytes),
            error: rec.note.clone(),
            ..Record::default()
        });
    }

    fn host_of(&self, rec: &JobRecord) -> Result<Arc<HostEntry>, Error> {
        self.registry.host(&rec.host).map_err(|_| {
            Error::JobFailed(format!(
                "job {} is on host {}, which is no longer in hosts.json; it was last seen {}",
                rec.id,
                rec.host,
                rec.state_words()
            ))
        })
    }

    /// The job's state and output windows; with `ask.wait`, waits for the job to end or `until`
    /// to match new output, calling `heartbeat` about once a second (it returns false when the
    /// caller went away, which ends the wait).
    pub async fn output(
        &self,
        caller: &Option<ClientRef>,
        id: &str,
        ask: OutputAsk,
        mut heartbeat: impl FnMut(Heartbeat) -> bool,
    ) -> Result<OutputAnswer, Error> {
        let rec = self.get(id)?;
        let host = self.host_of(&rec)?;
        let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
        let started = Instant::now();
        let mut matched_line = None;
        if rec.is_running() && !ask.wait.is_zero() {
            matched_line = self
                .wait(caller, &host, &rec, &ask, started, &mut heartbeat)
                .await?;
        }
        let mut answer = self
            .probe(
                caller,
                &host,
                &[(rec.id.clone(), Some(ask.windows))],
                deadline,
            )
            .await?;
        let (job, windows) = answer
            .pop()
            .ok_or_else(|| Error::UnknownJob(id.to_string()))?;
        Ok(OutputAnswer {
            job,
            windows: windows.unwrap_or_default(),
            matched_line,
            waited: started.elapsed(),
        })
    }

    /// Polls until the job ends, `until` matches a new line, the wait is over or the caller went
    /// away. Returns the matching line.
    async fn wait(
        &self,
        caller: &Option<ClientRef>,
        host: &HostEntry,
        rec: &JobRecord,
        ask: &OutputAsk,
        started: Instant,
        heartbeat: &mut impl FnMut(Heartbeat) -> bool,
    ) -> Result<Option<String>, Error> {
        let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
        // Where matching starts: the offsets asked for, else the output from now on.
        let mut scan: Option<[Scan; 2]> = None;
        let mut pause = Duration::from_millis(5);
        let mut last_beat = Instant::now();
        loop {
            let windows = ask.until.as_ref().map(|_| match &scan {
                Some(s) => [s[0].ask(), s[1].ask()],
                None => [0, 1].map(|i| WindowAsk {
                    offset: ask.windows[i].offset,
                    max: if ask.windows[i].offset.is_some() {
                        UNTIL_CHUNK
                    } else {
                        0
                    },
                    head: 0,
                }),
            });
            let mut polled = self
                .probe(caller, host, &[(rec.id.clone(), windows)], deadline)
                .await?;
            let Some((now, windows)) = polled.pop() else {
                return Ok(None);
            };
            let mut more_pending = false;
            if let (Some(re), Some(windows)) = (&ask.until, windows) {
                // The first windows start where matching starts (at the end of each stream when
                // no offset was asked for, with no data), so they are matched too.
                let scans = scan.get_or_insert_with(|| {
                    [Scan::at(windows[0].offset), Scan::at(windows[1].offset)]
                });
                for (i, w) in windows.iter().enumerate() {
                    if let Some(line) = scans[i].feed(w, re) {
                        return Ok(Some(line));
                    }
                }
                more_pending = scans[0].next < now.stdout_bytes || scans[1].next < now.stderr_bytes;
            }
            if !now.is_running() || started.elapsed() >= ask.wait {
                return Ok(None);
            }
            if last_beat.elapsed() >= HEARTBEAT_EVERY {
                last_beat = Instant::now();
                let beat = Heartbeat {
                    waited: started.elapsed(),
                    stdout_bytes: now.stdout_bytes,
                    stderr_bytes: now.stderr_bytes,
                    last_line: now.last_line.clone(),
                };
                if !heartbeat(beat) {
                    return Ok(None);
                }
            }
            if !more_pending {
                let left = ask.wait.saturating_sub(started.elapsed());
                tokio::time::sleep(pause.min(left)).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Signals the job's process group (`signal`, then KILL after the grace period) and reports
    /// whether it is gone.
    pub async fn kill(
        &self,
        caller: &Option<ClientRef>,
        id: &str,
        signal: &str,
    ) -> Result<KillReport, Error> {
        let rec = self.get(id)?;
        let host = self.host_of(&rec)?;
        let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
        let out = host
            .run_script(caller, &job::kill_script(&rec.dir, signal), deadline)
            .await?;
        let answer = job::parse_kill(&out).map_err(Error::JobFailed)?;
        let mut after = self
            .probe(caller, &host, &[(rec.id.clone(), None)], deadline)
            .await?;
        let job = match after.pop() {
            Some((job, _)) => job,
            None => rec,
        };
        let (confirmed, outcome) = match answer {
            KillAnswer::Gone { was_running: true } => {
                (true, format!("stopped: {}", job.state_words()))
            }
            KillAnswer::Gone { was_running: false } => {
                (true, format!("was not running: {}", job.state_words()))
            }
            KillAnswer::Alive => (
                false,
                "its process group survived SIGKILL; it may still be running".to_string(),
            ),
            KillAnswer::Missing => (true, "its job directory is gone from the host".to_string()),
        };
        Ok(KillReport {
            job,
            confirmed,
            outcome,
        })
    }

    /// Every job (of `host` when given, in `state` when given), running ones checked first.
    pub async fn list(&self, host: Option<&str>, state: Option<JobState>) -> Vec<JobRecord> {
        let running: Vec<JobRecord> = lock(&self.records)
            .values()
            .filter(|r| r.is_running() && !r.forget_pending)
            .filter(|r| host.is_none_or(|h| r.host == h))
            .cloned()
            .collect();
        let mut by_host: BTreeMap<String, Vec<JobAsk>> = BTreeMap::new();
        for r in running {
            by_host
                .entry(r.host.clone())
                .or_default()
                .push((r.id, None));
        }
        let checks = by_host.into_iter().map(|(name, asks)| async move {
            let Ok(entry) = self.registry.host(&name) else {
                return;
            };
            let limit = LIST_DEADLINE;
            let probe = self.probe(&None, &entry, &asks, limit);
            if tokio::time::timeout(limit, probe).await.is_err() {
                self.mark_stale(
                    asks.iter().map(|(id, _)| id.as_str()),
                    &format!("{name} did not answer within {} s", limit.as_secs()),
                );
            }
        });
        futures_util::future::join_all(checks).await;
        let mut jobs: Vec<JobRecord> = lock(&self.records)
            .values()
            .filter(|r| !r.forget_pending)
            .filter(|r| host.is_none_or(|h| r.host == h))
            .filter(|r| state.is_none_or(|s| r.state == s))
            .cloned()
            .collect();
        jobs.sort_by_key(|r| r.started_at_ms);
        jobs
    }

    fn mark_stale<'a>(&self, ids: impl Iterator<Item = &'a str>, reason: &str) {
        let mut all = lock(&self.records);
        for id in ids {
            if let Some(rec) = all.get_mut(id) {
                rec.stale_reason = Some(reason.to_string());
            }
        }
        self.save(&all);
    }

    /// Removes a finished job's directory on the host and its record. Returns whether the
    /// directory was removed now (false: the host could not be reached; it is removed later).
    pub async fn forget(&self, caller: &Option<ClientRef>, id: &str) -> Result<bool, Error> {
        let rec = self.get(id)?;
        let Ok(host) = self.registry.host(&rec.host) else {
            lock(&self.records).remove(id);
            self.save(&lock(&self.records));
            return Ok(false);
        };
        let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
        if rec.is_running() {
            let now = self
                .probe(caller, &host, &[(rec.id.clone(), None)], deadline)
                .await?;
            if now.first().is_some_and(|(r, _)| r.is_running()) {
                return Err(Error::JobRunning(rec.id));
            }
        }
        match self.remove_dirs(caller, &host, &[&rec]).await {
            Ok(()) => {
                let mut all = lock(&self.records);
                all.remove(id);
                self.save(&all);
                Ok(true)
            }
            Err(e) => {
                tracing::info!("job {id} forgotten; its directory is removed later: {e}");
                self.update(id, |r| r.forget_pending = true);
                Ok(false)
            }
        }
    }

    async fn remove_dirs(
        &self,
        caller: &Option<ClientRef>,
        host: &HostEntry,
        recs: &[&JobRecord],
    ) -> Result<(), Error> {
        let dirs: Vec<&str> = recs
            .iter()
            .map(|r| r.dir.as_str())
            .filter(|d| job::is_job_dir(d))
            .collect();
        if dirs.is_empty() {
            return Ok(());
        }
        let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
        let out = host
            .run_script(caller, &job::remove_script(&dirs), deadline)
            .await?;
        if String::from_utf8_lossy(&out.stdout).trim() == "removed" {
            Ok(())
        } else {
            Err(Error::JobFailed(format!(
                "could not remove job directories on {}: {}",
                host.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Checks running jobs and applies retention every [`MONITOR_EVERY`] (sooner when a
    /// finished job expires before that) until `stop` fires.
    pub fn spawn_monitor(self: &Arc<Self>, stop: CancellationToken) {
        let jobs = self.clone();
        tokio::spawn(async move {
            let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
            loop {
                jobs.monitor_once(&mut backoff).await;
                let regular = tokio::time::Instant::now() + MONITOR_EVERY;
                // A job seen ending meanwhile may expire before the pause is over.
                loop {
                    let next = (tokio::time::Instant::now() + jobs.next_check_in()).min(regular);
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => break,
                        () = jobs.ended.notified() => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        });
    }

    /// Until the next background check: [`MONITOR_EVERY`], or less when a finished job's
    /// retention ends sooner (but at least [`MONITOR_MIN_PAUSE`]). Jobs already due (their host
    /// could not be asked) wait for the usual cadence and backoff.
    fn next_check_in(&self) -> Duration {
        let retention =
            i64::try_from(self.registry.settings().job_retention.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let soonest = lock(&self.records)
            .values()
            .filter(|r| !r.is_running() && !r.forget_pending)
            .filter_map(|r| r.ended_at_ms)
            .map(|ended| ended.saturating_add(retention).saturating_add(1))
            .filter(|due| *due > now)
            .min();
        match soonest {
            Some(due) => Duration::from_millis(u64::try_from(due - now).unwrap_or(0))
                .clamp(MONITOR_MIN_PAUSE, MONITOR_EVERY),
            None => MONITOR_EVERY,
        }
    }

    async fn monitor_once(&self, backoff: &mut HashMap<String, (Instant, Duration)>) {
        let retention =
            i64::try_from(self.registry.settings().job_retention.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let (running, expired) = {
            let all = lock(&self.records);
            let mut running: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut expired: BTreeMap<String, Vec<JobRecord>> = BTreeMap::new();
            for r in all.values() {
                if r.is_running() && !r.forget_pending {
                    running
                        .entry(r.host.clone())
                        .or_default()
                        .push(r.id.clone());
                } else if r.forget_pending
                    || r.ended_at_ms
                        .unwrap_or(r.checked_at_ms)
                        .saturating_add(retention)
                        < now
                {
                    expired.entry(r.host.clone()).or_default().push(r.clone());
                }
            }
            (running, expired)
        };
        // Each host once, even when it has both running and expired jobs.
        let hosts: BTreeSet<&String> = running.keys().chain(expired.keys()).collect();
        for name in hosts {
            if backoff
                .get(name)
                .is_some_and(|(until, _)| Instant::now() < *until)
            {
                continue;
            }
            let Ok(host) = self.registry.host(name) else {
                continue;
            };
            let deadline = host.config().connect_timeout + SCRIPT_DEADLINE;
            let mut failed = None;
            if let Some(ids) = running.get(name) {
                let asks: Vec<_> = ids.iter().map(|id| (id.clone(), None)).collect();
                if let Err(e) = self.probe(&None, &host, &asks, deadline).await {
                    failed = Some(e);
                }
            }
            if let Some(recs) = expired.get(name).filter(|_| failed.is_none()) {
                let refs: Vec<&JobRecord> = recs.iter().collect();
                match self.remove_dirs(&None, &host, &refs).await {
                    Ok(()) => {
                        let mut all = lock(&self.records);
                        for r in recs {
                            all.remove(&r.id);
                            tracing::info!(job = %r.id, "job expired: its directory was removed");
                        }
                        self.save(&all);
                    }
                    Err(e) => failed = Some(e),
                }
            }
            match failed {
                None => {
                    backoff.remove(name);
                }
                Some(e) => {
                    let next = backoff
                        .get(name)
                        .map_or(MONITOR_BACKOFF, |(_, d)| (*d * 2).min(MONITOR_BACKOFF_MAX));
                    tracing::debug!(host = %name, "checking jobs failed: {e}; next try in {} s", next.as_secs());
                    backoff.insert(name.clone(), (Instant::now() + next, next));
                }
            }
        }
    }
}

fn start_failed(host: &str, hex: &str, e: Error) -> Error {
    let may_have_started = match &e {
        Error::Ssh(ssh) => {
            ssh.may_have_run() || matches!(**ssh, crate::ssh::SshError::HostTimeout { .. })
        }
        _ => false,
    };
    if may_have_started {
        Error::JobFailed(format!(
            "{e}. The job may or may not have started on {host}: check with ssh_execute \
             `cat ~/.cache/mcp-ssh/jobs/{hex}/pid` before starting it again"
        ))
    } else {
        e
    }
}

/// Folds what the host said into the record.
fn apply_probe(rec: &mut JobRecord, probe: &Probe, boot_id: &str, now: i64) {
    rec.checked_at_ms = now;
    rec.stale_reason = None;
    rec.stdout_bytes = probe.stdout_bytes;
    rec.stderr_bytes = probe.stderr_bytes;
    if let Some(line) = last_line(&probe.tail) {
        rec.last_line = line;
    }
    if !rec.is_running() {
        return;
    }
    match &probe.state {
        RemoteState::Running => {}
        RemoteState::Ended { status, ran_ms } => {
            let by_signal =
                (*status > 128 && *status < 128 + 65).then(|| job::signal_name(status - 128));
            // The host's own measure of how long it ran, from the start time the daemon saw:
            // never a difference between two machines' clocks.
            rec.ended_at_ms = Some(match ran_ms {
                Some(ms) => rec
                    .started_at_ms
                    .saturating_add(i64::try_from(*ms).unwrap_or(i64::MAX)),
                None => now,
            });
            if probe.killed.is_some() && by_signal.is_some() {
                rec.state = JobState::Killed;
                rec.signal = by_signal;
            } else {
                rec.state = JobState::Exited;
                rec.exit_code = Some(*status);
                rec.signal = by_signal;
            }
        }
        RemoteState::Vanished { logind_kills } => {
            rec.ended_at_ms = Some(now);
            if let Some(signal) = &probe.killed {
                rec.state = JobState::Killed;
                rec.signal = Some(signal.clone());
            } else {
                rec.state = JobState::Lost;
                rec.note = Some(
                    if rec.boot_id != "-" && boot_id != "-" && rec.boot_id != boot_id {
                        "the host rebooted while the job ran; it ended without an exit code"
                            .to_string()
                    } else if *logind_kills {
                        format!(
                            "the job's processes were killed without recording an exit code: systemd-logind \
                         on {} kills a user's processes when their last session ends \
                         (KillUserProcesses=yes). Run `loginctl enable-linger` as that user on the host \
                         so jobs survive",
                            rec.host
                        )
                    } else {
                        "the job's processes ended without recording an exit code (killed with SIGKILL \
                     from outside, the machine went down, or killed at logout: if the host runs \
                     systemd-logind with KillUserProcesses=yes, run `loginctl enable-linger` there)"
                        .to_string()
                    },
                );
            }
        }
        RemoteState::Missing => {
            rec.ended_at_ms = Some(now);
            rec.state = JobState::Lost;
            rec.note = Some(format!(
                "its job directory {} is gone from the host (removed by someone else?)",
                rec.dir
            ));
        }
    }
}

/// The last non-empty line of `tail` (after the last carriage return, as a terminal shows it),
/// escapes and control characters removed, shortened.
pub fn last_line(tail: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(tail);
    let line = text
        .split('\n')
        .map(|l| {
            l.rsplit('\r')
                .find(|part| !part.trim().is_empty())
                .unwrap_or("")
        })
        .rfind(|l| !l.trim().is_empty())?;
    let mut clean = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte; other escapes: ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                for p in chars.by_ref() {
                    if ('@'..='~').contains(&p) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            clean.push(c);
        }
    }
    let clean = clean.trim();
    if clean.is_empty() {
        return None;
    }
    let mut short: String = clean.chars().take(LAST_LINE_CHARS).collect();
    if clean.chars().count() > LAST_LINE_CHARS {
        short.push('…');
    }
    Some(short)
}

/// Matching `until` over new output, a line at a time.
struct Scan {
    next: u64,
    partial: Vec<u8>,
}

impl Scan {
    fn at(offset: u64) -> Scan {
        Scan {
            next: offset,
            partial: Vec::new(),
        }
    }

    fn ask(&self) -> WindowAsk {
        WindowAsk {
            offset: Some(self.next),
            max: UNTIL_CHUNK,
            head: 0,
        }
    }

    /// Takes the window read at `self.next`; returns the first complete new line matching `re`.
    fn feed(&mut self, w: &job::Window, re: &regex::Regex) -> Option<String> {
        if w.offset != self.next || w.data.is_empty() {
            return None;
        }
        self.next += w.data.len() as u64;
        self.partial.extend_from_slice(&w.data);
        let mut found = None;
        let mut consumed = 0;
        for (i, b) in self.partial.iter().enumerate() {
            if *b == b'\n' {
                let line = String::from_utf8_lossy(&self.partial[consumed..i]).into_owned();
                consumed = i + 1;
                if re.is_match(&line) {
                    found = Some(line);
                    break;
                }
            }
        }
        self.partial.drain(..consumed);
        // A line longer than a chunk without a newline still gets matched, in pieces.
        if found.is_none() && self.partial.len() as u64 > UNTIL_CHUNK {
            let piece = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            if re.is_match(&piece) {
                found = Some(piece);
            }
        }
        found.map(|l| last_line(l.as_bytes()).unwrap_or(l))
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_should_be_what_a_terminal_shows() {
        assert_eq!(last_line(b"a\nb\n\n").as_deref(), Some("b"));
        assert_eq!(
            last_line(b"epoch 1\r 10%\r 55%\n").as_deref(),
            Some(" 55%".trim())
        );
        assert_eq!(
            last_line(b"\x1b[31mred\x1b[0m done").as_deref(),
            Some("red done")
        );
        assert_eq!(last_line(b"\n\n"), None);
    }

    #[test]
    fn until_should_match_whole_lines_across_windows() {
        let re = regex::Regex::new("^step 3").unwrap();
        let mut scan = Scan::at(0);
        let w = |offset, data: &[u8]| job::Window {
            offset,
            data: data.to_vec(),
            head: Vec::new(),
        };
        assert_eq!(scan.feed(&w(0, b"step 1\nstep "), &re), None);
        assert_eq!(
            scan.feed(&w(12, b"3 done\n"), &re).as_deref(),
            Some("step 3 done")
        );
    }

    fn running() -> JobRecord {
        JobRecord {
            id: "h/000000".into(),
            host: "h".into(),
            command: "x".into(),
            cwd: String::new(),
            dir: "/h/.cache/mcp-ssh/jobs/000000".into(),
            boot_id: "boot".into(),
            started_at_ms: 0,
            started_by: "t".into(),
            client: None,
            state: JobState::Running,
            exit_code: None,
            signal: None,
            ended_at_ms: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            last_line: String::new(),
            checked_at_ms: 0,
            stale_reason: None,
            note: None,
            forget_pending: false,
        }
    }

    fn probe(state: RemoteState, killed: Option<&str>) -> Probe {
        Probe {
            state,
            killed: killed.map(str::to_string),
            stdout_bytes: 1,
            stderr_bytes: 2,
            tail: b"last\n".to_vec(),
            windows: None,
        }
    }

    #[test]
    fn host_answers_should_become_states() {
        let mut r = running();
        apply_probe(
            &mut r,
            &probe(
                RemoteState::Ended {
                    status: 143,
                    ran_ms: Some(5000),
                },
                Some("TERM"),
            ),
            "boot",
            9,
        );
        assert_eq!(
            (r.state, r.signal.as_deref(), r.ended_at_ms),
            (JobState::Killed, Some("TERM"), Some(5000))
        );
        let mut r = running();
        apply_probe(
            &mut r,
            &probe(
                RemoteState::Ended {
                    status: 3,
                    ran_ms: Some(5000),
                },
                None,
            ),
            "boot",
            9,
        );
        assert_eq!(
            (r.state, r.exit_code, r.last_line.as_str()),
            (JobState::Exited, Some(3), "last")
        );
        let mut r = running();
        apply_probe(
            &mut r,
            &probe(RemoteState::Vanished { logind_kills: true }, None),
            "boot",
            9,
        );
        assert_eq!(r.state, JobState::Lost);
        assert!(r.note.as_deref().unwrap_or("").contains("enable-linger"));
        let mut r = running();
        apply_probe(
            &mut r,
            &probe(
                RemoteState::Vanished {
                    logind_kills: false,
                },
                None,
            ),
            "other",
            9,
        );
        assert!(r.note.as_deref().unwrap_or("").contains("rebooted"));
        let mut r = running();
        apply_probe(
            &mut r,
            &probe(
                RemoteState::Vanished {
                    logind_kills: false,
                },
                Some("KILL"),
            ),
            "boot",
            9,
        );
        assert_eq!(
            (r.state, r.signal.as_deref()),
            (JobState::Killed, Some("KILL"))
        );
    }
}
