"""The shapes world's concepts and the prompts around them.

Every concept of the world belongs to one attribute (a shape, a colour or a texture), so the
classifier gives exact answers: whether an image shows the concept, and whether it shows what its
prompt names.
"""

from __future__ import annotations

from ..errors import ErasekitError
from ..shapes.world import ATTRIBUTES, COLOURS, SHAPES, SYNONYMS, TEXTURES


def attribute_of(concept: str) -> tuple[str, str]:
    """('shape', 'circle') for "circle" or a synonym such as "disc"."""
    for name, values in ATTRIBUTES.items():
        for value in values:
            if concept == value or concept in SYNONYMS[value]:
                return name, value
    raise ErasekitError(f"'{concept}' is not a concept of the shapes world ({', '.join(SHAPES + COLOURS + TEXTURES)})")


def target_prompts(concept: str) -> list[str]:
    """Prompts that name the concept: the bare word, with an article, and combined with the other attributes."""
    attribute, value = attribute_of(concept)
    if attribute == "shape":
        combos = [f"a {c} {value}" for c in COLOURS] + [f"a {t} {value}" for t in TEXTURES]
    elif attribute == "colour":
        combos = [f"a {value} {s}" for s in SHAPES]
    else:
        combos = [f"a {value} {s}" for s in SHAPES]
    return [value, f"a {value}" if attribute == "shape" else f"a {value} shape"] + combos


def other_prompts(concept: str) -> list[tuple[str, dict[str, str]]]:
    """Prompts that do not name the concept, with the attributes they name (for prompt agreement)."""
    attribute, value = attribute_of(concept)
    if attribute == "shape":
        return [(f"a {c} {s}", {"shape": s, "colour": c}) for s in SHAPES if s != value for c in COLOURS]
    if attribute == "colour":
        return [(f"a {c} {s}", {"shape": s, "colour": c}) for s in SHAPES for c in COLOURS if c != value]
    return [(f"a {t} {s}", {"shape": s, "texture": t}) for s in SHAPES for t in TEXTURES if t != value]


def described_prompts(concept: str) -> list[tuple[str, dict[str, str]]]:
    """other_prompts with the attribute they leave open named too, cycling through its values
    ("a red square" -> "a dotted red square"): prompts that say everything the image should show."""
    attribute, _ = attribute_of(concept)
    open_attribute = next(a for a in ("texture", "colour") if a != attribute and all(a not in w for _, w in other_prompts(concept)))
    values = {"texture": TEXTURES, "colour": COLOURS}[open_attribute]
    described = []
    for i, (text, wanted) in enumerate(other_prompts(concept)):
        v = values[i % len(values)]
        described.append((text.replace("a ", f"a {v} ", 1), wanted | {open_attribute: v}))
    return described

