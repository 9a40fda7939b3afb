#!/usr/bin/env bash
# Installs Debian/Ubuntu packages for the tests (tests/run.sh) and the demo (install.sh) without
# starting a system service: a package's scripts ask /usr/sbin/policy-rc.d before starting one,
# so a temporary one answering 101 ("not allowed") is there during the install (when the machine
# has none; it is removed afterwards). On a machine booted with systemd, an openssh-server that
# this installs also gets its ssh.service and ssh.socket disabled and stopped: the tests and the
# demo run their own sshd on 127.0.0.1 and need no system sshd on port 22.
#
#   bash tests/apt-install.sh PACKAGE...     (as root)
set -euo pipefail

if [ "$#" = 0 ]; then
  echo "usage: bash tests/apt-install.sh PACKAGE..." >&2
  exit 2
fi
if [ "$(id -u)" != 0 ]; then
  echo "tests/apt-install.sh: installing packages needs root" >&2
  exit 1
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

new_sshd=no
for package in "$@"; do
  if [ "$package" = openssh-server ] && ! installed openssh-server; then
    new_sshd=yes
  fi
done

policy=/usr/sbin/policy-rc.d
if ! [ -e "$policy" ]; then
  trap 'rm -f "$policy"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  printf '#!/bin/sh\n# Temporary (mcp-ssh tests/apt-install.sh): no service starts during its install.\nexit 101\n' >"$policy"
  chmod 755 "$policy"
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null

if [ "$new_sshd" = yes ] && [ -d /run/systemd/system ]; then
  # The package enables the units for the next boot even when it may not start them now.
  for unit in ssh.socket ssh.service; do
    systemctl --quiet disable --now "$unit" 2>/dev/null || true
  done
  echo "tests/apt-install.sh: the system sshd of the openssh-server just installed is disabled (systemctl disable --now ssh.socket ssh.service)"
fi
