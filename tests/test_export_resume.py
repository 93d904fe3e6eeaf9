"""Export round trip through diffusers, and resume == uninterrupted run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors import safe_open

from superflow_lite.embeddings import PromptEncoder
from superflow_lite.evaluation import generate
from superflow_lite.rundir import read_metrics, read_status
from superflow_lite.train import main
from superflow_lite.world.model import WORLD_MODEL_DIR

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow


def test_exported_lora_reloads_in_a_fresh_pipeline_with_its_scale(make_trainer, tiny_pipe):
    # alpha != r: without the adapter metadata diffusers would reload it at scale 1.0.
    trainer = make_trainer("model.lora_rank=4", "model.lora_alpha=16.0")
    cfg, run = trainer.cfg, trainer.run
    with torch.no_grad():
        for name, p in trainer.base_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    path = trainer.export()
    with safe_open(str(path), "pt") as f:
        assert all(k.startswith("transformer.") for k in f.keys())
        assert f.metadata() and "lora_adapter_metadata" in " ".join(f.metadata())

    prompts, seeds = ["a photo of two red circles", "a photo of a blue square"], [0, 1]
    kwargs = dict(resolution=64, num_steps=6, guidance_scale=4.5, micro_batch=2)
    trained = generate(trainer.pipe, trainer.transformer, trainer.encoder, prompts, seeds, **kwargs)

    fresh = tiny_pipe
    fresh.load_lora_weights(str(run.lora_dir))
    encoder = PromptEncoder(fresh, torch.device("cpu"), cfg.sampling.max_sequence_length)
    reloaded = generate(fresh, fresh.transformer, encoder, prompts, seeds, **kwargs)
    for a, b in zip(trained, reloaded):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    fresh.unload_lora_weights()
    base = generate(fresh, fresh.transformer, encoder, prompts, seeds, **kwargs)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(trained, base))
    # And the PEFT directory carries the same config.
    adapter_config = json.loads((run.lora_dir / "peft" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 16


def _lora(run_dir):
    with safe_open(str(run_dir / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("preset", ["tiny", "tiny-focus"])  # tiny-focus: the LoRA's moving average too
def test_resume_equals_an_uninterrupted_run(tmp_path, fast_overrides, preset):
    """Continuing a finished run to more iterations is the longer run, bit for bit: the
    benchmarks' longer budgets (sample_efficiency.continue_run) rest on it."""
    full, split = tmp_path / "full", tmp_path / "split"
    common = ["--preset", preset, "--no-progress", *fast_overrides]
    assert main([*common, "--output", str(full), "train.iterations=4"]) == 0
    assert main([*common, "--output", str(split), "train.iterations=2"]) == 0
    assert read_status(split)["state"] == "done"
    assert main(["--resume", str(split), "--no-progress", "train.iterations=4"]) == 0
    assert read_status(split)["state"] == "done" and read_status(split)["iteration"] == 4
    keys = ("iteration", "reward/mean", "rollouts/iter", "grpo/loss", "grpo/kl", "eval/reward_mean")
    rows_full = [{k: r.get(k) for k in keys} for r in read_metrics(full)]
    rows_split = [{k: r.get(k) for k in keys} for r in read_metrics(split)]
    assert [r["iteration"] for r in rows_split] == [0, 1, 2, 3, 4]
    for a, b in zip(rows_full, rows_split):
        for k in keys:
            if a[k] is None:  # e.g. no eval on this iteration
                assert b[k] is None, (k, a, b)
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-8), (k, a, b)
    lora_full, lora_split = _lora(full), _lora(split)
    assert lora_full.keys() == lora_split.keys()
    for k in lora_full:
        assert torch.equal(lora_full[k], lora_split[k]), k  # bit for bit on the CPU


def test_world_model_dir_is_a_diffusers_pipeline():
    if not (WORLD_MODEL_DIR / "model_index.json").is_file():
        pytest.fail(f"the world model is not committed at {WORLD_MODEL_DIR}")
    pipe = StableDiffusion3Pipeline.from_pretrained(WORLD_MODEL_DIR)
    assert pipe.text_encoder_3 is not None
