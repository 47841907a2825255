"""Model families: the one place that knows how SD 1.x/2.x, SDXL and later families differ.

A family says which diffusers pipeline it is, which component folders it needs, how prompts become
the UNet's conditioning (`Conditioning`), what the unconditional prompt is, and which modules
encode text (moved off the accelerator while the UNet trains). Methods, the bank, sampling,
evaluation and generation call these and never ask which family a model is.

A family also names its denoiser (`denoiser_of`: the UNet, or SD3's transformer), and its
conditioning knows how that denoiser is called (`Conditioning.denoise`). A new family is one new
module here with a `Family` subclass, listed in `_families()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Conditioning:
    """What a batch of prompts conditions the UNet with: cross-attention states and, for families that
    have them, extra inputs (SDXL: the pooled text embedding and the size `time_ids`).

    It indexes, expands, moves and concatenates (`torch.cat`) like the hidden-state tensor it wraps,
    so code that batches prompts works the same for every family.
    """

    hidden: torch.Tensor  # (batch, tokens, width): encoder_hidden_states
    added: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (batch, ...): added_cond_kwargs

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def _map(self, fn) -> "Conditioning":
        return type(self)(fn(self.hidden), {k: fn(v) for k, v in self.added.items()})

    def __getitem__(self, index) -> "Conditioning":
        """Rows of the batch (an int keeps the batch dimension, like a one-element slice)."""
        index = [index] if isinstance(index, int) else index
        return self._map(lambda t: t[index])

    def expand(self, n: int, *_) -> "Conditioning":
        """A batch of one repeated n times (`expand(n, -1, -1)`, as for a tensor)."""
        return self._map(lambda t: t.expand(n, *t.shape[1:]))

    def to(self, *args, **kwargs) -> "Conditioning":
        return self._map(lambda t: t.to(*args, **kwargs))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        """The UNet's keyword arguments for this conditioning, in the UNet's compute dtype."""
        kwargs = {"encoder_hidden_states": self.hidden.to(dtype)}
        if self.added:
            kwargs["added_cond_kwargs"] = {k: v.to(dtype) for k, v in self.added.items()}
        return kwargs

    def denoise(self, denoiser, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The denoiser's output for latents `x` at timesteps `t` (one per sample) under this conditioning."""
        return denoiser(x, t, **self.unet_kwargs(x.dtype)).sample

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.cat:
            parts, dim = args[0], (kwargs or {}).get("dim", args[1] if len(args) > 1 else 0)
            if dim != 0:
                raise NotImplementedError("a Conditioning concatenates along the batch only")
            return type(parts[0])(torch.cat([p.hidden for p in parts]), {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added})
        return NotImplemented


# The pipelines' names for their tokenizers and text encoders, in order.
_TEXT = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))


