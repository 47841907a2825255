"""ESD with two UNets, as the ESD repository's scripts are built: the baseline erasekit's memory is compared with.

The ESD repository (esd_sd.py, and train-esd.py before it) loads the UNet twice: a frozen base
copy for the targets and the copy being trained. Each step draws a DDIM step count at random,
samples x_t from noise with guidance (here, as the paper's original loop, with the model being
trained), then takes one update towards the frozen copy's negatively guided output (losses.esd_target,
c_from = ∅). The math is erasekit's own pure functions; only the schedule and the second UNet differ.

Precision as erasekit's (precision.py), so the comparison isolates the structure: the frozen copy in
the pipeline's dtype, the trained parameters float32 masters under autocast, loss scaling in float16.
(esd_sd.py trains its bf16 weights directly; float32 masters cost its student a little more memory.)
"""

from __future__ import annotations

import torch

from erasekit.guidance import cfg
from erasekit.losses import esd_loss, esd_target
from erasekit.methods.esd import EsdConfig
from erasekit.precision import autocast, cast_parameters, grad_scaler, scaled_step
from erasekit.sampling import run_sampler, sampling_scheduler, embed, initial_noise, latent_shape, denoiser_out
from reference_abo import two_unets


def reference_esd(pipe, concept: str, config: EsdConfig, seed: int = 0):
    """Train `pipe.unet` in place with a frozen second UNet; returns the trained names and the loss history."""
    generator = torch.Generator().manual_seed(seed)
    frozen, student, names, params = two_unets(pipe, config.parameters)
    device, dtype = student.device, student.dtype
    opt = torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps)
    scaler = grad_scaler(device, dtype)
    scheduler = sampling_scheduler(pipe, config.ddim_steps)
    uncond, c = embed(pipe, [""]), embed(pipe, [concept])
    both = torch.cat([uncond, c])
    history = []
    for _ in range(config.steps):
        stop = int(torch.randint(0, config.ddim_steps, (1,), generator=generator))
        x = initial_noise(1, latent_shape(pipe), generator, scheduler).to(device)
        with torch.no_grad(), autocast(device, dtype):

            def guided(x, t, i):
                eps_uncond, eps_concept = denoiser_out(student, x.repeat(2, 1, 1, 1), t, both).chunk(2)
                return cfg(eps_uncond, eps_concept, config.start_guidance)

            x = run_sampler(scheduler, x, guided, stop=stop)
            t = scheduler.timesteps[stop]
            eps_uncond, eps_concept = denoiser_out(frozen, x.repeat(2, 1, 1, 1), t, both).chunk(2)
            target = esd_target(eps_uncond, eps_concept, eps_uncond, config.eta)
        with autocast(device, dtype):
            loss = esd_loss(denoiser_out(student, x, t, c), target)
        scaled_step(opt, scaler, loss)
        history.append({"esd": loss.item()})
    student.requires_grad_(False)
    cast_parameters(dict(student.named_parameters()), names, dtype)
    return names, history
