"""What every benchmark script writes beside its numbers: where results go and how they were made."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# ESD-u's learning rate and bank until its default became lr 5e-5, 800 steps, 64 trajectories (2026-11-25):
# rows that ran before then spell them out, so that they re-run as committed.
ESD_U_FAST = {"lr": 2e-4, "bank_trajectories": 32}


def run_meta() -> dict:
    """The command that produced a result (as typed from the repository root), when, and on what."""
    script = Path(sys.argv[0]).name
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads 2",
    }


def heading(title: str, meta: dict) -> list[str]:
    """A results file's first lines: its title, then the command and the run."""
    return [f"# {title}", "", f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; {meta['machine']}", ""]


def write_results(name: str, meta: dict, rows: list[dict], markdown: list[str], directory: Path = RESULTS) -> None:
    """<directory>/<name>.json (meta and rows) and <name>.md (the table a reader opens), each written whole."""
    from erasekit.io import atomic_write_text  # here, not at the top: importing erasekit loads torch, and --help should not wait

    atomic_write_text(directory / f"{name}.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    atomic_write_text(directory / f"{name}.md", "\n".join(markdown) + "\n")
