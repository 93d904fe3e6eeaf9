"""The loop, and nothing else: choose -> roll out -> reward -> advantages -> update -> log.

Each stage is a call into a module: grouping (which prompts, how many rollouts),
rollout (SDE trajectories with log-probs), rewards, advantages, policy (the clipped
objective). Hugging Face Accelerate holds the model and optimizer, so several GPUs run
this same loop under `accelerate launch` (rollouts shard across processes by index).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs

from . import advantages as adv_math
from . import console, tracking
from .algorithms import resolve_algorithm
from .checkpoint import load_latest_intact, rng_state, save_checkpoint, set_rng_state
from .config import Config
from .embeddings import PromptEmbeds, PromptEncoder
from .ema import LoraEMA
from .evaluation import EvaluationStopped, evaluate_and_save
from .export import card_samples, export_lora, model_card
from .grouping import GroupPlan, GroupSampler
from .memory import plan_for_config
from .models import adapters_disabled, add_lora, load_pipeline, lora_parameters, require_bitsandbytes, resolve_device
from .oom import agree_micro_batch, retry_on_oom
from .policy import LossSettings, step_loss
from .prompts import eval_subset, load_prompts
from .rewards.async_scorer import AsyncRewardScorer
from .rewards.base import RewardOutput
from .rewards.registry import build_reward
from .rollout import Schedule, Trajectories, decode_images, make_schedule, sample_trajectories, to_rollout_buffer
from .rundir import RunDir, read_metrics
from .seeds import minibatch_order, phase_initial_noise, rollout_sde_noise, sde_noise_seed, sde_window_rng

log = logging.getLogger("superflow_lite")


# The largest |weight| a LoRA may reach before the run counts as diverged. Its weights start
# below 1 (A: kaiming-uniform, B: 0) and AdamW moves each by about lr per step, so a sane run
# (lr <= 1e-3, thousands of steps) stays within a few units (the tiny preset's: 0.54). 1e3 is
# far beyond that, and far below what a diverging run reaches (train.lr=1e30: 1e30 after one
# step, then every step non-finite and skipped, ending "done" with a useless LoRA).
MAX_LORA_WEIGHT = 1e3


class TrainingDiverged(RuntimeError):
    """The LoRA's weights left the range a sane run stays in: the run stops before they are
    checkpointed or exported."""


@dataclass
class Rollouts:
    """One iteration's stored rollouts (rows of this process only).

    rows: [N] global rollout indices; group: [N] group index into the plan;
    latents: [N, T+1, C, H, W]; logp_old: [N, T]; rewards/unit_rewards: [N] (all rows of
    the iteration after the cross-process reduce, indexed by global rollout index).
    x0_values: [all rows, P] unit-range value of the scored one-step predictions (step credit
    on), plan: the plan the global rows follow (the whole plan after a probe phase), perf:
    the sampling phases' timings and pass counts."""

    rows: torch.Tensor
    group: torch.Tensor
    latents: torch.Tensor
    logp_old: torch.Tensor
    rewards: np.ndarray
    unit_rewards: np.ndarray
    extras: dict[str, np.ndarray]
    x0_values: np.ndarray | None = None
    plan: GroupPlan | None = None
    perf: dict[str, float] = field(default_factory=dict)


@dataclass
class SampledPhase:
    """A sampling phase's rows of this process as sampled so far, their rewards still being scored.

    latents, logps: the stored trajectories per micro-batch; rewards: one future per
    micro-batch; x0_rewards: per micro-batch, one future per scored x0 step (step credit on);
    batches: sampling micro-batches; credit_s: the time spent on the x0 predictions."""

    latents: list[torch.Tensor] = field(default_factory=list)
    logps: list[torch.Tensor] = field(default_factory=list)
    rewards: list[Future[RewardOutput]] = field(default_factory=list)
    x0_rewards: list[list[Future[RewardOutput]]] = field(default_factory=list)
    batches: int = 0
    credit_s: float = 0.0


def trained_steps_for(cfg: Config, iteration: int) -> list[int]:
    """Which SDE steps are trained: an SDE window (Flow-GRPO-Fast) or the first T-1 steps."""
    T, k = cfg.sampling.num_steps, cfg.train.sde_window
    if k > 0:
        rng = sde_window_rng(cfg.train.seed, iteration)
        span = cfg.train.sde_window_span or T - 1  # the last step (near-deterministic) is never in it
        start = int(rng.integers(0, span - k + 1))
        return list(range(start, start + k))
    return list(range(cfg.train.train_steps or T - 1))


