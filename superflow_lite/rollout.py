"""Sampling trajectories in micro-batches, with CFG, storing what the update needs.

A rollout stores its latents x_0..x_T and the log-prob of every SDE transition; the
policy update replays those transitions (ALGORITHM.md 1-2); the rollout buffer keeps
them on the device or in pinned host memory (to_rollout_buffer). Images are decoded for
the reward only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from .embeddings import PromptEmbeds
from .sde import ode_step, sde_sigma_t, sde_step


@dataclass(frozen=True)
class Schedule:
    """The denoising schedule of one rollout.

    sigmas: T+1 values from 1 down to 0; timesteps: the T values fed to the transformer
    (sigma * 1000, as diffusers); sigma_t: the SDE noise scale of each step (0 on ODE steps).
    """

    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]
    sigma_t: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def is_sde(self, step: int) -> bool:
        return self.sigma_t[step] > 0


def make_schedule(
    scheduler: FlowMatchEulerDiscreteScheduler,
    num_steps: int,
    noise_level: float,
    sde_steps: list[int] | None = None,
) -> Schedule:
    """Sigmas exactly as the diffusers pipeline sets them; SDE noise on `sde_steps` (all if None)."""
    scheduler.set_timesteps(num_steps, device="cpu")
    sigmas = tuple(float(s) for s in scheduler.sigmas)
    timesteps = tuple(float(t) for t in scheduler.timesteps)
    sigma_t_all = sde_sigma_t(torch.tensor(sigmas[:-1]), sigmas[1], noise_level).tolist()
    chosen = set(range(num_steps)) if sde_steps is None else set(sde_steps)
    sigma_t = tuple(v if (i in chosen and noise_level > 0) else 0.0 for i, v in enumerate(sigma_t_all))
    return Schedule(sigmas, timesteps, sigma_t)


def predict_velocity(
    transformer: torch.nn.Module,
    x: torch.Tensor,
    timestep: float,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    guidance_scale: float,
    detach_uncond: bool = False,
) -> torch.Tensor:
    """v = v_uncond + g (v_cond - v_uncond), one batched forward over [uncond; cond].

    x: [B, C, H, W]; cond/uncond embeds [B, L, D]; returns float32 [B, C, H, W].
    uncond None (or g == 1) skips CFG: one forward of batch B. detach_uncond stops the
    gradient through v_uncond (Flow-GRPO's policy update): the values are unchanged.
    """
    dtype = next(p for p in transformer.parameters() if p.is_floating_point()).dtype
    dtype = dtype if dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.bfloat16
    use_cfg = uncond is not None and guidance_scale != 1.0
    if use_cfg:
        x_in = torch.cat([x, x])
        embeds = torch.cat([uncond.embeds, cond.embeds])
        pooled = torch.cat([uncond.pooled, cond.pooled])
    else:
        x_in, embeds, pooled = x, cond.embeds, cond.pooled
    # float32, as diffusers' pipeline and Flow-GRPO pass it: in bf16 the 10-step schedule's
    # timesteps (sigma * 1000) would be off by up to 1.9; the model casts its sinusoidal
    # embedding to its own dtype after computing it in float32.
    t = torch.full((x_in.shape[0],), timestep, device=x.device, dtype=torch.float32)
    out = transformer(
        hidden_states=x_in.to(dtype),
        timestep=t,
        encoder_hidden_states=embeds.to(dtype),
        pooled_projections=pooled.to(dtype),
        return_dict=False,
    )[0].float()
    if not use_cfg:
        return out
    v_uncond, v_cond = out.chunk(2)
    if detach_uncond:
        v_uncond = v_uncond.detach()
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@dataclass
class Trajectories:
    """latents: [B, T+1, C, H, W] float32 (x_0 = noise ... x_T = sample);
    logp: [B, T] float32 log-prob of each transition (0 on ODE steps);
    x0_hat: [B, P, C, H, W] float32 one-step predictions x_t - s_t v_t at the requested steps
    (None when none were asked for: step credit off)."""

    latents: torch.Tensor
    logp: torch.Tensor
    x0_hat: torch.Tensor | None = None


@torch.no_grad()
def sample_trajectories(
    transformer: torch.nn.Module,
    noise: torch.Tensor,
    schedule: Schedule,
    cond: PromptEmbeds,
    uncond: PromptEmbeds | None,
    guidance_scale: float,
    sde_noise: torch.Tensor | None = None,
    x0_steps: tuple[int, ...] | list[int] = (),
) -> Trajectories:
    """Run the SDE (ODE on steps with sigma_t == 0) from `noise`, recording every state.

    sde_noise: [B, T, C, H, W] the standard normal draw of each row's step t (seeds.rollout_sde_noise);
    required when the schedule has an SDE step.

    x0_steps: steps t whose one-step prediction of the clean sample, x0_hat_t = x_t - s_t v_t
    (flow matching: x_t = (1 - s) x0 + s eps, v = eps - x0), is kept for step credit.
    """
    x = noise.float()
    states, logps, x0_hat = [x], [], []
    for i in range(schedule.num_steps):
        s, s_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        v = predict_velocity(transformer, x, schedule.timesteps[i], cond, uncond, guidance_scale)
        if i in x0_steps:
            x0_hat.append(x - s * v)
        if schedule.is_sde(i):
            x, logp, _ = sde_step(x, v, s, s_next, schedule.sigma_t[i], eps=sde_noise[:, i])
        else:
            x, logp = ode_step(x, v, s, s_next), torch.zeros(x.shape[0], device=x.device)
        states.append(x)
        logps.append(logp)
    return Trajectories(torch.stack(states, dim=1), torch.stack(logps, dim=1),
                        torch.stack(x0_hat, dim=1) if x0_hat else None)


def to_rollout_buffer(t: torch.Tensor, buffer_device: torch.device) -> torch.Tensor:
    """Copy a rollout tensor into the buffer: pinned host memory for a CPU buffer beside a GPU
    (fast, asynchronous copies back), else a plain .to()."""
    if buffer_device.type == "cpu" and t.device.type == "cuda":
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return out.copy_(t)
    return t.to(buffer_device)


@torch.no_grad()
def decode_images(pipe, latents: torch.Tensor, mode: str = "full") -> list:
    """Latents -> PIL images, undoing SD3's VAE scaling and shift. mode: full | sliced | tiled."""
    vae = pipe.vae
    if mode == "sliced":
        vae.enable_slicing()
    elif mode == "tiled":
        vae.enable_tiling()
    z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    images = vae.decode(z, return_dict=False)[0]
    return pipe.image_processor.postprocess(images.float(), output_type="pil")
