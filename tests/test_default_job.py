"""The CPU's default job: a preset that extends the tiny world with a focused task, evaluated
on its own prompts at fresh seeds, and a closing summary that states the paired change."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from superflow_lite import config as config_mod
from superflow_lite.config import ConfigError, build_config, to_dict
from superflow_lite.console import RunSummary, eval_scope_line, metric_words
from superflow_lite.prompts import load_prompts
from superflow_lite.stats import paired_change


def test_the_focus_preset_is_the_tiny_world_with_only_its_task_changed():
    tiny, focus = to_dict(build_config("tiny")), to_dict(build_config("tiny-focus"))
    changed = {(section, key) for section in tiny if isinstance(tiny[section], dict)
               for key in tiny[section] if tiny[section][key] != focus[section][key]}
    assert changed == {("prompts", "source"), ("prompts", "eval_split"), ("prompts", "num_eval_prompts"),
                       ("prompts", "eval_seeds"), ("train", "iterations"), ("train", "ema"), ("train", "lr"), ("output", "eval_every"),
                       ("output", "checkpoint_every")}
    assert focus["preset"] == "tiny-focus" and focus["model"] == tiny["model"]


def test_the_focus_task_evaluates_its_own_prompts_at_seeds_apart_from_training():
    cfg = build_config("tiny-focus")
    prompts = load_prompts(cfg.prompts)
    assert prompts.eval_prompts("pool") == prompts.train and len(prompts.train) == 2
    from superflow_lite.world.prompts import prompt_category

    assert {prompt_category(p) for p in prompts.train} == {"counting"}
    # Training noise streams are seeded from (seed * 1_000_003 + iteration * 7_919 + stream);
    # for training seeds 0-2 none of them is an evaluation seed.
    from superflow_lite.seeds import Stream, iteration_seed, phase_stream

    kinds = [*Stream, phase_stream(Stream.INITIAL_NOISE, 1), phase_stream(Stream.SDE_NOISE, 1)]
    streams = {iteration_seed(s, i, k) for s in range(3) for i in range(cfg.train.iterations) for k in kinds}
    assert not streams & set(cfg.prompts.eval_seeds) and len(cfg.prompts.eval_seeds) == 64


def test_a_preset_that_extends_itself_back_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("extends: b\ntrain: {lr: 1.0e-4}\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    monkeypatch.setattr(config_mod, "PRESETS_DIR", tmp_path)
    with pytest.raises(ConfigError, match="extends it back"):
        build_config("a")


def test_pool_evaluations_are_named_as_such():
    assert metric_words("pool") == {"eval/reward_mean": "trained-prompt reward",
                                    "eval/strict_mean": "strict accuracy"}
    line = eval_scope_line(["a photo of a red circle above a red square"], list(range(1000, 1064)), "pool")
    assert line == ("evaluation: 1 trained prompts (fresh noise seeds) x 64 seeds (1000-1063) = 64 images, "
                    "the same noise at every step: a photo of a red circle above a red square")


def write_index(folder: Path, strict: list[float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"file": f"{i:03d}.png", "prompt": "p", "seed": i, "reward": s, "strict": s} for i, s in enumerate(strict)]
    (folder / "index.json").write_text(json.dumps(rows))


def test_the_summary_states_the_paired_change_with_its_interval(tmp_path):
    before, after = [0.0] * 40, [1.0] * 10 + [0.0] * 30  # 10 of 40 images turn right, none turns wrong
    write_index(tmp_path / "000000", before)
    write_index(tmp_path / "000048", after)
    change = paired_change(tmp_path / "000000", tmp_path / "000048", "strict")
    assert change.mean == pytest.approx(0.25) and change.items == 40 and 0.1 < change.low < 0.25 < change.high < 0.4
    summary = RunSummary("done", 48, 48, 1500, 250.0, {"eval/strict_mean": 0.0}, {"eval/strict_mean": 0.25}, 48,
                         tmp_path / "lora", tmp_path, "pool")
    line = next(x for x in summary.lines() if x.startswith("strict accuracy"))
    assert line == (f"strict accuracy: 0.000 -> 0.250 ({change.fmt()}, 95% paired bootstrap over 40 images, "
                    "step 0 -> 48)")
