#!/usr/bin/env bash
# The one test command. It makes sure what the tests need is present (installing it when run as
# root on Debian/Ubuntu, naming it otherwise), then runs every test of the workspace.
#
#   bash tests/run.sh            # all tests
#   bash tests/run.sh -- NAME    # only tests whose name contains NAME (arguments go to cargo test)
#
# As root it creates two login users, mcptest and mcptest-nologin, and gives mcptest a fresh
# random password for this run only, passed to the password tests in MCP_SSH_TEST_PASSWORD. When
# the run ends, however it ends, no password can log in to either account. Packages are installed
# without starting their services (tests/apt-install.sh). Last, it checks that: mcptest has no
# usable password, and nothing listens on a non-loopback TCP address that did not before the run.
# The exit code is cargo test's (or 1 when only that check failed).
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_USER=mcptest
NOLOGIN_USER=mcptest-nologin
is_root() { [ "$(id -u)" = 0 ]; }
have_sshd() { [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; }

# TCP sockets in LISTEN state (0A) on a non-loopback address, one "ADDRESS:PORT INODE" a line,
# from /proc/net/tcp and tcp6 (ss may not be installed). Loopback: 127.0.0.0/8, ::1 and
# ::ffff:127.0.0.0/104. The kernel prints each 32-bit word of an address in host byte order.
non_loopback_listeners() {
  local files=() f little_endian=0
  for f in /proc/net/tcp /proc/net/tcp6; do
    if [ -r "$f" ]; then files+=("$f"); fi
  done
  [ "${#files[@]}" -gt 0 ] || return 0
  if [ "$(printf '\001\000' | od -An -tu2 | tr -d ' ')" = 1 ]; then little_endian=1; fi
  awk -v le="$little_endian" '
    function hex(s,   i, n) {
      n = 0; s = toupper(s)
      for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789ABCDEF", substr(s, i, 1)) - 1
      return n
    }
    # The bytes of the address in network order, into b[1..n].
    function bytes(h,   w, j, n, word) {
      n = 0
      for (w = 0; w < length(h) / 8; w++) {
        word = substr(h, w * 8 + 1, 8)
        for (j = 0; j < 4; j++) b[++n] = hex(substr(word, le ? 7 - 2 * j : 1 + 2 * j, 2))
      }
      return n
    }
    FNR == 1 || $4 != "0A" { next }
    {
      split($2, local, ":"); port = hex(local[2])
      if (bytes(local[1]) == 4) {
        if (b[1] == 127) next
        addr = b[1] "." b[2] "." b[3] "." b[4]
      } else {
        zeros = 1; for (i = 1; i <= 10; i++) if (b[i] != 0) zeros = 0
        if (zeros && b[11] == 0 && b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 0 && b[16] == 1) next
        if (zeros && b[11] == 255 && b[12] == 255 && b[13] == 127) next
        s = ""
        for (i = 1; i <= 16; i += 2) s = s ":" sprintf("%x", b[i] * 256 + b[i + 1])
        s = s ":"
        sub(/:0(:0)+:/, "::", s)
        if (substr(s, 1, 2) != "::") s = substr(s, 2)
        if (substr(s, length(s) - 1) != "::") s = substr(s, 1, length(s) - 1)
        addr = "[" s "]"
      }
      print addr ":" port, $10
    }' "${files[@]}" | sort -u -k1,1
}

# The program owning the socket with this inode, as "NAME (pid N)", when this user can see it.
socket_owner() {
  local fd pid
  for fd in /proc/[0-9]*/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$1]" ]; then
      pid=${fd#/proc/}
      pid=${pid%%/*}
      echo "$(cat "/proc/$pid/comm" 2>/dev/null) (pid $pid)"
      return
    fi
  done
  echo "a process this user cannot see"
}

# The issue's test: after the run, mcptest cannot log in with any password and nothing the run
# started listens on a non-loopback address. Prints one line when it passes.
check_harmless() {
  local ok=yes user entry field key inode passed
  if is_root; then
    for user in "$TEST_USER" "$NOLOGIN_USER"; do
      entry=$(getent shadow "$user" || true)
      if [ -z "$entry" ]; then
        echo "tests/run.sh: CHECK FAILED: no shadow entry for $user (getent shadow $user)" >&2
        ok=no
        continue
      fi
      field=$(printf '%s\n' "$entry" | cut -d: -f2)
      case "$field" in
        '*' | '!'*) ;;
        *) echo "tests/run.sh: CHECK FAILED: $user can still log in with a password (getent shadow $user: its password field is neither '*' nor '!...')" >&2; ok=no ;;
      esac
    done
    passed="$TEST_USER and $NOLOGIN_USER have no usable password; "
  fi
  while read -r key inode; do
    if ! grep -qxF "$key" <<<"$listeners_before"; then
      echo "tests/run.sh: CHECK FAILED: $key is listening (not a loopback address) and was not before the run: $(socket_owner "$inode")" >&2
      ok=no
    fi
  done < <(non_loopback_listeners)
  [ "$ok" = yes ] || return 1
  echo "tests/run.sh: check passed: ${passed:-}no new TCP listener on a non-loopback address"
}

disable_test_passwords() {
  local user
  for user in "$TEST_USER" "$NOLOGIN_USER"; do
    if id "$user" >/dev/null 2>&1; then usermod -p '*' "$user"; fi
  done
}

# The bastion tests' network namespaces (mcpssh-PID-N), should a test have died before
# deleting its own.
remove_test_namespaces() {
  local ns
  command -v ip >/dev/null 2>&1 || return 0
  for ns in $(ip netns list 2>/dev/null | cut -d' ' -f1 | grep '^mcpssh-' || true); do
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
}

if is_root && command -v flock >/dev/null 2>&1; then
  # Runs as root share the test users (and one password): one at a time. cargo does not inherit
  # the descriptor (9>&- below), so a process the tests leave behind cannot hold the lock.
  lock_dir=/run/lock
  [ -d "$lock_dir" ] || lock_dir=/tmp
  exec 9>"$lock_dir/mcp-ssh-tests.lock"
  if ! flock -n 9; then
    echo "tests/run.sh: waiting for another tests/run.sh run as root to end (they share the test users)"
    flock 9
  fi
fi

listeners_before=$(non_loopback_listeners | cut -d' ' -f1)

if ! have_sshd || ! command -v ssh-keygen >/dev/null 2>&1; then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing openssh-server (the tests run their own sshd on 127.0.0.1; no system sshd is started)"
    bash tests/apt-install.sh openssh-server openssh-client 9>&-
  else
    echo "tests/run.sh: the tests need OpenSSH's sshd and ssh-keygen." >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y openssh-server" >&2
    echo "  Fedora:        sudo dnf install -y openssh-server" >&2
    echo "  macOS:         sshd ships with the system (/usr/sbin/sshd)" >&2
    exit 1
  fi
fi

# A command some tests need, from its Debian package (installed when run as root, without
# starting anything); what the tests use it for says the third argument.
need() {
  local command=$1 package=$2 why=$3
  command -v "$command" >/dev/null 2>&1 && return 0
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing $package ($why)"
    bash tests/apt-install.sh "$package" 9>&-
  else
    echo "tests/run.sh: $why needs $command (Debian/Ubuntu: sudo apt-get install -y $package)" >&2
    exit 1
  fi
}
need systemd-socket-activate systemd "the service tests' socket activator"
need curl curl "the forwarding tests' HTTP client"
need ip iproute2 "the bastion tests' network namespaces"

if is_root; then
  # Root logins are tested too, but a clean unprivileged login user is the common case
  # (and root's shell rc files are often slow).
  if ! id "$TEST_USER" >/dev/null 2>&1; then
    echo "tests/run.sh: creating test user $TEST_USER (no usable password outside a test run)"
    useradd -m -s /bin/sh "$TEST_USER"
  fi
  # A login whose shell cannot run commands, for the "login shell" error.
  if ! id "$NOLOGIN_USER" >/dev/null 2>&1; then
    echo "tests/run.sh: creating test user $NOLOGIN_USER (no usable password)"
    useradd -m -s /usr/sbin/nologin "$NOLOGIN_USER"
  fi
  # From here on, however the run ends: '*' matches no password, yet (unlike a '!' lock, which
  # OpenSSH without PAM treats as a locked account) still lets the tests' own sshd take key logins.
  trap 'disable_test_passwords; remove_test_namespaces' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  # The password tests log in with it, against the tests' own sshd on 127.0.0.1 only. It is in
  # no file and no command line; the account loses it when the run ends.
  MCP_SSH_TEST_PASSWORD=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export MCP_SSH_TEST_PASSWORD
  printf '%s:%s\n' "$TEST_USER" "$MCP_SSH_TEST_PASSWORD" | chpasswd
  usermod -p '*' "$NOLOGIN_USER"
  mkdir -p /run/sshd
fi

status=0
cargo test --workspace --locked "$@" 9>&- || status=$?

if is_root; then
  disable_test_passwords
  remove_test_namespaces
fi
if ! check_harmless && [ "$status" = 0 ]; then
  status=1
fi
exit "$status"
