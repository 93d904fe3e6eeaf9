"""The trained LoRA in the formats people load it with, written together and atomically:

    lora/pytorch_lora_weights.safetensors   diffusers: pipe.load_lora_weights("lora")
    lora/peft/                              PEFT: PeftModel.from_pretrained(transformer, "lora/peft")
    lora/comfyui/<run>.safetensors          ComfyUI / Forge single file, per-module .alpha
    lora/README.md                          the model card

Pitfalls this avoids: without the adapter metadata a LoRA with alpha != r reloads in
diffusers with scale 1.0; keys without the 'transformer.' (diffusers) or
'base_model.model.' (PEFT) prefix load as nothing with only a warning; a single file
without per-module '.alpha' tensors applies at scale 1 in ComfyUI (half strength for the
presets' alpha = 2r).
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .rundir import LORA_CARD, LORA_COMFYUI_DIR, LORA_FILE, LORA_PEFT_DIR, atomic_dir

# The names are the run contract's (rundir.LORA_PARTS): a resume re-exports an incomplete LoRA.
DIFFUSERS_FILE = LORA_FILE
PEFT_DIR = LORA_PEFT_DIR
COMFYUI_DIR = LORA_COMFYUI_DIR
# ComfyUI maps SD3 LoRA keys named after the diffusers module path with this prefix
# (OneTrainer's layout; comfy/lora.py, model_lora_keys_unet) onto its MMDiT weights,
# and reads each module's strength as <key>.alpha / rank.
COMFYUI_PREFIX = "lora_transformer_"
PEFT_PREFIX = "base_model.model."


def export_lora(transformer: torch.nn.Module, lora_config: LoraConfig, out_dir: Path, card: str,
                name: str | None = None) -> Path:
    """Write every format into a fresh folder beside out_dir, then swap it in
    (`rundir.atomic_dir`), so a reader (the app, a user's loader) never sees a half-written
    LoRA. Returns the diffusers file."""
    name = name or out_dir.parent.name
    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    with atomic_dir(out_dir) as tmp:
        StableDiffusion3Pipeline.save_lora_weights(
            save_directory=str(tmp),
            transformer_lora_layers=state,
            transformer_lora_adapter_metadata=lora_config.to_dict(),
            safe_serialization=True,
        )
        (tmp / PEFT_DIR).mkdir()
        lora_config.save_pretrained(str(tmp / PEFT_DIR))
        save_file(peft_state(state), str(tmp / PEFT_DIR / "adapter_model.safetensors"))
        (tmp / COMFYUI_DIR).mkdir()
        save_file(comfyui_state(transformer), str(tmp / COMFYUI_DIR / f"{name}.safetensors"),
                  metadata=comfyui_metadata(lora_config))
        (tmp / LORA_CARD).write_text(card)
    return out_dir / DIFFUSERS_FILE


def peft_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's adapter_model keys: the PeftModel wrapper's prefix before the module path."""
    return {PEFT_PREFIX + k: v for k, v in state.items()}


def lora_layers(transformer: torch.nn.Module, adapter: str = "default"):
    """(module path, lora_A [r, in], lora_B [out, r], scale) of every adapted linear layer."""
    for path, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            yield (path, module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                   float(module.scaling[adapter]))


def comfyui_state(transformer: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The kohya/ComfyUI layout: <prefix><path_with_underscores>.lora_down/.lora_up/.alpha,
    with alpha = scale * rank so loaders that apply alpha / rank get the trained scale."""
    out = {}
    for path, down, up, scale in lora_layers(transformer, adapter):
        key = COMFYUI_PREFIX + path.replace(".", "_")
        out[f"{key}.lora_down.weight"] = down.detach().float().cpu().contiguous()
        out[f"{key}.lora_up.weight"] = up.detach().float().cpu().contiguous()
        out[f"{key}.alpha"] = torch.tensor(scale * down.shape[0], dtype=torch.float32)
    return out


def comfyui_metadata(lora_config: LoraConfig) -> dict[str, str]:
    """kohya's ss_* fields, which Forge and model browsers show."""
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(lora_config.r),
            "ss_network_alpha": str(lora_config.lora_alpha), "ss_base_model_version": "sd3"}


def loading_snippet(base_model: str, lora_dir: Path) -> str:
    if base_model == "world":
        load = (
            "from superflow_lite.world.model import WORLD_MODEL_DIR\n"
            "pipe = StableDiffusion3Pipeline.from_pretrained(WORLD_MODEL_DIR)"
        )
    else:
        load = f"pipe = StableDiffusion3Pipeline.from_pretrained({base_model!r})"
    return f"from diffusers import StableDiffusion3Pipeline\n{load}\npipe.load_lora_weights({str(lora_dir)!r})"


ALGORITHM_NAMES = {"superflow": "SuperFlow GRPO", "flow_grpo": "Flow-GRPO"}


def model_card(cfg, name: str, summary=None) -> str:
    """lora/README.md: what the LoRA is, how it was trained and how well, and how to load it.
    `cfg` is the run's Config, `name` the run's; `summary` a console.RunSummary (None: no run yet)."""
    from .console import metric_words

    m = cfg.model
    base = "the built-in shapes world (superflow_lite.world)" if m.name_or_path == "world" else f"`{m.name_or_path}`"
    weights = ", ".join(f"{k} x{v:g}" for k, v in cfg.reward.weights.items())
    rows = [
        ("base model", base),
        ("LoRA", f"rank {m.lora_rank}, alpha {m.lora_alpha:g} (scale {m.lora_alpha / m.lora_rank:g})"),
        ("targets", ", ".join(f"`{t}`" for t in m.lora_targets)),
        ("algorithm", f"{ALGORITHM_NAMES.get(cfg.algorithm, cfg.algorithm)} (`algorithm={cfg.algorithm}`)"),
        ("reward", weights),
        ("prompts", f"`{cfg.prompts.source}`"),
    ]
    if summary is not None:
        rows.append(("iterations", f"{summary.iterations} of {summary.total}, {summary.rollouts} rollouts"))
        for key, words in metric_words(summary.split).items():
            before, after = (summary.baseline or {}).get(key), (summary.final or {}).get(key)
            if before is not None and after is not None:
                rows.append((f"final eval: {words}", f"{before:.3f} -> {after:.3f} (step 0 -> {summary.final_step})"))
    front = ["---", "library_name: diffusers", "tags: [lora, text-to-image, sd3, reinforcement-learning]"]
    if m.name_or_path != "world":
        front.insert(1, f"base_model: {m.name_or_path}")
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "\n".join(front + ["---", ""])
        + f"\n# {name}: a LoRA trained with superflow_lite\n\n| | |\n|---|---|\n{table}\n\n"
        "## Files\n\n"
        f"- `{DIFFUSERS_FILE}`: diffusers, `pipe.load_lora_weights(<this folder>)`\n"
        f"- `{PEFT_DIR}/`: PEFT, `PeftModel.from_pretrained(pipe.transformer, <this folder>/{PEFT_DIR})`\n"
        f"- `{COMFYUI_DIR}/*.safetensors`: one file for ComfyUI and Forge (models/loras), with per-module alpha\n\n"
        "## Load\n\n```python\n" + loading_snippet(m.name_or_path, Path(".")) + "\n```\n"
    )
