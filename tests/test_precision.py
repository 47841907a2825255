"""Half precision, as users run Stable Diffusion on a GPU, exercised on the CPU with the built-in model.

Every method trains a few steps with the model loaded in float16 and in bfloat16: the frozen
weights stay half, the trained ones are float32 masters, and what gets saved is those masters
cast to the base dtype, loadable into a pipeline of any dtype.
"""

import pytest
import torch
from safetensors.torch import load_file

from erasekit import ErasekitError, Sampling, erase, load_erasure, load_pipeline
from erasekit.methods import get_method
from erasekit.precision import resolve_device, resolve_dtype
from erasekit.train import TrainingDiverged

# Few steps, short trajectories, small banks: these check the precision plumbing, not erasure quality.
QUICK = dict(steps=3, ddim_steps=4, progress=False)
PER_METHOD = {"ablating": dict(anchor_images=2), "fmn": dict(concept_images=2), "uce": {}}
TRAINED = ["esd-x", "esd-u", "esd-all", "esd-x-strict", "abo", "sdd", "ablating", "fmn"]


def settings(method: str) -> dict:
    if method in ("uce", "rece"):
        return {"progress": False}
    return QUICK | PER_METHOD.get(method, {"bank_trajectories": 1})


def _params(unet, names):
    params = dict(unet.named_parameters())
    return {n: params[n].detach().clone() for n in names}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("method", TRAINED + ["uce", "rece"])
def test_every_method_trains_in_half_precision_and_saves_its_float32_masters(method, dtype, tmp_path):
    pipe = load_pipeline("builtin", device="cpu", dtype=dtype)
    half = pipe.unet.dtype
    before = _params(pipe.unet, [n for n, _ in pipe.unet.named_parameters()])
    out = tmp_path / "e.safetensors"
    erasure = erase(pipe, method=method, concepts="square", seed=0, out=out, **settings(method))

    assert all(torch.isfinite(torch.tensor(v)) for step in erasure.history for v in step.values())
    assert all(t.dtype == torch.float32 for t in erasure.tensors.values())  # the masters
    assert all(p.dtype == half for p in pipe.unet.parameters())  # the pipeline is one dtype again
    changed = [n for n in erasure.names if not torch.equal(erasure.tensors[n].to(half), before[n])]
    assert changed, "no trained parameter moved"
    assert erasure.metadata["base_dtype"] == dtype

    stored = load_file(str(out))
    assert set(stored) == set(erasure.names)
    assert all(torch.equal(stored[n], erasure.tensors[n].to(half)) for n in stored)  # masters cast to the base dtype
    for load_dtype in ("fp32", "fp16"):
        other = load_pipeline("builtin", device="cpu", dtype=load_dtype)
        metadata = load_erasure(other, out)
        params = dict(other.unet.named_parameters())
        assert metadata["method"] == method and metadata["saved_dtype"] == dtype
        assert all(torch.equal(params[n], stored[n].to(params[n].dtype)) for n in stored)


def test_an_erasure_can_be_saved_with_its_masters_exact(tmp_path):
    erasure = erase(load_pipeline("builtin", dtype="bf16"), method="esd-x", concepts="square", **settings("esd-x"))
    erasure.save(tmp_path / "fp32.safetensors", dtype="fp32")
    stored = load_file(str(tmp_path / "fp32.safetensors"))
    assert all(torch.equal(stored[n], erasure.tensors[n]) for n in stored)
    with pytest.raises(ErasekitError, match="saved in fp32, fp16 or bf16"):
        erasure.save(tmp_path / "x.safetensors", dtype="fp8")


