"""The CLI: python -m superflow_lite.train [--preset P] [--config FILE] [key=value ...]

Examples:
    python -m superflow_lite.train                                   # tiny world on a CPU, else auto
    python -m superflow_lite.train --preset 24gb train.lr=1e-4 reward.weights='{ocr: 1.0}'
    python -m superflow_lite.train --resume runs/my-run train.iterations=40
    python -m superflow_lite.train --preset 24gb --print-config       # resolved YAML, then exit
    python -m superflow_lite.train --preset 24gb --plan              # memory plan, then exit
Exit codes: 0 done or stopped, 1 the run failed, 2 bad input (message says what to fix).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import traceback
from pathlib import Path

import yaml

from .config import Config, ConfigError, build_config, config_from_dict, parse_override, _merge_into, _nest, to_yaml, validate

log = logging.getLogger("superflow_lite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m superflow_lite.train",
        description="SuperFlow GRPO fine-tuning of flow-matching text-to-image models with LoRA.",
    )
    parser.add_argument("--preset", default="auto", help="tiny, 12gb, 16gb, 24gb, 48gb, 80gb or auto (default)")
    parser.add_argument("--config", help="a YAML file overlaid on the preset")
    parser.add_argument("--output", help="run directory (default: <output.root>/<output.name>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--plan", action="store_true", help="print the memory plan and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    # Intermixed: overrides may come before and after options (the app and scripts build argv freely).
    return parser.parse_intermixed_args(argv)


class UsageError(Exception):
    """Bad input that is not a config value: paths, runs, machine."""


def resolve(args: argparse.Namespace) -> tuple[Config, Path]:
    """The config and the run directory this invocation means."""
    if args.resume:
        run_path = Path(args.resume)
        config_file = run_path / "config.yaml"
        if not config_file.is_file():
            raise UsageError(f"--resume {args.resume!r}: no config.yaml there; give a run directory such as runs/<name>")
        if args.config or args.preset != "auto":
            raise UsageError("--resume takes the run's own config.yaml; pass changes as key=value overrides instead")
        cfg = config_from_dict(yaml.safe_load(config_file.read_text()))
        for text in args.overrides:
            path, value = parse_override(text)
            _merge_into(cfg, _nest(path, value))
        validate(cfg)
        return cfg, run_path
    cfg = build_config(args.preset, args.config, args.overrides)
    if not cfg.output.name:
        cfg.output.name = f"{cfg.preset}-{cfg.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_path = Path(args.output) if args.output else Path(cfg.output.root) / cfg.output.name
    if (run_path / "checkpoints").is_dir() and any((run_path / "checkpoints").iterdir()):
        raise UsageError(
            f"{str(run_path)!r} already holds a run; resume it with --resume {run_path} or choose another --output"
        )
    return cfg, run_path


def check_machine(cfg: Config) -> None:
    import torch

    wants_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and cfg.preset != "tiny")
    if wants_gpu and not torch.cuda.is_available():
        raise UsageError(
            f"preset {cfg.preset!r} targets a CUDA GPU and none is visible; on a CPU use --preset tiny "
            "(the built-in shapes world)"
        )
    from .models import ModelUnavailable, bitsandbytes_needs, require_bitsandbytes

    needs = bitsandbytes_needs(cfg.model) + (["train.optimizer=adamw8bit"] if cfg.train.optimizer == "adamw8bit" else [])
    for need in needs:
        try:
            require_bitsandbytes(need)
        except ModelUnavailable as err:
            raise UsageError(str(err)) from None


def check_references(cfg: Config) -> None:
    """Names and files the config points at: rewards, prompt sets. Fails before any run dir is made."""
    from .prompts import load_prompts
    from .rewards.registry import available_rewards

    names = available_rewards()
    for name in cfg.reward.weights:
        if name not in names:
            raise ConfigError(f"unknown reward {name!r} in reward.weights; available: {', '.join(names)}")
    load_prompts(cfg.prompts)
    from .tracking import require_tracker

    require_tracker(cfg.output.report_to)


def setup_logging(log_file: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    log.setLevel(logging.INFO)
    log.handlers.clear()
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(fmt)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(file_handler)
    log.addHandler(console)
    log.propagate = False


def run_training(cfg: Config, run_path: Path, resume: bool, progress: bool = True) -> int:
    from .console import hide_loading_bars
    from .export import loading_snippet
    from .rundir import Heartbeat, RunDir
    from .trainer import StopRequested, Trainer

    run = RunDir(run_path)
    run.create()
    setup_logging(run.log_path)
    hide_loading_bars()
    if not resume:
        # Re-runnable as `--config <run>/config.yaml`: the name stays empty, so a re-run gets a fresh one.
        run.config_path.write_text(to_yaml(dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name=""))))
    run.write_status(state="starting", iteration=0, iterations=cfg.train.iterations, name=run_path.name)
    log.info("run directory %s (preset %s, algorithm %s, base model %s)", run_path, cfg.preset, cfg.algorithm, cfg.model.name_or_path)
    # Before the model loads: a stop or a watcher's liveness check may come at any time.
    stop = StopRequested()
    stop.install()
    try:
        with Heartbeat(run):
            trainer = Trainer(cfg, run, stop)
            if resume:
                trainer.resume()
            run.write_status(state="running", iteration=trainer.iteration)
            state = trainer.fit(progress=progress)
    except KeyboardInterrupt:
        run.write_status(state="stopped")
        log.info("interrupted; the last checkpoint is in %s", run.checkpoints_dir)
        return 130
    except Exception as err:  # the status must say failed, whatever broke
        run.write_status(state="failed", error=f"{type(err).__name__}: {err}")
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        raise
    run.write_status(state=state, iteration=trainer.iteration)
    print(f"\nLoad the LoRA with:\n\n{loading_snippet(cfg.model.name_or_path, run.lora_dir)}\n")
    if state == "stopped":
        print(f"Resume with: python -m superflow_lite.train --resume {run_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .console import filter_library_notices

    filter_library_notices()  # before the rewards' and models' imports say anything
    args = parse_args(argv)
    try:
        cfg, run_path = resolve(args)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        if args.plan:
            from .memory import format_plan

            print(format_plan(cfg))
            return 0
        check_machine(cfg)
        check_references(cfg)
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .models import ModelUnavailable
    from .rewards.base import RewardUnavailable

    try:
        return run_training(cfg, run_path, resume=bool(args.resume), progress=not args.no_progress)
    except (ConfigError, ModelUnavailable, RewardUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        print(f"error: the run failed: {type(err).__name__}: {err} (details in {run_path / 'train.log'})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
