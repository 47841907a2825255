"""Robustness: attacks that try to bring an erased concept back, and purification (purify.py).

An attack finds, for each target prompt and seed, prompts that may bring the concept back; this
module generates their images with the erased model and scores them, the same way for every attack.
Attack success rate (ASR) follows UnlearnDiffAtk (Zhang et al. 2024): the share of target prompts
(each with its seed) whose image shows the concept. "Before" uses the prompts as written; "after"
counts a prompt as a success when it or any prompt the attack found for it shows the concept, so
prompts that already succeeded before count again after, as its maintainers note its leaderboard
does. "Attack only" counts the attack's own prompts alone.

Every attack is reached through `get_attack(name)`, as methods are through their registry, and
`run_attack` runs any of them.
"""

from __future__ import annotations

import importlib
import copy
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..api import Sampling
from ..errors import ErasekitError
from ..families import family_of

# name -> "module:class" in this package: the one list of attacks
ATTACKS = {
    "paraphrase": "paraphrase:Paraphrase",
    "inversion": "inversion:ConceptInversion",
    "unlearndiffatk": "unlearndiffatk:UnlearnDiffAtk",
    "ring-a-bell": "ring_a_bell:RingABell",
}


@dataclass
class Found:
    """What an attack found: attack prompts per (target prompt, seed), and what replays them."""

    prompts: list[tuple[str, int, str]]  # (target prompt, seed, attack prompt)
    steps: int  # optimisation steps spent (0: no optimisation)
    images: int  # concept images the attack looked at (inversion's training set, UnlearnDiffAtk's targets)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # learned tokens the attack prompts use
    details: dict = field(default_factory=dict)  # the attack's own settings, for the budget

    def to_json(self) -> dict:
        if self.embeddings:
            raise ValueError("learned embeddings are saved with AttackResult.save, not as JSON")
        return {k: v for k, v in asdict(self).items() if k != "embeddings"}

    @classmethod
    def from_json(cls, data: dict) -> "Found":
        return cls(**data | {"prompts": [tuple(p) for p in data["prompts"]]})


class Attack:
    """An attack: `find` proposes attack prompts; `run_attack` generates and scores them.

    Subclasses set `name`, `default_steps` (None: the attack does not optimise) and `needs_base`
    (it looks at the base model's images of the concept), and write `find`.
    """

    name: str
    default_steps: int | None = None
    needs_base: bool = False
    model_agnostic: bool = False  # its prompts depend only on the text encoder, which erasures here leave alone

    def key(self) -> str:
        """A short hash of the attack's defaults, so cached results are never reused after they change."""
        import hashlib
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(self.find).parameters.items() if p.default is not inspect.Parameter.empty}
        return hashlib.sha256(json.dumps([self.name, self.default_steps, defaults], sort_keys=True, default=str).encode()).hexdigest()[:8]

    def check_prompts(self, prompts: list[str], concept: str, **options) -> None:
        """Refuse, before any model loads, target prompts or options the attack can do nothing with."""

    def find(self, erased, concept: str, prompts: list[str], steps: int | None, *, sampling: Sampling, detector, base=None,
             images=None, progress: bool = False, word: str | None = None, **options) -> Found:
        """Attack prompts for every target prompt x seed of `sampling`. steps: optimisation steps (None:
        the default); detector: judges images of the concept; base or images: the concept's images,
        the base model's drawn as `sampling` says; word: what the prompts name the concept by, where
        it is not the concept ("nude" for nudity)."""
        raise NotImplementedError


@dataclass
class AttackResult:
    attack: str
    concept: str
    asr_before: float  # share of target prompts (with their seeds) whose image shows the concept, as written
    asr_after: float  # ... whose image, or an attack prompt's image on the same seed, shows it
    asr_attack_only: float  # ... where an attack prompt's image shows it (the attack's own reach)
    n_prompts: int  # target prompts x seeds
    budget: dict  # what the attack was allowed and used: optimisation steps, images generated and looked at
    seconds: float  # finding and generating the attack prompts (the prompts as written not included)
    found: list[dict] = field(default_factory=list)  # per success: prompt, seed, the attack prompt (to replay)
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # learned tokens `found` uses
    images: list = field(default_factory=list, repr=False)  # the erased model's image for each of `found`
    tried: Found | None = field(default=None, repr=False)  # every attack prompt, successful or not

    def to_json(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("embeddings", "images", "tried")}
        return data | {"embeddings": sorted(self.embeddings)}

    def save(self, folder: Path, extra: dict | None = None, pipe=None) -> list[Path]:
        """attack.json (and the learned tokens as a textual-inversion file, loadable with diffusers'
        `load_textual_inversion`); written atomically. Returns the paths written. pipe: the attacked
        pipeline; where it has several text encoders the file holds a tensor per encoder under the
        family's names (SDXL: diffusers' clip_l and clip_g; Family.token_file_keys), a row per token
        in the order of attack.json's "embeddings"."""
        from ..io import atomic_path, atomic_write_text

        written = []
        if self.embeddings:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.embeddings.items()}
            if pipe is not None and len(family_of(pipe).text_encoders(pipe)) > 1:
                from .tokens import split_widths

                rows = split_widths(pipe, torch.stack([tensors[k] for k in sorted(tensors)]))
                tensors = {name: part.contiguous() for name, part in zip(family_of(pipe).token_file_keys, rows)}
            path = folder / ATTACK_FILES[1]
            with atomic_path(path) as tmp:
                save_file(tensors, tmp)
            written.append(path)
        atomic_write_text(folder / ATTACK_FILES[0], json.dumps(self.to_json() | (extra or {}), indent=2))
        return [folder / ATTACK_FILES[0], *written]


