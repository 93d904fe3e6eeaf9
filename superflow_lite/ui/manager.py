"""Start, stop, resume and delete training runs as subprocesses of the CLI.

Every run is `python -m superflow_lite.train ...` exactly as a user would type it, under a
small supervisor (supervise.py) in a session of its own: the run outlives the browser tab
and the app. Argument lists only, never a shell. The config is resolved here with the
CLI's own code first, so an invalid form gets the CLI's message before anything starts.
One training run per machine: a second launch is refused while one is active.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, echo, parse_override, to_yaml
from ..rundir import (ACTIVE_STATES, CONSOLE_FILE, EXIT_FILE, FINAL_STATES, LAUNCH_FILE, LORA_DIR, STATUS_FILE,
                      is_our_process, is_run_dir, latest_checkpoint_iteration, lora_file, read_json, run_state)
from .form import app_owned_key
from .runs import RUN_NAME, list_runs
from .supervise import lock_holder

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # so the subprocess imports this same package


class LaunchError(Exception):
    """A launch, stop, resume or delete that cannot happen; the message says why."""


def default_lock_path() -> Path:
    """One lock per machine (per user): the supervisor of the active run holds it."""
    return Path(tempfile.gettempdir()) / f"superflow_lite-{os.getuid()}" / "train.lock"


@dataclass
class Preview:
    name: str
    run_path: Path
    config_yaml: str
    train_args: list[str]  # after `python -m superflow_lite.train`
    machine_problem: str = ""  # why this machine cannot run it (a GPU preset on a CPU); "" = it can

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "superflow_lite.train", *self.train_args])


def _reap_when_done(proc: subprocess.Popen, every_s: float = 0.5) -> None:
    while proc.poll() is None:
        time.sleep(every_s)


class RunManager:
    def __init__(self, runs_root: str | Path, python: str = sys.executable, lock_path: Path | None = None,
                 env: dict | None = None, start_timeout_s: float = 30.0):
        self.root = Path(runs_root).resolve()
        self.python = python
        self.lock_path = Path(lock_path) if lock_path else default_lock_path()
        self.env = env
        self.start_timeout_s = start_timeout_s
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ paths
    def run_path(self, name: str) -> Path:
        """The run folder `name` inside the runs folder; anything else is refused."""
        if not isinstance(name, str) or not RUN_NAME.match(name):
            raise LaunchError(f"run name {name!r}: use letters, digits, '.', '_' and '-' (it names a folder in {self.root})")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise LaunchError(f"run name {name!r} is outside the runs folder {self.root}")
        return path

    def existing_run(self, name: str) -> Path:
        path = self.run_path(name)
        if not is_run_dir(path):
            raise LaunchError(f"no run named {name!r} in {self.root}")
        return path

    @property
    def uploads_dir(self) -> Path:
        return self.root / ".uploads"

    # ------------------------------------------------------------------ launching
    def check_overrides(self, overrides: list[str]) -> None:
        """Dotted key=value overrides only, none of them setting the run's folder, in any
        spelling (output.root=..., output={root: ...}, ...): runs stay in the runs folder."""
        for text in overrides:
            if not isinstance(text, str) or text.startswith("-"):
                raise ConfigError(f"override {echo(text)} must look like section.key=value (e.g. train.lr=1e-4)")
            parse_override(text)
            owned = app_owned_key(text)
            if owned:
                raise ConfigError(f"override {echo(text)}: the app sets {owned}; use the run name field "
                                  f"(runs live in the app's runs folder {self.root})")

    def preview(self, preset: str, overrides: list[str], name: str = "") -> Preview:
        """Check the launch as the CLI will (its launch gate); raise ConfigError/LaunchError
        with the CLI's message."""
        from ..config import available_presets, task_presets
        from ..launch import MachineUnfit, UsageError, gate, resolve
        from ..train import parse_args

        known = available_presets() + task_presets()
        if preset != "auto" and preset not in known:  # the CLI's words, no path games
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(known)}")
        self.check_overrides(overrides)
        if name:
            self.run_path(name)
        # The app's keys go last, so nothing before them can move the run elsewhere.
        pinned = [f"output.root={self.root}"] + ([f"output.name={name}"] if name else [])
        args = parse_args(["--preset", preset, *overrides, *pinned])
        machine_problem = ""
        try:
            checked = gate(args)
            launch_cfg, launch_path = checked.cfg, checked.run_path
        except MachineUnfit as err:  # valid, but for another machine: keep its command and plan
            machine_problem = str(err)
            launch_cfg, launch_path = resolve(args)
        except UsageError as err:
            raise LaunchError(str(err)) from None
        cfg = launch_cfg
        name = launch_path.name  # the CLI's default name when the field was empty
        cfg.output.name = name  # pinned on the command line below, so shown in the config too
        path = self.run_path(name)
        if Path(cfg.output.root).resolve() != self.root or launch_path.resolve() != path:
            raise LaunchError(f"the run would be written to {launch_path}, outside the runs folder {self.root}")
        if is_run_dir(path):
            raise LaunchError(f"a run named {name!r} already exists in {self.root}; choose another name, or resume it")
        train_args = ["--preset", preset, *overrides, f"output.root={self.root}", f"output.name={name}"]
        return Preview(name=name, run_path=path, config_yaml=to_yaml(cfg), train_args=train_args,
                       machine_problem=machine_problem)

    def start(self, preset: str, overrides: list[str], name: str = "") -> Preview:
        with self._lock:
            self._refuse_if_busy()
            preview = self.preview(preset, overrides, name)
            if preview.machine_problem:
                raise LaunchError(preview.machine_problem)
            preview.run_path.mkdir(parents=True, exist_ok=True)
            self._spawn(preview.name, preview.run_path, preview.train_args)
            return preview

    def resume(self, name: str, overrides: list[str] | None = None) -> str:
        """Continue a stopped, failed or done run from its latest intact checkpoint, after the
        CLI's launch gate passed on it. Returns the command."""
        from ..launch import UsageError, gate
        from ..train import parse_args

        overrides = list(overrides or [])
        self.check_overrides(overrides)
        with self._lock:
            path = self.existing_run(name)
            state = run_state(path)
            if state in ACTIVE_STATES:
                raise LaunchError(f"run {name!r} is {state}; stop it before resuming")
            if latest_checkpoint_iteration(path) is None:
                raise LaunchError(f"run {name!r} has no checkpoint, so there is nothing to resume; launch it again")
            self._refuse_if_busy()
            train_args = ["--resume", str(path), *overrides]
            try:
                gate(parse_args(train_args))
            except UsageError as err:
                raise LaunchError(str(err)) from None
            self._spawn(name, path, train_args)
            return shlex.join(["python", "-m", "superflow_lite.train", *train_args])

    def _spawn(self, name: str, path: Path, train_args: list[str]) -> None:
        (path / EXIT_FILE).unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"  # console.log follows the run line by line
        cmd = [self.python, "-m", "superflow_lite.train", "--no-progress", *train_args]
        argv = [self.python, "-m", "superflow_lite.ui.supervise", str(path), str(self.lock_path), "--", *cmd]
        with (path / CONSOLE_FILE).open("ab") as console:
            console.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
            console.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, close_fds=True)
        self._children[name] = proc
        # Poll it in the background, so a finished supervisor is reaped within a second, never
        # left a zombie. (Not proc.wait(): it holds Popen's lock, and active_run's poll() would
        # then see the child as alive until the thread woke.)
        threading.Thread(target=_reap_when_done, args=(proc,), name=f"reap-{name}", daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            launch = read_json(path / LAUNCH_FILE) or {}
            if launch.get("supervisor_pid") == proc.pid:
                return
            time.sleep(0.05)
        if proc.poll() is not None and proc.returncode != 0:
            raise LaunchError(f"the run did not start (exit code {proc.returncode}); see {path / CONSOLE_FILE}")

    # ------------------------------------------------------------------ one run at a time
    def _reap(self) -> None:
        for name, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[name]

    def active_run(self) -> str | None:
        """The name (or path) of the run that holds this machine, if any."""
        self._reap()
        if self._children:
            return next(iter(self._children))
        holder = lock_holder(self.lock_path)
        if holder is not None:
            return holder.get("run") or "another run"
        return next((r.name for r in list_runs(self.root) if r.state in ACTIVE_STATES), None)

    def _refuse_if_busy(self, exit_wait_s: float = 15.0) -> None:
        active = self.active_run()
        deadline = time.monotonic() + exit_wait_s
        while active and time.monotonic() < deadline and self._is_exiting(active):
            time.sleep(0.1)  # its final status is written; the process is only exiting
            active = self.active_run()
        if active:
            raise LaunchError(f"run {Path(active).name!r} is still training on this machine: one run at a time. "
                              "Stop it (it checkpoints first) or wait for it to finish.")

    def _is_exiting(self, active: str) -> bool:
        path = self.root / Path(active).name
        return path.parent == self.root and run_state(path) in FINAL_STATES

    # ------------------------------------------------------------------ stop, delete, download
    def stop(self, name: str) -> str:
        """Graceful stop: the trainer finishes its iteration, checkpoints and exports."""
        path = self.existing_run(name)
        state = run_state(path)
        if state == "stopping":
            return f"run {name!r} is already stopping: it finishes the current iteration, then checkpoints"
        if state not in ACTIVE_STATES:
            raise LaunchError(f"run {name!r} is {state}; nothing to stop")
        launch = read_json(path / LAUNCH_FILE) or {}
        status_pid = (read_json(path / STATUS_FILE) or {}).get("pid")
        for pid in (launch.get("supervisor_pid"), status_pid):
            if is_our_process(pid):
                os.kill(int(pid), signal.SIGTERM)
                if pid == launch.get("supervisor_pid"):  # it records the request: wait, so the state says so
                    deadline = time.monotonic() + 5.0
                    while time.monotonic() < deadline and run_state(path) not in ("stopping",) + FINAL_STATES:
                        time.sleep(0.05)
                return f"stopping {name!r}: it finishes the current iteration, checkpoints and exports its LoRA"
        raise LaunchError(f"run {name!r} has no live process to stop")

    def delete(self, name: str) -> None:
        path = self.existing_run(name)
        state = run_state(path)
        if state in ACTIVE_STATES:
            raise LaunchError(f"run {name!r} is {state}; stop it before deleting it")
        self._children.pop(name, None)
        shutil.rmtree(path)

    @property
    def downloads_dir(self) -> Path:
        """Zips for download live outside the runs: selecting a run never changes its folder."""
        return Path(tempfile.gettempdir()) / f"superflow_lite-{os.getuid()}" / "downloads"

    def lora_zip(self, name: str) -> Path:
        """<downloads>/<run>-<hash of the run path>/<run>-lora.zip: the lora/ folder (every format, model card)."""
        import hashlib

        path = self.existing_run(name)
        weights = lora_file(path)
        if weights is None:
            raise LaunchError(f"run {name!r} has no exported LoRA yet (it is written when a run stops or ends)")
        folder = self.downloads_dir / f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{name}-lora.zip"
        if not out.exists() or out.stat().st_mtime < weights.stat().st_mtime:
            tmp = out.with_name(f".{out.name}.tmp")
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted((path / LORA_DIR).rglob("*")):
                    if f.is_file():
                        zf.write(f, Path(LORA_DIR) / f.relative_to(path / LORA_DIR))
            os.replace(tmp, out)
        return out
