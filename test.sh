#!/usr/bin/env bash
# Set up (once) and run the test suite: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
