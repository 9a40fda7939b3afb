//! TCP forwarding over a host's connection: `direct-tcpip` channels for local forwards (`-L`),
//! and `tcpip-forward` requests for remote forwards (`-R`), whose incoming channels are accepted
//! only when they match a forward this connection asked for.

use std::collections::HashMap;
use std::sync::Mutex;

use russh::client::Msg;
use russh::{ChannelOpenFailure, ChannelStream};
use tokio::sync::mpsc;

use super::{Connection, SshError};
use crate::sync::lock;

/// A relayed TCP stream inside the SSH connection.
pub type RemoteStream = ChannelStream<Msg>;

/// How many connections to one remote forward may wait for the daemon to take them.
const INCOMING_QUEUE: usize = 64;

/// A connection the host's sshd relays to us for a remote forward.
pub struct Incoming {
    pub stream: RemoteStream,
    /// Who connected to the port on the host, as the host's sshd reports it.
    pub originator: String,
}

/// The remote forwards requested on one connection: (bound address, port) → their queue.
#[derive(Default)]
pub struct RemoteTable(Mutex<HashMap<(String, u32), mpsc::Sender<Incoming>>>);

impl RemoteTable {
    /// Where a forwarded-tcpip channel for `address:port` goes; `None` when nobody asked for it.
    pub(super) fn route(&self, address: &str, port: u32) -> Option<mpsc::Sender<Incoming>> {
        lock(&self.0)
            .get(&(address.to_string(), port))
            .filter(|to| !to.is_closed())
            .cloned()
    }

    fn insert(&self, address: &str, port: u32, to: mpsc::Sender<Incoming>) {
        lock(&self.0).insert((address.to_string(), port), to);
    }

    fn remove(&self, address: &str, port: u32) {
        lock(&self.0).remove(&(address.to_string(), port));
    }
}

/// Why the host's sshd refused a forwarding channel, in words that say what to change.
fn refusal(failure: &ChannelOpenFailure, host: &str, to: &str) -> String {
    match failure {
        ChannelOpenFailure::AdministrativelyProhibited => format!(
            "the sshd of {host} refuses TCP forwarding to {to} (AllowTcpForwarding or PermitOpen in its sshd_config)"
        ),
        ChannelOpenFailure::ConnectFailed => format!(
            "nothing accepted the connection to {to} on {host}: is the service running and listening there?"
        ),
        ChannelOpenFailure::ResourceShortage => {
            format!("the sshd of {host} has no resources for another channel")
        }
        ChannelOpenFailure::UnknownChannelType => {
            format!("the sshd of {host} does not support TCP forwarding")
        }
        ChannelOpenFailure::Other { reason, .. } => {
            format!("the sshd of {host} refused the connection to {to}: {reason}")
        }
    }
}

impl Connection {
    /// Opens a `direct-tcpip` channel to `to_host:to_port` as seen from the host, within the
    /// host's `connect_timeout` (sshd answers only once its own TCP connect ended). The name is
    /// sent unresolved: the host resolves it. These channels are not sessions, so they take no
    /// slot of the session budget (sshd's `MaxSessions` does not count them).
    pub async fn open_direct_tcpip(
        &self,
        to_host: &str,
        to_port: u16,
        originator: (&str, u16),
    ) -> Result<RemoteStream, SshError> {
        let host = self.host();
        let to = format!("{to_host}:{to_port}");
        let open = self.handle().channel_open_direct_tcpip(
            to_host,
            u32::from(to_port),
            originator.0,
            u32::from(originator.1),
        );
        let opened = tokio::select! {
            opened = tokio::time::timeout(host.connect_timeout, open) => opened,
            () = self.lost() => return Err(self.lost_error()),
        };
        match opened {
            Ok(Ok(channel)) => Ok(channel.into_stream()),
            Ok(Err(russh::Error::ChannelOpenFailure(failure))) => {
                let reason = refusal(&failure, &host.name, &to);
                let host = host.name.clone();
                Err(match failure {
                    ChannelOpenFailure::AdministrativelyProhibited => {
                        SshError::ForwardProhibited { host, reason }
                    }
                    _ => SshError::Forward { host, reason },
                })
            }
            Ok(Err(_)) if !self.is_alive() => Err(self.lost_error()),
            Ok(Err(e)) => Err(SshError::Forward {
                host: host.name.clone(),
                reason: format!(
                    "could not open a channel to {to}: {}",
                    super::connection::describe_russh_error(&e)
                ),
            }),
            Err(_) => Err(SshError::Forward {
                host: host.name.clone(),
                reason: format!(
                    "no answer within {} s opening {to} (the host may not reach it)",
                    host.connect_timeout.as_secs()
                ),
            }),
        }
    }

