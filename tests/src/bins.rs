//! The workspace's binaries, as built for this test run.
//!
//! `cargo test` does not build other packages' binaries, so the first call runs
//! `cargo build --bins` for them (a no-op when they are fresh), which also keeps them from going
//! stale while the tests change.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn target_dir() -> PathBuf {
    // A test: <target>/<profile>/deps/e2e-HASH; a binary (the benchmark): <target>/<profile>/NAME.
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let dir = exe.parent().expect("unexpected executable location");
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args([
            "build",
            "--bins",
            "-p",
            "mcp-ssh-daemon",
            "-p",
            "mcp-ssh-shim",
        ]);
        if target_dir().ends_with("release") {
            command.arg("--release");
        }
        let status = command
            .status()
            .expect("cannot run cargo to build the binaries under test");
        assert!(
            status.success(),
            "building mcp-sshd / mcp-ssh-shim / mcp-sshctl failed"
        );
    });
}

/// Path of a workspace binary (`mcp-sshd`, `mcp-ssh-shim`, `mcp-sshctl`).
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let path = target_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
