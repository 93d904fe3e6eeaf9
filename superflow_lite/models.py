"""Load the pipeline, put LoRA on the transformer, freeze the rest.

Two sources: the built-in tiny world model ('world') and any SD3-family diffusers model
(hub id or local dir, e.g. stabilityai/stable-diffusion-3.5-medium) with the transformer
quantized the normal diffusers way (BitsAndBytesConfig passed to from_pretrained).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig

from .config import ModelConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# diffusers' SD3 quantization docs: keep the output projection in high precision.
SKIP_QUANT_MODULES = ["proj_out"]


class ModelUnavailable(RuntimeError):
    """The base model cannot be loaded; the message says how to get it."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("model.device=cuda but no CUDA GPU is visible; use model.device=cpu with --preset tiny")
    return torch.device(requested)


def transformer_quantization_config(quant: str, compute_dtype: torch.dtype):
    """diffusers' BitsAndBytesConfig for the transformer, or None for full precision."""
    if quant == "none":
        return None
    from diffusers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANT_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=SKIP_QUANT_MODULES,
    )


def load_pipeline(cfg: ModelConfig, device: torch.device) -> StableDiffusion3Pipeline:
    """The frozen pipeline on `device`, transformer quantized per cfg.transformer_quant."""
    dtype = DTYPES[cfg.dtype]
    if cfg.name_or_path == "world":
        from .world.model import load_world_pipeline

        pipe = load_world_pipeline(torch_dtype=dtype)
    else:
        pipe = _load_pretrained(cfg, dtype)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.transformer):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    if cfg.transformer_quant == "none":
        pipe.transformer.to(device)
    pipe.vae.to(device)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        if encoder is not None and not getattr(encoder, "is_loaded_in_8bit", False):
            encoder.to(device)
    set_attention_backend(pipe.transformer, cfg.attention, device)
    return pipe


def _load_pretrained(cfg: ModelConfig, dtype: torch.dtype) -> StableDiffusion3Pipeline:
    from diffusers import SD3Transformer2DModel

    source = cfg.name_or_path
    if source.startswith(("/", ".")) and not Path(source).is_dir():
        raise ModelUnavailable(f"model.name_or_path {source!r} is not a directory")
    try:
        transformer = SD3Transformer2DModel.from_pretrained(
            source,
            subfolder="transformer",
            revision=cfg.revision,
            torch_dtype=dtype,
            quantization_config=transformer_quantization_config(cfg.transformer_quant, dtype),
        )
        extra = {}
        if cfg.text_encoder_3 == "drop":
            extra = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = StableDiffusion3Pipeline.from_pretrained(
            source, transformer=transformer, revision=cfg.revision, torch_dtype=dtype, **extra
        )
    except OSError as err:
        raise ModelUnavailable(
            f"cannot load {source!r}: {err}\nSD3.5-Medium is gated: accept its licence at "
            "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium, run `huggingface-cli login`, "
            "or download it and set model.name_or_path to the local directory."
        ) from None
    return pipe


def set_attention_backend(transformer: torch.nn.Module, backend: str, device: torch.device) -> None:
    if backend == "sdpa":
        return
    if device.type != "cuda":
        raise ModelUnavailable("model.attention=xformers needs a CUDA GPU; use model.attention=sdpa")
    try:
        import xformers  # noqa: F401
    except ImportError:
        raise ModelUnavailable(
            "model.attention=xformers but xformers is not installed: pip install -e '.[xformers]' "
            "(or use model.attention=sdpa)"
        ) from None
    transformer.enable_xformers_memory_efficient_attention()


def add_lora(transformer: torch.nn.Module, cfg: ModelConfig) -> LoraConfig:
    """LoRA adapters on the attention projections; only they train.

    Gaussian init zeroes lora_B, so the adapted model starts equal to the base model.
    """
    lora_config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=list(cfg.lora_targets),
    )
    transformer.add_adapter(lora_config)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if not any(p.requires_grad for p in transformer.parameters()):
        raise ValueError(f"model.lora_targets {cfg.lora_targets} matched no module of the transformer")
    return lora_config


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in transformer.parameters() if p.requires_grad]
