"""Write the built-in prompt sets from templates and word lists, deterministically.

    python -m superflow_lite.rewards.make_prompts            # (re)write superflow_lite/data/prompts
    python -m superflow_lite.rewards.make_prompts --check    # exit 1 if the files are stale

Sets (train / test, disjoint, one prompt per line):
    ocr         text rendering; the target text in double quotes        2000 / 200
    geneval     GenEval's six kinds of compositional prompt             2264 / 296
    preference  general subjects x settings x styles (PickScore etc.)   2000 / 200
"""
from __future__ import annotations

import argparse
import random
import sys
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from .geneval_spec import (
    COCO_CLASSES, COLORS, COUNT_WORDS, RELATIONS, TaskSpec, make_prompt, spec_color,
    spec_color_attr, spec_count, spec_position, spec_single, spec_two,
)
from .prompt_words import (
    OCR_PHRASES, OCR_TEMPLATES, OCR_WORDS, PREFERENCE_DETAILS, PREFERENCE_SETTINGS,
    PREFERENCE_STYLES, PREFERENCE_SUBJECTS,
)

SEED = 20251221  # fixed: the committed files must be reproducible byte for byte
OCR_SIZES = (2000, 200)
PREFERENCE_SIZES = (2000, 200)
# (train, test) per GenEval tag; single_object and counting are capped by how many
# distinct prompts exist (80 classes; 80 x 3 counts).
GENEVAL_SIZES: dict[str, tuple[int, int]] = {
    "single_object": (64, 16),
    "two_object": (500, 60),
    "counting": (200, 40),
    "colors": (500, 60),
    "position": (500, 60),
    "color_attr": (500, 60),
}
OCR_MAX_TEXT_CHARS = 24


def default_out_dir() -> Path:
    return Path(str(resources.files("superflow_lite"))) / "data" / "prompts"


def ocr_text(rng: random.Random) -> str:
    """A short target text: a fixed phrase (1 in 5) or 1-3 words, in upper or title case."""
    if rng.random() < 0.2:
        return rng.choice(OCR_PHRASES)
    while True:
        words = rng.sample(OCR_WORDS, rng.choice((1, 2, 2, 3)))
        text = " ".join(words)
        if len(text) <= OCR_MAX_TEXT_CHARS:
            return text.upper() if rng.random() < 0.5 else text.title()


def ocr_prompt(rng: random.Random) -> str:
    return rng.choice(OCR_TEMPLATES).format(text=ocr_text(rng))


def preference_prompt(rng: random.Random) -> str:
    parts = [f"{rng.choice(PREFERENCE_STYLES)} of {rng.choice(PREFERENCE_SUBJECTS)}"]
    setting, detail = rng.choice(PREFERENCE_SETTINGS), rng.choice(PREFERENCE_DETAILS)
    if setting:
        parts[0] += " " + setting
    if detail:
        parts.append(detail)
    text = ", ".join(parts)
    return text[0].upper() + text[1:]


def geneval_spec(tag: str, rng: random.Random) -> TaskSpec:
    a, b = rng.sample(COCO_CLASSES, 2)
    c1, c2 = rng.sample(COLORS, 2)
    if tag == "single_object":
        return spec_single(a)
    if tag == "two_object":
        return spec_two(a, b)
    if tag == "counting":
        return spec_count(a, rng.choice(sorted(COUNT_WORDS)))
    if tag == "colors":
        return spec_color(a, c1)
    if tag == "position":
        return spec_position(a, rng.choice(RELATIONS), b)
    return spec_color_attr(a, c1, b, c2)


def unique(make: Callable[[random.Random], str], count: int, rng: random.Random) -> list[str]:
    """`count` distinct prompts from `make`, in the order first drawn."""
    seen: dict[str, None] = {}
    for _ in range(200 * count):
        seen.setdefault(make(rng), None)
        if len(seen) == count:
            return list(seen)
    raise ValueError(f"only {len(seen)} distinct prompts for {count} asked: widen the word lists")


def split(prompts: list[str], sizes: tuple[int, int]) -> tuple[list[str], list[str]]:
    """Test = the first `sizes[1]` (disjoint from train by construction)."""
    n_train, n_test = sizes
    return prompts[n_test : n_test + n_train], prompts[:n_test]


def build_sets(seed: int = SEED) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (train, test) prompt lists."""
    sets = {
        "ocr": split(unique(ocr_prompt, sum(OCR_SIZES), random.Random(seed)), OCR_SIZES),
        "preference": split(
            unique(preference_prompt, sum(PREFERENCE_SIZES), random.Random(seed + 1)), PREFERENCE_SIZES
        ),
    }
    train: list[str] = []
    test: list[str] = []
    for offset, (tag, sizes) in enumerate(GENEVAL_SIZES.items(), start=2):
        make = lambda rng, tag=tag: make_prompt(geneval_spec(tag, rng))  # noqa: E731
        tag_train, tag_test = split(unique(make, sum(sizes), random.Random(seed + offset)), sizes)
        train += tag_train
        test += tag_test
    # Interleave the tags, so the first lines of a file (num_eval_prompts) cover all six.
    sets["geneval"] = (_interleave(train, seed), _interleave(test, seed))
    return sets


def _interleave(prompts: list[str], seed: int) -> list[str]:
    shuffled = list(prompts)
    random.Random(seed).shuffle(shuffled)
    return shuffled


def render(prompts: Sequence[str]) -> str:
    return "".join(p + "\n" for p in prompts)


def write_sets(out_dir: Path, check: bool = False) -> list[Path]:
    """Write every set; with check, write nothing and return the files that differ."""
    stale = []
    for name, (train, test) in build_sets().items():
        for split_name, prompts in (("train", train), ("test", test)):
            path = out_dir / f"{name}_{split_name}.txt"
            text = render(prompts)
            if path.is_file() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m superflow_lite.rewards.make_prompts")
    parser.add_argument("--out-dir", type=Path, default=default_out_dir())
    parser.add_argument("--check", action="store_true", help="exit 1 if any file is missing or stale")
    args = parser.parse_args(argv)
    changed = write_sets(args.out_dir, check=args.check)
    verb = "stale" if args.check else "wrote"
    for path in changed:
        print(f"{verb} {path}")
    if not changed:
        print(f"prompt sets in {args.out_dir} are up to date")
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
