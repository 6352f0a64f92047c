#!/usr/bin/env bash
# Installs Debian's chromium for the headless page test (tests/serve_page_browser.rs).
# Idempotent; needs root (apt). Run: ./scripts/install-chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
command -v chromium
