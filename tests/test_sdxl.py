"""SDXL through every method, on a tiny SDXL built from the real SDXL UNet config (random weights)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from erasekit import Sampling, erase, load_pipeline
from erasekit.tasks.shapes import ShapesDetector, shapes_task
from erasekit.evaluation.evaluate import evaluate
from erasekit.families import Conditioning, family_of
from erasekit.methods import get_method
from erasekit.methods.uce import Uce, uce_solution
from erasekit.presets import select_parameters
from erasekit.sampling import embed, denoiser_out

from .conftest import SDXL_UNET, gentle

TRAINED = ["esd-x", "esd-u", "esd-all", "esd-x-strict", "abo", "sdd", "ablating", "fmn"]


def _settings(method: str) -> dict:
    if method == "abo-implicit":  # δ from suppressing the concept's tokens in both encoders' states
        return {**gentle("abo"), "steps": 2, "delta": "implicit"}
    return {**gentle(method), "steps": 2}


def test_sdxl_conditioning_is_both_encoders_the_pooled_embedding_and_the_size(tiny_sdxl_folder):
    pipe = load_pipeline(str(tiny_sdxl_folder))
    assert family_of(pipe).name == "sdxl"
    c = embed(pipe, ["a red square", ""])
    assert c.hidden.shape == (2, 77, pipe.unet.config.cross_attention_dim)
    assert c.added["text_embeds"].shape == (2, pipe.text_encoder_2.config.projection_dim)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    assert c.added["time_ids"].tolist() == [[size, size, 0, 0, size, size]] * 2
    # the unconditional prompt is zeros (force_zeros_for_empty_prompt), as the pipeline conditions on it
    assert c.hidden[1].abs().sum() == 0 and c.added["text_embeds"][1].abs().sum() == 0 and c.hidden[0].abs().sum() > 0
    # the same hidden states the pipeline's own encode_prompt gives, first encoder's features first
    hidden, _, pooled, _ = pipe.encode_prompt(["a red square"], device=pipe.device, do_classifier_free_guidance=False)
    assert torch.allclose(c.hidden[0], hidden[0], atol=1e-5) and torch.allclose(c.added["text_embeds"][0], pooled[0], atol=1e-5)  # batch of 2 vs 1: rounding


def test_a_conditioning_batches_like_a_tensor(tiny_sdxl_folder):
    pipe = load_pipeline(str(tiny_sdxl_folder))
    a, b = embed(pipe, ["a red square"]), embed(pipe, ["a blue circle", "a star"])
    both = torch.cat([a.expand(2, -1, -1), b])
    assert isinstance(both, Conditioning) and len(both) == 4 and both.added["time_ids"].shape == (4, 6)
    assert torch.equal(both[torch.tensor([3])].hidden, b.hidden[1:]) and torch.equal(both[0].hidden, a.hidden)
    x = torch.randn(4, 4, 8, 8)
    direct = pipe.unet(x, torch.full((4,), 500), encoder_hidden_states=both.hidden, added_cond_kwargs=both.added).sample
    assert torch.equal(denoiser_out(pipe.unet, x, 500, both), direct)


@pytest.mark.parametrize("method", TRAINED + ["abo-implicit", "uce", "rece"])
def test_every_method_erases_sdxl_saves_and_loads_back_with_plain_diffusers(tiny_sdxl_folder, tmp_path, method):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "e.safetensors"
    name = "abo" if method == "abo-implicit" else method
    settings = {} if method in ("uce", "rece") else _settings(method)
    erasure = erase(str(tiny_sdxl_folder), method=name, concepts="square", out=out, **settings)
    base = load_pipeline(str(tiny_sdxl_folder))
    base_params = dict(base.unet.named_parameters())
    moved = [n for n in erasure.names if not torch.equal(erasure.tensors[n].to(base_params[n].dtype), base_params[n].detach())]
    assert moved, f"{method} changed no weight"
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder)
    missing, unexpected = plain.unet.load_state_dict(load_file(out), strict=False)
    assert not unexpected
    params = dict(plain.unet.named_parameters())
    assert all(torch.equal(params[n].detach(), erasure.tensors[n].to(params[n].dtype)) for n in erasure.names)


def test_uce_on_sdxl_edits_the_2048_wide_keys_and_values_as_the_least_squares_solve(tiny_sdxl_folder):
    pipe = load_pipeline(str(tiny_sdxl_folder))
    config = Uce.make_config(preserve="circle,red")
    method = Uce(pipe, ["square"], config, replacement=None)
    assert method.erase_inputs.shape[1] == pipe.unet.config.cross_attention_dim  # both encoders' features
    names = select_parameters(pipe.unet, config.parameters)
    before = {n: p.detach().double().clone() for n, p in pipe.unet.named_parameters() if n in names}
    method.edit(names, progress=False)
    ce, cstar, cp = (t.double() for t in (method.erase_inputs, method.erase_targets, method.preserve_inputs))
    se, sp, lamb = config.erase_scale, config.preserve_scale or max(0.1, 1 / len(method.kept)), config.lamb
    params = dict(pipe.unet.named_parameters())
    for name in names:
        W = before[name]
        # min_W' Σ se||W'ce - W c*||² + Σ sp||W'cp - W cp||² + λ||W' - W||², one least-squares system
        A = torch.cat([se**0.5 * ce, sp**0.5 * cp, lamb**0.5 * torch.eye(W.shape[1], dtype=W.dtype)])
        B = torch.cat([se**0.5 * cstar @ W.T, sp**0.5 * cp @ W.T, lamb**0.5 * W.T])
        expected = torch.linalg.lstsq(A, B).solution.T
        assert torch.allclose(params[name].detach().double(), expected, atol=1e-4), name
        assert torch.allclose(uce_solution(W, ce, cstar, cp, se, sp, lamb), expected, atol=1e-8)


def test_parameter_presets_select_the_right_names_on_the_full_sdxl_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in SDXL_UNET.items() if not k.startswith("_")})
    transformer_blocks = sum(1 for n, _ in unet.named_modules() if n.endswith("attn2"))
    # SDXL: 2 + 2 down attentions of depth 2 and 10, 3 + 3 up attentions of depth 10 and 2, the mid block's 10
    assert transformer_blocks == 2 * 2 + 2 * 10 + 3 * 10 + 3 * 2 + 10 == 70
    attn2 = select_parameters(unet, "attn2")
    assert len(attn2) == 70 * 5 and all(".attn2." in n for n in attn2)  # to_q, to_k, to_v, to_out.0 weight and bias
    assert len(select_parameters(unet, "attn2-kv")) == 70 * 2
    non_attn2 = select_parameters(unet, "non-attn2")
    # ESD-u trains neither cross-attention nor the embeddings of time and of SDXL's pooled text and sizes
    assert not any(".attn2." in n or n.startswith(("time_embedding", "add_embedding", "conv_out", "conv_norm_out")) for n in non_attn2)
    assert any(".attn1." in n for n in non_attn2) and any("resnets" in n for n in non_attn2)


def test_inference_methods_and_evaluate_run_on_sdxl(tiny_sdxl_folder):
    base = load_pipeline(str(tiny_sdxl_folder))
    suites = shapes_task("square", "target,related").suites
    suites = {name: prompts[:2] for name, prompts in suites.items()}
    images = {}
    for method in ("neg-prompt", "sld"):
        cls = get_method(method)
        steered = cls.steer(base, "square", cls.make_config(**({"warmup_steps": 0} if method == "sld" else {})))  # 3 steps: no warm-up
        evaluation = evaluate(base, steered, shapes_task("square"), suites, ShapesDetector(), sampling=Sampling(seeds=[0], steps=3), reference=None, progress=False)
        assert set(evaluation.suites) == {"target", "related"}
        images[method] = evaluation.images["target"]
    assert images["sld"]["base"][0].tobytes() != images["sld"]["erased"][0].tobytes(), "SLD did not steer the image"


def test_sdxl_folders_get_the_same_one_line_errors(tiny_sdxl_folder, tmp_path):
    import json
    import shutil

    from erasekit.model import ModelLoadError

    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl_folder, folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelLoadError, match="component folder 'text_encoder_2/' is missing"):
        load_pipeline(str(folder))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "PixArtSigmaPipeline"}))
    with pytest.raises(ModelLoadError, match="holds a PixArtSigmaPipeline; erasekit supports StableDiffusionPipeline .SD 1.x/2.x., StableDiffusionXLPipeline .SDXL., "
                                             "StableDiffusion3Pipeline .SD3., FluxPipeline .FLUX."):
        load_pipeline(str(folder))


def test_a_single_file_checkpoints_family_shows_in_its_key_names():
    from erasekit.families import family_of_checkpoint

    assert family_of_checkpoint(["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.positional_embedding"]).name == "sdxl"
    assert family_of_checkpoint(["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.final_layer_norm.weight"]).name == "sd"
