"""Prompt sources: a built-in set by name, or a text file with one prompt per line."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, PromptsConfig, echo

# Longer than any prompt the text encoders read: T5 stops at 512 tokens (MAX_T5_TOKENS) of
# at most ~16 characters each. A longer line is a file that is not a prompt list (a log, a
# data dump), and echoing it whole would make a ten-megabyte error message.
MAX_PROMPT_CHARS = 10_000


@dataclass
class PromptSet:
    train: list[str]
    """The RL prompt pool."""
    test: list[str]
    """Final figures only."""
    val: list[str] = field(default_factory=list)
    """Held out of `train` for tuning; empty when the source has no validation split."""

    def eval_prompts(self, split: str) -> list[str]:
        """The prompts of `prompts.eval_split`."""
        if split == "pool":
            return self.train
        if split == "val":
            if not self.val:
                raise ConfigError("prompts.eval_split=val needs a source with a validation split "
                                  "(the built-in shapes set); use prompts.eval_split=test")
            return self.val
        return self.test


def read_prompt_file(path: str | Path, key: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key} {str(p)!r} does not exist; give a .txt file with one prompt per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{key} {str(p)!r} is not UTF-8 text; save it as UTF-8, one prompt per line") from None
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_PROMPT_CHARS:
            raise ConfigError(f"{key} {str(p)!r}: line {number} is {len(line):,} characters long, more than the "
                              f"{MAX_PROMPT_CHARS:,} a prompt can use ({echo(line.strip())}); write one prompt per line")
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError(f"{key} {str(p)!r} holds no prompts; write one prompt per line")
    return list(dict.fromkeys(prompts))  # duplicates would only skew the sampling


def builtin_prompt_set(name: str) -> PromptSet | None:
    if name == "shapes":
        from .world.prompts import rl_train_prompts, test_prompts, val_prompts

        return PromptSet(rl_train_prompts(), test_prompts(), val_prompts())
    if name == "shapes-focus":
        from .world.prompts import focus_prompts, test_prompts

        return PromptSet(focus_prompts(), test_prompts())
    from .rewards.prompt_sets import available_prompt_sets, load_builtin_prompt_set

    if name in available_prompt_sets():
        train, test = load_builtin_prompt_set(name)
        return PromptSet(train, test)
    return None


def eval_subset(prompts: list[str], n: int) -> list[str]:
    """n prompts spread evenly over the list, so an ordered test split (easy first) is
    represented across its range rather than by its head."""
    if n >= len(prompts):
        return list(prompts)
    step = len(prompts) / n
    return [prompts[int(i * step)] for i in range(n)]


def load_prompts(cfg: PromptsConfig) -> PromptSet:
    source = cfg.source
    prompt_set = builtin_prompt_set(source)
    if prompt_set is None:
        if not source.endswith(".txt") and not Path(source).is_file():
            from .rewards.prompt_sets import available_prompt_sets

            names = ", ".join(["shapes", *available_prompt_sets()])
            raise ConfigError(f"prompts.source {source!r} is neither a built-in set ({names}) nor a .txt file")
        train = read_prompt_file(source, "prompts.source")
        prompt_set = PromptSet(train, train)
    if cfg.test_source:
        prompt_set.test = read_prompt_file(cfg.test_source, "prompts.test_source")
    return prompt_set
