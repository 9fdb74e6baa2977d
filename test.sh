#!/usr/bin/env bash
# Set up (once) and run the test suite: ./test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
# Two workers, one test file each at a time: much of a TensorFlow test is single-threaded
# tracing, so two files overlap well on two cores (module fixtures stay in one worker).
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
