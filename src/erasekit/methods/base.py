"""What methods share: settings, presets, and one base class per way of erasing.

A trained method says which parameters train (a preset of presets.py), how a training batch is
drawn (from a teacher bank of trajectories or of images, or by sampling as its paper does), and
which loss applies to it; the one training loop in train.py does the rest. A closed-form method
computes new weights at once; an inference-time method steers sampling. The registry of every
method is methods/__init__.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..adversary import Adversary, TokenAdversary
from ..bank import build_bank, sample_latents
from ..errors import ErasekitError, ErasekitWarning
from ..sampling import embed, latent_shape, sampling_scheduler
from ..families import denoiser_of, family_of


# The fewest trajectories per training draw that kept AbO's erasure and preservation inside the seed
# spread of Algorithm 1's fresh trajectory per draw (benchmarks/results/abo-fast-vs-reference/results.md).
DRAWS_PER_TRAJECTORY = 25
# Early stopping's held-out trajectories are drawn with the run's seed plus this.
HELD_OUT_SEED = 1_000_003


@dataclass
class MethodConfig:
    """Settings every method has. Subclasses add their own and set their defaults."""

    steps: int = 200
    lr: float = 1e-4
    optimizer: str = "adamw"  # "adam" or "adamw"
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = 1
    parameters: str = "attn2"  # a preset of erasekit.presets.PRESETS
    bank_trajectories: int | None = 32  # fast path: trajectories in the teacher bank (0 = not used, None = bank_size's rule)

    def validate(self) -> None:
        if self.steps <= 0:
            raise ErasekitError(f"steps must be positive, got {self.steps}")
        if not self.lr > 0:
            raise ErasekitError(f"learning rate must be positive, got {self.lr}")
        if self.batch_size <= 0:
            raise ErasekitError(f"batch size must be positive, got {self.batch_size}")
        if self.optimizer not in ("adam", "adamw"):
            raise ErasekitError(f"optimizer must be 'adam' or 'adamw', got '{self.optimizer}'")
        if self.bank_trajectories is not None and self.bank_trajectories < 0:
            raise ErasekitError(f"bank_trajectories must be >= 0, got {self.bank_trajectories}")
        for name in ("ddim_steps", "anchor_images", "concept_images"):  # counts some methods have
            if getattr(self, name, 1) < 1:
                raise ErasekitError(f"{name} must be positive, got {getattr(self, name)}")

    def bank_size(self, n_concepts: int = 1) -> int:
        """Trajectories in the teacher bank: as set, or (None) one per DRAWS_PER_TRAJECTORY draws of
        training; never fewer than the concepts (`one_each`).

        Resolved when the bank is built, not stored: a run resumed with more steps keeps its identity
        (and its bank, which the checkpoint holds). Every method that builds a bank asks here, so an
        empty one is refused here for all of them.
        """
        if self.bank_trajectories == 0:
            raise ErasekitError(f"a teacher bank needs trajectories: bank_trajectories must be >= 1 (or null: one per {DRAWS_PER_TRAJECTORY} draws)")
        if self.bank_trajectories is not None:
            return one_each(self.bank_trajectories, n_concepts, "trajectories")
        return one_each(math.ceil(self.steps * self.batch_size / DRAWS_PER_TRAJECTORY), n_concepts, "trajectories")


@dataclass
class BankConfig(MethodConfig):
    """Settings of a method that trains on a teacher bank, which may train adversarially (adversary.py)."""

    # Off by default: on the built-in model no radius beat AbO's defaults beyond concept inversion's own
    # spread (benchmarks/results/tuning-adversary/results.md); 0.3 cost SSIM most. The token attacker
    # did not hold circle either, and cost square's neighbours (benchmarks/results/tuning-adversary-token/results.md).
    adversary_weight: float = 0.0  # weight of the concept loss at the attacked conditioning (0: no adversarial training)
    adversary: str = "embedding"  # where the attacker moves: "embedding" (a ball around e_c) or "token" (a learned input token)
    adversary_radius: float = 0.1  # embedding: ρ, how far the attacker may move a concept's embedding, in units of its norm
    adversary_step: float = 0.1  # embedding: the attacker's step, as a fraction of ρ
    adversary_lr: float = 5e-3  # token: the attacker's Adam learning rate (concept inversion's)
    # Early stopping (train.py, `plateaued`): every `check_every` steps the erasing loss is taken on
    # trajectories training never draws, and training stops once it falls by less than `min_gain` of
    # its best; `steps` is then the most it trains.
    check_every: int = 0  # 0: no check, train exactly `steps`
    min_gain: float = 0.05
    held_out_trajectories: int = 16

    def validate(self) -> None:
        super().validate()
        if self.check_every < 0:
            raise ErasekitError(f"check_every must be >= 0 (0: train every step asked), got {self.check_every}")
        if not 0 < self.min_gain < 1:
            raise ErasekitError(f"min_gain must be in (0, 1), got {self.min_gain}")
        if self.held_out_trajectories < 1:
            raise ErasekitError(f"held_out_trajectories must be >= 1, got {self.held_out_trajectories}")
        if self.adversary_weight < 0:
            raise ErasekitError(f"adversary_weight must be >= 0, got {self.adversary_weight}")
        if self.adversary not in ("embedding", "token"):
            raise ErasekitError(f"adversary must be 'embedding' or 'token', got '{self.adversary}'")
        if not self.adversary_lr > 0:
            raise ErasekitError(f"adversary_lr must be positive, got {self.adversary_lr}")
        if not self.adversary_radius > 0:
            raise ErasekitError(f"adversary_radius must be positive, got {self.adversary_radius}")
        if not 0 < self.adversary_step <= 1:
            raise ErasekitError(f"adversary_step must be in (0, 1], got {self.adversary_step}")


def replacements_for(concepts: list[str], replacement: str | dict[str, str] | None) -> dict[str, str | None]:
    """Each concept's replacement: one for all (a string), or per concept (a dict; a concept it leaves out has none)."""
    if not isinstance(replacement, dict):
        return {c: replacement for c in concepts}
    unknown = sorted(set(replacement) - set(concepts))
    if unknown:
        raise ErasekitError(f"a replacement is given for '{unknown[0]}', which is not among the concepts erased ({', '.join(concepts)})")
    return {c: replacement.get(c) for c in concepts}


