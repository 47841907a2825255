"""The one training loop every fine-tuning method runs: optimiser, precision, checkpoints, resume, NaN guard.

It trains the denoiser's parameters a preset names and, with a text-encoder preset, the text
encoders' (presets.py): their prompts are then encoded afresh at every step (methods.base.Prompts).

The trained parameters are float32 masters (erase() makes them so) and the frozen rest of the
UNet stays in the compute dtype; the bank's passes and every step run under autocast, with loss
scaling in float16 (precision.py). A checkpoint holds the trainable parameters, the optimiser,
the loss scaler, the step, the losses so far and the random generator (and, beside it, the teacher bank), so a
resumed run ends with the same weights as one that was never interrupted.

Early stopping (a method's `early_stopping`, the settings `check_every` and `min_gain`): every few
steps the erasing loss is taken on held-out trajectories, and training stops once it has
`plateaued`; the best loss so far and whether it stopped are checkpointed too, so a resumed run
stops where the uninterrupted one did.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from .bank import Bank
from .errors import ErasekitError
from .io import atomic_dir, atomic_save_torch
from .presets import of_text_encoder, pipeline_parameters
from .precision import autocast, dtype_name, grad_scaler, scaled_step
from .progress import progress_bar


class TrainingDiverged(ErasekitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_optimizer(config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)


def _run_identity(method, identity: dict) -> dict:
    """What a checkpoint must match to be resumed: method, concepts, every setting but the step
    count, the compute dtype, and `identity` (erase() adds the seed and the base UNet's fingerprint)."""
    config = {k: v for k, v in dataclasses.asdict(method.config).items() if k != "steps"}
    run = {"method": method.name, "concepts": method.concepts, "replacement": method.replacement, "config": config,
           "dtype": dtype_name(method.dtype), **identity}
    return json.loads(json.dumps(run))  # as a checkpoint reads it back: tuples become lists


def _differences(saved: dict, run: dict) -> list[str]:
    """The fields in which two run identities differ, named for the user (config fields by their own name)."""
    fields = []
    for key in sorted(set(saved) | set(run)):
        if key == "config" and isinstance(saved.get(key), dict):
            fields += [k for k in sorted(set(saved[key]) | set(run[key])) if saved[key].get(k) != run[key].get(k)]
        elif saved.get(key) != run.get(key):
            fields.append(key)
    return fields


def plateaued(best: float, value: float, min_gain: float) -> bool:
    """Early stopping's rule: the held-out loss `value` fell by less than `min_gain` of the `best` before it (or rose)."""
    return value > best * (1 - min_gain)


# What `prepare` computed that a checkpoint keeps beside its state: each a method attribute, saved as <name>.safetensors.
BANKS = ("bank", "held_out", "kept_bank")


def _save_checkpoint(directory: Path, step: int, params: dict[str, torch.nn.Parameter], opt, scaler, generator: torch.Generator, run: dict, method,
                     history: list[dict[str, float]], best: float, stopped: bool) -> None:
    state = {
        "run": json.dumps(run, sort_keys=True),
        "step": step,
        "history": json.dumps(history),
        "params": {name: p.detach().cpu().clone() for name, p in params.items()},
        "optimizer": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "generator": generator.get_state(),
        "method": {k: v.detach().cpu().clone() for k, v in method.extra_state().items()},
        "held_out_best": best,
        "stopped": stopped,
    }
    atomic_save_torch(state, directory / "state.pt")


def _resumable(checkpoint_dir: Path | str, steps: int) -> dict:
    """The checkpoint's state, refused in one line where there is none or it has done more than `steps`."""
    state_file = Path(checkpoint_dir) / "state.pt"
    if not state_file.is_file():
        raise ErasekitError(f"nothing to resume: no checkpoint in {checkpoint_dir}")
    state = torch.load(state_file, weights_only=True)
    if state["step"] > steps:
        raise ErasekitError(f"the checkpoint in {checkpoint_dir} has done {state['step']} steps, more than the {steps} asked for: "
                            f"resume with --steps {state['step']} or more, or start afresh without --resume")
    return state


def checkpoint_step(checkpoint_dir: Path | str, steps: int) -> int:
    """The step a checkpoint holds, refused in one line where there is none or it is past `steps`."""
    return _resumable(checkpoint_dir, steps)["step"]


def _diverged(loss: float, step: int, dtype: torch.dtype, where: str) -> TrainingDiverged:
    if dtype == torch.float32:
        return TrainingDiverged(f"loss became {loss} at step {step}: training stopped; {where}. Lower the learning rate")
    return TrainingDiverged(
        f"loss became {loss} at step {step} computing in {dtype_name(dtype)}: training stopped; {where}. "
        f"Half precision can overflow: retry with --dtype {'bf16' if dtype == torch.float16 else 'fp32'}, or lower the learning rate"
    )


def train(method, names: list[str], generator: torch.Generator, checkpoint_dir: Path | None = None,
          checkpoint_every: int = 50, resume: bool = False, progress: bool = True, identity: dict | None = None) -> list[dict[str, float]]:
    """Prepare `method` (or restore it from `checkpoint_dir`), then run its steps on the parameters `names`.

    The parameters `names` must already be float32 masters; `method.dtype` is the compute dtype.
    Returns the loss terms of every step, those before a resumed checkpoint included.
    """
    config = method.config
    everything = pipeline_parameters(method.pipe)
    for p in everything.values():
        p.requires_grad_(False)
    params = {name: everything[name] for name in names}
    for p in params.values():
        p.requires_grad_(True)
    text_trains = any(of_text_encoder(name, method.pipe) for name in names)
    opt = make_optimizer(config, list(params.values()))
    device, dtype = method.device, method.dtype
    scaler = grad_scaler(device, dtype)
    method.bind(params)

    every, min_gain = method.early_stopping()
    start, best, stopped = 0, math.inf, False
    run = _run_identity(method, identity or {})
    history = []
    if resume:
        state = _resumable(checkpoint_dir, config.steps)
        saved = json.loads(state["run"])
        if saved != run:
            raise ErasekitError(f"the checkpoint in {checkpoint_dir} is of another run ({', '.join(_differences(saved, run))} differ): resume with the same ones, or start afresh without --resume")
        if (checkpoint_dir / "bank.safetensors").is_file():
            for name in BANKS:
                if (checkpoint_dir / f"{name}.safetensors").is_file():
                    setattr(method, name, Bank.load(checkpoint_dir / f"{name}.safetensors"))
        else:
            with autocast(device, dtype):
                method.prepare(generator, progress)  # student sampling: only the frozen copy, drawn from the base weights
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["params"][name])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        method.load_extra_state(state["method"])
        start, best, stopped = state["step"], state.get("held_out_best", math.inf), state.get("stopped", False)
        history = json.loads(state.get("history", "[]"))
    else:
        with autocast(device, dtype):
            method.prepare(generator, progress)
            if every:
                best = method.held_out_loss()  # before any step: the first check must fall below it
        if checkpoint_dir is not None:
            with atomic_dir(checkpoint_dir) as tmp:  # the banks and the first state together, or neither
                for name in BANKS:
                    if getattr(method, name) is not None:
                        getattr(method, name).save(tmp / f"{name}.safetensors")
                _save_checkpoint(tmp, 0, params, opt, scaler, generator, run, method, history, best, stopped)

    last_saved = start
    method.train_text(text_trains)  # after `prepare`: the bank's targets are the frozen encoders' own
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"erase ({method.name})", total=config.steps, completed=start, info="")
        for step in range(start, start if stopped else config.steps):  # a run that stopped early is done
            with autocast(device, dtype):
                batch = method.draw(generator)
                loss, terms = method.loss(batch)
            if not math.isfinite(loss.item()):
                where = f"the last good checkpoint (step {last_saved}) is in {checkpoint_dir}" if checkpoint_dir else "no checkpoint was kept"
                raise _diverged(loss.item(), step, dtype, where)
            scaled_step(opt, scaler, loss)
            method.after_step()
            done = step + 1
            if every and done % every == 0:
                with autocast(device, dtype):
                    terms["held_out"] = method.held_out_loss()
                stopped = plateaued(best, terms["held_out"], min_gain)
                best = min(best, terms["held_out"])
            history.append(terms)
            bar.update(task, advance=1, info="  ".join(f"{k} {v:.4g}" for k, v in terms.items()) + ("  held-out loss levelled off: stopped" if stopped else ""))
            if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == config.steps or stopped):
                _save_checkpoint(checkpoint_dir, done, params, opt, scaler, generator, run, method, history, best, stopped)
                last_saved = done
            if stopped:
                break
    method.train_text(False)
    for p in params.values():
        p.requires_grad_(False)
    return history