class Family:
    """A model family. Subclasses fill in the class attributes and `encode`."""

    name: str
    label: str  # for messages: "SD 1.x/2.x"
    pipeline_class: str  # the diffusers pipeline's class name, as model_index.json spells it
    components: tuple[str, ...]  # component folders a diffusers folder must have
    weighted: tuple[str, ...]  # those that hold weights (safetensors required)
    checkpoint_marker: str | None = None  # a key prefix only this family's single-file checkpoints have
    denoiser: str = "unet"  # the pipeline's attribute holding the denoiser
    sampler: str = "DDIMScheduler"  # the diffusers scheduler erasekit samples with (sampling.run_sampler)
    guidance: float = 7.5  # the CLI's default guidance scale for the family's models
    presets: dict = {}  # parameter presets whose rules differ from presets.py's (the UNet's)
    cross_attention: bool = True  # text reaches the image through separate cross-attention layers (attention.py's processors)
    lora_format: str = "kohya"  # the LoRA layout every client of the family reads (lora.py): A1111, ComfyUI and diffusers
    checkpoint_whole: bool = True  # the single file holds the whole pipeline (else the denoiser alone, unprefixed)
    token_file_keys: tuple[str, ...] = ()  # a learned token's file: each text encoder's tensor's name where there are several
    optional: tuple[str, ...] = ()  # components a folder may leave out (SD3's T5), loaded as None

    @classmethod
    def latent_shape(cls, denoiser_config, vae_config) -> tuple[int, int, int]:
        """(channels, height, width) of the latents the pipeline draws by default, from the denoiser's and
        the VAE's configs (dicts or diffusers configs alike)."""
        return (denoiser_config["in_channels"], denoiser_config["sample_size"], denoiser_config["sample_size"])

    @classmethod
    def set_timesteps(cls, scheduler, steps: int, latent_shape: tuple[int, int, int]) -> None:
        """Set `scheduler` to `steps` sampling steps as the pipeline does for latents of `latent_shape`."""
        scheduler.set_timesteps(steps)

    @classmethod
    def negative_guidance(cls, guidance: float) -> dict:
        """What the pipeline's call needs besides `negative_prompt` to guide away from it at `guidance`."""
        return {}

    @classmethod
    def sequence_segments(cls, pipe) -> list[tuple[object, int | None]]:
        """The conditioning sequence as consecutive segments, each a tokenizer's tokens position for
        position: (tokenizer, length; None for the rest). UCE aligns tokens within each."""
        return [(pipe.tokenizer, None)]

    @classmethod
    def pipeline_type(cls):
        import diffusers

        return getattr(diffusers, cls.pipeline_class)

    @classmethod
    def pipeline_kwargs(cls) -> dict:
        """Extra keyword arguments for from_pretrained / from_single_file."""
        return {}

    @classmethod
    def from_single_file(cls, path: str, config: str | None, **kwargs):
        """The pipeline from a single-file checkpoint of the family's layout, `config` a diffusers folder
        giving the architecture (and, where the file holds the denoiser alone, the other components)."""
        return cls.pipeline_type().from_single_file(path, config=config, local_files_only=True, **cls.pipeline_kwargs(), **kwargs)

    @classmethod
    def call(cls, pipe, **kwargs):
        """The pipeline's own call (generation), as the family makes it (SD3 without T5: cheaper, same images)."""
        return pipe(**kwargs)

    @classmethod
    def encode(cls, pipe, prompts: list[str]) -> Conditioning:
        """The conditioning the pipeline gives its UNet for `prompts`; "" is the unconditional prompt,
        as the pipeline conditions on it when no negative prompt is given. Differentiable (attacks
        learn token embeddings through it); `embed` is the same without gradients."""
        raise NotImplementedError

    @classmethod
    @torch.no_grad()
    def embed(cls, pipe, prompts: list[str]) -> Conditioning:
        return cls.encode(pipe, prompts)

    @classmethod
    def text_encoders(cls, pipe) -> list[torch.nn.Module]:
        """Every text encoder the pipeline holds, in order (a folder may leave one out: SD3's T5)."""
        return [getattr(pipe, encoder) for encoder in text_components(pipe)]

    @classmethod
    def tokenizers(cls, pipe) -> list:
        """Each text encoder's tokenizer, in the order of `text_encoders`."""
        return [getattr(pipe, tokenizer) for tokenizer, encoder in _TEXT if getattr(pipe, encoder, None) is not None]

    @classmethod
    def checkpoint_denoiser(cls, pipe) -> dict[str, torch.Tensor]:
        """The denoiser's weights under their names in the family's single-file layout (single_file.py)."""
        from ..single_file import unet_tensors

        return unet_tensors(denoiser_of(pipe))

    @classmethod
    def checkpoint_text_encoders(cls, pipe) -> list[tuple[str, str, torch.nn.Module]]:
        """Where each text encoder goes in a single-file checkpoint: (key prefix, "hf", "openclip" or "t5", encoder)."""
        raise NotImplementedError


def text_components(pipe) -> list[str]:
    """The pipeline's attributes holding its text encoders, in order ("text_encoder", "text_encoder_2", ...)."""
    return [encoder for _, encoder in _TEXT if getattr(pipe, encoder, None) is not None]


def _families():
    from .sd import StableDiffusion
    from .flux import Flux
    from .sd3 import StableDiffusion3
    from .sdxl import StableDiffusionXL

    return (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux)


def denoiser_of(pipe) -> torch.nn.Module:
    """The pipeline's denoiser: its UNet, or its transformer (SD3, FLUX)."""
    return getattr(pipe, family_of(pipe).denoiser)


def family_named(pipeline_class: str | None) -> type[Family] | None:
    """The family of a diffusers pipeline class name (model_index.json's `_class_name`), or None."""
    return next((f for f in _families() if f.pipeline_class == pipeline_class), None)


def family_of(pipe) -> type[Family]:
    """The family of a loaded pipeline, or of the one an inference-time method steers (its `.pipe`)."""
    family = family_named(type(pipe).__name__)
    if family is None and hasattr(pipe, "pipe"):
        return family_of(pipe.pipe)
    if family is None:
        from ..errors import ErasekitError

        raise ErasekitError(f"erasekit supports {supported()}, not a {type(pipe).__name__}")
    return family


def family_of_checkpoint(keys: list[str]) -> type[Family]:
    """The family of a single-file checkpoint in the original layout, from its key names."""
    marked = [f for f in _families() if f.checkpoint_marker and any(k.startswith(f.checkpoint_marker) for k in keys)]
    return marked[0] if marked else _families()[0]


def supported() -> str:
    return ", ".join(f"{f.pipeline_class} ({f.label})" for f in _families())
