"""Runs in the trackers people already use (output.report_to), through accelerate's own
integration: the Accelerator is built with log_with=..., and every metrics.jsonl row and
every evaluation's images go to it.

    tensorboard --logdir runs          # each run logs under runs/<name>/tensorboard/
    output.report_to=wandb             # WANDB_MODE=offline works without an account
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from .config import ConfigError

PROJECT = "superflow_lite"
# report_to -> the package accelerate needs for it.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def require_tracker(report_to: str) -> None:
    """Fail before a run directory exists when the tracker's package is missing."""
    package = TRACKER_PACKAGES.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"output.report_to={report_to} needs the {package} package: pip install {package}")


def accelerator_kwargs(report_to: str, run_path: Path) -> dict:
    """Accelerator(...) arguments: tensorboard writes under <run>/tensorboard (see init)."""
    if report_to == "none":
        return {}
    return {"log_with": report_to, "project_dir": str(run_path)}


def init(accelerator, report_to: str, run_path: Path, config: dict) -> None:
    """Start the tracker with the resolved config as its hyper-parameters."""
    if report_to == "none":
        return
    init_kwargs = {"wandb": {"name": run_path.name, "dir": str(run_path)}} if report_to == "wandb" else {}
    # tensorboard: the project name is the folder under project_dir; wandb: the project.
    name = "tensorboard" if report_to == "tensorboard" else PROJECT
    accelerator.init_trackers(name, config=hparams(config), init_kwargs=init_kwargs)


def hparams(config: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """The nested config flattened to the scalar types trackers store (lists as text)."""
    flat: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(hparams(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def scalars(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row (histograms and counts of groups are left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "iteration" and math.isfinite(v)}


def log_row(accelerator, report_to: str, row: dict, step: int) -> None:
    if report_to != "none":
        accelerator.log(scalars(row), step=step)


def log_samples(accelerator, report_to: str, samples_dir: Path, step: int) -> None:
    """An evaluation's images (samples/<step>/*.png, in index order) as one image set."""
    if report_to == "none":
        return
    import json

    from PIL import Image

    index = json.loads((samples_dir / "index.json").read_text())
    images = np.stack([np.asarray(Image.open(samples_dir / r["file"]).convert("RGB")) for r in index])
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"eval/samples": images}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({"eval/samples": list(images)}, step=step)


def finish(accelerator, report_to: str) -> None:
    if report_to != "none":
        accelerator.end_training()
