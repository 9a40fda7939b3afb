//! `groups`: named sets of hosts for calls over many hosts (`ssh_execute_many`,
//! `mcp-sshctl exec @group`), and the one resolver of targets both use: host names, `@group`s
//! and glob patterns over host names.

use std::collections::BTreeMap;

/// The groups of hosts.json, each resolved to host names in hosts.json order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(BTreeMap<String, Vec<String>>);

/// Whether `member` is a glob pattern rather than a name.
fn is_pattern(member: &str) -> bool {
    member.contains(['*', '?', '['])
}

/// Hosts of `hosts` (in their order) matching the glob `pattern`; an error says why not.
fn matching(pattern: &str, hosts: &[String]) -> Result<Vec<String>, String> {
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| format!("{pattern:?} is not a valid pattern ({e})"))?;
    let found: Vec<String> = hosts.iter().filter(|h| glob.matches(h)).cloned().collect();
    if found.is_empty() {
        return Err(format!("{pattern:?} matches no host"));
    }
    Ok(found)
}

impl Groups {
    /// Resolves the raw groups against the hosts' names (in hosts.json order). Members are host
    /// names, glob patterns over them, or `@other` groups; a member that names nothing, a
    /// pattern that matches nothing and a group that includes itself are errors, given with
    /// the member at fault (to locate it in the file).
    pub fn resolve(
        raw: &BTreeMap<String, Vec<String>>,
        hosts: &[String],
    ) -> Result<Groups, (String, Option<String>)> {
        fn expand(
            name: &str,
            raw: &BTreeMap<String, Vec<String>>,
            hosts: &[String],
            path: &mut Vec<String>,
        ) -> Result<Vec<String>, (String, Option<String>)> {
            if path.iter().any(|g| g == name) {
                path.push(name.to_string());
                let message = format!(
                    "groups include each other in a loop: @{}",
                    path.join(" → @")
                );
                return Err((message, None));
            }
            let Some(members) = raw.get(name) else {
                return Err((format!("\"@{name}\" is not a group of this file"), None));
            };
            path.push(name.to_string());
            let mut found = Vec::new();
            for member in members {
                let more = if let Some(group) = member.strip_prefix('@') {
                    expand(group, raw, hosts, path)
                        .map_err(|(e, at)| (e, at.or_else(|| Some(member.clone()))))
                } else if is_pattern(member) {
                    matching(member, hosts).map_err(|e| (e, Some(member.clone())))
                } else if hosts.contains(member) {
                    Ok(vec![member.clone()])
                } else {
                    let message = format!("{member:?} is not a host of this file");
                    Err((message, Some(member.clone())))
                };
                found.extend(more.map_err(|(e, at)| (format!("group {name}: {e}"), at))?);
            }
            path.pop();
            Ok(found)
        }
        let mut groups = BTreeMap::new();
        for name in raw.keys() {
            if name.is_empty() || name.contains([' ', '@', ',']) || is_pattern(name) {
                let message = format!(
                    "group name {name:?}: use letters, digits, '-', '_' or '.' (no spaces, '@', ',' or wildcards)"
                );
                return Err((message, Some(name.clone())));
            }
            let members = expand(name, raw, hosts, &mut Vec::new())?;
            groups.insert(name.clone(), in_order(&members, hosts));
        }
        Ok(Groups(groups))
    }

    /// Each group with its hosts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter()
    }

    /// Resolves what a call names — host names, `@group`s and glob patterns — to host names:
    /// in hosts.json order, each once. Every target must match at least one host.
    pub fn targets(&self, targets: &[String], hosts: &[String]) -> Result<Vec<String>, String> {
        if targets.is_empty() {
            return Err("hosts must name at least one host, @group or pattern".into());
        }
        let mut found = Vec::new();
        for target in targets {
            let target = target.trim();
            if let Some(group) = target.strip_prefix('@') {
                let Some(members) = self.0.get(group) else {
                    let known: Vec<String> = self.0.keys().map(|g| format!("@{g}")).collect();
                    return Err(if known.is_empty() {
                        format!("no group \"@{group}\": hosts.json defines no groups")
                    } else {
                        format!("no group \"@{group}\"; groups: {}", known.join(", "))
                    });
                };
                found.extend(members.iter().cloned());
            } else if is_pattern(target) {
                found.extend(matching(target, hosts)?);
            } else if hosts.iter().any(|h| h == target) {
                found.push(target.to_string());
            } else {
                return Err(format!(
                    "unknown host {target:?} (list_hosts shows the hosts and groups)"
                ));
            }
        }
        Ok(in_order(&found, hosts))
    }
}

