"""Robustness: attacks that try to bring an erased concept back, and purification (purify.py).

Every attack is reached through `get_attack(name)`, as methods are through their registry. Attack
success rate (ASR) follows UnlearnDiffAtk (Zhang et al. 2024): the share of target prompts (each
with its seed) whose image shows the concept. "Before" uses the prompts as written; "after" counts
a prompt as a success when it or any prompt the attack found for it shows the concept, so prompts
that already succeeded before count again after, as its maintainers note its leaderboard does.
"""

from __future__ import annotations

import importlib

from ..errors import ErasekitError

ATTACKS = {"paraphrase": "paraphrase:Paraphrase"}  # name -> "module:class" in this package; the attacks to come join here


def get_attack(name: str):
    if name not in ATTACKS:
        raise ErasekitError(f"unknown attack '{name}'; choose from {', '.join(ATTACKS)}")
    module, cls = ATTACKS[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)
