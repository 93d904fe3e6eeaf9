"""What the app's pages say, on hand-made run directories: failure causes with their full
text, Preview on a machine that cannot run the preset, a refused launch, downloads that
leave the run untouched, supervisors reaped, Compare's refusal beside a training run."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from superflow_lite.config import build_config
from superflow_lite.ui.compare import CompareRefused, check_room_beside, compare_need_bytes
from superflow_lite.ui.form import COMMON_FIELDS
from superflow_lite.ui.manager import RunManager
from superflow_lite.ui.runs import failure_markdown
from superflow_lite.ui.runs import KL_PLOT
from superflow_lite.ui.views import PLOT_TITLES, Views
from superflow_lite.vram import GIB
from test_ui_runs import make_run


def test_exit_2_is_labelled_by_its_real_cause_with_its_whole_text(tmp_path):
    long_tail = " ".join(f"word{i}" for i in range(200))  # longer than any cut the page used to make
    error = f"RewardUnavailable: reward 'pickscore' needs the model yuvalkirstain/PickScore_v1: {long_tail}"
    run = make_run(tmp_path, "noreward", {"state": "failed", "pid": 9, "error": error},
                   {"supervisor_pid": None, "trainer_pid": 9}, {"returncode": 2, "trainer_pid": 9})
    text = failure_markdown(run)
    assert "A reward model the run needs could not be loaded" in text and "rejected" not in text
    assert error in text  # in full, in a code block
    bad = make_run(tmp_path, "badvalue", None, {"supervisor_pid": None, "trainer_pid": 8},
                   {"returncode": 2, "trainer_pid": 8})
    (bad / "console.log").write_text("error: train.lr must be > 0, got 0.0\n")
    assert "The command line was rejected" in failure_markdown(bad)


def form_values(preset: str, extra: str = "") -> list:
    return [preset, "", "", "", "", None, *[None] * len(COMMON_FIELDS), extra]


def test_preview_of_a_gpu_preset_on_a_cpu_says_it_cannot_launch(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    views = Views(RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock"))
    message, command, config_yaml = views.preview(*form_values("24gb"))
    assert message.startswith("**Cannot launch on this machine:**") and "Ready to launch" not in message
    assert "--preset 24gb" in command and config_yaml  # still shown, to copy to a GPU machine
    assert "Memory plan: predicted peak" in message and "GiB" in message
    message, _, _ = views.preview(*form_values("tiny"))
    assert message.startswith("Ready to launch") and "Memory plan: predicted peak" in message


def test_a_refused_launch_clears_the_previous_command(tmp_path):
    views = Views(RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock"))
    message, command, config_yaml, *_ = views.launch(*form_values("tiny", "train.lr=fast"))
    assert message.startswith("**error:**") and command == "" and config_yaml == ""


def test_download_zip_is_built_outside_the_run(tmp_path):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock")
    run = make_run(manager.root, "done", {"state": "done", "pid": 1})
    (run / "lora").mkdir()
    (run / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}, run.stat().st_mtime_ns
    zipped = manager.lora_zip("done")
    assert zipped.is_file() and run not in zipped.parents
    assert ({p.name: p.stat().st_mtime_ns for p in run.iterdir()}, run.stat().st_mtime_ns) == before


def test_a_finished_supervisor_is_reaped_without_waiting_for_the_app(tmp_path, monkeypatch):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock", start_timeout_s=0.5)
    real_popen = subprocess.Popen
    started = []

    def quick(argv, **kwargs):  # the supervisor replaced by one that ends after the start-up wait
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(1)"], **kwargs))
        return started[-1]

    monkeypatch.setattr("superflow_lite.ui.manager.subprocess.Popen", quick)
    manager.start("tiny", ["train.iterations=1"], "reaped")
    pid = started[0].pid
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), Path(f"/proc/{pid}/stat").read_text()  # gone, not a zombie


def test_compare_refuses_with_numbers_when_the_model_cannot_fit_beside_a_run():
    cfg = build_config("24gb", None, [])
    need = compare_need_bytes(cfg)
    assert 4 * GIB < need < 24 * GIB  # the quantized T5 and bf16 transformer, not a full bf16 pipeline
    with pytest.raises(CompareRefused, match=r"run 'other' is training on this GPU: 2\.0 GiB are free"):
        check_room_beside(cfg, "other", 2 * GIB)
    check_room_beside(cfg, None, 2 * GIB)  # no training run: the GPU is Compare's
    check_room_beside(cfg, "other", need + GIB)  # room enough beside the run


def test_watch_shows_before_after_pairs_and_a_reward_table(tmp_path):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock")
    run = make_run(manager.root, "r", {"state": "done", "pid": 1, "iteration": 2, "iterations": 2})
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "eval/reward_mean": 0.5, "eval/strict_mean": 0.5}) + "\n")
    for step, reward in ((0, 0.5), (2, 0.75)):
        d = run / "samples" / f"{step:06d}"
        d.mkdir(parents=True)
        (d / "000.png").write_bytes(b"png")
        (d / "index.json").write_text(json.dumps([{"file": "000.png", "prompt": "a red circle", "seed": 0,
                                                   "reward": reward}]))
    out = Views(manager).watch("r", "latest", None)
    gallery, table = out[2 + 8], out[3 + 8]
    assert [c for _, c in gallery["value"]] == ["step 0 · 0.500 · a red circle · seed 0",
                                                "step 2 · 0.750 · a red circle · seed 0"]
    assert list(table.columns) == ["prompt", "seed", "step 0", "step 2", "change"]
    assert table.iloc[0].tolist() == ["a red circle", 0, 0.5, 0.75, 0.25]
    evaluation = out[2 + 1]  # the eval plot: the step-0 point alone is already drawn
    assert len(evaluation["value"]) == 2
    low, high = evaluation["x_lim"]
    assert low < 0 < high  # the step-0 point is drawn whole, not cut at the plot's edge


def test_watch_plots_loss_and_kl_only_when_computed_and_a_finished_run_says_before_after(tmp_path):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock")
    run = make_run(manager.root, "r", {"state": "done", "pid": 1, "iteration": 2, "iterations": 2,
                                       "reward_mean": 0.9})
    rows = [{"iteration": 0, "eval/reward_mean": 0.5},
            {"iteration": 1, "reward/mean": 0.6, "grpo/loss": -0.01, "rollouts/iter": 4},
            {"iteration": 2, "reward/mean": 0.9, "grpo/loss": 0.02, "rollouts/iter": 4, "eval/reward_mean": 0.75}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    views = Views(manager)
    out = views.watch("r", "latest", None)
    titles = list(PLOT_TITLES)
    assert out[0].endswith("test reward 0.500 -> 0.750 (step 0 -> 2)")  # not the last training reward
    assert list(out[2 + titles.index("loss")]["value"]) == [-0.01, 0.02]
    kl = out[2 + titles.index(KL_PLOT)]
    assert kl["visible"] is False and kl["value"] is None  # train.kl_beta 0: no KL, so no flat-0 plot
    rows[1]["grpo/kl"], rows[2]["grpo/kl"] = 1e-6, 2e-6
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kl = views.watch("r", "latest", None)[2 + titles.index(KL_PLOT)]
    assert kl["visible"] is True and len(kl["value"]) == 2


def test_plot_ticks_are_written_as_numbers(tmp_path):
    from superflow_lite.ui.app import build_app

    demo = build_app(RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock"), "tiny")
    plots = [b for b in demo.blocks.values() if isinstance(b, (gr.LinePlot, gr.ScatterPlot, gr.BarPlot))]
    assert len(plots) == len(PLOT_TITLES)
    assert all(p.x_axis_format == "~g" and p.y_axis_format == "~g" for p in plots)  # 32, not 32.000000


def test_the_form_chooses_the_algorithm_and_lists_the_task_presets(tmp_path):
    from superflow_lite.config import task_presets
    from superflow_lite.ui.app import preset_choices
    from superflow_lite.ui.form import algorithm_choices

    assert [v for _, v in algorithm_choices()] == ["", "superflow", "flow_grpo"]
    assert task_presets() and set(task_presets()) <= set(preset_choices())
    views = Views(RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock"))
    values = form_values("tiny")
    values[1] = "flow_grpo"
    message, command, config_yaml = views.preview(*values)
    assert "algorithm=flow_grpo" in command and "algorithm: flow_grpo" in config_yaml, message
    values[1] = ""  # as preset: nothing sent
    assert "algorithm=" not in views.preview(*values)[1]
