"""The shapes classifier: tells which shape, colour and texture an image shows.

It is the shapes world's detector (the stand-in for NudeNet or an ImageNet classifier) and its
feature extractor for FID/KID. Weights are stored as safetensors beside a small JSON config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from .world import ATTRIBUTES, IMAGE_SIZE

FEATURE_DIM = 128


class ShapesClassifier(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, FEATURE_DIM)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(in_ch, len(values)) for name, values in ATTRIBUTES.items()})
        self.widths = widths

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features of images in [-1, 1], shape (B, 3, 64, 64) -> (B, FEATURE_DIM)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


def to_tensor(images, size: int | None = IMAGE_SIZE) -> torch.Tensor:
    """PIL images, a uint8 array (B, H, W, 3) or a float tensor in [-1, 1] -> float tensor (B, 3, size, size).

    `size=None` keeps the input's size (arrays and tensors only).
    """
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        if isinstance(images, np.ndarray):
            arr = images
        else:
            arr = np.stack([np.asarray(im.convert("RGB").resize((size or IMAGE_SIZE,) * 2, Image.Resampling.BILINEAR)) for im in images])
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if size is not None and x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@dataclass
class Prediction:
    """Per-attribute predicted names and class probabilities for a batch."""

    labels: dict[str, list[str]]
    probs: dict[str, torch.Tensor]


class Detector:
    """A trained classifier ready for inference: `predict(images)` and `features(images)`."""

    def __init__(self, model: ShapesClassifier):
        self.model = model.eval()

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> Prediction:
        x = to_tensor(images)
        logits: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
        for chunk in x.split(batch_size):
            for name, out in self.model(chunk).items():
                logits[name].append(out)
        probs = {name: torch.cat(v).softmax(-1) for name, v in logits.items()}
        labels = {name: [ATTRIBUTES[name][i] for i in p.argmax(-1).tolist()] for name, p in probs.items()}
        return Prediction(labels=labels, probs=probs)

    @torch.no_grad()
    def features(self, images, batch_size: int = 256) -> torch.Tensor:
        x = to_tensor(images)
        return torch.cat([self.model.features(chunk) for chunk in x.split(batch_size)])


def save_classifier(model: ShapesClassifier, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "classifier.safetensors"))
    (directory / "classifier.json").write_text(json.dumps({"widths": list(model.widths), "attributes": ATTRIBUTES}, indent=2))


def load_classifier(directory: Path | str | None = None) -> Detector:
    """Load the shapes classifier (default: the one shipped with erasekit)."""
    if directory is None:
        from ..assets import builtin_classifier_dir

        directory = builtin_classifier_dir()
    directory = Path(directory)
    if not (directory / "classifier.safetensors").is_file():
        from ..errors import ErasekitError

        raise ErasekitError(f"no shapes classifier in {directory} (classifier.safetensors and classifier.json)")
    config = json.loads((directory / "classifier.json").read_text())
    model = ShapesClassifier(tuple(config["widths"]))
    model.load_state_dict(load_file(str(directory / "classifier.safetensors")))
    return Detector(model)
