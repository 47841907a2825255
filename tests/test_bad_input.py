"""Bad input, table-driven: each case exits with code 2 and one 'error:' line, no traceback, and
leaves no file behind. Then the guarantees behind them: erasure files checked on load, run
identity on resume, one writer per output, and a full disk."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from PIL import Image
from typer.testing import CliRunner

from erasekit import ErasekitError, erase, load_erasure, load_pipeline
from erasekit.assets import builtin_pipeline_dir
from erasekit.cli import app
from erasekit.erasure_file import read_metadata
from erasekit.shapes.world import Labels, render

runner = CliRunner()
FAST_ESD = ["--method", "esd-x", "--steps", "2", "--set", "bank_trajectories=1", "--set", "ddim_steps=4"]


@pytest.fixture(scope="module")
def erasure_files(tmp_path_factory):
    """A good erasure of the built-in model (uce: a second) and three broken copies with its metadata."""
    folder = tmp_path_factory.mktemp("erasures")
    good = folder / "good.safetensors"
    erase("builtin", method="uce", concepts="square", out=good, progress=False)
    tensors, header = load_file(str(good)), {f"erasekit.{k}": __import__("json").dumps(v) for k, v in read_metadata(good).items()}
    key = sorted(tensors)[0]
    broken = {
        "nan": {k: torch.full_like(v, float("nan")) for k, v in tensors.items()},
        "shape": tensors | {key: torch.zeros(3, 5)},
        "key": tensors | {"down_blocks.9.attn2.to_k.weight": torch.zeros(2, 2)},
    }
    for name, state in broken.items():
        save_file(state, str(folder / f"{name}.safetensors"), metadata=header)
    (folder / "latin1.txt").write_bytes("a red circle\ncaf\xe9 au lait\n".encode("latin-1"))
    (folder / "latin1.csv").write_bytes("prompt,evaluation_seed\ncaf\xe9,0\n".encode("latin-1"))
    (folder / "not-a-model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    render(Labels("square", "red", "solid", "grey"), np.random.default_rng(0)).save(folder / "square.png")
    other = {f"erasekit.{k}": json.dumps(v) for k, v in (read_metadata(good) | {"base_unet_sha256": "0" * 16}).items()}
    save_file(tensors, str(folder / "other-base.safetensors"), metadata=other)
    # Round 2: values that overflow half precision, damaged metadata, float8, a model folder of one's
    # own, images that cannot be read or would not fit, a file where OUT.ckpt goes, a named pipe.
    save_file(tensors | {key: torch.full_like(tensors[key], 1e6)}, str(folder / "overflow.safetensors"), metadata=header)
    save_file(tensors | {key: torch.full_like(tensors[key], 3e38)}, str(folder / "huge.safetensors"), metadata=header)
    for name, change in {"rounding-bogus": {"base_unet_hash_rounding": "bogus"}, "rounding-list": {"base_unet_hash_rounding": ["fp16"]},
                         "norms-number": {"base_unet_norms": 3.0}}.items():
        meta = {f"erasekit.{k}": json.dumps(v) for k, v in (read_metadata(good) | change).items()}
        save_file(tensors, str(folder / f"{name}.safetensors"), metadata=meta)
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, str(folder / "float8.safetensors"), metadata=header)
    shutil.copytree(builtin_pipeline_dir(), folder / "mymodel")
    (folder / "broken-images").mkdir()
    render(Labels("circle", "red", "solid", "grey"), np.random.default_rng(1)).save(folder / "broken-images" / "good.png")
    (folder / "broken-images" / "bad.png").write_bytes((folder / "square.png").read_bytes()[:60])
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    Image.new("1", (12000, 12000)).save(folder / "big.png")
    shutil.copy(folder / "square.png", folder / "p-compare.png")
    (folder / "link-to-model").symlink_to(folder / "mymodel")
    (folder / "taken.safetensors.ckpt").write_text("the user's own file")
    os.mkfifo(folder / "fifo")
    (folder / "coco.csv").write_text("case_number,prompt,evaluation_seed\n0,a red square,0\n")
    (folder / "notarget.toml").write_text('concept = "cat"\n[suites]\nrelated = ["a dog"]\n')
    (folder / "cat.toml").write_text('concept = "cat"\ndetector = "nudenet"\n[suites]\ntarget = ["a {concept}"]\n')
    return folder


def cases(files: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (command line, a part of the one error line). Outputs go to ./out* in the test's folder."""
    return {
        "--set lam=abc": (["erase", "-c", "square", "--set", "lam=abc", "--out", "out/e.safetensors"], "setting lam takes float"),
        "--set steps=2.5": (["erase", "-c", "square", "--set", "steps=2.5", "--out", "out/e.safetensors"], "setting steps takes int"),
        "--checkpoint-every 0": (["erase", "-c", "square", "--checkpoint-every", "0", "--out", "out/e.safetensors"], "--checkpoint-every must be a positive"),
        "--checkpoint-every -1": (["erase", "-c", "square", "--checkpoint-every", "-1", "--out", "out/e.safetensors"], "--checkpoint-every must be a positive"),
        "--lora-rank 0": (["erase", "-c", "square", "--save-lora", "out/l.safetensors", "--lora-rank", "0", "--out", "out/e.safetensors"], "--lora-rank must be at least 1"),
        "--lora-format unknown": (["erase", "-c", "square", "--save-lora", "out/l.safetensors", "--lora-format", "ckpt", "--out", "out/e.safetensors"], "unknown --lora-format 'ckpt'"),
        "--report-seeds 0": (["erase", "-c", "square", "--report", "out/r", "--report-seeds", "0", "--out", "out/e.safetensors"], "--report-seeds must be at least 1"),
        "--out a folder": (["erase", "-c", "square", "--out", str(files)], "is an existing folder"),
        "concept of punctuation": (["erase", "-c", "!!!???", *FAST_ESD, "--out", "out/e.safetensors"], "has no letter or digit"),
        "unknown word, --strict": (["erase", "-c", "zzqxv", "--strict", *FAST_ESD, "--out", "out/e.safetensors"], "knows no word 'zzqxv'"),
        "generate --guidance nan": (["generate", "-p", "a red circle", "--guidance", "nan", "--out", "out"], "guidance must be a finite number"),
        "generate --n 0": (["generate", "-p", "a red circle", "--n", "0", "--out", "out"], "n must be at least 1"),
        "non-UTF-8 prompt file": (["generate", "--prompt-file", str(files / "latin1.txt"), "--out", "out"], "is not UTF-8 text (byte 0xe9 on line 2)"),
        "non-UTF-8 CSV": (["evaluate", "-c", "square", "--method", "neg-prompt", "--prompts", str(files / "latin1.csv"), "--out", "out"], "is not UTF-8 text"),
        "evaluate: wrong shape": (["evaluate", "-c", "square", "--erasure", str(files / "shape.safetensors"), "--out", "out"], "has shape (3, 5)"),
        "evaluate: NaN": (["evaluate", "-c", "square", "--erasure", str(files / "nan.safetensors"), "--out", "out"], "holds NaN or infinite values"),
        "evaluate: unknown key": (["evaluate", "-c", "square", "--erasure", str(files / "key.safetensors"), "--out", "out"], "parameter(s) this UNet lacks"),
        "generate: NaN": (["generate", "-p", "a red circle", "--erasure", str(files / "nan.safetensors"), "--out", "out"], "holds NaN or infinite values"),
        "generate: wrong shape": (["generate", "-p", "a red circle", "--erasure", str(files / "shape.safetensors"), "--out", "out"], "has shape (3, 5)"),
        "bench --steps 0": (["bench", "--methods", "uce", "--concepts", "square", "--steps", "0", "--out", "out"], "steps must be at least 1"),
        "bench bad setting": (["bench", "--methods", "abo", "--concepts", "square", "--set", "abo.lam=x", "--out", "out"], "setting lam takes float"),
        "shapes render --n 0": (["shapes", "render", "--n", "0", "--out", "out/w.png"], "--n must be at least 1"),
        "shapes train counts": (["shapes", "train", "--steps", "-1", "--n-images", "0", "--out", "out"], "must be positive"),
        "shapes train: unknown denoiser": (["shapes", "train", "--denoiser", "gan", "--out", "out"], "denoiser must be one of unet, dit"),
        "shapes train: --world not a pipeline": (["shapes", "train", "--denoiser", "dit", "--world", str(files), "--out", "out"], "is not a pipeline folder with a vae/"),
        "single file, no config": (["erase", "-c", "square", "--model", str(files / "not-a-model.safetensors"), "--out", "out/e.safetensors"], "needs --config"),
        "unknown method": (["erase", "-c", "square", "--method", "esd-z", "--out", "out/e.safetensors"], "unknown method 'esd-z'"),
        "pickle model": (["generate", "-p", "x", "--model", str(files / "weights.ckpt"), "--out", "out"], "pickle checkpoint"),
        "--dtype fp8": (["erase", "-c", "square", "--dtype", "fp8", "--out", "out/e.safetensors"], "unknown dtype 'fp8'"),
        "attack: unknown attack": (["attack", "-c", "square", "--attack", "gcg", "--out", "out"], "unknown attack 'gcg'"),
        "attack: --steps 0": (["attack", "-c", "square", "--steps", "0", "--out", "out"], "steps must be at least 1"),
        "attack: --guidance inf": (["attack", "-c", "square", "--guidance", "inf", "--out", "out"], "guidance must be a finite number"),
        "bench --batch-size 0": (["bench", "--methods", "uce", "--concepts", "square", "--batch-size", "0", "--out", "out"], "batch size must be at least 1"),
        "attack: zero attack steps": (["attack", "-c", "square", "--attack", "inversion", "--attack-steps", "0", "--out", "out"], "attack steps must be at least 1"),
        "attack: steps for paraphrase": (["attack", "-c", "square", "--attack-steps", "5", "--out", "out"], "the paraphrase attack does not optimise"),
        "attack: no images": (["attack", "-c", "square", "--attack", "inversion", "--images", "nope", "--out", "out"], "no images (.png, .jpg, .webp) in nope"),
        "attack: erasure for another model": (["attack", "-c", "square", "--erasure", str(files / "other-base.safetensors"), "--out", "out"], "was made for base model"),
        "attack: a trained --method": (["attack", "-c", "square", "--method", "esd-x", "--out", "out"], "'esd-x' changes the model's weights"),
        "attack: --erasure and --method": (["attack", "-c", "square", "--erasure", str(files / "good.safetensors"), "--method", "sld", "--out", "out"], "not both"),
        "evaluate: a trained --method": (["evaluate", "-c", "square", "--method", "abo", "--out", "out"], "'abo' changes the model's weights"),
        "bench: unknown attack": (["bench", "--methods", "uce", "--concepts", "square", "--attacks", "gcg", "--out", "out"], "unknown attack 'gcg'"),
        "purify: missing image": (["purify", "--erasure", str(files / "good.safetensors"), "--image", "nope.png", "--out", "out/p.png"], "image not found: nope.png"),
        "purify: erasure for another model": (["purify", "--erasure", str(files / "other-base.safetensors"), "--image", str(files / "square.png"), "--out", "out/p.png"], "was made for base model"),
        "purify: strength 0": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "square.png"), "--strength", "0", "--out", "out/p.png"], "--strength must be in (0, 1]"),
        "purify: not an image": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "latin1.txt"), "--out", "out/p.png"], "cannot read"),
        # Round 2 (issue #30), numbered as filed. Data loss: an output over an input or another output.
        "#1 --save-lora = --out": (["erase", "-c", "square", "--method", "uce", "--out", "out/same.safetensors", "--save-lora", "out/same.safetensors"],
                                   "--save-lora out/same.safetensors is also --out out/same.safetensors"),
        "#1 --save-checkpoint = --out": (["erase", "-c", "square", "--method", "uce", "--out", "out/same.safetensors", "--save-checkpoint", "./out/same.safetensors"],
                                         "two outputs cannot share a path"),
        "#2 --save-pipeline = --model": (["erase", "-c", "square", "--method", "uce", "--model", str(files / "mymodel"), "--out", "out/e.safetensors",
                                          "--save-pipeline", str(files / "mymodel")], "is the input --model"),
        "#2 --out inside --model": (["erase", "-c", "square", "--method", "uce", "--model", str(files / "mymodel"),
                                     "--out", str(files / "mymodel" / "unet" / "diffusion_pytorch_model.safetensors")], "is part of the input --model"),
        "#2 --save-pipeline holding --model": (["erase", "-c", "square", "--method", "uce", "--model", str(files / "mymodel"), "--out", "out/e.safetensors",
                                                "--save-pipeline", str(files)], "holds the input --model"),
        "#2 generate --out a link to --model": (["generate", "-p", "x", "--model", str(files / "mymodel"), "--out", str(files / "link-to-model")],
                                                "is the input --model"),
        "shapes train: --out holds other files": (["shapes", "train", "--quick", "--out", str(files)], "holds other files and no training run"),
        "#3 purify --out = --image": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "square.png"), "--out", str(files / "square.png")],
                                      "is the input --image"),
        "#3 purify's comparison = --image": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "p-compare.png"),
                                              "--out", str(files / "p.png")], "--out's comparison " + str(files / "p-compare.png") + " is the input --image"),
        "#4 --out a named pipe": (["erase", "-c", "square", "--method", "uce", "--out", str(files / "fifo")], "is a named pipe, not a regular file"),
        "#4 generate --out a named pipe": (["generate", "-p", "a red circle", "--out", str(files / "fifo")], "is a named pipe"),
        "#6 a file where OUT.ckpt goes": (["erase", "-c", "square", "--method", "uce", "--out", str(files / "taken.safetensors")],
                                         "checkpoint folder " + str(files / "taken.safetensors.ckpt") + " is a file"),
        "#8 1e6 loaded in fp16": (["generate", "-p", "a red circle", "--dtype", "fp16", "--erasure", str(files / "overflow.safetensors"), "--out", "out"],
                                  "values too large for fp16"),
        "#8 3e38 loaded in fp16": (["generate", "-p", "a red circle", "--dtype", "fp16", "--erasure", str(files / "huge.safetensors"), "--out", "out"],
                                   "values too large for fp16"),
        "esd-x with a replacement": (["erase", "-c", "red", "--replacement", "blue", "--method", "esd-x", "--model", "no/such-model", "--out", "out/e.safetensors"],
                                     "ESD takes no replacement concept"),  # refused before the (missing) model is looked for
        "#9 replacement = concept": (["erase", "-c", "red", "--replacement", "Red", "--method", "uce", "--out", "out/e.safetensors"],
                                     "the replacement 'Red' is the concept 'red' itself"),
        "#9 concept past 77 tokens": (["erase", "-c", " ".join(["red"] * 80), "--method", "uce", "--out", "out/e.safetensors"],
                                      "is 80 tokens; the text encoder reads at most 75"),
        "#10 hash rounding 'bogus'": (["generate", "-p", "x", "--erasure", str(files / "rounding-bogus.safetensors"), "--out", "out"], "base_unet_hash_rounding is 'bogus'"),
        "#10 hash rounding a list": (["generate", "-p", "x", "--erasure", str(files / "rounding-list.safetensors"), "--out", "out"], "base_unet_hash_rounding is list"),
        "#10 norms a number, fp16": (["generate", "-p", "x", "--dtype", "fp16", "--erasure", str(files / "norms-number.safetensors"), "--out", "out"],
                                     "base_unet_norms is float"),
        "#11 float8 tensors": (["generate", "-p", "x", "--erasure", str(files / "float8.safetensors"), "--out", "out"], "is float8_e4m3fn, not a tensor of fp32"),
        "#12 attack --images unreadable": (["attack", "-c", "square", "--attack", "inversion", "--images", str(files / "broken-images"), "--out", "out"],
                                           "cannot read " + str(files / "broken-images" / "bad.png")),
        "#12 evaluate --reference unreadable": (["evaluate", "-c", "square", "--method", "neg-prompt", "--reference", str(files / "broken-images"), "--out", "out"],
                                                "cannot read " + str(files / "broken-images" / "bad.png")),
        "#13 purify a decompression bomb": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "bomb.png"), "--out", "out/p.png"],
                                            "refused before decoding"),
        "#13 purify 12000x12000": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "big.png"), "--out", "out/p.png"],
                                   "is 12000x12000, more than 67,108,864 pixels: refused before decoding"),
        "#14 generate --steps 1001": (["generate", "-p", "x", "--steps", "1001", "--out", "out"], "--steps 1001 is more than the model's scheduler has timesteps (1000)"),
        "#14 purify --steps 1001": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "square.png"), "--steps", "1001", "--out", "out/p.png"],
                                    "--steps 1001 is more than"),
        "#14 attack --steps 1001": (["attack", "-c", "square", "--steps", "1001", "--out", "out"], "--steps 1001 is more than"),
        "#14 erase --set ddim_steps=1001": (["erase", "-c", "square", "--method", "esd-x", "--set", "ddim_steps=1001", "--out", "out/e.safetensors"],
                                            "ddim_steps 1001 is more than the model's scheduler has timesteps (1000)"),
        "#15 erase --report-seeds 1000000000": (["erase", "-c", "square", "--method", "uce", "--report", "out/r", "--report-seeds", "1000000000",
                                                 "--out", "out/e.safetensors"], "--report-seeds 1000000000 would hold"),
        "#15 evaluate --seeds 0-2000000000": (["evaluate", "-c", "square", "--method", "neg-prompt", "--seeds", "0-2000000000", "--out", "out"],
                                              "images of 64x64 in memory"),
        "#15 generate --n 1000000000": (["generate", "-p", "x", "--n", "1000000000", "--out", "out"], "would hold 2,000,000,000 images of 64x64"),
        "#17 evaluate: CSV, concept not in the world": (["evaluate", "-c", "dog", "--method", "neg-prompt", "--prompts", str(files / "coco.csv"), "--out", "out"],
                                                        "'dog' is not a concept of the shapes world"),
        # Tasks: every command that measures names what it measures by before any model loads.
        "evaluate: unknown task": (["evaluate", "--task", "films:noir", "--method", "neg-prompt", "--out", "out"], "unknown task 'films:noir'"),
        "attack: the shapes task without a concept": (["attack", "--out", "out"], "the shapes task needs a concept"),
        "attack: a task file without a target suite": (["attack", "--task", str(files / "notarget.toml"), "--out", "out"], "has no target suite"),
        "attack: a style task without --clip": (["attack", "--task", "style:Claude Monet", "--out", "out"], "the clip detector needs a CLIP model"),
        "attack: paraphrase with no paraphrases": (["attack", "--task", str(files / "cat.toml"), "--out", "out"], "no paraphrases of 'cat'"),
        "attack: a CSV that never names the concept": (["attack", "--task", "nudity", "--prompts", str(files / "coco.csv"), "--out", "out"],
                                                       "no target prompt holds 'nude'"),
        "bench: a concept the task file lacks": (["bench", "--task", str(files / "cat.toml"), "--methods", "uce", "--concepts", "dog", "--out", "out"],
                                                 "has no concept 'dog'"),
        "evaluate: a suite the task lacks": (["evaluate", "-c", "square", "--method", "neg-prompt", "--prompts", "target,bogus", "--out", "out"],
                                             "has no suite 'bogus'"),
        "purify: unknown task": (["purify", "--erasure", str(files / "good.safetensors"), "--image", str(files / "square.png"), "--task", "films",
                                  "--out", "out/p.png"], "unknown task 'films'"),
    }


