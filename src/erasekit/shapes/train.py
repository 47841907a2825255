"""Train the built-in shapes-world model and its classifier from nothing, on a CPU.

Four phases, each saved when done, so that re-running with the same output folder resumes:
  1. classifier: a CNN on freshly rendered images (the world's ground-truth detector);
  2. VAE: an AutoencoderKL (4x down) on random crops (it is fully convolutional);
  3. latents: the training set encoded once;
  4. UNet + CLIP text encoder, jointly, on latents (v-prediction loss, min-SNR-5 weights, 10% caption
     dropout, EMA, cosine learning rate restarted every `denoiser_cycle` steps), checkpointed every
     `checkpoint_every` steps.
The result is a standard diffusers `StableDiffusionPipeline` folder.

The second world (`denoiser="dit"`) keeps the first's classifier, VAE and text
encoder, and trains only an SD3 transformer by flow matching in phase 4, with the same loop: a standard
`StableDiffusion3Pipeline` folder.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ErasekitError
from ..io import atomic_save_torch, atomic_write_text
from ..progress import progress_bar
from .classifier import ShapesClassifier, save_classifier, to_tensor
from .models import DIT_TEXT_LENGTH, make_flow_scheduler, make_scheduler, make_text_encoder, make_transformer, make_unet, make_vae, with_projection
from .tokenizer import save_tokenizer
from .world import ATTRIBUTES, caption, render_dataset


DENOISERS = ("unet", "dit")
DIT_LR = 5e-4  # the DiT's peak learning rate, a little below the UNet's


@dataclass
class TrainConfig:
    seed: int = 0
    n_images: int = 40_000
    classifier_steps: int = 1200
    classifier_batch: int = 64
    vae_steps: int = 2500
    vae_batch: int = 32
    vae_crop: int = 32
    denoiser: str = "unet"  # or "dit": an SD3 transformer on the UNet world's VAE and text encoder
    denoiser_steps: int = 7200
    denoiser_cycle: int = 2400
    denoiser_batch: int = 64
    denoiser_lr: float = 6e-4
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 300
    threads: int = 2

    def validate(self) -> None:
        """Every count positive, every rate in range: refused in one line before any work."""
        if self.denoiser not in DENOISERS:
            raise ErasekitError(f"shapes train: denoiser must be one of {', '.join(DENOISERS)}, got {self.denoiser!r}")
        for name, value in vars(self).items():
            if name not in ("seed", "denoiser") and value <= 0 and name not in ("caption_dropout",):
                raise ErasekitError(f"shapes train: {name.replace('_', '-')} must be positive, got {value}")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema_decay < 1:
            raise ErasekitError("shapes train: caption_dropout and ema_decay must be in [0, 1)")


def _render_chunk(args: tuple[int, int, int]) -> tuple[np.ndarray, list]:
    start, n, seed = args
    images, labels = render_dataset(n, seed, start=start)
    return images, labels


def render_parallel(n: int, seed: int, workers: int) -> tuple[np.ndarray, list]:
    chunk = math.ceil(n / (workers * 8))
    jobs = [(s, min(chunk, n - s), seed) for s in range(0, n, chunk)]
    with Pool(workers) as pool:
        parts = pool.map(_render_chunk, jobs)
    return np.concatenate([p[0] for p in parts]), [lab for p in parts for lab in p[1]]


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur and noise, so that the classifier also judges the softer images a generator makes."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.rand(x.shape[0], 1, 1, 1, generator=g) * (torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5)
    x = x * (1 - amount) + blur * amount
    return x + torch.randn(x.shape, generator=g) * torch.rand(x.shape[0], 1, 1, 1, generator=g) * 0.08


def train_classifier(images: np.ndarray, labels: list, cfg: TrainConfig, log) -> ShapesClassifier:
    g = torch.Generator().manual_seed(cfg.seed)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=cfg.classifier_steps)
    targets = {a: torch.tensor([lab.index(a) for lab in labels]) for a in ATTRIBUTES}
    model.train()
    with progress_bar() as bar:
        task = bar.add_task("classifier", total=cfg.classifier_steps, info="")
        for step in range(cfg.classifier_steps):
            idx = torch.randint(0, len(images), (cfg.classifier_batch,), generator=g)
            x = _augment(to_tensor(images[idx.numpy()]), g)
            out = model(x)
            loss = sum(F.cross_entropy(out[a], targets[a][idx]) for a in ATTRIBUTES)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            log("classifier", step, loss=loss.item())
            bar.update(task, advance=1, info=f"loss {loss.item():.3f}")
    return model.eval()


def train_vae(images: np.ndarray, cfg: TrainConfig, log):
    g = torch.Generator().manual_seed(cfg.seed + 1)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=cfg.vae_steps, pct_start=0.1)
    size = images.shape[1]
    with progress_bar() as bar:
        task = bar.add_task("vae", total=cfg.vae_steps, info="")
        for step in range(cfg.vae_steps):
            idx = torch.randint(0, len(images), (cfg.vae_batch,), generator=g)
            oy, ox = torch.randint(0, size - cfg.vae_crop + 1, (2,), generator=g).tolist()
            x = to_tensor(images[idx.numpy(), oy : oy + cfg.vae_crop, ox : ox + cfg.vae_crop], size=None)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=g)).sample
            # The low-pass term speeds up learning colour, which a small VAE otherwise gets last.
            rec = F.l1_loss(recon, x) + F.mse_loss(recon, x) + F.l1_loss(F.avg_pool2d(recon, 4), F.avg_pool2d(x, 4))
            kl = posterior.kl().mean() / x[0].numel()
            loss = rec + 1e-4 * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            log("vae", step, loss=loss.item(), recon=rec.item(), kl=kl.item())
            bar.update(task, advance=1, info=f"recon {rec.item():.4f}")
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    chunks = []
    with progress_bar() as bar:
        task = bar.add_task("encode", total=len(images), info="")
        for start in range(0, len(images), batch):
            x = to_tensor(images[start : start + batch], size=None)
            chunks.append(vae.encode(x).latent_dist.mean)
            bar.update(task, advance=len(x))
    return torch.cat(chunks)


def _min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for a v-prediction loss (Hang et al. 2023): min(SNR, γ) / (SNR + 1)."""
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / (snr + 1)


