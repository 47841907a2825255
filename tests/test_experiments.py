"""Experiments as data: the committed results come from their data files, and the docs from the results."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    """benchmarks/run.py as a module (it is a script, not part of the package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))  # run.py imports its sibling common.py, as it does when run
    spec = importlib.util.spec_from_file_location("experiment_runner", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_results_match_their_data_files_and_the_docs_are_current():
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "results match their data files; docs are current" in done.stdout


def test_the_check_catches_a_run_that_is_not_the_data_files():
    run = _runner()
    from dataclasses import asdict

    from erasekit.methods import get_method

    today = asdict(get_method("abo").make_config())
    row = {"method": "abo", "settings": {}, "train_seed": 0, "resolved": today}
    assert run._runs_differ([("abo", {}, 0)], [row]) == []
    assert run._runs_differ([("abo", {}, 0)], [row, row | {"variant": "LoRA rank 4"}]) == []  # one training, two rows
    assert run._runs_differ([("abo", {}, 1)], [row]), "another training seed"
    assert run._runs_differ([("abo", {"lam": 5.0}, 0)], [row]), "another lambda than the row trained with"
    assert run._runs_differ([("abo", {}, 0), ("abo", {}, 1)], [row]), "a run the results lack"
    stale = row | {"resolved": today | {"steps": today["steps"] + 1}}
    assert run._runs_differ([("abo", {}, 0)], [stale]), "defaults that changed since the row was made"


def test_a_data_file_becomes_the_scripts_command(tmp_path):
    run = _runner()
    e = run.Experiment(name="x", title="t", section=run.SECTIONS[0], script="preservation_precision", shows="s",
                       args={"concept": "star", "eval-seeds": 12, "cpu": True}, runs=[{"method": "abo"}])
    command = e.command(tmp_path)
    assert command[1:] == ["benchmarks/preservation_precision.py", "--concept", "star", "--eval-seeds", "12", "--cpu",
                           "--experiment", "benchmarks/experiments/x.toml", "--results-dir", str(tmp_path)]


def test_the_results_page_shows_each_experiments_text_beside_its_table():
    run = _runner()
    page = run.results_page()
    e = run.Experiment.load("preservation-square-abo")
    text_at = page.index(e.shows.strip())
    table_at = page.index("| abo, mean | defaults |", text_at)
    assert text_at < table_at and "python benchmarks/run.py preservation-square-abo" in page[text_at:table_at]


def test_an_unknown_experiment_is_one_line_before_anything_runs():
    done = subprocess.run([sys.executable, "benchmarks/run.py", "ptp-token-scope", "no-such-thing"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.strip() == "error: no experiment 'no-such-thing'; `python benchmarks/run.py --list` lists them"
    assert "==" not in done.stdout  # ptp-token-scope, named first, did not start
