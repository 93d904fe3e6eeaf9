"""The run directory: the contract between the trainer, the CLI and the app.

    <run>/config.yaml        resolved config (re-runnable: --config <run>/config.yaml)
    <run>/metrics.jsonl      one JSON object per iteration (and eval rows)
    <run>/samples/<step>/    eval images + index.json (prompt, seed, reward)
    <run>/checkpoints/       resumable state, written atomically
    <run>/lora/              pytorch_lora_weights.safetensors (+ peft/, README.md)
    <run>/status.json        pid, heartbeat, state (running/stopped/failed/done), progress
    <run>/train.log

Readers here never import torch, so the app stays light.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

STATES = ("starting", "running", "stopping", "stopped", "failed", "done")
HEARTBEAT_S = 5.0


def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader or a crash never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # The heartbeat thread and the loop both rewrite status.json (read-modify-write).
        self._status_lock = threading.Lock()

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def lora_dir(self) -> Path:
        return self.path / "lora"

    def create(self) -> None:
        for d in (self.path, self.samples_dir, self.checkpoints_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ writers (trainer)
    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, iteration: int) -> None:
        """On resume: drop rows written after the checkpoint we restart from."""
        rows = [r for r in read_metrics(self.path) if r.get("iteration", 0) <= iteration]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def write_status(self, **fields: Any) -> None:
        with self._status_lock:
            status = read_status(self.path) or {}
            status.update(fields, pid=os.getpid(), heartbeat=time.time())
            atomic_write_text(self.status_path, json.dumps(status, indent=1))


class Heartbeat:
    """Refreshes status.json's heartbeat while a long iteration runs, so a watcher can
    tell a slow run from a dead one."""

    def __init__(self, run: RunDir, every_s: float = HEARTBEAT_S):
        self.run, self.every_s = run, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.run.write_status()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------- readers (app, tests)
def read_status(path: str | Path) -> dict | None:
    p = Path(path) / "status.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return rows


def list_sample_steps(path: str | Path) -> list[int]:
    d = Path(path) / "samples"
    return sorted(int(p.name) for p in d.glob("*") if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def read_samples(path: str | Path, step: int) -> list[dict]:
    """[{file (absolute), prompt, seed, reward, ...}] of one eval step."""
    d = Path(path) / "samples" / f"{step:06d}"
    try:
        rows = json.loads((d / "index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [{**r, "file": str(d / r["file"])} for r in rows]


def is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_state(path: str | Path, stale_after_s: float = 6 * HEARTBEAT_S) -> str:
    """The status a user should see: a 'running' run whose process is gone (or whose
    heartbeat stopped) is 'failed', never stuck as running."""
    status = read_status(path)
    if status is None:
        return "unknown"
    state = status.get("state", "unknown")
    if state in ("starting", "running", "stopping"):
        pid = status.get("pid")
        dead = pid is None or not is_process_alive(int(pid))
        stale = time.time() - float(status.get("heartbeat", 0)) > stale_after_s
        if dead or stale:
            return "failed"
    return state
