"""How much of a policy gradient is signal: the cosine between the LoRA gradients of
independent batches of the same prompts.

Each batch is sampled fresh (its own initial and SDE noise) from the base model, scored,
turned into Flow-GRPO advantages, and its clipped-objective gradient at ratio 1 is taken.
If a batch's gradient is g + n_k with the true gradient g and independent noise n_k, the
expected cosine between two batches is |g|^2 / (|g|^2 + E|n|^2): near 0 means the
direction is mostly noise, and averaging m batches raises the signal share m-fold.

    OMP_NUM_THREADS=1 python benchmarks/gradient_snr.py --group-size 16 --batches 4

Prints the pairwise cosines and their mean (and, with --x0-credit, the same for
advantages re-estimated per step from the model's one-step prediction of the clean sample:
the change in the reward of decode(x_t - s_t v_t) that step t caused, relative to its group).

Does the signal share grow linearly with the batch? With --merge, the mean of M batches'
gradients is the gradient of one batch of M x 2G rollouts (M groups per prompt), and the
cosine between such means is measured directly (disjoint blocks of the batches drawn) beside
what independent noise predicts from the single batches (`predicted_share`):

    OMP_NUM_THREADS=1 python benchmarks/gradient_snr.py --group-size 16 --batches 128 --merge 4 16 \
        --prompts "a photo of two green triangles" "a photo of three green circles" \
        --out benchmarks/results/gradient_snr/counting-g16-128batches.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from superflow_lite import advantages as adv_math  # noqa: E402
from superflow_lite.config import build_config  # noqa: E402
from superflow_lite.rollout import decode_images, make_schedule, predict_velocity  # noqa: E402
from superflow_lite.rundir import RunDir  # noqa: E402
from superflow_lite.trainer import Trainer, trained_steps_for  # noqa: E402

PROMPTS = ["a photo of two red circles", "a photo of a blue square to the left of a green triangle"]


def merged_cosine(gram: np.ndarray, m: int) -> float:
    """Mean cosine between the means of disjoint blocks of m consecutive batches, read off the
    Gram matrix of the batches' gradients (gram[i, j] = g_i . g_j); leftover batches unused.

    The mean of a block's gradients is the gradient of the block merged into one batch.
    """
    blocks = len(gram) // m
    if blocks < 2:
        raise ValueError(f"{len(gram)} batches make fewer than 2 blocks of {m}")
    block_of = np.arange(blocks * m) // m
    ones = np.eye(blocks)[block_of]                       # [blocks*m, blocks] membership
    merged = ones.T @ gram[:blocks * m, :blocks * m] @ ones  # sums' dot products (the 1/m cancels in a cosine)
    return float(pairwise_cosines(merged).mean())


def pairwise_cosines(gram: np.ndarray) -> np.ndarray:
    """cos(g_i, g_j) for every pair i < j, from the Gram matrix. [K(K-1)/2]."""
    norms = np.sqrt(np.diag(gram))
    return (gram / np.outer(norms, norms))[np.triu_indices(len(gram), 1)]


def predicted_share(gram: np.ndarray, m: int) -> float:
    """|g|^2 / (|g|^2 + E|n|^2 / m): the cosine expected between two merged batches of m if
    each batch's gradient is g + n with independent noise n. |g|^2 is estimated by the mean
    dot product of distinct batches, |g|^2 + E|n|^2 by the mean squared norm."""
    k = len(gram)
    signal = (gram.sum() - np.trace(gram)) / (k * (k - 1))
    noise = np.trace(gram) / k - signal
    return float(signal / (signal + noise / m))


def jackknife(statistic, gram: np.ndarray, unit: int = 1) -> tuple[float, float]:
    """The statistic on all batches and its delete-a-group jackknife standard error, a group
    being `unit` consecutive batches (a merged batch, for `merged_cosine`)."""
    k = len(gram) // unit
    gram = gram[:k * unit, :k * unit]
    keep = [np.delete(np.arange(k * unit), np.arange(i * unit, (i + 1) * unit)) for i in range(k)]
    values = np.array([statistic(gram[np.ix_(idx, idx)]) for idx in keep])
    return statistic(gram), float(np.sqrt((k - 1) / k * ((values - values.mean()) ** 2).sum()))


def lora_gradient(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in trainer.base_model.parameters() if p.grad is not None]).clone()


def x0_values(trainer: Trainer, rollouts, schedule, prompts: list[str], group_of_row: np.ndarray) -> np.ndarray:
    """V[i, t] = unit reward of decode(x_t - s_t v_t) for t < T (ALGORITHM.md 4), from the stored
    latents: a flow_grpo trainer scores no x0 prediction while it samples."""
    cfg = trainer.cfg
    n = len(rollouts.rows)
    cond = trainer.encoder.encode(prompts).index(rollouts.group.tolist())
    uncond = trainer.encoder.negative().repeat(n)
    values = np.zeros((n, schedule.num_steps))
    with torch.no_grad():
        for t in range(schedule.num_steps):
            x = rollouts.latents[:, t]
            v = predict_velocity(trainer.transformer, x, schedule.timesteps[t], cond, uncond, cfg.sampling.guidance_scale)
            images = decode_images(trainer.pipe, x - schedule.sigmas[t] * v)
            values[:, t] = trainer.reward.to_unit(trainer.reward(images, [prompts[g] for g in group_of_row]).scores)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=16, help="rollouts per prompt (two prompts per batch)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--x0-credit", action="store_true", help="also measure per-step x0-value credit")
    parser.add_argument("--sde-steps", type=int, nargs="*", default=None, metavar="T",
                        help="SDE (and train) only these steps, ODE elsewhere (default: the config's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--prompts", nargs=2, default=PROMPTS, metavar="PROMPT", help="the batch's two prompts")
    parser.add_argument("--merge", type=int, nargs="*", default=[], metavar="M",
                        help="also the cosine between means of M batches (batches of M x 2G rollouts)")
    parser.add_argument("--out", type=Path, help="write the Gram matrix and the figures here (JSON)")
    args = parser.parse_args()
    if args.merge and args.batches < 3 * max(args.merge):
        parser.error(f"--merge {max(args.merge)} needs at least {3 * max(args.merge)} --batches "
                     "(three merged batches: two to compare after the jackknife leaves one out)")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    (work / "prompts.txt").write_text("\n".join(args.prompts) + "\n")
    g = args.group_size
    cfg = build_config("tiny", None, [
        "algorithm=flow_grpo", f"prompts.source={work / 'prompts.txt'}", f"prompts.test_source={work / 'prompts.txt'}",
        "batch.prompts_per_iter=2", f"batch.group_size={g}", f"batch.rollout_cap={2 * g}",
        "train.kl_beta=0", *args.set])
    run = RunDir(work / "run")
    run.create()
    steps = args.sde_steps if args.sde_steps is not None else trained_steps_for(cfg, 0)
    windowed = args.sde_steps is not None or cfg.train.sde_window > 0
    grads: dict[str, list[torch.Tensor]] = {"flow_grpo": [], "x0_credit": []}
    with Trainer(cfg, run) as trainer:
        for batch in range(args.batches):
            # With an SDE window, every batch uses the window of iteration 0 (the same steps).
            schedule = make_schedule(trainer.pipe.scheduler, cfg.sampling.num_steps, cfg.sampling.noise_level,
                                     steps if windowed else None)
            plan = trainer.sampler.plan()
            rollouts = trainer.collect(plan, schedule, batch)
            group_of_row = plan.group_ids()
            r = rollouts.unit_rewards
            readings = {"flow_grpo": np.repeat(adv_math.flow_grpo_advantages(r, group_of_row)[:, None], len(steps), 1)}
            if args.x0_credit:  # the step credit alone (mix 1, ALGORITHM.md 4) over Flow-GRPO's baseline and scale
                T = schedule.num_steps
                readings["x0_credit"], _ = adv_math.compute_credit_advantages(
                    r, group_of_row, x0_values=x0_values(trainer, rollouts, schedule, plan.prompts, group_of_row),
                    points=range(T), num_steps=T, mix=1.0, baseline="group_mean", values_before=None, first_visit=None,
                    sigmas=schedule.sigmas, noise_level=cfg.sampling.noise_level, trained_steps=steps,
                    weight_kind="none", clip=5.0)
            embeds = trainer.encoder.encode(plan.prompts)
            for name, adv in readings.items():
                trainer.accumulate_gradients(torch.arange(len(rollouts.rows)), cfg.train.micro_batch, rollouts,
                                             torch.as_tensor(adv, dtype=torch.float32), embeds,
                                             trainer.encoder.negative(), schedule, steps)
                grads[name].append(lora_gradient(trainer))
            print(f"batch {batch}: reward mean {r.mean():.3f} std {r.std():.3f}", flush=True)
    report: dict = {"prompts": args.prompts, "group_size": g, "batches": args.batches, "set": args.set}
    for name, gs in grads.items():
        if not gs:
            continue
        stacked = torch.stack(gs).double()
        gram = (stacked @ stacked.T).numpy()
        if args.merge:  # many batches: summaries only, every one from the Gram matrix
            rows = []
            for m in [1, *args.merge]:
                measured = jackknife(lambda gr: merged_cosine(gr, m), gram, unit=m)
                predicted = jackknife(lambda gr: predicted_share(gr, m), gram)
                rows.append({"batches_merged": m, "rollouts": m * 2 * g, "cosine": measured[0], "cosine_se": measured[1],
                             "predicted": predicted[0], "predicted_se": predicted[1]})
                print(f"{name}: {m * 2 * g} rollouts per batch: cosine {measured[0]:+.3f} +- {measured[1]:.3f} "
                      f"({len(gram) // m} batches); independent noise predicts {predicted[0]:+.3f} +- {predicted[1]:.3f}")
            report[name] = {"gram": gram.tolist(), "by_batch_size": rows}
            continue
        cos = pairwise_cosines(gram)
        print(f"{name}: mean cosine between independent batches {np.mean(cos):+.3f} "
              f"(pairs: {' '.join(f'{c:+.3f}' for c in cos)}); {2 * g} rollouts per batch")
        report[name] = {"gram": gram.tolist(), "mean_cosine": float(np.mean(cos))}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
