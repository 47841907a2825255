"""What every benchmark script writes beside its numbers: where results go and how they were made."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import tomllib


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


def add_output_flags(parser: argparse.ArgumentParser, trains: bool = False) -> None:
    """The flags every script shares: where results go, and (for scripts that train) the experiment's runs."""
    parser.add_argument("--results-dir", type=Path, required=True,
                        help="folder for results.json and results.md (benchmarks/run.py gives benchmarks/results/<experiment>/)")
    if trains:
        parser.add_argument("--experiment", type=Path, required=True,
                            help="the experiment's data file (benchmarks/experiments/*.toml), whose [[runs]] this trains")


def in_own_process(script: str, cell: dict, results_dir: Path) -> dict:
    """Run `script`'s cell in a fresh process (`script --one CELL`), so that its peak memory is its own; its last stdout line, as JSON."""
    import subprocess

    done = subprocess.run([sys.executable, script, "--one", json.dumps(cell), "--results-dir", str(results_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{Path(script).name} {cell} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args_or_run_cell(parser: argparse.ArgumentParser, run_cell) -> argparse.Namespace | None:
    """The script's arguments; or, when `in_own_process` started it (`--one CELL`), its cell run here and
    printed as JSON on the last line, and None."""
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_cell(**json.loads(args.one))))
        return None
    return args


def seed_range(text: str) -> tuple[int, ...]:
    """"0-12" -> (0, 1, ..., 12): a --seeds flag of the form first-last."""
    first, last = (int(x) for x in text.split("-"))
    return tuple(range(first, last + 1))


def expand_runs(runs: list[dict]) -> list[tuple[str, dict, int]]:
    """An experiment's [[runs]] as (method, settings, training seed), in the order they train."""
    return [(r["method"], r.get("settings", {}), seed) for r in runs for seed in r.get("train_seeds", [0])]


def load_runs(path: Path) -> list[tuple[str, dict, int]]:
    return expand_runs(tomllib.loads(Path(path).read_text(encoding="utf-8"))["runs"])


def reset_peak_memory(cuda: bool) -> None:
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) restarts from the current RSS


def peak_memory_gib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 2**20  # kB


def write_results(directory: Path, meta: dict, rows: list[dict], markdown: list[str]) -> None:
    """<directory>/results.json (meta and rows) and results.md (the table a reader opens), each written whole."""
    from erasekit.io import atomic_write_text  # here, not at the top: importing erasekit loads torch, and --help should not wait

    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(directory) / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=2))
    atomic_write_text(Path(directory) / "results.md", "\n".join(markdown) + "\n")
