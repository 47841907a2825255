"""A whole pipeline as a diffusers folder that both diffusers and ComfyUI's folder loader read.

transformers 5 writes a `CLIPTextModel` without the `text_model.` prefix its keys had in
transformers 4 (and in every SD and SDXL folder on the hub); ComfyUI's diffusers loader looks for
the prefixed keys and finds no text-encoder weights without them. transformers 5 reads either, so
the folder is written with the prefix. (`CLIPTextModelWithProjection`, SDXL's second encoder,
keeps it anyway.)
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .io import atomic_dir

PREFIX = "text_model."


def save_pipeline(pipe, folder: Path | str) -> Path:
    """Write `pipe` into `folder` with save_pretrained, whole and atomically, its CLIP text encoders keyed under `text_model.`."""
    from transformers import CLIPTextModel

    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name, module in pipe.components.items():
            if type(module) is CLIPTextModel:
                prefix_weights(tmp / name)
    return Path(folder)


def prefix_weights(folder: Path) -> None:
    """Key every tensor of the safetensors files in `folder` (and their shard index) under PREFIX."""
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            metadata = f.metadata()
        state = load_file(str(file))
        save_file({_prefixed(k): v for k, v in state.items()}, str(file), metadata=metadata)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {_prefixed(k): v for k, v in data.get("weight_map", {}).items()}
        index.write_text(json.dumps(data, indent=2))


def _prefixed(key: str) -> str:
    return key if key.startswith(PREFIX) else PREFIX + key
