#!/usr/bin/env bash
# Create or reuse python/.venv and install the ib_stream package (python/) with its test
# extras (pytest, ruff, mypy, pandas, pyarrow) from PyPI.
#
# Idempotent: when python/.venv exists, imports ib_stream from this checkout and has the test
# tools, only the package itself is reinstalled (no download). Anything else (missing venv,
# broken interpreter) recreates it from scratch.
#
# Usage: scripts/setup-python.sh     (progress on stderr; the venv python path alone on stdout)
# Env:   PYTHON=python3.11 to pick the interpreter that creates the venv (>= 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=python/.venv
PYTHON=${PYTHON:-python3}

die() {
  echo "setup-python: error: $*" >&2
  exit 1
}

command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=... to a Python >= 3.11)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
  die "$PYTHON is $("$PYTHON" -V 2>&1); ib_stream needs Python >= 3.11"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
  die "$PYTHON lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)"

usable() {
  [[ -x $VENV/bin/python ]] &&
    "$VENV/bin/python" -c 'import pytest, ruff, mypy, numpy, pandas, pyarrow, websockets, httpx, zstandard, setuptools, wheel' 2>/dev/null
}

if ! usable; then
  rm -rf "$VENV"
  echo "setup-python: creating $VENV with $("$PYTHON" -V 2>&1)" >&2
  "$PYTHON" -m venv "$VENV" >&2 || die "could not create $VENV with $PYTHON"
  # The build backend goes into the venv once, so reinstalls need no isolated build env.
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q 'setuptools>=69' wheel './python[test]' >&2 ||
    { rm -rf "$VENV"; die "pip could not install ./python[test] from PyPI"; }
else
  echo "setup-python: reusing $VENV; reinstalling the package from python/" >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps --force-reinstall \
    --no-build-isolation ./python >&2 ||
    die "pip could not install ./python"
fi
"$VENV/bin/python" -c 'import ib_stream' || die "ib_stream does not import after install"
echo "$PWD/$VENV/bin/python"
