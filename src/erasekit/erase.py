"""erase(): train a method on a pipeline and return the erasure (changed parameters + metadata)."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .families import denoiser_of, family_of, text_components
from .errors import ErasekitError, ErasekitWarning
from .images import ensure_writable_dir
from .io import output_lock
from .paths import check_not_under_a_file
from .methods import get_method, method_names
from .methods.base import TrainedMethod, replacements_for
from .model import hash_rounding, load_pipeline, peek_family, peek_sizes, peek_tokenizer, sizes_of, unet_fingerprint, unet_norms
from .erasure_file import load_erasure, save_erasure
from .presets import check_text_training, pipeline_parameters, select_parameters, trains_text
from .train import checkpoint_step
from .precision import DTYPES, cast_parameters, dtype_name, hold_in_float32, resolve_device, resolve_dtype

__all__ = ["Erasure", "erase", "load_erasure", "check_concepts"]


@dataclass
class Erasure:
    """The result of an erasure: which parameters changed, their new values, and how they were made."""

    metadata: dict
    names: list[str]
    tensors: dict[str, torch.Tensor]  # the changed parameters as trained: float32 masters, on the CPU
    unet: torch.nn.Module  # the erased UNet (the pipeline's own, changed in place, in its own dtype)
    history: list[dict[str, float]]
    base: dict[str, torch.Tensor]  # the same parameters before erasing, on the CPU: what a LoRA is the change from
    pipe: object = field(default=None, repr=False, compare=False)  # the erased pipeline, for exporting it whole

    def save(self, path: Path | str, dtype: str | torch.dtype | None = None) -> Path:
        """Write the changed parameters and the metadata to a safetensors file, atomically.

        dtype: what the tensors are stored in; default the base model's ("fp32" keeps the masters exact).
        """
        dtype = _storage_dtype(self.metadata["base_dtype"] if dtype is None else dtype)
        save_erasure(path, self.tensors, self.metadata | {"saved_dtype": dtype_name(dtype)}, dtype)
        return Path(path)

    def lora(self, rank: int | None = None):
        """The change as a rank-`rank` LoRA (lora.Lora: truncated SVD of each weight's delta); None
        chooses the smallest rank within 1% on every layer (lora.TOLERANCE), capped (lora.MAX_RANK)."""
        from .lora import erasure_lora

        return erasure_lora(self.base, self.tensors, rank)

    def save_lora(self, path: Path | str, rank: int | None = None, fmt: str | None = None):
        """Write the change as a LoRA (`lora`) in `fmt`, by default the one every client of the family
        reads (Family.lora_format), keyed to the family's denoiser, atomically; returns the lora.Lora."""
        from .lora import save_lora

        family, lora = family_of(self.pipe), self.lora(rank)
        meta = {"erasekit.method": self.metadata["method"], "erasekit.concepts": ",".join(self.metadata["concepts"]), "erasekit.rank": lora.rank}
        save_lora(lora, path, fmt or family.lora_format, meta, family.denoiser, tuple(text_components(self.pipe)))
        return lora

    def save_pipeline(self, folder: Path | str) -> Path:
        """The whole erased pipeline as a diffusers folder (diffusers_folder.save_pipeline), written atomically."""
        from .diffusers_folder import save_pipeline

        return save_pipeline(self.pipe, folder)

    def save_checkpoint(self, path: Path | str) -> int:
        """The whole erased model as one safetensors file in the original layout (single_file); returns the tensor count."""
        from .single_file import save_checkpoint

        return save_checkpoint(self.pipe, path)


def _storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ErasekitError(f"an erasure is saved in fp32, fp16 or bf16, not {dtype}")
    return dtype


def unseen_words(tokenizer, concept: str) -> dict[str, list[str]]:
    """Words of `concept` that the tokenizer's vocabulary has no whole token for, with the pieces it splits them into.

    CLIP's BPE (SD 1.x/2.x and SDXL alike) ends a word's last piece with "</w>": a word of one
    piece was in the vocabulary as a word; one of several pieces may be a name the model never
    learnt, or a typo.
    """
    words, current = {}, []
    for piece in tokenizer.tokenize(concept):
        current.append(piece)
        if piece.endswith("</w>"):
            if len(current) > 1:
                words["".join(current).replace("</w>", "")] = current
            current = []
    return words


def _known_word(tokenizer, word: str) -> bool:
    """A word of several pieces is still one the tokenizer knows when its vocabulary holds it whole
    (the built-in model's BPE merges reach "purple" only in pieces, yet "purple</w>" is in its vocabulary)."""
    return f"{word.lower()}</w>" in tokenizer.get_vocab()


def check_concepts(tokenizer, concepts: list[str], strict: bool = False, replacement: str | dict[str, str] | None = None) -> list[str]:
    """Strip concepts; refuse empty ones, ones without a letter or digit, ones that tokenise to
    nothing or past the text encoder's length, and a replacement (one for all, or one per concept)
    that is a concept itself (the erasure would change nothing); warn about words the vocabulary
    lacks (refuse them with `strict`)."""
    cleaned = [c.strip() for c in concepts]
    if not cleaned or any(not c for c in cleaned):
        raise ErasekitError("empty concept: name the concept to erase, e.g. --concept circle")
    limit = tokenizer.model_max_length - 2  # the start and end tokens take two places
    for c in cleaned:
        if not any(ch.isalnum() for ch in c):
            raise ErasekitError(f"concept '{c}' has no letter or digit: name the concept to erase, e.g. --concept circle")
        ids = tokenizer(c, add_special_tokens=False).input_ids
        if not ids:
            raise ErasekitError(f"concept '{c}' tokenises to nothing: the model cannot be conditioned on it")
        if len(ids) > limit:
            raise ErasekitError(f"concept '{c[:40]}...' is {len(ids)} tokens; the text encoder reads at most {limit}, "
                                "so the rest could never be erased: name it in fewer words")
        unseen = {w: p for w, p in unseen_words(tokenizer, c).items() if not _known_word(tokenizer, w)}
        if unseen:
            detail = "; ".join(f"'{w}' -> {' '.join(p)}" for w, p in unseen.items())
            message = f"concept '{c}': the tokenizer knows no word {', '.join(repr(w) for w in unseen)}, only pieces ({detail}); the model may never have learnt it"
            if strict:
                raise ErasekitError(message + " (refused with --strict)")
            warnings.warn(message, ErasekitWarning, stacklevel=2)
    for r in {r for r in (replacement.values() if isinstance(replacement, dict) else [replacement]) if r is not None}:
        same = [c for c in cleaned if tokenizer(c).input_ids == tokenizer(r.strip()).input_ids]
        if same:
            raise ErasekitError(f"the replacement '{r.strip()}' is the concept '{same[0]}' itself: the erasure would change nothing; "
                                "give another replacement, or none")
    return cleaned


@contextmanager
def _training_memory(pipe, gradient_checkpointing: bool, text_trains: bool):
    """While the UNet trains: on an accelerator the text encoders (unless they train too) and the VAE
    wait on the host (every method embeds its prompts before training), and the student may
    recompute its activations."""
    denoiser = denoiser_of(pipe)
    offload = denoiser.device.type != "cpu"
    frozen = [*([] if text_trains else family_of(pipe).text_encoders(pipe)), pipe.vae]
    if offload:
        for module in frozen:
            module.to("cpu")
    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if gradient_checkpointing:
            denoiser.disable_gradient_checkpointing()
        if offload:
            for module in frozen:
                module.to(denoiser.device)


def erase(
    model="builtin",
    method: str = "abo",
    concepts: list[str] | str = "circle",
    replacement: str | dict[str, str] | None = None,
    preset: str | None = None,
    seed: int = 0,
    out: Path | str | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    strict: bool = False,
    save_dtype: str | torch.dtype | None = None,
    keep_checkpoint: bool = True,
    model_config: str | None = None,
    **settings,
) -> Erasure:
    """Erase `concepts` from `model` (a source for load_pipeline, or a loaded pipeline, changed in place).

    replacement: what the concepts become instead: one for all, or a dict {concept: replacement}
    (a concept left out has none; methods.base.replacements_for).
    settings: any field of the method's config (steps, lr, gamma1, lam, ...); None keeps the default.
    device, dtype, model_config: where and in what precision to load `model` ("auto" by default),
    and a single file's configuration folder (see load_pipeline); a loaded pipeline is used as it is. The trained parameters are float32 masters
    whatever the dtype (precision.py).
    gradient_checkpointing: recompute the student's activations in the backward pass (less
    memory on a real model, more time; the same weights up to float rounding).
    strict: refuse a concept with a word the tokenizer's vocabulary lacks (default: a warning).
    With `out`, the erasure is also written there, in `save_dtype` (default: the base model's).
    With `checkpoint_dir`, training checkpoints every `checkpoint_every` steps, `resume=True`
    continues from the last one, and `keep_checkpoint=False` removes it once `out` is written.
    Every argument is checked before the model loads; `out` and `checkpoint_dir` are held by this
    run alone while it runs (io.output_lock).
    """
    method_cls = get_method(method)
    method_cls.check_erasable()
    config = method_cls.make_config(preset, **settings)
    if trains_text(config.parameters) and not method_cls.trains_text_encoder:
        raise ErasekitError(f"parameter preset '{config.parameters}' trains the text encoders, which '{method_cls.name}' does not: "
                            f"use {', '.join(m for m in method_names() if get_method(m).trains_text_encoder)}")
    if isinstance(replacement, dict):
        replacements_for([concepts] if isinstance(concepts, str) else list(concepts), replacement)  # no replacement of a concept not erased
        replacement = {c: r for c, r in replacement.items() if r is not None} or None
    method_cls.check_replacement(config, replacement)
    if isinstance(model, (str, Path)):
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
    elif device is not None or dtype is not None or model_config is not None:
        raise ErasekitError("device, dtype and model_config choose how a model is loaded: pass them to load_pipeline, not with a loaded pipeline")
    if checkpoint_every < 1:
        raise ErasekitError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every}")
    if resume and checkpoint_dir is None:
        raise ErasekitError("resume continues from a checkpoint: give checkpoint_dir")
    if resume:
        checkpoint_step(checkpoint_dir, config.steps)
    if save_dtype is not None:
        save_dtype = _storage_dtype(save_dtype)
    loaded = not isinstance(model, (str, Path))
    limit = (sizes_of(model) if loaded else peek_sizes(model, model_config)).get("train_timesteps")
    if limit is not None and getattr(config, "ddim_steps", 0) > limit:
        raise ErasekitError(f"ddim_steps {config.ddim_steps} is more than the model's scheduler has timesteps ({limit}): use at most {limit}")
    family = family_of(model) if loaded else peek_family(model, model_config)
    if family is not None:  # else checked once the model has loaded
        method_cls.check_family(config, family)
        check_text_training(config.parameters, family)
    tokenizer = model.tokenizer if loaded else peek_tokenizer(model, model_config)
    if tokenizer is not None:  # else checked once the model has loaded
        concepts, replacement = _check_words(tokenizer, concepts, replacement, strict)
    for path in (out, checkpoint_dir):
        check_not_under_a_file(path)
    if out is not None and Path(out).is_dir():
        raise ErasekitError(f"the erasure file {out} is an existing folder: give a file name, e.g. {Path(out) / 'erased.safetensors'}")
    if out is not None:
        ensure_writable_dir(Path(out).parent)
    with contextlib.ExitStack() as held:
        for path in (out, checkpoint_dir):
            if path is not None:
                held.enter_context(output_lock(path))
        erasure = _erase(model=model, model_config=model_config, method_cls=method_cls, config=config, concepts=concepts, replacement=replacement,
                         preset=preset, seed=seed, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                         progress=progress, device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing, strict=strict,
                         words_checked=tokenizer is not None, family_checked=family is not None)
        try:
            check_change(erasure, save_dtype or erasure.unet.dtype)
        except ErasekitError:
            if checkpoint_dir is not None and not keep_checkpoint:
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
            raise
        if out is not None:
            erasure.save(out, save_dtype)
        if checkpoint_dir is not None and not keep_checkpoint:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return erasure


