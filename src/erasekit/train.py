"""The one training loop every fine-tuning method runs: optimiser, checkpoints, resume, NaN guard.

A checkpoint holds the trainable parameters, the optimiser, the step and the random generator
(and, beside it, the teacher bank), so a resumed run ends with the same weights as one that was
never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from .bank import Bank
from .errors import ErasekitError
from .io import atomic_save_torch
from .progress import progress_bar


class TrainingDiverged(ErasekitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_optimizer(config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def _run_identity(method) -> str:
    """What a checkpoint must match to be resumed: method, concepts and every setting but the step count."""
    config = {k: v for k, v in dataclasses.asdict(method.config).items() if k != "steps"}
    return json.dumps({"method": method.name, "concepts": method.concepts, "replacement": method.replacement, "config": config}, sort_keys=True)


def _save_checkpoint(directory: Path, step: int, params: dict[str, torch.nn.Parameter], opt, generator: torch.Generator, run: str, method) -> None:
    state = {
        "run": run,
        "step": step,
        "params": {name: p.detach().cpu().clone() for name, p in params.items()},
        "optimizer": opt.state_dict(),
        "generator": generator.get_state(),
        "method": {k: v.detach().cpu().clone() for k, v in method.extra_state().items()},
    }
    atomic_save_torch(state, directory / "state.pt")


def train(method, names: list[str], generator: torch.Generator, checkpoint_dir: Path | None = None,
          checkpoint_every: int = 50, resume: bool = False, progress: bool = True) -> list[dict[str, float]]:
    """Prepare `method` (or restore it from `checkpoint_dir`), then run its steps on the parameters `names`.

    Returns the loss terms of every step run in this call.
    """
    unet, config = method.unet, method.config
    unet.requires_grad_(False)
    params = {name: p for name, p in unet.named_parameters() if name in set(names)}
    for p in params.values():
        p.requires_grad_(True)
    opt = make_optimizer(config, list(params.values()))
    method.bind(params)

    state_file = checkpoint_dir / "state.pt" if checkpoint_dir else None
    bank_file = checkpoint_dir / "bank.safetensors" if checkpoint_dir else None
    start = 0
    run = _run_identity(method)
    if resume:
        if state_file is None or not state_file.is_file():
            raise ErasekitError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
        state = torch.load(state_file, weights_only=True)
        if state["run"] != run:
            raise ErasekitError(f"the checkpoint in {checkpoint_dir} is of another run (method, concepts or settings differ): resume with the same ones")
        if bank_file.is_file():
            method.bank = Bank.load(bank_file)
        else:
            method.prepare(generator, progress)  # student sampling: only the frozen copy, drawn from the base weights
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        method.load_extra_state(state["method"])
        start = state["step"]
    else:
        method.prepare(generator, progress)
        if checkpoint_dir is not None:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if method.bank is not None:
                method.bank.save(bank_file)
            _save_checkpoint(checkpoint_dir, 0, params, opt, generator, run, method)

    history = []
    last_saved = start
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"erase ({method.name})", total=config.steps, completed=start, info="")
        for step in range(start, config.steps):
            batch = method.draw(generator)
            loss, terms = method.loss(batch)
            if not math.isfinite(loss.item()):
                where = f"the last good checkpoint (step {last_saved}) is in {checkpoint_dir}" if checkpoint_dir else "no checkpoint was kept"
                raise TrainingDiverged(f"loss became {loss.item()} at step {step}: training stopped; {where}. Lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step()
            history.append(terms)
            bar.update(task, advance=1, info="  ".join(f"{k} {v:.4g}" for k, v in terms.items()))
            done = step + 1
            if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == config.steps):
                _save_checkpoint(checkpoint_dir, done, params, opt, generator, run, method)
                last_saved = done
    unet.requires_grad_(False)
    return history
