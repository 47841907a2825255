"""FLUX (dual- and single-stream transformer, flow matching, guidance embedded) through the family layer,
on a random tiny FluxPipeline built from its config (erasekit.testing.random_flux_pipeline)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from erasekit import ErasekitError, Sampling, erase, generate, load_pipeline
from erasekit.sampling import decode, embed, initial_noise, latent_shape, run_sampler, sampling_scheduler, denoiser_out

from .conftest import pixel_diff, red_circles

WEIGHT_METHODS = {  # each with a run small enough for a test, and the layers its default preset means on FLUX
    "esd-x": ({}, "transformer_blocks.0.attn.add_k_proj"), "esd-u": ({}, "single_transformer_blocks.0.attn.to_q"),
    "abo": ({}, "transformer_blocks.0.attn.add_q_proj"), "uce": ({}, "context_embedder"), "rece": ({}, "context_embedder"),
    "ablating": ({"anchor_images": 2}, "context_embedder"), "sdd": ({}, "attn.add_k_proj"), "fmn": ({"concept_images": 2}, "attn.add_q_proj"),
    "esd-all": ({}, "proj_out"), "esd-x-strict": ({}, "context_embedder"),
}


@pytest.fixture(scope="module")
def tiny_flux_folder(tmp_path_factory):
    from erasekit.testing import random_flux_pipeline

    folder = tmp_path_factory.mktemp("tiny-flux")
    random_flux_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def test_erasekits_own_sampler_draws_what_the_flux_pipeline_draws(tiny_flux_folder):
    """Packed 2 x 2 patches, position ids, σ as the timestep, the shifted schedule and the VAE's shift:
    erasekit's sampler and decoder give FluxPipeline's images seed for seed, at the embedded guidance
    erasekit's own calls use (flux.TRAINING_GUIDANCE), and the pipeline's size is the model's."""
    from erasekit.families.flux import TRAINING_GUIDANCE

    pipe = load_pipeline(str(tiny_flux_folder))
    assert latent_shape(pipe) == (4, 8, 8) and pipe.transformer.config.in_channels == 16
    steps = 3
    scheduler = sampling_scheduler(pipe, steps)
    x = initial_noise(1, latent_shape(pipe), torch.Generator().manual_seed(5), scheduler)
    c = embed(pipe, ["a red circle"])
    ours = decode(pipe, run_sampler(scheduler, x, lambda x, t, i: denoiser_out(pipe.transformer, x, t, c)))
    theirs = generate(pipe, ["a red circle"], n=1, steps=steps, guidance=TRAINING_GUIDANCE, seed=5, progress=False)
    assert theirs[0].size == (16, 16) and pixel_diff(ours[0], theirs[0]).max() <= 1


@pytest.mark.parametrize("method", WEIGHT_METHODS)
def test_every_weight_method_erases_flux_saves_and_reloads_into_plain_diffusers(method, tiny_flux_folder, tmp_path):
    from diffusers import FluxPipeline

    from .conftest import erases_saves_and_reloads_into_plain_diffusers

    erases_saves_and_reloads_into_plain_diffusers(tiny_flux_folder, FluxPipeline, method, *WEIGHT_METHODS[method], tmp_path)


def test_uce_on_flux_aligns_t5_tokens_and_maps_the_concept_onto_the_empty_prompt(tiny_flux_folder):
    """FLUX's sequence is T5's (words..., EOS: no BOS), so UCE's last-word alignment reads T5's tokenizer;
    the edited context embedder sends the concept's tokens where the empty prompt's went."""
    base = load_pipeline(str(tiny_flux_folder))
    edited = copy.deepcopy(base)
    erase(edited, method="uce", concepts="circle", progress=False)
    hidden = embed(base, ["a red circle", ""]).hidden
    concept, empty = hidden[0, 2:], hidden[1, : hidden.shape[1] - 2]  # "circle" onwards, and "" from its EOS on
    before, after = base.transformer.context_embedder, edited.transformer.context_embedder
    with torch.no_grad():
        gap = lambda layer: (layer(concept) - before(empty)).norm().item()  # noqa: E731
        assert gap(after) < 0.2 * gap(before)