def train_denoiser(phase: str, trained: dict[str, torch.nn.Module], batch_loss, latents: torch.Tensor, labels: list,
                   cfg: TrainConfig, work: Path, log) -> dict[str, torch.nn.Module]:
    """The denoiser's training loop, for either world: AdamW with warm restarts and gradient clipping on
    the `trained` modules, their EMA copies, a checkpoint every `checkpoint_every` steps that a re-run
    resumes from. Each step draws a batch of latents and captions (10% dropped to "") and calls
    `batch_loss(x0, captions, generator)`. Returns the EMA copies."""
    ema = {name: copy.deepcopy(module).requires_grad_(False) for name, module in trained.items()}
    params = [p for module in trained.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.denoiser_lr, weight_decay=1e-2)

    def lr_at(step: int) -> float:
        # Warm restarts (SGDR, Loshchilov & Hutter 2017): a longer run continues a shorter one exactly,
        # because its first cycle is the shorter run's whole schedule.
        step %= cfg.denoiser_cycle
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.denoiser_cycle - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(cfg.seed + 3)
    step = 0
    ckpt = work / f"{phase}_checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        for name in trained:
            trained[name].load_state_dict(state[name])
            ema[name].load_state_dict(state[f"ema_{name}"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["generator"])
        step = state["step"]

    for module in trained.values():
        module.train()
    with progress_bar() as bar:
        task = bar.add_task(phase, total=cfg.denoiser_steps, completed=step, info="")
        while step < cfg.denoiser_steps:
            idx = torch.randint(0, len(latents), (cfg.denoiser_batch,), generator=g)
            caption_rng = np.random.default_rng([cfg.seed, step])
            texts = ["" if caption_rng.random() < cfg.caption_dropout else caption(labels[i], caption_rng) for i in idx.tolist()]
            loss = batch_loss(latents[idx], texts, g)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for name, live in trained.items():
                    for pe, p in zip(ema[name].parameters(), live.parameters()):
                        pe.lerp_(p, 1 - decay)
            step += 1
            log(phase, step, loss=loss.item(), lr=sched.get_last_lr()[0])
            bar.update(task, advance=1, info=f"loss {loss.item():.4f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.denoiser_steps:
                state = {name: module.state_dict() for name, module in trained.items()}
                state.update({f"ema_{name}": module.state_dict() for name, module in ema.items()})
                atomic_save_torch({**state, "opt": opt.state_dict(), "sched": sched.state_dict(), "generator": g.get_state(), "step": step}, ckpt)
    return {name: module.eval() for name, module in ema.items()}


def train_unet(latents: torch.Tensor, labels: list, tokenizer, cfg: TrainConfig, work: Path, log):
    """The UNet and its CLIP text encoder, jointly: v-prediction loss with min-SNR-γ weights."""
    torch.manual_seed(cfg.seed + 2)
    unet, text_encoder, scheduler = make_unet(), make_text_encoder(tokenizer), make_scheduler()

    def batch_loss(x0, texts, g):
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=g)
        pred = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(ids).last_hidden_state).sample
        per_sample = (pred - scheduler.get_velocity(x0, noise, t)).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * _min_snr_weights(scheduler, t, cfg.min_snr_gamma)).mean()

    ema = train_denoiser("unet", {"unet": unet, "text_encoder": text_encoder}, batch_loss, latents, labels, cfg, work, log)
    return ema["unet"], ema["text_encoder"], scheduler


