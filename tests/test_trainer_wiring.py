"""The trainer's wiring of the math, each checked against an independent computation.

Every test here moves the LoRA away from zero or sets up values that differ between the
right and the wrong wiring, so a swapped argument or a missing term changes the numbers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import trainer_step_loss
from superflow_lite import advantages as adv_math
from superflow_lite import policy as policy_module
from superflow_lite import trainer as trainer_module
from superflow_lite.algorithms import resolve_algorithm
from superflow_lite.config import build_config
from superflow_lite.rollout import make_schedule, predict_velocity
from superflow_lite.sde import sde_step, sde_step_mean_std
from superflow_lite.trainer import Trainer, trained_steps_for

TWO_PROMPTS = ["a photo of two red circles", "a photo of a blue square to the left of a green triangle"]


def perturb_lora(trainer: Trainer, std: float = 0.05, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainer.base_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def collect(trainer: Trainer, iteration: int = 0, sde_steps=None):
    cfg = trainer.cfg
    schedule = make_schedule(trainer.pipe.scheduler, cfg.sampling.num_steps, cfg.sampling.noise_level, sde_steps)
    plan = trainer.sampler.plan()
    return plan, schedule, trainer.collect(plan, schedule, iteration=iteration)


def batch_of(trainer: Trainer, plan, rollouts, adv: torch.Tensor) -> dict:
    embeds = trainer.encoder.encode(plan.prompts)
    n = len(rollouts.rows)
    return {"latents": rollouts.latents, "logp_old": rollouts.logp_old, "adv": adv,
            "cond": embeds.index(rollouts.group.tolist()), "uncond": trainer.encoder.negative().repeat(n)}


def lora_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in trainer.base_model.named_parameters()
            if "lora_" in n and p.grad is not None}


def test_kl_term_matches_an_independent_reference_with_the_adapter_really_off(make_trainer, tiny_pipe):
    beta = 0.5
    trainer = make_trainer(f"train.kl_beta={beta}")
    plan, schedule, rollouts = collect(trainer)
    perturb_lora(trainer)
    steps = trained_steps_for(trainer.cfg, 0)
    adv = torch.zeros(len(rollouts.rows), len(steps))  # isolates the KL term in the loss
    batch = batch_of(trainer, plan, rollouts, adv)
    g = trainer.cfg.sampling.guidance_scale
    for pos, step in enumerate(steps):
        loss, stats = trainer_step_loss(trainer, batch, schedule, step, pos)
        x = batch["latents"][:, step]
        t = schedule.timesteps[step]
        # The reference is a separately loaded base model: no adapters exist in it at all.
        v_ref = predict_velocity(tiny_pipe.transformer, x, t, batch["cond"], batch["uncond"], g)
        with torch.no_grad():
            v_pol = predict_velocity(trainer.transformer, x, t, batch["cond"], batch["uncond"], g)
        s, s_next, sig = schedule.sigmas[step], schedule.sigmas[step + 1], schedule.sigma_t[step]
        dt = s_next - s

        def mean_of(v):  # ALGORITHM.md 1, written out again in float64
            x64, v64 = x.double(), v.double()
            return x64 * (1 + sig**2 * dt / (2 * s)) + v64 * (1 + sig**2 * (1 - s) / (2 * s)) * dt

        kl = ((mean_of(v_pol) - mean_of(v_ref)) ** 2).flatten(1).mean(1) / (2 * sig**2)
        assert kl.mean().item() > 1e-6  # the LoRA really moved the policy
        assert stats["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-3)
        assert loss.item() == pytest.approx(beta * kl.mean().item(), rel=1e-3)
    # The adapters are on again after the reference pass.
    with torch.no_grad():
        after = predict_velocity(trainer.transformer, x, t, batch["cond"], batch["uncond"], g)
    assert torch.equal(after, v_pol)


def test_sde_noise_scale_measured_empirically():
    """The sampler's step std is a*sqrt(s/(1-s))*sqrt(-dt), with s_1 in place of s at s = 1."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8).expand(4000, -1, -1, -1).contiguous()
    v = torch.randn(1, 4, 8, 8).expand(4000, -1, -1, -1).contiguous()
    sigmas = [1.0, 0.96, 0.913, 0.5, 0.009, 0.0]
    gen = torch.Generator().manual_seed(1)
    for i, a in [(0, 0.7), (1, 0.7), (3, 1.0), (4, 0.7)]:
        s, s_next = sigmas[i], sigmas[i + 1]
        s_hat = sigmas[1] if s == 1.0 else s
        sigma_t = a * math.sqrt(s / (1 - s_hat))
        x_next, _, mu = sde_step(x, v, s, s_next, sigma_t, generator=gen)
        residual = (x_next - mu).double()
        expected = sigma_t * math.sqrt(s - s_next)
        assert residual.std().item() == pytest.approx(expected, rel=0.01)
        assert residual.mean().abs().item() < 0.01 * expected
        # The mean is the drift of ALGORITHM.md 1; with a = 0 it would be the Euler step.
        mu_ref, _ = sde_step_mean_std(x, v, s, s_next, 0.0)
        assert torch.allclose(mu_ref, x + v * (s_next - s), atol=1e-6)


