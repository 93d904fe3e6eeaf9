"""The reward interface every scorer implements.

A reward is a batched callable: PIL images, their prompts and per-sample metadata in,
one float per image out. Each reward declares the range its scores live in, so that
SuperFlow's Beta trackers can map them to [0, 1] (ALGORITHM.md section 3).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image


class RewardUnavailable(RuntimeError):
    """A reward cannot load: the message says what to install or download."""


class NonFiniteReward(RuntimeError):
    """A reward returned NaN or an infinite score: training on it would poison the LoRA,
    so the run stops here, before the scores reach the advantages or a checkpoint."""


def check_finite_scores(name: str, scores: np.ndarray, prompts: Sequence[str]) -> None:
    """Raise NonFiniteReward naming the reward, how many scores were bad and one prompt."""
    bad = ~np.isfinite(np.asarray(scores, dtype=np.float64))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise NonFiniteReward(
            f"reward {name!r} returned {int(bad.sum())} non-finite score(s) ({scores[first]!r}) in a batch of "
            f"{len(bad)}, e.g. for prompt {prompts[first]!r}"
        )


@dataclass
class RewardOutput:
    """scores: float32 [B] inside the reward's declared range.
    extras: named float32 [B] side metrics (e.g. "strict" 0/1 accuracy), logged not trained on."""

    scores: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Reward(ABC):
    """Base class. Subclasses set name/low/high and implement `score`.

    Heavy models load lazily in `load()` (called by the first `__call__`), so building a
    reward from a config is cheap and a missing dependency surfaces as RewardUnavailable
    with an actionable message.
    """

    name: str = "reward"
    low: float = 0.0
    high: float = 1.0
    device: str = "cpu"

    def __init__(self, device: str = "cpu", **options: Any):
        self.device = device
        self.options = options
        self._loaded = False

    def load(self) -> None:
        """Load models/weights. Default: nothing to load."""

    def needed_models(self) -> list:
        """The models load() will fetch (hub.Needed), so the launch gate can find a missing
        one in a second instead of after the base model loaded. Default: none."""
        return []

    def prompt_problem(self, prompt: str) -> str | None:
        """Why this reward cannot score `prompt` (None: it can). The launch gate asks it of
        every prompt before a run starts, so a prompt it cannot read fails in a second, not
        at the first batch. Default: any prompt."""
        return None

    def ensure_loaded(self) -> None:
        """Run `load()` once; a server or a warm-up step calls it to fail before the first batch."""
        if not self._loaded:
            self.load()
            self._loaded = True

    @abstractmethod
    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        """Score a batch; scores must lie in [low, high]."""

    def __call__(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        metadata: Sequence[dict] | None = None,
    ) -> RewardOutput:
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: got {len(images)} images but {len(prompts)} prompts")
        self.ensure_loaded()
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        out = self.score(images, prompts, metadata)
        out.scores = np.asarray(out.scores, dtype=np.float32).reshape(len(images))
        check_finite_scores(self.name, out.scores, prompts)
        return out

    def to_unit(self, scores: np.ndarray) -> np.ndarray:
        """Map scores from [low, high] to [0, 1] (clipped), for the value trackers."""
        span = self.high - self.low
        return np.clip((np.asarray(scores, dtype=np.float32) - self.low) / span, 0.0, 1.0)
