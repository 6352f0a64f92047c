#!/usr/bin/env bash
# Installs the chart page's library (TradingView lightweight-charts, pinned by
# web/package-lock.json) into web/node_modules with `npm ci`. The next build embeds it in the
# binary (build.rs); a binary built without it serves /chart as a note that says so, and the
# live page (/) works either way. Idempotent. Needs Node.js/npm. Run: ./scripts/install-web.sh
set -euo pipefail
cd "$(dirname "$0")/../web"
if ! command -v npm >/dev/null 2>&1; then
  echo "install-web: npm not found; install Node.js (e.g. apt-get install nodejs npm) to build the chart page" >&2
  exit 1
fi
lib=node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js
want=$(node -p "require('./package-lock.json').packages['node_modules/lightweight-charts'].version")
have=$(node -p "require('./node_modules/lightweight-charts/package.json').version" 2>/dev/null || true)
if [ -f "$lib" ] && [ "$want" = "$have" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --ignore-scripts
test -f "$lib"
# build.rs watches the lock file: the next build embeds the library.
touch package-lock.json
