"""An erasure as a LoRA, in the formats the ecosystem loads: kohya (A1111, ComfyUI; diffusers for SD and
SDXL) and diffusers' own PEFT keys (diffusers; ComfyUI too for SD3's transformer).

Each changed weight's delta ΔW = W_erased - W_base is factored by a truncated SVD into up @ down of
rank r (the best rank-r approximation in the Frobenius norm, Eckart-Young), split as
up = U_r sqrt(S_r), down = sqrt(S_r) V_r^T. We factor the delta after training rather than train
adapters with PEFT, so that every method (UCE's closed form too) exports the same way, the rank is
chosen after the fact (by default the smallest within TOLERANCE on every layer), and what it
costs is measured against the full delta (benchmarks/results/lora-rank/results.md). A LoRA changes weight matrices only: a changed bias or
norm scale is left out and listed in `Lora.dropped`. (PEFT can carry biases, as `lora_B.bias`, but
then diffusers' `fuse_lora` refuses every layer without a bias, and the kohya format has no place
for them.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import ErasekitError
from .io import atomic_path

FORMATS = ("kohya", "peft")  # each family names its default (Family.lora_format): the one every client of it reads


@dataclass
class Lora:
    """Rank-r factors per module: `up` (out, r[, 1, 1]) and `down` (r, in[, kh, kw]) with up @ down ≈ ΔW."""

    rank: int  # the largest rank stored: the one asked for, or less where every weight's delta has fewer singular values
    down: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> lora_A / lora_down
    up: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> lora_B / lora_up
    dropped: list[str] = field(default_factory=list)  # changed parameters that are not weight matrices
    error: dict[str, float] = field(default_factory=dict)  # module -> ||ΔW - up @ down|| / ||ΔW||


# The automatic rank: the smallest at which every layer keeps all but this share of its change
# (relative Frobenius error), and no more than MAX_RANK, where a file's size stops paying.
TOLERANCE = 0.01
MAX_RANK = 128


# Above this many columns and rows a delta is factored by a randomised SVD (Halko et al. 2011, torch's
# svd_lowrank) of the ranks that may be asked, not an exact one: on SDXL's layers the exact SVDs took
# longer than the erase (benchmarks/results/lora-export/results.md compares the two).
OVERSAMPLE, POWER_ITERATIONS = 16, 6


@dataclass
class Spectrum:
    """A delta's leading singular vectors and values, up to the largest rank that may be asked of it."""

    U: torch.Tensor  # (out, k)
    S: torch.Tensor  # (k' >= k,) the leading singular values; every one where the SVD was exact
    Vh: torch.Tensor  # (k, in)
    shape: torch.Size  # the weight's own shape (a convolution's too)
    total: float  # ||ΔW||²: what the relative errors are measured against

    @classmethod
    def of(cls, delta: torch.Tensor, keep: int) -> "Spectrum":
        A = delta.double().flatten(1)
        total = A.square().sum().item()
        q = keep + OVERSAMPLE
        if 2 * q >= min(A.shape):  # small enough that the exact SVD costs no more
            U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        else:
            with torch.random.fork_rng(devices=[]):  # its random projection is seeded: the same delta gives the same LoRA
                torch.manual_seed(0)
                U, S, V = torch.svd_lowrank(A, q=q, niter=POWER_ITERATIONS)
            Vh = V.T
        return cls(U[:, :keep], S, Vh[:keep], delta.shape, total)

    def error(self, rank: int) -> float:
        """||ΔW - its best rank-`rank` approximation|| / ||ΔW||: the energy past the first `rank` singular values (Eckart-Young)."""
        if self.total <= 0:
            return 0.0
        return (max(self.total - self.S[:rank].square().sum().item(), 0.0) / self.total) ** 0.5

    def rank_within(self, tolerance: float) -> int:
        """The smallest rank whose relative error is at most `tolerance` (one more than it holds, if none is)."""
        left = self.total - self.S.square().cumsum(0)  # left[r - 1]: the squared error rank r leaves
        within = (left <= tolerance**2 * self.total).nonzero()
        return int(within[0]) + 1 if len(within) else self.S.numel() + 1

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(up, down, relative error) at `rank`, split as up = U_r sqrt(S_r), down = sqrt(S_r) V_r^T."""
        r = min(rank, self.U.shape[1])
        root = self.S[:r].sqrt()
        up, down = self.U[:, :r] * root, root[:, None] * self.Vh[:r]
        if len(self.shape) == 4:  # a convolution: down is the r-channel k x k conv, up the 1 x 1 conv back
            up, down = up[:, :, None, None], down.reshape(r, *self.shape[1:])
        return up.float().contiguous(), down.float().contiguous(), self.error(r)


def factor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` factors (up, down) of a linear or convolution weight's delta, and the relative error."""
    return Spectrum.of(delta, rank).factors(rank)