def _check_words(tokenizer, concepts: list[str] | str, replacement: str | dict[str, str] | None, strict: bool):
    """check_concepts on the concepts and on the replacements; all stripped."""
    concepts = check_concepts(tokenizer, [concepts] if isinstance(concepts, str) else list(concepts), strict, replacement)
    if isinstance(replacement, dict):
        replacement = {c.strip(): check_concepts(tokenizer, [r], strict)[0] for c, r in replacement.items()}
    elif replacement is not None:
        replacement = check_concepts(tokenizer, [replacement], strict)[0]
    return concepts, replacement


# An erasure that moves the weights by less than this share of their norm is as good as none: warned.
NEGLIGIBLE_CHANGE = 1e-6


def check_change(erasure: Erasure, dtype: torch.dtype) -> None:
    """Refuse an erasure whose weights, in the `dtype` they are saved in, equal the base model's (it
    would change nothing), and warn about one that changes them by a negligible share."""
    delta = sum(float((erasure.tensors[n].double() - erasure.base[n].double()).square().sum()) for n in erasure.names)
    norm = sum(float(erasure.base[n].double().square().sum()) for n in erasure.names)
    relative = (delta / norm) ** 0.5 if norm > 0 else float(delta > 0)
    if all(torch.equal(erasure.tensors[n].to(dtype), erasure.base[n].to(dtype)) for n in erasure.names):
        raise ErasekitError(f"the erasure changes nothing: its {len(erasure.names)} tensors equal the base model's in {dtype_name(dtype)} "
                            f"(relative change {relative:.1e}); nothing was written. Raise the learning rate or the steps")
    if relative < NEGLIGIBLE_CHANGE:
        warnings.warn(f"the erasure changes the weights by only {relative:.1e} of their norm: it will hardly change what the model draws. "
                      "Raise the learning rate or the steps", ErasekitWarning, stacklevel=2)