/// `names` deduplicated, in the order of `hosts`.
fn in_order(names: &[String], hosts: &[String]) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| names.contains(h))
        .cloned()
        .collect()
}

/// Where `member` is written inside the `groups` object of `text`, as "line L column C", for
/// an error about it (serde_json keeps no positions once parsed).
pub fn locate(text: &str, member: &str) -> Option<String> {
    let groups = text.find("\"groups\"")?;
    let quoted = serde_json::to_string(member).ok()?;
    let at = groups + text[groups..].find(&quoted)?;
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    Some(format!("line {line} column {column}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn raw(groups: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        groups
            .iter()
            .map(|(name, members)| (name.to_string(), names(members)))
            .collect()
    }

    #[test]
    fn groups_should_resolve_names_globs_and_other_groups_in_file_order() {
        let hosts = names(&["gpu-1", "gpu-2", "gpu-10", "web-a", "db"]);
        let groups = Groups::resolve(
            &raw(&[
                ("gpus", &["gpu-*"]),
                ("all", &["@gpus", "db", "web-?", "gpu-1"]),
            ]),
            &hosts,
        )
        .unwrap();
        let got: Vec<_> = groups.iter().collect();
        assert_eq!(got[0].0, "all");
        assert_eq!(
            got[0].1,
            &names(&["gpu-1", "gpu-2", "gpu-10", "web-a", "db"])
        );
        assert_eq!(got[1].1, &names(&["gpu-1", "gpu-2", "gpu-10"]));

        let t = |list: &[&str]| groups.targets(&names(list), &hosts);
        assert_eq!(
            t(&["db", "@gpus"]).unwrap(),
            names(&["gpu-1", "gpu-2", "gpu-10", "db"])
        );
        assert_eq!(t(&["gpu-1?"]).unwrap(), names(&["gpu-10"]));
        assert_eq!(t(&["web-a", "web-*"]).unwrap(), names(&["web-a"]));
        assert!(t(&[]).unwrap_err().contains("at least one"));
        assert!(t(&["nope"]).unwrap_err().contains("unknown host \"nope\""));
        assert!(t(&["x-*"]).unwrap_err().contains("\"x-*\" matches no host"));
        let e = t(&["@nope"]).unwrap_err();
        assert!(e.contains("no group \"@nope\"; groups: @all, @gpus"), "{e}");
    }

    #[test]
    fn unknown_members_and_loops_should_be_named() {
        let hosts = names(&["a", "b"]);
        let e = Groups::resolve(&raw(&[("g", &["a", "c"])]), &hosts).unwrap_err();
        assert_eq!(e.0, "group g: \"c\" is not a host of this file");
        assert_eq!(e.1.as_deref(), Some("c"));
        let e = Groups::resolve(&raw(&[("g", &["z*"])]), &hosts).unwrap_err();
        assert!(e.0.contains("\"z*\" matches no host"), "{e:?}");
        let e = Groups::resolve(&raw(&[("g", &["@h"]), ("h", &["@g"])]), &hosts).unwrap_err();
        assert!(e.0.contains("loop: @g → @h → @g"), "{e:?}");
        let e = Groups::resolve(&raw(&[("g", &["@missing"])]), &hosts).unwrap_err();
        assert!(e.0.contains("\"@missing\" is not a group"), "{e:?}");
        assert_eq!(e.1.as_deref(), Some("@missing"));
        let e = Groups::resolve(&raw(&[("bad name", &["a"])]), &hosts).unwrap_err();
        assert!(e.0.contains("no spaces"), "{e:?}");
    }

    #[test]
    fn a_member_should_be_located_by_line_and_column() {
        let text = "{\n  \"hosts\": [],\n  \"groups\": {\n    \"g\": [\"a\", \"c\"]\n  }\n}";
        assert_eq!(locate(text, "c").as_deref(), Some("line 4 column 16"));
    }
}
