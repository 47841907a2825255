"""Erasures that train the text encoders (presets `text-encoder`, `attn2+text-encoder`): what they train,
and that the change travels in the erasure file, the LoRA and the single file, and loads back whole."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from erasekit import ErasekitError, erase, load_pipeline
from erasekit.erasure_file import load_erasure
from erasekit.api import generate_batch
from erasekit.lora import apply_lora
from erasekit.presets import select_parameters
from erasekit.sampling import denoiser_out

from .conftest import build_tiny_sd, build_tiny_sdxl, gentle, pixel_diff


def test_the_text_encoder_preset_names_every_clip_layer_matrix_and_nothing_else():
    """AdvUnlearn's text_encoder_full without norms and biases: q, k, v, out, fc1, fc2 of every layer,
    of both encoders on SDXL; the embeddings, norms and biases stay."""
    for pipe, encoders in ((build_tiny_sd("1"), ["text_encoder"]), (build_tiny_sdxl(), ["text_encoder", "text_encoder_2"])):
        names = select_parameters(pipe.unet, "text-encoder", None, pipe)
        for component in encoders:
            layers = getattr(pipe, component).config.num_hidden_layers
            own = [n for n in names if n.startswith(f"{component}.")]
            assert len(own) == 6 * layers, component
            assert all(n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "fc1.weight", "fc2.weight")) for n in own)
        assert len(names) == sum(6 * getattr(pipe, c).config.num_hidden_layers for c in encoders)  # no UNet parameter
        both = select_parameters(pipe.unet, "attn2+text-encoder", None, pipe)
        assert set(both) == set(names) | set(select_parameters(pipe.unet, "attn2"))


def test_text_encoder_training_is_refused_in_one_line_where_it_does_not_run():
    from erasekit.testing import random_flux_pipeline, random_sd3_pipeline

    with pytest.raises(ErasekitError, match="trains the text encoders, which 'sdd' does not: use abo, esd-x"):
        erase(build_tiny_sd("1"), method="sdd", concepts="square", parameters="text-encoder")
    with pytest.raises(ErasekitError, match="use sample_from='frozen'"):
        erase(build_tiny_sd("1"), method="esd-x", concepts="square", parameters="text-encoder", sample_from="student")
    for pipe in (random_sd3_pipeline(t5=False), random_flux_pipeline()):
        with pytest.raises(ErasekitError, match="trains CLIP text encoders .* not trained yet"):
            erase(pipe, method="esd-x", concepts="square", parameters="text-encoder")


@pytest.mark.parametrize("method", ["esd-x", "abo"])
def test_the_text_encoder_alone_trains_and_the_unet_stays(method):
    pipe = build_tiny_sd("1")
    unet, encoder = copy.deepcopy(pipe.unet.state_dict()), copy.deepcopy(pipe.text_encoder.state_dict())
    erasure = erase(pipe, method=method, concepts="square", parameters="text-encoder", **{**gentle(method), "steps": 3})
    assert all(n.startswith("text_encoder.") for n in erasure.names)
    assert all(torch.equal(unet[k], v) for k, v in pipe.unet.state_dict().items())
    changed = [k for k, v in pipe.text_encoder.state_dict().items() if not torch.equal(encoder[k], v)]
    assert changed and all(f"text_encoder.{k}" in erasure.names for k in changed)
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())  # frozen again after training


def _images(pipe):
    return generate_batch(pipe, [("a red square", 0, 7.5), ("a blue circle", 1, 7.5)], steps=4)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_an_erasure_that_trains_the_text_encoder_saves_reloads_and_exports_with_identical_images(family, tmp_path):
    """The erasure file, the kohya LoRA (lora_te_*, or lora_te1_/lora_te2_ on SDXL) at full rank, merged
    by erasekit and by diffusers' load_lora_weights, and the single file (read by diffusers'
    from_single_file) all give the erased model's images."""
    pipe = build_tiny_sdxl() if family == "sdxl" else build_tiny_sd("1")
    folder = tmp_path / "base"
    pipe.save_pretrained(folder, safe_serialization=True)
    erasure = erase(pipe, method="esd-x", concepts="square", parameters="text-encoder", out=tmp_path / "e.safetensors",
                    **{**gentle("esd-x"), "steps": 3, "lr": 1e-2})  # a change the images show
    erased = _images(pipe)
    assert max(pixel_diff(a, b).max() for a, b in zip(erased, _images(load_pipeline(str(folder))))) > 8  # the erasure changes the images

    def same_images(other):
        return max(pixel_diff(a, b).max() for a, b in zip(erased, _images(other))) <= 1

    reloaded = load_pipeline(str(folder))
    load_erasure(reloaded, tmp_path / "e.safetensors")
    assert same_images(reloaded)

    lora = tmp_path / "l.safetensors"
    erasure.save_lora(lora, rank=64)  # the full rank of every tiny matrix: the LoRA is the change itself
    prefixes = {"sd1": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}[family]
    keys = list(load_file(str(lora)))
    assert all(k.startswith(prefixes) for k in keys) and all(any(k.startswith(p) for k in keys) for p in prefixes)
    ours, theirs = load_pipeline(str(folder)), load_pipeline(str(folder))
    apply_lora(ours, lora)
    theirs.load_lora_weights(str(lora))
    theirs.fuse_lora()
    theirs.unload_lora_weights()
    assert same_images(ours) and same_images(theirs)

    checkpoint = tmp_path / "erased.safetensors"
    erasure.save_checkpoint(checkpoint)
    assert same_images(load_pipeline(str(checkpoint), config=str(folder)))


