"""Evaluation: metrics against known answers, prompt suites and CSV loaders, detectors, evaluate() and its report."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from erasekit import Sampling, load_pipeline
from erasekit.api import make_batches
from erasekit.errors import ErasekitError
from erasekit.evaluation.metrics import agreement, clip_score, fid_kid, ssim
from erasekit.evaluation.prompts import load_csv
from erasekit.tasks import load_task
from erasekit.tasks.shapes import ClassifierFeatures, ShapesDetector, shapes_suite, shapes_task
from erasekit.shapes.world import COLOURS, SHAPES, TEXTURES, render_dataset


def _renders(n, seed):
    images, _ = render_dataset(n, seed)
    return [Image.fromarray(x) for x in images]


@pytest.fixture(scope="module")
def features(detector):
    return ClassifierFeatures(detector)


def test_ssim_of_identical_images_is_one_and_drops_for_different_ones():
    a, b = _renders(4, 1), _renders(4, 2)
    assert torch.allclose(ssim(a, a), torch.ones(4), atol=1e-5)
    assert (ssim(a, b) < 0.9).all()


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_distortion(features):
    a, b = _renders(64, 1), _renders(64, 2)
    blurred = [im.resize((16, 16)).resize((64, 64)) for im in b]
    same, other, worse = fid_kid(a, a, features), fid_kid(a, b, features), fid_kid(a, blurred, features)
    assert abs(same["fid"]) < 1e-3
    assert other["fid"] < worse["fid"]
    assert same["kid"] < other["kid"] < worse["kid"]


def test_kid_is_symmetric(features):
    a, b = _renders(48, 3), _renders(48, 4)
    assert fid_kid(a, b, features)["kid"] == pytest.approx(fid_kid(b, a, features)["kid"], rel=1e-5)


def _tiny_clip(tmp_path):
    """A random CLIP model and its processor, saved to tmp_path/clip."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from erasekit.shapes.tokenizer import save_tokenizer

    tokenizer = save_tokenizer(tmp_path / "tokenizer")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    return model, processor


def _embeddings(model, processor, images, prompts):
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=inputs.pixel_values).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).pooler_output)
    return img, txt


def test_clip_score_matches_cosine_of_projected_embeddings(tmp_path):
    model, processor = _tiny_clip(tmp_path)
    images, prompts = _renders(3, 5), ["a red circle", "a blue square", "a green star"]

    img, txt = _embeddings(model, processor, images, prompts)
    expected = (100 * torch.nn.functional.cosine_similarity(img, txt).clamp(min=0)).mean().item()
    assert clip_score(images, prompts, str(tmp_path / "clip")) == pytest.approx(expected, abs=1e-4)


def test_the_clip_detector_gives_each_image_the_label_whose_text_is_nearest(tmp_path):
    from erasekit.evaluation.detectors import make_detector

    model, processor = _tiny_clip(tmp_path)
    labels, images = ["red", "blue", "green", "yellow", "purple", "cyan"], _renders(12, 6)
    img, txt = _embeddings(model, processor, images, [f"a {label}" for label in labels])
    nearest = (torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T).argmax(-1).tolist()
    detector = make_detector("clip", labels=labels, template="a {}", model=str(tmp_path / "clip"))
    for k, label in enumerate(labels):
        assert detector.detect(images, label).flags == [i == k for i in nearest]
    assert len(set(nearest)) > 1  # random weights still tell some images apart: the check can fail
    with pytest.raises(ErasekitError, match="'circle' is not one of the clip detector's labels"):
        detector.check("circle")
    with pytest.raises(ErasekitError, match="needs a CLIP model"):
        make_detector("clip", labels=labels)


def test_agreement_counts_only_images_whose_prompt_names_the_attribute():
    predicted = {"shape": ["circle", "star", "cross"], "colour": ["red", "red", "blue"]}
    wanted = [{"shape": "circle"}, {"shape": "circle", "colour": "red"}, {"colour": "green"}]
    assert agreement(predicted, wanted) == {"colour": 0.5, "shape": 0.5}


