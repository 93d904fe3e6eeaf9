"""A whole training iteration (Trainer.train_iteration) on an SD3.5-Medium-shaped transformer:
the real width (1536), heads (24 x 64), dual-attention blocks, RMS qk-norm, patch 2 and the
context_pre_only last block, three blocks deep, random weights, LoRA with gradient
checkpointing, at the world's 64 px; the prompts go through the world's CLIP-L, CLIP-G and T5
code paths (tokenizers, encode_prompt) on tiny configs."""
from __future__ import annotations

import math

import torch

import pytest

from superflow_lite import models
from superflow_lite import trainer as trainer_module

# Slow (whole processes, real runs or long measurements): left out of the quick loop, pytest -m "not slow".
pytestmark = pytest.mark.slow

OVERRIDES = [  # 4 rollouts of 2 steps: a full iteration in seconds at width 1536
    "train.iterations=1", "batch.prompts_per_iter=2", "batch.group_size=2", "superflow.m_min=2",
    "superflow.m_max=2", "superflow.num_bins=2", "batch.rollout_cap=4", "sampling.num_steps=2",
    "sampling.micro_batch=2", "train.micro_batch=2", "train.updates_per_iter=1", "model.gradient_checkpointing=true",
    "model.dtype=float32", "train.lr=1e-3",
]


def test_training_iteration_on_an_sd35m_shaped_transformer(make_trainer, monkeypatch):
    real_load = trainer_module.load_pipeline

    def load(cfg_model, device):
        pipe = real_load(cfg_model, device)  # the world's VAE, tokenizers and three text encoders
        world = pipe.transformer.config
        config = {**models.sd35m_shaped_config(3, pos_embed_max_size=16), "sample_size": world.sample_size,
                  "joint_attention_dim": world.joint_attention_dim, "pooled_projection_dim": world.pooled_projection_dim}
        torch.manual_seed(0)
        pipe.transformer = models.build_component("transformer", config).requires_grad_(False).eval()
        return pipe

    monkeypatch.setattr(trainer_module, "load_pipeline", load)
    trainer = make_trainer(*OVERRIDES, fast=False)
    cfg = trainer.cfg
    tr = trainer.base_model
    blocks = tr.transformer_blocks
    assert (len(blocks), tr.config.num_attention_heads, tr.config.attention_head_dim, tr.inner_dim) == (3, 24, 64, 1536)
    assert blocks[0].use_dual_attention and blocks[1].use_dual_attention and not blocks[2].use_dual_attention
    assert blocks[2].context_pre_only and type(blocks[0].attn.norm_q).__name__ == "RMSNorm"
    assert tr.is_gradient_checkpointing
    pipe = trainer.pipe
    assert all(getattr(pipe, n) is not None for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    lora = {n: p.detach().clone() for n, p in tr.named_parameters() if p.requires_grad}
    assert not any(n.startswith("transformer_blocks.2.attn.add_q_proj.") for n in lora)  # dead: excluded

    row = trainer.train_iteration(0)

    assert row["rollouts/iter"] == 4
    assert all(math.isfinite(row[k]) for k in ("reward/mean", "grpo/loss", "grpo/grad_norm"))
    embeds = trainer.encoder.encode([p for p in trainer.encoder._cache][:1])
    t5_rows = embeds.embeds[0, -cfg.sampling.max_sequence_length:]
    assert t5_rows.abs().sum() > 0  # T5's part of the embedding, not the zeros of a dropped T5
    changed = [n for n, p in tr.named_parameters() if p.requires_grad and not torch.equal(p.detach(), lora[n])]
    # gaussian init: lora_B = 0, so B moves at the first step (A moves by weight decay only)
    assert {n for n in lora if "lora_B" in n} <= set(changed)
