#!/usr/bin/env bash
# The one test command. It makes sure what the tests need is present (installing it when run as
# root on Debian/Ubuntu, naming it otherwise), then runs every test of the workspace.
#
#   bash tests/run.sh            # all tests
#   bash tests/run.sh -- NAME    # only tests whose name contains NAME (arguments go to cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_USER=mcptest
is_root() { [ "$(id -u)" = 0 ]; }
have_sshd() { [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; }

if ! have_sshd || ! command -v ssh-keygen >/dev/null 2>&1; then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing openssh-server (the tests run a real sshd on 127.0.0.1)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
  else
    echo "tests/run.sh: the tests need OpenSSH's sshd and ssh-keygen." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y openssh-server" >&2
    echo "  Fedora:        sudo dnf install -y openssh-server" >&2
    echo "  macOS:         sshd ships with the system (/usr/sbin/sshd)" >&2
    exit 1
  fi
fi

# systemd's socket activator, for the service tests (the package does not start anything here).
if ! command -v systemd-socket-activate >/dev/null 2>&1; then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing systemd (for systemd-socket-activate)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
  else
    echo "tests/run.sh: the service tests need systemd-socket-activate (Debian/Ubuntu: sudo apt-get install -y systemd)" >&2
    exit 1
  fi
fi

if is_root; then
  # Root logins are tested too, but a clean unprivileged login user is the common case
  # (and root's shell rc files are often slow). Its password is only used by the password-auth
  # test against the tests' own sshd on 127.0.0.1.
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    echo "tests/run.sh: creating test user $TEST_USER"
    useradd -m -s /bin/sh "$TEST_USER"
  fi
  echo "$TEST_USER:mcp-ssh-test-pw" | chpasswd
  # A login whose shell cannot run commands, for the "login shell" error.
  if ! id mcptest-nologin >/dev/null 2>&1; then
    useradd -m -s /usr/sbin/nologin mcptest-nologin
    usermod -p '*' mcptest-nologin
  fi
  mkdir -p /run/sshd
fi

exec cargo test --workspace --locked "$@"
