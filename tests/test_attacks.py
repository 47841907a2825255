"""Attacks: each first reaches its concept on the unerased model, then runs against an erasure, finds
attack prompts for every target prompt and saves what replays them; the math they share is checked by hand."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit import Sampling, erase
from erasekit.api import generate_batch
from erasekit.attacks import Found, get_attack, pooled, run_attack
from erasekit.attacks.ring_a_bell import concept_vector, word_ids
from erasekit.attacks.tokens import decode_words, word_tokens
from erasekit.attacks.unlearndiffatk import nearest_words
from erasekit.errors import ErasekitError
from erasekit.tasks.shapes import ShapesDetector, paraphrases_of, target_prompts
from erasekit.losses import denoising_loss
from erasekit.methods import get_method
from erasekit.sampling import embed


@pytest.fixture(scope="module")
def erased_red(builtin_pipe):
    """The built-in model with red erased by UCE (a closed form: a second)."""
    erased = copy.deepcopy(builtin_pipe)
    erase(erased, method="uce", concepts="red", progress=False)
    return erased


def test_paraphrase_reaches_the_concept_on_the_unerased_model(builtin_pipe):
    result = run_attack("paraphrase", builtin_pipe, "square", target_prompts("square"), ShapesDetector(), sampling=Sampling(seeds=[0]),
                        paraphrases={"square": paraphrases_of("square")})
    assert result.budget["paraphrases"] == {"square": ["box"]} and result.n_prompts == 11
    assert result.asr_attack_only >= 0.9  # "box" alone draws squares: a low ASR on an erasure will mean robustness


def test_paraphrase_against_an_erasure_reports_before_and_after_and_saves_replayable_prompts(erased_red, tmp_path):
    detector = ShapesDetector()
    result = run_attack("paraphrase", erased_red, "red", target_prompts("red"), detector, sampling=Sampling(seeds=[0, 1]), paraphrases={"red": paraphrases_of("red")})
    assert result.budget["paraphrases"] == {"red": ["crimson", "scarlet"]} and result.budget["images_generated"] == 8 * 2 * 2
    assert result.asr_before <= result.asr_after and result.asr_attack_only <= result.asr_after
    assert len({(f["prompt"], f["seed"]) for f in result.found}) == round(result.asr_attack_only * result.n_prompts)
    result.save(tmp_path)
    saved = json.loads((tmp_path / "attack.json").read_text())
    assert saved["asr_after"] == result.asr_after and len(saved["found"]) == len(result.found)
    if result.found:  # replay: the saved prompt and seed give the concept again
        hit = saved["found"][0]
        image = generate_batch(erased_red, [(hit["attack_prompt"], hit["seed"], 7.5)], steps=35)
        assert detector.detect(image, "red").flags == [True]


@pytest.mark.parametrize("name, steps", [("inversion", 5), ("unlearndiffatk", 2), ("ring-a-bell", 3)])
def test_each_attack_finds_prompts_for_every_target_and_saves_them(name, steps, builtin_pipe, erased_red, tmp_path):
    prompts = target_prompts("red")[:3]
    result = run_attack(name, erased_red, "red", prompts, ShapesDetector(), sampling=Sampling(seeds=[0, 1]), base=builtin_pipe, steps=steps)
    assert result.budget["steps"] == steps and result.budget["images_generated"] == 3 * 2
    assert len(result.tried.prompts) == 6 and all(text for _, _, text in result.tried.prompts)
    written = result.save(tmp_path)
    assert json.loads((tmp_path / "attack.json").read_text())["budget"]["steps"] == steps
    assert [p.name for p in written] == ["attack.json"] + (["learned_embeds.safetensors"] if name == "inversion" else [])
    assert len(erased_red.tokenizer) == len(builtin_pipe.tokenizer)  # the learned tokens were taken out again


def test_the_learned_token_replays_through_diffusers_textual_inversion_loader(builtin_pipe, tmp_path):
    """The inversion's images come from its saved token loaded by diffusers' own `load_textual_inversion`."""
    result = run_attack("inversion", builtin_pipe, "square", ["a red square"], ShapesDetector(), sampling=Sampling(seeds=[0]), base=builtin_pipe, steps=3)
    result.save(tmp_path)
    pipe = copy.deepcopy(builtin_pipe)
    pipe.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    replayed = generate_batch(pipe, [("a red <concept>", 0, 7.5)], steps=35)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[-1], result.embeddings["<concept>"])
    assert ShapesDetector().detect(replayed, "square").flags == [bool(result.asr_attack_only)]


def test_an_inference_time_method_is_attacked_through_its_steered_sampling(builtin_pipe, tmp_path):
    """SLD shares the base model's parts: the token attack learns on its UNet (the base's), and every
    image it is judged on, before and under attack, comes from SLD's steered sampling."""
    sld = get_method("sld")
    steered = sld.steer(builtin_pipe, "red", sld.make_config("max"))
    prompts, detector, vocabulary = target_prompts("red")[:3], ShapesDetector(), len(builtin_pipe.tokenizer)
    unsteered = run_attack("paraphrase", builtin_pipe, "red", prompts, detector, sampling=Sampling(seeds=[0, 1]), paraphrases={"red": paraphrases_of("red")})
    result = run_attack("inversion", steered, "red", prompts, detector, sampling=Sampling(seeds=[0, 1]), base=builtin_pipe, steps=3)
    assert result.asr_before < unsteered.asr_before  # SLD's max preset draws less red: the figure is the steered model's
    assert len(result.tried.prompts) == 6 and result.budget["images_generated"] == 6
    assert [p.name for p in result.save(tmp_path)] == ["attack.json", "learned_embeds.safetensors"]
    assert len(builtin_pipe.tokenizer) == vocabulary  # the learned token was taken out of the shared tokenizer again