def test_tracker_baseline_sees_the_values_before_this_iterations_update(tmp_path, make_trainer, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TWO_PROMPTS) + "\n")
    trainer = make_trainer(f"prompts.source={prompts}", "superflow.baseline=tracker",
                           "train.kl_beta=0")
    seen = []
    real = adv_math.compute_advantages

    def spy(*args, **kwargs):
        seen.append((np.asarray(kwargs["values_before"]).copy(), np.asarray(kwargs["first_visit"]).copy()))
        return real(*args, **kwargs)

    monkeypatch.setattr(adv_math, "compute_advantages", spy)
    trainer.train_iteration(0)
    before = {p: trainer.sampler.trackers.value(p) for p in TWO_PROMPTS}  # after iteration 0's update
    plan_of = trainer.sampler.plan
    plans = []
    monkeypatch.setattr(trainer.sampler, "plan", lambda: plans.append(plan_of()) or plans[-1])
    trainer.train_iteration(1)
    after = {p: trainer.sampler.trackers.value(p) for p in TWO_PROMPTS}
    values, first = seen[1]
    expected = [before[p] for p in plans[0].prompts]
    assert not first.any()  # both prompts were seen in iteration 0
    assert values.tolist() == pytest.approx(expected, abs=1e-12)
    assert any(abs(after[p] - before[p]) > 1e-6 for p in TWO_PROMPTS)  # the update did move them


def test_sde_window_reads_its_own_advantage_column_and_trains_only_the_window(make_trainer, monkeypatch):
    trainer = make_trainer("sampling.num_steps=6", "train.sde_window=2", "train.kl_beta=0")
    steps = trained_steps_for(trainer.cfg, 5)
    assert len(steps) == 2 and steps[-1] < 5  # the last step is never in a window
    iteration = next(i for i in range(50) if trained_steps_for(trainer.cfg, i)[0] > 0)
    steps = trained_steps_for(trainer.cfg, iteration)
    plan, schedule, rollouts = collect(trainer, iteration, sde_steps=steps)
    assert [schedule.is_sde(i) for i in range(6)] == [i in steps for i in range(6)]
    assert torch.all(rollouts.logp_old[:, [i for i in range(6) if i not in steps]] == 0)
    n = len(rollouts.rows)
    adv = torch.tensor([[1.0, 3.0]]).repeat(n, 1)  # column 0 -> -1, column 1 -> -3 at ratio 1
    batch = batch_of(trainer, plan, rollouts, adv)
    for pos, step in enumerate(steps):
        loss, stats = trainer_step_loss(trainer, batch, schedule, step, pos)
        assert stats["ratio"].item() == pytest.approx(1.0, abs=1e-5)
        assert loss.item() == pytest.approx(-adv[0, pos].item(), rel=1e-4)
    # The update trains exactly the window's steps, each with its own column.
    calls = []
    real = trainer_module.step_loss
    monkeypatch.setattr(trainer_module, "step_loss", lambda tr, b, s, step, pos, *a: calls.append((step, pos)) or
                        real(tr, b, s, step, pos, *a))
    trainer.train_iteration(iteration)
    assert sorted(set(calls)) == [(step, pos) for pos, step in enumerate(steps)]