def erasure_lora(base: dict[str, torch.Tensor], erased: dict[str, torch.Tensor], rank: int | None = None) -> Lora:
    """The LoRA for the change from `base` to `erased` (parameter name -> tensor), of rank `rank`, or
    (None) of the smallest rank within TOLERANCE on every layer, at most MAX_RANK. One SVD per layer."""
    if rank is not None and rank < 1:
        raise ErasekitError(f"LoRA rank must be at least 1, got {rank}")
    weights = {n.removesuffix(".weight") for n, t in erased.items() if n.endswith(".weight") and t.dim() in (2, 4)}
    spectra, dropped = {}, []
    for name, new in erased.items():
        module, kind = name.rsplit(".", 1)
        delta = new.float() - base[name].float()
        if not delta.any():
            continue
        if module in weights and kind == "weight":
            spectra[module] = Spectrum.of(delta, rank or MAX_RANK)
        else:
            dropped.append(name)
    if rank is None:
        rank = min(max((s.rank_within(TOLERANCE) for s in spectra.values()), default=1), MAX_RANK)
    lora = Lora(rank, dropped=dropped)
    for module, spectrum in spectra.items():
        lora.up[module], lora.down[module], lora.error[module] = spectrum.factors(rank)
    lora.rank = max((up.shape[1] for up in lora.up.values()), default=rank)  # no layer's factors exceed its matrix's smaller side
    return lora


def lora_key(module: str, fmt: str, denoiser: str = "unet", text_encoders: tuple[str, ...] = ("text_encoder",)) -> str:
    """A module's name in a LoRA file of `fmt`: peft's "<component>.<module>" or kohya's stem
    "lora_<denoiser>_<module with underscores>". A text encoder's module (presets.pipeline_parameters
    names it "text_encoder.<module>") is spelt as CLIP's transformers 4 names it, under "text_model."
    (transformers 5 dropped that wrapper from CLIPTextModel), and kohya's stem starts "lora_te_", or
    "lora_te1_", "lora_te2_" where there are several: what ComfyUI and diffusers read."""
    component, _, inner = module.partition(".")
    if component not in text_encoders:
        return f"{denoiser}.{module}" if fmt == "peft" else f"lora_{denoiser}_{module.replace('.', '_')}"
    inner = inner if inner.startswith("text_model.") else f"text_model.{inner}"
    if fmt == "peft":
        return f"{component}.{inner}"
    number = "" if len(text_encoders) == 1 else str(text_encoders.index(component) + 1)
    return f"lora_te{number}_{inner.replace('.', '_')}"


def save_lora(lora: Lora, path: Path | str, fmt: str = FORMATS[0], metadata: dict | None = None, denoiser: str = "unet",
              text_encoders: tuple[str, ...] = ("text_encoder",)) -> None:
    """Write `lora` as a safetensors file, atomically; `denoiser` is the pipeline's attribute the
    modules belong to (Family.denoiser: "unet", or SD3's "transformer"), `text_encoders` the
    pipeline's text encoders' (families.text_components), for a LoRA that changes them (`lora_key`).

    peft: diffusers' own keys (<denoiser>.<module>.lora_A/lora_B), loaded by `pipe.load_lora_weights(path)`,
    and by ComfyUI for SD3, where it reads "transformer.<module>" (its model_lora_keys_unet).
    kohya: lora_<denoiser>_<module with underscores>.lora_down/lora_up/alpha (alpha = rank: scale 1),
    read by A1111 and ComfyUI (lora_transformer_*: OneTrainer's SD3 keys), and by diffusers'
    load_lora_weights for SD and SDXL, which converts it.
    """
    if fmt not in FORMATS:
        raise ErasekitError(f"unknown LoRA format '{fmt}'; choose from {', '.join(FORMATS)}")
    tensors = {}
    for module in lora.up:
        key = lora_key(module, fmt, denoiser, tuple(text_encoders))
        if fmt == "peft":
            tensors |= {f"{key}.lora_A.weight": lora.down[module], f"{key}.lora_B.weight": lora.up[module]}
        else:
            tensors |= {f"{key}.lora_down.weight": lora.down[module], f"{key}.lora_up.weight": lora.up[module],
                        f"{key}.alpha": torch.tensor(lora.down[module].shape[0])}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})


def apply_lora(pipe, path: Path | str) -> None:
    """Merge a LoRA file of either format into the pipeline's weights in place (W += up @ down): its
    denoiser's, and its text encoders' where the file has keys for them (`lora_key`)."""
    from .families import family_of, text_components
    from .presets import pipeline_parameters

    state = load_file(str(path))
    params = pipeline_parameters(pipe)
    denoiser, text_encoders = family_of(pipe).denoiser, tuple(text_components(pipe))
    modules = {}  # every weight's module under each format's key
    for name in params:
        if name.endswith(".weight"):
            module = name.removesuffix(".weight")
            modules |= {lora_key(module, fmt, denoiser, text_encoders): module for fmt in FORMATS}
    parts = {}
    for key, tensor in state.items():
        stem, part = key.split(".lora_", 1) if ".lora_" in key else (key, "alpha")
        if part == "alpha":
            continue
        if stem not in modules:
            raise ErasekitError(f"LoRA key {key} names no module of this pipeline")
        parts.setdefault(modules[stem], {})[{"A.weight": "down", "B.weight": "up", "down.weight": "down", "up.weight": "up"}[part]] = tensor
    if not parts:
        raise ErasekitError(f"{Path(path).name} holds no LoRA weights ({denoiser}.*.lora_A/B or lora_{denoiser}_*)")
    with torch.no_grad():
        for module, factors in parts.items():
            weight = params[f"{module}.weight"]
            up, down = factors["up"].float(), factors["down"].float()
            weight += (up.flatten(1) @ down.flatten(1)).reshape(weight.shape).to(weight.dtype)
