"""Every method erasekit has, in one place. Adding a method: one file in this folder, one line here.

Modules load on first use, so listing the methods (the CLI's help) does not import torch.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import ErasekitError

REGISTRY = {  # name: (module in this folder, class)
    "abo": ("abo", "Abo"),
    "esd-x": ("esd", "EsdX"),
    "esd-u": ("esd", "EsdU"),
    "esd-all": ("esd", "EsdAll"),
    "esd-x-strict": ("esd", "EsdXStrict"),
    "sdd": ("sdd", "Sdd"),
    "ablating": ("ablating", "Ablating"),
    "fmn": ("fmn", "Fmn"),
    "uce": ("uce", "Uce"),
    "rece": ("uce", "Rece"),
    "neg-prompt": ("neg_prompt", "NegativePrompt"),
    "sld": ("sld", "Sld"),
}


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str):
    """The class of method `name`; an unknown name is refused in one line."""
    if name not in REGISTRY:
        raise ErasekitError(f"unknown method '{name}'; choose from {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name]
    return getattr(import_module(f".{module}", __name__), cls)
