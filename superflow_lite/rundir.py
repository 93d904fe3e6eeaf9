"""The run directory: the one contract between the CLI, the trainer and the app.

    <run>/config.yaml        resolved config (re-runnable: --config <run>/config.yaml); a
                             resume's overrides are written back into it
    <run>/metrics.jsonl      one JSON object per iteration (and eval rows)
    <run>/samples/<step>/    eval images + index.json (prompt, seed, reward)
    <run>/checkpoints/       ckpt-<iteration>.pt + ckpt-<iteration>.pt.sha256, written atomically
    <run>/lora/              pytorch_lora_weights.safetensors (+ peft/, README.md), replaced whole
    <run>/status.json        pid, heartbeat, state, progress (written by the trainer)
    <run>/train.log          the trainer's log
    <run>/.lock              held by the one process training this run
    <run>/launch.json        supervisor and trainer pids, command, stop request (app launches)
    <run>/exit.json          the training process's exit code (app launches)
    <run>/console.log        the training process's stdout and stderr (app launches)

Everything that decides what a run is lives here: the file names, the states and the one
function that derives a run's state (run_state), the "is this a run" rule, atomic writes,
checkpoint naming and which checkpoint is intact. Nothing here imports torch, so the app
stays light.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil

log = logging.getLogger("superflow_lite")

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
LOG_FILE = "train.log"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
LORA_DIR = "lora"
LORA_FILE = "pytorch_lora_weights.safetensors"
LORA_PEFT_DIR = "peft"
LORA_COMFYUI_DIR = "comfyui"
LORA_CARD = "README.md"
# Inside lora/: what an export writes, all of it or (a crash) none of it.
LORA_PARTS = (LORA_FILE, f"{LORA_PEFT_DIR}/adapter_model.safetensors", f"{LORA_PEFT_DIR}/adapter_config.json",
              LORA_CARD)
LORAS_DIR = "loras"  # intermediate LoRAs, one folder per iteration: loras/000020/
LOCK_FILE = ".lock"
LAUNCH_FILE = "launch.json"
EXIT_FILE = "exit.json"
CONSOLE_FILE = "console.log"
# Files the app writes into a run folder before the trainer starts in it.
LAUNCH_FILES = (LAUNCH_FILE, EXIT_FILE, CONSOLE_FILE)

STARTING, RUNNING, STOPPING, STOPPED, FAILED, DONE, UNKNOWN = (
    "starting", "running", "stopping", "stopped", "failed", "done", "unknown")
ACTIVE_STATES = (STARTING, RUNNING, STOPPING)
FINAL_STATES = (DONE, STOPPED, FAILED)
STATES = ACTIVE_STATES + FINAL_STATES

# The CLI's exit codes, one per class of outcome (README "Exit codes").
EXIT_OK = 0           # done, or stopped cleanly with a checkpoint and the LoRA
EXIT_RUN_FAILED = 1   # a failure during the run: the message names it and the log's path
EXIT_BAD_INPUT = 2    # bad input, caught before anything was created or changed
EXIT_INTERRUPTED = 130  # a second Ctrl-C: the message says what the last checkpoint holds
# A graceful stop ends with 0 (checkpointed), or by the signal itself if it came before
# the trainer installed its handler: SIGINT -> 130 / -2, SIGTERM -> 143 / -15.
STOP_EXIT_CODES = (0, 130, 143, -2, -15)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 6 * HEARTBEAT_S
TMP_SUFFIX = ".tmp"
CHECKPOINT = re.compile(r"^ckpt-(\d+)\.pt$")
CHECKSUM_SUFFIX = ".sha256"


# ---------------------------------------------------------------------- atomic writes
def temp_path(path: Path) -> Path:
    """A hidden sibling named by our pid: a crash leaves it recognisable (clean_temp_files)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over `path`: a reader or a crash never sees half a file, and
    a failed write (a full disk) leaves the old file and no temp file behind."""
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a whole directory in a hidden sibling; on success it replaces `path`.

    The old directory is renamed aside before the new one is renamed in, and removed after;
    a crash between the two renames leaves it as .<name>.<pid>.old, which clean_temp_files
    puts back. A failure while building leaves `path` as it was."""
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _pid_of_temp(name: str) -> int | None:
    m = re.match(r"^\..+\.(\d+)\.(tmp|old)$", name)
    return int(m.group(1)) if m else None


def clean_temp_files(path: str | Path) -> list[Path]:
    """Remove what killed writers left in a run (their pid is gone); put back a LoRA
    directory that a crash left renamed aside. Returns what was removed."""
    path = Path(path)
    removed = []
    for folder in (path, path / CHECKPOINTS_DIR, path / LORAS_DIR):
        if not folder.is_dir():
            continue
        for item in folder.iterdir():
            pid = _pid_of_temp(item.name)
            if pid is None or (pid != os.getpid() and process_alive(pid)):
                continue
            if item.name.endswith(".old") and not (folder / item.name[1:].rsplit(".", 2)[0]).exists():
                os.replace(item, folder / item.name[1:].rsplit(".", 2)[0])
                continue
            shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)
            removed.append(item)
    return removed


