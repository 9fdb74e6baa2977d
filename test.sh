#!/usr/bin/env bash
# Set up (once) and run the test suite: ./test.sh [pytest args]
# Creates .venv with Python 3.11 when missing and installs the package with its test extras.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON_BIN" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,elpv]"
exec .venv/bin/python -m pytest "$@"
