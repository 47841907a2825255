#!/usr/bin/env bash
# Set up .venv and run the whole test suite, slow end-to-end tests included.
# Locally, `scripts/test.sh -m "not slow"` skips the slow ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
