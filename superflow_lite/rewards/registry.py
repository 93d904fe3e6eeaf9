"""Name -> reward class, and weighted sums of several rewards.

The registry lists the built-in reward classes; each class carries its own name (the
`name` attribute of base.Reward), so a reward module needs base.py and nothing of this one.
"""
from __future__ import annotations

import inspect
import math
import numbers
import typing
from typing import Sequence

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput


def builtin_rewards() -> dict[str, type[Reward]]:
    """Name -> class of every built-in reward. Their modules load on the first call; none of
    them imports torch, transformers or an OCR engine at module level (Reward.load() does)."""
    from ..world.reward import ShapesReward
    from . import aesthetic, clip_rewards, geneval, jpeg, ocr, remote

    classes = (aesthetic.AestheticReward, clip_rewards.PickScore, clip_rewards.ClipScore, clip_rewards.HpsV2,
               geneval.GenEvalReward, jpeg.JpegCompressibility, jpeg.JpegIncompressibility, ocr.OcrReward,
               remote.RemoteReward, ShapesReward)
    return {cls.name: cls for cls in classes}


def available_rewards() -> list[str]:
    return sorted(builtin_rewards())


class WeightedSum(Reward):
    """sum_k w_k * r_k. Its range is the weighted sum of the parts' ranges."""

    name = "weighted_sum"

    def __init__(self, parts: Sequence[tuple[Reward, float]]):
        super().__init__(device=parts[0][0].device)
        self.parts = list(parts)
        self.low = float(sum(w * (r.low if w >= 0 else r.high) for r, w in self.parts))
        self.high = float(sum(w * (r.high if w >= 0 else r.low) for r, w in self.parts))
        self.name = "+".join(f"{w:g}*{r.name}" for r, w in self.parts)

    def needed_models(self) -> list:
        return [n for r, _ in self.parts for n in r.needed_models()]

    def prompt_problem(self, prompt: str) -> str | None:
        return next((p for r, _ in self.parts if (p := r.prompt_problem(prompt))), None)

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str], metadata) -> RewardOutput:
        total = np.zeros(len(images), dtype=np.float32)
        extras: dict[str, np.ndarray] = {}
        for reward, weight in self.parts:
            out = reward(images, prompts, metadata)
            total += weight * out.scores
            extras[reward.name] = out.scores
            extras.update({f"{reward.name}/{k}": v for k, v in out.extras.items()})
        return RewardOutput(total, extras)


def _check_weights(weights: dict[str, float], registry: dict[str, type[Reward]]) -> None:
    """Raise ValueError naming the bad entry and what is accepted."""
    valid = ", ".join(sorted(registry))
    if not isinstance(weights, dict) or not weights:
        raise ValueError(
            f"reward.weights must be a non-empty mapping name -> weight, e.g. {{shapes: 1.0}}; "
            f"got {weights!r}. Available rewards: {valid}"
        )
    for name, weight in weights.items():
        if name not in registry:
            raise ValueError(f"unknown reward {name!r}; available: {valid}")
        # bool is a numbers.Number too, and `ocr: true` is a YAML slip, not a weight.
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            raise ValueError(
                f"reward weight for {name!r} must be a number (e.g. 1.0), got {weight!r}"
            )
        if not np.isfinite(weight) or weight == 0:
            raise ValueError(
                f"reward weight for {name!r} must be a non-zero finite number, got {weight!r}; "
                f"to drop a reward, remove its name from reward.weights"
            )


def _construct(cls: type[Reward], device: str, opts: dict) -> Reward:
    """Instantiate one reward; a misspelt option names the options the reward takes."""
    name = cls.name
    params = inspect.signature(cls.__init__).parameters
    # Reward.__init__'s own **options is the base's catch-all, not options this reward reads.
    takes_any = cls.__init__ is not Reward.__init__ and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p not in ("self", "device", "options")]
    unknown = [k for k in opts if k not in valid]
    if unknown and not takes_any:
        raise ValueError(
            f"reward.options.{name}: unknown option {unknown[0]!r}; valid: {', '.join(valid) or '(none)'}"
        )
    _check_option_types(cls, name, opts)
    reward = cls(device=device, **opts)
    _check_range(name, reward)
    return reward


def _check_range(name: str, reward: Reward) -> None:
    """The declared range is finite and not empty: scores are mapped onto it (to_unit) for the
    trackers and the advantages, so low == high or NaN would poison every iteration."""
    low, high = reward.low, reward.high
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        origin = getattr(reward, "range_origin", None) or f"reward.options.{name}.low and .high"
        raise ValueError(f"reward {name!r} declares the range [{low:g}, {high:g}] (from {origin}): it must be "
                         "finite with low < high, since scores are mapped onto it; fix it there")


def _check_option_types(cls: type[Reward], name: str, opts: dict) -> None:
    """Each option against the annotation of the reward's keyword: a wrong type (url: 8000)
    is one message naming the key and the type, not a traceback from inside the reward."""
    from ..config import ConfigError, check_type

    hints = typing.get_type_hints(cls.__init__)
    for key, value in opts.items():
        if key in hints and hints[key] is not typing.Any:
            try:
                check_type(value, hints[key], f"reward.options.{name}.{key}")
            except ConfigError as err:
                raise TypeError(str(err)) from None


def build_reward(
    weights: dict[str, float], device: str = "cpu", options: dict[str, dict] | None = None
) -> Reward:
    """Build one reward, or a weighted sum when several names are given.

    weights: {"shapes": 1.0} or {"ocr": 0.7, "jpeg_compressibility": 0.3}
    options: per-reward keyword arguments, e.g. {"remote": {"url": "http://..."}}
    """
    registry = builtin_rewards()
    options = options or {}
    _check_weights(weights, registry)
    parts = [(_construct(registry[n], device, options.get(n) or {}), float(w)) for n, w in weights.items()]
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return WeightedSum(parts)
