"""Devices and number formats, and how training mixes them: diffusers' own recipe.

Frozen modules (text encoder, VAE, the UNet's frozen weights) run in the compute dtype, half
precision on a GPU. The trained parameters are held in float32, with their optimiser state, and
the forward runs under `torch.autocast`, so each matmul runs in half precision while the update
is applied to float32 masters. float16 also scales the loss (bfloat16 has float32's range and
needs no scaling). AdamW on float16 weights underflows: squared gradients flush to zero and its
eps of 1e-8 rounds to 0.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import ErasekitError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bf16"."""
    return {v: k for k, v in DTYPES.items()}[dtype]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """"auto"/None: CUDA if present, else the CPU. Refuses a device this machine does not have."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ErasekitError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ErasekitError(f"device '{device}' asked for, but this machine has no CUDA GPU (or torch is a CPU build): use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ErasekitError(f"device '{device}' asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ErasekitError("device 'mps' asked for, but Apple's Metal backend is not available here")
    elif device.type != "cpu":
        raise ErasekitError(f"unsupported device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None: bf16 on GPUs that support it, fp16 on other GPUs, fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ErasekitError(f"unsupported dtype {dtype}: use one of {', '.join(DTYPE_CHOICES)}")
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ErasekitError(f"unknown dtype '{dtype}': use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """The forward of a mixed UNet (float32 masters, half frozen weights) computes in `dtype`."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """Loss scaling for float16 only: its gradients underflow below 6e-8; bf16 has float32's range."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def scaled_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor) -> None:
    """One optimiser update from `loss`; in float16 a step whose gradients overflowed is skipped and the scale comes down."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def hold_in_float32(params: dict[str, torch.nn.Parameter], names: list[str]) -> dict[str, torch.nn.Parameter]:
    """Make the named parameters of `params` float32 masters in place (the rest keep their dtype); returns them."""
    for name in names:
        params[name].data = params[name].data.float()
    return {name: params[name] for name in names}


def cast_parameters(params: dict[str, torch.nn.Parameter], names: list[str], dtype: torch.dtype) -> None:
    """Cast the named parameters of `params` back to `dtype`, so each module is one dtype again after training."""
    for name in names:
        params[name].data = params[name].data.to(dtype)