@pytest.mark.slow
def test_concept_inversion_recovers_the_concept_on_the_unerased_model(builtin_pipe):
    """The sanity check behind every inversion figure: a token learned from squares draws squares in place
    of the word, where the untrained start (one step from "something") does not."""
    prompts, detector = target_prompts("square"), ShapesDetector()
    untrained = run_attack("inversion", builtin_pipe, "square", prompts, detector, sampling=Sampling(seeds=[0, 1]), base=builtin_pipe, steps=1)
    learned = run_attack("inversion", builtin_pipe, "square", prompts, detector, sampling=Sampling(seeds=[0, 1]), base=builtin_pipe)
    assert learned.budget["steps"] == 300
    assert untrained.asr_attack_only <= 0.5
    assert learned.asr_attack_only >= 0.9


def test_ring_a_bell_encodes_word_ids_as_the_pipeline_encodes_their_text(builtin_pipe):
    words = word_tokens(builtin_pipe.tokenizer)
    rows = words[torch.tensor([[3, 17, 40], [5, 5, 60]])]
    hidden = builtin_pipe.text_encoder(word_ids(builtin_pipe.tokenizer, rows))[0]
    texts = [decode_words(builtin_pipe.tokenizer, r) for r in rows]
    assert torch.allclose(hidden, embed(builtin_pipe, texts).hidden, atol=1e-6)


def test_ring_a_bells_concept_vector_is_the_mean_difference_with_and_without_the_word():
    table = {"a red square": 5.0, "a red": 0.0, "a square": 1.0, "red": 4.0, "": 2.0, "a blue circle": 9.0}
    encode = lambda texts: torch.tensor([[[table[t]]] for t in texts])  # noqa: E731
    assert concept_vector(encode, ["a red square", "red", "a blue circle"], "square").item() == 5.0 - 0.0  # only prompts naming it
    assert concept_vector(encode, ["a red square", "red", "a blue circle"], "red").item() == ((5.0 - 1.0) + (4.0 - 2.0)) / 2
    with pytest.raises(ErasekitError, match="no target prompt names 'star'"):
        concept_vector(encode, ["a red square"], "star")


def test_unlearndiffatk_projects_onto_the_nearest_word_by_cosine():
    vocabulary = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    assert nearest_words(torch.tensor([[5.0, 5.0], [0.2, 3.0]]), vocabulary).tolist() == [2, 1]  # by length, [5, 5] would go to [1, 0]


def test_the_denoising_loss_is_the_squared_error_averaged_per_sample():
    prediction = torch.tensor([[[[1.0], [3.0]]], [[[0.5], [0.5]]]])  # (2, 1, 2, 1)
    assert denoising_loss(prediction, torch.zeros_like(prediction)).tolist() == [(1 + 9) / 2, 0.25]


def test_restarts_pool_every_runs_prompts_with_their_learned_tokens_renamed_apart():
    runs = [Found([("a red square", 0, "a red <concept>"), ("square", 0, "<concept>")], steps=3, images=2, embeddings={"<concept>": torch.full((4,), float(k))},
                  details={"lr": 0.1}) for k in range(2)]
    both = pooled(runs)
    assert both.prompts == [("a red square", 0, "a red <concept-0>"), ("square", 0, "<concept-0>"),
                            ("a red square", 0, "a red <concept-1>"), ("square", 0, "<concept-1>")]
    assert both.embeddings["<concept-1>"][0] == 1.0 and both.embeddings["<concept-0>"][0] == 0.0
    assert both.steps == 3 and both.details == {"lr": 0.1, "restarts": 2}  # steps per run, and how many runs
    assert pooled(runs[:1]) is runs[0]


