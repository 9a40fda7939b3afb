//! The result of `ssh_execute_many`: hosts that ended alike gathered once (as `clush -b` does),
//! counts first, failures grouped by reason, bounded in total.

use std::collections::BTreeMap;

use mcp_ssh_proto::pb::{self, run_many_event};
use schemars::JsonSchema;
use serde::Serialize;

use crate::mcp::output::CappedBuffer;

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its output as kept (at most the per-host limit of each stream).
    Exited {
        code: Option<i32>,
        signal: String,
        stdout: CappedBuffer,
        stderr: CappedBuffer,
    },
    Failed {
        kind: String,
        reason: String,
    },
    /// Not started: stop_on_error after another host failed.
    NotRun,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ManyResult {
    pub summary: String,
    /// Hosts with the same exit and output, once each
    pub groups: Vec<Gathered>,
    pub failures: Vec<Failure>,
    pub not_run: Vec<String>,
    /// Every host's exit code (null: did not exit normally)
    pub exit_codes: BTreeMap<String, Option<i32>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Gathered {
    pub hosts: Vec<String>,
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub signal: String,
    pub stdout: String,
    pub stderr: String,
    /// Bytes left out
    #[serde(skip_serializing_if = "is_zero")]
    pub cut: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Failure {
    pub kind: String,
    pub reason: String,
    pub hosts: Vec<String>,
}

/// One host while the call runs.
struct Running {
    name: String,
    stdout: CappedBuffer,
    stderr: CappedBuffer,
    outcome: Option<Outcome>,
}

/// Collects the events of an `Exec.RunMany` stream into each host's outcome, keeping at most
/// `per_host` bytes of each stream per host.
pub struct Gatherer {
    hosts: Vec<Running>,
    per_host: usize,
    done: usize,
}

impl Gatherer {
    pub fn new(per_host: usize) -> Gatherer {
        Gatherer {
            hosts: Vec::new(),
            per_host,
            done: 0,
        }
    }

    /// Takes in one event; returns the index of the host it ended, if it did.
    pub fn apply(&mut self, event: pb::RunManyEvent) -> Option<usize> {
        let index = event.index as usize;
        let event = event.event?;
        if let run_many_event::Event::Resolved(resolved) = event {
            let per_host = self.per_host;
            self.hosts = resolved
                .hosts
                .into_iter()
                .map(|name| Running {
                    name,
                    stdout: CappedBuffer::new(per_host),
                    stderr: CappedBuffer::new(per_host),
                    outcome: None,
                })
                .collect();
            return None;
        }
        let host = self.hosts.get_mut(index)?;
        if host.outcome.is_some() {
            return None;
        }
        host.outcome = match event {
            run_many_event::Event::Stdout(data) => {
                host.stdout.push(&data);
                None
            }
            run_many_event::Event::Stderr(data) => {
                host.stderr.push(&data);
                None
            }
            run_many_event::Event::Exit(exit) => {
                let stdout = std::mem::replace(&mut host.stdout, CappedBuffer::new(0));
                let stderr = std::mem::replace(&mut host.stderr, CappedBuffer::new(0));
                Some(Outcome::Exited {
                    code: exit.code,
                    signal: exit.signal,
                    stdout,
                    stderr,
                })
            }
            run_many_event::Event::Failed(f) => Some(Outcome::Failed {
                kind: f.kind,
                reason: f.reason,
            }),
            run_many_event::Event::NotRun(_) => Some(Outcome::NotRun),
            run_many_event::Event::Started(_) | run_many_event::Event::Resolved(_) => None,
        };
        host.outcome.is_some().then(|| {
            self.done += 1;
            index
        })
    }

    /// Hosts ended so far, and hosts in the call.
    pub fn progress(&self) -> (usize, usize) {
        (self.done, self.hosts.len())
    }

    /// A host's name and, once it ended, its outcome.
    pub fn host(&self, index: usize) -> Option<(&str, Option<&Outcome>)> {
        let h = self.hosts.get(index)?;
        Some((&h.name, h.outcome.as_ref()))
    }

    /// Every host with its outcome, in call order; a host the stream ended without is a failure.
    pub fn finish(self) -> Vec<(String, Outcome)> {
        self.hosts
            .into_iter()
            .map(|h| {
                let outcome = h.outcome.unwrap_or(Outcome::Failed {
                    kind: "error".into(),
                    reason: "the daemon ended the call without this host's result".into(),
                });
                (h.name, outcome)
            })
            .collect()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ManyResult {
    /// Gathers `hosts` (in call order) with their outcomes; the outputs shown stay within
    /// `budget` bytes in all, shared by the distinct outputs.
    pub fn new(hosts: Vec<(String, Outcome)>, budget: usize) -> ManyResult {
        let total = hosts.len();
        let mut exit_codes = BTreeMap::new();
        // Each distinct outcome once, with its hosts.
        let mut alike: Vec<(Outcome, Vec<String>)> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        let mut not_run = Vec::new();
        for (host, outcome) in hosts {
            match outcome {
                Outcome::Exited { code, .. } => {
                    exit_codes.insert(host.clone(), code);
                    match alike.iter_mut().find(|(o, _)| *o == outcome) {
                        Some((_, hosts)) => hosts.push(host),
                        None => alike.push((outcome, vec![host])),
                    }
                }
                Outcome::Failed { kind, reason } => {
                    exit_codes.insert(host.clone(), None);
                    match failures
                        .iter_mut()
                        .find(|f| f.kind == kind && f.reason == reason)
                    {
                        Some(f) => f.hosts.push(host),
                        None => failures.push(Failure {
                            kind,
                            reason,
                            hosts: vec![host],
                        }),
                    }
                }
                Outcome::NotRun => {
                    exit_codes.insert(host.clone(), None);
                    not_run.push(host);
                }
            }
        }
        // Most hosts first: the common outcome leads.
        alike.sort_by_key(|(_, hosts)| std::cmp::Reverse(hosts.len()));
        let share = budget / alike.len().max(1);
        let groups = alike
            .into_iter()
            .filter_map(|(outcome, hosts)| {
                let Outcome::Exited {
                    code,
                    signal,
                    stdout,
                    stderr,
                } = outcome
                else {
                    return None;
                };
                // The budget's share, split between the streams that have something.
                let out_share = if stderr.total() == 0 {
                    share
                } else {
                    share / 2
                };
                let stdout = stdout.shrink(out_share).finish();
                let stderr = stderr.shrink(share - out_share).finish();
                Some(Gathered {
                    hosts,
                    exit_code: code,
                    signal,
                    cut: stdout.cut_bytes + stderr.cut_bytes,
                    stdout: stdout.text,
                    stderr: stderr.text,
                })
            })
            .collect::<Vec<_>>();
        let summary = summary(total, &groups, &failures, not_run.len());
        ManyResult {
            summary,
            groups,
            failures,
            not_run,
            exit_codes,
        }
    }

    /// Counts first, then each gathered output once, then the failures by reason.
    pub fn text(&self) -> String {
        let mut text = self.summary.clone();
        for g in &self.groups {
            let n = g.hosts.len();
            let who = if n == 1 {
                fold(&g.hosts)
            } else {
                format!("{} ({n} hosts)", fold(&g.hosts))
            };
            text.push_str(&format!("\n\n{who}: {}", ending(g)));
            if !g.stdout.is_empty() {
                text.push('\n');
                text.push_str(g.stdout.trim_end_matches('\n'));
            }
            if !g.stderr.is_empty() {
                text.push_str("\n--- stderr ---\n");
                text.push_str(g.stderr.trim_end_matches('\n'));
            }
        }
        for f in &self.failures {
            text.push_str(&format!(
                "\n\n{} ({}): {}: {}",
                f.kind,
                f.hosts.len(),
                fold(&f.hosts),
                f.reason
            ));
        }
        if !self.not_run.is_empty() {
            text.push_str(&format!(
                "\n\nnot run ({}, stop_on_error): {}",
                self.not_run.len(),
                fold(&self.not_run)
            ));
        }
        text
    }
}

/// "exit 0", "killed by TERM".
fn ending(g: &Gathered) -> String {
    match g.exit_code {
        Some(code) => format!("exit {code}"),
        None if !g.signal.is_empty() => format!("killed by signal {}", g.signal),
        None => "no exit status".into(),
    }
}

/// "200 hosts: 196 exit 0, 2 exit 1, 2 unreachable".
fn summary(total: usize, groups: &[Gathered], failures: &[Failure], not_run: usize) -> String {
    // (rank, exit code, words): exit codes in order, then signals, then failures.
    let mut counts: BTreeMap<(u8, i32, String), usize> = BTreeMap::new();
    for g in groups {
        let key = match g.exit_code {
            Some(code) => (0, code, format!("exit {code}")),
            None => (1, 0, ending(g)),
        };
        *counts.entry(key).or_default() += g.hosts.len();
    }
    for f in failures {
        *counts.entry((2, 0, f.kind.clone())).or_default() += f.hosts.len();
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|((_, _, words), n)| format!("{n} {words}"))
        .collect();
    if not_run > 0 {
        parts.push(format!("{not_run} not run"));
    }
    let hosts = if total == 1 { "host" } else { "hosts" };
    format!("{total} {hosts}: {}", parts.join(", "))
}

/// Host names folded as ClusterShell writes node sets: `gpu-[1-3,7], db`. Zero-padded numbers
/// (`node-007`) fold with the others of their width (`node-[007-100]`).
pub fn fold(hosts: &[String]) -> String {
    let mut named: Vec<((&str, &str), Vec<Numbered>)> = Vec::new();
    let mut plain = Vec::new();
    for host in hosts {
        let parsed = last_number(host)
            .and_then(|(start, end)| Some((start, end, host[start..end].parse::<u64>().ok()?)));
        let Some((start, end, n)) = parsed else {
            plain.push(host.clone());
            continue;
        };
        let digits = end - start;
        let padded = digits > 1 && host[start..].starts_with('0');
        let key = (&host[..start], &host[end..]);
        let numbered = Numbered { n, digits, padded };
        match named.iter_mut().find(|(k, _)| *k == key) {
            Some((_, numbers)) => numbers.push(numbered),
            None => named.push((key, vec![numbered])),
        }
    }
    let mut out: Vec<String> = Vec::new();
    for ((prefix, suffix), numbers) in named {
        let widths: Vec<usize> = numbers
            .iter()
            .filter(|n| n.padded)
            .map(|n| n.digits)
            .collect();
        // width (0: not padded) → numbers
        let mut sets: Vec<(usize, Vec<u64>)> = Vec::new();
        for Numbered { n, digits, padded } in numbers {
            let width = if padded || widths.contains(&digits) {
                digits
            } else {
                0
            };
            match sets.iter_mut().find(|(w, _)| *w == width) {
                Some((_, list)) => list.push(n),
                None => sets.push((width, vec![n])),
            }
        }
        for (width, mut list) in sets {
            list.sort_unstable();
            list.dedup();
            out.push(node_set(prefix, suffix, width, &list));
        }
    }
    out.extend(plain);
    out.join(", ")
}

/// The number in a host's name, between a prefix and a suffix.
struct Numbered {
    n: u64,
    digits: usize,
    /// Written with leading zeros (`007`).
    padded: bool,
}

/// `prefix[1-3,7]suffix` (no brackets for one number).
fn node_set(prefix: &str, suffix: &str, width: usize, numbers: &[u64]) -> String {
    let show = |n: u64| format!("{n:0width$}");
    if let [one] = numbers {
        return format!("{prefix}{}{suffix}", show(*one));
    }
    let mut ranges: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j] + 1 {
            j += 1;
        }
        ranges.push(if i == j {
            show(numbers[i])
        } else {
            format!("{}-{}", show(numbers[i]), show(numbers[j]))
        });
        i = j + 1;
    }
    format!("{prefix}[{}]{suffix}", ranges.join(","))
}

/// Where the last run of digits in `name` is.
fn last_number(name: &str) -> Option<(usize, usize)> {
    let end = name.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = name[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn host_names_should_fold_as_node_sets() {
        let hosts = names(&[
            "gpu-1", "gpu-2", "gpu-3", "gpu-7", "db", "rack01-a", "rack02-a",
        ]);
        assert_eq!(fold(&hosts), "gpu-[1-3,7], rack[01-02]-a, db");
        assert_eq!(fold(&names(&["web-9"])), "web-9");
        let padded: Vec<String> = (1..=100).map(|i| format!("node-{i:03}")).collect();
        assert_eq!(fold(&padded), "node-[001-100]");
        assert_eq!(fold(&names(&["n-1", "n-10", "n-02"])), "n-1, n-[02,10]");
    }

    fn exited(code: i32, stdout: &str) -> Outcome {
        let mut out = CappedBuffer::new(1 << 20);
        out.push(stdout.as_bytes());
        Outcome::Exited {
            code: Some(code),
            signal: String::new(),
            stdout: out,
            stderr: CappedBuffer::new(1 << 20),
        }
    }

    #[test]
    fn alike_hosts_should_be_gathered_and_counted() {
        let mut hosts: Vec<(String, Outcome)> = (1..=4)
            .map(|i| (format!("gpu-{i}"), exited(0, "6.1.0\n")))
            .collect();
        hosts.push(("gpu-5".into(), exited(1, "")));
        for i in [6, 9] {
            hosts.push((
                format!("gpu-{i}"),
                Outcome::Failed {
                    kind: "unreachable".into(),
                    reason: "connection refused".into(),
                },
            ));
        }
        hosts.push(("gpu-10".into(), Outcome::NotRun));
        let r = ManyResult::new(hosts, 10_000);
        assert_eq!(
            r.summary,
            "8 hosts: 4 exit 0, 1 exit 1, 2 unreachable, 1 not run"
        );
        let text = r.text();
        assert!(
            text.contains("\n\ngpu-[1-4] (4 hosts): exit 0\n6.1.0\n\ngpu-5: exit 1"),
            "{text}"
        );
        assert!(
            text.contains("unreachable (2): gpu-[6,9]: connection refused"),
            "{text}"
        );
        assert!(
            text.ends_with("not run (1, stop_on_error): gpu-10"),
            "{text}"
        );
        assert_eq!(r.exit_codes["gpu-5"], Some(1));
        assert_eq!(r.exit_codes["gpu-6"], None);
    }

    #[test]
    fn outputs_should_share_the_budget() {
        let big = "x".repeat(10_000);
        let hosts = vec![
            ("a".to_string(), exited(0, &big)),
            ("b".to_string(), exited(0, &format!("{big}y"))),
        ];
        let r = ManyResult::new(hosts, 2_000);
        for g in &r.groups {
            assert!(g.stdout.len() < 1_100, "{}", g.stdout.len());
            assert!(g.cut > 8_000);
            assert_eq!(g.stdout.matches("bytes of output cut").count(), 1);
        }
    }
}