    /// Asks the host's sshd to listen on `address:port` (0: a port it picks) and relay what
    /// connects there. Returns the port listened on and the queue of incoming connections; the
    /// forward lasts as long as the connection, or until [`Connection::cancel_remote_forward`].
    pub async fn request_remote_forward(
        &self,
        address: &str,
        port: u16,
    ) -> Result<(u16, mpsc::Receiver<Incoming>), SshError> {
        let host = self.host();
        let (to, incoming) = mpsc::channel(INCOMING_QUEUE);
        // Registered before asking, so a connection arriving right after the answer finds it.
        if port != 0 {
            self.remote_forwards()
                .insert(address, u32::from(port), to.clone());
        }
        let asked = tokio::time::timeout(
            host.connect_timeout,
            self.handle().tcpip_forward(address, u32::from(port)),
        );
        let answer = tokio::select! {
            answer = asked => answer,
            () = self.lost() => Ok(Err(russh::Error::Disconnect)),
        };
        let bound = match answer {
            // sshd answers 0 for a port that was asked for: the port is the one asked.
            Ok(Ok(bound)) => u16::try_from(bound)
                .ok()
                .filter(|p| *p != 0)
                .unwrap_or(port),
            failed => {
                self.remote_forwards().remove(address, u32::from(port));
                let reason = match failed {
                    Ok(Err(russh::Error::RequestDenied)) => {
                        return Err(SshError::ForwardProhibited {
                            host: host.name.clone(),
                            reason: format!(
                                "its sshd would not listen on {address}:{port} (AllowTcpForwarding, or the port is in use or privileged there)"
                            ),
                        });
                    }
                    Ok(Err(_)) if !self.is_alive() => return Err(self.lost_error()),
                    Ok(Err(e)) => super::connection::describe_russh_error(&e),
                    _ => format!("no answer within {} s", host.connect_timeout.as_secs()),
                };
                return Err(SshError::Forward {
                    host: host.name.clone(),
                    reason,
                });
            }
        };
        if bound == 0 {
            return Err(SshError::Forward {
                host: host.name.clone(),
                reason: "the host's sshd did not say which port it listens on".into(),
            });
        }
        self.remote_forwards().insert(address, u32::from(bound), to);
        Ok((bound, incoming))
    }

    /// Stops a remote forward: sshd stops listening, and channels for it are refused again.
    pub async fn cancel_remote_forward(&self, address: &str, port: u16) {
        self.remote_forwards().remove(address, u32::from(port));
        let cancel = self.handle().cancel_tcpip_forward(address, u32::from(port));
        let _ = tokio::time::timeout(self.host().connect_timeout, cancel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requested_forwards_should_be_routed() {
        let table = RemoteTable::default();
        let (to, _incoming) = mpsc::channel(1);
        table.insert("localhost", 8080, to);
        assert!(table.route("localhost", 8080).is_some());
        assert!(table.route("localhost", 8081).is_none());
        assert!(table.route("0.0.0.0", 8080).is_none());
        table.remove("localhost", 8080);
        assert!(table.route("localhost", 8080).is_none());
        let (to, incoming) = mpsc::channel(1);
        table.insert("localhost", 9090, to);
        drop(incoming);
        assert!(
            table.route("localhost", 9090).is_none(),
            "a forward nobody reads any more is refused"
        );
    }

    #[test]
    fn refusals_should_say_what_to_change() {
        let text = refusal(
            &ChannelOpenFailure::AdministrativelyProhibited,
            "gpu",
            "localhost:6006",
        );
        assert!(text.contains("AllowTcpForwarding"), "{text}");
        let text = refusal(&ChannelOpenFailure::ConnectFailed, "gpu", "localhost:6006");
        assert!(text.contains("listening"), "{text}");
    }
}
