"""The shapes world: a procedural image distribution whose every concept has ground truth.

Each image shows one shape of one colour with one fill texture on a neutral background, at a
random size, position and rotation. Captions name some or all of these attributes with synonyms
and varied word orders, so that bare words ("circle", "red", "striped") are concepts the model
learns, which is what a user erases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = ("red", "yellow", "green", "cyan", "blue", "purple")
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = ("dark", "grey", "light")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "texture": TEXTURES}

# Hues 60 degrees apart, so that colour is a well-posed attribute for the classifier.
RGB = {
    "red": (215, 40, 40),
    "yellow": (225, 205, 35),
    "green": (40, 175, 55),
    "cyan": (35, 195, 205),
    "blue": (40, 65, 215),
    "purple": (165, 45, 200),
}
BACKGROUND_LEVELS = {"dark": (15, 60), "grey": (95, 150), "light": (185, 240)}

SYNONYMS = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box"),
    "triangle": ("triangle", "pyramid shape"),
    "star": ("star", "five-pointed star"),
    "hexagon": ("hexagon", "six-sided shape"),
    "cross": ("cross", "plus sign"),
    "red": ("red", "crimson", "scarlet"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue", "azure"),
    "purple": ("purple", "violet"),
    "solid": ("solid", "plain", "filled"),
    "striped": ("striped", "stripy", "lined"),
    "dotted": ("dotted", "spotted", "polka-dot"),
    "dark": ("dark", "black"),
    "grey": ("grey", "gray"),
    "light": ("light", "white"),
}

# Words used by the caption templates besides the attribute names and their synonyms.
FILLER_WORDS = ("a", "an", "on", "background", "shape", "something", "with", "in", "the", "of", "drawing", "picture")


@dataclass(frozen=True)
class Labels:
    shape: str
    colour: str
    texture: str
    background: str

    def index(self, attribute: str) -> int:
        return ATTRIBUTES[attribute].index(getattr(self, attribute))


def vocabulary_words() -> list[str]:
    """Every word a caption can contain (used to build the tokenizer's merges)."""
    words = set(FILLER_WORDS)
    for phrases in SYNONYMS.values():
        for phrase in phrases:
            words.update(phrase.replace(",", " ").split())
    return sorted(words)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + k * math.pi / 2 for k in range(4))]
        scale = 0.95  # a square of the same bounding radius looks larger than the others
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        scale = 1.1
    elif shape == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
        scale = 1.0
    elif shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = 1.0 if k % 2 == 0 else 0.42
            pts.append((rad * math.cos(a), rad * math.sin(a)))
        scale = 1.15
    elif shape == "cross":
        w = 0.34
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        scale = 0.95
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + scale * r * (x * ca - y * sa), cy + scale * r * (x * sa + y * ca)) for x, y in pts]


def _texture_mask(texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Where the fill shows white instead of the shape's colour (at render resolution)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    scale = size / IMAGE_SIZE
    if texture == "solid":
        return np.zeros((size, size), dtype=bool)
    if texture == "striped":
        period = rng.uniform(7.0, 9.0) * scale
        theta = rng.choice([math.pi / 4, -math.pi / 4]) + rng.uniform(-0.2, 0.2)
        u = xx * math.cos(theta) + yy * math.sin(theta) + rng.uniform(0, period)
        return (u % period) < period * 0.42
    if texture == "dotted":
        spacing = rng.uniform(7.5, 9.0) * scale
        ox, oy = rng.uniform(0, spacing, size=2)
        dx = (xx + ox) % spacing - spacing / 2
        dy = (yy + oy) % spacing - spacing / 2
        return dx * dx + dy * dy < (0.27 * spacing) ** 2
    raise ValueError(f"unknown texture: {texture}")


def render(labels: Labels, rng: np.random.Generator, supersample: int = 4) -> Image.Image:
    """Draw one 64x64 RGB image of `labels`; size, position, rotation and jitter come from `rng`."""
    big = IMAGE_SIZE * supersample
    lo, hi = BACKGROUND_LEVELS[labels.background]
    level = rng.uniform(lo, hi)
    tint = rng.uniform(-8, 8, size=3)
    ramp = np.linspace(-1, 1, big)[:, None] * rng.uniform(-12, 12)
    background = np.clip(level + tint[None, None, :] + ramp[:, :, None], 0, 255)
    canvas = np.broadcast_to(background, (big, big, 3)).astype(np.float32)

    r = rng.uniform(13, 25) * supersample
    margin = r + 2 * supersample
    cx, cy = rng.uniform(margin, big - margin, size=2)
    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    if labels.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(labels.shape, cx, cy, r, rng.uniform(-0.25, 0.25)), fill=255)
    shape_mask = np.asarray(mask_img) > 0

    colour = np.clip(np.array(RGB[labels.colour], dtype=np.float32) + rng.uniform(-18, 18, size=3), 0, 255)
    fill = np.broadcast_to(colour, (big, big, 3)).copy()
    fill[_texture_mask(labels.texture, big, rng)] = (245, 245, 245)
    canvas = np.where(shape_mask[:, :, None], fill, canvas)

    image = Image.fromarray(canvas.astype(np.uint8), "RGB")
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def random_labels(rng: np.random.Generator) -> Labels:
    return Labels(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(COLOURS)),
        texture=str(rng.choice(TEXTURES)),
        background=str(rng.choice(BACKGROUNDS)),
    )


def _word(concept: str, rng: np.random.Generator) -> str:
    """The concept's own name most of the time, a synonym otherwise."""
    options = SYNONYMS[concept]
    return options[0] if rng.random() < 0.65 or len(options) == 1 else str(rng.choice(options[1:]))


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(labels: Labels, rng: np.random.Generator) -> str:
    """A caption naming a random non-empty subset of the attributes, in one of several forms."""
    named = [a for a in ("shape", "colour", "texture") if rng.random() < 0.75]
    if not named:
        named = [str(rng.choice(["shape", "colour", "texture"]))]
    shape = _word(labels.shape, rng) if "shape" in named else None
    colour = _word(labels.colour, rng) if "colour" in named else None
    texture = _word(labels.texture, rng) if "texture" in named else None

    if len(named) == 1 and rng.random() < 0.5:
        text = shape or colour or texture  # the bare word, as users type it
    elif rng.random() < 0.2 and shape is not None and len(named) > 1:
        text = ", ".join([_article(shape)] + [w for w in (texture, colour) if w])  # "a circle, striped, red"
    else:
        adjectives = [w for w in (colour, texture) if w]
        if len(adjectives) == 2 and rng.random() < 0.5:
            adjectives.reverse()
        text = _article(" ".join(adjectives + [shape or "shape"]))
    if rng.random() < 0.2:
        text += f" on a {_word(labels.background, rng)} background"
    return text


def render_dataset(n: int, seed: int, start: int = 0) -> tuple[np.ndarray, list[Labels]]:
    """Images start..start+n-1 as a uint8 array (n, 64, 64, 3) and their labels; image i depends only on (seed, i)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = []
    for i in range(n):
        rng = np.random.default_rng([seed, start + i])
        lab = random_labels(rng)
        images[i] = np.asarray(render(lab, rng))
        labels.append(lab)
    return images, labels
