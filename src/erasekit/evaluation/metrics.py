"""Image metrics, from torchmetrics."""

from __future__ import annotations

import warnings

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


def feature_extractor(name: str):
    """'shapes' (the shapes classifier) or 'inception' (torchmetrics' InceptionV3, needs torch-fidelity)."""
    if name == "shapes":
        from ..tasks.shapes import ClassifierFeatures

        return ClassifierFeatures()
    if name == "inception":
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            from ..errors import ErasekitError

            raise ErasekitError("Inception features need torch-fidelity (pip install torch-fidelity, which needs torchvision)") from None
        return 2048
    from ..errors import ErasekitError

    raise ErasekitError(f"unknown feature extractor '{name}': use shapes or inception")


def agreement(predicted: dict[str, list[str]], wanted: list[dict[str, str]]) -> dict[str, float]:
    """Per attribute, the share of matching predictions among the images whose prompt names it."""
    result = {}
    for attribute in sorted({a for w in wanted for a in w}):
        pairs = [(p, w[attribute]) for p, w in zip(predicted[attribute], wanted) if attribute in w]
        result[attribute] = sum(p == w for p, w in pairs) / len(pairs)
    return result


def fid_kid(reference: list[Image.Image], generated: list[Image.Image], features) -> dict[str, float]:
    """FID and KID of `generated` against `reference` on `features` (torchmetrics).

    KID is computed once on whole sets (a random subset of the larger one, seeded) rather than
    averaged over random subsets, so that it is deterministic and symmetric; being unbiased, it
    can dip slightly below zero for sets from the same distribution.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=features, normalize=True, input_img_size=(3, 64, 64))
    with warnings.catch_warnings():
        # Its warning that features are buffered in memory is about datasets of many thousands;
        # an evaluation here holds a few hundred small images.
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
        kid = KernelInceptionDistance(feature=features, normalize=True, subsets=1, subset_size=min(len(reference), len(generated)))
    for metric in (fid, kid):
        metric.update(to_unit_tensor(reference), real=True)
        metric.update(to_unit_tensor(generated), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        kid_value, _ = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_value.item()}


def clip_score(images: list[Image.Image], prompts: list[str], model: str, batch_size: int = 32) -> float:
    """Mean CLIP score, 100 * max(cos(E_image, E_text), 0) (Hessel et al. 2021), with a local or hub CLIP.

    Computed with transformers directly: torchmetrics' CLIPScore does not read transformers 5's
    feature outputs.
    """
    from transformers import CLIPModel, CLIPProcessor

    clip, processor = CLIPModel.from_pretrained(model).eval(), CLIPProcessor.from_pretrained(model)
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            inputs = processor(
                text=prompts[start : start + batch_size], images=images[start : start + batch_size],
                return_tensors="pt", padding=True, truncation=True,
            )
            out = clip(**inputs)
            cos = (out.image_embeds * out.text_embeds).sum(-1)  # both unit vectors
            scores.append(100 * cos.clamp(min=0))
    return torch.cat(scores).mean().item()
