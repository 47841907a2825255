#!/usr/bin/env bash
# Set up .venv, erase "circle" from the built-in shapes-world model with All-but-One (circles become
# squares), and write a before/after report to demo/report/ (grid.png, report.md, metrics.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/erasekit erase --model builtin --method abo --concept circle --replacement square \
  --out demo/erased-circle.safetensors --report demo/report
echo "open demo/report/report.md (and demo/report/grid.png)"
