"""Two processes under `accelerate launch` (CPU, gloo) train what one process trains.

Both runs are real CLI subprocesses with the same seed and config. The two-process run
shards each iteration's rollouts by index, sums the rewards across processes and lets DDP
average the gradients; it must log the same rewards and export the same LoRA.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from superflow_lite.config import ConfigError
from superflow_lite.launch import UsageError, gate
from superflow_lite.rundir import read_metrics, read_status
from superflow_lite.train import parse_args
from tests.conftest import FAST_OVERRIDES

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LR = 1e-3  # the tiny preset's train.lr, written out: the LoRA tolerance is a fraction of it
# train.updates_per_iter=3 cuts each iteration's 8 rollouts into minibatches of 3, 3 and 2:
# a minibatch of 3 never splits evenly over 2 processes, and with this seed some minibatches
# hold no row of one process at all (it joins the gradient all-reduce with a zero weight).
OVERRIDES = [*FAST_OVERRIDES, "train.updates_per_iter=3", f"train.lr={LR}"]
TIMEOUT_S = 240  # a hang (a collective one process never reaches) fails here, not in CI's timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out: Path, processes: int) -> tuple[subprocess.Popen, Path]:
    train = ["-m", "superflow_lite.train", "--preset", "tiny", "--no-progress", "--output", str(out), *OVERRIDES]
    # --multi_gpu picks accelerate's torchrun launcher (`--cpu` alone starts one process);
    # the tiny preset's model.device=cpu makes the Trainer's Accelerator(cpu=True) use gloo.
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
                "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no",
                "--main_process_ip=127.0.0.1", f"--main_process_port={free_port()}"]
    argv = [sys.executable, *(launcher if processes > 1 else []), *train]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    console = out.with_suffix(".console")  # a file, not a pipe: the workers outlive a killed launcher
    with console.open("w") as f:
        return subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT), console


def finish(proc: subprocess.Popen, console: Path) -> str:
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the launcher passes SIGTERM to its workers, then kills them after 30 s
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        pytest.fail(f"no exit within {TIMEOUT_S} s (a hang?):\n{console.read_text()[-4000:]}")
    output = console.read_text()
    assert proc.returncode == 0, output[-4000:]
    return output


def lora(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_two_processes_train_the_same_rewards_and_lora_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    started = [start(one, 1), start(two, 2)]  # side by side: the test takes the longer run's time
    outputs = [finish(*s) for s in started]
    assert "INFO [rank 1]" not in outputs[1]  # the other process logs warnings and errors only
    for run in (one, two):
        assert read_status(run)["state"] == "done"
    rows_one, rows_two = read_metrics(one), read_metrics(two)
    assert [r["iteration"] for r in rows_two] == [0, 1, 2]  # written once, by the main process

    for a, b in zip(rows_one, rows_two, strict=True):
        # Rewards: every rollout starts from the same initial noise and draws its SDE noise
        # from a generator of its own, so it is the same trajectory whichever process samples
        # it. Its float32 values differ in the last bits only (other micro-batch shapes, and
        # after the first update a LoRA a few roundings apart), which the 8-bit images and
        # the shapes reward do not see (a pixel on a rounding edge could flip one; this seed
        # has none). So: equal, up to the float64 mean.
        rewards = [k for k in a if k.startswith(("reward/", "eval/"))]
        assert rewards and set(rewards) == {k for k in b if k.startswith(("reward/", "eval/"))}
        for k in rewards:
            assert b[k] == pytest.approx(a[k], rel=0, abs=1e-9), (a["iteration"], k)
        # The update's stats are means over every (rollout, step) of the iteration and the
        # gradient norm is taken after the all-reduce: equal up to float32 summation order,
        # relative to the terms summed. The loss is a mean of -adv * ratio, terms of size ~1
        # that cancel to ~1e-6, hence an absolute bound; the others have no cancellation.
        # (A per-process loss off by a constant factor leaves Adam's step almost unchanged,
        # but not the gradient norm.)
        if a["iteration"] == 0:  # the step-0 evaluation only
            continue
        assert b["grpo/loss"] == pytest.approx(a["grpo/loss"], rel=0, abs=1e-6), a["iteration"]
        for k in ("grpo/ratio", "grpo/clipped", "grpo/approx_kl", "grpo/grad_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-12), (a["iteration"], k)

    # The LoRA. The gradients differ in float32 summation order only (rows accumulated per
    # process, then summed by the all-reduce): a relative 1e-6 of the per-row terms. Adam
    # divides each element's gradient by its own running magnitude, so an element whose
    # per-row gradients nearly cancel can move by a fraction of one step (lr) while the rest
    # stay within rounding. Measured here: at most 9e-5 (0.09 lr), on 0.5% of the elements
    # (> 1e-6, 16x the float32 spacing of weights up to 0.5). The smallest wrong wiring
    # tried, each process's loss off by a factor 2 (which Adam mostly absorbs), moved 59% of
    # the elements, by up to 0.48 lr; a wrong weighting or another rollout moves ~100%.
    a, b = lora(one), lora(two)
    assert a.keys() == b.keys() and a
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert diff.max().item() < 0.5 * LR, diff.max().item()
    assert (diff > 1e-6).float().mean().item() < 0.05, (diff > 1e-6).float().mean().item()


def test_the_other_processes_leave_the_run_folder_to_the_main_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("")  # as the main process writes it, moments into a launch
    args = parse_args(["--preset", "tiny", "--output", str(run)])
    with pytest.raises(UsageError, match="already holds a run"):
        gate(args)  # the main process (no RANK, or 0): a new run may not start there
    monkeypatch.setenv("RANK", "1")
    assert gate(args).run_path == run  # another process: the folder is the main's to check
    with pytest.raises(ConfigError, match="train.lr"):
        gate(parse_args(["--preset", "tiny", "train.lr=-1"]))  # the config is still checked everywhere
