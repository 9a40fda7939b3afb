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
            "its sshd refuses TCP forwarding to {to} (AllowTcpForwarding or PermitOpen in the sshd_config of {host})"
        ),
        ChannelOpenFailure::ConnectFailed => format!(
            "{host} could not connect to {to}: nothing listens there, or the name does not resolve on {host}"
        ),
        ChannelOpenFailure::ResourceShortage => {
            "its sshd has no resources for another channel".to_string()
        }
        ChannelOpenFailure::UnknownChannelType => {
            "its sshd does not support TCP forwarding".to_string()
        }
        ChannelOpenFailure::Other { reason, .. } => {
            format!("its sshd refused the connection to {to}: {reason}")
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
        self.ask_for_nodelay();
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
        assert!(text.contains("nothing listens"), "{text}");
    }
}

/// Against a russh server standing in for a hostile sshd: it pushes `forwarded-tcpip` channels
/// at the client, asked for or not. (OpenSSH's sshd only sends those for forwards that were
/// requested, so it cannot show the refusal; the e2e tests cover the asked-for case with it.)
#[cfg(test)]
mod wire_tests {
    use std::path::Path;
    use std::sync::Arc;

    use russh::server::{self, Auth};
    use tokio::sync::oneshot;

    use super::*;
    use crate::audit::Audit;
    use crate::config::{Config, HostConfig};
    use crate::ssh::AgentSockets;

    struct Pusher {
        handle: Option<oneshot::Sender<server::Handle>>,
    }

    impl server::Handler for Pusher {
        type Error = russh::Error;

        async fn auth_password(
            &mut self,
            _user: &str,
            _password: &str,
        ) -> Result<Auth, Self::Error> {
            Ok(Auth::Accept)
        }

        async fn auth_succeeded(
            &mut self,
            session: &mut server::Session,
        ) -> Result<(), Self::Error> {
            if let Some(to) = self.handle.take() {
                let _ = to.send(session.handle());
            }
            Ok(())
        }

        async fn tcpip_forward(
            &mut self,
            _address: &str,
            _port: &mut u32,
            _session: &mut server::Session,
        ) -> Result<bool, Self::Error> {
            Ok(true)
        }
    }

    fn host(port: u16) -> HostConfig {
        let text = format!(
            r#"{{"hosts": [{{"name": "pusher", "hostname": "127.0.0.1", "port": {port}, "username": "u",
                "password": "not-a-secret", "auto_accept_host_key": true, "identity_file": "/nonexistent-key"}}]}}"#
        );
        let config = Config::parse(&text, Path::new("/cfg/hosts.json")).unwrap();
        config.hosts.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn forwarded_connections_nobody_asked_for_should_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("host_key");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen is needed (apt-get install -y openssh-client)");
        assert!(made.success());
        let config = Arc::new(server::Config {
            keys: vec![russh::keys::load_secret_key(&key, None).unwrap()],
            ..Default::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (to, handle) = oneshot::channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let pusher = Pusher { handle: Some(to) };
            if let Ok(session) = server::run_stream(config, stream, pusher).await {
                let _ = session.await;
            }
        });
        let mut host = host(port);
        host.identities = Default::default();
        let conn = Connection::open(
            Arc::new(host),
            Arc::new(Audit::disabled()),
            &AgentSockets::default(),
            None,
        )
        .await
        .unwrap();
        let server = handle.await.unwrap();
        let refused = |pushed: Result<russh::Channel<russh::server::Msg>, russh::Error>| {
            matches!(
                pushed,
                Err(russh::Error::ChannelOpenFailure(
                    ChannelOpenFailure::AdministrativelyProhibited
                ))
            )
        };

        let pushed = server
            .channel_open_forwarded_tcpip("localhost", 8080, "10.9.8.7", 5555)
            .await;
        assert!(
            refused(pushed),
            "a connection nobody asked for was accepted"
        );

        let (bound, mut incoming) = conn
            .request_remote_forward("localhost", 8080)
            .await
            .unwrap();
        assert_eq!(bound, 8080);
        let pushed = server
            .channel_open_forwarded_tcpip("localhost", 8080, "10.9.8.7", 5555)
            .await;
        assert!(pushed.is_ok(), "the forward asked for was refused");
        let arrived = incoming.recv().await.unwrap();
        assert_eq!(arrived.originator, "10.9.8.7:5555");
        let pushed = server
            .channel_open_forwarded_tcpip("localhost", 8081, "10.9.8.7", 5555)
            .await;
        assert!(refused(pushed), "another port was accepted");

        conn.cancel_remote_forward("localhost", 8080).await;
        let pushed = server
            .channel_open_forwarded_tcpip("localhost", 8080, "10.9.8.7", 5555)
            .await;
        assert!(refused(pushed), "a cancelled forward was still accepted");
    }
}
