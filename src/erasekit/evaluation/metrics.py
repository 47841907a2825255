"""Image metrics, from torchmetrics."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure


def to_unit_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> float tensor (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).float() / 255.0


def ssim(a: list[Image.Image], b: list[Image.Image], window: int = 25) -> torch.Tensor:
    """Per-pair SSIM with a uniform `window` x `window` window (the AbO paper's 25x25), shape (B,)."""
    return structural_similarity_index_measure(
        to_unit_tensor(a), to_unit_tensor(b), gaussian_kernel=False, kernel_size=window, data_range=1.0, reduction="none"
    )
