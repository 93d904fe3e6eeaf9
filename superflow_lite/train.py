"""The CLI: python -m superflow_lite.train [--preset P] [--config FILE] [key=value ...]

Examples:
    python -m superflow_lite.train                                   # tiny-focus on a CPU, else the preset that fits
    python -m superflow_lite.train --preset 24gb train.lr=1e-4 reward.weights='{ocr: 1.0}'
    python -m superflow_lite.train --resume runs/my-run train.iterations=40
    python -m superflow_lite.train --preset 24gb --print-config       # resolved YAML, then exit
    python -m superflow_lite.train --preset 24gb --plan              # memory plan, then exit
    python -m superflow_lite.train --help-config                     # every config key and why
Exit codes: 0 done or stopped cleanly, 1 the run failed (message and the log's path),
2 bad input before anything was created (message says what to fix), 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import traceback

from .config import ConfigError, shorten, to_yaml
from .launch import Launch, UsageError, gate, is_main_process, resolve
from .rundir import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, FAILED, RUNNING, STARTING, STOPPED,
                     Heartbeat, RunDir, clean_temp_files, latest_checkpoint_iteration)

log = logging.getLogger("superflow_lite")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one `error:` line, exit 2) instead of printing usage."""

    def error(self, message: str):
        raise UsageError(f"{message}; see python -m superflow_lite.train --help")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="python -m superflow_lite.train",
        description="SuperFlow GRPO fine-tuning of flow-matching text-to-image models with LoRA.",
    )
    from .config import available_presets, task_presets

    parser.add_argument("--preset", default="auto",
                        help=f"by GPU memory: {', '.join(available_presets())} or auto (default: tiny-focus without a GPU, "
                             f"else the one that fits); a task's reward and prompts: {', '.join(task_presets())}")
    parser.add_argument("--config", help="a YAML file overlaid on the preset")
    parser.add_argument("--output", help="run directory (default: <output.root>/<output.name>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest intact checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and why")
    parser.add_argument("--plan", action="store_true", help="print the memory plan and exit")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar, logs only (also when stderr is not a terminal)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    # Intermixed: overrides may come before and after options (the app and scripts build argv freely).
    return parser.parse_intermixed_args(argv)


def rerunnable_yaml(cfg) -> str:
    """The run's config.yaml: re-runnable as `--config <run>/config.yaml`, so the name stays
    empty and a re-run gets a fresh one."""
    return to_yaml(dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name="")))


def setup_logging(log_file) -> None:
    """INFO to the console and the log; tracebacks (DEBUG) to the log only. Without a log
    file (a process other than the main): warnings and errors to the console, marked with
    its rank."""
    prefix = "" if log_file else f"[rank {os.environ.get('RANK')}] "
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", "%H:%M:%S")
    log.setLevel(logging.DEBUG)
    log.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.addFilter(lambda record: not getattr(record, "log_file_only", False))
    console.setLevel(logging.INFO if log_file else logging.WARNING)
    log.addHandler(console)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(fmt)
        log.addHandler(file_handler)
    log.propagate = False


# An error line longer than this is cut: whatever a message quotes, it stays readable.
MAX_MESSAGE_CHARS = 1_000


def one_line(err: BaseException) -> str:
    return shorten(" ".join(str(err).split()), MAX_MESSAGE_CHARS)


def _write_status_quietly(run: RunDir, **fields) -> None:
    """A final status that may not be writable (a full disk): the state is derived from the
    process's liveness anyway, so a failure here is logged, never raised over the real error."""
    try:
        run.write_status(**fields)
    except OSError as err:
        log.error("cannot write %s (%s); its state follows from the process having ended", run.status_path, err)


