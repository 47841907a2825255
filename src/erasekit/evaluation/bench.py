"""bench(): erase and evaluate a method x concept matrix, and write a Table-1-style report.

Each concept is measured through its task (tasks/: prompts, detector, paraphrases), so the same
matrix runs on the built-in world and on a real model.

Each cell (one method, one concept) is trained, applied and evaluated with the same prompts and
seeds, and stored in its own folder named by a hash of everything that determines it, so a
re-run reuses finished cells and only computes what changed. The base model's images are
generated once per concept and shared by all its cells.
"""

from __future__ import annotations

import hashlib
import html
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image

from ..api import Sampling
from ..errors import ErasekitError
from ..images import make_grid
from ..attacks import get_attack
from ..methods import get_method
from ..io import atomic_save_image, atomic_write_text
from ..precision import dtype_name, resolve_device, resolve_dtype
from .evaluate import processes
from .report import markdown_text
from ..families import denoiser_of



@dataclass
class BenchSettings:
    model: str = "builtin"
    sampling: Sampling = Sampling()  # how every cell's images, and the attacks', are drawn
    prompts: str | None = None  # the task's suites evaluated (None: its target, related and unrelated), or a CSV file
    task: str = "shapes"  # what each concept is measured by (tasks.load_task)
    clip: str | None = None  # a CLIP model for tasks whose detector is CLIP
    train_seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    attack_restarts: int = 1  # runs of each optimising attack, pooled (attacks.pooled); not part of a cell's key, only of its attacks'


def route_settings(methods: list[str], settings: dict) -> dict[str, dict]:
    """The CLI's --set pairs per method: "abo.lam" goes to abo, a bare "steps" to every listed method
    that has that setting (or, for "preset", that preset); a bare key no listed method takes is refused."""
    per_method: dict[str, dict] = {m: {} for m in methods}
    for key, value in settings.items():
        name, _, field_name = key.rpartition(".")
        targets = [name] if name else [m for m in methods if get_method(m).accepts(field_name, value)]
        if not targets:
            raise ErasekitError(f"--set {key}: none of the methods {', '.join(methods)} has that setting")
        for m in targets:
            per_method.setdefault(m, {})[field_name] = value
    return per_method


def _resolved(method: str, method_settings: dict) -> dict:
    """A method's whole config (defaults filled in), so that changed defaults change a cell's key."""
    if method == "base":
        return method_settings
    config = get_method(method).make_config(**{k: v for k, v in method_settings.items() if k != "replacement"})
    return asdict(config) | {"replacement": method_settings.get("replacement")}