@pytest.mark.parametrize("method,dtype", [("abo", "fp16"), ("esd-x", "bf16"), ("sdd", "fp16")])
def test_resume_in_half_precision_gives_the_same_weights(method, dtype, tmp_path, monkeypatch):
    run = dict(method=method, concepts=["square", "red"], seed=1, device="cpu", dtype=dtype, **(QUICK | {"steps": 6, "bank_trajectories": 2}))
    full = erase("builtin", **run)

    cls = get_method(method)
    real_draw, calls = cls.draw, {"n": 0}

    def interrupted_draw(self, generator):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_draw(self, generator)

    monkeypatch.setattr(cls, "draw", interrupted_draw)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        erase("builtin", checkpoint_dir=ckpt, checkpoint_every=2, **run)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["params"].values())
    drawn = []
    monkeypatch.setattr(cls, "draw", lambda self, generator: drawn.append(1) or real_draw(self, generator))
    resumed = erase("builtin", checkpoint_dir=ckpt, checkpoint_every=2, resume=True, **run)
    assert len(drawn) == 2 and resumed.history == full.history  # two steps ran; the earlier losses came back with the checkpoint
    assert all(torch.equal(full.tensors[n], resumed.tensors[n]) for n in full.names)

    with pytest.raises(ErasekitError, match=r"another run \(.*dtype differ\)"):
        erase("builtin", checkpoint_dir=ckpt, resume=True, **(run | {"dtype": "fp32"}))
    with pytest.raises(ErasekitError, match=r"\(seed differ\)"):
        erase("builtin", checkpoint_dir=ckpt, resume=True, **(run | {"seed": 2}))


def test_the_nan_guard_names_the_half_precision_dtype(monkeypatch):
    cls = get_method("esd-x")
    real_loss = cls.loss
    monkeypatch.setattr(cls, "loss", lambda self, batch: (real_loss(self, batch)[0] * float("inf"), {}))
    with pytest.raises(TrainingDiverged, match=r"computing in fp16.*retry with --dtype bf16"):
        erase("builtin", method="esd-x", concepts="square", dtype="fp16", device="cpu", **settings("esd-x"))


def test_float16_scales_the_loss_and_bfloat16_does_not(monkeypatch):
    import erasekit.train as train_module

    made = []
    real = train_module.grad_scaler
    monkeypatch.setattr(train_module, "grad_scaler", lambda device, dtype: made.append(real(device, dtype)) or made[-1])
    for dtype in ("fp16", "bf16", "fp32"):
        erase("builtin", method="esd-x", concepts="square", dtype=dtype, device="cpu", **settings("esd-x"))
    assert [s.is_enabled() for s in made] == [True, False, False]
    assert made[0].get_scale() > 1  # a live scale, not a disabled stub


@pytest.mark.parametrize("made_in,loaded_in", [("fp32", "bf16"), ("bf16", "fp16"), ("fp16", "bf16"), ("bf16", "fp32")])
def test_an_erasure_from_one_precision_is_accepted_by_another_and_a_wrong_base_is_not(made_in, loaded_in, tmp_path):
    out = tmp_path / "e.safetensors"
    erase("builtin", method="uce", concepts="square", dtype=made_in, device="cpu", out=out, progress=False)
    load_erasure(load_pipeline("builtin", dtype=loaded_in), out)  # same base: accepted
    other = load_pipeline("builtin", dtype=loaded_in)
    with torch.no_grad():
        other.unet.conv_in.weight.mul_(1.1)  # another base model: refused whichever check decides
    with pytest.raises(ErasekitError, match="was made for base model"):
        load_erasure(other, out)


def test_device_and_dtype_choices_and_bad_values():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ErasekitError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ErasekitError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ErasekitError, match="unknown device"):
        resolve_device("gpu0")
    with pytest.raises(ErasekitError, match="unknown dtype"):
        load_pipeline("builtin", dtype="float64")
    with pytest.raises(ErasekitError, match="not with a loaded pipeline"):
        erase(load_pipeline("builtin"), method="uce", concepts="square", dtype="bf16")


@pytest.mark.slow
def test_abo_in_bfloat16_with_its_defaults_erases_square_as_float32_does():
    """AbO's defaults in bf16 on the built-in model, base and erased models sampled in bf16: square
    erased and other shapes kept to the bars the float32 run meets (test_erasure_quality.py)."""
    from erasekit.tasks.shapes import ShapesDetector, shapes_task
    from erasekit.evaluation.evaluate import evaluate

    erased = load_pipeline("builtin", dtype="bf16")
    erase(erased, method="abo", concepts="square", seed=0, progress=False)
    evaluation = evaluate(load_pipeline("builtin", dtype="bf16"), erased, shapes_task("square", "target,related"), None, ShapesDetector(),
                          sampling=Sampling(seeds=[0, 1]), reference=None, progress=False)
    target, related = evaluation.suites["target"], evaluation.suites["related"]
    assert target.detected_base >= 0.8
    assert target.detected <= 0.1, target
    assert related.alignment["shape"] >= related.alignment_base["shape"] - 0.1, related
