"""Where the frozen text encoders live: on the accelerator, in 8-bit, streamed from the CPU, or not at all.

model.text_encoder_3 (T5-XXL, 4.76 B params, 9.5 GB in bf16):
  resident       on the accelerator in cfg.dtype
  resident_8bit  on the accelerator in LLM.int8 (transformers keeps T5's `wo` projections in
                 cfg.dtype: they are its _keep_in_fp32_modules), ~5.9 GB
  offload        kept on the CPU; each layer is copied to the accelerator for its own forward
                 (accelerate's cpu_offload hooks), so an encode holds one layer there at a time
  drop           not loaded: the pipeline feeds zero T5 embeddings (77 tokens)
model.clip_encoders: resident | offload, the same way for CLIP-L and CLIP-G.
Prompt embeddings are cached on the CPU by embeddings.PromptEncoder, so encoders run only
for prompts not seen before.
"""
from __future__ import annotations

import torch

from .config import ModelConfig

# transformers does not convert these T5 modules to int8 (T5's _keep_in_fp32_modules).
T5_INT8_SKIP = ("wo",)


def t5_quantization_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def pretrained_t5_kwargs(cfg: ModelConfig, source: str, dtype: torch.dtype, device_map: dict) -> dict:
    """Keyword arguments for StableDiffusion3Pipeline.from_pretrained that realise cfg.text_encoder_3."""
    if cfg.text_encoder_3 == "drop":
        return {"text_encoder_3": None, "tokenizer_3": None}
    if cfg.text_encoder_3 != "resident_8bit":
        return {}
    from transformers import T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(
        source, subfolder="text_encoder_3", revision=cfg.revision, torch_dtype=dtype,
        quantization_config=t5_quantization_config(), device_map=device_map,
    )
    return {"text_encoder_3": t5}


def stream_from_cpu(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Keep `module`'s weights on the CPU; hooks copy each layer to `device` for its forward
    and drop it after (accelerate.cpu_offload, as diffusers' sequential offload)."""
    from accelerate import cpu_offload

    module.to("cpu")
    cpu_offload(module, execution_device=device)
    module._superflow_streamed = True
    return module


def is_streamed(module: torch.nn.Module | None) -> bool:
    return bool(getattr(module, "_superflow_streamed", False))


def place_text_encoders(pipe, cfg: ModelConfig, device: torch.device) -> None:
    """Put CLIP-L, CLIP-G and T5 where cfg says; call once, after loading."""
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        if encoder is None:
            continue
        if cfg.clip_encoders == "offload":
            stream_from_cpu(encoder, device)
        else:
            encoder.to(device)
    t5 = pipe.text_encoder_3
    mode = cfg.text_encoder_3
    if mode == "drop":
        pipe.text_encoder_3, pipe.tokenizer_3 = None, None
    elif t5 is None:
        raise ValueError(
            f"model.text_encoder_3={mode} but the pipeline has no T5 encoder; use model.text_encoder_3=drop"
        )
    elif mode == "offload":
        stream_from_cpu(t5, device)
    elif mode == "resident_8bit":
        if not getattr(t5, "is_loaded_in_8bit", False):
            raise ValueError("model.text_encoder_3=resident_8bit: T5 was not loaded in 8-bit (load through models.load_pipeline)")
    else:
        t5.to(device)
