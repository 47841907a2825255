"""All-but-One exactly as Algorithm 1 of the paper writes it: the baseline the fast path is timed against.

Per step: draw t ~ U{1..T}, sample x_T ~ N(0, I), run DDIM from T down to t with the frozen
model's guided output (one UNet call per condition, batch 1), then one update of the student from
the loss at x_t. A separate frozen copy of the UNet is held throughout, as in the paper.
The math (guidance, δ, losses) is erasekit's own pure functions, so only the schedule differs.

Precision as erasekit's (precision.py): the frozen copy in the pipeline's dtype, the trained
parameters float32 masters under autocast, loss scaling in float16; in float32 all of it is a no-op.

δ's first instruction, "−c", is the step's own concept: its frozen output is the ε*(x_τ, c) of
line 6, computed once and used in both places (as the fast path does), so that the speed-up is not
inflated by a call a careful implementation would not make. Only a replacement's output is extra.
"""

from __future__ import annotations

import copy

import torch

from erasekit.guidance import Instruction, cfg, explicit_delta
from erasekit.losses import abo_guidance_target, abo_loss
from erasekit.methods.abo import AboConfig, trajectory_for
from erasekit.presets import select_parameters
from erasekit.precision import autocast, cast_parameters, grad_scaler, hold_in_float32, scaled_step
from erasekit.progress import progress_bar
from erasekit.sampling import sampling_scheduler, embed, initial_noise, latent_shape, denoiser_out


def two_unets(pipe, parameters: str):
    """The papers' setup: a frozen copy of the UNet (in its dtype) and the UNet itself as the student,
    its `parameters` preset made float32 masters that train; returns (frozen, student, names, params)."""
    frozen = copy.deepcopy(pipe.unet).requires_grad_(False)
    student = pipe.unet.requires_grad_(False)
    names = select_parameters(student, parameters)
    params = list(hold_in_float32(dict(student.named_parameters()), names).values())
    for p in params:
        p.requires_grad_(True)
    return frozen, student, names, params


def reference_abo(pipe, concept: str, config: AboConfig, replacement: str | None = None, seed: int = 0, progress: bool = True):
    """Train `pipe.unet` in place by Algorithm 1; returns the names of the trained parameters and the loss history."""
    generator = torch.Generator().manual_seed(seed)
    frozen, student, names, params = two_unets(pipe, config.parameters)  # θ* ← θ (line 1)
    device, dtype = student.device, student.dtype
    opt = torch.optim.AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, dtype)
    scheduler = sampling_scheduler(pipe, config.ddim_steps)
    uncond, c = embed(pipe, [""]), embed(pipe, [concept])
    window = dict(kappa=config.kappa, warmup=config.warmup, start=config.window_start, end=config.window_end)
    instructions = [Instruction(concept, -config.erase_scale, **window)]
    replacement_emb = None
    if replacement:
        instructions.append(Instruction(replacement, config.replace_scale, **window))
        replacement_emb = embed(pipe, [replacement])

    def delta(x, tau, i, eps_uncond, eps_concept):  # called under no_grad: the frozen model's side
        eps_instr = [eps_concept]  # "−c": line 6's output at this x_τ
        if replacement_emb is not None:
            eps_instr.append(denoiser_out(frozen, x, tau, replacement_emb))
        return explicit_delta(eps_uncond, eps_instr, instructions, i)

    with_delta = trajectory_for(config, replacement) == "erased"  # "concept" steps x_τ without δ
    history = []
    T = config.ddim_steps
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("reference AbO", total=config.steps, info="")
        for _ in range(config.steps):
            t = int(torch.randint(1, T + 1, (1,), generator=generator))  # t ~ U{1..T} (line 3)
            x = initial_noise(1, latent_shape(pipe), generator, scheduler).to(device)
            stop = T - t  # DDIM steps from τ = T down to τ = t (lines 4-10)
            for i in range(stop):
                tau = scheduler.timesteps[i]
                with torch.no_grad(), autocast(device, dtype):
                    eps_u = denoiser_out(frozen, x, tau, uncond)
                    eps_c = denoiser_out(frozen, x, tau, c)
                    guided = cfg(eps_u, eps_c, config.gamma1)
                    if with_delta:  # line 7
                        guided = guided + delta(x, tau, i, eps_u, eps_c)
                x = scheduler.step(guided, tau, x, eta=0.0).prev_sample
            tau = scheduler.timesteps[stop]
            with torch.no_grad(), autocast(device, dtype):
                eps_u = denoiser_out(frozen, x, tau, uncond)
                eps_c = denoiser_out(frozen, x, tau, c)
                target = abo_guidance_target(eps_c, eps_u, delta(x, tau, stop, eps_u, eps_c), config.gamma1)
            with autocast(device, dtype):
                s_c = denoiser_out(student, x, tau, c)  # lines 11-13
                s_u = denoiser_out(student, x, tau, uncond)
                loss, terms = abo_loss(s_c, s_u, target, eps_u, config.gamma2, config.lam)
            scaled_step(opt, scaler, loss)
            history.append(terms)
            bar.update(task, advance=1, info=f"concept {terms['concept']:.4g} penalty {terms['penalty']:.4g}")
    student.requires_grad_(False)
    cast_parameters(dict(student.named_parameters()), names, dtype)
    return names, history
