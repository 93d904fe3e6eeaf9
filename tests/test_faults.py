"""Fault drills on the tiny world, and what each leaves on disk: non-finite rewards from a
remote server, a non-finite optimizer step, a damaged newest checkpoint, kill -9 (mid-run
and during the final LoRA export), a stop during the step-0 evaluation and a double
Ctrl-C, each followed by a resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from superflow_lite.checkpoint import load_latest_intact
from superflow_lite.rundir import (DONE, FAILED, STOPPED, latest_checkpoint_iteration, list_checkpoints,
                                   lora_complete, read_metrics, read_status, run_state)
from superflow_lite.train import main

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Smaller than the shared fast overrides: a 2-step loop still samples, rewards, updates,
# evaluates and checkpoints, and each drill runs several times.
DRILL = ["sampling.num_steps=2", "sampling.eval_num_steps=2", "train.kl_beta=0", "superflow.m_max=2",
         "batch.rollout_cap=4"]


@pytest.fixture
def fast_overrides(fast_overrides) -> list[str]:
    return [*fast_overrides, *DRILL]


class DrillHandler(BaseHTTPRequestHandler):
    """A reward server that answers with the mode the test sets: good, nan or inf."""

    def log_message(self, *args):  # quiet
        pass

    def _send(self, payload: dict) -> None:
        body = json.dumps(payload).encode()  # json writes NaN and Infinity as bare words
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        low, high = self.server.declared_range
        self._send({"name": "drill", "low": low, "high": high})

    def do_POST(self):
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["images"])
        value = {"good": 0.5, "nan": float("nan"), "inf": float("inf")}[self.server.mode]
        self._send({"scores": [value] * n, "extras": {}})


@pytest.fixture
def drill_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), DrillHandler)
    server.mode = "good"
    server.declared_range = (0.0, 1.0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def lora_is_finite(run: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(run / "lora" / "pytorch_lora_weights.safetensors").values())


def checkpoint_is_finite(run: Path) -> bool:
    _, state = load_latest_intact(run)
    return all(torch.isfinite(t).all() for t in state["lora"].values())


def test_nan_and_inf_rewards_stop_the_run_and_a_good_reward_resumes_it(tmp_path, fast_overrides, drill_server, capsys):
    run = tmp_path / "run"
    url = f"http://127.0.0.1:{drill_server.server_address[1]}"
    remote = ["reward.weights={remote: 1.0}", f"reward.options={{remote: {{url: '{url}', retries: 0}}}}"]
    assert main(["--preset", "tiny", "--no-progress", "--output", str(run), *fast_overrides, *remote,
                 "train.iterations=1"]) == 0
    capsys.readouterr()
    for mode, word in (("nan", "nan"), ("inf", "inf")):
        drill_server.mode = mode
        assert main(["--resume", str(run), "--no-progress", "train.iterations=2"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert sum("non-finite" in line for line in lines) == 1, lines  # said once, as the `error:` line
        err = lines[-1]
        assert err.startswith("error: reward 'remote (http://127.0.0.1") and "non-finite" in err and word in err
        assert "the last intact checkpoint is iteration 1" in err and str(run / "train.log") in err
        assert "non-finite" in (run / "train.log").read_text()  # the log keeps its copy
        assert read_status(run)["state"] == FAILED and run_state(run) == FAILED
        assert latest_checkpoint_iteration(run) == 1 and checkpoint_is_finite(run) and lora_is_finite(run)
        assert max(r["iteration"] for r in read_metrics(run)) == 1  # nothing of the poisoned iteration was logged
    drill_server.mode = "good"
    assert main(["--resume", str(run), "--no-progress"]) == 0  # iterations=2 persisted by the resumes above
    assert read_status(run)["state"] == "done" and read_status(run)["iteration"] == 2
    assert lora_is_finite(run) and checkpoint_is_finite(run)


@pytest.mark.parametrize("declared,message", [
    ((0.5, 0.5), "declares the range [0.5, 0.5] (from {url}/info): it must be finite with low < high"),
    ((float("nan"), 1.0), "declares the range [nan, 1] (from {url}/info): it must be finite with low < high"),
    ((1.0, 0.0), "declares the range [1, 0] (from {url}/info): it must be finite with low < high"),
    (("zero", 1.0), "{url}/info answered b'{{\"name\": \"drill\", \"low\": \"zero\""),
])
def test_a_server_declaring_an_empty_or_nan_range_is_refused_at_launch(tmp_path, fast_overrides, drill_server,
                                                                        declared, message, capsys):
    drill_server.declared_range = declared
    url = f"http://127.0.0.1:{drill_server.server_address[1]}"
    remote = ["reward.weights={remote: 1.0}", f"reward.options={{remote: {{url: '{url}', retries: 0}}}}"]
    assert main(["--preset", "tiny", "--no-progress", "--output", str(tmp_path / "run"), *fast_overrides,
                 *remote]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(url=url) in err, err
    assert not (tmp_path / "run").exists()


def test_a_non_finite_step_is_skipped_and_never_reaches_the_weights(tmp_path, fast_overrides, monkeypatch):
    from superflow_lite import trainer as trainer_mod

    real = trainer_mod.step_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] == 1 else (loss, stats)

    monkeypatch.setattr(trainer_mod, "step_loss", poisoned)
    run = tmp_path / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(run), *fast_overrides, "train.iterations=1",
                 "train.updates_per_iter=2"]) == 0
    row = [r for r in read_metrics(run) if r.get("iteration") == 1][0]
    assert row["grpo/skipped_steps"] == 1
    assert lora_is_finite(run) and checkpoint_is_finite(run)
    assert "skipped an optimizer step with a non-finite loss or gradient" in (run / "train.log").read_text()


def test_a_damaged_newest_checkpoint_falls_back_and_resume_overrides_persist(tmp_path, fast_overrides, capsys,
                                                                             dead_pid):
    run = tmp_path / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(run), *fast_overrides, "train.iterations=2"]) == 0
    newest = list_checkpoints(run)[0]
    assert newest.name == "ckpt-000002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    leftover = run / f".status.json.{dead_pid}.tmp"  # what a killed writer leaves
    leftover.write_text("{")
    assert main(["--resume", str(run), "--no-progress", "train.iterations=3"]) == 0
    assert "damaged" in (run / "train.log").read_text() and "resumed from ckpt-000001.pt" in (run / "train.log").read_text()
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1, 2, 3]
    assert read_status(run)["state"] == "done" and read_status(run)["iteration"] == 3
    assert not leftover.exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iterations"] == 3
    capsys.readouterr()
    assert main(["--resume", str(run)]) == 2  # the persisted length: a plain resume has nothing to do
    assert "the run is done (3/3 iterations)" in capsys.readouterr().err


def test_a_diverging_run_stops_with_exit_1_and_keeps_nothing_of_it(tmp_path, fast_overrides, capsys):
    run = tmp_path / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(run), *fast_overrides, "train.iterations=2",
                 "train.lr=1e30"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the run diverged at iteration 1: LoRA weight ") and "|w| = 1e+30" in err, err
    assert "train.lr=1e+30" in err and str(run / "train.log") in err
    assert read_status(run)["state"] == FAILED and run_state(run) == FAILED
    assert list_checkpoints(run) == [] and not (run / "lora").exists()  # the diverged weights are nowhere


def start_cli(run: Path, fast_overrides: list[str], iterations: int = 50) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "superflow_lite.train", "--preset", "tiny", "--no-progress",
                             "--output", str(run), *fast_overrides, f"train.iterations={iterations}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while latest_checkpoint_iteration(run) is None:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_kill_9_leaves_a_failed_run_that_resumes(tmp_path, fast_overrides):
    run = tmp_path / "run"
    proc = start_cli(run, fast_overrides)
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(run)["state"] == "running"  # the last word written ...
    assert run_state(run) == FAILED  # ... is not what the user sees: the process is gone
    at = latest_checkpoint_iteration(run)
    assert main(["--resume", str(run), "--no-progress", f"train.iterations={at + 1}"]) == 0
    assert read_status(run)["state"] == "done" and read_status(run)["iteration"] == at + 1
    assert [r["iteration"] for r in read_metrics(run)] == list(range(at + 2))
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]  # no temp file left behind


def test_a_double_ctrl_c_says_what_the_last_checkpoint_keeps(tmp_path, fast_overrides):
    run = tmp_path / "run"
    proc = start_cli(run, fast_overrides)
    wait_for_checkpoint(run, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    at = latest_checkpoint_iteration(run)
    assert last.startswith("error: interrupted at iteration ") and f"the last checkpoint is iteration {at}" in last
    status = read_status(run)
    assert status["state"] == STOPPED and status["interrupted"] and status["iteration"] == at
    assert run_state(run) == STOPPED
    assert main(["--resume", str(run), "--no-progress", f"train.iterations={at + 1}"]) == 0
    assert read_status(run)["state"] == "done"


def test_kill_9_during_the_final_export_leaves_a_run_that_resume_completes(tmp_path, fast_overrides, capsys,
                                                                           dead_pid):
    """What a kill during the final export leaves: every checkpoint written, the LoRA being
    built aside in .lora.<pid>.tmp (its process gone), lora/ missing or an older export."""
    run = tmp_path / "run"
    assert main(["--preset", "tiny", "--no-progress", "--output", str(run), *fast_overrides, "train.iterations=1"]) == 0
    exported = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    metrics = (run / "metrics.jsonl").read_bytes()
    for leave_old_lora in (False, True):
        if not leave_old_lora:
            shutil.rmtree(run / "lora")
        else:  # an earlier (stopped) export still in place, older than the final weights
            (run / "lora" / "README.md").write_text("an older export")
        half_built = run / f".lora.{dead_pid}.tmp"
        (half_built / "peft").mkdir(parents=True)
        (half_built / "pytorch_lora_weights.safetensors").write_bytes(b"\0" * 100)
        status = read_status(run)
        (run / "status.json").write_text(json.dumps({**status, "state": "running"}))  # its last word
        capsys.readouterr()
        assert main(["--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
        assert lora_complete(run) and not half_built.exists()
        assert "an older export" not in (run / "lora" / "README.md").read_text()
        again = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
        assert again.keys() == exported.keys() and all(torch.equal(again[k], exported[k]) for k in exported)
        assert read_status(run)["state"] == DONE and (run / "metrics.jsonl").read_bytes() == metrics
    assert main(["--resume", str(run)]) == 2  # whole again: a plain resume has nothing to do
    assert "the run is done (1/1 iterations)" in capsys.readouterr().err


def log_says(run: Path, text: str) -> bool:
    log = run / "train.log"
    return log.exists() and text in log.read_text()


def test_a_stop_during_the_step_0_evaluation_ends_within_seconds(tmp_path, fast_overrides):
    run = tmp_path / "run"
    # An evaluation of 128 images in micro-batches of 2: about a minute on 2 CPU cores, each
    # micro-batch about a second.
    slow_eval = ["prompts.num_eval_prompts=16", "prompts.eval_seeds=[0,1,2,3,4,5,6,7]", "sampling.eval_num_steps=20",
                 "sampling.micro_batch=2"]
    proc = start_cli(run, [*fast_overrides, *slow_eval], iterations=2)
    deadline = time.monotonic() + 240
    while not log_says(run, "evaluating step 0"):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the step-0 evaluation did not start in time"
        time.sleep(0.2)
    time.sleep(2)  # well into the evaluation
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    _, err = proc.communicate(timeout=180)
    took = time.monotonic() - asked
    assert proc.returncode == 0, err
    assert took < 15, f"the stop took {took:.0f} s"
    assert "evaluation at step 0 abandoned" in (run / "train.log").read_text()
    assert read_status(run)["state"] == STOPPED and latest_checkpoint_iteration(run) == 0
    assert not (run / "samples" / "000000").exists() and read_metrics(run) == []  # nothing half-written
    assert main(["--resume", str(run), "--no-progress", "prompts.num_eval_prompts=2", "prompts.eval_seeds=[0]",
                 "sampling.eval_num_steps=2", "train.iterations=1"]) == 0
    assert [r["iteration"] for r in read_metrics(run)] == [0, 1] and read_status(run)["state"] == DONE