def cell_key(method: str, concept: str, method_settings: dict, settings: BenchSettings, base_unet: str) -> str:
    """A short hash of everything that determines a cell's numbers: the method's whole config and the
    base model's weights (`base_unet`, its fingerprint) included, so neither new defaults nor a
    retrained model ever reuse another's cells."""
    from .. import __version__

    measured = {k: v for k, v in asdict(settings).items() if k != "attack_restarts"}  # the attacks' folders carry their restarts
    blob = json.dumps([method, concept, _resolved(method, method_settings), measured, base_unet, __version__],
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _sample_indices(evaluation) -> dict[str, list[int]]:
    """The images shown in the grids: seed 0 of up to three prompts per suite."""
    from .report import sample_rows

    return {name: sample_rows(jobs, 3, 1)[0] for name, jobs in evaluation.jobs.items()}


def _save_samples(folder: Path, evaluation, which: str) -> None:
    for name, picked in _sample_indices(evaluation).items():
        for k, i in enumerate(picked):
            atomic_save_image(evaluation.images[name][which][i], folder / "samples" / f"{name}-{k}.png")


def _sample_paths(folder: Path) -> list[Path]:
    return sorted((folder / "samples").glob("*.png"))


def _load_samples(folder: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in _sample_paths(folder)]


@dataclass
class Base:
    """The model every cell is compared with: its pipeline, its UNet's fingerprint (hashed once, not
    per cell) and its images per concept, filled by the first computed cell of each concept."""

    pipe: object
    fingerprint: str
    images: dict = field(default_factory=dict)

    @classmethod
    def load(cls, source: str, device: str = "auto", dtype: str = "auto") -> "Base":
        from ..model import load_pipeline, unet_fingerprint

        pipe = load_pipeline(source, device, dtype)
        return cls(pipe, unet_fingerprint(denoiser_of(pipe)))


def measure(settings: BenchSettings, concept: str):
    """The concept's task and its detector, as the bench's settings name them."""
    from ..tasks import load_task

    task = load_task(settings.task, concept)
    return task, task.make_detector(clip=settings.clip)


def run_cell(out: Path, method: str, task, method_settings: dict, settings: BenchSettings, detector, base: Base, progress: bool,
             attacks: tuple[str, ...] = (), shard: bool = True) -> dict:
    """Train (unless inference-time), evaluate, attack and store one cell of `task`'s concept; reuse what is already there.
    shard: split its images over the processes of an `accelerate launch` (evaluate's `shard`)."""
    from ..model import load_pipeline
    from .evaluate import evaluate

    concept = task.concept
    folder = out / "cells" / f"{method}-{concept}-{cell_key(method, concept, method_settings, settings, base.fingerprint)}"
    base_folder = out / "cells" / f"base-{concept}-{cell_key('base', concept, {}, settings, base.fingerprint)}"
    result_file = folder / "result.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if attacks:
            def erased_again():
                if (folder / "erasure.safetensors").exists():
                    from ..erasure_file import load_erasure

                    pipe = load_pipeline(settings.model, settings.device, settings.dtype)
                    load_erasure(pipe, folder / "erasure.safetensors")
                    return pipe
                return get_method(method).sampler(base.pipe, None, concept, method_settings, settings.train_seed, None, progress)

            result["attacks"] = attack_cell(out, folder, erased_again, task, detector, settings, base, attacks, None, progress)
        return result

    started = time.perf_counter()
    erased = get_method(method).sampler(base.pipe, lambda: load_pipeline(settings.model, settings.device, settings.dtype), concept,
                                        method_settings, settings.train_seed, folder / "erasure.safetensors", progress)
    train_s = time.perf_counter() - started
    suites = task.select(settings.prompts)
    evaluation = evaluate(
        base.pipe, erased, task, suites, detector, settings.sampling, replacement=method_settings.get("replacement"),
        base_images=base.images.get(concept), progress=progress, shard=shard,
    )
    if concept not in base.images:
        base.images[concept] = {name: evaluation.images[name]["base"] for name in suites}
        _save_samples(base_folder, evaluation, "base")
    _save_samples(folder, evaluation, "erased")
    result = {"method": method, "concept": concept, "task": task.name, "attribute": getattr(task, "attribute", None), "method_settings": method_settings, "train_s": round(train_s, 1),
              "cell": folder.name, "base_cell": base_folder.name, "process": processes().process_index, "evaluation": evaluation.as_dict()}
    atomic_write_text(result_file, json.dumps(result, indent=2))
    if attacks:
        target = evaluation.images["target"]["erased"] if "target" in suites else None
        result["attacks"] = attack_cell(out, folder, lambda: erased, task, detector, settings, base, attacks, target, progress)
    return result


def attack_cell(out: Path, folder: Path, erased, task, detector, settings: BenchSettings, base: Base, attacks: tuple[str, ...],
                target_images: list | None, progress: bool) -> dict[str, dict]:
    """Each attack against one cell's model (`erased()` builds it) on the task's target prompts and the
    bench's seeds, judged by `detector`, cached per attack in <cell>/attacks/<attack>-<key>/ (attack.json,
    successes.png, learned tokens). A model-agnostic attack's prompts are found once per concept and kept in out/cells/."""
    from ..attacks import Found, get_attack, restarts_of, run_attack, successes_grid

    concept, sampling = task.concept, settings.sampling
    prompts = task.target_texts()
    results, pipe, before = {}, None, None
    for name in attacks:
        attack = get_attack(name)
        restarts = restarts_of(attack, settings.attack_restarts)
        key = attack.key() + (f"-x{restarts}" if restarts > 1 else "")
        where = folder / "attacks" / f"{name}-{key}"
        if (where / "attack.json").exists():
            results[name] = json.loads((where / "attack.json").read_text())
            continue
        pipe = pipe or erased()
        if before is None:
            images = target_images or sampling.generate(pipe, sampling.jobs(prompts))
            before = detector.detect(images, concept).flags
        any_seed = cell_key("base", concept, {}, replace(settings, train_seed=0), base.fingerprint)
        shared = out / "cells" / f"found-{name}-{concept}-{key}-{any_seed}.json"
        found = Found.from_json(json.loads(shared.read_text())) if attack.model_agnostic and shared.exists() else None
        result = run_attack(name, pipe, concept, prompts, detector, sampling=sampling, base=base.pipe, before=before,
                            progress=progress, found=found, restarts=restarts, **task.attack_options(name))
        if attack.model_agnostic and found is None:
            atomic_write_text(shared, json.dumps(result.tried.to_json()))
        grid = successes_grid(base.pipe, pipe, result, sampling, n=4)
        if grid is not None:
            atomic_save_image(grid, where / "successes.png")
        shown = {"successes": str((where / "successes.png").relative_to(out))} if grid is not None else {}
        result.save(where, {"detector": detector.name} | shown)
        results[name] = json.loads((where / "attack.json").read_text())
    return results


def check_bench(methods: list[str], concepts: list[str], settings: BenchSettings, method_settings: dict[str, dict],
                attacks: tuple[str, ...] = ()) -> BenchSettings:
    """Refuse any bad method, concept, setting or count in one line before any work; returns the
    settings with device and dtype resolved (so a cell computed on the CPU in fp32 is never
    reused for bf16 on a GPU)."""
    from ..tasks import load_task

    if not methods or not concepts:
        raise ErasekitError("bench needs at least one method and one concept")
    if not settings.sampling.seeds:
        raise ErasekitError("bench needs at least one evaluation seed")
    settings.sampling.check()
    for m in methods:
        _resolved(m, method_settings.get(m, {}))  # unknown methods and bad settings are refused here
    for c in concepts:
        task = load_task(settings.task, c)  # unknown concepts and tasks are refused here
        task.select(settings.prompts)
        if "paraphrase" in attacks:
            get_attack("paraphrase").check_prompts(task.target_texts(), task.concept, **task.attack_options("paraphrase"))
    from ..attacks import check_attack, restarts_of

    for a in attacks:
        check_attack(a, None, base=True, restarts=restarts_of(get_attack(a), settings.attack_restarts))
    device = resolve_device(settings.device)
    return replace(settings, device=str(device), dtype=dtype_name(resolve_dtype(settings.dtype, device)))


def bench(out: Path | str, methods: list[str], concepts: list[str], settings: BenchSettings | None = None,
          method_settings: dict[str, dict] | None = None, progress: bool = True, attacks: tuple[str, ...] = ()) -> list[dict] | None:
    """Run every method on every concept (cached per cell) and write bench.md, bench.html, plots and grids.

    attacks: names of attacks (erasekit.attacks) to run against every cell on the target prompts, and
    against the unerased model once per concept (the sanity rows, `base_attacks` in each row).
    Under `accelerate launch` (GPUs, or CPU processes) whole cells are spread over the processes;
    rank 0 gathers them and writes the report, and the other processes return None.
    """
    settings = check_bench(methods, concepts, settings or BenchSettings(), method_settings or {}, attacks)
    state = processes()  # before any model loads: each process of a multi-GPU launch on its own GPU
    if state.num_processes == 1:
        rows = list(bench_cells(Path(out), methods, concepts, settings, method_settings or {}, progress, attacks))
    else:
        rows = spread_cells(Path(out), methods, concepts, settings, method_settings or {}, progress and state.is_main_process, attacks, state)
        if not state.is_main_process:
            return None
    write_bench_report(Path(out), rows, settings)
    return rows


Unit = tuple[str, str | None]  # (concept, method): a cell, or with method None the attacks' sanity row on the unerased model


def units_of(methods: list[str], concepts: list[str], attacks: tuple[str, ...]) -> list[Unit]:
    """bench's work in order: per concept, the sanity row first (when attacking), then a cell per method."""
    return [(concept, method) for concept in concepts for method in ([None] if attacks else []) + list(methods)]


def compute(out: Path, units: list[Unit], settings: BenchSettings, method_settings: dict[str, dict], progress: bool,
            attacks: tuple[str, ...], shard: bool = True):
    """Each unit's result, in order, as soon as it is computed or reused: (concept, method, result)."""
    base = Base.load(settings.model, settings.device, settings.dtype)
    measured = {}
    for concept, method in units:
        if concept not in measured:
            measured[concept] = measure(settings, concept)
        task, detector = measured[concept]
        if method is None:  # an attack must reach the concept on the unerased model, or its numbers prove nothing
            folder = out / "cells" / f"base-{concept}-{cell_key('base', concept, {}, replace(settings, train_seed=0), base.fingerprint)}"
            yield concept, None, attack_cell(out, folder, lambda: base.pipe, task, detector, settings, base, attacks, None, progress)
        else:
            yield concept, method, run_cell(out, method, task, method_settings.get(method, {}), settings, detector, base, progress, attacks, shard)


def bench_cells(out: Path, methods: list[str], concepts: list[str], settings: BenchSettings, method_settings: dict[str, dict],
                progress: bool = True, attacks: tuple[str, ...] = ()):
    """bench's cells in one process, each yielded as soon as it is computed or reused, without the
    report (settings as `check_bench` returns them)."""
    sanity = {}
    for concept, method, result in compute(out, units_of(methods, concepts, attacks), settings, method_settings, progress, attacks):
        if method is None:
            sanity[concept] = result
        else:
            yield result | ({"base_attacks": sanity[concept]} if attacks else {})


def spread_cells(out: Path, methods: list[str], concepts: list[str], settings: BenchSettings, method_settings: dict[str, dict],
                 progress: bool, attacks: tuple[str, ...], state) -> list[dict]:
    """bench's cells over the processes of an accelerate launch: process k computes units k, k + n, ...
    whole (training, images and attacks), and every process gets every row, in bench_cells' order."""
    from accelerate.utils import gather_object

    units = units_of(methods, concepts, attacks)
    mine = {(c, m): r for c, m, r in compute(out, units[state.process_index::state.num_processes], settings, method_settings, progress, attacks, shard=False)}
    done = {unit: result for part in gather_object([mine]) for unit, result in part.items()}
    return [done[(c, m)] | ({"base_attacks": done[(c, None)]} if attacks else {}) for c, m in units if m is not None]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _target_cell(target: dict | None, replacement: str | None) -> str:
    if not target:
        return "—"
    text = f"{_pct(target['detected_base'])} → {_pct(target['detected'])}"
    return text + (f" ({replacement}: {_pct(target['replacement'])})" if replacement else "")


def _fid_kid(base: dict, erased: dict) -> str:
    if not erased:
        return "—"
    if not base:  # the base model itself was the reference
        return f"{erased['fid']:.1f} / {erased['kid']:.3f}"
    return f"{base['fid']:.1f} → {erased['fid']:.1f} / {base['kid']:.3f} → {erased['kid']:.3f}"


def table_rows(rows: list[dict]) -> list[list[str]]:
    """The report's table, one list of cells per (method, concept)."""
    table = []
    for r in rows:
        suites = r["evaluation"]["suites"]
        target, related, unrelated = suites.get("target"), suites.get("related"), suites.get("unrelated")
        attribute = r.get("attribute")  # shapes world: the attribute related prompts are aligned on
        dist = r["evaluation"].get("distribution") or {}
        base, erased = dist.get("base") or {}, dist.get("erased") or {}
        timing = r["evaluation"]["timing"]
        table.append([
            r["method"], r["concept"],
            _target_cell(target, r["method_settings"].get("replacement")),
            f"{_pct(related['alignment_base'][attribute])} → {_pct(related['alignment'][attribute])}" if related and related["alignment"] and attribute else "—",
            " / ".join(f"{a} {_pct(unrelated['alignment'][a])}" for a in unrelated["alignment"]) if unrelated and unrelated["alignment"] else "—",
            f"{related['ssim']:.3f}" if related else "—",
            f"{unrelated['ssim']:.3f}" if unrelated else "—",
            _fid_kid(base, erased),
            f"{r['train_s']:.0f} s" if r["train_s"] else "none",
            f"{timing['images_per_s']:.2f}",
        ] + [_asr(a) for a in r.get("attacks", {}).values()])
    return table


def _asr(attack: dict) -> str:
    return f"{_pct(attack['asr_before'])} → {_pct(attack['asr_after'])}"


def attack_lines(rows: list[dict]) -> list[str]:
    """The report's attack section: budgets, the sanity rows, and pictures of successful attacks."""
    if not rows or "attacks" not in rows[0]:
        return []
    detector = rows[0]["evaluation"]["settings"].get("detector", "shapes")
    lines = ["## Attacks", "", f"ASR: share of target prompts x seeds whose image shows the concept (the {detector} detector's verdict); "
             "after counts a prompt that succeeded as written or under the attack.", ""]
    first = rows[0]["attacks"]
    lines += [f"- {name}: {', '.join(f'{k} {v}' for k, v in a['budget'].items() if k != 'paraphrases' or v)}" for name, a in first.items()]
    lines += ["", "Against the unerased model (each attack must reach the concept here, or a low number elsewhere proves nothing):", ""]
    for concept in dict.fromkeys(r["concept"] for r in rows):
        sanity = next(r["base_attacks"] for r in rows if r["concept"] == concept)
        lines.append(f"- {concept}: " + "; ".join(f"{n} {_asr(a)} (its prompts alone {_pct(a['asr_attack_only'])})" for n, a in sanity.items()))
    lines.append("")
    for r in rows:
        for name, a in r["attacks"].items():
            if a.get("successes"):
                lines.append(f"![{r['method']}, {r['concept']}, {name}: base, erased, attacked]({a['successes']})")
    return lines + [""]


HEADER = ["method", "concept", "target detected, base → erased", "same-attribute prompts: alignment, base → erased",
          "unrelated prompts: alignment (erased)", "SSIM to base, related", "SSIM to base, unrelated", "FID / KID, base → erased (non-target prompts)",
          "train time", "eval images/s"]


def scatter_plot(rows: list[dict], path: Path) -> None:
    """Erasure (target detection rate after erasure) against preservation (same-seed SSIM, related prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    concepts = sorted({r["concept"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = "osD^vP*X"
    for r in rows:
        s = r["evaluation"]["suites"]
        if "target" not in s or "related" not in s:
            continue
        x, y = 100 * s["target"]["detected"], s["related"]["ssim"]
        ax.scatter(x, y, marker=markers[concepts.index(r["concept"]) % len(markers)], color=f"C{methods.index(r['method'])}", s=60)
        ax.annotate(f"{r['method']} ({r['concept']})", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("target still detected after erasure (%), lower erases more")
    ax.set_ylabel("SSIM to base, related prompts")
    ax.set_xlim(-5, 105)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def concept_grid(out: Path, concept: str, rows: list[dict]) -> Image.Image:
    """Rows: the base model, then each method; columns: the same prompts and seeds."""
    base_folder = out / "cells" / rows[0]["base_cell"]
    base = _load_samples(base_folder)
    suites = [p.stem.rsplit("-", 1)[0] for p in _sample_paths(base_folder)]  # "related-0" -> "related"
    images, labels = list(base), ["base model"]
    for r in rows:
        images += _load_samples(out / "cells" / r["cell"])
        labels.append(r["method"])
    return make_grid(images, columns=len(base), row_labels=labels, scale=2, column_labels=suites)


BENCH_FILES = ("bench.md", "bench.html", "scatter.png")  # the report's files (with grid-CONCEPT.png and cells/)


def write_bench_report(out: Path, rows: list[dict], settings: BenchSettings) -> None:
    table = table_rows(rows)
    header = HEADER + [f"ASR {name}: before → after" for name in rows[0].get("attacks", {})]
    scatter_plot(rows, out / "scatter.png")
    grids = []
    for concept in dict.fromkeys(r["concept"] for r in rows):
        name = f"grid-{concept}.png"
        atomic_save_image(concept_grid(out, concept, [r for r in rows if r["concept"] == concept]), out / name)
        grids.append((concept, name))

    def intro(model: str) -> str:
        prompts = settings.prompts or "the task's target, related and unrelated"
        text = (f"Model {model} ({settings.dtype} on {settings.device}); task {settings.task}; evaluation: prompts {prompts}, "
                f"seeds {list(settings.sampling.seeds)}, {settings.sampling.steps} sampling steps, guidance {settings.sampling.guidance}; base and erased models from the same seeds. ")
        if settings.task.split(":")[0] == "shapes":
            return text + ("Alignment: the shapes classifier agrees with what the prompt names. FID/KID: shapes-classifier features "
                           "against rendered ground truth for the non-target prompts.")
        return text + "FID/KID: the task's features, against the task's reference images or the base model's, for the non-target prompts."

    md = ["# erasekit bench", "", intro(markdown_text(settings.model)), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in table]
    md += ["", "![erasure vs preservation](scatter.png)", ""] + attack_lines(rows)
    md += [f"## {concept}\n\n![{concept}: base and each method, same seeds]({name})\n" for concept, name in grids]
    atomic_write_text(out / "bench.md", "\n".join(md))

    esc = html.escape
    body = [f"<h1>erasekit bench</h1><p>{esc(intro(settings.model))}</p>", "<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in table]
    body += ["</tbody></table>", '<h2>Erasure vs preservation</h2><img src="scatter.png" alt="erasure vs preservation">']
    body += [f'<h2>{esc(concept)}</h2><img src="{esc(name)}" alt="{esc(concept)}: base and each method">' for concept, name in grids]
    body += [f'<h3>{esc(r["method"])}, {esc(r["concept"])}: {esc(name)}</h3><img src="{esc(a["successes"])}" alt="base, erased, attacked">'
             for r in rows for name, a in r.get("attacks", {}).items() if a.get("successes")]
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    page = f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>erasekit bench</title><style>{style}</style></head><body>\n' + "\n".join(body) + "\n</body></html>\n"
    atomic_write_text(out / "bench.html", page)