def test_same_seed_agreement_counts_pairs_that_show_the_same_value_named_or_not():
    from erasekit.evaluation.evaluate import same_seed_agreement

    base = {"shape": ["circle", "star", "cross", "star"], "texture": ["dotted", "solid", "striped", "dotted"]}
    erased = {"shape": ["circle", "star", "square", "star"], "texture": ["striped", "solid", "striped", "solid"]}
    assert same_seed_agreement(base, erased) == {"shape": 0.75, "texture": 0.5}


def test_batches_share_one_guidance_scale_and_respect_the_size():
    jobs = [("a", 0, 7.5), ("b", 1, 7.5), ("c", 2, 7.5), ("d", 3, 3.0)]
    assert make_batches(jobs, 2) == [[jobs[0], jobs[1]], [jobs[2]], [jobs[3]]]


def test_shapes_suites_name_the_concept_or_avoid_it():
    target = shapes_suite("target", "circle")
    related = shapes_suite("related", "circle")
    unrelated = shapes_suite("unrelated", "circle")
    assert all("circle" in p.text for p in target)
    assert not any("circle" in p.text for p in related + unrelated)
    assert {p.wanted["shape"] for p in related} == set(SHAPES) - {"circle"}
    assert not any(s in p.text for p in unrelated for s in SHAPES)
    assert {p.wanted.get("colour") for p in unrelated} >= set(COLOURS)
    with pytest.raises(ErasekitError, match="unknown prompt suite"):
        shapes_task("circle", "target,nonsense")
    with pytest.raises(ErasekitError, match="no suite 'nonsense'"):
        shapes_task("circle").select("target,nonsense")
    with pytest.raises(ErasekitError, match="needs a concept"):
        load_task("shapes")


@pytest.mark.parametrize("concept, named", [("red", "texture"), ("circle", "texture"), ("striped", "colour")])
def test_described_prompts_are_the_related_ones_with_the_open_attribute_named_in_turn(concept, named):
    related, described = shapes_suite("related", concept), shapes_suite("described", concept)
    assert len(described) == len(related)
    values = {"texture": TEXTURES, "colour": COLOURS}[named]
    for i, (r, d) in enumerate(zip(related, described)):
        assert d.wanted == r.wanted | {named: values[i % len(values)]}
        assert d.text.split() == [r.text.split()[0], values[i % len(values)], *r.text.split()[1:]]
        assert concept not in d.text.split()


def test_i2p_and_coco_csv_files_load(tmp_path):
    i2p = tmp_path / "i2p.csv"
    i2p.write_text('prompt,categories,evaluation_seed,evaluation_guidance,hard\n"a nude, figure",sexual,42,7.0,1\nportrait,"sexual,violence",7,9,0\n')
    rows = load_csv(i2p)
    assert [(p.text, p.seed, p.guidance, p.categories) for p in rows] == [
        ("a nude, figure", 42, 7.0, ("sexual",)), ("portrait", 7, 9.0, ("sexual", "violence"))]
    coco = tmp_path / "coco_30k.csv"
    coco.write_text(",case_number,prompt,evaluation_seed\n0,17,a cat on a mat,2219\n")
    (row,) = load_csv(coco)
    assert (row.text, row.seed, row.guidance, row.case) == ("a cat on a mat", 2219, None, "17")
    assert list(shapes_task("red").select(str(coco))) == ["coco_30k"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("text,seed\nhello,1\n", "lacks the columns"),
        ("case_number,prompt,evaluation_seed\n0,hello,not-a-number\n", "line 2"),
        ("case_number,prompt,evaluation_seed\n", "no prompts"),
    ],
)
def test_bad_csv_files_fail_clearly(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ErasekitError, match=message):
        load_csv(path)
    with pytest.raises(ErasekitError, match="does not exist"):
        load_csv(tmp_path / "missing.csv")


def test_nudenet_finds_nothing_on_neutral_images():
    from erasekit.evaluation.detectors import NudeNetDetector

    neutral = _renders(6, 7) + [Image.new("RGB", (256, 256), c) for c in ("white", "black", (120, 160, 200))]
    detection = NudeNetDetector(threshold=0.6).detect(neutral)
    assert detection.flags == [False] * len(neutral)
    assert detection.rate == 0.0


def test_shapes_detector_finds_the_concept_in_renders():
    images, labels = render_dataset(40, 9)
    detection = ShapesDetector().detect([Image.fromarray(x) for x in images], "red")
    assert detection.flags == [lab.colour == "red" for lab in labels]


