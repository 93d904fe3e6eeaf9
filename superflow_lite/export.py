"""Export the LoRA for diffusers (pipe.load_lora_weights(dir)) and as a PEFT adapter.

Pitfalls this avoids: without the adapter metadata a LoRA with alpha != r reloads with
scale 1.0 (silently wrong images); keys without the 'transformer.' prefix load as nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"


def export_lora(
    transformer: torch.nn.Module, lora_config: LoraConfig, out_dir: Path, base_model: str
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    StableDiffusion3Pipeline.save_lora_weights(
        save_directory=str(out_dir),
        transformer_lora_layers=state,
        transformer_lora_adapter_metadata=lora_config.to_dict(),
        safe_serialization=True,
    )
    peft_dir = out_dir / "peft"
    peft_dir.mkdir(exist_ok=True)
    lora_config.save_pretrained(str(peft_dir))
    save_file(state, str(peft_dir / "adapter_model.safetensors"))
    (out_dir / "README.md").write_text(model_card(base_model, lora_config))
    return out_dir / DIFFUSERS_FILE


def loading_snippet(base_model: str, lora_dir: Path) -> str:
    if base_model == "world":
        load = (
            "from superflow_lite.world.model import WORLD_MODEL_DIR\n"
            "pipe = StableDiffusion3Pipeline.from_pretrained(WORLD_MODEL_DIR)"
        )
    else:
        load = f"pipe = StableDiffusion3Pipeline.from_pretrained({base_model!r})"
    return f"from diffusers import StableDiffusion3Pipeline\n{load}\npipe.load_lora_weights({str(lora_dir)!r})"


def model_card(base_model: str, lora_config: LoraConfig) -> str:
    return (
        "# LoRA trained with superflow_lite (SuperFlow GRPO)\n\n"
        f"- base model: `{base_model}`\n"
        f"- rank {lora_config.r}, alpha {lora_config.lora_alpha}, targets {sorted(lora_config.target_modules)}\n\n"
        "## Load\n\n```python\n" + loading_snippet(base_model, Path(".")) + "\n```\n"
    )