def test_a_restarted_attack_counts_a_prompt_brought_back_by_any_of_its_runs(builtin_pipe, monkeypatch):
    """Restarts are the worst case over the attack's own seeds: run k (seed k) here brings back only target prompt k,
    so with two restarts exactly prompts 0 and 1 count, on every evaluation seed, and no other."""
    from erasekit.attacks.unlearndiffatk import UnlearnDiffAtk

    def find(self, erased, concept, prompts, steps, *, sampling, seed=0, **_):
        return Found([(p, s, "a red square" if i == seed else "a blue square") for i, p in enumerate(prompts) for s in sampling.seeds], steps=1, images=0)

    monkeypatch.setattr(UnlearnDiffAtk, "find", find)
    prompts, sampling = ["red", "a red shape", "a red circle"], Sampling(seeds=[0, 1])
    both = run_attack("unlearndiffatk", builtin_pipe, "red", prompts, ShapesDetector(), sampling=sampling, base=builtin_pipe, before=[False] * 6, restarts=2)
    assert sorted({(f["prompt"], f["seed"]) for f in both.found}) == [("a red shape", 0), ("a red shape", 1), ("red", 0), ("red", 1)]
    assert both.asr_after == both.asr_attack_only == 4 / 6
    assert both.budget["restarts"] == 2 and both.budget["images_generated"] == 2 * 6


def test_attacks_are_refused_by_name_and_budget_before_any_work(builtin_pipe):
    with pytest.raises(ErasekitError, match="unknown attack 'gcg'; choose from paraphrase, inversion, unlearndiffatk, ring-a-bell"):
        get_attack("gcg")
    with pytest.raises(ErasekitError, match="attack steps must be at least 1"):
        run_attack("inversion", builtin_pipe, "square", ["square"], ShapesDetector(), sampling=Sampling(seeds=[0]), base=builtin_pipe, steps=0)
    with pytest.raises(ErasekitError, match="needs images of the concept"):
        run_attack("inversion", builtin_pipe, "square", ["square"], ShapesDetector(), sampling=Sampling(seeds=[0]))
    with pytest.raises(ErasekitError, match="attack restarts must be at least 1"):
        run_attack("inversion", builtin_pipe, "square", ["square"], ShapesDetector(), sampling=Sampling(seeds=[0]), base=builtin_pipe, restarts=0)
    with pytest.raises(ErasekitError, match="the paraphrase attack has no randomness of its own"):
        run_attack("paraphrase", builtin_pipe, "square", ["square"], ShapesDetector(), sampling=Sampling(seeds=[0]), restarts=2)
    from erasekit.evaluation.bench import BenchSettings, check_bench

    with pytest.raises(ErasekitError, match="attack restarts must be at least 1"):
        check_bench(["abo"], ["red"], BenchSettings(attack_restarts=0), {}, ("inversion",))
    check_bench(["abo"], ["red"], BenchSettings(attack_restarts=2), {}, ("paraphrase", "inversion"))  # a bench runs paraphrase once


def test_a_learned_token_spans_both_text_encoders_of_sdxl_and_leaves_them_as_they_were(tiny_sdxl_folder):
    """SDXL conditions on two encoders side by side: a token's vector holds a part for each, each
    part reaches only its own encoder's columns of the conditioning, and the gradient reaches both."""
    from erasekit.attacks import learned_tokens
    from erasekit.attacks.tokens import placeholder, split_widths
    from erasekit import load_pipeline
    from erasekit.families import family_of

    sdxl = load_pipeline(str(tiny_sdxl_folder))  # a tokenizer per encoder, as SDXL ships
    family = family_of(sdxl)
    widths = [e.get_input_embeddings().weight.shape[1] for e in family.text_encoders(sdxl)]
    hidden_widths = [e.config.hidden_size for e in family.text_encoders(sdxl)]
    vocabulary = [len(t) for t in family.tokenizers(sdxl)]
    vector = torch.nn.Parameter(torch.randn(sum(widths)))
    with placeholder(sdxl, "<x>", lambda n: vector.expand(n, -1)):
        first = family.encode(sdxl, ["a <x> square"]).hidden
        first.sum().backward()
        assert all(part.abs().sum() > 0 for part in split_widths(sdxl, vector.grad))
        with torch.no_grad():
            vector[widths[0]:] += 1.0  # change the second encoder's part only
            second = family.encode(sdxl, ["a <x> square"]).hidden
    assert torch.equal(first[..., :hidden_widths[0]], second[..., :hidden_widths[0]])
    assert not torch.allclose(first[..., hidden_widths[0]:], second[..., hidden_widths[0]:])
    with learned_tokens(sdxl, {"<y>": vector.detach()}):
        assert [len(t) for t in family.tokenizers(sdxl)] == [n + 1 for n in vocabulary]
    assert [len(t) for t in family.tokenizers(sdxl)] == vocabulary


def test_bench_with_attacks_adds_asr_columns_and_sanity_rows(tmp_path):
    from erasekit.cli import app

    result = CliRunner().invoke(app, ["bench", "--methods", "uce", "--concepts", "red", "--prompts", "target", "--seeds", "0",
                                      "--attacks", "paraphrase", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "bench.md").read_text()
    assert "ASR paraphrase: before → after" in report
    assert "- red: paraphrase 100% → 100% (its prompts alone 100%)" in report  # the unerased model: crimson and scarlet draw red
    cell = json.loads(next(tmp_path.glob("cells/uce-red-*/attacks/paraphrase-*/attack.json")).read_text())
    assert cell["n_prompts"] == 8 and cell["budget"]["images_generated"] == 16
