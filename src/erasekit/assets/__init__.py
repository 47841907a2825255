"""Files shipped inside the package: the shapes-world pipeline and its classifier."""

from pathlib import Path

ASSETS = Path(__file__).parent


def builtin_pipeline_dir() -> Path:
    return ASSETS / "shapes-world"


def builtin_classifier_dir() -> Path:
    return ASSETS / "shapes-classifier"
