"""What a person sees: a tiny run's console in a fresh process (so import-time library
notices count), its evaluation lines and closing summary, the model card, and the same
metrics and eval images in tensorboard (output.report_to=tensorboard)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from superflow_lite.console import LIBRARY_NOTICES, RunSummary, _DropNotices, eval_line, filter_library_notices
from superflow_lite.rundir import read_metrics

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

OURS = re.compile(r"^\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")
BAR = re.compile(r"^(training|evaluating step \d+): +\d+%\|")
SHORT_RUN = ["train.iterations=1", "batch.prompts_per_iter=2", "batch.group_size=2", "superflow.m_max=4",
             "superflow.m_min=2", "superflow.num_bins=2", "batch.rollout_cap=8", "sampling.num_steps=4",
             "sampling.eval_num_steps=4", "prompts.num_eval_prompts=2", "output.eval_every=1"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("console") / "run"
    # Python's default warning filters, as a user's shell has them.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "superflow_lite.train", "--preset", "tiny", "--output", str(out),
                           *SHORT_RUN, "output.report_to=tensorboard"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout, proc.stderr


def fragments(text: str) -> list[str]:
    """Console lines, with each carriage-return redraw of the progress bar as its own piece."""
    return [p.strip() for line in text.split("\n") for p in line.split("\r") if p.strip()]


def test_console_has_only_the_projects_lines(short_run):
    _, stdout, stderr = short_run
    foreign = [f for f in fragments(stderr) if not (OURS.match(f) or BAR.match(f))]
    assert not foreign, "library lines on the console:\n" + "\n".join(foreign)
    assert "Load it with:" in stdout and "pipe.load_lora_weights" in stdout
    assert "Warning" not in stdout and "Loading" not in stdout


def test_console_reports_each_evaluation_and_a_closing_summary(short_run):
    out, _, stderr = short_run
    rows = read_metrics(out)
    before, after = rows[0]["eval/reward_mean"], rows[-1]["eval/reward_mean"]
    assert f"eval 0/1: test reward {before:.3f}, strict accuracy" in stderr
    assert re.search(rf"eval 1/1: test reward {after:.3f} \([+-]\d\.\d{{3}} since step 0\), strict accuracy", stderr)
    assert f"test reward: {before:.3f} -> {after:.3f}" in stderr
    assert f"LoRA: {out / 'lora'}" in stderr and str(out / "samples" / "000001") in stderr
    assert re.search(r"done after 1/1 iterations, \d+ rollouts, in \d+s", stderr)


def test_console_says_once_what_every_evaluation_scores(short_run):
    _, _, stderr = short_run
    assert stderr.count("evaluation: 2 test prompts x 4 seeds (0-3) = 8 images, the same noise at every step: "
                        "a photo of a red circle; a photo of a blue circle and a red square") == 1


def test_model_card_says_what_was_trained_and_how_well(short_run):
    out, _, _ = short_run
    card = (out / "lora" / "README.md").read_text()
    rows = read_metrics(out)
    for text in ("rank 8, alpha 16", "`attn.to_q`", "SuperFlow GRPO", "shapes x1", "1 of 1",
                 f"{rows[0]['eval/reward_mean']:.3f} -> {rows[-1]['eval/reward_mean']:.3f}"):
        assert text in card, text


def test_tensorboard_holds_the_metrics_and_eval_images(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = short_run
    (events,) = [p for p in (out / "tensorboard").glob("events.out.tfevents.*")]
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    rows = read_metrics(out)
    reward = acc.Scalars("eval/reward_mean")
    assert [e.step for e in reward] == [0, 1]
    assert [e.value for e in reward] == pytest.approx([r["eval/reward_mean"] for r in rows])
    assert acc.Scalars("reward/mean")[0].value == pytest.approx(rows[1]["reward/mean"])
    assert "eval/strict_mean" in acc.Tags()["scalars"]
    images = acc.Images("eval/samples")  # the evaluation's images in one grid per step
    assert [e.step for e in images] == [0, 1] and images[0].height == 64 and images[0].width >= 64


def test_a_notice_is_dropped_only_at_its_own_logger():
    import logging

    filter_library_notices()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    for name in ("diffusers.loaders.lora_base", "superflow_lite.test"):
        logger = logging.getLogger(name)
        logger.addHandler(handler := Keep())
        logger.propagate = False
        try:
            logger.warning("No LoRA keys associated to CLIPTextModelWithProjection found")
            logger.warning("No LoRA keys associated to SD3Transformer2DModel found")  # a real problem: kept
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    clip, sd3 = ("No LoRA keys associated to CLIPTextModelWithProjection found",
                 "No LoRA keys associated to SD3Transformer2DModel found")
    assert seen == [sd3, clip, sd3]  # diffusers' text-encoder notice dropped; the rest, and our loggers, kept
    assert all(any(isinstance(f, _DropNotices) for f in logging.getLogger(n).filters) for n in LIBRARY_NOTICES)


def test_eval_line_and_summary_read_as_before_and_after():
    base = {"eval/reward_mean": 0.75, "eval/strict_mean": 0.5}
    later = {"eval/reward_mean": 0.8, "eval/strict_mean": 0.4375}
    assert eval_line(0, 20, base, base) == "eval 0/20: test reward 0.750, strict accuracy 0.500"
    assert eval_line(0, 20, base, base, "val") == "eval 0/20: validation reward 0.750, strict accuracy 0.500"
    assert eval_line(5, 20, later, base) == ("eval 5/20: test reward 0.800 (+0.050 since step 0), "
                                             "strict accuracy 0.438 (-0.062 since step 0)")
    lines = RunSummary("done", 20, 20, 960, 234.0, base, later, 20, Path("runs/r/lora"), Path("runs/r/samples")).lines()
    assert lines[0] == "done after 20/20 iterations, 960 rollouts, in 3m54s"
    assert lines[1] == "test reward: 0.750 -> 0.800 (+0.050, step 0 -> 20)"
    assert lines[-1] == "samples: runs/r/samples/000000 (before) and runs/r/samples/000020 (after)"


def test_config_yaml_reruns_with_config_under_a_fresh_name(short_run, capsys, tmp_path, monkeypatch):
    import yaml

    from superflow_lite.train import main

    out, _, _ = short_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["output"]["name"] == ""  # no baked run name: a re-run never collides with this run
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(out / "config.yaml"), "--print-config"]) == 0
    again = yaml.safe_load(capsys.readouterr().out)
    assert again["output"]["name"] == ""  # the name is each run's, chosen when it starts
    assert {k: v for k, v in again.items() if k != "output"} == {k: v for k, v in saved.items() if k != "output"}


# Run in a fresh interpreter: bitsandbytes is told the CPU has AVX512-BF16, the case in which
# it looks for the optional kernel package's CPU kernel at import time and the kernels package
# (and bitsandbytes itself) log why that failed, offline or not.
AVX512_BF16_IMPORT = """
import importlib.abc, importlib.util, sys

class PretendAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.functional":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.has_avx512bf16 = lambda: True
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, PretendAvx512Bf16())
if sys.argv[1] == "filtered":
    from superflow_lite.console import filter_library_notices
    filter_library_notices()
import bitsandbytes
"""


@pytest.mark.parametrize("offline", ["1", "0"])
def test_bitsandbytes_kernel_lookup_is_silent_offline_and_online(offline):
    pytest.importorskip("kernels")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"HF_HUB_OFFLINE": offline}

    def stderr_of(mode: str) -> str:
        proc = subprocess.run([sys.executable, "-c", AVX512_BF16_IMPORT, mode], capture_output=True, text=True,
                              env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert "gemm_4bit_forward" in stderr_of("unfiltered")  # the pretence reaches the kernel lookup
    assert stderr_of("filtered").strip() == ""


def test_the_iteration_line_says_kl_only_when_the_run_computes_it():
    from superflow_lite.console import iteration_line

    row = {"rollouts/iter": 8, "reward/mean": 0.4375, "grpo/loss": -0.012, "grpo/clipped": 0.0, "perf/iter_s": 4.1}
    assert iteration_line(3, 20, row) == "iteration 3/20 rollouts 8 reward 0.4375 loss -1.20e-02 clipfrac 0.000 (4.1s)"
    assert " kl 2.00e-06 " in iteration_line(3, 20, {**row, "grpo/kl": 2e-6})


def test_a_run_without_kl_neither_logs_nor_prints_one(short_run):
    """tiny has train.kl_beta 0: no reference pass, so no `kl 0.00e+00` and no grpo/kl metric."""
    out, _, stderr = short_run
    (line,) = [f for f in fragments(stderr) if re.search(r"INFO iteration 1/1 ", f)]
    assert " kl " not in line and " loss " in line
    assert all("grpo/kl" not in row for row in read_metrics(out))


def test_a_console_redirected_to_a_file_holds_no_progress_bar_frames(short_run):
    _, _, stderr = short_run  # captured through a pipe, as `> log 2>&1` would
    assert not [f for f in fragments(stderr) if BAR.match(f)]
    assert "\r" not in stderr


def test_a_run_stopped_before_any_evaluation_names_step_0_once():
    """Ctrl-C before the first evaluation after step 0: step 0 is no "after"."""
    base = {"eval/reward_mean": 0.5}
    lines = RunSummary("stopped", 2, 20, 16, 9.0, base, base, 0, Path("runs/r/lora"), Path("runs/r/samples")).lines()
    (samples,) = [line for line in lines if line.startswith("samples:")]
    assert samples == f"samples: {Path('runs/r/samples/000000')} (step 0 only; no evaluation ran after it)"
    assert "(after)" not in "\n".join(lines)
