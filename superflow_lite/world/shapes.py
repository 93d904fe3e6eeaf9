"""Scenes of coloured shapes: the vocabulary, GenEval-style captions, layouts and a renderer.

A SceneSpec is what a caption asks for ("two red circles", "a blue square to the left of a
green triangle"); a layout places concrete shapes that satisfy it; `render` draws the
layout with PIL. The parser (parser.py) turns captions back into SceneSpecs and the reward
(reward.py) checks images against them, so every geometric convention lives here once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .constants import WORLD_RESOLUTION

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 200, 25),
}
COUNT_WORDS: dict[int, str] = {1: "a", 2: "two", 3: "three", 4: "four"}
MAX_COUNT = 4
# Relation of objects[0] to objects[1], and how a caption says it.
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}

# Geometry, in pixels at WORLD_RESOLUTION = 64. Objects 12-18 px wide keep four of them
# apart in the frame, and big enough that a 16x16 latent grid can draw them.
MIN_SIZE, MAX_SIZE = 12, 18
GAP = 4  # free pixels between objects, so same-coloured shapes never merge into one blob
BORDER = 2  # free pixels at the image border
# A relation holds when the centres differ by at least this much along its axis. Layouts
# use the larger margin so ground-truth scenes pass the reward's check with room to spare.
RELATION_MARGIN = 4.0
LAYOUT_RELATION_MARGIN = 12.0
BACKGROUND = (232, 232, 226)
SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges like a real image


@dataclass(frozen=True)
class ObjectSpec:
    """`count` shapes of one kind. colour None means any colour (caption omits it)."""

    shape: str
    colour: str | None
    count: int = 1


@dataclass(frozen=True)
class SceneSpec:
    """What a caption asks for. `relation` relates objects[0] to objects[1] (e.g. "left of")."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


@dataclass(frozen=True)
class PlacedShape:
    """One drawn shape: centre (cx, cy) and bounding-box side `size`, in pixels."""

    shape: str
    colour: tuple[int, int, int]
    colour_name: str
    cx: float
    cy: float
    size: float


def object_phrase(obj: ObjectSpec) -> str:
    noun = obj.shape if obj.count == 1 else obj.shape + "s"
    words = [COUNT_WORDS[obj.count]] + ([obj.colour] if obj.colour else []) + [noun]
    return " ".join(words)


def caption(spec: SceneSpec) -> str:
    """GenEval-style caption: "a photo of two red circles", "... a blue square above a red circle"."""
    if spec.relation is not None:
        a, b = spec.objects
        return f"a photo of {object_phrase(a)} {RELATION_PHRASES[spec.relation]} {object_phrase(b)}"
    return "a photo of " + " and ".join(object_phrase(o) for o in spec.objects)


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], margin: float) -> bool:
    """Whether centre a = (x, y) is `relation` of centre b; image y grows downwards."""
    (ax, ay), (bx, by) = a, b
    if relation == "left of":
        return ax + margin <= bx
    if relation == "right of":
        return ax >= bx + margin
    if relation == "above":
        return ay + margin <= by
    if relation == "below":
        return ay >= by + margin
    raise ValueError(f"unknown relation {relation!r}; known: {sorted(RELATION_PHRASES)}")


def _overlaps(a: PlacedShape, b: PlacedShape) -> bool:
    reach = (a.size + b.size) / 2 + GAP
    return abs(a.cx - b.cx) < reach and abs(a.cy - b.cy) < reach


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.randint(-15, 15), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _instances(spec: SceneSpec, rng: random.Random) -> list[tuple[str, str]]:
    """(shape, colour name) for every shape to draw; objects[0]'s first instance comes first."""
    out = []
    for obj in spec.objects:
        colour = obj.colour or rng.choice(list(COLOURS))
        out += [(obj.shape, colour)] * obj.count
    return out


def _place_one(
    shape: str, colour_name: str, placed: list[PlacedShape], rng: random.Random, resolution: int, tries: int
) -> PlacedShape | None:
    scale = resolution / WORLD_RESOLUTION
    for _ in range(tries):
        size = rng.uniform(MIN_SIZE, MAX_SIZE) * scale
        lo, hi = size / 2 + BORDER * scale, resolution - size / 2 - BORDER * scale
        cand = PlacedShape(shape, _jitter_colour(COLOURS[colour_name], rng), colour_name,
                           rng.uniform(lo, hi), rng.uniform(lo, hi), size)
        if not any(_overlaps(cand, p) for p in placed):
            return cand
    return None


def sample_layout(
    spec: SceneSpec, rng: random.Random, resolution: int = WORLD_RESOLUTION, tries: int = 100
) -> list[PlacedShape]:
    """Random non-overlapping placement of the spec's shapes, satisfying its relation.

    Shapes are placed one at a time (each with up to 50 random positions); a layout that
    gets stuck, or breaks the relation, is thrown away whole and redrawn.
    """
    instances = _instances(spec, rng)
    b_index = spec.objects[0].count if spec.relation else None  # first instance of objects[1]
    margin = LAYOUT_RELATION_MARGIN * resolution / WORLD_RESOLUTION
    for _ in range(tries):
        placed: list[PlacedShape] = []
        for shape, colour_name in instances:
            cand = _place_one(shape, colour_name, placed, rng, resolution, tries=50)
            if cand is None:
                break
            placed.append(cand)
        if len(placed) != len(instances):
            continue
        if b_index is not None:
            a, b = placed[0], placed[b_index]
            if not relation_holds(spec.relation, (a.cx, a.cy), (b.cx, b.cy), margin):  # type: ignore[arg-type]
                continue
        return placed
    raise RuntimeError(f"could not place {caption(spec)!r} in {tries} tries")


def shape_polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]]:
    """Outline of a square or upright triangle inside the size x size box centred on (cx, cy)."""
    h = size / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    raise ValueError(f"{shape!r} is not a polygon")


def render(
    shapes: list[PlacedShape],
    resolution: int = WORLD_RESOLUTION,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    big = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    for s in shapes:
        cx, cy, size = s.cx * SUPERSAMPLE, s.cy * SUPERSAMPLE, s.size * SUPERSAMPLE
        if s.shape == "circle":
            draw.ellipse([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=s.colour)
        else:
            draw.polygon(shape_polygon(s.shape, cx, cy, size), fill=s.colour)
    return canvas.resize((resolution, resolution), Image.BOX)


def render_scene(spec: SceneSpec, seed: int, resolution: int = WORLD_RESOLUTION) -> Image.Image:
    """A random ground-truth image of `spec` (deterministic in `seed`)."""
    # One background colour: every bit of variety costs the tiny model training steps,
    # and a varying background taught nothing the reward checks.
    return render(sample_layout(spec, random.Random(seed), resolution), resolution)
