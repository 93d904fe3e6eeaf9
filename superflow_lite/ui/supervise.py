"""The parent of one training process: python -m superflow_lite.ui.supervise RUN_DIR LOCK -- CMD...

Started by the run manager in a session of its own, so the run outlives the browser tab
and the app. It
  - holds the machine's training lock (one run per GPU/machine) while CMD runs;
  - writes <run>/launch.json (its pid, the trainer's pid, the command, the start time);
  - turns SIGTERM/SIGINT into one SIGTERM to the trainer (graceful: the trainer finishes
    the iteration, checkpoints and exports) and records the request;
  - writes <run>/exit.json with the trainer's exit code when it ends.
Imports nothing heavy: it only waits.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..rundir import EXIT_FILE, LAUNCH_FILE, atomic_write_text, process_started

LOCK_BUSY_EXIT = 75  # EX_TEMPFAIL: another run holds the machine


def try_lock(lock_path: Path):
    """An open file holding an exclusive flock, or None if another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    f = lock_path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def lock_holder(lock_path: Path) -> dict | None:
    """What the current holder wrote into the lock file, if the lock is held."""
    if not lock_path.exists():
        return None
    f = try_lock(lock_path)
    if f is not None:
        f.close()
        return None
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m superflow_lite.ui.supervise RUN_DIR LOCK_FILE -- CMD...", file=sys.stderr)
        return 2
    run_dir, lock_path, cmd = Path(argv[0]), Path(argv[1]), argv[3:]
    launch = {"supervisor_pid": os.getpid(), "supervisor_started": process_started(), "trainer_pid": None,
              "command": cmd, "started": time.time(),
              "stop_requested_at": None}
    stop = {"requested": False}

    def request_stop(signum, frame):
        if stop["requested"]:
            return
        stop["requested"] = True
        launch["stop_requested_at"] = time.time()
        atomic_write_text(run_dir / LAUNCH_FILE, json.dumps(launch, indent=1))
        if child is not None:
            child.send_signal(signal.SIGTERM)

    child = None
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    atomic_write_text(run_dir / LAUNCH_FILE, json.dumps(launch, indent=1))  # the manager waits for this
    lock = try_lock(lock_path)
    if lock is None:
        holder = lock_holder(lock_path) or {}
        print(f"error: another training run holds this machine ({holder.get('run', 'unknown run')}); "
              "one run at a time: stop it or wait for it to finish", file=sys.stderr, flush=True)
        atomic_write_text(run_dir / EXIT_FILE, json.dumps({"returncode": LOCK_BUSY_EXIT, "ended": time.time(),
                                                           "started": launch["started"], "trainer_pid": None}))
        return LOCK_BUSY_EXIT
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps({"run": str(run_dir), "pid": os.getpid()}))
    lock.flush()
    if stop["requested"]:  # stopped before the trainer existed: nothing to run
        atomic_write_text(run_dir / EXIT_FILE, json.dumps({"returncode": 0, "ended": time.time(),
                                                           "started": launch["started"], "trainer_pid": None}))
        return 0
    # The trainer inherits the lock: it stays held while the trainer lives, supervisor or not.
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, pass_fds=(lock.fileno(),))
    launch["trainer_pid"] = child.pid
    atomic_write_text(run_dir / LAUNCH_FILE, json.dumps(launch, indent=1))
    if stop["requested"]:  # a stop that arrived while the trainer was being spawned
        child.send_signal(signal.SIGTERM)
    returncode = child.wait()
    atomic_write_text(run_dir / EXIT_FILE, json.dumps({
        "returncode": returncode, "ended": time.time(), "started": launch["started"], "trainer_pid": child.pid,
        "stop_requested": stop["requested"],
    }, indent=1))
    print(f"[supervisor] training process exited with code {returncode}", flush=True)
    lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
