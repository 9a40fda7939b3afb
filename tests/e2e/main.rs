//! End-to-end tests: one test binary (fast to link), one module per area.
//! Every SSH test runs against a real OpenSSH sshd started by the fixture; none is mocked.

// Helpers here run only inside tests, where a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod budget;
mod common;
mod ctl;
mod daemon_auth;
mod daemon_exec;
mod daemon_hostkeys;
mod daemon_inputs;
mod daemon_lifecycle;
mod doctor;
mod errors;
mod faults;
mod first_minutes;
mod fleets;
mod forwards;
mod jobs;
mod jobs_mcp;
mod proxy_command;
mod proxy_jump;
mod reload;
mod resume;
mod security;
mod service;
mod shim;
mod shim_results;
mod soak;
mod ssh_config;
mod sync;
mod transfer;
