"""The shipped shapes classifier: accurate on fresh renders, one answer whatever the input type."""

import numpy as np
import torch
from PIL import Image

from erasekit.shapes.classifier import FEATURE_DIM, to_tensor
from erasekit.shapes.world import ATTRIBUTES, render_dataset


def test_accuracy_on_held_out_renders_is_at_least_98_percent(detector):
    images, labels = render_dataset(600, seed=987_654)  # a seed the training set never used
    predicted = detector.predict(images).labels
    for attribute in ATTRIBUTES:
        accuracy = np.mean([p == getattr(lab, attribute) for p, lab in zip(predicted[attribute], labels)])
        assert accuracy >= 0.98, (attribute, accuracy)


def test_pil_array_and_tensor_inputs_agree(detector):
    images, _ = render_dataset(8, seed=5)
    pil = [Image.fromarray(im) for im in images]
    from_pil = detector.predict(pil)
    from_tensor = detector.predict(to_tensor(images))
    assert from_pil.labels == from_tensor.labels
    for name, probs in from_pil.probs.items():
        assert probs.shape == (8, len(ATTRIBUTES[name]))
        assert torch.allclose(probs.sum(-1), torch.ones(8), atol=1e-5)
    assert detector.features(pil).shape == (8, FEATURE_DIM)