class StopRequested:
    """SIGINT/SIGTERM ask for a graceful stop at the next iteration boundary; a second
    SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            log.info("stop requested: finishing this iteration, then checkpointing")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


class Trainer:
    """One run's model, optimizer, sampler and reward, and the loop over them.

    The reward scores on a worker thread of the trainer's own (`scorer`), started by the
    first rollouts sampled; `close()` finishes what it was given and ends it. `fit` closes
    it when its loop ends, however it ends; a caller driving `train_iteration` or `collect`
    itself closes the trainer, or uses it as a context manager:

        with Trainer(cfg, run) as trainer:
            row = trainer.train_iteration(0)
    """

    def __init__(self, cfg: Config, run: RunDir, stop: StopRequested | None = None):
        self.cfg, self.run = cfg, run
        self.algo = resolve_algorithm(cfg)
        self.stop = stop or StopRequested()
        self.device = resolve_device(cfg.model.device)
        # broadcast_buffers=False: the transformer's one buffer (the positional embedding) is
        # constant, and DDP's broadcast of it before a forward is a collective: the main
        # process's evaluation alone, or ranks with more micro-batches than others, would
        # leave it unmatched (a hang). Gradients are the only thing the processes exchange.
        self.accelerator = Accelerator(cpu=self.device.type == "cpu",
                                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
                                       **tracking.accelerator_kwargs(cfg.output.report_to, run.path))
        if self.device.type == "cuda":
            self.device = self.accelerator.device  # cuda:<local rank> under accelerate launch
        torch.manual_seed(cfg.train.seed)
        self.pipe = load_pipeline(cfg.model, self.device)
        self.lora_config = add_lora(self.pipe.transformer, cfg.model)
        params = lora_parameters(self.pipe.transformer)
        self.optimizer = make_optimizer(params, cfg)
        with warnings.catch_warnings():
            # torch >= 2.13 renames it forward_sync_buffers; accelerate's handler has only the
            # old name, which torch still honours (down to the floor, 2.5).
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            self.transformer, self.optimizer = self.accelerator.prepare(self.pipe.transformer, self.optimizer)
        self.ema = LoraEMA(params, cfg.train.ema_decay) if cfg.train.ema else None
        self.reward = build_reward(cfg.reward.weights, cfg.reward.device, cfg.reward.options)
        self.prompt_set = load_prompts(cfg.prompts)
        # The memory plan decides R (batch.rollout_cap when set, else what fits the card) and the
        # micro-batches that fit.
        self.memory_plan = plan_for_config(cfg)
        for problem in self.memory_plan.problems:
            log.warning("memory plan: %s", problem)
        self.sampler = GroupSampler.from_config(cfg, self.prompt_set.train, rollout_cap=self.memory_plan.rollout_cap)
        self.encoder = PromptEncoder(self.pipe, self.device, cfg.sampling.max_sequence_length, cfg.memory.embed_cache_size)
        self.sample_micro_batch = self.memory_plan.sample_micro_batch
        self.train_micro_batch = self.memory_plan.train_micro_batch
        self.buffer_device = torch.device("cpu") if cfg.memory.rollout_buffer == "cpu" else self.device
        self.latent_channels = self.pipe.transformer.config.in_channels
        self.latent_size = cfg.sampling.resolution // self.pipe.vae_scale_factor
        self.iteration = 0
        self.rollouts_total = 0
        self._scorer: AsyncRewardScorer | None = None

    @property
    def base_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.transformer)

    # ------------------------------------------------------------------ the reward's thread
    @property
    def scorer(self) -> AsyncRewardScorer:
        """The reward scorer's worker thread, started on first use (after a `close()`, afresh)."""
        if self._scorer is None:
            self._scorer = AsyncRewardScorer(self.reward)
        return self._scorer

    def close(self) -> None:
        """Wait for the rewards submitted to the scorer, then end its thread. Idempotent."""
        if self._scorer is not None:
            scorer, self._scorer = self._scorer, None
            scorer.close(wait=True)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        return {
            "lora": {k: v.cpu() for k, v in get_peft_model_state_dict(self.base_model).items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "rollouts_total": self.rollouts_total,
        }

    def load_state_dict(self, state: dict) -> None:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(self.base_model, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.rollouts_total = state["rollouts_total"]
        self.iteration = state["iteration"]

    def resume(self) -> bool:
        """Continue from the newest intact checkpoint (a damaged newer one is skipped); with
        none, start again from iteration 0."""
        found = load_latest_intact(self.run.path)  # every process reads it; the main one writes the run
        main = self.accelerator.is_main_process
        if found is None:
            if main:
                self.run.truncate_metrics(-1)
            log.info("no checkpoint to resume from: starting again from iteration 0")
            return False
        path, state = found
        self.load_state_dict(state)
        if main:
            self.run.truncate_metrics(self.iteration)
        log.info("resumed from %s at iteration %d", path.name, self.iteration)
        return True

    def checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            state = self.state_dict()
            # Skipped non-finite steps keep the weights finite; never checkpoint them if not.
            bad = [k for k, v in state["lora"].items() if not torch.isfinite(v).all()]
            if bad:
                raise FloatingPointError(f"LoRA weight {bad[0]} is not finite; not checkpointing it")
            save_checkpoint(self.run.path, self.iteration, state)

    # ------------------------------------------------------------------ rollouts
    def collect(self, plan: GroupPlan, schedule: Schedule, iteration: int) -> Rollouts:
        """Sample every rollout of the plan in fixed-size micro-batches, then score them.

        Under allocation "probe" (ALGORITHM.md 3) `plan` holds phase 1's probes: they are
        scored, the sampler plans phase 2 from their rewards, and the result holds both
        phases, rows renumbered to the whole plan (`Rollouts.plan`).
        """
        t0 = time.perf_counter()
        first = self._collect_phase(plan, schedule, iteration, phase=0)
        if self.algo.allocation != "probe":
            return first
        t_probe = time.perf_counter() - t0
        probe_groups = plan.group_ids()
        whole = self.sampler.second_phase(
            plan, [first.unit_rewards[probe_groups == g] for g in range(len(plan.prompts))])
        extra = replace(plan, group_sizes=[a - b for a, b in zip(whole.group_sizes, plan.group_sizes)])
        second = self._collect_phase(extra, schedule, iteration, phase=1) if extra.total_rollouts else None
        merged = merge_phases(first, second, whole)
        n2, g = extra.total_rollouts, self.sampler.granule
        merged.perf.update({
            "perf/sample_probe_s": t_probe, "perf/sample_phase2_s": time.perf_counter() - t0 - t_probe,
            # What one phase of the same rollouts would have cost, and the phase-2 slots left empty.
            "perf/sample_batches_one_phase": float(math.ceil(len(merged.rows) / self.sample_micro_batch)),
            "group/phase2_unfilled": float(-(-n2 // g) * g - n2),
        })
        return merged

    def _stop_agreed(self) -> bool:
        """A stop asked of any process, at the iteration boundary (an all-reduce max): every
        process leaves the loop after the same iteration, none is left waiting in a collective."""
        if self.accelerator.num_processes == 1:
            return self.stop.requested
        flag = torch.tensor([int(self.stop.requested)], device=self.accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # accelerate's reduce has no max
        return bool(flag.item())

    def _granule(self) -> int:
        """Rollouts in one sampling micro-batch across all processes: a phase that is a
        multiple of it keeps every process's passes full."""
        return self.sample_micro_batch * self.accelerator.num_processes

    def _collect_phase(self, plan: GroupPlan, schedule: Schedule, iteration: int, phase: int) -> Rollouts:
        """One sampling phase: every rollout of `plan`, scored (and, with step credit, every
        scored step's x0 prediction decoded and scored too)."""
        self._agree_micro_batches()
        rows = self._rows_of_this_process(plan.total_rollouts)
        noise = phase_initial_noise(
            self.cfg.train.seed, iteration, phase, plan.group_ids(), len(plan.prompts), self.latent_channels,
            self.latent_size, shared=self.cfg.sampling.group_noise == "shared")[rows]
        sde_seed = sde_noise_seed(self.cfg.train.seed, iteration, phase)
        points = self._credit_points(iteration)
        sampled = self._sample_and_submit(plan, schedule, rows, noise, sde_seed, points)
        return self._scored_rollouts(plan, rows, sampled, points)

    def _agree_micro_batches(self) -> None:
        """A halving on one rank (retry_on_oom) becomes every rank's size: they shard alike."""
        self.sample_micro_batch = agree_micro_batch(self.sample_micro_batch, self.accelerator)
        self.train_micro_batch = agree_micro_batch(self.train_micro_batch, self.accelerator)

    def _rows_of_this_process(self, total: int) -> list[int]:
        """The phase's global rows this process samples: those congruent to its rank."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if total < world:  # a process with no rollout would have nothing to take to the collectives
            raise ValueError(f"{total} rollouts in this sampling phase for {world} processes: each process needs "
                             "at least one; raise batch.rollout_cap or launch fewer processes")
        return list(range(rank, total, world))

    def _sample_and_submit(self, plan: GroupPlan, schedule: Schedule, rows: list[int], noise: torch.Tensor,
                           sde_seed: int, points: list[int]) -> SampledPhase:
        """Sample `rows` from `noise` in micro-batches, each handed to the scorer as soon as it is
        decoded: the reward scores one micro-batch while the next samples. Each row's SDE noise
        (from `sde_seed`) is drawn with its micro-batch, never the whole phase's at once."""
        embeds = self.encoder.encode(plan.prompts)
        uncond = self.encoder.negative()
        groups_of_rows = plan.group_ids()[rows]
        sampled = SampledPhase()
        self.transformer.eval()
        start = 0
        while start < len(rows):
            chunk = slice(start, min(start + self.sample_micro_batch, len(rows)))
            # A CUDA OOM halves the micro-batch and redoes this chunk (oom.retry_on_oom).
            pieces, self.sample_micro_batch = retry_on_oom(
                lambda mb: self._sample_chunk(chunk, mb, groups_of_rows, noise, embeds, uncond, schedule, rows,
                                              sde_seed, points),
                self.sample_micro_batch, log, "sampling")
            for groups, traj, images in pieces:
                self._submit_micro_batch(sampled, [plan.prompts[g] for g in groups], traj, images, points)
            start = chunk.stop
        return sampled

    def _submit_micro_batch(self, sampled: SampledPhase, prompts: list[str], traj: Trajectories, images: list,
                            points: list[int]) -> None:
        """Hand one micro-batch's images to the scorer and keep its trajectories for the update.
        With step credit its x0 predictions are decoded and handed over too, while the scorer works."""
        sampled.rewards.append(self.scorer.submit(images, prompts, [{} for _ in prompts]))
        sampled.latents.append(to_rollout_buffer(traj.latents, self.buffer_device))
        sampled.logps.append(to_rollout_buffer(traj.logp, self.buffer_device))
        sampled.batches += 1
        if points:
            t = time.perf_counter()
            sampled.x0_rewards.append([
                self.scorer.submit(decode_images(self.pipe, traj.x0_hat[:, j], self.cfg.memory.vae_decode),
                                   prompts, [{} for _ in prompts]) for j in range(len(points))])
            sampled.credit_s += time.perf_counter() - t

    def _scored_rollouts(self, plan: GroupPlan, rows: list[int], sampled: SampledPhase,
                         points: list[int]) -> Rollouts:
        """The phase's rollouts once their rewards are in, the rewards of every process's rows."""
        group_of_row = plan.group_ids()
        total = len(group_of_row)
        outputs = [f.result() for f in sampled.rewards]
        local_scores = np.concatenate([o.scores for o in outputs]) if outputs else np.zeros(0)
        scores = self._all_rows(local_scores, rows, total)
        extras = {k: self._all_rows(np.concatenate([o.extras[k] for o in outputs]), rows, total)
                  for k in (outputs[0].extras if outputs else {})}
        x0_values = self._x0_values(sampled, rows, total) if points else None
        perf = {"perf/sample_batches": float(sampled.batches),
                **({"perf/credit_s": sampled.credit_s} if points else {})}
        return Rollouts(
            rows=torch.tensor(rows), group=torch.tensor(group_of_row[rows]),
            latents=torch.cat(sampled.latents), logp_old=torch.cat(sampled.logps),
            rewards=scores, unit_rewards=self.reward.to_unit(scores), extras=extras,
            x0_values=x0_values, plan=plan, perf=perf,
        )

    def _x0_values(self, sampled: SampledPhase, rows: list[int], total: int) -> np.ndarray:
        """[total, P] unit-range rewards of every row's scored x0 predictions (ALGORITHM.md 4);
        the wait for them counts into the phase's credit time."""
        t = time.perf_counter()
        local = np.concatenate([np.stack([f.result().scores for f in fs], axis=1) for fs in sampled.x0_rewards])
        values = np.stack([self.reward.to_unit(self._all_rows(local[:, j], rows, total))
                           for j in range(local.shape[1])], axis=1)
        sampled.credit_s += time.perf_counter() - t
        return values

    def _credit_points(self, iteration: int) -> list[int]:
        """The steps whose x0 prediction is scored this iteration; none with step credit off."""
        if self.algo.step_credit != "x0_value":
            return []
        return adv_math.credit_points(self.cfg.sampling.num_steps, self.cfg.superflow.credit_every,
                                      trained_steps_for(self.cfg, iteration))

    def _sample_chunk(self, chunk: slice, micro_batch: int, groups_of_rows: np.ndarray, noise: torch.Tensor,
                      embeds: PromptEmbeds, uncond: PromptEmbeds, schedule: Schedule, rows: list[int], sde_seed: int,
                      x0_steps: list[int] = ()) -> list:
        """The rows of `chunk` sampled and decoded in pieces of `micro_batch`: [(groups, trajectories, images)].
        rows: the phase's global row of each local row (its SDE noise stream, from sde_seed);
        x0_steps: steps whose one-step x0 prediction the trajectories keep (step credit)."""
        out = []
        for start in range(chunk.start, chunk.stop, micro_batch):
            piece = slice(start, min(start + micro_batch, chunk.stop))
            groups = groups_of_rows[piece]
            cond = embeds.index(list(groups)).to(self.device, torch.float32)
            unc = uncond.repeat(len(groups))
            traj = sample_trajectories(
                self.transformer, noise[piece].to(self.device), schedule, cond,
                unc.to(self.device, torch.float32), self.cfg.sampling.guidance_scale,
                rollout_sde_noise(rows[piece], schedule.num_steps, self.latent_channels, self.latent_size, sde_seed),
                x0_steps=x0_steps,
            )
            out.append((groups, traj, decode_images(self.pipe, traj.latents[:, -1], self.cfg.memory.vae_decode)))
        return out

    def _all_rows(self, local: np.ndarray, rows: list[int], total: int) -> np.ndarray:
        """Scatter this process's values into the iteration's rows and sum over processes."""
        full = torch.zeros(total, dtype=torch.float64, device=self.device)
        full[rows] = torch.as_tensor(local, dtype=torch.float64, device=self.device)
        if self.accelerator.num_processes > 1:
            full = self.accelerator.reduce(full, reduction="sum")
        return full.cpu().numpy()

    # ------------------------------------------------------------------ update
    @property
    def loss_settings(self) -> LossSettings:
        """What `policy.step_loss` reads from this run's config and algorithm."""
        return LossSettings.from_config(self.cfg, self.algo)

    def reference_policy(self) -> contextlib.AbstractContextManager:
        """The KL reference: inside it the transformer is the base model (the LoRA adapter disabled)."""
        return adapters_disabled(self.base_model)

    def update(self, rollouts: Rollouts, adv: torch.Tensor, embeds: PromptEmbeds, schedule: Schedule,
               steps: list[int], iteration: int) -> dict[str, float]:
        """train.updates_per_iter optimizer steps over shuffled minibatches of the rollouts.

        The minibatches are drawn over the iteration's global rows (the same permutation on
        every process); each process trains its own rows of each, weighted so that the
        gradient averaged over processes is the one process's mean-loss gradient."""
        cfg = self.cfg
        total = len(rollouts.rewards)
        order = minibatch_order(cfg.train.seed, iteration, total)
        local_of_row = torch.full((total,), -1, dtype=torch.long)  # global row -> its index in our rollouts (-1: not ours)
        local_of_row[rollouts.rows] = torch.arange(len(rollouts.rows))
        uncond = self.encoder.negative()
        sums: dict[str, float] = {}
        count, grad_norms, skipped = 0, [], 0
        lr = learning_rate(cfg.train.lr, iteration, cfg.train.iterations, cfg.train.lr_schedule, cfg.train.lr_final_frac)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.transformer.eval()  # no dropout in SD3; keeps 8-bit layers in the mode they sampled in
        for rows_of_minibatch in order.chunk(cfg.train.updates_per_iter):
            minibatch = local_of_row[rows_of_minibatch]
            minibatch = minibatch[minibatch >= 0]
            # A CUDA OOM halves the micro-batch and redoes this minibatch from zero_grad.
            (mb_sums, mb_count), self.train_micro_batch = retry_on_oom(
                lambda mb: self.accumulate_gradients(minibatch, mb, rollouts, adv, embeds, uncond, schedule, steps,
                                                     minibatch_rows=len(rows_of_minibatch)),
                self.train_micro_batch, log, "training")
            grad_norm = float(self.accelerator.clip_grad_norm_(lora_parameters(self.base_model), cfg.train.grad_clip))
            if not finite_step(grad_norm):  # never let NaN/inf reach the optimizer (or a checkpoint)
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                log.warning("iteration %d: skipped an optimizer step with a non-finite loss or gradient "
                            "(grad norm %s, mean loss %s)", iteration + 1, grad_norm,
                            mb_sums.get("loss", math.nan) / max(mb_count, 1))
                continue
            for k, v in mb_sums.items():
                sums[k] = sums.get(k, 0.0) + v
            count += mb_count
            grad_norms.append(grad_norm)
            self.optimizer.step()
            if self.ema:
                self.ema.update()
        sums, count = self._sum_over_processes(sums, count)
        stats = {f"grpo/{k}": v / max(count, 1) for k, v in sums.items()}
        return {**stats, "grpo/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
                "grpo/skipped_steps": skipped, "train/lr": lr}

    def accumulate_gradients(self, minibatch: torch.Tensor, micro_batch: int, rollouts: Rollouts, adv: torch.Tensor,
                             embeds: PromptEmbeds, uncond: PromptEmbeds, schedule: Schedule, steps: list[int],
                             minibatch_rows: int | None = None) -> tuple[dict, int]:
        """zero_grad, then accumulate the minibatch's mean-loss gradient in micro-batches of `micro_batch`.

        minibatch: our rows of it (indices into `rollouts`); minibatch_rows: its rows on all
        processes (default: ours, one process). Returns the stats summed over (rollout,
        step) and that count."""
        self.optimizer.zero_grad(set_to_none=True)
        world = self.accelerator.num_processes
        minibatch_rows = len(minibatch) if minibatch_rows is None else minibatch_rows
        settings = self.loss_settings
        sums: dict[str, float] = {}
        count = 0
        # None of the minibatch is ours: a zero-weight pass on our first row still joins the gradient all-reduce.
        micro = list(minibatch.split(micro_batch)) if len(minibatch) else [torch.zeros(1, dtype=torch.long)]
        for m_idx, idx in enumerate(micro):
            rows = len(idx) if len(minibatch) else 0
            batch = {
                "latents": rollouts.latents[idx].to(self.device),
                "logp_old": rollouts.logp_old[idx].to(self.device),
                "adv": adv[idx].to(self.device),
                "cond": embeds.index(rollouts.group[idx].tolist()).to(self.device, torch.float32),
                "uncond": uncond.repeat(len(idx)).to(self.device, torch.float32),
            }
            for pos, step in enumerate(steps):
                last = m_idx == len(micro) - 1 and pos == len(steps) - 1
                with self._sync_unless(last):
                    loss, stats = step_loss(self.transformer, batch, schedule, step, pos, settings,
                                            self.reference_policy)
                    # Weight so the accumulated gradient is the mean over (rollout, step) of the
                    # whole minibatch: DDP averages over the processes, hence x world.
                    self.accelerator.backward(loss * (rows * world / minibatch_rows) / len(steps))
                for k, v in stats.items():  # every key on every process: they are summed by position
                    sums[k] = sums.get(k, 0.0) + (float(v) * rows if rows else 0.0)
                count += rows
        return sums, count

    def check_not_diverged(self, iteration: int) -> None:
        """Raise TrainingDiverged when a LoRA weight is beyond MAX_LORA_WEIGHT (or not finite)."""
        worst_name, worst = "", 0.0
        for name, param in self.base_model.named_parameters():
            if "lora_" in name:
                largest = param.detach().abs().max().item()
                if not largest <= worst:  # NaN counts as the worst
                    worst_name, worst = name, largest
        if not worst <= MAX_LORA_WEIGHT:
            raise TrainingDiverged(
                f"the run diverged at iteration {iteration + 1}: LoRA weight {worst_name} reached |w| = {worst:.3g}, "
                f"beyond {MAX_LORA_WEIGHT:g} (a sane run stays within a few units); train.lr={self.cfg.train.lr:g} is likely "
                "too high")

    def _sum_over_processes(self, sums: dict[str, float], count: int) -> tuple[dict[str, float], int]:
        """The update's stat sums and count over all processes (every process ends with the same)."""
        if self.accelerator.num_processes == 1:
            return sums, count
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=self.device)
        t = self.accelerator.reduce(t, reduction="sum").cpu()
        return dict(zip(keys, t[:-1].tolist())), int(t[-1])

    def _sync_unless(self, last: bool):
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.transformer)

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self, iteration: int) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        steps = trained_steps_for(cfg, iteration)
        sde_steps = steps if cfg.train.sde_window > 0 else None
        schedule = make_schedule(self.pipe.scheduler, cfg.sampling.num_steps, cfg.sampling.noise_level, sde_steps)
        self.sampler.granule = self._granule()  # the sampling micro-batch may have shrunk on an OOM
        plan = self.sampler.plan()
        rollouts = self.collect(plan, schedule, iteration)
        plan = rollouts.plan  # after a probe phase: probes + phase 2 of each prompt
        t_sample = time.perf_counter() - t0
        group_of_row = plan.group_ids()
        adv_kwargs = dict(
            unit_rewards=rollouts.unit_rewards,
            group_ids=group_of_row,
            baseline=self.algo.baseline,
            values_before=np.asarray(plan.values),
            first_visit=np.asarray(plan.first_visit),
            sigmas=schedule.sigmas,
            noise_level=cfg.sampling.noise_level,
            trained_steps=steps,
            weight_kind=self.algo.step_weights,
            clip=cfg.train.adv_clip,
            adv_std=self.algo.adv_std,
            eps=self.algo.adv_eps,
        )
        if self.algo.step_credit == "x0_value":
            t_credit = time.perf_counter()
            adv_all, adv_stats = adv_math.compute_credit_advantages(
                **adv_kwargs, x0_values=rollouts.x0_values, points=self._credit_points(iteration),
                num_steps=cfg.sampling.num_steps, mix=cfg.superflow.step_credit_mix)
            rollouts.perf["perf/credit_s"] += time.perf_counter() - t_credit
        else:
            adv_all, adv_stats = adv_math.compute_advantages(**adv_kwargs)
        adv = torch.as_tensor(adv_all, dtype=torch.float32)[rollouts.rows]
        embeds = self.encoder.encode(plan.prompts)
        update_stats = self.update(rollouts, adv, embeds, schedule, steps, iteration)
        self.check_not_diverged(iteration)
        per_group = [rollouts.unit_rewards[group_of_row == g] for g in range(len(plan.prompts))]
        tracker_stats = self.sampler.update(plan, per_group, drift=update_stats.get("grpo/approx_kl"))
        self.rollouts_total += plan.total_rollouts
        elapsed = time.perf_counter() - t0
        sizes = np.asarray(plan.group_sizes)
        return {
            "iteration": iteration + 1,
            "rollouts/iter": int(plan.total_rollouts),
            "rollouts/total": int(self.rollouts_total),
            **plan.stats(),
            "group/size_hist": {str(k): int(v) for k, v in zip(*np.unique(sizes, return_counts=True))},
            "reward/mean": float(rollouts.rewards.mean()),
            "reward/std": float(rollouts.rewards.std()),
            **{f"reward/{k}": float(v.mean()) for k, v in rollouts.extras.items()},
            **adv_stats,
            **tracker_stats,
            **update_stats,
            "perf/iter_s": elapsed,
            "perf/sample_s": t_sample,
            "perf/rollouts_per_s": plan.total_rollouts / elapsed,
            **rollouts.perf,
            **memory_stats(self.device),
        }


    # ------------------------------------------------------------------ eval, export, loop
    def eval_prompts(self) -> list[str]:
        """The prompts every evaluation of this run scores (prompts.eval_split, num_eval_prompts)."""
        return eval_subset(self.prompt_set.eval_prompts(self.cfg.prompts.eval_split), self.cfg.prompts.num_eval_prompts)

    def evaluate(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        prompts = self.eval_prompts()
        with (self.ema.swapped_in() if self.ema else contextlib.nullcontext()):
            # The unwrapped model: the main process evaluates alone, with no collective to match.
            return evaluate_and_save(
                self.pipe, self.base_model, self.encoder, self.reward, prompts, cfg.prompts.eval_seeds,
                self.run.samples_dir / f"{step:06d}", resolution=cfg.sampling.resolution,
                num_steps=cfg.sampling.eval_num_steps, guidance_scale=cfg.sampling.eval_guidance_scale,
                micro_batch=self.sample_micro_batch, vae_decode=cfg.memory.vae_decode,
                stop_requested=lambda: self.stop.requested,
            )

    def export(self, summary: console.RunSummary | None = None) -> Path:
        """The run's LoRA in lora/, its card showing eval samples before and after."""
        images, samples = card_samples(self.run.path, summary.final_step if summary is not None else None)
        with (self.ema.swapped_in() if self.ema else contextlib.nullcontext()):
            card = model_card(self.cfg, self.run.path.name, summary, samples)
            return export_lora(self.base_model, self.lora_config, self.run.lora_dir, card, self.run.path.name, images)

    def save_intermediate_lora(self) -> Path:
        """loras/<iteration>/ in lora/'s formats (output.save_lora_every), keeping the newest
        output.keep_loras of them."""
        step, name = self.iteration, self.run.path.name
        with (self.ema.swapped_in() if self.ema else contextlib.nullcontext()):
            card = model_card(self.cfg, name, step=step)
            path = export_lora(self.base_model, self.lora_config, self.run.intermediate_lora_dir(step), card,
                               f"{name}-{step:06d}")
        self.run.prune_intermediate_loras(self.cfg.output.keep_loras)
        return path

    def fit(self, progress: bool = True) -> str:
        """Train to cfg.train.iterations (or until a stop is requested). Returns the final state."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, run, main = self.cfg, self.run, self.accelerator.is_main_process
        total, report_to = cfg.train.iterations, cfg.output.report_to
        started, first = time.perf_counter(), self.iteration
        baseline, latest = console.evaluations(read_metrics(run.path)) if main else (None, None)
        bar = tqdm(total=total, initial=self.iteration, disable=not (progress and main), unit="it",
                   dynamic_ncols=True, desc="training")
        eval_prompts = self.eval_prompts()
        num_images = len(eval_prompts) * len(cfg.prompts.eval_seeds)
        if main:
            log.info(console.eval_scope_line(eval_prompts, list(cfg.prompts.eval_seeds), cfg.prompts.eval_split))

        def evaluate(step: int) -> dict:
            """One evaluation, with an indicator while it runs and its result line after."""
            nonlocal baseline, latest
            bar.set_description_str(f"evaluating step {step}")
            if bar.disable:
                log.info(console.eval_started_line(step, num_images))
            try:
                metrics = self.evaluate(step)
            except EvaluationStopped as err:
                # A stop must not wait minutes for an evaluation: it is abandoned (no samples,
                # no eval metrics at this step); the training state it would not change is kept.
                log.info("stop requested: evaluation at step %d abandoned (%s)", step, err)
                bar.set_description_str("training")
                return {}
            baseline = baseline or metrics
            latest = (step, metrics)
            bar.set_description_str("training")
            log.info(console.eval_line(step, total, metrics, baseline, cfg.prompts.eval_split))
            tracking.log_samples(self.accelerator, report_to, run.samples_dir / f"{step:06d}", step)
            return metrics

        tracking.init(self.accelerator, report_to, run.path, dataclasses.asdict(cfg))
        # Closing the trainer ends the reward scorer's thread with the loop, however the loop ends.
        with logging_redirect_tqdm(loggers=[log]), contextlib.closing(self):
            if self.iteration == 0 and main:
                step0 = evaluate(0)
                if step0:  # abandoned by a stop: a resume evaluates step 0 again
                    row0 = {"iteration": 0, **step0}
                    run.append_metrics(row0)
                    tracking.log_row(self.accelerator, report_to, row0, 0)
                bar.reset(total)  # the ETA counts training iterations, not the step-0 evaluation
            while self.iteration < total and not self._stop_agreed():
                row = self.train_iteration(self.iteration)
                self.iteration += 1
                if self.iteration % cfg.output.eval_every == 0 or self.iteration == total:
                    row.update(evaluate(self.iteration) if main else {})
                if main:
                    run.append_metrics({k: nan_safe(v) for k, v in row.items()})
                    tracking.log_row(self.accelerator, report_to, row, self.iteration)
                if self.iteration % cfg.output.checkpoint_every == 0 or self.iteration == total:
                    self.checkpoint()
                if main and cfg.output.save_lora_every and self.iteration % cfg.output.save_lora_every == 0:
                    self.save_intermediate_lora()
                rate = (time.perf_counter() - started) / (self.iteration - first)
                eta = rate * (total - self.iteration)
                postfix = {"rollouts": row["rollouts/iter"], "reward": f"{row['reward/mean']:.3f}"}
                if latest:
                    postfix["test"] = f"{latest[1]['eval/reward_mean']:.3f}"
                bar.set_postfix(postfix)
                bar.update(1)
                if main:
                    run.write_status(state="running", iteration=self.iteration, iterations=total,
                                     rollouts_total=self.rollouts_total, reward_mean=row["reward/mean"], eta_s=eta)
                    log.info(console.iteration_line(self.iteration, total, row))
        bar.close()
        stopped = self.iteration < total  # the loop ends early only on an agreed stop
        if stopped:
            self.checkpoint()
        state = "stopped" if stopped else "done"
        if main:
            summary = console.RunSummary(
                state=state, iterations=self.iteration, total=total, rollouts=self.rollouts_total,
                seconds=time.perf_counter() - started, baseline=baseline, final=latest[1] if latest else None,
                final_step=latest[0] if latest else None, lora_dir=run.lora_dir, samples_dir=run.samples_dir,
                split=cfg.prompts.eval_split)
            self.export(summary)
            for line in summary.lines():
                log.info(line)
        tracking.finish(self.accelerator, report_to)
        return state


def finite_step(grad_norm: float) -> bool:
    """An optimizer step may run: its gradient norm is finite. A NaN or infinite loss makes
    the gradient non-finite too, and the norm (after the cross-process reduce) is the same
    on every process, so all of them skip the same steps."""
    return math.isfinite(grad_norm)


def merge_phases(first: Rollouts, second: Rollouts | None, plan: GroupPlan) -> Rollouts:
    """Two sampling phases as one iteration's rollouts, following `plan` (probes + phase 2).

    Global rows are renumbered so each group's rows are contiguous, its probes first, as
    `plan.group_ids()` lays them out; each process keeps its own rows (only their numbers move).
    """
    if second is None:
        return replace(first, plan=plan)
    n1 = len(first.rewards)
    groups = np.concatenate([first.plan.group_ids(), second.plan.group_ids()])
    order = np.argsort(groups, kind="stable")  # new global row -> old (phase-1 rows, then phase-2 rows)
    if not np.array_equal(groups[order], plan.group_ids()):
        raise ValueError("the two phases' rollouts do not add up to the plan's group sizes")
    new_of_old = np.empty_like(order)
    new_of_old[order] = np.arange(len(order))
    rows = new_of_old[np.concatenate([first.rows.numpy(), second.rows.numpy() + n1])]

    def both(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b])[order]

    perf = {k: first.perf.get(k, 0.0) + second.perf.get(k, 0.0) for k in {**first.perf, **second.perf}}
    return Rollouts(
        rows=torch.as_tensor(rows), group=torch.cat([first.group, second.group]),
        latents=torch.cat([first.latents, second.latents]), logp_old=torch.cat([first.logp_old, second.logp_old]),
        rewards=both(first.rewards, second.rewards), unit_rewards=both(first.unit_rewards, second.unit_rewards),
        extras={k: both(first.extras[k], second.extras[k]) for k in first.extras},
        x0_values=None if first.x0_values is None else both(first.x0_values, second.x0_values),
        plan=plan, perf=perf,
    )


def learning_rate(lr: float, iteration: int, iterations: int, schedule: str, final_frac: float) -> float:
    """train.lr_schedule: the learning rate of iteration i (0-based) of N.

    constant: lr. cosine: lr_i = lr (f + (1 - f) (1 + cos(pi i / (N - 1))) / 2), with
    f = final_frac: lr at the first iteration, f lr at the last. An iteration past N (none
    is trained) stays at f lr."""
    if schedule == "constant":
        return lr
    progress = min(iteration / max(iterations - 1, 1), 1.0)
    return lr * (final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(params: list[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "adamw8bit":
        require_bitsandbytes("train.optimizer=adamw8bit")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def memory_stats(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"mem/peak_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def nan_safe(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value
