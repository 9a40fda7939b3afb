//! The result of `ssh_forward`, and the short form of a forward that `list_hosts` and
//! `ssh_status` show.

use mcp_ssh_proto::pb;
use schemars::JsonSchema;
use serde::Serialize;

use super::human_bytes;

/// A forward as `list_hosts` and `ssh_status` show it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ForwardBrief {
    pub id: String,
    /// Where to connect on this machine (127.0.0.1:PORT).
    pub local_address: String,
    /// What it reaches, as seen from the host.
    pub remote: String,
    pub connections_open: u32,
}

impl From<&pb::ForwardInfo> for ForwardBrief {
    fn from(f: &pb::ForwardInfo) -> ForwardBrief {
        ForwardBrief {
            id: f.id.clone(),
            local_address: f.local_address.clone(),
            remote: f.remote_address.clone(),
            connections_open: f.connections_open,
        }
    }
}

/// Local forwards only: remote ones (opened by a human with mcp-sshctl) are not the AI's.
pub fn briefs(forwards: &[pb::ForwardInfo]) -> Vec<ForwardBrief> {
    forwards
        .iter()
        .filter(|f| f.direction() != pb::ForwardDirection::Remote)
        .map(ForwardBrief::from)
        .collect()
}

/// What the call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForwardState {
    Opened,
    /// The same forward was open already: it is the one returned.
    AlreadyOpen,
    Closed,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ForwardResult {
    pub id: String,
    pub host: String,
    pub state: ForwardState,
    /// Where to connect on this machine.
    pub local_address: String,
    /// `http://127.0.0.1:PORT/`, for a web service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// What it reaches, as seen from the host.
    pub remote: String,
    pub connections_open: u32,
    pub connections_total: u64,
    pub bytes_moved: u64,
    /// Why the last relayed connection failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ForwardResult {
    pub fn new(f: pb::ForwardInfo, state: ForwardState) -> ForwardResult {
        let url = (state != ForwardState::Closed && f.local_address.starts_with("127.0.0.1:"))
            .then(|| format!("http://{}/", f.local_address));
        ForwardResult {
            state,
            url,
            bytes_moved: f.bytes_to_host + f.bytes_from_host,
            last_error: (!f.last_error.is_empty()).then_some(f.last_error),
            id: f.id,
            host: f.host,
            local_address: f.local_address,
            remote: f.remote_address,
            connections_open: f.connections_open,
            connections_total: f.connections_total,
        }
    }

    pub fn text(&self) -> String {
        let route = format!("{} → {} on {}", self.local_address, self.remote, self.host);
        let mut text = match self.state {
            ForwardState::Closed => format!(
                "forward {} closed: {route} ({} connection{}, {} moved)",
                self.id,
                self.connections_total,
                if self.connections_total == 1 { "" } else { "s" },
                human_bytes(self.bytes_moved)
            ),
            state => {
                let opened = if state == ForwardState::Opened {
                    "opened"
                } else {
                    "already open"
                };
                let reach = self
                    .url
                    .as_ref()
                    .map(|u| format!(" (over HTTP: {u})"))
                    .unwrap_or_default();
                format!(
                    "forward {} {opened}: {route}{reach}. mcp-sshd keeps it (across reconnects and client restarts) until closed with close: true",
                    self.id
                )
            }
        };
        if let Some(e) = &self.last_error {
            let what = if self.connections_total == 0 {
                "not reachable yet (the forward stays and relays once it is)"
            } else {
                "last failed connection"
            };
            text.push_str(&format!("\n{what}: {e}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opened_forward_should_say_where_to_connect() {
        let info = pb::ForwardInfo {
            id: "f1".into(),
            host: "gpu".into(),
            local_address: "127.0.0.1:41234".into(),
            remote_address: "localhost:6006".into(),
            ..Default::default()
        };
        let text = ForwardResult::new(info.clone(), ForwardState::Opened).text();
        assert!(
            text.starts_with("forward f1 opened: 127.0.0.1:41234 → localhost:6006 on gpu"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:41234/"), "{text}");
        let text = ForwardResult::new(info, ForwardState::Closed).text();
        assert!(
            text.contains("closed") && text.contains("0 connections"),
            "{text}"
        );
    }
}
