"""Two-phase collection and x0-value step credit in the real training loop (tiny world)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from superflow_lite.rollout import decode_images, make_schedule, predict_velocity
from superflow_lite.trainer import Trainer

# 2 prompts x 2 probes = one sampling micro-batch of 4; the cap of 8 leaves one more for phase 2.
PROBE = ["superflow.allocation=probe", "superflow.probe_size=2", "sampling.micro_batch=4", "train.kl_beta=0"]


def rescore(trainer: Trainer, latents: torch.Tensor, prompts: list[str]) -> np.ndarray:
    images = decode_images(trainer.pipe, latents, trainer.cfg.memory.vae_decode)
    return trainer.reward.to_unit(trainer.reward(images, prompts, [{} for _ in prompts]).scores)


def test_probe_iteration_trains_on_both_phases_in_whole_micro_batches(make_trainer, monkeypatch):
    trainer = make_trainer(*PROBE)
    phases = []
    real = trainer._collect_phase
    monkeypatch.setattr(trainer, "_collect_phase", lambda *a, **k: phases.append(real(*a, **k)) or phases[-1])
    seen = {}
    real_update = trainer.update
    monkeypatch.setattr(trainer, "update", lambda r, *a: seen.setdefault("rollouts", r) and real_update(r, *a))
    before = {n: p.detach().clone() for n, p in trainer.base_model.named_parameters() if p.requires_grad}
    row = trainer.train_iteration(0)
    probes, extra = phases[0], phases[1]
    rollouts, plan = seen["rollouts"], seen["rollouts"].plan
    assert len(probes.rows) == 4 and len(extra.rows) == 4  # each phase one full micro-batch
    assert row["rollouts/iter"] == 8 <= trainer.cfg.batch.rollout_cap
    assert (row["group/probe_rollouts"], row["group/phase2_rollouts"]) == (4, 4)
    assert row["perf/sample_batches"] == 2 and row["perf/sample_batches_one_phase"] == 2
    assert row["perf/sample_probe_s"] > 0 and row["perf/sample_phase2_s"] > 0
    assert plan.probe_sizes == [2, 2] and sum(plan.group_sizes) == 8
    # Phase 2 starts from fresh noise, not phase 1's again.
    assert not any(torch.equal(a, b) for a in probes.latents[:, 0] for b in extra.latents[:, 0])
    # Every stored trajectory sits at the global row whose reward and group it carries.
    ids = plan.group_ids()
    assert rollouts.group.tolist() == ids[rollouts.rows.numpy()].tolist()
    prompts = [plan.prompts[g] for g in rollouts.group.tolist()]
    assert rescore(trainer, rollouts.latents[:, -1], prompts) == pytest.approx(rollouts.unit_rewards[rollouts.rows.numpy()])
    # Each group holds its own probes first, then its phase-2 rollouts.
    for g in range(2):
        probe_r = probes.unit_rewards[probes.plan.group_ids() == g]
        extra_r = extra.unit_rewards[extra.plan.group_ids() == g]
        assert rollouts.unit_rewards[ids == g].tolist() == pytest.approx(np.concatenate([probe_r, extra_r]).tolist())
    after = dict(trainer.base_model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_x0_values_are_the_rewards_of_the_one_step_predictions(make_trainer):
    trainer = make_trainer("superflow.step_credit=x0_value", "train.kl_beta=0")
    T = trainer.cfg.sampling.num_steps
    schedule = make_schedule(trainer.pipe.scheduler, T, trainer.cfg.sampling.noise_level)
    plan = trainer.sampler.plan()
    rollouts = trainer.collect(plan, schedule, iteration=0)
    assert rollouts.x0_values.shape == (plan.total_rollouts, T)  # trained steps 0..T-2 need V(0..T-1)
    # Independently: x0_hat_t = x_t - s_t v_t with the sampler's CFG velocity, decoded and scored.
    embeds = trainer.encoder.encode(plan.prompts).index(rollouts.group.tolist())
    uncond = trainer.encoder.negative().repeat(len(rollouts.rows))
    prompts = [plan.prompts[g] for g in rollouts.group.tolist()]
    for t in (0, 2):
        x = rollouts.latents[:, t]
        with torch.no_grad():
            v = predict_velocity(trainer.transformer, x, schedule.timesteps[t], embeds, uncond,
                                 trainer.cfg.sampling.guidance_scale)
        expected = rescore(trainer, x - schedule.sigmas[t] * v, prompts)
        assert rollouts.x0_values[rollouts.rows.numpy(), t] == pytest.approx(expected, abs=1e-6)
    assert np.ptp(rollouts.x0_values, axis=1).max() > 0  # the predicted value does move along the flow


def test_credit_iteration_logs_its_cost_and_trains(make_trainer):
    trainer = make_trainer("superflow.step_credit=x0_value", "superflow.credit_every=2", "train.kl_beta=0")
    row = trainer.train_iteration(0)
    assert row["credit/points"] == 2  # T = 4, every 2nd step: V(0), V(2), then the final reward
    assert row["perf/credit_s"] > 0 and np.isfinite(row["grpo/loss"])
    assert row["credit/step0/delta_mean"] == pytest.approx(row["credit/step1/delta_mean"])  # one shared interval
