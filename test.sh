#!/usr/bin/env bash
# Set up (once) and run the test suite: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
# Lint and format first: a slip fails here in seconds, not after minutes of tests.
if ! .venv/bin/ruff check -q . || ! .venv/bin/ruff format --check -q .; then
    echo "run: .venv/bin/ruff format . && .venv/bin/ruff check --fix ." >&2
    exit 1
fi
# Two workers, one test file each at a time: much of a TensorFlow test is single-threaded
# tracing, so two files overlap well on two cores (module fixtures stay in one worker). Files go
# out longest first (tests/conftest.py, LONGEST_FIRST), not by how many tests they hold.
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
