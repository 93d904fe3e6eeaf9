"""The built-in prompt sets shipped in superflow_lite/data/prompts (written by make_prompts.py).

    train, test = load_builtin_prompt_set("ocr")

Which reward each set is made for:
    ocr         -> ocr             (target text in double quotes)
    geneval     -> geneval         (GenEval's six templates over COCO classes)
    preference  -> pickscore, hpsv2, clipscore, aesthetic
The tiny world's "shapes" prompts belong to superflow_lite.world, not to this module.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

BUILTIN_PROMPT_SETS: tuple[str, ...] = ("geneval", "ocr", "preference")


def prompts_dir() -> Path:
    return Path(str(resources.files("superflow_lite"))) / "data" / "prompts"


def available_prompt_sets() -> list[str]:
    return list(BUILTIN_PROMPT_SETS)


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines are skipped, surrounding whitespace stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


def load_builtin_prompt_set(name: str) -> tuple[list[str], list[str]]:
    """(train, test) prompts of a built-in set."""
    if name not in BUILTIN_PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; available: {', '.join(BUILTIN_PROMPT_SETS)}")
    folder = prompts_dir()
    missing = [s for s in ("train", "test") if not (folder / f"{name}_{s}.txt").is_file()]
    if missing:
        raise FileNotFoundError(
            f"prompt set {name!r} is missing {folder / f'{name}_{missing[0]}.txt'}; "
            "regenerate with: python -m superflow_lite.rewards.make_prompts"
        )
    return read_prompt_file(folder / f"{name}_train.txt"), read_prompt_file(folder / f"{name}_test.txt")
