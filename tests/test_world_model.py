"""The shapes world's tiny SD3: builds offline, round-trips through diffusers, and the
committed pretrained weights draw what prompts say better than random weights do."""
from __future__ import annotations

import logging

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from superflow_lite.world import model as world_model
from superflow_lite.world import prompts as world_prompts
from superflow_lite.world.evaluate import generate
from superflow_lite.world.model import (
    WORLD_MODEL_DIR,
    WORLD_RESOLUTION,
    build_tiny_sd3_pipeline,
    load_world_pipeline,
)
from superflow_lite.world.reward import ShapesReward
from superflow_lite.world.tokenizers import build_clip_tokenizer, build_t5_tokenizer

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

PROMPTS = [
    "a photo of a red circle",
    "a photo of a blue square",
    "a photo of a green triangle",
    "a photo of a yellow circle",
]
STEPS = 12  # enough for the pretrained model to draw single objects; keeps the test fast
MAX_COMMITTED_MB = 20


def _mean_reward(pipe: StableDiffusion3Pipeline, seeds: tuple[int, ...] = (0, 1)) -> float:
    pipe.set_progress_bar_config(disable=True)
    reward = ShapesReward()
    scores = [
        reward(generate(pipe, PROMPTS, seed, num_inference_steps=STEPS), PROMPTS).scores.mean()
        for seed in seeds
    ]
    return float(sum(scores) / len(scores))


def test_random_pipeline_is_complete_and_sd3_shaped():
    pipe = build_tiny_sd3_pipeline(seed=0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                 "tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
        assert getattr(pipe, name) is not None, name
    assert pipe.vae.config.latent_channels == 16
    assert pipe.transformer.config.patch_size == 1
    pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
    assert pooled == pipe.transformer.config.pooled_projection_dim
    assert pipe.scheduler.config.shift == 3.0
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a red circle", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, WORLD_RESOLUTION, WORLD_RESOLUTION)


def test_tokenizers_spell_world_words_as_single_tokens():
    clip, t5 = build_clip_tokenizer(), build_t5_tokenizer()
    for prompt in world_prompts.train_prompts() + world_prompts.test_prompts():
        words = len(prompt.split())
        assert len(clip(prompt).input_ids) == words + 2 <= clip.model_max_length, prompt  # BOS, EOS
        assert len(t5(prompt).input_ids) == words + 1, prompt  # </s>
    # byte-level fallback: no <unk> between BOS and EOS (CLIP uses <|endoftext|> for both unk and EOS)
    assert clip.unk_token_id not in clip("an unknown zebra").input_ids[1:-1]


def test_random_pipeline_is_deterministic_in_seed():
    a, b = build_tiny_sd3_pipeline(seed=3), build_tiny_sd3_pipeline(seed=3)
    for pa, pb in zip(a.transformer.parameters(), b.transformer.parameters()):
        assert torch.equal(pa, pb)


def test_committed_weights_are_small_and_complete():
    files = [p for p in WORLD_MODEL_DIR.rglob("*") if p.is_file()]
    assert (WORLD_MODEL_DIR / "model_index.json").is_file()
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3",
                "tokenizer", "tokenizer_2", "tokenizer_3", "scheduler"):
        assert (WORLD_MODEL_DIR / sub).is_dir(), sub
    assert sum(p.stat().st_size for p in files) / 2**20 < MAX_COMMITTED_MB


def test_pretrained_model_beats_random_weights():
    pretrained = StableDiffusion3Pipeline.from_pretrained(WORLD_MODEL_DIR)
    random_weights = build_tiny_sd3_pipeline(seed=0)
    trained_score, random_score = _mean_reward(pretrained), _mean_reward(random_weights)
    assert trained_score > random_score + 0.3, (trained_score, random_score)


def test_load_world_pipeline_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(world_model, "WORLD_MODEL_DIR", tmp_path / "absent")
    with caplog.at_level(logging.WARNING, logger=world_model.__name__):
        pipe = world_model.load_world_pipeline()
    assert "RANDOM weights" in caplog.text
    assert isinstance(pipe, StableDiffusion3Pipeline)


def test_load_world_pipeline_loads_committed_dir_in_dtype():
    pipe = load_world_pipeline(torch_dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder_3 is not None and pipe.tokenizer_3 is not None
