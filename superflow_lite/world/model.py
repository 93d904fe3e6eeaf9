"""The shapes world's tiny SD3: every component of StableDiffusion3Pipeline, shrunk.

Same architecture as SD3 (MMDiT transformer, 16-channel KL VAE, two CLIP-with-projection
encoders + T5, flow-matching Euler scheduler with shift 3), sized so that a 2-core CPU
trains it in minutes and a 40-step sample takes well under a second.

Shapes at WORLD_RESOLUTION = 64:
  image [B, 3, 64, 64] -> VAE (3 downsamplings, 8x as SD3) -> latents [B, 16, 8, 8]
  -> patch_size 1 -> 64 image tokens of width 128, joined with 16 CLIP + T5 text tokens.
The VAE does the drawing (each latent cell is an 8x8 pixel patch); the transformer
decides what goes where, which is what text-image binding and RL are about. Patch size 1
(SD3 uses 2 on its 128x128 latents): at 2, one token covered a whole 16x16-pixel shape and
the base model drew rounded blobs that were neither circles nor squares.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from .constants import WORLD_RESOLUTION  # re-exported: the model is built for it
from .tokenizers import CLIP_MAX_LENGTH, build_clip_tokenizer, build_t5_tokenizer

logger = logging.getLogger(__name__)

WORLD_MODEL_DIR: Path = Path(__file__).resolve().parent / "assets" / "tiny-sd3"

# 4 blocks = 3 downsamplings: 64 px -> 8x8 latents. Narrow at full resolution (8
# channels), where a VAE spends most of its compute; flat colours need no more.
VAE_BLOCKS = (8, 16, 32, 32)
VAE_FACTOR = 2 ** (len(VAE_BLOCKS) - 1)
LATENT_CHANNELS = 16  # as SD3
CLIP_HIDDEN = 32  # per CLIP; the two are concatenated (64) and padded to T5's width
CLIP_PROJECTION = 32  # per CLIP; pooled_projection_dim = 2 * 32
T5_WIDTH = 64  # = joint_attention_dim (SD3 pads CLIP features up to T5's width)
DIT_HEADS, DIT_HEAD_DIM, DIT_LAYERS = 4, 32, 4  # hidden 128


def _clip_config(vocab_size: int, bos_id: int, eos_id: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=2 * CLIP_HIDDEN,
        projection_dim=CLIP_PROJECTION,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,  # not 2, so pooling picks the first EOS (not argmax of ids)
        pad_token_id=eos_id,
    )


def build_transformer() -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=WORLD_RESOLUTION // VAE_FACTOR,  # latent side: the pipeline defaults to 64 px
        patch_size=1,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=DIT_LAYERS,
        attention_head_dim=DIT_HEAD_DIM,
        num_attention_heads=DIT_HEADS,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=DIT_HEADS * DIT_HEAD_DIM,
        pooled_projection_dim=2 * CLIP_PROJECTION,
        pos_embed_max_size=WORLD_RESOLUTION // VAE_FACTOR,  # 8x8 patch grid
    )


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        block_out_channels=VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=WORLD_RESOLUTION,
        # SD3 style: no 1x1 quant convs; latents = (z - shift) * scale. pretrain.py
        # re-measures both on the trained VAE so the latents have unit variance.
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )


def build_text_encoders() -> tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection, T5EncoderModel]:
    tokenizer = build_clip_tokenizer()
    config = _clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    clip_1 = CLIPTextModelWithProjection(config)
    clip_2 = CLIPTextModelWithProjection(config)
    t5_tokenizer = build_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=T5_WIDTH,
            d_kv=32,
            d_ff=2 * T5_WIDTH,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
            decoder_start_token_id=t5_tokenizer.pad_token_id,
            dropout_rate=0.0,  # trained in pretraining: no dropout keeps train and eval identical
        )
    )
    return clip_1, clip_2, t5


def build_tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A complete StableDiffusion3Pipeline with random weights (deterministic in `seed`)."""
    torch.manual_seed(seed)
    clip_1, clip_2, t5 = build_text_encoders()
    pipe = StableDiffusion3Pipeline(
        transformer=build_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=build_vae(),
        text_encoder=clip_1,
        tokenizer=build_clip_tokenizer(),
        text_encoder_2=clip_2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=build_t5_tokenizer(),
    )
    for module in (pipe.transformer, pipe.vae, clip_1, clip_2, t5):
        module.eval()
    return pipe


def load_world_pipeline(torch_dtype: torch.dtype = torch.float32) -> StableDiffusion3Pipeline:
    """The committed, pretrained world model; random weights (with a warning) if it is absent."""
    if (WORLD_MODEL_DIR / "model_index.json").is_file():
        return StableDiffusion3Pipeline.from_pretrained(WORLD_MODEL_DIR, dtype=torch_dtype)
    logger.warning(
        "world model not found at %s; using RANDOM weights (run `python -m "
        "superflow_lite.world.pretrain` to train one)",
        WORLD_MODEL_DIR,
    )
    return build_tiny_sd3_pipeline().to(dtype=torch_dtype)


def count_parameters(pipe: StableDiffusion3Pipeline) -> dict[str, int]:
    """Parameters per component, for reports and size checks."""
    names = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in names}