def test_evaluate_of_a_model_against_itself_and_its_report(builtin_pipe, detector, tmp_path):
    from erasekit.evaluation.evaluate import evaluate
    from erasekit.evaluation.report import write_evaluation

    suites = {"target": shapes_suite("target", "red")[:3], "related": shapes_suite("related", "red")[:4]}
    evaluation = evaluate(builtin_pipe, builtin_pipe, shapes_task("red"), suites, ShapesDetector(), sampling=Sampling(seeds=[0, 1], steps=4), progress=False)
    for name, result in evaluation.suites.items():
        assert result.n_images == 2 * len(suites[name])
        assert result.detected == result.detected_base
        assert result.ssim == pytest.approx(1.0, abs=1e-3)  # CPU kernels are not bit-exact across calls
        assert result.alignment == result.alignment_base
        assert set(result.kept) == {"shape", "colour", "texture"} and min(result.kept.values()) >= 0.9  # near-identical images
    assert evaluation.distribution["reference"] == "rendered ground truth"
    assert evaluation.distribution["base"]["fid"] == pytest.approx(evaluation.distribution["erased"]["fid"], rel=1e-2)
    assert evaluation.timing["images"] == 2 * 14

    report = write_evaluation(tmp_path / "eval", evaluation, {"method": "none"})
    assert "![base vs erased, same seeds](grid.png)" in report.read_text()
    assert Image.open(tmp_path / "eval" / "grid.png").size[0] > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["evaluation"]["suites"]["target"]["n_images"] == 6


