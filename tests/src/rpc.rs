//! Calling the daemon the way its clients do, collecting results for assertions.

use mcp_ssh_proto::pb::{self, run_event};
use mcp_ssh_shim::client::DaemonClient;

#[derive(Debug, Default)]
pub struct RunResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<pb::Exit>,
    pub error: Option<tonic::Status>,
    pub connected_now: bool,
}

impl RunResult {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.exit.as_ref().and_then(|e| e.code)
    }
    /// The error message, panicking with the result when the call succeeded.
    pub fn error_message(&self) -> String {
        match &self.error {
            Some(status) => status.message().to_string(),
            None => panic!("expected an error, got {self:?}"),
        }
    }
    pub fn error_code(&self) -> tonic::Code {
        self.error
            .as_ref()
            .map(tonic::Status::code)
            .unwrap_or(tonic::Code::Ok)
    }
}

/// Runs `command` on `host` and collects everything the stream says.
pub async fn run(client: &DaemonClient, host: &str, command: &str, timeout_secs: u32) -> RunResult {
    let request = pb::RunRequest {
        host: host.into(),
        command: command.into(),
        cwd: String::new(),
        timeout_secs,
        ..Default::default()
    };
    run_request(client, request).await
}

pub async fn run_request(client: &DaemonClient, request: pb::RunRequest) -> RunResult {
    let mut result = RunResult::default();
    let mut stream = match client.exec().run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            result.error = Some(status);
            return result;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(event)) => match event.event {
                Some(run_event::Event::Started(s)) => result.connected_now = s.connected_now,
                Some(run_event::Event::Stdout(d)) => result.stdout.extend(d),
                Some(run_event::Event::Stderr(d)) => result.stderr.extend(d),
                Some(run_event::Event::Exit(e)) => result.exit = Some(e),
                None => {}
            },
            Ok(None) => return result,
            Err(status) => {
                result.error = Some(status);
                return result;
            }
        }
    }
}

pub async fn status(client: &DaemonClient) -> pb::StatusReply {
    client
        .daemon()
        .status(pb::StatusRequest {})
        .await
        .expect("status failed")
        .into_inner()
}
