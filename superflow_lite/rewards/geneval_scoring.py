"""GenEval scoring from detections: counts, colours and relative positions.

Pure functions over boxes and pixels, so the rules are testable without a detector.
Rules follow GenEval's evaluator (Ghosh et al. 2023), written anew:
  - count:    at least `count` detections of the class; exclude (name, n): fewer than n;
  - colour:   at least `count` of the class's top detections have the asked colour;
  - position: every counted subject box stands in `relation` to every box of the
              reference group, with GenEval's 0.1 x (sum of box sizes) dead zone.
Strict accuracy = every check passes (GenEval's metric). Partial credit = the fraction of
checks that pass, a denser training signal (a failed prerequisite fails its dependants).

Colours: GenEval classifies a masked crop with CLIP; we classify the central half of the
box by pixel hue/saturation/value, which needs no second model. Documented heuristic.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .geneval_spec import TaskSpec

POSITION_DEAD_ZONE = 0.1  # GenEval's threshold, as a fraction of the two boxes' summed sizes


@dataclass(frozen=True)
class Detection:
    name: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


@dataclass(frozen=True)
class Verdict:
    partial: float  # fraction of checks passed, in [0, 1]
    strict: bool  # all checks passed
    failures: tuple[str, ...]  # human-readable reasons, for logs and tests


def pixel_color(h: float, s: float, v: float) -> str:
    """One of GenEval's 10 colour names, or 'gray' (which never matches), for HSV in [0, 1]."""
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.75 else ("black" if v < 0.35 else "gray")
    hue = h * 360.0
    if hue < 15 or hue >= 345:
        if s < 0.55 and v > 0.7:
            return "pink"
        return "brown" if v < 0.55 else "red"
    if hue < 40:
        return "brown" if v < 0.65 else "orange"
    if hue < 70:
        return "yellow"
    if hue < 165:
        return "green"
    if hue < 260:
        return "blue"
    if hue < 315:  # magenta (300) reads as purple; hot pink (330) as pink
        return "purple"
    return "pink"


def box_color(image: Image.Image, box: tuple[float, float, float, float]) -> str:
    """Majority colour of the box's central half (the edges are mostly background)."""
    x0, y0, x1, y1 = box
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 4, 1), max((y1 - y0) / 4, 1)
    crop = image.convert("RGB").crop((int(cx - hw), int(cy - hh), int(cx + hw) + 1, int(cy + hh) + 1))
    # 32x32 is plenty for a vote and bounds the Python loop below.
    pixels = np.asarray(crop.resize((32, 32), Image.NEAREST), dtype=np.float32).reshape(-1, 3) / 255.0
    votes: dict[str, int] = {}
    for r, g, b in pixels:
        name = pixel_color(*colorsys.rgb_to_hsv(r, g, b))
        votes[name] = votes.get(name, 0) + 1
    return max(votes, key=votes.__getitem__)


def relations(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> set[str]:
    """Where box a stands relative to box b: a subset of {left of, right of, above, below}."""
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    size_sum = (a[2:] - a[:2]) + (b[2:] - b[:2])
    # Shrink the offset by the dead zone, so boxes that overlap a lot relate no way.
    revised = np.maximum(np.abs(offset) - POSITION_DEAD_ZONE * size_sum, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:  # image y grows downwards
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def _of_class(detections: list[Detection], name: str) -> list[Detection]:
    return sorted((d for d in detections if d.name == name), key=lambda d: -d.score)


def evaluate(spec: TaskSpec, detections: list[Detection], image: Image.Image) -> Verdict:
    """Check an image's detections (already thresholded and de-duplicated) against a spec."""
    checks: list[bool] = []
    failures: list[str] = []

    def check(ok: bool, reason: str) -> None:
        checks.append(ok)
        if not ok:
            failures.append(reason)

    groups: list[list[Detection]] = []
    for req in spec.include:
        found = _of_class(detections, req.name)
        counted = found[: req.count]
        groups.append(counted)
        check(len(found) >= req.count, f"expected {req.count} {req.name}, found {len(found)}")
        if req.color is not None:
            colors = [box_color(image, d.box) for d in counted]
            ok = len(counted) == req.count and colors.count(req.color) >= req.count
            check(ok, f"expected {req.color} {req.name}, saw {colors or 'none'}")
        if req.relation is not None and req.ref is not None:
            refs = groups[req.ref] if req.ref < len(groups) else []
            ok = bool(counted) and bool(refs) and all(
                req.relation in relations(d.box, r.box) for d in counted for r in refs
            )
            check(ok, f"expected {req.name} {req.relation} {spec.include[req.ref].name}")
    for name, limit in spec.exclude:
        n = len(_of_class(detections, name))
        check(n < limit, f"expected fewer than {limit} {name}, found {n}")
    passed = sum(checks)
    return Verdict(passed / len(checks), passed == len(checks), tuple(failures))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Greedy per-class NMS: an open-vocabulary detector fires several boxes per object,
    and counting needs one."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(k.name != det.name or iou(k.box, det.box) <= iou_threshold for k in kept):
            kept.append(det)
    return kept
