"""Resumable training state: one file per checkpoint, written atomically, with its sha256.

A checkpoint holds: the LoRA weights, the optimizer, the EMA, the group sampler
(trackers + its RNG), the global RNG states and the iteration it was taken after. Names,
checksums and "which one is intact" are the run contract's (rundir.py).

Why not accelerate's save_state/load_state: it writes a folder of files straight into
place (no atomic replace, so a kill mid-write leaves a half checkpoint that looks whole),
saves the whole wrapped model rather than the LoRA, and the group sampler and the EMA
would still need registering; one torch.save of the few small pieces we need is simpler,
atomic and checksummed.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .rundir import (CHECKPOINTS_DIR, atomic_write, atomic_write_text, checkpoint_iteration, checkpoint_name, checksum_path,
                     file_sha256, intact_checkpoints, list_checkpoints)

log = logging.getLogger("superflow_lite")


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


def save_checkpoint(run_path: Path, iteration: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Save `state` as checkpoints/ckpt-<iteration>.pt (atomically, then its checksum), and
    prune all but the newest `keep` intact ones (the older one is the fallback)."""
    directory = Path(run_path) / CHECKPOINTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / checkpoint_name(iteration)
    digest = {}

    def write(tmp: Path) -> None:
        torch.save({**state, "iteration": iteration}, tmp)
        digest["sha256"] = file_sha256(tmp)

    # The checksum goes first: a crash between the two leaves a checkpoint that fails its
    # check (and is skipped), never an unchecked one that looks intact.
    checksum_path(path).unlink(missing_ok=True)
    atomic_write(path, write)
    atomic_write_text(checksum_path(path), digest["sha256"] + "\n")
    intact = intact_checkpoints(run_path)
    for old in list_checkpoints(run_path):
        if old not in intact[:keep]:
            old.unlink(missing_ok=True)
            checksum_path(old).unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: the state holds numpy RNG tuples and plain Python containers we wrote.
    return torch.load(path, map_location="cpu", weights_only=False)


def load_latest_intact(run_path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that is whole and loads; newer broken ones are skipped with a
    warning (a kill or a full disk mid-write, a truncated copy). None when there is none."""
    intact = intact_checkpoints(run_path)
    for path in list_checkpoints(run_path):
        if path not in intact:
            log.warning("checkpoint %s is damaged (checksum mismatch); falling back to an older one", path.name)
            continue
        try:
            state = load_checkpoint(path)
        except Exception as err:  # a truncated zip, a pickle error: unreadable either way
            log.warning("checkpoint %s does not load (%s: %s); falling back to an older one",
                        path.name, type(err).__name__, err)
            continue
        if state.get("iteration") != checkpoint_iteration(path):
            log.warning("checkpoint %s holds iteration %s; skipping it", path.name, state.get("iteration"))
            continue
        return path, state
    return None
