"""The "shapes" reward: a programmatic GenEval for the shapes world.

The prompt is parsed into constraints (parser.py), the image into detected blobs
(detect.py); the two are matched and scored:
  objects  = sum_i sim(target_i, matched detection) / max(#targets, #detections)
             sim = 0.5 [colour right] + 0.5 [shape right]; dividing by the larger count
             charges both missing objects (counts too low) and extra ones (too high).
  position = 1 if objects[0]'s match is `relation` of objects[1]'s, else 0.
  score    = objects, or (2 * objects + position) / 3 for position prompts.
  strict   = 1 iff every target is matched exactly, nothing extra is drawn and the relation
             holds: GenEval's all-or-nothing accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..rewards.base import Reward, RewardOutput
from .detect import Detection, detect_shapes
from .parser import CaptionError, parse_caption
from .shapes import RELATION_MARGIN, SceneSpec, relation_holds

POSITION_WEIGHT = 1.0 / 3.0  # position prompts: a third of the score is the relation


@dataclass(frozen=True)
class Target:
    shape: str
    colour: str | None  # None: any colour


@dataclass(frozen=True)
class ImageScore:
    score: float
    strict: bool
    objects: float
    position: float | None


def expand_targets(spec: SceneSpec) -> list[Target]:
    """One Target per object instance; objects[0]'s come first."""
    return [Target(o.shape, o.colour) for o in spec.objects for _ in range(o.count)]


def similarity(target: Target, det: Detection) -> float:
    colour_ok = target.colour is None or target.colour == det.colour
    return 0.5 * colour_ok + 0.5 * (target.shape == det.shape)


def match(targets: list[Target], dets: list[Detection]) -> dict[int, tuple[int, float]]:
    """Greedy best-first matching: target index -> (detection index, similarity).

    Similarities are 0, 0.5 or 1, so taking exact matches before partial ones (larger
    blobs first within a tie) is what an optimal assignment would do in all but contrived
    cases, at a fraction of the code.
    """
    pairs = sorted(
        ((similarity(t, d), -j, i, j) for i, t in enumerate(targets) for j, d in enumerate(dets)),
        reverse=True,
    )
    assigned: dict[int, tuple[int, float]] = {}
    used: set[int] = set()
    for sim, _, i, j in pairs:
        if sim > 0 and i not in assigned and j not in used:
            assigned[i] = (j, sim)
            used.add(j)
    return assigned


def score_detections(spec: SceneSpec, dets: list[Detection]) -> ImageScore:
    targets = expand_targets(spec)
    assigned = match(targets, dets)
    objects = sum(sim for _, sim in assigned.values()) / max(len(targets), len(dets))
    exact = len(dets) == len(targets) and all(
        i in assigned and assigned[i][1] == 1.0 for i in range(len(targets))
    )
    if spec.relation is None:
        return ImageScore(objects, exact, objects, None)
    a_index, b_index = 0, spec.objects[0].count
    position = 0.0
    if a_index in assigned and b_index in assigned:
        a, b = dets[assigned[a_index][0]], dets[assigned[b_index][0]]
        position = float(relation_holds(spec.relation, (a.cx, a.cy), (b.cx, b.cy), RELATION_MARGIN))
    score = (1 - POSITION_WEIGHT) * objects + POSITION_WEIGHT * position
    return ImageScore(score, exact and position == 1.0, objects, position)


def score_image(image: Image.Image, prompt: str) -> ImageScore:
    """Score one image against its world caption (raises CaptionError for other prompts)."""
    return score_detections(parse_caption(prompt), detect_shapes(image))


class ShapesReward(Reward):
    """GenEval-style compositional reward for the built-in shapes world; scores in [0, 1].

    extras["strict"]: 0/1 GenEval accuracy (every constraint satisfied exactly).
    """

    name = "shapes"
    low, high = 0.0, 1.0

    def prompt_problem(self, prompt: str) -> str | None:
        try:
            parse_caption(prompt)
        except CaptionError as err:
            return str(err)
        return None

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        results = [score_image(img, p) for img, p in zip(images, prompts)]
        return RewardOutput(
            scores=np.array([r.score for r in results], dtype=np.float32),
            extras={"strict": np.array([r.strict for r in results], dtype=np.float32)},
        )
