#!/usr/bin/env bash
# Create or reuse the project-local Python environment `.venv` for the conformance run and
# install the exact client versions in tests/conformance/requirements.txt from PyPI.
#
# Idempotent: when .venv exists and every pinned `name==version` is what pip reports as
# installed, nothing is downloaded. Anything else (missing venv, wrong version, broken
# interpreter) recreates it from scratch, so a stale environment never hides a pin change.
#
# Usage: scripts/setup-venv.sh          (progress on stderr; the venv python path alone on stdout)
# Env:   PYTHON=python3.11 to pick the interpreter that creates the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

REQ=tests/conformance/requirements.txt
VENV=.venv
PYTHON=${PYTHON:-python3}

die() {
  echo "setup-venv: error: $*" >&2
  exit 1
}

[[ -f $REQ ]] || die "$REQ not found"
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=... to a Python >= 3.10)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "$PYTHON is $("$PYTHON" -V 2>&1); ib-async 2.1.0 needs Python >= 3.10"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
  die "$PYTHON lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)"

# The pins as normalised lowercase `name==version` lines (PEP 503: `_`/`.` -> `-`).
wanted=$(grep -Ev '^[[:space:]]*(#|$)' "$REQ" | sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]//g' |
  awk -F'==' '{ n=tolower($1); gsub(/[_.]+/, "-", n); print n "==" $2 }' | sort)
if grep -Ev '^[[:space:]]*(#|$)' "$REQ" | grep -vq '=='; then
  die "$REQ must pin every package with '==' (found an unpinned line)"
fi

satisfied() {
  [[ -x $VENV/bin/python ]] || return 1
  local have
  have=$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null |
    awk -F'==' 'NF == 2 { n=tolower($1); gsub(/[_.]+/, "-", n); print n "==" $2 }' | sort) || return 1
  # Every wanted pin must appear verbatim among the installed packages.
  [[ -z $(comm -23 <(echo "$wanted") <(echo "$have")) ]]
}

if satisfied; then
  echo "setup-venv: $VENV already has the pinned versions; reusing it" >&2
else
  if [[ -e $VENV ]]; then
    echo "setup-venv: $VENV is missing or has other versions; recreating it" >&2
    rm -rf "$VENV"
  else
    echo "setup-venv: creating $VENV with $("$PYTHON" -V 2>&1)" >&2
  fi
  "$PYTHON" -m venv "$VENV" >&2 || die "could not create $VENV with $PYTHON"
  # --no-deps is deliberately NOT used: pip must confirm the pins are a consistent set.
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$REQ" >&2; then
    rm -rf "$VENV"
    die "pip could not install $REQ from PyPI (network to PyPI down, or a pinned version was withdrawn)"
  fi
  satisfied || {
    echo "wanted:" >&2
    echo "$wanted" >&2
    echo "installed:" >&2
    "$VENV/bin/python" -m pip freeze >&2
    die "$VENV does not hold exactly the pinned versions after install"
  }
  "$VENV/bin/python" -c 'import ibapi.client, ib_async' ||
    die "the pinned clients installed but do not import"
  echo "setup-venv: installed the pinned clients into $VENV" >&2
fi
echo "$PWD/$VENV/bin/python"
