"""Pretrain the shapes world's tiny SD3 on procedural scenes, on a CPU, in minutes.

    python -m superflow_lite.world.pretrain [--out DIR] [--minutes N]

setup -> VAE (autoencoder on renders) -> latent statistics -> encode a scene dataset ->
transformer (rectified flow, caption dropout for CFG) -> save pipeline -> evaluate.

The text encoders (random init) train together with the transformer, at its learning
rate. Why: frozen at random init they gave near-identical features to captions that
differ in one word (pooled cosine 0.99 between "a photo of a red circle" and "... green
circle"); after 4000 steps the transformer drew green and blue objects but nothing for
red and yellow (single-object strict accuracy 0.375). They are tiny (~40k parameters
each) and cheap to train; RL afterwards trains LoRA on the transformer only.

The base model is imperfect on purpose: training stops while the hard prompts (counts,
binding, positions) are still mostly wrong, so RL has room. Measured with the defaults
(2-core CPU, `--init-vae superflow_lite/world/assets/tiny-sd3`, 27 min 45 s): strict test
accuracy 0.42 (single objects 0.96; counting 0.38, binding 0.44, position 0.17), mean
reward 0.77 (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusion3Pipeline
from PIL import Image

from .evaluate import evaluate_pipeline, format_metrics
from .model import WORLD_MODEL_DIR, build_tiny_sd3_pipeline, count_parameters
from .parser import parse_caption
from .prompts import prompt_category, test_prompts, train_prompts
from .reward import ShapesReward
from .shapes import render_scene

FULL_T5_LEN = 256  # StableDiffusion3Pipeline's default max_sequence_length


@dataclass
class PretrainArgs:
    out: Path = WORLD_MODEL_DIR
    """Where the diffusers pipeline directory is written."""
    minutes: float = 60.0
    """Wall-clock cap for both training phases (a safety net: the step counts below
    define the run); a phase that runs out of time stops early."""
    seed: int = 0
    vae_steps: int = 1600
    """Autoencoder steps."""
    vae_batch: int = 16
    vae_lr: float = 2e-3
    foreground_weight: float = 4.0
    """Extra loss weight on shape pixels (they are ~5% of the image)."""
    kl_weight: float = 1e-6
    """As SD's VAEs: just enough KL to keep latents bounded, not enough to blur."""
    vae_time_frac: float = 0.3
    """Share of `minutes` the VAE may use at most."""
    num_scenes: int = 30_000
    """Scenes rendered and encoded once for the transformer (~45 per train prompt)."""
    dit_steps: int = 4000
    """Transformer steps. At 4000 the base model lands in the 0.2-0.7 strict-accuracy band
    (0.42); 3000 steps at patch size 2 gave 0.08, with circles and squares drawn alike."""
    dit_batch: int = 64
    dit_lr: float = 1e-3
    warmup_steps: int = 50
    short_t5_len: int = 16
    """T5 tokens for most transformer steps: every world caption fits (<= 14 with </s>),
    and a sample is then 16 CLIP + 16 T5 + 64 image tokens instead of 16 + 256 + 64."""
    full_t5_frac: float = 0.1
    """Fraction of steps, drawn at random, at the pipeline's default max_sequence_length
    (256): the model learns to ignore the 240 extra T5 padding tokens, so a plain
    pipe(prompt) call and short encodings both work. (Measured: a model trained at 16
    and switched to 256 only at the end jumped from loss 0.22 to 0.50.)"""
    full_t5_batch: int = 16
    """Batch of those steps: at 64 they took half the training time."""
    init_vae: Path | None = None
    """Take the VAE from this pipeline dir and skip VAE training: for re-running only
    the transformer stage."""
    timestep_shift: float = 3.0
    """= the scheduler's shift (SD3 trains and samples with the same shift). Without it
    (logit-normal alone: sigma > 0.9 in 1.4% of samples) the model never learnt where to
    put a single object, and sampling left most single-object images blank."""
    caption_dropout: float = 0.1
    """Fraction of samples trained on the empty prompt, so CFG has an unconditional model."""
    eval_seeds: tuple[int, ...] = (0, 1)
    threads: int = 2
    """torch threads. 2 = the machine's cores; on cores shared with other jobs, 1 was
    3-4x faster per step (measured: 2 threads spin-wait on each other when preempted)."""


