//! `proxy_jump`: the bastions a host is reached through, as OpenSSH's `-J a,b`.
//!
//! A chain `a,b` for target `t` becomes `t.jump = b'` where `b'` is `b` reached through `a`
//! (its own route replaced, as `ssh -J a,b` does), and `a` keeps its own route (its own
//! `proxy_jump` or `proxy_command`). Every hop is a host configuration of its own, with its
//! own host-key check and authentication.

use std::sync::Arc;

use super::HostConfig;

/// Hops followed at most (a bastion's own bastions included), as a guard against loops that
/// pass through ssh_config, where names cannot be checked in advance.
pub const MAX_HOPS: usize = 8;

/// One hop as written: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Hop {
    /// A bare name: no user, no port (in hosts.json it must name a host there).
    pub fn is_bare(&self) -> bool {
        self.user.is_none() && self.port.is_none()
    }
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses a comma-separated hop list.
pub fn parse(text: &str) -> Result<Vec<Hop>, String> {
    let hops = text
        .split(',')
        .map(|hop| parse_hop(hop.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if hops.is_empty() {
        return Err("proxy_jump names no host".into());
    }
    if hops.len() > MAX_HOPS {
        return Err(format!("proxy_jump has more than {MAX_HOPS} hops"));
    }
    Ok(hops)
}

fn parse_hop(text: &str) -> Result<Hop, String> {
    let bad = || format!("proxy_jump hop {text:?} is not [user@]host[:port]");
    let rest = text.strip_prefix("ssh://").unwrap_or(text);
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) if !user.is_empty() => (Some(user.to_string()), rest),
        Some(_) => return Err(bad()),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad))
        .transpose()?;
    Ok(Hop {
        user,
        host: host.to_string(),
        port,
    })
}

/// Links `hops` (each already a full configuration, in order) into the chain a target is
/// reached through, returning its last hop: every hop after the first is reached through the
/// one before it instead of its own route.
pub fn chain(hops: Vec<HostConfig>) -> Option<Arc<HostConfig>> {
    let mut via: Option<Arc<HostConfig>> = None;
    for mut hop in hops {
        if via.is_some() {
            hop.jump = via.take();
            hop.proxy_command = None;
        }
        via = Some(Arc::new(hop));
    }
    via
}

/// "a → b", the hops a host is reached through, first first.
pub fn describe(last: &HostConfig) -> String {
    let mut names = vec![last.name.clone()];
    let mut at = last.jump.as_deref();
    while let Some(hop) = at {
        names.push(hop.name.clone());
        at = hop.jump.as_deref();
    }
    names.reverse();
    names.join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_should_parse_as_openssh_writes_them() {
        let hops = parse("bastion, deploy@10.0.0.1:2222,ssh://me@[::1]:22,[fe80::1]").unwrap();
        assert_eq!(
            hops,
            [
                Hop {
                    user: None,
                    host: "bastion".into(),
                    port: None
                },
                Hop {
                    user: Some("deploy".into()),
                    host: "10.0.0.1".into(),
                    port: Some(2222)
                },
                Hop {
                    user: Some("me".into()),
                    host: "::1".into(),
                    port: Some(22)
                },
                Hop {
                    user: None,
                    host: "fe80::1".into(),
                    port: None
                },
            ]
        );
        assert!(hops[0].is_bare() && !hops[1].is_bare());
        assert_eq!(hops[2].to_string(), "me@[::1]:22");
        for bad in ["", "a,,b", "@host", "host:0", "host:x", "a b", "[::1"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
