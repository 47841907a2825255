"""The GPU cost benchmark (benchmarks/sd_cost.py) in its CPU mode, on a tiny UNet: it cannot rot unseen."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_sd_cost_benchmark_runs_every_variant_in_cpu_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/sd_cost.py", "--cpu", "--models", "tiny", "--dtypes", "bf16", "--steps", "2", "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    assert {r["variant"] for r in rows} == {"esd-x", "esd-x+gc", "abo", "abo+gc", "uce", "ref-esd", "ref-abo"}
    assert all(r["dtype"] == "bf16" and r["peak_gib"] > 0 and r["erase_s"] > 0 for r in rows)
    trained = [r for r in rows if r["variant"] != "uce"]
    assert all(r["step_ms"] > 0 for r in trained)  # two optimiser steps each were timed
    assert {"command", "device", "torch", "diffusers"} <= set(results["meta"])
    table = (tmp_path / "results.md").read_text()
    assert "| bf16 | ref-abo |" in table and "Command: `python benchmarks/sd_cost.py --cpu" in table
