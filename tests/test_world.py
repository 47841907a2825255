"""The shapes world: deterministic rendering, correct colours, captions that name only the truth."""

import numpy as np

from erasekit.shapes.world import COLOURS, RGB, SHAPES, SYNONYMS, TEXTURES, Labels, caption, render, render_dataset


def test_rendering_is_deterministic_per_seed_and_index():
    a, la = render_dataset(6, seed=3)
    b, lb = render_dataset(3, seed=3, start=3)
    assert la[3:] == lb
    assert np.array_equal(a[3:], b)
    c, _ = render_dataset(6, seed=4)
    assert not np.array_equal(a, c)


def test_solid_shape_shows_its_colour():
    rng = np.random.default_rng(0)
    palette = np.array([RGB[c] for c in COLOURS], dtype=float)
    for colour in COLOURS:
        img = np.asarray(render(Labels("circle", colour, "solid", "grey"), rng)).reshape(-1, 3).astype(float)
        saturation = img.max(1) - img.min(1)
        shape_pixels = img[saturation > 80]  # the grey background has no saturation
        assert len(shape_pixels) > 200
        nearest = np.argmin(((palette - shape_pixels.mean(0)) ** 2).sum(1))
        assert COLOURS[nearest] == colour


def test_textures_differ_and_sizes_vary():
    rng = np.random.default_rng(1)
    white_share = {}
    for texture in TEXTURES:
        img = np.asarray(render(Labels("square", "blue", texture, "dark"), rng)).astype(int)
        white_share[texture] = float(((img > 225).all(-1)).mean())
    assert white_share["solid"] < 0.002
    assert white_share["dotted"] > 0.01 and white_share["striped"] > 0.01
    _, labels = render_dataset(200, seed=0)
    assert {lab.shape for lab in labels} == set(SHAPES)


def _concept_of(word_or_phrase: str) -> set[str]:
    return {concept for concept, names in SYNONYMS.items() if word_or_phrase in names}


def test_captions_name_only_true_attributes_and_include_bare_words():
    rng = np.random.default_rng(0)
    _, labels = render_dataset(300, seed=1)
    bare = 0
    for lab in labels:
        text = caption(lab, rng)
        truth = {lab.shape, lab.colour, lab.texture, lab.background}
        named = set()
        for phrases in SYNONYMS.values():
            for phrase in phrases:
                if f" {phrase} " in f" {text.replace(',', ' ')} ":
                    named |= _concept_of(phrase)
        assert named, text
        assert named <= truth, (text, lab)
        bare += text in SYNONYMS[lab.shape] + SYNONYMS[lab.colour] + SYNONYMS[lab.texture]
    assert bare > 10  # users erase bare words: the model must see them