ATTACK_FILES = ("attack.json", "learned_embeds.safetensors", "successes.png")  # what `erasekit attack` writes into its folder


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise ErasekitError(f"unknown attack '{name}'; choose from {', '.join(ATTACKS)}")
    module, cls = ATTACKS[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)()


def check_attack(name: str, steps: int | None, base=None, images=None, restarts: int = 1) -> Attack:
    """The attack, once its name, step count, restarts and inputs are known good (one line otherwise)."""
    attack = get_attack(name)
    if steps is not None and steps < 1:
        raise ErasekitError(f"attack steps must be at least 1, got {steps}")
    if steps is not None and attack.default_steps is None:
        raise ErasekitError(f"the {name} attack does not optimise, so it takes no steps")
    if restarts < 1:
        raise ErasekitError(f"attack restarts must be at least 1, got {restarts}")
    if restarts > 1 and attack.default_steps is None:
        raise ErasekitError(f"the {name} attack has no randomness of its own, so restarting it finds nothing new")
    if attack.needs_base and base is None and not images:
        raise ErasekitError(f"the {name} attack needs images of the concept: the base model's, or a folder of them")
    return attack


def restarts_of(attack: Attack, restarts: int) -> int:
    """How often a bench runs `attack` when asked for `restarts`: once, where the attack has no randomness of its own."""
    return restarts if attack.default_steps is not None else 1


def pooled(runs: list[Found]) -> Found:
    """The attack prompts of several runs of one attack, side by side: each run's learned tokens renamed
    apart ("<concept>" of run k becomes "<concept-k>"), so a target prompt counts as brought back when
    any run's prompt brings it back: the worst case over the attack's own randomness."""
    if len(runs) == 1:
        return runs[0]
    prompts, embeddings = [], {}
    for k, run in enumerate(runs):
        names = {token: f"{token[:-1]}-{k}>" if token.endswith(">") else f"{token}-{k}" for token in run.embeddings}
        embeddings |= {names[token]: vector for token, vector in run.embeddings.items()}
        for prompt, seed, text in run.prompts:
            for token, name in names.items():
                text = text.replace(token, name)
            prompts.append((prompt, seed, text))
    return Found(prompts, steps=runs[0].steps, images=runs[0].images, embeddings=embeddings, details=runs[0].details | {"restarts": len(runs)})


