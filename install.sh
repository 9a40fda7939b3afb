#!/usr/bin/env bash
# Installs mcp-ssh (mcp-sshd, mcp-ssh-shim, mcp-sshctl) with cargo, then shows it working end to
# end on this machine: a throwaway OpenSSH sshd on 127.0.0.1, a temporary hosts.json, and a short
# MCP conversation through the installed shim and daemon.
#
#   bash install.sh            install, then run the demo
#   bash install.sh --no-demo  install only
#
# Installs into cargo's bin directory (~/.cargo/bin, or $CARGO_INSTALL_ROOT/bin).
set -euo pipefail
cd "$(dirname "$0")"

demo=yes
case "${1:-}" in
  --no-demo) demo=no ;;
  "") ;;
  *) echo "usage: bash install.sh [--no-demo]" >&2; exit 2 ;;
esac

if ! command -v cargo >/dev/null; then
  echo "mcp-ssh is built with Rust's cargo, which is not installed: see https://rustup.rs" >&2
  exit 1
fi
# One target directory for the installs and the demo, so shared crates build once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

echo "==> installing mcp-sshd, mcp-ssh-shim and mcp-sshctl (release build; a few minutes the first time)"
cargo install --locked --quiet --force --path daemon
cargo install --locked --quiet --force --path shim
bin_dir="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
echo "    installed in $bin_dir"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "    note: $bin_dir is not on your PATH; add it (e.g. in ~/.profile) to run mcp-sshctl by name" ;;
esac

[ "$demo" = yes ] || exit 0

# The demo runs a real OpenSSH server.
if ! [ -x /usr/sbin/sshd ] && ! [ -x /usr/local/sbin/sshd ] && ! [ -x /usr/bin/sshd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing openssh-server for the demo (its service is not enabled by this script)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
  else
    echo "The demo needs OpenSSH's server program (sshd), which is not installed." >&2
    echo "Install it (e.g. sudo apt-get install openssh-server, or sudo dnf install openssh-server)," >&2
    echo "then run: bash install.sh" >&2
    exit 1
  fi
fi
if ! command -v ssh-keygen >/dev/null; then
  echo "The demo needs ssh-keygen: install openssh-client" >&2
  exit 1
fi

echo "==> running the demo"
echo
cargo run --locked --quiet -p mcp-ssh-tests --bin mcp-ssh-demo -- --bin-dir "$bin_dir"
