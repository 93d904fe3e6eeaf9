"""The run contract on hand-made folders: atomic writes, temp-file clean-up, checkpoint
integrity and the one derived state. No training."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

from superflow_lite.checkpoint import load_latest_intact, save_checkpoint
from superflow_lite.rundir import (FAILED, RUNNING, STOPPED, RunDir, atomic_dir, atomic_write, checkpoint_intact,
                                   clean_temp_files, has_trained, is_run_dir, latest_checkpoint_iteration,
                                   list_checkpoints, process_started, run_state)


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "status.json"
    target.write_text("old")

    def full_disk(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, full_disk)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(lora) as tmp:
            (tmp / "weights").write_text("half of v2")
            raise RuntimeError("killed mid-export")
    assert (lora / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["lora"]
    with atomic_dir(lora) as tmp:
        (tmp / "weights").write_text("v2")
    assert (lora / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["lora"]


def test_clean_up_removes_dead_writers_temp_files_and_restores_a_lora_set_aside(tmp_path, dead_pid):
    run = RunDir(tmp_path / "run")
    run.create()
    (run.path / f".status.json.{dead_pid}.tmp").write_text("{")
    (run.checkpoints_dir / f".ckpt-000003.pt.{dead_pid}.tmp").write_bytes(b"half")
    live = run.path / f".launch.json.{os.getppid()}.tmp"  # a live writer's file stays
    live.write_text("{}")
    aside = run.path / f".lora.{dead_pid}.old"  # killed between export's two renames
    aside.mkdir()
    (aside / "pytorch_lora_weights.safetensors").write_bytes(b"w")
    removed = clean_temp_files(run.path)
    assert len(removed) == 2 and live.exists()
    assert (run.lora_dir / "pytorch_lora_weights.safetensors").read_bytes() == b"w" and not aside.exists()


def test_checkpoints_are_checksummed_pruned_and_a_damaged_newest_is_skipped(tmp_path):
    for it in (1, 2, 3):
        save_checkpoint(tmp_path, it, {"w": torch.full((4,), float(it))})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000003.pt", "ckpt-000002.pt"]  # keep 2
    newest = list_checkpoints(tmp_path)[0]
    assert checkpoint_intact(newest)
    newest.write_bytes(newest.read_bytes()[:-20])  # truncated by a full disk or a copy
    assert not checkpoint_intact(newest)
    assert latest_checkpoint_iteration(tmp_path) == 2
    path, state = load_latest_intact(tmp_path)
    assert path.name == "ckpt-000002.pt" and state["iteration"] == 2 and float(state["w"][0]) == 2.0
    # The next save prunes the damaged one, never the intact fallback.
    save_checkpoint(tmp_path, 4, {"w": torch.zeros(4)})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000004.pt", "ckpt-000002.pt"]


def test_what_counts_as_a_run(tmp_path):
    assert not is_run_dir(tmp_path / "nothing")
    launched = tmp_path / "launched"
    launched.mkdir()
    (launched / "console.log").write_text("")
    assert is_run_dir(launched) and not has_trained(launched)  # the app's files alone: a run may start here
    (launched / "config.yaml").write_text("preset: tiny\n")
    assert has_trained(launched)


def test_status_follows_liveness_not_the_last_word_written(tmp_path, dead_pid):
    run = RunDir(tmp_path / "run")
    run.create()
    run.write_status(state=RUNNING, iteration=3)
    assert run_state(run.path) == RUNNING  # this process, recorded with its start time
    status = json.loads(run.status_path.read_text())
    # The process died (killed, or it could not write "failed" on a full disk).
    status["pid"] = dead_pid
    run.status_path.write_text(json.dumps(status))
    assert run_state(run.path) == FAILED
    # A live process whose start time differs is a reused pid: not ours.
    status.update(pid=os.getpid(), pid_started=process_started() - 1000)
    run.status_path.write_text(json.dumps(status))
    assert run_state(run.path) == FAILED
    status.update(pid_started=process_started(), heartbeat=time.time() - 3600)
    run.status_path.write_text(json.dumps(status))
    assert run_state(run.path) == FAILED  # alive but silent for an hour: hung
    status.update(state=STOPPED)
    run.status_path.write_text(json.dumps(status))
    assert run_state(run.path) == STOPPED


def test_a_killed_intermediate_lora_export_leaves_nothing_behind(tmp_path, dead_pid):
    run = RunDir(tmp_path / "run")
    run.create()
    half = run.intermediate_lora_dir(20).with_name(f".000020.{dead_pid}.tmp")  # atomic_dir's temp, writer gone
    half.mkdir(parents=True)
    (half / "pytorch_lora_weights.safetensors").write_bytes(b"half")
    assert clean_temp_files(run.path) == [half] and not half.exists()


def test_only_the_newest_intermediate_loras_are_kept(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (5, 10, 15, 20):
        run.intermediate_lora_dir(step).mkdir(parents=True)
    run.prune_intermediate_loras(2)
    assert sorted(p.name for p in (run.path / "loras").iterdir()) == ["000015", "000020"]
    run.prune_intermediate_loras(0)  # 0 keeps every one
    assert len(list((run.path / "loras").iterdir())) == 2