def test_sde_window_span_keeps_the_window_among_the_first_steps(fast_overrides):
    def starts(*extra):
        cfg = build_config("tiny", None, fast_overrides + ["sampling.num_steps=10", "train.sde_window=2", *extra])
        windows = [trained_steps_for(cfg, i) for i in range(200)]
        assert all(w == list(range(w[0], w[0] + 2)) for w in windows)
        return {w[0] for w in windows}

    assert starts("train.sde_window_span=2") == {0}
    assert starts("train.sde_window_span=4") == {0, 1, 2}
    assert starts() == set(range(8))  # anywhere but the last step


def test_default_trains_every_step_but_the_last(make_trainer, monkeypatch):
    trainer = make_trainer("train.kl_beta=0")
    T = trainer.cfg.sampling.num_steps
    calls = []
    real = trainer_module.step_loss
    monkeypatch.setattr(trainer_module, "step_loss", lambda tr, b, s, step, *a: calls.append(step) or
                        real(tr, b, s, step, *a))
    trainer.train_iteration(0)
    assert sorted(set(calls)) == list(range(T - 1))
    trainer.cfg.train.train_steps = T
    assert trained_steps_for(trainer.cfg, 0) == list(range(T))


@pytest.mark.parametrize("micro_batch", [1, 2])
def test_micro_batches_accumulate_the_whole_batch_gradient(make_trainer, micro_batch):
    trainer = make_trainer("train.kl_beta=0.1")
    plan, schedule, rollouts = collect(trainer)
    perturb_lora(trainer)
    steps = trained_steps_for(trainer.cfg, 0)
    n = len(rollouts.rows)
    adv = torch.randn(n, len(steps), generator=torch.Generator().manual_seed(0))
    embeds = trainer.encoder.encode(plan.prompts)
    uncond = trainer.encoder.negative()
    minibatch = torch.arange(n - 1) if n % 2 == 0 else torch.arange(n)  # an odd count: unequal micro-batches
    trainer.accumulate_gradients(minibatch, len(minibatch), rollouts, adv, embeds, uncond, schedule, steps)
    whole = lora_grads(trainer)
    trainer.accumulate_gradients(minibatch, micro_batch, rollouts, adv, embeds, uncond, schedule, steps)
    split = lora_grads(trainer)
    assert whole.keys() == split.keys() and whole
    for name in whole:
        assert torch.allclose(split[name], whole[name], rtol=1e-4, atol=1e-7), name
    # And the whole-batch gradient is the gradient of the mean loss over (rollout, step).
    trainer.optimizer.zero_grad(set_to_none=True)
    batch = batch_of(trainer, plan, rollouts, adv)
    batch = {k: (v[minibatch] if torch.is_tensor(v) else v.index(minibatch.tolist())) for k, v in batch.items()}
    losses = [trainer_step_loss(trainer, batch, schedule, step, pos)[0] for pos, step in enumerate(steps)]
    total = sum(losses) / len(steps)
    total.backward()
    for name, grad in lora_grads(trainer).items():
        assert torch.allclose(grad, whole[name], rtol=1e-4, atol=1e-7), name


def test_detached_unconditional_branch_leaves_only_the_conditional_gradient(make_trainer):
    trainer = make_trainer()
    plan, schedule, rollouts = collect(trainer)
    perturb_lora(trainer)
    batch = batch_of(trainer, plan, rollouts, torch.zeros(len(rollouts.rows), 1))
    x, t, g = batch["latents"][:, 1], schedule.timesteps[1], 4.5

    def grads_of(fn):
        trainer.optimizer.zero_grad(set_to_none=True)
        out = fn()
        out.sum().backward()
        return out.detach(), lora_grads(trainer)

    v_det, g_det = grads_of(lambda: predict_velocity(trainer.transformer, x, t, batch["cond"], batch["uncond"], g,
                                                     detach_uncond=True))
    v_full, g_full = grads_of(lambda: predict_velocity(trainer.transformer, x, t, batch["cond"], batch["uncond"], g))
    _, g_cond = grads_of(lambda: predict_velocity(trainer.transformer, x, t, batch["cond"], None, g))
    assert torch.equal(v_det, v_full)  # the same values, only the gradient differs
    for name in g_cond:
        # v = v_u + g (v_c - v_u) with v_u detached: d v = g d v_c.
        scale = g_cond[name].abs().max().item()
        assert torch.allclose(g_det[name], g * g_cond[name], rtol=1e-3, atol=1e-4 * scale), name
    assert any(not torch.allclose(g_full[n], g_det[n], rtol=1e-3) for n in g_cond)