# ---------------------------------------------------------------------- checkpoints
def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:06d}.pt"


def checkpoint_iteration(path: Path) -> int | None:
    m = CHECKPOINT.match(Path(path).name)
    return int(m.group(1)) if m else None


def checksum_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_intact(checkpoint: Path) -> bool:
    """The file is whole: its sha256 equals the one recorded when it was written (a
    truncated or overwritten file differs). No record (an older run): trust the loader."""
    try:
        recorded = checksum_path(checkpoint).read_text().strip()
    except FileNotFoundError:
        return checkpoint.is_file()
    except OSError:
        return False
    try:
        return file_sha256(checkpoint) == recorded
    except OSError:
        return False


def list_checkpoints(run_path: str | Path) -> list[Path]:
    """The run's checkpoint files, newest iteration first (intact or not)."""
    d = Path(run_path) / CHECKPOINTS_DIR
    found = [(it, p) for p in d.glob("ckpt-*.pt") if (it := checkpoint_iteration(p)) is not None] if d.is_dir() else []
    return [p for _, p in sorted(found, reverse=True)]


def intact_checkpoints(run_path: str | Path) -> list[Path]:
    """Newest first, only those whose bytes are whole: the newest one is what a resume uses."""
    return [p for p in list_checkpoints(run_path) if checkpoint_intact(p)]


def latest_checkpoint_iteration(run_path: str | Path) -> int | None:
    """The iteration a resume continues from: that of the newest intact checkpoint."""
    intact = intact_checkpoints(run_path)
    return checkpoint_iteration(intact[0]) if intact else None


# ---------------------------------------------------------------------- liveness
def process_alive(pid: int | None, started: float | None = None) -> bool:
    """The process exists and is not a zombie; with `started` (its create time), it is also
    the same process, not a later one that reused the pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else


def process_started(pid: int | None = None) -> float:
    """The create time of `pid` (default: this process), recorded beside a pid."""
    return psutil.Process(pid or os.getpid()).create_time()


def is_our_process(pid: int | None, started: float | None = None) -> bool:
    """Alive and ours: the recorded create time matches, or (no record) its command line
    names superflow_lite. A reused pid of another program does not keep a dead run alive."""
    if not process_alive(pid, started):
        return False
    if started is not None:
        return True
    try:
        return any("superflow_lite" in part for part in psutil.Process(int(pid)).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# ---------------------------------------------------------------------- the run folder
class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # The heartbeat thread and the loop both rewrite status.json (read-modify-write).
        self._status_lock = threading.Lock()

    config_path = property(lambda self: self.path / CONFIG_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    status_path = property(lambda self: self.path / STATUS_FILE)
    log_path = property(lambda self: self.path / LOG_FILE)
    samples_dir = property(lambda self: self.path / SAMPLES_DIR)
    checkpoints_dir = property(lambda self: self.path / CHECKPOINTS_DIR)
    lora_dir = property(lambda self: self.path / LORA_DIR)

    def intermediate_lora_dir(self, iteration: int) -> Path:
        return self.path / LORAS_DIR / f"{iteration:06d}"

    def prune_intermediate_loras(self, keep: int) -> None:
        """Delete all but the newest `keep` intermediate LoRAs (0: keep every one)."""
        if keep <= 0:
            return
        for old in list_intermediate_loras(self.path)[:-keep]:
            shutil.rmtree(old)
    lock_path = property(lambda self: self.path / LOCK_FILE)

    def create(self) -> None:
        for d in (self.path, self.samples_dir, self.checkpoints_dir):
            d.mkdir(parents=True, exist_ok=True)

    def lock(self):
        """The run's lock (filelock): one training process per run folder."""
        from filelock import FileLock

        return FileLock(str(self.lock_path), timeout=0)

    # ------------------------------------------------------------------ writers (trainer)
    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

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
            status.update(fields, pid=os.getpid(), pid_started=process_started(), heartbeat=time.time())
            atomic_write_text(self.status_path, json.dumps(status, indent=1))


