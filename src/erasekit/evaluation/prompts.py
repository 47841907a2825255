"""Prompt sets for evaluation: the shapes world's built-in suites and CSV files (I2P, COCO captions).

A suite is a list of `Prompt`s. A prompt either carries its own seed and guidance (CSV rows, as the
ESD repo's files do, so that every model is judged on the same images) or takes the run's seeds.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ErasekitError
from ..io import read_utf8
from ..shapes.world import ATTRIBUTES
from .shapes import attribute_of, described_prompts, other_prompts, target_prompts

SUITES = ("target", "related", "described", "unrelated")


@dataclass(frozen=True)
class Prompt:
    text: str
    seed: int | None = None  # None: generate once per seed of the run
    guidance: float | None = None  # None: the run's guidance scale
    case: str = ""  # the row's id in its file (case_number), for tracing an image back
    categories: tuple[str, ...] = ()  # I2P's categories, e.g. ("sexual", "violence")
    wanted: dict[str, str] = field(default_factory=dict)  # attributes it names (shapes world)


def shapes_suite(name: str, concept: str) -> list[Prompt]:
    """The shapes world's suites around a concept.

    target: prompts naming the concept; related: prompts naming another value of the same
    attribute (other shapes when erasing "circle"), which an erasure must keep; described: the
    related prompts with the attribute they leave open named too ("a dotted red circle"), so the
    prompt fixes all three; unrelated: prompts naming only the other attributes ("a red shape"),
    where the erased concept may still appear.
    """
    attribute, value = attribute_of(concept)
    if name == "target":
        return [Prompt(text, wanted={attribute: value}) for text in target_prompts(concept)]
    if name == "related":
        return [Prompt(text, wanted=wanted) for text, wanted in other_prompts(concept)]
    if name == "described":
        return [Prompt(text, wanted=wanted) for text, wanted in described_prompts(concept)]
    if name == "unrelated":
        return [
            Prompt(f"a {v}" if other == "shape" else f"a {v} shape", wanted={other: v})
            for other in ATTRIBUTES
            if other != attribute
            for v in ATTRIBUTES[other]
        ]
    raise ErasekitError(f"unknown prompt suite '{name}': use {', '.join(SUITES)} or a CSV file")


# Columns each file format must have; the first format whose columns are all present wins.
CSV_FORMATS = {
    "i2p": ("prompt", "evaluation_seed", "evaluation_guidance", "categories"),
    "coco": ("case_number", "prompt", "evaluation_seed"),
}


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"guidance {value} is not a finite number")
    return value


def load_csv(path: Path | str) -> list[Prompt]:
    """Rows of an I2P-format file (prompt, evaluation_seed, evaluation_guidance, categories) or of the
    ESD repo's COCO captions file (case_number, prompt, evaluation_seed) as prompts."""
    path = Path(path)
    if not path.is_file():
        raise ErasekitError(f"prompt file {path} does not exist")
    with io.StringIO(read_utf8(path), newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        fmt = next((name for name, needed in CSV_FORMATS.items() if set(needed) <= columns), None)
        if fmt is None:
            wanted = " or ".join(f"{name} ({', '.join(needed)})" for name, needed in CSV_FORMATS.items())
            missing = sorted(set(CSV_FORMATS["coco"]) - columns)
            raise ErasekitError(f"{path} lacks the columns of a known format (missing e.g. {', '.join(missing)}); expected {wanted}")
        prompts = []
        for line, row in enumerate(reader, start=2):
            try:
                prompts.append(
                    Prompt(
                        text=row["prompt"].strip(),
                        seed=int(float(row["evaluation_seed"])),
                        guidance=_finite(float(row["evaluation_guidance"])) if row.get("evaluation_guidance") not in (None, "") else None,
                        case=str(row.get("case_number") or line - 2),
                        categories=tuple(c.strip() for c in (row.get("categories") or "").split(",") if c.strip()),
                    )
                )
            except (TypeError, ValueError) as e:
                raise ErasekitError(f"{path}, line {line}: cannot read seed or guidance ({e})") from None
    if not prompts:
        raise ErasekitError(f"{path} has no prompts")
    return prompts


def load_prompts(spec: str, concept: str | None = None) -> dict[str, list[Prompt]]:
    """`spec` is a comma-separated list of suite names (needs `concept`) or a path to a CSV file."""
    if spec.endswith(".csv") or Path(spec).is_file():
        return {Path(spec).stem: load_csv(spec)}
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ErasekitError("no prompts: name suites (target,related,unrelated) or a CSV file")
    if concept is None:
        raise ErasekitError("the built-in suites are built around a concept: pass --concept")
    return {name: shapes_suite(name, concept) for name in names}
