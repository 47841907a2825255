#!/usr/bin/env bash
# Set up .venv, erase "red" from the built-in shapes-world model with All-but-One, and write a
# before/after report to demo/report/ (grid.png, report.md, metrics.json). Without a replacement:
# erasing red into blue cost the other colours' prompts 8 points, erasing red alone under 1 (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/erasekit erase --model builtin --method abo --concept red \
  --out demo/erased-red.safetensors --report demo/report
echo "open demo/report/report.md (and demo/report/grid.png)"