def sample_prompts(prompts: list[str], n: int, rng: random.Random) -> list[str]:
    """Category first (uniform), then a prompt in it: the 12 easy prompts get a quarter of
    the data instead of 2%, so single objects are learned well and the hard ones are not."""
    by_cat: dict[str, list[str]] = {}
    for p in prompts:
        by_cat.setdefault(prompt_category(p), []).append(p)
    cats = sorted(by_cat)
    return [rng.choice(by_cat[rng.choice(cats)]) for _ in range(n)]


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] float32 in [-1, 1] (the VAE's input range)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def render_batch(prompts: list[str], rng: random.Random) -> torch.Tensor:
    return images_to_tensor([render_scene(parse_caption(p), rng.getrandbits(32)) for p in prompts])


def cosine_lr(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """L1 + L2 with shape pixels up-weighted. recon, x: [B, 3, H, W] in [-1, 1].

    Shapes cover ~5% of a frame, so a plain mean lets the VAE get the background right and
    the colours wrong (red decoded as yellow costs the reward everything). L2 punishes
    such large colour errors, L1 keeps edges sharp.
    """
    chroma = x.amax(1, keepdim=True) - x.amin(1, keepdim=True)  # background ~0, shapes > 0.8
    weight = 1.0 + foreground_weight * (chroma > 0.3).float()
    err = recon - x
    return (weight * (err.abs() + err.square())).mean()


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip_params: list | None = None) -> None:
    """One AdamW step on `loss`; gradients of `clip_params` clipped to norm 1 first."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_params is not None:
        torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
    opt.step()


def out_of_time(phase: str, step: int, deadline: float) -> bool:
    """True (and says so) once the phase's share of the wall-clock budget is spent."""
    if time.monotonic() <= deadline:
        return False
    print(f"{phase}: time budget spent at step {step}", flush=True)
    return True


def train_vae(pipe: StableDiffusion3Pipeline, prompts: list[str], args: PretrainArgs, deadline: float) -> None:
    """Autoencoder on renders: L1 reconstruction + a tiny KL, posterior sampled."""
    vae, rng = pipe.vae, random.Random(args.seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    for step in range(args.vae_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.vae_steps, args.warmup_steps, args.vae_lr)
        x = render_batch(sample_prompts(prompts, args.vae_batch, rng), rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        l1 = (recon - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, as the L1
        loss = reconstruction_loss(recon, x, args.foreground_weight) + args.kl_weight * kl
        optimizer_step(opt, loss)
        if step % 50 == 0 or step == args.vae_steps - 1:
            print(f"vae step {step:4d}  l1 {l1.item():.4f}  kl {kl.item():.2f}", flush=True)
        if out_of_time("vae", step, deadline):
            break
    vae.eval()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def reconstruction_reward(pipe: StableDiffusion3Pipeline, prompts: list[str], n: int = 64) -> tuple[float, float]:
    """Mean reward and strict accuracy of VAE round trips of ground-truth scenes: the
    ceiling any transformer can reach through this VAE."""
    rng = random.Random(12345)
    chosen = sample_prompts(prompts, n, rng)
    x = render_batch(chosen, rng)
    recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    out = ShapesReward()(tensor_to_images(recon), chosen)
    return float(out.scores.mean()), float(out.extras["strict"].mean())


@torch.no_grad()
def encode_scenes(pipe: StableDiffusion3Pipeline, prompts: list[str], args: PretrainArgs) -> tuple[torch.Tensor, list[str]]:
    """Render `num_scenes` scenes and encode them to raw (unscaled) latent means."""
    rng = random.Random(args.seed + 1)
    scene_prompts = sample_prompts(prompts, args.num_scenes, rng)
    latents = [
        pipe.vae.encode(render_batch(scene_prompts[i : i + 256], rng)).latent_dist.mean
        for i in range(0, len(scene_prompts), 256)
    ]
    return torch.cat(latents), scene_prompts


def set_latent_stats(pipe: StableDiffusion3Pipeline, raw: torch.Tensor) -> torch.Tensor:
    """SD3 convention: latents = (z - shift_factor) * scaling_factor with unit variance."""
    shift = raw.mean().item()
    scale = 1.0 / raw.std().item()
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    print(f"latent shift_factor {shift:.4f} scaling_factor {scale:.4f}", flush=True)
    return (raw - shift) * scale


def load_vae(pipe: StableDiffusion3Pipeline, pipeline_dir: Path) -> None:
    """Copy the weights of another world pipeline's VAE (same architecture; the latent
    statistics are re-measured on this run's scenes)."""
    pipe.vae.load_state_dict(AutoencoderKL.from_pretrained(pipeline_dir / "vae").state_dict())
    pipe.vae.eval()


def text_features(
    pipe: StableDiffusion3Pipeline, prompts: list[str], t5_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own prompt encoding (with gradients): [B, 16 + t5_len, 64] tokens
    (two CLIPs' penultimate layers side by side, then T5) and [B, 64] pooled CLIP."""
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=t5_len
    )
    return embeds, pooled


def shift_sigma(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift, sigma' = s t / (1 + (s - 1) t): the same map the scheduler
    (shift=3) applies at sampling time, so training sees noise levels where sampling
    spends its steps (20 of 40 steps have sigma > 0.75)."""
    return shift * t / (1 + (shift - 1) * t)


def train_transformer(
    pipe: StableDiffusion3Pipeline, latents: torch.Tensor, scene_prompts: list[str],
    args: PretrainArgs, deadline: float,
) -> None:
    """Rectified flow (SD3 paper, eq. 1-3): x_t = (1 - t) x0 + t eps, target v = eps - x0,
    t ~ logit-normal(0, 1) then shifted as the sampler shifts it. The text encoders train
    with the transformer (see the module docstring)."""
    modules = (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
    params = [p for m in modules for p in m.parameters()]
    model, gen = pipe.transformer, torch.Generator().manual_seed(args.seed + 2)
    model.train()  # the text encoders stay in eval mode: they have no dropout to switch
    opt = torch.optim.AdamW(params, lr=args.dit_lr, weight_decay=0.01)
    for step in range(args.dit_steps):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.dit_steps, args.warmup_steps, args.dit_lr)
        full = torch.rand((), generator=gen).item() < args.full_t5_frac
        t5_len, size = (FULL_T5_LEN, args.full_t5_batch) if full else (args.short_t5_len, args.dit_batch)
        batch = torch.randint(len(latents), (size,), generator=gen)
        dropped = (torch.rand(size, generator=gen) < args.caption_dropout).tolist()
        prompts = ["" if d else scene_prompts[i] for d, i in zip(dropped, batch.tolist())]
        text, pooled = text_features(pipe, prompts, t5_len)
        x0 = latents[batch]
        eps = torch.randn(x0.shape, generator=gen)
        t = shift_sigma(torch.sigmoid(torch.randn(size, generator=gen)), args.timestep_shift)
        x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps
        v = model(hidden_states=x_t, encoder_hidden_states=text, pooled_projections=pooled,
                  timestep=t * 1000).sample  # the scheduler's timesteps are sigma * 1000
        loss = F.mse_loss(v, eps - x0)
        optimizer_step(opt, loss, clip_params=params)
        if step % 50 == 0 or step == args.dit_steps - 1:
            print(f"dit step {step:4d}  loss {loss.item():.4f}", flush=True)
        if out_of_time("dit", step, deadline):
            break
    model.eval()


def pretrain(args: PretrainArgs) -> dict[str, float]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.monotonic()
    budget_s = args.minutes * 60
    pipe = build_tiny_sd3_pipeline(seed=args.seed)
    pipe.set_progress_bar_config(disable=True)
    print("parameters:", count_parameters(pipe), flush=True)
    prompts = train_prompts()

    if args.init_vae is None:
        train_vae(pipe, prompts, args, deadline=start + args.vae_time_frac * budget_s)
    else:
        load_vae(pipe, args.init_vae)
    recon_reward, recon_strict = reconstruction_reward(pipe, test_prompts())
    print(f"vae round trip on test scenes: reward {recon_reward:.3f} strict {recon_strict:.3f}", flush=True)
    raw, scene_prompts = encode_scenes(pipe, prompts, args)
    latents = set_latent_stats(pipe, raw)
    print(f"[{time.monotonic() - start:.0f}s] encoded {len(latents)} scenes", flush=True)
    train_transformer(pipe, latents, scene_prompts, args, deadline=start + budget_s)
    print(f"[{time.monotonic() - start:.0f}s] training done", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out, safe_serialization=True)
    reloaded = StableDiffusion3Pipeline.from_pretrained(args.out)
    reloaded.set_progress_bar_config(disable=True)
    metrics = evaluate_pipeline(reloaded, test_prompts(), args.eval_seeds)
    print(f"[{time.monotonic() - start:.0f}s] test-set evaluation (40 steps, CFG 4.5):")
    print(format_metrics(metrics), flush=True)
    return metrics


def parse_args(argv: list[str] | None = None) -> PretrainArgs:
    defaults = PretrainArgs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=defaults.out, help="pipeline output dir")
    parser.add_argument("--minutes", type=float, default=defaults.minutes, help="training time cap")
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--dit-steps", type=int, default=defaults.dit_steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--init-vae", type=Path, default=None, help="reuse this pipeline dir's VAE")
    ns = parser.parse_args(argv)
    return PretrainArgs(out=ns.out, minutes=ns.minutes, vae_steps=ns.vae_steps, dit_steps=ns.dit_steps,
                        seed=ns.seed, threads=ns.threads, init_vae=ns.init_vae)


if __name__ == "__main__":
    pretrain(parse_args())