def train_transformer(latents: torch.Tensor, labels: list, pipe, cfg: TrainConfig, work: Path, log):
    """An SD3 transformer on the world's frozen text encoders (`pipe`'s), by rectified flow: x_t = (1 − σ) x0 + σ ε,
    target the velocity ε − x0 at timestep 1000 σ, σ logit-normal (SD3, Esser et al. 2024, section 3.1). The
    conditioning is the pipeline's own, through the family layer (which weighs T5's zero rows as one)."""
    from ..families.sd3 import StableDiffusion3

    torch.manual_seed(cfg.seed + 2)
    transformer = make_transformer()
    pipe.register_modules(transformer=transformer)  # its config sizes the pipeline's conditioning

    def batch_loss(x0, texts, g):
        condition = StableDiffusion3.embed(pipe, texts)
        noise = torch.randn(x0.shape, generator=g)
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=g))[:, None, None, None]
        pred = condition.denoise(transformer, (1 - sigma) * x0 + sigma * noise, 1000 * sigma.flatten())
        return (pred - (noise - x0)).pow(2).mean()

    return train_denoiser("transformer", {"transformer": transformer}, batch_loss, latents, labels, cfg, work, log)["transformer"]


def save_pipeline(out: Path, pipe) -> None:
    """Save a pipeline folder, weights in fp16 (the package ships <= 25 MB)."""
    pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)


def _latents(vae, images: np.ndarray, work: Path) -> torch.Tensor:
    """The training set through the VAE's encoder (its posterior means), encoded once per run."""
    path = work / "latents.pt"
    if not path.exists():
        atomic_save_torch(encode_latents(vae, images), path)
    return torch.load(path, weights_only=True)


def train_unet_world(images: np.ndarray, labels: list, cfg: TrainConfig, out: Path, work: Path, log):
    """The classifier, the VAE, then the UNet with its text encoder: a StableDiffusionPipeline."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    classifier_dir = out / "classifier"
    if not (classifier_dir / "classifier.safetensors").exists():
        save_classifier(train_classifier(images, labels, cfg, log), classifier_dir)
    tokenizer = save_tokenizer(work / "tokenizer")
    vae_dir = work / "vae"
    if not (vae_dir / "config.json").exists():
        train_vae(images, cfg, log).save_pretrained(vae_dir)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    latents = _latents(vae, images, work)
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    unet, text_encoder, scheduler = train_unet(latents * scaling, labels, tokenizer, cfg, work, log)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def train_dit_world(images: np.ndarray, labels: list, cfg: TrainConfig, world: Path, work: Path, log):
    """An SD3 transformer on the UNet world's (`world`'s) VAE and text encoder, both frozen: a
    StableDiffusion3Pipeline whose two CLIP encoders are that one encoder, and no T5. The VAE's
    shift and scale centre and whiten the latents, as SD3's do."""
    from diffusers import AutoencoderKL, StableDiffusion3Pipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(world / "vae", torch_dtype=torch.float32).eval()
    encoder = with_projection(CLIPTextModel.from_pretrained(world / "text_encoder", torch_dtype=torch.float32)).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(world / "tokenizer", model_max_length=DIT_TEXT_LENGTH)
    latents = _latents(vae, images, work)
    shift = latents.mean().item()
    scaling = 1.0 / (latents - shift).std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scaling)
    pipe = StableDiffusion3Pipeline(transformer=None, scheduler=make_flow_scheduler(), vae=vae, text_encoder=encoder, tokenizer=tokenizer,
                                    text_encoder_2=encoder, tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.register_modules(transformer=train_transformer((latents - shift) * scaling, labels, pipe, cfg, work, log))
    return pipe


def _resumable(config: dict) -> dict:
    """What a resumed run must share with the run it resumes: everything but the step count, since warm
    restarts make a longer run continue a shorter one exactly."""
    return {key: value for key, value in config.items() if key != "denoiser_steps"}


def train_all(out: Path, cfg: TrainConfig, world: Path | None = None) -> Path:
    """Run (or resume) every phase of `cfg.denoiser`'s world; returns the pipeline folder. The DiT world
    reuses `world`'s VAE and text encoder (default: the shipped model's) and its classifier."""
    from ..assets import builtin_pipeline_dir

    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    config_path = out / "train_config.json"
    if config_path.exists() and _resumable(json.loads(config_path.read_text())) != _resumable(dataclasses.asdict(cfg)):
        raise ErasekitError(f"{out} holds a run with another config (only --steps may change); use a new --out to train anew")
    atomic_write_text(config_path, json.dumps(dataclasses.asdict(cfg), indent=2))
    log_file = (out / "train_log.csv").open("a", newline="")
    writer = csv.writer(log_file)
    started = time.time()

    def log(phase: str, step: int, **values: float) -> None:
        if step % 10 == 0:
            writer.writerow([phase, step, round(time.time() - started, 1)] + [f"{k}={v:.6g}" for k, v in values.items()])
            log_file.flush()

    images, labels = render_parallel(cfg.n_images, cfg.seed, workers=cfg.threads)
    if cfg.denoiser == "dit":
        pipe = train_dit_world(images, labels, cfg, world or builtin_pipeline_dir(), work, log)
    else:
        pipe = train_unet_world(images, labels, cfg, out, work, log)
    pipeline_dir = out / "pipeline"
    save_pipeline(pipeline_dir, pipe)
    log_file.close()
    return pipeline_dir
