"""What every training-based method shares: its settings, its conditioning, and the registry.

A method says which parameters train (a preset of params.py), how a training batch is drawn (from
the teacher bank, or by sampling as its paper does), and which loss applies to it. The one training
loop in train.py does the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch

from ..errors import ErasekitError
from ..sampling import embed, latent_shape


# AbO on the built-in model, 200 draws (benchmarks/results/abo_fast_vs_reference.md): banks of 8, 16
# and 32 trajectories all erased and preserved within the seed spread of Algorithm 1's one fresh
# trajectory per draw; 8 (25 draws each) was the fewest that did (with 4, one seed left 32% of squares).
DRAWS_PER_TRAJECTORY = 25


@dataclass
class MethodConfig:
    """Settings every method has. Subclasses add their own and set their defaults."""

    steps: int = 200
    lr: float = 1e-4
    optimizer: str = "adamw"  # "adam" or "adamw"
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int = 1
    parameters: str = "attn2"  # a preset of erasekit.params.PRESETS
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

    def bank_size(self) -> int:
        """Trajectories in the teacher bank: as set, or (None) one per DRAWS_PER_TRAJECTORY draws of training.

        Resolved when the bank is built, not stored: a run resumed with more steps keeps its identity
        (and its bank, which the checkpoint holds). Every method that builds a bank asks here, so an
        empty one is refused here for all of them.
        """
        if self.bank_trajectories == 0:
            raise ErasekitError(f"a teacher bank needs trajectories: bank_trajectories must be >= 1 (or null: one per {DRAWS_PER_TRAJECTORY} draws)")
        if self.bank_trajectories is not None:
            return self.bank_trajectories
        return math.ceil(self.steps * self.batch_size / DRAWS_PER_TRAJECTORY)


class Method:
    """Base of the training-based methods. `prepare` once, then `draw` and `loss` every step."""

    name: str = ""
    Config: type = MethodConfig
    presets: dict[str, dict] = {}
    closed_form = False  # True: `edit(names, progress)` changes the weights at once, no training loop

    def __init__(self, pipe, concepts: list[str], config: MethodConfig, replacement: str | None = None):
        self.pipe, self.unet, self.config = pipe, pipe.unet, config
        self.concepts, self.replacement = concepts, replacement
        self.device, self.dtype = pipe.unet.device, pipe.unet.dtype  # dtype: the compute dtype, taken before training holds masters in float32
        self.latent_shape = latent_shape(pipe)
        self.uncond = embed(pipe, [""])
        self.concept_emb = embed(pipe, concepts)

    @classmethod
    def make_config(cls, preset: str | None = None, **overrides) -> MethodConfig:
        """Defaults, then a named preset (e.g. the paper's), then explicit overrides (None = keep)."""
        values = {}
        if preset is not None:
            if preset not in cls.presets:
                raise ErasekitError(f"method '{cls.name}' has no preset '{preset}'; presets: {', '.join(cls.presets) or 'none'}")
            values.update(cls.presets[preset])
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = [k for k, v in overrides.items() if v is not None and k not in known]
        if unknown:
            raise ErasekitError(f"method '{cls.name}' has no setting {', '.join(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cls.Config)}
        config = cls.Config(**{k: _typed(cls.name, k, v, types[k]) for k, v in values.items()})
        config.validate()
        return config

    # Subclasses implement these three.
    def prepare(self, generator: torch.Generator, progress: bool) -> None:
        raise NotImplementedError

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    # Methods with a teacher bank keep it here, so that a resumed run reuses it.
    bank = None

    # Hooks of the training loop; most methods need none of them.
    def bind(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Called once with the trainable parameters, before `prepare`."""

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """State beyond the parameters that a checkpoint must keep for an exact resume."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def uncond_like(self, n: int) -> torch.Tensor:
        return self.uncond.expand(n, -1, -1)


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


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    from . import ablating, abo, esd, fmn, sdd, uce  # noqa: F401  (registration happens on import)

    if name not in METHODS:
        raise ErasekitError(f"unknown method '{name}'; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
