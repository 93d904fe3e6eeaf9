"""The shapes world's parser and reward: ground-truth renders score ~1, each kind of
mistake (count, colour, shape, position, extra object) costs score and strict accuracy."""
from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from superflow_lite.world.parser import CaptionError, parse_caption
from superflow_lite.world import prompts as world_prompts
from superflow_lite.world.prompts import CATEGORIES, prompt_category, prompt_difficulty, specs_by_category
from superflow_lite.world.reward import ShapesReward, score_image
from superflow_lite.world.shapes import (
    COLOURS,
    ObjectSpec,
    PlacedShape,
    SceneSpec,
    caption,
    render,
    render_scene,
)


def _place(shape: str, colour: str, cx: float, cy: float, size: float = 16) -> PlacedShape:
    return PlacedShape(shape, COLOURS[colour], colour, cx, cy, size)


def test_parser_inverts_every_template():
    for category, specs in specs_by_category().items():
        for spec in specs:
            assert parse_caption(caption(spec)) == spec, caption(spec)


def test_parser_accepts_variants_and_rejects_others():
    assert parse_caption("An image of one RED circle.") == SceneSpec((ObjectSpec("circle", "red", 1),))
    assert parse_caption("two squares") == SceneSpec((ObjectSpec("square", None, 2),))
    left = parse_caption("a red circle left of a blue square")
    assert left.relation == "left of" and left.objects[1] == ObjectSpec("square", "blue")
    for bad in ("a photo of a cat", "a photo of two red circle", "five red circles", ""):
        with pytest.raises(CaptionError):
            parse_caption(bad)


def test_split_is_fixed_balanced_and_held_out():
    train, test = world_prompts.train_prompts(), world_prompts.test_prompts()
    assert train == world_prompts.train_prompts() and test == world_prompts.test_prompts()
    assert len(test) == 72 and len(train) == 648
    cats = [prompt_category(p) for p in test]
    assert {c: cats.count(c) for c in CATEGORIES} == {"single": 12, "counting": 12, "binding": 24, "position": 24}
    shared = set(train) & set(test)
    assert all(prompt_category(p) == "single" for p in shared)
    assert prompt_difficulty("a photo of a red circle") == "easy"
    assert prompt_difficulty("a photo of two red circles") == "hard"


def test_ground_truth_renders_score_high_and_mismatches_low():
    rng = random.Random(0)
    prompts = rng.sample(world_prompts.train_prompts(), 60) + world_prompts.test_prompts()
    images = [render_scene(parse_caption(p), seed=i) for i, p in enumerate(prompts)]
    reward = ShapesReward()
    right = reward(images, prompts)
    assert right.scores.mean() >= 0.95
    assert right.extras["strict"].mean() >= 0.95
    assert right.scores.dtype == np.float32 and ((right.scores >= 0) & (right.scores <= 1)).all()
    wrong = reward(images, prompts[1:] + prompts[:1])
    assert wrong.scores.mean() < 0.5
    assert wrong.extras["strict"].mean() < 0.1


def test_count_colour_shape_and_extra_mistakes_cost_score():
    prompt = "a photo of two red circles"
    good = render([_place("circle", "red", 16, 32), _place("circle", "red", 48, 32)])
    too_few = render([_place("circle", "red", 16, 32)])
    too_many = render([_place("circle", "red", x, 32) for x in (12, 32, 52)])
    wrong_colour = render([_place("circle", "red", 16, 32), _place("circle", "blue", 48, 32)])
    wrong_shape = render([_place("circle", "red", 16, 32), _place("square", "red", 48, 32)])
    extra = render([_place("circle", "red", 16, 20), _place("circle", "red", 48, 20), _place("square", "green", 32, 48)])
    best = score_image(good, prompt)
    assert best.strict and best.score == pytest.approx(1.0)
    for image in (too_few, too_many, wrong_colour, wrong_shape, extra):
        result = score_image(image, prompt)
        assert not result.strict
        assert 0.3 < result.score < 1.0  # partial credit, not zero


def test_each_shape_is_recognised():
    for shape in ("circle", "square", "triangle"):
        image = render([_place(shape, "yellow", 32, 32, size=14)])
        assert score_image(image, f"a photo of a yellow {shape}").strict, shape


def test_colour_binding_is_checked():
    prompt = "a photo of a red circle and a blue square"
    swapped = render([_place("circle", "blue", 16, 32), _place("square", "red", 48, 32)])
    result = score_image(swapped, prompt)
    assert not result.strict and result.score == pytest.approx(0.5)


@pytest.mark.parametrize("relation,a_xy,b_xy", [
    ("to the left of", (16, 32), (48, 32)),
    ("to the right of", (48, 32), (16, 32)),
    ("above", (32, 14), (32, 50)),
    ("below", (32, 50), (32, 14)),
])
def test_positions(relation, a_xy, b_xy):
    prompt = f"a photo of a green triangle {relation} a yellow circle"
    right = render([_place("triangle", "green", *a_xy), _place("circle", "yellow", *b_xy)])
    flipped = render([_place("triangle", "green", *b_xy), _place("circle", "yellow", *a_xy)])
    assert score_image(right, prompt).strict
    wrong = score_image(flipped, prompt)
    assert not wrong.strict and wrong.position == 0.0 and wrong.score == pytest.approx(2 / 3)


def test_blank_and_noise_images_score_low():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert score_image(render([]), "a photo of a red circle").score == 0.0
    assert score_image(noise, "a photo of a red circle").score < 0.3
