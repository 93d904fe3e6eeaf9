"""The app's readers and form logic on hand-made run directories: no training, no torch."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from superflow_lite.config import ConfigError
from superflow_lite.ui import runs as runs_mod
from superflow_lite.ui.form import LaunchForm, parse_extra, preset_values
from superflow_lite.ui.manager import LaunchError, RunManager
from superflow_lite.ui.runs import (display_state, failure_report, group_size_histogram, list_runs, metric_series,
                                    next_preset_down, progress_markdown, sample_gallery, sample_pairs)


def make_run(root: Path, name: str, status: dict | None = None, launch: dict | None = None,
             exit_info: dict | None = None, preset: str = "tiny") -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"algorithm: superflow\npreset: {preset}\n")
    if status is not None:
        (path / "status.json").write_text(json.dumps({"heartbeat": time.time(), **status}))
    if launch is not None:
        (path / "launch.json").write_text(json.dumps(launch))
    if exit_info is not None:
        (path / "exit.json").write_text(json.dumps(exit_info))
    return path


def test_crashed_run_shows_failed_never_running(tmp_path, dead_pid):
    crashed = make_run(tmp_path, "crashed", {"state": "running", "pid": dead_pid, "iteration": 3, "iterations": 10})
    assert display_state(crashed) == "failed"
    # A live pid that is not a superflow_lite process (pid reuse) does not keep it running.
    other = subprocess.Popen(["sleep", "30"])
    try:
        reused = make_run(tmp_path, "reused", {"state": "running", "pid": other.pid, "iterations": 10})
        assert display_state(reused) == "failed"
    finally:
        other.kill()
        other.wait()
    stale = make_run(tmp_path, "stale", {"state": "running", "pid": dead_pid, "heartbeat": time.time() - 3600})
    assert display_state(stale) == "failed"
    # Launched from the app, the supervisor gone without writing exit.json: failed too.
    lost = make_run(tmp_path, "lost", None, {"supervisor_pid": dead_pid, "trainer_pid": None, "started": 1.0})
    assert display_state(lost) == "failed"
    report = failure_report(crashed)
    assert "died without reporting" in report["suggestion"]


def test_exit_codes_and_stop_requests(tmp_path, dead_pid):
    done = make_run(tmp_path, "done", {"state": "done", "pid": 7}, {"supervisor_pid": dead_pid, "trainer_pid": 7},
                    {"returncode": 0, "trainer_pid": 7})
    assert display_state(done) == "done"
    # Stopped during model loading: the trainer died of the SIGTERM before writing a state.
    early = make_run(tmp_path, "early", {"state": "starting", "pid": 8},
                     {"supervisor_pid": dead_pid, "trainer_pid": 8, "stop_requested_at": 5.0},
                     {"returncode": -15, "trainer_pid": 8})
    assert display_state(early) == "stopped"
    bad = make_run(tmp_path, "bad", None, {"supervisor_pid": dead_pid, "trainer_pid": 9},
                   {"returncode": 2, "trainer_pid": 9})
    (bad / "console.log").write_text("error: train.lr must be > 0, got 0.0\n")
    assert display_state(bad) == "failed"
    report = failure_report(bad)
    assert report["exit_code"] == "2" and report["error"].startswith("error: train.lr")


def test_out_of_memory_suggests_next_preset_down(tmp_path, monkeypatch, dead_pid):
    monkeypatch.setattr(runs_mod, "_numbered_presets", lambda: [(12, "12gb"), (16, "16gb"), (24, "24gb"), (48, "48gb")])
    assert next_preset_down("24gb") == "16gb" and next_preset_down("12gb") is None and next_preset_down("tiny") is None
    oom = make_run(tmp_path, "oom", {"state": "failed", "pid": 5, "error": "OutOfMemoryError: CUDA out of memory. "
                                     "Tried to allocate 2.00 GiB"}, {"supervisor_pid": dead_pid, "trainer_pid": 5},
                   {"returncode": 1, "trainer_pid": 5}, preset="24gb")
    (oom / "console.log").write_text("iteration 1/20\ntorch.OutOfMemoryError: CUDA out of memory.\n")
    report = failure_report(oom)
    assert report["exit_code"] == "1"
    assert "--preset 16gb" in report["suggestion"] and "out of memory" in report["suggestion"]
    killed = make_run(tmp_path, "killed", {"state": "running", "pid": 6},
                      {"supervisor_pid": dead_pid, "trainer_pid": 6},
                      {"returncode": -9, "trainer_pid": 6}, preset="12gb")
    report = failure_report(killed)
    assert report["exit_code"] == "-9 (killed by SIGKILL)" and "micro_batch" in report["suggestion"]


def test_progress_plots_and_samples(tmp_path):
    path = make_run(tmp_path, "r", {"state": "running", "pid": os.getpid(), "iteration": 2, "iterations": 10,
                                    "rollouts_total": 16, "reward_mean": 0.25, "eta_s": 130.0})
    rows = [{"iteration": 0, "eval/reward_mean": 0.1},
            {"iteration": 1, "reward/mean": 0.2, "grpo/kl": 1e-6, "grpo/clipped": 0.01, "rollouts/iter": 8,
             "group/size_mean": 4.0, "group/size_hist": {"2": 1, "6": 1}},
            {"iteration": 2, "reward/mean": float("nan"), "grpo/kl": 2e-6, "rollouts/iter": 8,
             "group/size_hist": {"4": 2}, "eval/reward_mean": 0.3}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 3, "rew')
    from superflow_lite.rundir import read_metrics

    metrics = read_metrics(path)
    reward = metric_series(metrics, "reward (train, eval)")
    assert reward["iteration"] == [1, 0, 2] and reward["series"] == ["train", "eval", "eval"]  # NaN dropped
    assert metric_series(metrics[:1], "reward (train, eval)")["series"] == []  # not before every series has a point
    assert metric_series(metrics, "clip fraction")["value"] == [0.01]
    assert group_size_histogram(metrics) == {"size": [4], "prompts": [2]}  # the latest iteration
    assert group_size_histogram(metrics[:2]) == {"size": [2, 6], "prompts": [1, 1]}
    # The eval plot shows the step-0 point alone (a scatter), with the series the eval rows have.
    assert metric_series(metrics[:1], "evaluation (test prompts)") == {"iteration": [0], "value": [0.1],
                                                                       "series": ["test reward"]}
    for step, rewards in ((0, (0.1, 0.5)), (2, (0.3, 0.25))):
        d = path / "samples" / f"{step:06d}"
        d.mkdir(parents=True)
        index = [{"file": f"00{i}.png", "prompt": p, "seed": 0, "reward": r, "strict": float(r > 0.2)}
                 for i, (p, r) in enumerate(zip(("a red circle", "two blue squares"), rewards))]
        for row in index:
            (d / row["file"]).write_bytes(b"png")
        (d / "index.json").write_text(json.dumps(index[::-1] if step else index))  # pairs match by prompt, not order
    items, steps = sample_gallery(path)
    assert steps == [0, 2]
    # Before/after pairs: each prompt's step-0 image, then the same prompt at step 2.
    assert [c for _, c in items] == ["step 0 · 0.100 ✗ · a red circle · seed 0", "step 2 · 0.300 ✓ · a red circle · seed 0",
                                     "step 0 · 0.500 ✓ · two blue squares · seed 0",
                                     "step 2 · 0.250 ✓ · two blue squares · seed 0"]
    assert [Path(f).parent.name for f, _ in items] == ["000000", "000002"] * 2
    assert sample_pairs(path) == {"prompt": ["a red circle", "two blue squares"], "seed": [0, 0], "step 0": [0.1, 0.5],
                                  "later": [0.3, 0.25], "change": [0.2, -0.25]}
    assert "iteration 2/10" in progress_markdown(path) and "16 rollouts" in progress_markdown(path)
    summary = list_runs(tmp_path)[0]
    assert summary.name == "r" and summary.eval_reward == 0.3


def test_form_sends_only_changes_as_cli_overrides(tmp_path):
    defaults = preset_values("tiny")
    same = LaunchForm(preset="tiny", common={"iterations": defaults["iterations"], "lr": defaults["lr"]})
    assert same.overrides(tmp_path) == []
    prompts = tmp_path / "mine.txt"
    prompts.write_text("a red circle\na blue square\n")
    form = LaunchForm(preset="tiny", reward="shapes", prompts_file=str(prompts),
                      common={"iterations": 3.0, "lr": 1e-4, "seed": None},
                      extra="sampling.num_steps=4  # faster\n# a comment\n")
    out = form.overrides(tmp_path / "uploads")
    assert out[:2] == ["train.iterations=3", "train.lr=0.0001"]
    assert out[-1] == "sampling.num_steps=4"
    source = [o for o in out if o.startswith("prompts.source=")][0].split("=", 1)[1]
    assert Path(source).parent == tmp_path / "uploads" and Path(source).read_text() == prompts.read_text()
    with pytest.raises(ConfigError, match="the app sets output.root"):
        parse_extra("output.root=/etc")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_extra("--resume /tmp/x")


def cli_error(argv: list[str]) -> str:
    """What `python -m superflow_lite.train ARGV --print-config` prints on stderr."""
    from superflow_lite.train import main

    err = io.StringIO()
    with redirect_stderr(err):
        assert main([*argv, "--print-config"]) == 2
    return err.getvalue().strip()


@pytest.mark.parametrize("override", ["train.iterations=-1", "train.lrr=1e-4", "sampling.resolution=60", "train.lr"])
def test_invalid_form_gets_the_cli_message(tmp_path, override):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    with pytest.raises((ConfigError, LaunchError)) as caught:
        manager.preview("tiny", [override], "x")
    assert f"error: {caught.value}" == cli_error(["--preset", "tiny", override])


def test_a_huge_or_aliased_override_is_refused_at_once_with_a_short_message(tmp_path):
    from test_launch_gate import ALIAS_BOMB

    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    for override in ("train.lr=" + "1" * 5_000_000, "reward.options={shapes: {x: [" + "1, " * 1_000_000 + "1]}}",
                     f"reward.options={{shapes: {ALIAS_BOMB}}}"):
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            manager.preview("tiny", [override], "x")
        assert time.monotonic() - started < 5 and len(str(caught.value)) < 500, str(caught.value)[:1_000]
        assert f"error: {caught.value}" == cli_error(["--preset", "tiny", override])


def test_names_stay_inside_the_runs_folder_and_nothing_reaches_a_shell(tmp_path, monkeypatch):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "lock")
    for name in ("../escape", "a/b", ".hidden", "x;rm -rf ~", ""):
        with pytest.raises(LaunchError):
            manager.run_path(name)
    for preset in ("--resume", "../../etc/passwd"):
        with pytest.raises(ConfigError, match="unknown preset"):
            manager.preview(preset, [], "ok")
    # A hostile value stays one argv element: the CLI rejects it as a value, no shell sees it.
    with pytest.raises(ConfigError, match="train.seed"):
        manager.preview("tiny", ["train.seed=1; touch /tmp/pwned"], "ok")
    seen = {}

    class FakePopen:
        def __init__(self, argv, **kwargs):
            seen.update(argv=argv, **kwargs)
            self.pid, self.returncode = 0, 0

        def poll(self):
            return 0

    monkeypatch.setattr("superflow_lite.ui.manager.subprocess.Popen", FakePopen)
    preview = manager.start("tiny", ["train.iterations=1"], "argv-check")
    assert isinstance(seen["argv"], list) and not seen.get("shell")
    assert seen["start_new_session"] is True  # outlives the app and the browser tab
    assert seen["argv"][seen["argv"].index("--") + 1:] == [sys.executable, "-m", "superflow_lite.train", "--no-progress",
                                                           *preview.train_args]
    assert preview.command.startswith("python -m superflow_lite.train --preset tiny")
    with pytest.raises(LaunchError, match="already exists"):
        manager.preview("tiny", [], "argv-check")


def test_a_failed_run_without_a_checkpoint_is_not_offered_resume(tmp_path, dead_pid):
    """A run that failed before its first checkpoint (a reward that could not load after
    start-up, say) has nothing to resume: the app says launch it again, and refuses Resume."""
    from superflow_lite.ui.views import Views

    failed = make_run(tmp_path, "failed-early", {"state": "failed", "pid": 5, "error": "RuntimeError: boom"},
                      {"supervisor_pid": dead_pid, "trainer_pid": 5}, {"returncode": 1, "trainer_pid": 5})
    report = failure_report(failed)
    assert "Resume" not in report["suggestion"] and "launch it again" in report["suggestion"]
    views = Views(RunManager(tmp_path))
    details = views.run_details("failed-early")
    assert "--resume" not in details and "launch it again" in details
    with pytest.raises(LaunchError, match="no checkpoint"):
        views.manager.resume("failed-early")