def test_flow_grpo_is_flow_grpo_whatever_the_superflow_switches_say(make_trainer, monkeypatch):
    trainer = make_trainer("algorithm=flow_grpo", "superflow.baseline=tracker", "superflow.step_weights=sigma",
                           "superflow.dynamic_groups=true")
    cfg = trainer.cfg
    spec = resolve_algorithm(cfg)
    assert (spec.prompt_choice, spec.dynamic_groups, spec.baseline, spec.step_weights) == \
        ("uniform", False, "group_mean", "none")
    assert (spec.adv_std, spec.adv_eps, spec.detach_uncond) == ("global", 1e-4, True)
    seen = {}
    real = adv_math.compute_advantages
    monkeypatch.setattr(adv_math, "compute_advantages", lambda *a, **k: seen.update(k) or real(*a, **k))
    trainer.train_iteration(0)
    assert (seen["baseline"], seen["weight_kind"], seen["adv_std"], seen["eps"]) == ("group_mean", "none", "global", 1e-4)
    sizes = trainer.sampler.plan().group_sizes
    assert sizes == [cfg.batch.group_size] * len(sizes)


@pytest.mark.parametrize("detach", [True, False])
def test_the_update_uses_the_configured_cfg_detach(make_trainer, monkeypatch, detach):
    trainer = make_trainer("train.kl_beta=0", f"train.detach_uncond={str(detach).lower()}")
    plan, schedule, rollouts = collect(trainer)
    seen = []
    real = policy_module.predict_velocity
    monkeypatch.setattr(policy_module, "predict_velocity",
                        lambda *a, **k: seen.append(k.get("detach_uncond", False)) or real(*a, **k))
    n, steps = len(rollouts.rows), trained_steps_for(trainer.cfg, 0)
    trainer.accumulate_gradients(torch.arange(n), n, rollouts, torch.zeros(n, len(steps)),
                                 trainer.encoder.encode(plan.prompts), trainer.encoder.negative(), schedule, steps)
    assert seen == [detach] * len(steps)  # one policy pass per trained step, no reference pass at beta 0


def test_eval_split_val_scores_the_validation_prompts(make_trainer):
    from superflow_lite.world.prompts import val_prompts

    trainer = make_trainer("prompts.eval_split=val", "prompts.num_eval_prompts=3",
                           "sampling.eval_num_steps=2")
    trainer.evaluate(0)
    import json

    index = json.loads((trainer.run.samples_dir / "000000" / "index.json").read_text())
    assert {row["prompt"] for row in index} <= set(val_prompts()) and len(index) == 3


def test_shared_group_noise_starts_a_group_from_one_noise_and_its_probe_phase_too(make_trainer):
    trainer = make_trainer("sampling.group_noise=shared", "superflow.allocation=probe",
                           "superflow.probe_size=2", "sampling.micro_batch=4", "train.kl_beta=0")
    plan, _, rollouts = collect(trainer)
    start, group = rollouts.latents[:, 0], rollouts.group
    assert len(set(group.tolist())) == 2 and len(group) > 4  # both phases, two groups
    for g in range(2):
        rows = start[group == g]
        assert all(torch.equal(rows[0], r) for r in rows)  # probes and phase 2 alike
    assert not torch.equal(start[group == 0][0], start[group == 1][0])
    # The SDE noise still differs within a group: the samples do.
    finals = rollouts.latents[group == 0][:, -1]
    assert not torch.equal(finals[0], finals[1])


def test_a_rollouts_sde_noise_does_not_depend_on_the_micro_batch_that_samples_it(tmp_path, make_trainer):
    """Per-row noise streams: 1 or N processes, and any micro-batch (an OOM halving), sample the same rollouts."""
    latents = []
    for micro_batch in (8, 4):
        trainer = make_trainer(f"sampling.micro_batch={micro_batch}", path=tmp_path / str(micro_batch))
        _, _, rollouts = collect(trainer)
        latents.append(rollouts.latents)
    assert latents[0].shape[0] == 8
    # A batch of 4 and of 8 round float32 matmuls differently (~3e-5 after 4 steps); a noise
    # stream tied to the micro-batch moves a latent by the SDE's std, ~0.1 or more.
    torch.testing.assert_close(latents[0], latents[1], rtol=0, atol=2e-4)