class Heartbeat:
    """Refreshes status.json's heartbeat while a long iteration runs, so a watcher can
    tell a slow run from a dead one. A failed write (a full disk) is logged once and
    retried; it never kills the thread (the state is derived from liveness anyway)."""

    def __init__(self, run: RunDir, every_s: float = HEARTBEAT_S):
        self.run, self.every_s = run, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        warned = False
        while not self._stop.wait(self.every_s):
            try:
                self.run.write_status()
            except OSError as err:
                if not warned:
                    log.warning("cannot write %s: %s", self.run.status_path, err)
                warned = True

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------- readers (app, CLI, tests)
def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_status(path: str | Path) -> dict | None:
    return read_json(Path(path) / STATUS_FILE)


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path) / METRICS_FILE
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
    d = Path(path) / SAMPLES_DIR
    return sorted(int(p.name) for p in d.glob("*") if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def read_samples(path: str | Path, step: int) -> list[dict]:
    """[{file (absolute), prompt, seed, reward, ...}] of one eval step."""
    d = Path(path) / SAMPLES_DIR / f"{step:06d}"
    try:
        rows = json.loads((d / "index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [{**r, "file": str(d / r["file"])} for r in rows]


def list_intermediate_loras(path: str | Path) -> list[Path]:
    """loras/<iteration>/ folders, oldest first (a half-written one is a temp folder, not listed)."""
    d = Path(path) / LORAS_DIR
    return sorted((p for p in d.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if d.is_dir() else []


def lora_file(path: str | Path) -> Path | None:
    f = Path(path) / LORA_DIR / LORA_FILE
    return f if f.is_file() else None


def lora_complete(path: str | Path) -> bool:
    """lora/ holds every format an export writes (the ComfyUI file is named after the run)."""
    lora = Path(path) / LORA_DIR
    return all((lora / part).is_file() for part in LORA_PARTS) and any((lora / LORA_COMFYUI_DIR).glob("*.safetensors"))


def export_interrupted(path: str | Path) -> bool:
    """A LoRA export was killed while building its folder aside (atomic_dir's .lora.<pid>.tmp,
    its process gone): lora/, if there, is an older export than the run's last one."""
    path = Path(path)
    return any(item.is_dir() and (pid := _pid_of_temp(item.name)) is not None and not process_alive(pid)
               for item in path.glob(f".{LORA_DIR}.*{TMP_SUFFIX}"))


def lora_needs_export(path: str | Path) -> bool:
    """The run's LoRA is missing, incomplete or older than its last export attempt."""
    return not lora_complete(path) or export_interrupted(path)


def is_run_dir(path: str | Path) -> bool:
    """A folder is a run once the trainer or the app has written into it."""
    path = Path(path)
    return path.is_dir() and any((path / f).exists() for f in (CONFIG_FILE, STATUS_FILE, *LAUNCH_FILES))


def has_trained(path: str | Path) -> bool:
    """The trainer has started in it (the app's launch files alone do not count): a new
    run must not start here, only a resume."""
    path = Path(path)
    return (path / CONFIG_FILE).exists() or (path / STATUS_FILE).exists() or bool(list_checkpoints(path))


def run_state(path: str | Path, stale_after_s: float = STALE_AFTER_S) -> str:
    """The one state a user sees: starting / running / stopping / stopped / done / failed /
    unknown. It is derived from the files and from whether the writer still lives, so a
    run whose process died (killed, crashed, or unable to write on a full disk) is 'failed',
    never stuck as 'running'."""
    path = Path(path)
    status = read_status(path) or {}
    launch = read_json(path / LAUNCH_FILE)
    ended = read_json(path / EXIT_FILE)
    state = status.get("state")
    stop_requested = bool(launch and launch.get("stop_requested_at"))
    if ended is not None:  # launched from the app, and the training process has ended
        if state in FINAL_STATES and status.get("pid") == ended.get("trainer_pid"):
            return state
        if stop_requested and ended.get("returncode") in STOP_EXIT_CODES:
            return STOPPED  # stopped before the trainer wrote a final status
        return FAILED
    if launch is not None and is_our_process(launch.get("supervisor_pid"), launch.get("supervisor_started")):
        own = status.get("pid") == launch.get("trainer_pid")
        current = state if own and state in STATES else STARTING
        return STOPPING if stop_requested and current in ACTIVE_STATES else current
    if state in ACTIVE_STATES:
        if not is_our_process(status.get("pid"), status.get("pid_started")):
            return FAILED  # its process is gone (or the pid now belongs to another program)
        if state == STARTING:
            return STARTING  # loading a large model can outlast the heartbeat window
        if time.time() - float(status.get("heartbeat", 0)) > stale_after_s:
            return FAILED  # alive but silent: hung
        return state
    if state in FINAL_STATES:
        return state
    return FAILED if launch is not None else UNKNOWN  # launched, and the supervisor is gone without a word


def writer_alive(path: str | Path) -> bool:
    """A trainer process is still working in this run (whatever status.json says)."""
    status = read_status(path) or {}
    return status.get("state") in ACTIVE_STATES and status.get("pid") != os.getpid() and is_our_process(
        status.get("pid"), status.get("pid_started"))