def kept_concepts(preserve: str) -> list[str]:
    """The concepts a `preserve` setting names: comma-separated, spaces around each ignored."""
    return [c.strip() for c in preserve.split(",") if c.strip()]


def needs_cross_attention(family, what: str) -> None:
    """Refuse, in one line, a method that reads or reweights cross-attention maps on a family without them."""
    if not family.cross_attention:
        raise ErasekitError(f"{what} works on the cross-attention maps of a UNet; {family.label}'s joint attention has none "
                            "that erasekit reweights yet: use esd-x, esd-u, abo (explicit δ), uce, sdd, ablating or fmn")


def one_each(count: int, n_concepts: int, what: str) -> int:
    """A bank's size grown to the number of concepts where it is smaller, with a warning: bank.py
    gives entry k to concept k mod n, so a concept past the bank's size would never train."""
    if count >= n_concepts:
        return count
    warnings.warn(f"{n_concepts} concepts but a bank of {count} {what}: grown to {n_concepts}, one per concept, "
                  "so that every concept trains", ErasekitWarning, stacklevel=3)
    return n_concepts


class Method:
    """Every method: a name, its settings (`Config`, with defaults) and named presets of them.

    What a method does is one of two things, each a base class below: it edits the weights
    (`erase` runs it: TrainedMethod and its two banks, ClosedFormMethod), or it steers sampling
    (InferenceMethod). `sampler` gives either kind's erased model to sample from, so the CLI and
    the evaluation never ask which kind a method is.
    """

    name: str = ""
    Config: type = MethodConfig
    presets: dict[str, dict] = {}
    trains_text_encoder: bool = False  # whether the text-encoder presets (presets.TEXT_PRESETS) train with it: every prompt it reads in training is a Prompts

    @classmethod
    def make_config(cls, preset: str | None = None, **overrides):
        """Defaults, then a named preset (e.g. the paper's), then explicit overrides (None = keep)."""
        values = {}
        if preset is not None:
            if preset not in cls.presets:
                raise ErasekitError(f"method '{cls.name}' has no preset '{preset}'; presets: {', '.join(cls.presets) or 'none'}")
            values.update(cls.presets[preset])
        unknown = [k for k, v in overrides.items() if v is not None and not cls.has_setting(k)]
        if unknown:
            raise ErasekitError(f"method '{cls.name}' has no setting {', '.join(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**{k: _typed(cls.name, k, v, types[k]) for k, v in values.items()})
        config.validate()
        return config

    @classmethod
    def has_setting(cls, key: str) -> bool:
        return key in {f.name for f in dataclasses.fields(cls.Config)}

    @classmethod
    def accepts(cls, key: str, value) -> bool:
        """Whether a bench setting `key=value` applies to this method: one of its settings, or one of its presets."""
        return cls.has_setting(key) or (key == "preset" and value in cls.presets)

    @classmethod
    def check_erasable(cls) -> None:
        """erase() asks before any work: can this method be written into weights?"""

    @classmethod
    def steering(cls, preset: str | None = None):
        """The settings to steer with (`steer`), refused before any work unless the method acts at inference time."""
        raise ErasekitError(f"'{cls.name}' changes the model's weights: erase with it first (erasekit erase --method {cls.name} ...) and pass its file with --erasure")

    @classmethod
    def steer(cls, pipe, concept: str, config):
        """A sampler of `pipe` that avoids `concept` at inference time (InferenceMethod)."""
        cls.steering()

    @classmethod
    def sampler(cls, base, load_model: Callable[[], object], concept: str, settings: dict, seed: int, out: Path, progress: bool):
        """The erased model to sample from: `base` steered, or a model from `load_model()` erased (file `out`)."""
        raise NotImplementedError


class Prompts:
    """A method's prompts and the conditioning they give: computed once from the frozen text encoders,
    or, while the text encoders train (`live`), encoded afresh with gradient at every read, so that
    the loss reaches them. Indexed like a Conditioning by prompt (an int, a list or a tensor of indices)."""

    def __init__(self, pipe, prompts: list[str]):
        self.pipe, self.prompts, self.live = pipe, list(prompts), False
        self.frozen = embed(pipe, self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def hidden(self) -> torch.Tensor:
        """The prompts' hidden states as the frozen text encoders gave them (for shapes and sizes)."""
        return self.frozen.hidden

    def __getitem__(self, index):
        if not self.live:
            return self.frozen[index]
        rows = [index] if isinstance(index, int) else index.tolist() if torch.is_tensor(index) else list(index)
        return family_of(self.pipe).encode(self.pipe, [self.prompts[i] for i in rows])

    def expand(self, n: int, *_):
        """The first prompt's conditioning repeated n times (`expand(n, -1, -1)`, as for a Conditioning of one)."""
        return self[0].expand(n)


class WeightEditingMethod(Method):
    """A method whose result is new weights for some UNet parameters, saved as an erasure file."""

    def __init__(self, pipe, concepts: list[str], config: MethodConfig, replacement: str | dict[str, str] | None = None):
        self.pipe, self.denoiser, self.config = pipe, denoiser_of(pipe), config
        self.concepts, self.replacement = concepts, replacement  # as given: the run's identity and the metadata
        self.replacements = replacements_for(concepts, replacement)
        self.device, self.dtype = self.denoiser.device, self.denoiser.dtype  # dtype: the compute dtype, taken before training holds masters in float32
        self.latent_shape = latent_shape(pipe)
        self.prompts: list[Prompts] = []  # every Prompts of the method (`encoded`): live while the text encoders train
        self.uncond = self.encoded([""])
        self.concept_emb = self.encoded(concepts)

    # Methods with a teacher bank keep it here, so that a resumed run reuses it; early stopping's
    # trajectories, which training never draws, and AbO's kept concepts' own trajectories beside it.
    bank = None
    held_out = None
    kept_bank = None

    @classmethod
    def accepts(cls, key, value):
        return key == "replacement" or super().accepts(key, value)

    @classmethod
    def check_replacement(cls, config: MethodConfig, replacement: str | None) -> None:
        """erase() asks before the model loads: can this method, so configured, erase towards `replacement`?"""

    @classmethod
    def check_family(cls, config: MethodConfig, family) -> None:
        """erase() asks before the model loads where the folder names its family (else once it has loaded): can this method, so configured, erase it?"""

    def apply(self, names: list[str], generator: torch.Generator, checkpoint_dir: Path | None, checkpoint_every: int,
              resume: bool, progress: bool, identity: dict) -> list[dict[str, float]]:
        """Change the parameters `names` in place; returns the loss terms (or the edit's summary) of each step."""
        raise NotImplementedError

    @classmethod
    def sampler(cls, base, load_model, concept, settings, seed, out, progress):
        from ..erase import erase

        pipe = load_model()
        erase(pipe, method=cls.name, concepts=concept, seed=seed, out=out, progress=progress, **settings)
        return pipe

    def uncond_like(self, n: int) -> torch.Tensor:
        return self.uncond.expand(n, -1, -1)

    def encoded(self, prompts: list[str]) -> "Prompts":
        """`prompts` and their conditioning (Prompts), read afresh while the text encoders train."""
        self.prompts.append(Prompts(self.pipe, prompts))
        return self.prompts[-1]

    def train_text(self, on: bool) -> None:
        """From now on, encode every prompt afresh through the text encoders as they train (`on`), or read them as computed once."""
        for prompts in self.prompts:
            prompts.live = on


class TrainedMethod(WeightEditingMethod):
    """Fine-tuned by the one training loop (train.py): `prepare` once, then `draw` and `loss` every step.

    Its Config has `ddim_steps`: the DDIM schedule its frozen-model samples are drawn with.
    """

    def __init__(self, pipe, concepts, config, replacement=None):
        super().__init__(pipe, concepts, config, replacement)
        self.scheduler = sampling_scheduler(pipe, config.ddim_steps)

    def apply(self, names, generator, checkpoint_dir, checkpoint_every, resume, progress, identity):
        from ..train import train

        return train(self, names, generator, checkpoint_dir, checkpoint_every, resume, progress, identity)

    def prepare(self, generator: torch.Generator, progress: bool) -> None:
        raise NotImplementedError

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # Hooks of the training loop; most methods need none of them.
    def early_stopping(self) -> tuple[int, float]:
        """(check every so many steps, the least share the held-out loss must fall by to go on); (0, 0.0): no checks."""
        return 0, 0.0

    def held_out_loss(self) -> float:
        """The erasing loss on data training never draws: what early stopping watches."""
        raise NotImplementedError

    def bind(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Called once with the trainable parameters, before `prepare`."""

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """State beyond the parameters that a checkpoint must keep for an exact resume."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class TrajectoryBankMethod(TrainedMethod):
    """Trains at x_t from frozen-model DDIM trajectories, with targets computed along them once (the
    teacher bank, bank.py). A subclass writes its teacher step and its loss.

    With `adversary_weight` > 0 (its Config a BankConfig) it trains adversarially (adversary.py): its
    teacher step also keeps ε*(x_t, c) as "eps_concept", every drawn batch carries the attacked
    conditioning as "attacked", and its loss adds its concept loss there.
    """

    def __init__(self, pipe, concepts, config, replacement=None):
        super().__init__(pipe, concepts, config, replacement)
        trains_adversarially = isinstance(config, BankConfig) and config.adversary_weight > 0  # SDD's bank has no attacker
        self.adversary = self.make_adversary(pipe, concepts, config) if trains_adversarially else None

    def make_adversary(self, pipe, concepts, config):
        if config.adversary == "token":
            return TokenAdversary(pipe, concepts, config.adversary_lr, self.device)
        return Adversary(self.concept_emb, config.adversary_radius, config.adversary_step)

    def teacher_step(self, x, t, i: int, concept: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """At x_τ of a batch of trajectories: the guided output to step with, and the loss targets to keep."""
        raise NotImplementedError

    def prepare(self, generator, progress):
        n = len(self.concepts)
        self.bank = build_bank(self.scheduler, self.teacher_step, self.config.bank_size(n), n, self.latent_shape, generator, self.device, progress=progress)
        if self.early_stopping()[0]:  # its own seed: training draws exactly what it would draw without checks
            held = torch.Generator().manual_seed(generator.initial_seed() + HELD_OUT_SEED)
            self.held_out = build_bank(self.scheduler, self.teacher_step, one_each(self.config.held_out_trajectories, n, "held-out trajectories"), n,
                                       self.latent_shape, held, self.device, progress=progress)

    def early_stopping(self):
        return (self.config.check_every, self.config.min_gain) if isinstance(self.config, BankConfig) else (0, 0.0)

    def erasure_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss's erasing term alone (no penalty, no keeping, no attacker) on a batch of the bank."""
        raise NotImplementedError

    @torch.no_grad()
    def held_out_loss(self):
        total = sum(self.erasure_loss(batch).item() * len(batch["x"]) for batch in self.held_out.batches(64))
        return total / len(self.held_out)

    def draw(self, generator):
        batch = self.bank.draw(self.config.batch_size, generator)
        if self.adversary is not None:  # the attack moves first, on the student as it is now
            batch["attacked"] = self.adversary.attack(self.denoiser, batch["x"].to(self.device), batch["t"], batch["concept"],
                                                      batch["eps_concept"].to(self.device))
        return batch

    def train_text(self, on):
        super().train_text(on)
        if isinstance(self.adversary, TokenAdversary):
            self.adversary.live = on

    def extra_state(self):
        return self.adversary.state() if self.adversary is not None else {}

    def load_extra_state(self, state):
        if self.adversary is not None:
            self.adversary.load_state(state)


class ImageBankMethod(TrainedMethod):
    """Trains on noised images the model itself generated once (bank.sample_latents). A subclass
    says what the images show (`image_prompt`), how many (`n_images`), and its loss."""

    images_label = "images"

    def image_prompt(self, concept: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings for the images of a batch of concept indices."""
        raise NotImplementedError

    def n_images(self) -> int:
        raise NotImplementedError

    def prepare(self, generator, progress):
        n = one_each(self.n_images(), len(self.concepts), self.images_label)
        self.bank = sample_latents(self.scheduler, self.denoiser, self.uncond, self.image_prompt, self.config.guidance, n,
                                   len(self.concepts), self.latent_shape, generator, self.device, progress=progress, label=self.images_label)

    def draw(self, generator):
        return self.bank.draw_noised(self.config.batch_size, self.scheduler, generator)


class ClosedFormMethod(WeightEditingMethod):
    """Computes the new weights at once, no training loop."""

    def edit(self, names: list[str], progress: bool) -> list[dict[str, float]]:
        raise NotImplementedError

    def apply(self, names, generator, checkpoint_dir, checkpoint_every, resume, progress, identity):
        return self.edit(names, progress)


class SteeredPipeline:
    """What `InferenceMethod.steer` returns: called like the pipeline it wraps (`.pipe`), whose parts
    (UNet, tokenizer, text encoder, scheduler) it shares. So the family layer and the attacks read
    them as they are, and an attack is judged through the steered sampling."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __getattr__(self, name):  # called only for what the wrapper does not define itself
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)


class InferenceMethod(Method):
    """Changes how the model is sampled, not its weights: `steer` wraps a pipeline (a SteeredPipeline)."""

    @classmethod
    def check_erasable(cls) -> None:
        raise ErasekitError(f"'{cls.name}' acts at inference time and changes no weights: use it with "
                            f"`erasekit generate --method {cls.name}` or `erasekit evaluate --method {cls.name}`")

    @classmethod
    def steering(cls, preset=None):
        return cls.make_config(preset)

    @classmethod
    def steer(cls, pipe, concept, config):
        raise NotImplementedError

    @classmethod
    def sampler(cls, base, load_model, concept, settings, seed, out, progress):
        return cls.steer(base, concept, cls.make_config(**settings))


def _typed(method: str, name: str, value, annotation: str):
    """A setting's value as its field's type ("float", "int | None", ...), or a one-line refusal.

    "--set lam=100" reads an int: it becomes 100.0, so that a config (and a bench cell's key) does
    not depend on how a number was typed. Numbers given for a text setting become text.
    """
    kinds = annotation.replace(" ", "").split("|")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None and "None" in kinds:
        return None
    if "float" in kinds and number:
        if not math.isfinite(value):
            raise ErasekitError(f"method '{method}': setting {name} must be a finite number, got {value}")
        return float(value)
    if "int" in kinds and number and float(value).is_integer():
        return int(value)
    if "str" in kinds and (isinstance(value, str) or number):
        return str(value)
    raise ErasekitError(f"method '{method}': setting {name} takes {' or '.join(k if k != 'None' else 'null' for k in kinds)}, got {value!r}")


def parse_settings(pairs: list[str] | None) -> dict:
    """"key=value" strings (the CLI's --set) -> {key: value}, values read as JSON where they parse (numbers, null, true)."""
    settings = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ErasekitError(f"--set takes key=value, got '{pair}'")
        name = key.strip().replace("-", "_")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    return settings
