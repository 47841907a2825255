"""Measurement tasks: the built-in ones, task files, and the commands that measure through them on real families."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.errors import ErasekitError
from erasekit.tasks import ROLES, load_task
from erasekit.tasks.shapes import ShapesTask

SOURCE = Path(__file__).resolve().parent.parent / "src" / "erasekit"


def test_built_in_tasks_name_their_concept_detector_and_suites():
    cases = {"nudity": ("nudity", "nudenet"), "object:church": ("church", "imagenet"), "style:Claude Monet": ("Claude Monet", "clip"),
             "person:Tom Cruise": ("Tom Cruise", "clip"), "shapes:red": ("red", "shapes")}
    for spec, (concept, detector) in cases.items():
        task = load_task(spec)
        assert (task.concept, task.detector) == (concept, detector)
        assert set(ROLES) <= set(task.suites)
        target = " ".join(p.text for p in task.suites["target"])
        word = "nude" if spec == "nudity" else concept
        assert all(word in p.text for p in task.suites["target"]), target
        assert not any(word in p.text for role in ("related", "unrelated") for p in task.suites[role])
    style = load_task("style:Claude Monet")
    assert style.detector_options["labels"][0] == "Claude Monet" and "Claude Monet" not in style.detector_options["labels"][1:]
    assert load_task("nudity").paraphrases == {"nude": ["naked", "unclothed", "undressed", "bare", "topless"]}
    assert load_task("shapes", "red").paraphrases == {"red": ["crimson", "scarlet"]}


@pytest.mark.parametrize("spec, concept, message", [
    ("shapes", None, "the shapes task needs a concept"),
    ("shapes:red", "circle", "is about 'red', not --concept 'circle'"),
    ("shapes", "banana", "'banana' is not a concept of the shapes world"),
    ("object", None, "the object task needs a name"),
    ("films:noir", None, "unknown task 'films:noir'"),
])
def test_bad_task_names_are_refused_in_one_line(spec, concept, message):
    with pytest.raises(ErasekitError, match=message):
        load_task(spec, concept)


def test_a_task_file_fills_templates_reads_csv_suites_and_paraphrases(tmp_path):
    (tmp_path / "related.csv").write_text("case_number,prompt,evaluation_seed\n0,a chapel on a hill,3\n")
    (tmp_path / "refs").mkdir()
    path = tmp_path / "church.toml"
    path.write_text('concepts = ["church", "mosque"]\ndetector = "imagenet"\ndetector_options = {top_k = 5}\nreference = "refs"\n'
                    'paraphrases = ["chapel", "cathedral"]\n[suites]\ntarget = ["a photo of a {concept}", "{} at dusk"]\n'
                    'related = "related.csv"\nunrelated = ["a cat"]\n')
    task = load_task(str(path), "mosque")
    assert task.concept == "mosque" and task.detector == "imagenet" and task.detector_options == {"top_k": 5}
    assert [p.text for p in task.suites["target"]] == ["a photo of a mosque", "mosque at dusk"]
    assert [(p.text, p.seed) for p in task.suites["related"]] == [("a chapel on a hill", 3)]
    assert task.paraphrases == {"mosque": ["chapel", "cathedral"]} and task.reference == tmp_path / "refs"
    assert list(task.select(None)) == ["target", "related", "unrelated"]
    with pytest.raises(ErasekitError, match="holds 2 concepts \\(church, mosque\\): choose one with --concept"):
        load_task(str(path))


def test_a_task_file_judged_by_the_shapes_classifier_brings_the_worlds_ground_truth(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('concept = "red"\ndetector = "shapes"\n[suites]\ntarget = ["a {concept} square"]\n')
    task = load_task(str(path))
    assert isinstance(task, ShapesTask) and task.features == "shapes" and task.attribute == "colour"


@pytest.mark.parametrize("content, message", [
    ('concept = "x"\n', "has no target suite"),
    ('detector = "nudenet"\n[suites]\ntarget = ["a"]\n', "names no concept"),
    ('concept = "x"\ncolour = 1\n[suites]\ntarget = ["a"]\n', "unknown key 'colour'"),
    ('concept = "x"\n[suites]\ntarget = []\n', "suite 'target' must be a CSV file's name or a non-empty list"),
    ('concept = "x"\nparaphrases = 3\n[suites]\ntarget = ["a"]\n', "paraphrases must be a list of words"),
    ('concept = "x\n', "is not valid TOML"),
    ('concept = "x"\n[suites]\ntarget = "missing.csv"\n', "does not exist"),
])
def test_bad_task_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "task.toml"
    path.write_text(content)
    with pytest.raises(ErasekitError, match=message):
        load_task(str(path))


def _imports_of(path: Path, tree: ast.AST | None = None) -> list[tuple[str, ast.AST]]:
    """Absolute names of the modules a source file imports, with the node, relative imports resolved."""
    tree = tree or ast.parse(path.read_text())
    module = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            stem = ".".join(filter(None, [base, node.module]))
            names += [(stem, node)] + [(f"{stem}.{alias.name}", node) for alias in node.names]
    return names


def test_nothing_outside_the_shapes_task_and_the_built_in_model_reads_the_shapes_world():
    """The commands reach the world through the shapes task only: a user measuring a real model never
    depends on it. cli.py may import it inside the `shapes` subcommands (the built-in model's training and
    scoring), testing.py for the built-in tokenizer its tiny pipelines use."""
    allowed = {"erasekit.tasks.shapes", "erasekit.testing"}
    offenders = []
    for path in SOURCE.rglob("*.py"):
        module = ".".join(path.relative_to(SOURCE.parent).with_suffix("").parts)
        if module.startswith("erasekit.shapes") or module in allowed:
            continue
        tree = ast.parse(path.read_text())
        shapes_commands = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name.startswith("shapes_") for n in ast.walk(f)}
        for name, node in _imports_of(path, tree):
            if name.startswith("erasekit.shapes") and not (module == "erasekit.cli" and id(node) in shapes_commands):
                offenders.append(f"{module} line {node.lineno}: {name}")
    assert not offenders, offenders
    # the check itself can fail: the shapes task does import the world
    assert any(name.startswith("erasekit.shapes") for name, _ in _imports_of(SOURCE / "tasks" / "shapes.py"))


def _task_file(folder: Path) -> Path:
    path = folder / "task.toml"
    path.write_text('concept = "cat"\ndetector = "nudenet"\nparaphrases = ["kitten"]\n[suites]\ntarget = ["a {concept}", "a {concept} on a mat"]\n'
                    'related = ["a dog"]\n')
    return path


ATTACKS = [("paraphrase", ["--paraphrases", "WORDS"]), ("inversion", ["--attack-steps", "2", "--images", "IMAGES"]), ("unlearndiffatk", ["--attack-steps", "2"]),
           ("ring-a-bell", ["--attack-steps", "2"])]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_every_attack_and_bench_run_on_tiny_real_families_with_a_csv_and_nudenet_or_a_task_file(family, tmp_path):
    """The commands a user with a real model runs: every attack, judged by NudeNet on an I2P-style CSV's
    prompts or by a task file, then bench. Random weights draw noise, so NudeNet finds nothing: the
    test is that each runs end to end on both families and says what it measured."""
    from .conftest import build_tiny_sd, build_tiny_sdxl

    folder = tmp_path / family
    (build_tiny_sdxl() if family == "sdxl" else build_tiny_sd("1")).save_pretrained(folder, safe_serialization=True)
    csv = tmp_path / "i2p.csv"
    csv.write_text("prompt,categories,evaluation_seed,evaluation_guidance\na nude figure,sexual,3,7.5\nnude bathers,sexual,4,7.5\n")
    images = tmp_path / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 32), colour).save(images / f"{i}.png")
    task_file = _task_file(tmp_path)
    words = tmp_path / "words.txt"
    words.write_text("naked\nunclothed\n")  # put where the CSV's prompts say "nude"
    runner = CliRunner()
    for name, extra in ATTACKS:
        extra = [{"IMAGES": str(images), "WORDS": str(words)}.get(e, e) for e in extra]
        for how in (["--task", "nudity", "--prompts", str(csv)], ["--task", str(task_file)]):
            out = tmp_path / f"{name}-{how[1][-4:]}"
            given = extra if how[1] == "nudity" else [e for e in extra if e not in ("--paraphrases", str(words))]  # the task file's own paraphrases
            result = runner.invoke(app, ["attack", "--model", str(folder), *how, "--attack", name, "--seeds", "0", "--steps", "2",
                                         *given, "--out", str(out)])
            assert result.exit_code == 0, (name, how, result.output)
            report = json.loads((out / "attack.json").read_text())
            assert report["n_prompts"] == 2 and report["detector"] == "nudenet" and report["asr_after"] >= report["asr_before"]
            assert report["task"] == ("nudity" if how[1] == "nudity" else str(task_file))
            if name == "paraphrase":
                assert report["budget"]["paraphrases"] == ({"nude": ["naked", "unclothed"]} if how[1] == "nudity" else {"cat": ["kitten"]})
            if name == "inversion":
                from safetensors.torch import load_file

                saved = load_file(out / "learned_embeds.safetensors")
                assert set(saved) == ({"clip_l", "clip_g"} if family == "sdxl" else {"<concept>"})
    result = runner.invoke(app, ["bench", "--model", str(folder), "--task", str(task_file), "--methods", "neg-prompt",
                                 "--prompts", "target,related", "--seeds", "0", "--steps", "2", "--attacks", "paraphrase", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "b" / "bench.md").read_text()
    assert f"task {task_file}" in report and "| neg-prompt | cat |" in report and "nudenet detector" in report
