"""CLIP-based rewards (pickscore, clipscore, hpsv2, aesthetic) on tiny random checkpoints.

The weights are random, so the scores mean nothing; these tests check the real loading
path (from_pretrained of a saved folder), the forward passes, the range contract, and the
offline error messages.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from superflow_lite.rewards.aesthetic import AestheticReward, load_head
from superflow_lite.rewards.base import RewardUnavailable
from superflow_lite.rewards.registry import build_reward
from superflow_lite.rewards.tiny import save_tiny_aesthetic_head, save_tiny_clip

PROMPTS = ["a red square", "a blue circle on grass", "a photo of 2 dogs", "an empty room"]


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "hpsv2"])
def test_clip_rewards_score_in_range(name: str, clip_dir: Path) -> None:
    reward = build_reward({name: 1.0}, "cpu", {name: {"model_name_or_path": str(clip_dir), "batch_size": 3}})
    out = reward(_images(), PROMPTS)
    assert out.scores.shape == (4,) and out.scores.dtype == np.float32
    assert np.isfinite(out.scores).all()
    assert ((out.scores >= reward.low) & (out.scores <= reward.high)).all()
    cos = out.extras["cosine"]
    assert ((cos >= -1.0001) & (cos <= 1.0001)).all()
    # Batching must not change a pair's score: score the first pair alone.
    alone = reward(_images()[:1], PROMPTS[:1])
    assert alone.extras["cosine"][0] == pytest.approx(cos[0], abs=1e-5)


def test_pickscore_formula(clip_dir: Path) -> None:
    # PickScore/26 = exp(logit_scale) * cos / 26; the tiny model's exp(logit_scale) is 100.
    options = {"pickscore": {"model_name_or_path": str(clip_dir), "low": -5, "high": 5}}
    reward = build_reward({"pickscore": 1.0}, "cpu", options)
    out = reward(_images(), PROMPTS)
    np.testing.assert_allclose(out.scores, 100.0 * out.extras["cosine"] / 26.0, rtol=1e-4)


def test_clipscore_formula(clip_dir: Path) -> None:
    reward = build_reward({"clipscore": 1.0}, "cpu", {"clipscore": {"model_name_or_path": str(clip_dir)}})
    out = reward(_images(), PROMPTS)
    np.testing.assert_allclose(out.scores, 2.5 * np.maximum(out.extras["cosine"], 0), rtol=1e-5)
    assert (reward.low, reward.high) == (0.0, 2.5)


def test_text_changes_the_score(clip_dir: Path) -> None:
    reward = build_reward({"hpsv2": 1.0}, "cpu", {"hpsv2": {"model_name_or_path": str(clip_dir), "low": -1, "high": 1}})
    image = _images(1) * 2
    out = reward(image, ["a red square", "zzz 999 qqq"])
    assert out.scores[0] != pytest.approx(out.scores[1])


def test_aesthetic_head_and_range(clip_dir: Path, tmp_path: Path) -> None:
    head_path = save_tiny_aesthetic_head(tmp_path / "head.pth", embed_dim=16)
    head = load_head(head_path)
    assert [layer.in_features for layer in head] == [16, 32, 16, 8, 4]
    reward = build_reward(
        {"aesthetic": 1.0}, "cpu",
        {"aesthetic": {"model_name_or_path": str(clip_dir), "head_path": str(head_path), "low": -10, "high": 10}},
    )
    out = reward(_images(), PROMPTS)
    assert ((out.scores >= -10) & (out.scores <= 10)).all() and np.isfinite(out.scores).all()
    # The score is the head applied to the normalised CLIP image embedding.
    pixels = reward.processor(images=_images()[:1], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = reward.model(pixel_values=pixels).image_embeds
        expected = head(emb / emb.norm(dim=-1, keepdim=True)).item()
    assert out.scores[0] == pytest.approx(expected, abs=1e-5)


def test_aesthetic_linear_head(tmp_path: Path) -> None:
    # The v1 LAION head is one linear layer saved as {"weight", "bias"}.
    torch.save({"weight": torch.ones(1, 16), "bias": torch.zeros(1)}, tmp_path / "linear.pth")
    head = load_head(tmp_path / "linear.pth")
    assert head(torch.full((1, 16), 0.5)).item() == pytest.approx(8.0)


def test_aesthetic_head_dim_mismatch(clip_dir: Path, tmp_path: Path) -> None:
    head_path = save_tiny_aesthetic_head(tmp_path / "head.pth", embed_dim=768)
    reward = AestheticReward(model_name_or_path=str(clip_dir), head_path=str(head_path))
    with pytest.raises(RewardUnavailable, match="768-d"):
        reward(_images(1), PROMPTS[:1])


@pytest.mark.parametrize("name", ["pickscore", "clipscore", "hpsv2", "aesthetic"])
def test_missing_model_is_actionable(name: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "not-downloaded")
    reward = build_reward({name: 1.0}, "cpu", {name: {"model_name_or_path": missing}})
    with pytest.raises(RewardUnavailable) as info:
        reward(_images(1), PROMPTS[:1])
    message = str(info.value)
    assert missing in message and "hf download" in message and "model_name_or_path" in message


def test_default_hub_ids_offline() -> None:
    # The conftest sets HF_HUB_OFFLINE=1: the real hub ids fail to load with the repo named.
    reward = build_reward({"pickscore": 1.0})
    assert reward.processor_name_or_path == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    with pytest.raises(RewardUnavailable, match="laion/CLIP-ViT-H-14-laion2B-s32B-b79K|yuvalkirstain/PickScore_v1"):
        reward(_images(1), PROMPTS[:1])


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="dtype"):
        build_reward({"clipscore": 1.0}, "cpu", {"clipscore": {"dtype": "float8"}})
    with pytest.raises(ValueError, match="high"):
        build_reward({"pickscore": 1.0}, "cpu", {"pickscore": {"low": 1.0, "high": 0.5}})
    with pytest.raises(ValueError, match="unknown option 'modle_name_or_path'.*model_name_or_path"):
        build_reward({"hpsv2": 1.0}, "cpu", {"hpsv2": {"modle_name_or_path": "x"}})
