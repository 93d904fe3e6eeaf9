"""Registry errors, built-in prompt sets and the task presets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from superflow_lite.rewards.geneval_spec import parse_prompt
from superflow_lite.rewards.make_prompts import build_sets, default_out_dir, write_sets
from superflow_lite.rewards.ocr import extract_target_text
from superflow_lite.rewards.prompt_sets import (
    available_prompt_sets, load_builtin_prompt_set, read_prompt_file,
)
from superflow_lite.rewards.registry import WeightedSum, available_rewards, build_reward

PRESETS = Path(__file__).resolve().parent.parent / "superflow_lite" / "presets"
NEW_REWARDS = {"ocr", "pickscore", "clipscore", "hpsv2", "aesthetic", "geneval", "remote"}


def test_new_rewards_are_registered() -> None:
    assert NEW_REWARDS <= set(available_rewards())


def test_unknown_reward_names_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        build_reward({"pickscor": 1.0})
    message = str(info.value)
    assert "'pickscor'" in message and "pickscore" in message and "ocr" in message


@pytest.mark.parametrize(
    "weights, fragment",
    [({}, "non-empty"), ({"ocr": 0}, "non-zero finite"), ({"ocr": float("nan")}, "non-zero finite"),
     ({"ocr": "high"}, "must be a number"), ({"ocr": True}, "must be a number"), (["ocr"], "mapping")],
)
def test_bad_weights(weights: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build_reward(weights)  # type: ignore[arg-type]


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"reward.options.ocr: unknown option 'min_conf'; valid: min_confidence"):
        build_reward({"ocr": 1.0}, "cpu", {"ocr": {"min_conf": 0.5}})


def test_weighted_sum_range() -> None:
    weights = {"ocr": 0.5, "jpeg_compressibility": -0.25}
    reward = build_reward(weights, "cpu", {"jpeg_compressibility": {"resolution": 16}})
    assert isinstance(reward, WeightedSum)
    span = 3 * 16 * 16 / 1024  # jpeg range [-span, 0]
    assert (reward.low, reward.high) == pytest.approx((0.0, 0.5 + 0.25 * span))


def test_prompt_sets_are_committed_and_current(tmp_path: Path) -> None:
    assert write_sets(default_out_dir(), check=True) == []  # `make_prompts --check`
    assert available_prompt_sets() == ["geneval", "ocr", "preference"]
    for name, (train, test) in build_sets().items():
        loaded_train, loaded_test = load_builtin_prompt_set(name)
        assert (loaded_train, loaded_test) == (train, test)
        assert len(set(train)) == len(train) and not set(train) & set(test)
    with pytest.raises(ValueError, match="unknown prompt set 'shape'; available: geneval, ocr, preference"):
        load_builtin_prompt_set("shape")


def test_prompt_set_contents() -> None:
    ocr_train, _ = load_builtin_prompt_set("ocr")
    assert all(0 < len(extract_target_text(p)) <= 24 for p in ocr_train)
    geneval_train, _ = load_builtin_prompt_set("geneval")
    assert all(parse_prompt(p) is not None for p in geneval_train[:200])
    pref_train, pref_test = load_builtin_prompt_set("preference")
    assert len(pref_train) == 2000 and len(pref_test) == 200 and '"' not in "".join(pref_train)


def test_read_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("  one \n\ntwo\n", encoding="utf-8")
    assert read_prompt_file(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt")


@pytest.mark.parametrize("task", ["ocr", "geneval", "pickscore"])
def test_task_presets(task: str) -> None:
    text = (PRESETS / f"task-{task}.yaml").read_text(encoding="utf-8")
    preset = yaml.safe_load(text)
    assert set(preset) <= {"reward", "prompts", "train"}
    assert preset["prompts"]["source"] in available_prompt_sets()
    # Every key carries a comment line with its reason.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"task-{task}.yaml: no comment above {line!r}"
    # The reward builds lazily from the preset (nothing is downloaded until the first batch).
    reward = build_reward(preset["reward"]["weights"], "cpu", preset["reward"]["options"])
    assert reward.high > reward.low


def test_ocr_preset_scores_on_cpu() -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    preset = yaml.safe_load((PRESETS / "task-ocr.yaml").read_text(encoding="utf-8"))
    reward = build_reward(preset["reward"]["weights"], "cpu", preset["reward"]["options"])
    prompt = load_builtin_prompt_set("ocr")[1][0]
    out = reward([Image.new("RGB", (64, 64), "white")], [prompt])
    assert out.scores.tolist() == [0.0] and np.isfinite(reward.to_unit(out.scores)).all()
