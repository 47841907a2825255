"""Stable Diffusion 3 (a joint-attention transformer denoising by flow matching) through the family
layer, on a random tiny SD3 pipeline built from its config (erasekit.testing.random_sd3_pipeline)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from erasekit import ErasekitError, Sampling, erase, generate, load_erasure, load_pipeline
from erasekit.sampling import is_flow, run_sampler, sampling_scheduler, training_noise

from .conftest import red_circles

WEIGHT_METHODS = {  # each with a run small enough for a test, and the layers its default preset means on SD3
    "esd-x": ({}, "attn.add_k_proj"), "esd-u": ({}, "transformer_blocks.0.ff.net"), "abo": ({}, "attn.add_q_proj"),
    "uce": ({}, "context_embedder"), "rece": ({}, "context_embedder"), "ablating": ({"anchor_images": 2}, "context_embedder"), "sdd": ({}, "attn.add_k_proj"),
    "fmn": ({"concept_images": 2}, "attn.add_q_proj"),
    "esd-all": ({}, "proj_out"), "esd-x-strict": ({}, "context_embedder"),
}


@pytest.fixture(scope="module")
def tiny_sd3_folder(tmp_path_factory):
    from erasekit.testing import random_sd3_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd3")
    random_sd3_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def test_flow_matching_noising_and_euler_sampling_agree_with_the_straight_path(tiny_sd3_folder):
    """x_t = (1 − σ) x0 + σ ε with target ε − x0 (timestep 1000 σ); and Euler steps with that exact
    velocity from x_T = ε land on x0, since the path from ε to x0 is straight."""
    pipe = load_pipeline(str(tiny_sd3_folder))
    scheduler = sampling_scheduler(pipe, 5)
    assert is_flow(scheduler) and not is_flow(sampling_scheduler(load_pipeline("builtin"), 5))
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    x_t, t, target = training_noise(scheduler, x0, torch.Generator().manual_seed(2))
    sigma = t / 1000
    noise = (x_t - (1 - sigma[:, None, None, None]) * x0) / sigma[:, None, None, None]
    torch.testing.assert_close(target, noise - x0, atol=1e-4, rtol=1e-4)
    epsilon = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    landed = run_sampler(scheduler, epsilon, lambda x, t, i: epsilon - x0)
    torch.testing.assert_close(landed, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run_sampler(scheduler, epsilon, lambda x, t, i: epsilon - x0), landed)  # a second run starts afresh


def test_erasekits_own_sampler_and_decoder_draw_what_the_sd3_pipeline_draws(tiny_sd3_folder):
    """The bank, SLD and purify sample with run_sampler and decode: the pipeline's own images, seed for
    seed (the decoder undoes the VAE's shift as well as its scale)."""
    from erasekit.guidance import cfg
    from erasekit.sampling import decode, embed, initial_noise, latent_shape, denoiser_out

    from .conftest import pixel_diff

    pipe = load_pipeline(str(tiny_sd3_folder))
    assert pipe.vae.config.shift_factor
    steps, scale = 3, 4.0
    scheduler = sampling_scheduler(pipe, steps)
    x = initial_noise(1, latent_shape(pipe), torch.Generator().manual_seed(5), scheduler)
    c = embed(pipe, ["", "a red circle"])
    assert c.hidden.shape[1] == pipe.tokenizer.model_max_length + 1  # no T5: its 256 zero rows held as one
    ours = decode(pipe, run_sampler(scheduler, x, lambda x, t, i: cfg(*denoiser_out(pipe.transformer, x.expand(2, -1, -1, -1), t, c).chunk(2), scale)))
    theirs = pipe("a red circle", generator=torch.Generator().manual_seed(5), num_inference_steps=steps, guidance_scale=scale).images
    assert pixel_diff(ours[0], theirs[0]).max() <= 1
    generated = generate(pipe, ["a red circle"], n=1, seed=5, steps=steps, guidance=scale, progress=False)  # the pipeline's call, rows as one
    assert pixel_diff(generated[0], theirs[0]).max() <= 1


def test_repeated_last_text_token_computes_the_pipelines_full_sequence():
    """erasekit conditions SD3 without T5 on the pipeline's sequence with its 256 zero rows as one: the
    processor must give the transformer's output on the full sequence, which plain attention does not."""
    from erasekit.attention import RepeatedLastTextToken
    from erasekit.families.sd3 import t5_rows
    from erasekit.testing import random_sd3_pipeline

    pipe = random_sd3_pipeline()
    transformer = pipe.transformer
    with torch.no_grad():  # weights spread wider than their initialisation, so that the text moves the output clearly
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    prompts = ["a red circle", "a blue dotted square"]
    full, _, pooled, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False)
    one_row, _, _, _ = pipe.encode_prompt(prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=1)
    assert full.shape[1] == pipe.tokenizer.model_max_length + t5_rows() and one_row.shape[1] == pipe.tokenizer.model_max_length + 1
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300.0, 800.0])

    def run(sequence):
        with torch.no_grad():
            return transformer(hidden_states=x, timestep=t, encoder_hidden_states=sequence, pooled_projections=pooled).sample

    reference, plain = run(full), run(one_row)
    stock = transformer.attn_processors
    transformer.set_attn_processor(RepeatedLastTextToken(t5_rows()))
    repeated = run(one_row)
    transformer.set_attn_processor(stock)
    assert (plain - reference).abs().max() > 1e-2  # one zero row is not 256 of them
    torch.testing.assert_close(repeated, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_every_weight_method_erases_sd3_saves_and_reloads_into_plain_diffusers(method, tiny_sd3_folder, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from .conftest import erases_saves_and_reloads_into_plain_diffusers

    ours = erases_saves_and_reloads_into_plain_diffusers(tiny_sd3_folder, StableDiffusion3Pipeline, method, *WEIGHT_METHODS[method], tmp_path,
                                                         text_encoder_3=None, tokenizer_3=None)
    assert generate(ours, ["a red circle"], n=1, steps=2, progress=False)[0].size == (16, 16)


def test_what_sd3_cannot_do_yet_is_refused_in_one_line(tiny_sd3_folder, tmp_path, monkeypatch):
    import importlib

    erase_module = importlib.import_module("erasekit.erase")  # the module: `erasekit.erase` is the function

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded the model before refusing")

    with monkeypatch.context() as m:  # the folder names its family: refused before the model loads
        m.setattr(erase_module, "load_pipeline", no_loading)
        with pytest.raises(ErasekitError, match="implicit δ .* joint attention"):
            erase(str(tiny_sd3_folder), method="abo", concepts="circle", steps=1, delta="implicit", progress=False)
    with pytest.raises(ErasekitError, match="implicit δ .* joint attention"):  # a loaded pipeline: its family is at hand
        erase(load_pipeline(str(tiny_sd3_folder)), method="abo", concepts="circle", steps=1, delta="implicit", progress=False)


def test_evaluate_and_every_attack_run_on_sd3(tiny_sd3_folder, tmp_path):
    from erasekit.attacks import ATTACKS, run_attack
    from erasekit.evaluation.evaluate import evaluate
    from erasekit.methods import get_method
    from erasekit.tasks.shapes import ShapesDetector, shapes_task



    base = load_pipeline(str(tiny_sd3_folder))
    steered = get_method("neg-prompt").steer(base, "circle", get_method("neg-prompt").make_config())
    sampling = Sampling(seeds=(0,), steps=2)
    task = shapes_task("circle", "target")
    evaluation = evaluate(base, steered, task, None, ShapesDetector(), sampling, reference=None, progress=False)
    assert evaluation.suites["target"].n_images == len(task.select("target")["target"])
    vocabulary = [len(t) for t in (base.tokenizer, base.tokenizer_2)]
    options, results = {"paraphrase": {"paraphrases": {"circle": ["disc"]}}}, {}
    for name in ATTACKS:
        result = results[name] = run_attack(name, base, "circle", ["a red circle"], ShapesDetector(), sampling=sampling, images=red_circles(2),
                            steps=None if name == "paraphrase" else 1, **options.get(name, {}))
        assert result.n_prompts == 1, name
        assert [len(t) for t in (base.tokenizer, base.tokenizer_2)] == vocabulary, name  # a placeholder token is taken out again
    # inversion learns a token across both CLIP encoders, saved as a tensor per encoder, as diffusers' SDXL files
    assert [v.shape for v in results["inversion"].embeddings.values()] == [(base.text_encoder.config.hidden_size + base.text_encoder_2.config.hidden_size,)]
    results["inversion"].save(tmp_path, pipe=base)
    assert set(load_file(str(tmp_path / "learned_embeds.safetensors"))) == {"clip_l", "clip_g"}


def test_an_erased_sd3_round_trips_through_its_original_single_file_layout(tiny_sd3_folder, tmp_path):
    """The MMDiT's original names (q, k, v fused; the final and last context modulations stored shift
    first), both CLIPs under text_encoders.*: diffusers' from_single_file reads every weight back equal."""
    from typer.testing import CliRunner

    from erasekit.cli import app
    from erasekit.single_file import checkpoint_tensors

    path = tmp_path / "erased.safetensors"
    result = CliRunner().invoke(app, ["erase", "-c", "circle", "--method", "esd-x", "--steps", "2", "--model", str(tiny_sd3_folder),
                                      "--out", str(tmp_path / "e.safetensors"), "--save-checkpoint", str(path)])
    assert result.exit_code == 0, result.output
    erased = load_pipeline(str(tiny_sd3_folder))
    load_erasure(erased, tmp_path / "e.safetensors")
    keys = set(checkpoint_tensors(erased))
    assert {"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", "model.diffusion_model.final_layer.adaLN_modulation.1.weight",
            "model.diffusion_model.y_embedder.mlp.0.weight", "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight"} <= keys
    back = load_pipeline(str(path), config=str(tiny_sd3_folder))
    for component in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(erased, component).state_dict(), getattr(back, component).state_dict()
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine), component


def test_the_cli_writes_an_sd3_lora_in_diffusers_keys_that_load_lora_weights_reads(tiny_sd3_folder, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from typer.testing import CliRunner

    from erasekit.cli import app
    from erasekit.lora import apply_lora

    lora = tmp_path / "l.safetensors"
    result = CliRunner().invoke(app, ["erase", "-c", "circle", "--method", "uce", "--model", str(tiny_sd3_folder),
                                      "--out", str(tmp_path / "e.safetensors"), "--save-lora", str(lora)])
    assert result.exit_code == 0 and "peft LoRA" in result.output, result.output
    assert all(k.startswith("transformer.context_embedder.lora_") for k in load_file(str(lora)))  # UCE's layer on SD3
    theirs = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_folder, text_encoder_3=None, tokenizer_3=None)
    theirs.load_lora_weights(str(lora))
    theirs.fuse_lora()
    theirs.unload_lora_weights()  # the fused weights stay, under their own names
    ours = load_pipeline(str(tiny_sd3_folder))
    apply_lora(ours, lora)
    erased = load_pipeline(str(tiny_sd3_folder))
    load_erasure(erased, tmp_path / "e.safetensors")
    weight = "context_embedder.weight"
    mine, plain, full = (dict(p.transformer.named_parameters())[weight] for p in (ours, theirs, erased))
    torch.testing.assert_close(plain, mine)
    assert (mine - full).norm() <= 0.011 * (full - dict(load_pipeline(str(tiny_sd3_folder)).transformer.named_parameters())[weight]).norm()


def test_flow_inversion_then_sampling_gives_the_latents_back_closer_with_more_steps(tiny_sd3_folder):
    """purify's inversion on SD3 runs the flow ODE backwards by Euler steps; sampling forward from
    there, all the way or from half-way, returns the latents, with an error that shrinks as the
    steps grow (first order), as DDIM inversion's does on the UNet (tests/test_purify.py)."""

    from erasekit.attacks.purify import _guided, invert, purify
    from erasekit.families import denoiser_of
    from erasekit.sampling import embed, encode_images

    pipe = load_pipeline(str(tiny_sd3_folder))
    images = red_circles(2)
    latents, conditioning = encode_images(pipe, images), embed(pipe, ["", ""])
    guided = _guided(denoiser_of(pipe), conditioning, 1.0)

    def error(steps, stop):
        noisy = invert(pipe, latents, conditioning, steps, stop)
        return (run_sampler(sampling_scheduler(pipe, steps), noisy, guided, start=steps - stop) - latents).abs().mean().item()

    for stop_share in (1.0, 0.5):
        coarse, fine = error(10, round(10 * stop_share)), error(100, round(100 * stop_share))
        assert fine < coarse / 4 and fine < 0.15 * latents.abs().mean().item(), (stop_share, coarse, fine)
    purified = purify(pipe, pipe, images, steps=10, strength=0.5)
    assert [im.size for im in purified.images] == [(16, 16)] * 2


def test_with_t5_uce_aligns_each_segment_the_token_attacks_reach_t5_and_the_single_file_keeps_it(tmp_path):
    """SD3's sequence is CLIP's 77 tokens, then T5's: UCE aligns the concept's last word and what follows
    within each (the CLIP and T5 tokenizers count differently); a learned token gets a row in all three
    encoders; the single file holds T5 under text_encoders.t5xxl, and reads back."""
    import copy

    from erasekit.attacks import run_attack
    from erasekit.methods import get_method
    from erasekit.sampling import embed
    from erasekit.single_file import save_checkpoint
    from erasekit.tasks.shapes import ShapesDetector
    from erasekit.testing import random_sd3_pipeline


    pipe = random_sd3_pipeline(t5=True)
    folder = tmp_path / "sd3-t5"
    pipe.save_pretrained(folder, safe_serialization=True)
    hidden = embed(pipe, ["circle", ""]).hidden
    uce = get_method("uce")(pipe, ["circle"], get_method("uce").make_config())
    # CLIP: BOS circle EOS against BOS EOS, so "circle" (1) meets "" at 0; T5: circle EOS against EOS, both from 77
    torch.testing.assert_close(uce.erase_inputs, torch.cat([hidden[0, 1:77], hidden[0, 77:]]).float())
    torch.testing.assert_close(uce.erase_targets, torch.cat([hidden[1, 0:76], hidden[1, 77:]]).float())
    edited = copy.deepcopy(pipe)
    erase(edited, method="uce", concepts="circle", progress=False)
    words, empty = hidden[0, [1, 77]], hidden[1, [0, 77]]  # the word in each segment, and where "" puts it
    before, after = pipe.transformer.context_embedder, edited.transformer.context_embedder
    with torch.no_grad():
        gap = lambda layer: (layer(words) - before(empty)).norm().item()  # noqa: E731
        assert gap(after) < 0.2 * gap(before)
    result = run_attack("inversion", pipe, "circle", ["a red circle"], ShapesDetector(), sampling=Sampling(seeds=(0,), steps=2), images=red_circles(2), steps=1)
    result.save(tmp_path, pipe=pipe)
    widths = [pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size, pipe.text_encoder_3.config.d_model]
    assert {k: v.shape[1] for k, v in load_file(str(tmp_path / "learned_embeds.safetensors")).items()} == dict(zip(("clip_l", "clip_g", "t5"), widths))
    path = tmp_path / "model.safetensors"
    save_checkpoint(edited, path)
    back = load_pipeline(str(path), config=str(folder))
    for component in ("transformer", "text_encoder_3"):
        mine, theirs = getattr(edited, component).state_dict(), getattr(back, component).state_dict()
        assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine), component