CASES = list(cases(Path("files")))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, erasure_files, tmp_path, monkeypatch):
    (erasure_files / "weights.ckpt").write_bytes(b"x")
    args, message = cases(erasure_files)[case]
    monkeypatch.chdir(tmp_path)
    before = _snapshot(erasure_files)
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("*")), "left behind: " + ", ".join(str(p) for p in tmp_path.rglob("*"))
    assert _snapshot(erasure_files) == before, "an input was changed"


def _snapshot(folder: Path) -> dict:
    """Every entry under `folder` with its type, size and modification time: what a write would change."""
    return {p: (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns) for p in [folder, *folder.rglob("*")]}


def test_an_unknown_word_is_a_warning_naming_its_pieces_without_strict(tmp_path):
    result = runner.invoke(app, ["erase", "-c", "zzqxv", *FAST_ESD, "--out", str(tmp_path / "e.safetensors")])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "'zzqxv' -> z z q x v</w>" in warning[0]


@pytest.mark.parametrize("broken", ["nan", "shape", "key"])
def test_a_refused_erasure_changes_nothing_in_the_pipeline(erasure_files, broken):
    pipe = load_pipeline("builtin")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(ErasekitError):
        load_erasure(pipe, erasure_files / f"{broken}.safetensors")
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    load_erasure(pipe, erasure_files / "good.safetensors")  # the good one still loads


