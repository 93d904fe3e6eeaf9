"""What a real card needs and a CPU can check: the int8 log line silenced at its source, the
float32 timestep, the reference pass's adapters restored on error, CUDA-library allocation
failures retried, a reward OOM halved on the scorer's thread, no dead LoRA, the floors."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from superflow_lite import models, oom
from superflow_lite.rewards.async_scorer import AsyncRewardScorer
from superflow_lite.rewards.base import Reward, RewardOutput

torch.set_num_threads(1)


def test_int8_cast_line_is_dropped_and_nothing_else(caplog):
    bnb = pytest.importorskip("bitsandbytes")
    models.silence_int8_cast_warning()
    models.silence_int8_cast_warning()  # idempotent: one filter
    logger = logging.getLogger(models.INT8_CAST_LOGGER)
    assert sum(isinstance(f, models._Int8CastFilter) for f in logger.filters) == 1
    layer = models.quantize_linears(torch.nn.Sequential(torch.nn.Linear(64, 32)), "int8", torch.bfloat16).eval()
    assert isinstance(layer[0], bnb.nn.Linear8bitLt)
    with caplog.at_level(logging.WARNING, logger="bitsandbytes"):
        layer(torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True))  # MatMul8bitLt casts bf16 -> fp16
        logger.warning("another bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records if r.name == models.INT8_CAST_LOGGER] == ["another bitsandbytes warning"]


def test_timestep_reaches_the_transformer_in_float32():
    from superflow_lite.embeddings import PromptEmbeds
    from superflow_lite.rollout import predict_velocity

    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, hidden_states, timestep, encoder_hidden_states, pooled_projections, return_dict):
            seen["t"] = timestep
            return (hidden_states,)

    cond = PromptEmbeds(torch.zeros(1, 3, 8), torch.zeros(1, 4))
    predict_velocity(Probe(), torch.zeros(1, 2, 4, 4), 973.3333, cond, cond, 4.5)
    assert seen["t"].dtype == torch.float32
    assert seen["t"][0].item() == pytest.approx(973.3333, abs=1e-4)  # bf16 would give 972.0


def test_adapters_come_back_when_the_reference_pass_fails():
    class Model:
        enabled = True

        def disable_adapters(self):
            self.enabled = False

        def enable_adapters(self):
            self.enabled = True

    model = Model()
    with pytest.raises(torch.OutOfMemoryError):
        with models.adapters_disabled(model):
            assert not model.enabled
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
    assert model.enabled


@pytest.mark.parametrize("text", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA out of memory. Tried to allocate 20.00 MiB",
])
def test_cuda_library_allocation_failures_are_retried(text):
    calls = []

    def work(micro_batch):
        calls.append(micro_batch)
        if micro_batch > 1:
            raise RuntimeError(text)
        return "ok"

    assert oom.retry_on_oom(work, 4, logging.getLogger("test")) == ("ok", 1)
    assert calls == [4, 2, 1]
    assert not oom.is_oom(RuntimeError("CUDA error: an illegal memory access was encountered"))


class _Sized(Reward):
    """Scores an image by its width; runs out of memory on more than `fits` images."""

    name = "sized"

    def __init__(self, fits: int):
        super().__init__()
        self.fits, self.calls = fits, []

    def score(self, images, prompts, metadata):
        self.calls.append(len(images))
        if len(images) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        widths = np.array([im.width for im in images], dtype=np.float32)
        return RewardOutput(widths / 100, {"w": widths})


def test_reward_oom_on_the_scorer_thread_halves_and_keeps_the_order(caplog):
    from PIL import Image

    reward = _Sized(fits=2)
    images = [Image.new("RGB", (w, 4)) for w in (10, 20, 30, 40, 50)]
    with caplog.at_level(logging.WARNING, logger="superflow_lite"), AsyncRewardScorer(reward) as scorer:
        out = scorer.submit(images, ["p"] * 5).result()
    np.testing.assert_allclose(out.scores, [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(out.extras["w"], [10, 20, 30, 40, 50])
    assert reward.calls == [5, 2, 3, 1, 2]
    assert "reward sized: out of memory on 5 images; scoring 2 and 3" in [r.getMessage() for r in caplog.records]
    with pytest.raises(torch.OutOfMemoryError):
        oom.score_halving_on_oom(_Sized(fits=0), images[:1], ["p"], None)


def test_no_lora_on_the_last_blocks_dead_text_queries():
    from superflow_lite.config import ModelConfig
    from superflow_lite.world.model import build_transformer

    torch.manual_seed(0)
    tr = build_transformer().requires_grad_(False)
    models.add_lora(tr, ModelConfig(gradient_checkpointing=False))
    last = len(tr.transformer_blocks) - 1
    names = {n for n, p in tr.named_parameters() if p.requires_grad}
    assert not any(n.startswith(f"transformer_blocks.{last}.attn.add_q_proj.") for n in names)
    assert any(n.startswith(f"transformer_blocks.{last}.attn.add_k_proj.") for n in names)
    # every LoRA tensor left is reachable: lora_B gets a gradient at the first step
    cfg = tr.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    out = tr(hidden_states=x, timestep=torch.full((2,), 500.0), return_dict=False,
             encoder_hidden_states=torch.randn(2, 8, cfg.joint_attention_dim),
             pooled_projections=torch.randn(2, cfg.pooled_projection_dim))[0]
    out.pow(2).mean().backward()
    dead = [n for n, p in tr.named_parameters() if p.requires_grad and "lora_B" in n and not p.grad.abs().sum() > 0]
    assert dead == []


def test_dependency_floors_match_the_code():
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    floors = dict(re.findall(r'"([a-z_]+)>=([0-9.]+)"', text))
    assert floors["bitsandbytes"] == models.BITSANDBYTES_MIN == "0.48"  # diffusers' .to() on 8-bit models
    assert int(floors["transformers"].split(".")[0]) >= 5  # the 8-bit T5's wo in the compute dtype
    assert tuple(map(int, floors["torch"].split("."))) >= (2, 5)  # torch.OutOfMemoryError
    import peft
    from packaging.version import Version

    assert Version(floors["peft"]) >= Version("0.14")  # exclude_modules
    assert "exclude_modules" in peft.LoraConfig.__dataclass_fields__


def test_old_bitsandbytes_is_a_clear_error(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(bnb, "__version__", "0.45.5")
    with pytest.raises(models.ModelUnavailable, match=r"bitsandbytes >= 0\.48, found 0\.45\.5"):
        models.require_bitsandbytes("model.transformer_quant=int8")
