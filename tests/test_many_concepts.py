"""Many concepts as one input: a replacement per concept, a concepts file, and a report per concept."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from erasekit import erase
from erasekit.api import generate_jobs
from erasekit.cli import app
from erasekit.errors import ErasekitError
from erasekit.methods.base import replacements_for
from erasekit.tasks.shapes import ShapesDetector


def test_a_replacement_is_one_for_all_or_one_per_concept():
    assert replacements_for(["circle", "red"], "square") == {"circle": "square", "red": "square"}
    assert replacements_for(["circle", "red"], {"circle": "square"}) == {"circle": "square", "red": None}
    with pytest.raises(ErasekitError, match="a replacement is given for 'blue', which is not among the concepts erased"):
        replacements_for(["circle", "red"], {"blue": "green"})


def test_each_concept_goes_to_its_own_replacement(builtin_pipe):
    """UCE with circle -> square and red -> nothing, in one edit: circles come out square, red ones lose
    their red, and squares are not what red became (red had no replacement)."""
    pipe = copy.deepcopy(builtin_pipe)
    erase(pipe, method="uce", concepts=["circle", "red"], replacement={"circle": "square"}, progress=False)
    detector, seeds = ShapesDetector(), [0, 1]

    def shares(prompts, attribute):
        images = generate_jobs(pipe, [(p, s, 7.5) for p in prompts for s in seeds], 20)
        predicted = detector.predict(images)[attribute]
        return {v: predicted.count(v) / len(predicted) for v in set(predicted)}

    circles = shares([f"a {c} circle" for c in ("yellow", "green", "cyan", "blue", "purple")], "shape")
    reds = shares([f"a red {s}" for s in ("square", "triangle", "star", "hexagon", "cross")], "colour")
    assert circles.get("square", 0) >= 0.6, circles
    assert reds.get("red", 0) <= 0.2, reds


def test_a_concepts_file_gives_concepts_and_their_own_replacements(tmp_path):
    from erasekit.cli import _concepts

    path = tmp_path / "concepts.txt"
    path.write_text("# shapes first\ncircle -> square\nstar\n\nred  # no replacement of its own\n")
    assert _concepts([], path, None) == (["circle", "star", "red"], {"circle": "square"})
    assert _concepts(["cross"], path, "hexagon") == (["cross", "circle", "star", "red"],
                                                      {"cross": "hexagon", "circle": "square", "star": "hexagon", "red": "hexagon"})
    assert _concepts(["circle"], None, "square") == (["circle"], "square")


@pytest.mark.parametrize("content, message", [
    ("-> square\n", "line 1: write a concept, or 'concept -> replacement'"),
    ("circle ->\n", "line 1: write a concept"),
    ("circle\ncircle\n", "'circle' is named twice"),
    ("# nothing\n", "no concept to erase"),
])
def test_bad_concepts_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "concepts.txt"
    path.write_text(content)
    result = CliRunner().invoke(app, ["erase", "--concepts-file", str(path), "--method", "uce", "--out", str(tmp_path / "e.safetensors")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "e.safetensors").exists()


def test_evaluate_and_attack_report_each_concept_of_a_many_concept_erasure(tmp_path):
    erasure = tmp_path / "two.safetensors"
    runner = CliRunner()
    result = runner.invoke(app, ["erase", "-c", "red", "-c", "circle", "--method", "uce", "--out", str(erasure)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--erasure", str(erasure), "--prompts", "target", "--seeds", "0", "--steps", "4",
                                 "--reference", "none", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    for concept in ("red", "circle"):
        assert (tmp_path / "ev" / concept / "report.md").is_file()
        assert f"target: '{concept}' detected " in result.output
    result = runner.invoke(app, ["attack", "--erasure", str(erasure), "--seeds", "0", "--steps", "4", "--out", str(tmp_path / "at")])
    assert result.exit_code == 0, result.output
    for concept, synonyms in (("red", ["crimson", "scarlet"]), ("circle", ["disc", "round shape"])):
        report = json.loads((tmp_path / "at" / concept / "attack.json").read_text())
        assert report["concept"] == concept and report["budget"]["paraphrases"] == {concept: synonyms}
        assert f"paraphrase on erasure {erasure}, '{concept}': ASR" in result.output