def run_training(launch: Launch, progress: bool = True) -> int:
    """Create (or reopen) the run, train, and map the outcome to an exit code."""
    from filelock import Timeout

    run = RunDir(launch.run_path)
    if not is_main_process():
        return _train_other_process(launch, run)
    run.create()
    lock = run.lock()
    try:
        lock.acquire()
    except Timeout:
        print(f"error: {run.path} is being trained by another process; wait for it or stop it", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _train_locked(launch, run, progress)
    finally:
        lock.release()


def _train_locked(launch: Launch, run: RunDir, progress: bool) -> int:
    from .console import hide_loading_bars
    from .export import loading_snippet
    from .rewards.base import NonFiniteReward
    from .trainer import StopRequested, Trainer, TrainingDiverged

    cfg = launch.cfg
    clean_temp_files(run.path)
    setup_logging(run.log_path)
    hide_loading_bars()
    if not launch.resume:
        run.write_config(rerunnable_yaml(cfg))
    start = {"iteration": 0} if not launch.resume else {}
    run.write_status(state=STARTING, iterations=cfg.train.iterations, name=run.path.name, error=None, **start)
    log.info("run directory %s (preset %s, algorithm %s, base model %s)", run.path, cfg.preset, cfg.algorithm,
             cfg.model.name_or_path)
    if launch.export_only:
        log.info("all %d iterations are done but the LoRA is missing or incomplete: exporting it from the last "
                 "checkpoint", cfg.train.iterations)
    # Before the model loads: a stop or a watcher's liveness check may come at any time.
    stop = StopRequested()
    stop.install()
    trainer = None
    try:
        with Heartbeat(run):
            trainer = Trainer(cfg, run, stop)
            if launch.resume:
                trainer.resume()
                run.write_config(rerunnable_yaml(cfg))  # the resume's overrides persist, once its checkpoint loaded
            run.write_status(state=RUNNING, iteration=trainer.iteration)
            state = trainer.fit(progress=progress)
    except KeyboardInterrupt:
        return _interrupted(run, trainer)
    except NonFiniteReward as err:
        return _failed(run, err, f"{one_line(err)}. {_what_is_kept(run)}; fix the reward, then resume with "
                                 f"--resume {run.path}")
    except TrainingDiverged as err:  # a resume would keep the checkpoint's optimizer, learning rate included
        return _failed(run, err, f"{one_line(err)}. Nothing of it was checkpointed or exported; start a new run "
                                 "with a lower train.lr")
    except Exception as err:  # the status must say failed, whatever broke
        return _failed(run, err, f"the run failed: {type(err).__name__}: {one_line(err)}")
    try:
        run.write_status(state=state, iteration=trainer.iteration)
    except OSError as err:
        return _failed(run, err, f"the run ended but its status cannot be written: {one_line(err)}")
    print(f"\nLoRA written to {run.lora_dir}\nLoad it with:\n\n{loading_snippet(cfg.model.name_or_path, run.lora_dir)}\n")
    if state == STOPPED:
        print(f"Resume with: python -m superflow_lite.train --resume {run.path}")
    return EXIT_OK


def _train_other_process(launch: Launch, run: RunDir) -> int:
    """A process other than the main under `accelerate launch`: it samples and trains its
    share of each iteration and leaves the run directory (lock, status, log, metrics,
    checkpoints, LoRA) to the main process; it only reads a resume's checkpoint. Its
    outcome is its exit code; the main process's status says the run's."""
    from .console import hide_loading_bars
    from .trainer import StopRequested, Trainer

    setup_logging(None)
    hide_loading_bars()
    stop = StopRequested()
    stop.install()
    try:
        trainer = Trainer(launch.cfg, run, stop)
        if launch.resume:
            trainer.resume()
        trainer.fit(progress=False)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:
        log.exception("the run failed: %s: %s", type(err).__name__, one_line(err))  # no log file: the traceback here
        return EXIT_RUN_FAILED
    return EXIT_OK


def _what_is_kept(run: RunDir) -> str:
    at = latest_checkpoint_iteration(run.path)
    return f"the last intact checkpoint is iteration {at}" if at is not None else "there is no checkpoint yet"


def _failed(run: RunDir, err: BaseException, message: str) -> int:
    _write_status_quietly(run, state=FAILED, error=f"{type(err).__name__}: {one_line(err)}")
    # The console gets the `error:` line below; a logged copy there would say it twice.
    log.error("%s", message, extra={"log_file_only": True})
    log.debug("traceback:\n%s", traceback.format_exc())
    print(f"error: {message} (details in {run.log_path})", file=sys.stderr)
    return EXIT_RUN_FAILED


def _interrupted(run: RunDir, trainer) -> int:
    """A second Ctrl-C: no checkpoint is written mid-iteration (its state would be half an
    update); say exactly what the last checkpoint keeps."""
    at = latest_checkpoint_iteration(run.path)
    reached = trainer.iteration if trainer is not None else 0
    if at is None:
        message = (f"interrupted at iteration {reached} before the first checkpoint: nothing is kept; "
                   f"--resume {run.path} starts it again from iteration 0")
        _write_status_quietly(run, state=FAILED, error="interrupted before the first checkpoint")
    else:
        lost = max(reached - at, 0)
        message = (f"interrupted at iteration {reached}: the last checkpoint is iteration {at} ({lost} iteration(s) "
                   f"lost, no LoRA exported); continue with --resume {run.path}")
        _write_status_quietly(run, state=STOPPED, iteration=at, interrupted=True)
    log.info("%s", message)
    print(f"error: {message}", file=sys.stderr)
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    from .console import filter_library_notices

    filter_library_notices()  # before the rewards' and models' imports say anything
    try:
        args = parse_args(argv)
        if args.help_config:
            from .config_docs import format_config_help

            print(format_config_help())
            return EXIT_OK
        if args.print_config or args.plan:
            cfg, _ = resolve(args)
            if args.print_config:
                print(to_yaml(cfg), end="")
            else:
                from .memory import format_plan

                print(format_plan(cfg))
            return EXIT_OK
        launch = gate(args)
    except (ConfigError, UsageError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # A bar redraws itself with carriage returns: in a file or a pipe each frame stays as a line.
    return run_training(launch, progress=not args.no_progress and sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())
