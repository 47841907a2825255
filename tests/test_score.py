"""Scoring: the prompt grid, the agreement arithmetic, and the shipped model against its bar."""

import json

import pytest
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.shapes.score import agreement, scoring_prompts
from erasekit.shapes.world import COLOURS, SHAPES, TEXTURES


def test_prompt_grid_covers_every_combination_once():
    prompts = scoring_prompts()
    assert len(prompts) == len(SHAPES) * len(COLOURS) * len(TEXTURES)
    assert len({p for p, _ in prompts}) == len(prompts)
    assert ("a red striped circle", {"shape": "circle", "colour": "red", "texture": "striped"}) in prompts


def test_agreement_counts_matches_per_attribute():
    wanted = [{"shape": "circle", "colour": "red"}, {"shape": "star", "colour": "blue"}, {"shape": "star", "colour": "red"}, {"shape": "cross", "colour": "red"}]
    predicted = {"shape": ["circle", "star", "circle", "circle"], "colour": ["red", "blue", "red", "red"]}
    assert agreement(predicted, wanted) == {"shape": 0.5, "colour": 1.0}


@pytest.mark.slow
def test_score_command_on_the_shipped_model_meets_the_bar():
    result = CliRunner().invoke(app, ["shapes", "score", "--json", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the progress bar goes to stderr
    assert report["n_images"] == 108 and len(report["per_image"]) == 108
    # The shapes world's bars. Over 2 seeds the shipped model scores shape 97%, colour and texture 100%.
    assert report["agreement"]["shape"] >= 0.9
    assert report["agreement"]["colour"] >= 0.9
    assert report["agreement"]["texture"] >= 0.8