def test_generate_applies_an_erasure_file(erasure_files, tmp_path):
    base, erased = tmp_path / "base", tmp_path / "erased"
    for out, extra in ((base, []), (erased, ["--erasure", str(erasure_files / "good.safetensors")])):
        result = runner.invoke(app, ["generate", "-p", "a red square", "--n", "1", "--steps", "8", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
    assert (base / "a-red-square_0.png").read_bytes() != (erased / "a-red-square_0.png").read_bytes()


def test_resume_refuses_another_seed_and_another_base_model(tmp_path):
    from .conftest import build_tiny_sd

    tiny = tmp_path / "tiny"
    build_tiny_sd("1").save_pretrained(tiny, safe_serialization=True)
    run = dict(method="esd-x", concepts="circle", steps=4, bank_trajectories=1, ddim_steps=4, start_guidance=1.0, progress=False)
    ckpt = tmp_path / "ckpt"
    erase(str(tiny), checkpoint_dir=ckpt, checkpoint_every=2, seed=1, **run)
    with pytest.raises(ErasekitError, match=r"another run \(seed differ\)"):
        erase(str(tiny), checkpoint_dir=ckpt, resume=True, seed=0, **run)
    other = tmp_path / "other"
    build_tiny_sd("1").save_pretrained(other, safe_serialization=True)
    pipe = load_pipeline(str(other))
    with torch.no_grad():
        pipe.unet.conv_in.bias.add_(0.5)
    with pytest.raises(ErasekitError, match=r"another run \(base_unet_sha256 differ\)"):
        erase(pipe, checkpoint_dir=ckpt, resume=True, seed=1, **run)


def _spawn(*args: str) -> subprocess.Popen:
    """The CLI as a user starts it from a terminal: with Ctrl-C's default action even when the suite
    itself runs in the background (a shell starts background jobs with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler)."""
    return subprocess.Popen([sys.executable, "-m", "erasekit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"HF_HUB_OFFLINE": "1"}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_two_runs_on_one_output_cannot_both_run_and_the_first_result_survives(tmp_path):
    out = tmp_path / "e.safetensors"
    first = _spawn("erase", "-c", "square", "--method", "esd-x", "--steps", "60", "--seed", "0", "--out", str(out))
    _wait_for(tmp_path / ".e.safetensors.lock", first)
    second = runner.invoke(app, ["erase", "-c", "square", "--method", "uce", "--seed", "1", "--out", str(out)])
    assert second.exit_code == 2 and f"PID {first.pid}" in second.output and "being written by another" in second.output
    assert first.wait(timeout=600) == 0, first.communicate()
    assert read_metadata(out)["seed"] == 0 and read_metadata(out)["method"] == "esd-x"
    assert not (tmp_path / ".e.safetensors.lock").exists() and not (tmp_path / "e.safetensors.ckpt").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "e.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", f"from erasekit.io import output_lock\nwith output_lock({str(out)!r}):\n"
                               "    print('held', flush=True)\n    import time; time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    refused = runner.invoke(app, ["erase", "-c", "square", "--method", "uce", "--out", str(out)])
    assert refused.exit_code == 2 and f"PID {holder.pid}" in refused.output
    holder.kill()
    holder.wait()
    assert (tmp_path / ".e.safetensors.lock").exists()  # left behind by the killed holder
    taken = runner.invoke(app, ["erase", "-c", "square", "--method", "uce", "--out", str(out)])
    assert taken.exit_code == 0, taken.output
    assert out.is_file() and not (tmp_path / ".e.safetensors.lock").exists()


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of 1 MiB (or the size given by indirect parametrisation), where the platform lets us
    mount one (root on Linux); skipped elsewhere (the injected failure below covers the same path)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = getattr(request, "param", "1m")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_erase_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(small_disk):
    result = runner.invoke(app, ["erase", "-c", "square", "--method", "esd-x", "--steps", "2", "--set", "bank_trajectories=8",
                                 "--out", str(small_disk / "e.safetensors")])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]  # after the bank's progress bar
    assert result.exit_code == 2 and errors == [f"error: no space left on the device of {small_disk}: e.safetensors.ckpt was not written "
                                                "(any earlier version is unchanged)"], result.output
    assert "Traceback" not in result.output
    assert not list(small_disk.iterdir())  # no bank without its state, no lock, no erasure file


@pytest.mark.parametrize("small_disk", ["256k"], indirect=True)
def test_generate_on_a_full_disk_writes_all_images_or_none(small_disk):
    out = small_disk / "images"
    result = runner.invoke(app, ["generate", "-p", "a red circle", "-p", "a blue star", "--n", "64", "--steps", "4", "--out", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "no space left" in errors[0] and "Traceback" not in result.output, result.output
    assert not [p for p in small_disk.rglob("*") if p.is_file()]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Injected: the disk fills up while writing the checkpoint of step 4; the one of step 2 stays whole."""
    real = torch.save
    calls = {"n": 0}

    def full_disk_at_the_third(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_the_third)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(ErasekitError, match="no space left on the device of .*state.pt was not written"):
        erase("builtin", method="esd-x", concepts="square", steps=6, bank_trajectories=1, ddim_steps=4, checkpoint_dir=ckpt, checkpoint_every=2, progress=False)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert state["step"] == 2 and (ckpt / "bank.safetensors").is_file()
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]


def test_the_package_never_calls_torch_load_without_weights_only():
    import re

    root = Path(__file__).resolve().parent.parent
    calls = [(p, m.group(0)) for p in (root / "src").rglob("*.py") for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls, "the pattern found no torch.load at all: it is broken"
    unsafe = [f"{p.relative_to(root)}: {call}" for p, call in calls if "weights_only=True" not in call]
    assert not unsafe, unsafe


# Round 2 (issue #30): the cases whose right answer is behaviour, not a refusal.


def test_5_distinct_prompts_get_distinct_files_and_a_repeated_one_is_generated_once(tmp_path):
    prompts = ["a red circle", "A RED CIRCLE!", "🔴", "🟦", "a red circle"]
    result = runner.invoke(app, ["generate", *[a for p in prompts for a in ("-p", p)], "--n", "1", "--steps", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in tmp_path.glob("*.png") if p.name != "grid.png")
    assert len(pngs) == 4 and "a-red-circle_0.png" not in pngs, pngs  # the two 'a red circle' spellings are told apart by a hash
    assert "wrote 4 images" in result.output and "1 repeated prompt(s) generated once" in result.output


def test_9_an_erasure_that_changes_nothing_is_refused_after_training_and_nothing_is_written(tmp_path):
    out = tmp_path / "e.safetensors"
    result = runner.invoke(app, ["erase", "-c", "square", *FAST_ESD, "--lr", "1e-30", "--out", str(out)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]  # after the training's progress bars
    assert result.exit_code == 2 and len(errors) == 1 and "the erasure changes nothing: its 35 tensors equal the base model's in fp32" in errors[0], result.output
    assert not list(tmp_path.iterdir())  # no erasure, checkpoint or lock


def test_7_resuming_with_fewer_steps_than_done_is_refused_and_with_as_many_finishes_at_that_step(tmp_path):
    out = tmp_path / "e.safetensors"
    ckpt = tmp_path / "e.safetensors.ckpt"
    run = dict(method="esd-x", concepts="square", bank_trajectories=1, ddim_steps=4, progress=False)
    whole = erase("builtin", steps=4, checkpoint_dir=tmp_path / "whole.ckpt", checkpoint_every=2, **run)
    erase("builtin", steps=4, checkpoint_dir=ckpt, checkpoint_every=2, keep_checkpoint=True, **run)  # as if stopped after step 4
    result = runner.invoke(app, ["erase", "-c", "square", *FAST_ESD[:2], "--steps", "2", "--set", "bank_trajectories=1", "--set", "ddim_steps=4",
                                 "--resume", "--out", str(out)])
    assert result.exit_code == 2 and "has done 4 steps, more than the 2 asked for" in result.output, result.output
    assert not out.exists() and (ckpt / "state.pt").is_file()
    resumed = erase("builtin", steps=4, checkpoint_dir=ckpt, resume=True, **run)
    assert resumed.metadata["final_loss"] == whole.metadata["final_loss"] is not None
    assert resumed.history == whole.history
    assert all(torch.equal(resumed.tensors[n], whole.tensors[n]) for n in whole.names)


def test_16_a_long_legal_out_name_is_written_with_its_lock_and_checkpoint(tmp_path):
    out = tmp_path / ("e" * 236 + ".safetensors")  # 248 characters: legal, though '.NAME.lock' beside it would not be
    assert len(out.name) == 248
    result = runner.invoke(app, ["erase", "-c", "square", *FAST_ESD, "--checkpoint-every", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no lock, checkpoint or temporary file left
    purified = tmp_path / ("p" * 240 + ".png")
    image = _a_png(tmp_path / "in")
    result = runner.invoke(app, ["purify", "--erasure", str(out), "--image", str(image), "--steps", "4", "--out", str(purified)])
    assert result.exit_code == 0, result.output
    assert purified.is_file() and len([p for p in tmp_path.iterdir() if p.name.endswith("-compare.png")]) == 1


def _a_png(folder: Path) -> Path:
    folder.mkdir()
    path = folder / "in.png"
    render(Labels("circle", "red", "solid", "grey"), np.random.default_rng(0)).save(path)
    return path


def test_18_report_md_escapes_what_comes_from_files_paths_and_metadata(erasure_files, tmp_path):
    tensors, meta = load_file(str(erasure_files / "good.safetensors")), read_metadata(erasure_files / "good.safetensors")
    meta |= {"method": "<img src=x onerror=alert(1)>", "concepts": ["<script>alert(1)</script>"]}
    hostile = tmp_path / "hostile.safetensors"
    save_file(tensors, str(hostile), metadata={f"erasekit.{k}": json.dumps(v) for k, v in meta.items()})
    model = tmp_path / "<b>model<i>"
    model.symlink_to(builtin_pipeline_dir())
    prompts = tmp_path / "<i>prompts<b>.csv"
    shutil.copy(erasure_files / "coco.csv", prompts)
    result = runner.invoke(app, ["evaluate", "-c", "square", "--model", str(model), "--erasure", str(hostile), "--prompts", str(prompts),
                                 "--steps", "2", "--reference", "none", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "eval" / "report.md").read_text()
    for raw in ("<b>", "<i>", "<script>", "<img"):
        assert raw not in report, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in report and "&lt;i&gt;prompts&lt;b&gt;" in report and "&lt;b&gt;model&lt;i&gt;" in report


def test_a_named_pipe_or_device_as_an_output_is_refused_by_the_writers_themselves(tmp_path):
    """The guarantee below the CLI: atomic writes refuse a target that is not a regular file (a
    rename would replace the device node or pipe), and leave it as it was."""
    from erasekit.io import atomic_dir, atomic_write_text

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:  # a character device: only root may make one
        device = tmp_path / "null"
        os.mknod(device, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        targets.append(device)
    for target in targets:
        mode = target.lstat().st_mode
        with pytest.raises(ErasekitError, match="not a regular file"):
            atomic_write_text(target, "x")
        with pytest.raises(ErasekitError, match="not a regular file"):
            with atomic_dir(target):
                pass
        assert target.lstat().st_mode == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)
    if len(targets) == 2:
        result = runner.invoke(app, ["erase", "-c", "square", "--method", "uce", "--out", str(targets[1])])
        assert result.exit_code == 2 and "is a device, not a regular file" in result.output, result.output


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; a job scheduler's or kill's stop
def test_ctrl_c_in_erase_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, stop):
    out = tmp_path / "e.safetensors"
    proc = _spawn("erase", "-c", "square", "--method", "esd-x", "--steps", "400", "--checkpoint-every", "5",
                  "--set", "bank_trajectories=1", "--set", "ddim_steps=4", "--out", str(out))
    _wait_for(tmp_path / "e.safetensors.ckpt" / "state.pt", proc)
    time.sleep(1.0)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + stop, stderr
    line = [x for x in stderr.splitlines() if x.startswith("interrupted")]
    assert line and str(tmp_path / "e.safetensors.ckpt") in line[0] and "--resume" in line[0], stderr
    assert not out.exists()


def test_the_built_in_models_own_words_are_known_and_concepts_are_checked_before_the_model_loads(monkeypatch):
    import warnings

    from erasekit.erase import check_concepts
    from erasekit.model import peek_tokenizer

    tokenizer = peek_tokenizer("builtin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_concepts(tokenizer, ["purple", "cyan", "hexagon", "solid", "striped"], strict=True)
    with pytest.raises(ErasekitError, match="knows no word 'zzqxv'"):
        check_concepts(tokenizer, ["zzqxv"], strict=True)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the concept was checked")

    monkeypatch.setattr(sys.modules["erasekit.erase"], "load_pipeline", no_loading)
    with pytest.raises(ErasekitError, match="has no letter or digit"):
        erase("builtin", method="uce", concepts="!!!", progress=False)


def test_the_lora_rank_reported_is_the_rank_stored(tmp_path):
    lora = tmp_path / "l.safetensors"
    result = runner.invoke(app, ["erase", "-c", "square", "--method", "uce", "--out", str(tmp_path / "e.safetensors"),
                                 "--save-lora", str(lora), "--lora-rank", "100000"])
    assert result.exit_code == 0, result.output
    stored = max(t.shape[1] for k, t in load_file(str(lora)).items() if k.endswith("lora_up.weight"))
    assert f"LoRA of rank {stored}, the most any changed weight has; --lora-rank 100000 asked" in result.output
    assert stored < 100000


@pytest.mark.parametrize("command", ["erase", "generate", "evaluate", "attack", "purify"])
def test_no_output_of_a_command_may_be_one_of_its_inputs_or_another_output(command, erasure_files, tmp_path, monkeypatch):
    """The class of guarantee behind rows #1-#4: every output flag of a command pointed at every
    input it reads, and at every other output, is refused in one line, and nothing changes."""
    files, good = erasure_files, str(erasure_files / "good.safetensors")
    paraphrases = tmp_path / "attack.json"
    paraphrases.write_text("box\n")
    inputs = {
        "erase": {"--model": str(files / "mymodel")},
        "generate": {"--model": str(files / "mymodel"), "--erasure": good, "--prompt-file": str(files / "coco.csv")},
        "evaluate": {"--model": str(files / "mymodel"), "--erasure": good, "--prompts": str(files / "coco.csv"), "--reference": str(files / "broken-images")},
        "attack": {"--model": str(files / "mymodel"), "--erasure": good, "--paraphrases": str(paraphrases)},
        "purify": {"--model": str(files / "mymodel"), "--erasure": good, "--image": str(files / "square.png")},
    }[command]
    outputs = {"erase": ["--out", "--save-lora", "--save-checkpoint", "--save-pipeline", "--report"]}.get(command, ["--out"])
    valid = {  # a command that would run; each try below changes only paths in it
        "erase": {"-c": "square", "--method": "uce", "--out": str(tmp_path / "e.safetensors")},
        "generate": {"-p": "x", "--out": str(tmp_path / "g")},
        "evaluate": {"-c": "square", "--erasure": good, "--out": str(tmp_path / "ev")},
        "attack": {"-c": "square", "--erasure": good, "--paraphrases": str(paraphrases), "--out": str(tmp_path / "at")},
        "purify": {"--erasure": good, "--image": str(files / "square.png"), "--out": str(tmp_path / "p.png")},
    }[command]
    tries = [{in_flag: path, out_flag: path} for out_flag in outputs for in_flag, path in inputs.items()]
    tries += [{a: str(tmp_path / "same"), b: str(tmp_path / "same")} for a in outputs for b in outputs if a < b]
    if command == "attack":  # an input with the name of a file the command writes into its folder
        tries.append({"--out": str(tmp_path)})
    monkeypatch.chdir(tmp_path)
    before = _snapshot(files)
    for flags in tries:
        args = [command] + [a for flag, value in (valid | flags).items() for a in (flag, value)]
        result = runner.invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)
        assert any(why in lines[0] for why in CONFLICTS) and any(flag in lines[0] for flag in outputs), (args, lines[0])
        assert _snapshot(files) == before, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attack.json"]


CONFLICTS = ("is the input", "is also", "is part of the input", "holds the input", "is a file", "is an existing folder", "is inside")
