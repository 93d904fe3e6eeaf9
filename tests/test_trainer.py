"""The policy update on the real diffusers stack (ALGORITHM.md 2), on the tiny world."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import trainer_step_loss
from superflow_lite.rollout import make_schedule
from superflow_lite.trainer import Trainer, trained_steps_for


@pytest.fixture
def trainer(make_trainer):
    return make_trainer("train.kl_beta=0.04")


def collect_once(trainer: Trainer):
    schedule = make_schedule(trainer.pipe.scheduler, trainer.cfg.sampling.num_steps, trainer.cfg.sampling.noise_level)
    plan = trainer.sampler.plan()
    return plan, schedule, trainer.collect(plan, schedule, iteration=0)


def training_batch(trainer: Trainer, plan, rollouts, adv: torch.Tensor) -> dict:
    idx = torch.arange(len(rollouts.rows))
    embeds = trainer.encoder.encode(plan.prompts)
    uncond = trainer.encoder.negative()
    return {
        "latents": rollouts.latents[idx], "logp_old": rollouts.logp_old[idx], "adv": adv,
        "cond": embeds.index(rollouts.group[idx].tolist()),
        "uncond": uncond.repeat(len(idx)),
    }


def test_first_update_has_ratio_one_and_zero_kl(trainer):
    plan, schedule, rollouts = collect_once(trainer)
    steps = trained_steps_for(trainer.cfg, 0)
    adv = torch.randn(len(rollouts.rows), len(steps))
    batch = training_batch(trainer, plan, rollouts, adv)
    for pos, step in enumerate(steps):
        loss, stats = trainer_step_loss(trainer, batch, schedule, step, pos)
        assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-5)
        assert stats["clipped"].item() == 0.0
        assert stats["kl"].item() == 0.0  # LoRA B starts at zero: the policy IS the reference


def test_gradients_reach_only_lora_and_reference_is_the_base_model(trainer, tiny_pipe):
    plan, schedule, rollouts = collect_once(trainer)
    steps = trained_steps_for(trainer.cfg, 0)
    batch = training_batch(trainer, plan, rollouts, torch.ones(len(rollouts.rows), len(steps)))
    loss, _ = trainer_step_loss(trainer, batch, schedule, steps[0], 0)
    loss.backward()
    named = dict(trainer.base_model.named_parameters())
    with_grad = [n for n, p in named.items() if p.grad is not None]
    assert with_grad and all("lora_" in n for n in with_grad)
    assert all(not p.requires_grad for n, p in named.items() if "lora_" not in n)
    # Move the LoRA away from zero, then the disabled-adapter pass must equal the base model.
    with torch.no_grad():
        for n, p in named.items():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = rollouts.latents[:2, 1]
    kwargs = dict(timestep=torch.full((2,), 500.0), encoder_hidden_states=batch["cond"].embeds[:2],
                  pooled_projections=batch["cond"].pooled[:2], return_dict=False)
    with torch.no_grad():
        adapted = trainer.transformer(hidden_states=x, **kwargs)[0]
        trainer.base_model.disable_adapters()
        reference = trainer.transformer(hidden_states=x, **kwargs)[0]
        trainer.base_model.enable_adapters()
        base = tiny_pipe.transformer(hidden_states=x, **kwargs)[0]
    assert torch.equal(reference, base)
    assert not torch.allclose(adapted, base)


def test_one_iteration_changes_lora_and_logs_metrics(trainer):
    before = {n: p.detach().clone() for n, p in trainer.base_model.named_parameters() if p.requires_grad}
    row = trainer.train_iteration(0)
    after = dict(trainer.base_model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    # Gaussian init zeroes lora_B, so lora_A gets no gradient at the first step (see STACK notes).
    assert any("lora_B" in n for n in changed)
    assert row["rollouts/iter"] <= trainer.cfg.batch.rollout_cap
    for key in ("reward/mean", "grpo/kl", "grpo/clipped", "grpo/ratio", "group/size_hist", "adv/step0/mean"):
        assert key in row
    assert np.isfinite(row["grpo/loss"])


def test_the_learning_rate_schedules():
    """train.lr_schedule: constant is lr throughout; cosine runs from lr at the first iteration to
    lr_final_frac x lr at the last, through their mean halfway, never rising."""
    from superflow_lite.trainer import learning_rate

    assert [learning_rate(1e-3, i, 9, "constant", 0.1) for i in (0, 4, 8)] == [1e-3] * 3
    cosine = [learning_rate(1e-3, i, 9, "cosine", 0.1) for i in range(9)]
    assert cosine[0] == pytest.approx(1e-3) and cosine[-1] == pytest.approx(1e-4)
    assert cosine[4] == pytest.approx(0.55e-3)  # cos(pi / 2) = 0: halfway between lr and f lr
    assert cosine[2] == pytest.approx(1e-4 + 0.9e-3 * (1 + np.cos(np.pi / 4)) / 2)
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    assert learning_rate(1e-3, 12, 9, "cosine", 0.1) == pytest.approx(1e-4)


def test_the_optimizer_steps_at_the_scheduled_learning_rate(make_trainer):
    """A cosine to zero over 2 iterations: the first trains at lr, the second at 0 and so leaves
    the LoRA exactly as it was (AdamW's step and its weight decay both scale with lr)."""
    trainer = make_trainer("train.lr_schedule=cosine", "train.lr_final_frac=0", "train.iterations=2")
    lora = lambda: {n: p.detach().clone() for n, p in trainer.base_model.named_parameters() if p.requires_grad}
    before = lora()
    first = trainer.train_iteration(0)
    after_first = lora()
    second = trainer.train_iteration(1)
    assert first["train/lr"] == trainer.cfg.train.lr and second["train/lr"] == 0.0
    assert any(not torch.equal(before[n], after_first[n]) for n in before)
    assert all(torch.equal(after_first[n], p) for n, p in lora().items())


def test_the_samplers_cap_is_the_configs_or_else_the_memory_plans(make_trainer):
    set_by_hand = make_trainer("batch.rollout_cap=6")
    assert set_by_hand.sampler.rollout_cap == 6
    planned = make_trainer("batch.rollout_cap=0", path=set_by_hand.run.path.parent / "planned")
    assert planned.sampler.rollout_cap == planned.memory_plan.rollout_cap > 0
