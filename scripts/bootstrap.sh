#!/usr/bin/env bash
# Create .venv (Python 3.11 when available) if it is missing and install the package
# with its test and elpv extras. Used by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_BIN=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PYTHON_BIN" -m venv .venv
# uv installs the same requirements as pip in less than half the time (a fresh machine, no cache:
# 25 s against 60 s, 27 Nov 2026); pip stays the fallback should uv be unavailable.
# --compile-bytecode: pip writes .pyc files at install, uv only when asked. Without them, where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines), every process compiles TensorFlow
# afresh: `import tensorflow, keras` took 15 s instead of 5, in each of the suite's many processes.
if ! { .venv/bin/python -m pip install -q uv \
    && .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[test,elpv]"; }; then
    echo "uv failed; installing with pip" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test,elpv]"
fi
