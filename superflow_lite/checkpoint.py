"""Resumable training state, written atomically (write to a temp file, then rename).

A checkpoint holds: the LoRA weights, the optimizer, the EMA, the group sampler
(trackers + its RNG), the global RNG states and the iteration it was taken after.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "latest.txt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, iteration: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` as ckpt-<iteration>.pt atomically, point latest.txt at it, prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ckpt-{iteration:06d}.pt"
    tmp = directory / f".{path.name}.tmp"
    torch.save({**state, "iteration": iteration}, tmp)
    os.replace(tmp, path)
    latest_tmp = directory / f".{LATEST}.tmp"
    latest_tmp.write_text(path.name)
    os.replace(latest_tmp, directory / LATEST)
    for old in sorted(directory.glob("ckpt-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if pointer.is_file():
        path = directory / pointer.read_text().strip()
        if path.is_file():
            return path
    found = sorted(directory.glob("ckpt-*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: the state holds numpy RNG tuples and plain Python containers we wrote.
    return torch.load(path, map_location="cpu", weights_only=False)