def _erase(*, model, model_config, method_cls, config, concepts, replacement, preset, seed, checkpoint_dir, checkpoint_every, resume, progress,
           device, dtype, gradient_checkpointing, strict, words_checked: bool, family_checked: bool) -> Erasure:
    """erase() once every argument is checked (keyword-only: so many in a row are too easy to misplace)."""
    pipe = load_pipeline(model, device, dtype, model_config) if isinstance(model, (str, Path)) else model
    if not family_checked:
        method_cls.check_family(config, family_of(pipe))
        check_text_training(config.parameters, family_of(pipe))
    if not words_checked:
        concepts, replacement = _check_words(pipe.tokenizer, concepts, replacement, strict)
    denoiser = denoiser_of(pipe)
    names = select_parameters(denoiser, config.parameters, family_of(pipe), pipe)
    base_dtype, rounding = denoiser.dtype, hash_rounding(denoiser)
    base_hash, base_norms = unet_fingerprint(denoiser, rounding), unet_norms(denoiser)
    base_text = {c: [unet_fingerprint(getattr(pipe, c), rounding), unet_norms(getattr(pipe, c))] for c in text_components(pipe)} if trains_text(config.parameters) else None

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    instance = method_cls(pipe, concepts, config, replacement)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    params = pipeline_parameters(pipe)
    base = {name: params[name].detach().to("cpu", copy=True) for name in names}
    masters = hold_in_float32(params, names)
    try:
        with _training_memory(pipe, gradient_checkpointing, trains_text(config.parameters)):
            history = instance.apply(names, generator, ckpt, checkpoint_every, resume, progress,
                                     identity={"seed": seed, "base_unet_sha256": base_hash})
        tensors = {name: p.detach().to("cpu", copy=True) for name, p in masters.items()}
    finally:
        cast_parameters(params, names, base_dtype)

    metadata = {
        "method": method_cls.name,
        "family": family_of(pipe).name,
        "concepts": concepts,
        "replacement": replacement,
        "preset": preset,
        "seed": seed,
        "hyperparameters": dataclasses.asdict(config),
        # bank_trajectories may be null (a rule of steps x batch), and image banks have their own count
        "teacher_bank_trajectories": instance.bank.trajectories if instance.bank is not None else None,
        "base_model": str(model if isinstance(model, (str, Path)) else getattr(pipe, "name_or_path", "pipeline")),
        "base_unet_sha256": base_hash,
        "base_unet_hash_rounding": rounding,
        "base_unet_norms": base_norms,
        # an erasure of the text encoders applies only to the encoders it was made from: each one's hash and norms, as the UNet's
        "base_text_encoders": base_text,
        "base_dtype": dtype_name(base_dtype),
        "device": str(instance.device),
        "erasekit_version": __version__,
        "final_loss": history[-1] if history else None,
    }
    if isinstance(instance, TrainedMethod):  # early stopping may end it before `steps`
        metadata["steps_trained"] = len(history)
    return Erasure(metadata=metadata, names=names, tensors=tensors, unet=denoiser, history=history, base=base, pipe=pipe)
