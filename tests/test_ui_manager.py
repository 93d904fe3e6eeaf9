"""The run manager on the tiny world: start, status, stop, resume, crash detection, with
real `python -m superflow_lite.train` subprocesses (image quality does not matter)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from superflow_lite.rundir import read_status
from superflow_lite.ui.manager import LaunchError, RunManager
from superflow_lite.ui.runs import display_state, failure_report, latest_checkpoint_iteration, list_runs, lora_file

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

# The smallest loop that still samples, rewards, updates, evaluates and checkpoints.
TINY = ["batch.prompts_per_iter=2", "batch.group_size=2", "superflow.m_max=2", "superflow.m_min=2",
        "batch.rollout_cap=4", "sampling.micro_batch=8", "train.micro_batch=8", "prompts.num_eval_prompts=2",
        "sampling.eval_num_steps=2", "sampling.num_steps=2", "train.kl_beta=0", "train.updates_per_iter=1",
        "output.eval_every=1", "output.checkpoint_every=1", "prompts.eval_seeds=[0,1,2,3]"]


def wait_for(predicate, timeout_s: float, what: str, path: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    log = (path / "console.log").read_text()[-3000:] if path and (path / "console.log").exists() else ""
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{log}")


def iteration(path: Path) -> int:
    return int((read_status(path) or {}).get("iteration") or 0)


def kill_leftovers(root: Path) -> None:
    """After a failed test: end the runs it started (their supervisor's process group)."""
    for launch in root.glob("*/launch.json"):
        pid = json.loads(launch.read_text()).get("supervisor_pid")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, TypeError):
            pass


@pytest.fixture
def manager(tmp_path):
    manager = RunManager(tmp_path / "runs", lock_path=tmp_path / "train.lock")
    yield manager
    kill_leftovers(manager.root)


def test_start_stop_resume_and_crash(tmp_path, manager):
    preview = manager.start("tiny", [*TINY, "train.iterations=500"], "life")
    path = preview.run_path
    assert display_state(path) in ("starting", "running")
    launch = json.loads((path / "launch.json").read_text())
    assert os.getsid(launch["supervisor_pid"]) != os.getsid(0)  # its own session: outlives the app

    with pytest.raises(LaunchError, match="one run at a time"):
        manager.start("tiny", TINY, "second")
    assert not (tmp_path / "runs" / "second").exists()

    wait_for(lambda: iteration(path) >= 1 and display_state(path) == "running", 180, "the first iteration", path)
    summary = list_runs(manager.root)[0]
    assert summary.name == "life" and summary.state == "running" and summary.iterations == 500
    assert "stopping 'life'" in manager.stop("life")
    assert display_state(path) == "stopping"
    wait_for(lambda: display_state(path) == "stopped", 180, "the graceful stop", path)
    stopped_at = iteration(path)
    wait_for(lambda: (path / "exit.json").exists(), 60, "the process to exit", path)
    assert json.loads((path / "exit.json").read_text())["returncode"] == 0
    assert latest_checkpoint_iteration(path) == stopped_at  # checkpointed before exiting
    assert lora_file(path) is not None
    # exit.json is the supervisor's last write; it then releases the machine lock and exits.
    wait_for(lambda: manager.active_run() is None, 30, "the machine to be free", path)

    command = manager.resume("life")
    assert command.startswith("python -m superflow_lite.train --resume ")

    def resumed_trainer():
        """The new trainer's pid once it reports 'running' (it has loaded the checkpoint)."""
        pid = json.loads((path / "launch.json").read_text())["trainer_pid"]
        return pid if pid and display_state(path) == "running" and read_status(path)["pid"] == pid else None

    trainer = wait_for(resumed_trainer, 180, "the resumed run", path)
    assert iteration(path) >= stopped_at  # from the checkpoint, not from 0
    os.kill(trainer, signal.SIGKILL)  # a crash: no chance to write a status
    wait_for(lambda: display_state(path) == "failed", 30, "the crash to show", path)
    report = failure_report(path)
    assert report["exit_code"] == "-9 (killed by SIGKILL)" and "memory" in report["suggestion"]
    wait_for(lambda: manager.active_run() is None, 30, "the machine to be free again", path)

    manager.delete("life")
    assert not path.exists()