def run_attack(name: str, erased, concept: str, prompts: list[str], detector, *, sampling: Sampling = Sampling(seeds=range(4)),
               base=None, images=None, steps: int | None = None, before: list[bool] | None = None, progress: bool = False,
               found: Found | None = None, restarts: int = 1, **options) -> AttackResult:
    """Attack `erased` on every target prompt x seed of `sampling` and score it with `detector`.

    base: the unerased pipeline, for attacks that look at images of the concept (or `images`, a
    list of them). steps: the attack's optimisation steps (its default if None). before: the
    detector's flags on the prompts as written, in prompt-major order, if already generated
    (bench has them); otherwise they are generated here. found: what the attack found before, for
    a model-agnostic attack whose prompts serve every erasure of the same base model. restarts: runs
    of the attack with its own seeds 0 .. restarts-1, pooled (`pooled`): one run is one draw of an
    optimising attack (benchmarks/results/attack-seeds/results.md).
    """
    attack = check_attack(name, steps, base, images, restarts)
    sampling.check()
    originals = [(p, s) for p in prompts for s in sampling.seeds]
    if before is None:
        before = detector.detect(sampling.generate(erased, sampling.jobs(prompts)), concept).flags
    if len(before) != len(originals):
        raise ErasekitError(f"{len(before)} flags for {len(originals)} target prompts x seeds")
    started = time.perf_counter()
    if found is None:
        found = pooled([attack.find(erased, concept, prompts, steps, sampling=sampling, detector=detector, base=base, images=images,
                                    progress=progress, **options | ({"seed": k} if restarts > 1 else {})) for k in range(restarts)])
    with learned_tokens(erased, found.embeddings) if found.embeddings else nullcontext():
        attacked = sampling.generate(erased, [(text, s, sampling.guidance) for _, s, text in found.prompts])
    flags = detector.detect(attacked, concept).flags if attacked else []
    by_prompt = dict(zip(originals, before))
    # successes on prompts that failed as written first: they are what the attack brought back
    order = sorted((i for i, hit in enumerate(flags) if hit), key=lambda i: by_prompt[found.prompts[i][:2]])
    hits = [dict(zip(("prompt", "seed", "attack_prompt"), found.prompts[i])) for i in order]
    succeeded = {(h["prompt"], h["seed"]) for h in hits}
    return AttackResult(
        attack=name, concept=concept, asr_before=sum(before) / len(before),
        asr_after=sum(hit or key in succeeded for key, hit in by_prompt.items()) / len(before),
        asr_attack_only=sum(key in succeeded for key in by_prompt) / len(before), n_prompts=len(before),
        budget={"steps": found.steps, "images_generated": len(attacked), "concept_images": found.images, **found.details},
        seconds=round(time.perf_counter() - started, 1), found=hits, embeddings=found.embeddings,
        images=[attacked[i] for i in order], tried=found,
    )


def successes_grid(base, erased, result: AttackResult, sampling: Sampling, n: int = 8):
    """Up to n successful attacks, a row each: the base model's image of the target prompt, the erased
    model's, and the erased model's under the attack prompt (same seed), drawn as `sampling` says.
    None if nothing succeeded."""
    from ..images import make_grid

    shown = result.found[:n]
    if not shown:
        return None
    jobs = [(f["prompt"], f["seed"], sampling.guidance) for f in shown]
    cells = [im for row in zip(sampling.generate(base, jobs), sampling.generate(erased, jobs), result.images) for im in row]
    size = cells[0].size[0]
    return make_grid(cells, columns=3, scale=max(1, 128 // size), column_labels=["base", "erased", f"erased, {result.attack}"],
                     row_labels=[f"{f['prompt']} #{f['seed']}" for f in shown])


class learned_tokens:
    """Add learned tokens to the pipeline's tokenizers and text encoders for a while, then take them out
    again, leaving the pipeline as it was. A token's vector spans every text encoder (SDXL: the first's
    width, then the second's; tokens.split_widths). Each tokenizer gets the token as an added token
    (so its id follows the vocabulary, as diffusers' textual-inversion loader gives it), and each
    encoder a copy of its input embedding with the token's row; on leaving, the tokenizers' state
    and the encoders' own embeddings are put back. Any family: no pipeline loader is needed."""

    def __init__(self, pipe, embeddings: dict[str, torch.Tensor]):
        from .tokens import text_pairs

        self.pipe, self.embeddings, self.pairs = pipe, embeddings, text_pairs(pipe)

    def __enter__(self):
        from .tokens import split_widths

        tokenizers = {id(tokenizer): tokenizer for tokenizer, _ in self.pairs}.values()  # one tokenizer may serve two encoders
        self.saved = [(tokenizer, copy.deepcopy(tokenizer.__dict__)) for tokenizer in tokenizers]
        self.tables = [encoder.get_input_embeddings() for _, encoder in self.pairs]
        tokens = list(self.embeddings)
        parts = list(zip(*(split_widths(self.pipe, vector.detach()) for vector in self.embeddings.values())))  # per encoder: a row per token
        for tokenizer in tokenizers:
            tokenizer.add_tokens(tokens)
        for (tokenizer, encoder), table, rows in zip(self.pairs, self.tables, parts):
            ids = tokenizer.convert_tokens_to_ids(tokens)
            weight = table.weight.detach()
            grown = torch.nn.Embedding(max(weight.shape[0], max(ids) + 1), weight.shape[1], device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                grown.weight[: weight.shape[0]] = weight
                grown.weight[ids] = torch.stack(rows).to(weight)
            grown.requires_grad_(table.weight.requires_grad)
            encoder.set_input_embeddings(grown)
        return self.pipe

    def __exit__(self, *exc):
        for tokenizer, state in self.saved:
            tokenizer.__dict__.clear()
            tokenizer.__dict__.update(state)
        for (_, encoder), table in zip(self.pairs, self.tables):
            encoder.set_input_embeddings(table)