def test_an_flux_lora_loads_with_load_lora_weights_as_erasekits_own_loader_merges_it(tiny_flux_folder, tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app
    from erasekit.lora import apply_lora

    lora = tmp_path / "l.safetensors"
    result = CliRunner().invoke(app, ["erase", "-c", "circle", "--method", "esd-x", "--steps", "2", "--model", str(tiny_flux_folder),
                                      "--out", str(tmp_path / "e.safetensors"), "--save-lora", str(lora), "--lora-rank", "4"])
    assert result.exit_code == 0 and "peft LoRA" in result.output, result.output
    assert all(k.startswith("transformer.transformer_blocks.0.attn.add_") for k in load_file(str(lora)))
    theirs, ours = load_pipeline(str(tiny_flux_folder)), load_pipeline(str(tiny_flux_folder))
    theirs.load_lora_weights(str(lora))
    apply_lora(ours, lora)
    x, c = torch.randn(1, *latent_shape(ours), generator=torch.Generator().manual_seed(0)), embed(ours, ["a red circle"])
    with torch.no_grad():
        torch.testing.assert_close(denoiser_out(theirs.transformer, x, 500, c), denoiser_out(ours.transformer, x, 500, c), atol=1e-5, rtol=1e-4)


def test_evaluate_every_attack_and_purify_run_on_flux_and_what_it_lacks_is_refused(tiny_flux_folder):
    from erasekit.attacks import ATTACKS, run_attack
    from erasekit.attacks.purify import purify
    from erasekit.evaluation.evaluate import evaluate
    from erasekit.methods import get_method
    from erasekit.tasks.shapes import ShapesDetector, shapes_task

    base = load_pipeline(str(tiny_flux_folder))
    sampling = Sampling(seeds=(0,), steps=2, guidance=3.5)
    task = shapes_task("circle", "target")
    for steer in ("neg-prompt", "sld"):
        steered = get_method(steer).steer(base, "circle", get_method(steer).make_config())
        evaluation = evaluate(base, steered, task, None, ShapesDetector(), sampling, reference=None, progress=False)
        assert evaluation.suites["target"].n_images == len(task.select("target")["target"]), steer
    options = {"paraphrase": {"paraphrases": {"circle": ["disc"]}}}
    for name in ATTACKS:
        result = run_attack(name, base, "circle", ["a red circle"], ShapesDetector(), sampling=sampling, images=red_circles(2),
                            steps=None if name == "paraphrase" else 1, **options.get(name, {}))
        assert result.n_prompts == 1, name
    with pytest.raises(ErasekitError, match="implicit δ .* joint attention"):
        erase(str(tiny_flux_folder), method="abo", concepts="circle", steps=1, delta="implicit", progress=False)
    purified = purify(base, base, red_circles(2), steps=4, strength=0.5)
    assert [im.size for im in purified.images] == [(16, 16)] * 2


def test_a_learned_token_reaches_t5s_sequence_and_clips_pooled_embedding_and_is_taken_out_after(tiny_flux_folder, tmp_path):
    """The token attacks add a token to both tokenizers and a row to both encoders' embeddings (T5's
    SentencePiece as CLIP's BPE), and put everything back on leaving."""
    from erasekit.attacks import AttackResult, learned_tokens

    pipe = load_pipeline(str(tiny_flux_folder))
    widths = [pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.d_model]
    tables, sizes = [e.get_input_embeddings() for e in (pipe.text_encoder, pipe.text_encoder_2)], [len(t) for t in (pipe.tokenizer, pipe.tokenizer_2)]
    plain = embed(pipe, ["a red <thing>"])
    vectors = {"<thing>": torch.randn(sum(widths), generator=torch.Generator().manual_seed(0))}
    with learned_tokens(pipe, vectors):
        assert pipe.tokenizer_2.convert_tokens_to_ids("<thing>") == sizes[1] and len(pipe.tokenizer_2("a red <thing>").input_ids) == 4
        learned = embed(pipe, ["a red <thing>"])
        again = embed(pipe, ["a red <thing>"])
        torch.testing.assert_close(pipe.text_encoder_2.get_input_embeddings().weight[sizes[1]], vectors["<thing>"][widths[0]:])
    assert not torch.allclose(plain.hidden, learned.hidden) and not torch.allclose(plain.added["pooled_projections"], learned.added["pooled_projections"])
    torch.testing.assert_close(learned.hidden, again.hidden)
    assert [len(t) for t in (pipe.tokenizer, pipe.tokenizer_2)] == sizes and "<thing>" not in pipe.tokenizer_2.get_vocab()
    assert all(e.get_input_embeddings() is t for e, t in zip((pipe.text_encoder, pipe.text_encoder_2), tables))
    torch.testing.assert_close(embed(pipe, ["a red <thing>"]).hidden, plain.hidden)
    result = AttackResult(attack="inversion", concept="circle", asr_before=0.0, asr_after=0.0, asr_attack_only=0.0, n_prompts=1, budget={},
                          seconds=0.0, embeddings=vectors)
    result.save(tmp_path, pipe=pipe)
    assert {k: v.shape for k, v in load_file(str(tmp_path / "learned_embeds.safetensors")).items()} == {"clip_l": (1, widths[0]), "t5": (1, widths[1])}


def test_a_negative_prompt_steers_flux_through_true_cfg(tiny_flux_folder):
    """FluxPipeline ignores a negative prompt unless true CFG is on: generate turns it on, so the
    negative prompt changes the image."""
    pipe = load_pipeline(str(tiny_flux_folder))
    plain, negative = (generate(pipe, ["a red circle"], n=1, steps=2, guidance=3.5, negative_prompt=n, progress=False)[0] for n in (None, "circle"))
    assert pixel_diff(plain, negative).max() > 0


def test_the_cli_draws_flux_at_its_own_default_guidance(tiny_flux_folder, tmp_path):
    """FLUX.1-dev's guidance is distilled into the model (an input, default 3.5), not SD's CFG at 7.5."""
    from PIL import Image
    from typer.testing import CliRunner

    from erasekit.cli import app

    result = CliRunner().invoke(app, ["generate", "-p", "a red circle", "--model", str(tiny_flux_folder), "--n", "1", "--steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    drawn = Image.open(tmp_path / "a-red-circle_0.png")
    pipe = load_pipeline(str(tiny_flux_folder))
    at = {g: generate(pipe, ["a red circle"], n=1, steps=2, guidance=g, progress=False)[0] for g in (3.5, 7.5)}
    assert pixel_diff(drawn, at[3.5]).max() == 0 and pixel_diff(drawn, at[7.5]).max() > 0


@pytest.mark.slow
def test_an_erased_flux_transformer_round_trips_through_black_forest_labs_single_file_layout(tmp_path):
    """FLUX.1's own single files hold the transformer alone, in BFL's names (q, k, v fused; in single
    blocks with the MLP's input too; RMS norms' "scale"; the final modulation shift first). diffusers'
    reader assumes FLUX.1's width, so this transformer is that wide, one block of each kind deep."""
    from erasekit.single_file import checkpoint_tensors
    from erasekit.testing import FLUX_SCALED_DOWN, random_flux_pipeline

    full_width = {**FLUX_SCALED_DOWN, "attention_head_dim": 128, "num_attention_heads": 24, "axes_dims_rope": (16, 56, 56)}
    pipe = random_flux_pipeline(full_width).to(torch.bfloat16)
    folder = tmp_path / "base"
    pipe.save_pretrained(folder, safe_serialization=True)
    erasure = erase(pipe, method="uce", concepts="circle", progress=False)
    keys = set(checkpoint_tensors(pipe))
    assert {"double_blocks.0.img_attn.qkv.weight", "double_blocks.0.txt_attn.norm.query_norm.scale", "single_blocks.0.linear1.weight",
            "txt_in.weight", "guidance_in.in_layer.weight", "final_layer.adaLN_modulation.1.weight"} <= keys
    path = tmp_path / "flux-erased.safetensors"
    erasure.save_checkpoint(path)
    back = load_pipeline(str(path), config=str(folder), dtype="bf16")
    mine, theirs = pipe.transformer.state_dict(), back.transformer.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not torch.equal(mine["context_embedder.weight"], erasure.base["context_embedder.weight"].to(torch.bfloat16))  # the erasure is in it


@pytest.mark.parametrize("family", ["sd3", "sd3-without-t5", "flux"])
def test_the_joint_attention_probe_is_the_share_of_the_layers_output_that_the_text_values_make(family):
    """FMN's probe recomputes joint attention's softmax from the layer's own projections (SD3: image
    first; FLUX: text first, rotated by position; SD3 without T5: its last text row weighing 256). Its
    text columns times the text values must be exactly what the text adds to the layer's image
    output: checked by running the layer with the text values zeroed."""
    from contextlib import nullcontext

    from erasekit.attention import JointAttentionProbe, repeated_last_text_token
    from erasekit.families import denoiser_of
    from erasekit.families.sd3 import t5_rows
    from erasekit.testing import random_flux_pipeline, random_sd3_pipeline

    pipe = random_sd3_pipeline(t5=family == "sd3") if family.startswith("sd3") else random_flux_pipeline()
    rows_as_one = repeated_last_text_token(pipe.transformer, t5_rows()) if family == "sd3-without-t5" else nullcontext()
    attn = next(m for m in denoiser_of(pipe).modules() if getattr(m, "add_k_proj", None) is not None)
    seen = {}
    handle = attn.register_forward_hook(lambda m, args, kwargs, out: seen.update(args=args, kwargs=kwargs, out=out), with_kwargs=True)
    with torch.no_grad():
        denoiser_out(denoiser_of(pipe), torch.randn(1, *latent_shape(pipe), generator=torch.Generator().manual_seed(0)), 500, embed(pipe, ["a red circle"]))
    handle.remove()
    text = seen["kwargs"]["encoder_hidden_states"]
    probe = JointAttentionProbe(torch.ones(1, text.shape[1]))
    with torch.no_grad(), rows_as_one:
        probe(attn, seen["args"], seen["kwargs"], seen["out"])
        values = attn.add_v_proj(text).unflatten(-1, (attn.heads, -1))[0]  # (text tokens, heads, head_dim)
        added = torch.einsum("hqk,khd->qhd", probe.maps[0], values).flatten(1) @ attn.to_out[0].weight.T
        attn.add_v_proj.weight.zero_(), attn.add_v_proj.bias.zero_()
        without = attn(*seen["args"], **seen["kwargs"])
    image_out = seen["out"][0]
    torch.testing.assert_close((image_out - without[0])[0], added, atol=1e-5, rtol=1e-4)
    assert added.abs().max() > 0.1  # the text does reach the image
