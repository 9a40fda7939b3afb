#!/usr/bin/env bash
# Builds mcp-ssh (mcp-sshd, mcp-ssh-shim, mcp-sshctl) with cargo and installs it, then shows it working end to
# end on this machine: a throwaway OpenSSH sshd on 127.0.0.1, a temporary hosts.json, and a short
# MCP conversation through the installed shim and daemon.
#
#   bash install.sh            install, then run the demo
#   bash install.sh --no-demo  install only
#
# Installs into cargo's bin directory (~/.cargo/bin, or $CARGO_INSTALL_ROOT/bin), and the JSON
# Schema of hosts.json into ~/.config/mcp-ssh/.
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
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# One release build of the three programs and the demo together: one feature resolution, so no
# crate is compiled twice (separate `cargo install`s and a debug build of the demo compiled the
# shared ones up to three times). The demo is built with --no-demo too: another set of packages
# would resolve other features and rebuild much of it on the next run.
packages=(-p mcp-ssh-daemon -p mcp-ssh-shim -p mcp-ssh-tests
  --bin mcp-sshd --bin mcp-ssh-shim --bin mcp-sshctl --bin mcp-ssh-demo)
if [ -x "$CARGO_TARGET_DIR/release/mcp-sshd" ]; then
  echo "==> building mcp-sshd, mcp-ssh-shim and mcp-sshctl (release)"
else
  echo "==> building mcp-sshd, mcp-ssh-shim and mcp-sshctl (release; the first build takes about 11 minutes on 2 cores, less with more)"
fi
cargo build --release --locked --quiet "${packages[@]}"

bin_dir="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
mkdir -p "$bin_dir"
for program in mcp-sshd mcp-ssh-shim mcp-sshctl; do
  # Through a rename, as cargo install does: a running daemon or shim keeps its binary.
  cp "$CARGO_TARGET_DIR/release/$program" "$bin_dir/.$program.install-tmp"
  mv -f "$bin_dir/.$program.install-tmp" "$bin_dir/$program"
done
echo "    installed in $bin_dir"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "    note: $bin_dir is not on your PATH; add it (e.g. in ~/.profile) to run mcp-sshctl by name" ;;
esac

# The JSON Schema beside hosts.json, where the README puts it, so that the "$schema":
# "./hosts.schema.json" of a copied hosts.example.json still resolves and editors validate it.
# Only the schema is written (replaced by this version's); a hosts.json is never touched.
config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/mcp-ssh"
[ -d "$config_dir" ] || mkdir -p -m 700 "$config_dir"
cp hosts.schema.json "$config_dir/.hosts.schema.json.tmp"
mv -f "$config_dir/.hosts.schema.json.tmp" "$config_dir/hosts.schema.json"
echo "    JSON Schema for editors: $config_dir/hosts.schema.json"

[ "$demo" = yes ] || exit 0

# The demo runs a real OpenSSH server.
if ! [ -x /usr/sbin/sshd ] && ! [ -x /usr/local/sbin/sshd ] && ! [ -x /usr/bin/sshd ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing openssh-server for the demo (the demo runs its own sshd; no system sshd is started)"
    bash tests/apt-install.sh openssh-server
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
"$CARGO_TARGET_DIR/release/mcp-ssh-demo" --bin-dir "$bin_dir"
