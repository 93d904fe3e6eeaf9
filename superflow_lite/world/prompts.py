"""The world's prompts: GenEval-like categories, difficulty tags and a fixed train/test split.

Categories (GenEval names in brackets):
  single   [single_object + colors]  "a photo of a red circle"                       easy
  counting [counting]                "a photo of three blue squares"                 hard
  binding  [two_object + color_attr] "a photo of a red circle and a blue square"     hard
  position [position]                "a photo of a red circle to the left of a ..."  hard

The test set is fixed and balanced (so one category does not drown the others in its mean);
compositional test prompts are held out of training, which makes them a test of
generalisation. The 12 single-object prompts are in both sets: there are too few to hold
any out, and they are the easy anchor RL should keep while it improves the hard ones.
"""
from __future__ import annotations

import functools
import itertools
import random

from .parser import parse_caption
from .shapes import COLOURS, RELATION_PHRASES, SHAPES, ObjectSpec, SceneSpec, caption

CATEGORIES: tuple[str, ...] = ("single", "counting", "binding", "position")
DIFFICULTY: dict[str, str] = {"single": "easy", "counting": "hard", "binding": "hard", "position": "hard"}
# Held-out test prompts per compositional category (of 36 / 132 / 528 in all).
TEST_SIZES: dict[str, int] = {"counting": 12, "binding": 24, "position": 24}
SPLIT_SEED = 20240521  # changing it changes the test set: do not, results would not compare


def _kinds() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def specs_by_category() -> dict[str, list[SceneSpec]]:
    """Every world scene spec, grouped by category, in a fixed order."""
    kinds = _kinds()
    pairs = [(a, b) for a, b in itertools.permutations(kinds, 2)]
    return {
        "single": [SceneSpec((ObjectSpec(s, c),)) for c, s in kinds],
        "counting": [SceneSpec((ObjectSpec(s, c, n),)) for c, s in kinds for n in (2, 3, 4)],
        "binding": [SceneSpec((ObjectSpec(sa, ca), ObjectSpec(sb, cb))) for (ca, sa), (cb, sb) in pairs],
        "position": [
            SceneSpec((ObjectSpec(sa, ca), ObjectSpec(sb, cb)), relation=rel)
            for rel in RELATION_PHRASES
            for (ca, sa), (cb, sb) in pairs
        ],
    }


@functools.cache
def _split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    rng = random.Random(SPLIT_SEED)
    train: list[str] = []
    test: list[str] = []
    for category, specs in specs_by_category().items():
        prompts = [caption(s) for s in specs]
        if category == "single":
            train += prompts
            test += prompts
            continue
        held_out = set(rng.sample(prompts, TEST_SIZES[category]))
        train += [p for p in prompts if p not in held_out]
        test += [p for p in prompts if p in held_out]
    return tuple(train), tuple(test)


def train_prompts() -> list[str]:
    """Prompts for pretraining and RL (648)."""
    return list(_split()[0])


# Validation prompts per compositional category, held out of the RL prompt pool (not of
# pretraining): hyper-parameters are tuned on them, so the test split stays unseen.
VAL_SIZES: dict[str, int] = {"counting": 6, "binding": 12, "position": 12}
VAL_SEED = 20261202


@functools.cache
def _val_split() -> tuple[str, ...]:
    rng = random.Random(VAL_SEED)
    train = set(_split()[0])
    val: list[str] = []
    for category, specs in specs_by_category().items():
        prompts = [caption(s) for s in specs if caption(s) in train]
        if category == "single":
            val += prompts  # as in the test split: the easy anchor, too few to hold out
            continue
        val += sorted(rng.sample(prompts, VAL_SIZES[category]), key=prompts.index)
    return tuple(val)


def val_prompts() -> list[str]:
    """Validation prompts for tuning (42: 12 single, 6 counting, 12 binding, 12 position)."""
    return list(_val_split())


def rl_train_prompts() -> list[str]:
    """The RL prompt pool: the train prompts less the held-out validation ones (618)."""
    held_out = set(_val_split()) - set(test_prompts())
    return [p for p in _split()[0] if p not in held_out]


# Two position prompts the base model rarely draws right (strict accuracy about 0.1): the
# focused regime of benchmarks/sample_efficiency.py, where SuperFlow is compared with Flow-GRPO.
POSITION_PAIR = ("a photo of a yellow triangle above a blue circle", "a photo of a red circle above a red square")
# Two counting prompts the base model draws right a third to half the time: the default CPU
# job's task, and the counting regime of benchmarks/sample_efficiency.py.
COUNTING_PAIR = ("a photo of two green triangles", "a photo of three green circles")


def focus_prompts() -> list[str]:
    """The default CPU job's pool: two counting prompts of the RL pool that the base model
    draws right a third to half the time, where a group's strict outcomes vary most. Chosen on
    validation seeds over three skills (benchmarks/results/focus_tasks/PROTOCOL.md); RL
    raises their strict accuracy within minutes when every iteration revisits them."""
    focus = list(COUNTING_PAIR)
    assert set(focus) <= set(rl_train_prompts())
    return focus


def test_prompts() -> list[str]:
    """Fixed evaluation prompts (72: 12 single, 12 counting, 24 binding, 24 position)."""
    return list(_split()[1])


def spec_category(spec: SceneSpec) -> str:
    if spec.relation is not None:
        return "position"
    if len(spec.objects) > 1:
        return "binding"
    return "counting" if spec.objects[0].count > 1 else "single"


def prompt_category(prompt: str) -> str:
    return spec_category(parse_caption(prompt))


def prompt_difficulty(prompt: str) -> str:
    """"easy" (one object) or "hard" (counts, two-object colour binding, positions)."""
    return DIFFICULTY[prompt_category(prompt)]