def test_one_sampling_decides_what_evaluate_and_an_attack_draw(builtin_pipe):
    """The seeds, steps and guidance of a Sampling are the ones every image is drawn with, and bad ones are refused before any work."""
    from erasekit import ErasekitError
    from erasekit.api import generate_jobs
    from erasekit.attacks import run_attack
    from erasekit.evaluation.evaluate import evaluate

    sampling = Sampling(seeds=(5, 9), steps=3, guidance=2.0, batch_size=3)
    suites = {"target": shapes_suite("target", "red")[:2]}
    evaluation = evaluate(builtin_pipe, builtin_pipe, shapes_task("red"), suites, ShapesDetector(), sampling, reference=None, progress=False)
    expected = generate_jobs(builtin_pipe, [(p.text, s, 2.0) for p in suites["target"] for s in (5, 9)], 3, 3)
    other = generate_jobs(builtin_pipe, [(p.text, s, 7.5) for p in suites["target"] for s in (5, 9)], 3, 3)  # another guidance
    difference = lambda a, b: max(np.abs(np.asarray(x, float) - np.asarray(y, float)).mean() for x, y in zip(a, b))  # noqa: E731
    assert difference(evaluation.images["target"]["base"], expected) < 0.5 < difference(evaluation.images["target"]["base"], other)
    assert {k: evaluation.settings[k] for k in ("seeds", "steps", "guidance", "batch_size")} == {"seeds": [5, 9], "steps": 3, "guidance": 2.0, "batch_size": 3}

    result = run_attack("paraphrase", builtin_pipe, "red", ["a red circle"], ShapesDetector(), sampling=sampling, paraphrases={"red": ["crimson"]})
    assert result.n_prompts == 2 and {seed for _, seed, _ in result.tried.prompts} == {5, 9}
    for bad, message in ((Sampling(seeds=()), "seeds must be at least 1"), (Sampling(guidance=float("nan")), "guidance must be a finite number"),
                         (Sampling(batch_size=0), "batch size must be at least 1")):
        with pytest.raises(ErasekitError, match=message):
            evaluate(builtin_pipe, builtin_pipe, shapes_task("red"), suites, ShapesDetector(), bad, reference=None, progress=False)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_bench_writes_valid_html_with_its_images_and_reuses_cells(tmp_path):
    from erasekit.api import Sampling
    from erasekit.evaluation.bench import BenchSettings, bench

    settings = BenchSettings(sampling=Sampling(seeds=(0,), steps=3), prompts="target,related")
    rows = bench(tmp_path, ["neg-prompt"], ["red"], settings, progress=False)
    assert rows[0]["evaluation"]["suites"]["target"]["n_images"] == len(shapes_suite("target", "red"))
    page = (tmp_path / "bench.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert page.startswith("<!DOCTYPE html>") and {"html", "table", "img"} <= set(parser.tags)
    assert set(parser.sources) == {"scatter.png", "grid-red.png"}
    for src in parser.sources:
        Image.open(tmp_path / src).verify()
    assert "| neg-prompt | red |" in (tmp_path / "bench.md").read_text()

    cell = next((tmp_path / "cells").glob("neg-prompt-red-*")) / "result.json"
    stamp = cell.stat().st_mtime_ns
    bench(tmp_path, ["neg-prompt"], ["red"], settings, progress=False)
    assert cell.stat().st_mtime_ns == stamp  # reused, not recomputed

    retrained = load_pipeline("builtin")
    with torch.no_grad():
        retrained.unet.conv_out.bias.add_(0.1)
    retrained.save_pretrained(tmp_path / "retrained")
    bench(tmp_path, ["neg-prompt"], ["red"], dataclasses.replace(settings, model=str(tmp_path / "retrained")), progress=False)
    assert len(list((tmp_path / "cells").glob("neg-prompt-red-*"))) == 2  # another base model: its own cell


def _one_process_and_two(args: list[str], tmp_path):
    """Run `erasekit ARGS` once alone (--out tmp_path/one) and once under a two-process CPU accelerate launch (tmp_path/two); returns the launch's stdout."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "erasekit", *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "erasekit", *args, "--out", str(tmp_path / "two")]
    double = subprocess.run(launch, env=env, capture_output=True, text=True)
    assert double.returncode == 0, double.stderr
    return double.stdout


@pytest.mark.slow
def test_two_process_evaluation_equals_the_single_process_one(tmp_path):
    _one_process_and_two(["evaluate", "--concept", "red", "--method", "neg-prompt", "--prompts", "target", "--seeds", "0,1",
                          "--steps", "4", "--batch-size", "4", "--reference", "none"], tmp_path)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["evaluation"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["evaluation"]
    assert two["settings"]["processes"] == 2 and one["settings"]["processes"] == 1
    assert two["prompts"] == one["prompts"]
    for name in one["suites"]:
        a, b = one["suites"][name], two["suites"][name]
        assert (a["detected_base"], a["detected"], a["counts"]) == (b["detected_base"], b["detected"], b["counts"])
        assert a["ssim"] == pytest.approx(b["ssim"], abs=1e-6)


@pytest.mark.slow
def test_two_process_bench_spreads_whole_cells_and_equals_the_single_process_one(tmp_path):
    stdout = _one_process_and_two(["bench", "--methods", "uce,neg-prompt", "--concepts", "square,red", "--prompts", "target",
                                   "--seeds", "0", "--steps", "3", "--attacks", "paraphrase"], tmp_path)
    assert stdout.count("wrote") == 1  # the report, by rank 0 alone

    def cells(out):
        return {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}

    one, two = cells(tmp_path / "one"), cells(tmp_path / "two")
    assert set(one) == set(two) and len(one) == 4  # the same cells, under the same keys
    assert {c["process"] for c in one.values()} == {0} and {c["process"] for c in two.values()} == {0, 1}
    for key, a in one.items():
        b = two[key]
        for name, suite in a["evaluation"]["suites"].items():
            other = b["evaluation"]["suites"][name]
            assert (suite["detected_base"], suite["detected"]) == (other["detected_base"], other["detected"])
            assert suite["ssim"] == pytest.approx(other["ssim"], abs=1e-6)
    table = lambda out: [line for line in (out / "bench.md").read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    assert len(table(tmp_path / "two")) == 1 + 4 and [r.split("|")[1:3] for r in table(tmp_path / "one")] == [r.split("|")[1:3] for r in table(tmp_path / "two")]
    attacks = lambda out: [line for line in (out / "bench.md").read_text().split("Against the unerased model")[1].splitlines() if line.startswith("- ")]  # noqa: E731
    assert attacks(tmp_path / "two") == attacks(tmp_path / "one") and len(attacks(tmp_path / "one")) == 2  # each concept's sanity row, whichever process ran it
