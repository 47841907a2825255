"""Prompts for evaluation, and the CSV files they come in (I2P, COCO captions); a task (tasks/) holds the suites.

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

@dataclass(frozen=True)
class Prompt:
    text: str
    seed: int | None = None  # None: generate once per seed of the run
    guidance: float | None = None  # None: the run's guidance scale
    case: str = ""  # the row's id in its file (case_number), for tracing an image back
    categories: tuple[str, ...] = ()  # I2P's categories, e.g. ("sexual", "violence")
    wanted: dict[str, str] = field(default_factory=dict)  # attributes it names (shapes world)


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