def test_a_text_encoder_erasure_refuses_a_model_with_the_same_unet_and_another_text_encoder(tmp_path):
    """The base model's hash covers the UNet; an erasure of the text encoders also checks theirs."""
    pipe = build_tiny_sd("1")
    other = copy.deepcopy(pipe)
    erase(pipe, method="esd-x", concepts="square", parameters="text-encoder", out=tmp_path / "e.safetensors", **{**gentle("esd-x"), "steps": 2})
    with torch.no_grad():
        other.text_encoder.get_input_embeddings().weight.mul_(1.1)  # the same UNet, a fine-tuned text encoder
    with pytest.raises(ErasekitError, match="this model's text_encoder is not the one it was made from"):
        load_erasure(other, tmp_path / "e.safetensors")
    load_erasure(build_tiny_sd("1"), tmp_path / "e.safetensors")  # the model it was made from: accepted


@pytest.mark.parametrize("adversary", ["embedding", "token"])
def test_while_the_text_encoder_trains_every_loss_term_reaches_it_the_attacked_one_too(adversary):
    """The concept's prompt and the attacker's conditioning are encoded through the encoder as it is,
    with its gradient (AdvUnlearn's word-embedding attack); once training ends, prompts are read as computed once."""
    from erasekit.methods import get_method

    pipe = build_tiny_sd("1")
    esd = get_method("esd-x")
    names = select_parameters(pipe.unet, "text-encoder", None, pipe)
    method = esd(pipe, ["square"], esd.make_config(**{**{k: v for k, v in gentle("esd-x").items() if k != "progress"}, "parameters": "text-encoder",
                                                           "adversary_weight": 1.0, "adversary": adversary}))
    method.prepare(torch.Generator().manual_seed(0), progress=False)
    params = dict(pipe.text_encoder.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    trained = [params[n.removeprefix("text_encoder.")] for n in names]
    for p in trained:
        p.requires_grad_(True)
    method.train_text(True)
    batch = method.draw(torch.Generator().manual_seed(1))
    assert batch["attacked"].hidden.requires_grad
    at_attack = denoiser_out(method.denoiser, batch["x"], batch["t"], batch["attacked"]).square().sum()
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(at_attack, trained, retain_graph=True))  # the attacked term alone reaches the encoder
    loss, terms = method.loss(batch)
    assert "attacked" in terms and all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, trained))
    method.train_text(False)
    assert not method.concept_emb[[0]].hidden.requires_grad
