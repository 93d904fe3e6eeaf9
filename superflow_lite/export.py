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

import copy
import dataclasses
import math
import shutil
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from .algorithms import ALGORITHM_NAMES
from .rundir import LORA_CARD, LORA_COMFYUI_DIR, LORA_FILE, LORA_PEFT_DIR, atomic_dir, read_samples

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
                name: str | None = None, images: dict[str, Path] | None = None) -> Path:
    """The transformer's LoRA in every format (write_lora_formats). Returns the diffusers file."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    return write_lora_formats(state, lora_config, out_dir, card, name or out_dir.parent.name, images)


def write_lora_formats(state: dict[str, torch.Tensor], lora_config: LoraConfig, out_dir: Path, card: str,
                       name: str, images: dict[str, Path] | None = None) -> Path:
    """Write every format of a PEFT LoRA state dict ("<module>.lora_A.weight" keys) into a
    fresh folder beside out_dir, then swap it in (`rundir.atomic_dir`), so a reader (the app,
    a user's loader) never sees a half-written LoRA. `images` ({name in the folder: source})
    are the model card's samples. Returns the diffusers file."""
    state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
    lora_config = with_sorted_sets(lora_config)
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
        save_file(comfyui_state(state, lora_config), str(tmp / COMFYUI_DIR / f"{name}.safetensors"),
                  metadata=comfyui_metadata(lora_config))
        for target, source in (images or {}).items():
            (tmp / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / target)
        (tmp / LORA_CARD).write_text(card)
    return out_dir / DIFFUSERS_FILE


def with_sorted_sets(lora_config: LoraConfig) -> LoraConfig:
    """A copy whose set-valued fields (target_modules, exclude_modules) are sorted lists: PEFT
    keeps them as sets, whose order follows Python's per-process string hashing, so the same
    LoRA would otherwise be written as different bytes by every process."""
    ordered = copy.copy(lora_config)
    for f in dataclasses.fields(ordered):
        value = getattr(ordered, f.name)
        if isinstance(value, (set, frozenset)):
            setattr(ordered, f.name, sorted(value))
    return ordered


def peft_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's adapter_model keys: the PeftModel wrapper's prefix before the module path."""
    return {PEFT_PREFIX + k: v for k, v in state.items()}


def lora_layers(transformer: torch.nn.Module, adapter: str = "default"):
    """(module path, lora_A [r, in], lora_B [out, r], scale) of every adapted linear layer."""
    for path, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            yield (path, module.lora_A[adapter].weight, module.lora_B[adapter].weight,
                   float(module.scaling[adapter]))


def lora_scale(lora_config: LoraConfig, rank: int) -> float:
    """The factor peft applies to up @ down (LoraLayer.scaling): alpha / r, or alpha / sqrt(r)
    with rsLoRA."""
    return lora_config.lora_alpha / (math.sqrt(rank) if lora_config.use_rslora else rank)


def comfyui_state(state: dict[str, torch.Tensor], lora_config: LoraConfig) -> dict[str, torch.Tensor]:
    """The kohya/ComfyUI layout: <prefix><path_with_underscores>.lora_down/.lora_up/.alpha,
    with alpha = scale * rank so loaders that apply alpha / rank get the trained scale."""
    out = {}
    for key, down in state.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[: -len(".lora_A.weight")]
        comfy = COMFYUI_PREFIX + path.replace(".", "_")
        out[f"{comfy}.lora_down.weight"] = down
        out[f"{comfy}.lora_up.weight"] = state[f"{path}.lora_B.weight"]
        out[f"{comfy}.alpha"] = torch.tensor(lora_scale(lora_config, down.shape[0]) * down.shape[0], dtype=torch.float32)
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


def samples_section(samples: list[tuple[str, str, str]], step: int | None) -> str:
    """Markdown: each eval prompt's step-0 image beside the same prompt and seed after training."""
    if not samples:
        return ""
    lines = ["## Samples", "", f"| prompt | step 0 (base) | step {step} (with this LoRA) |", "|---|---|---|"]
    lines += [f"| {caption} | ![step 0]({before}) | ![step {step}]({after}) |" for caption, before, after in samples]
    return "\n".join(lines) + "\n\n"


def card_samples(run_path: Path, step: int | None, count: int = 2) -> tuple[dict[str, Path], list[tuple[str, str, str]]]:
    """The model card's before/after images: the first `count` eval prompts at step 0 and at
    `step`, as ({file in the LoRA folder: source}, [(prompt and seed, before file, after file)])."""
    if not step:
        return {}, []
    after = {(r.get("prompt"), r.get("seed")): r for r in read_samples(run_path, step)}
    images, rows = {}, []
    for before in prompts_first(read_samples(run_path, 0)):
        later = after.get((before.get("prompt"), before.get("seed")))
        if later is None or len(rows) == count:
            continue
        b, a = f"samples/{len(rows)}-step0.png", f"samples/{len(rows)}-step{step}.png"
        images.update({b: Path(before["file"]), a: Path(later["file"])})
        rows.append((f"{before.get('prompt', '')} (seed {before.get('seed', '')})", b, a))
    return images, rows


def prompts_first(samples: list[dict]) -> list[dict]:
    """Each prompt's first sample, then the rest: two seeds of one prompt show less of what a
    LoRA learnt than two prompts do."""
    firsts, seen = [], set()
    for row in samples:
        if row.get("prompt") not in seen:
            seen.add(row.get("prompt"))
            firsts.append(row)
    return firsts + [r for r in samples if r not in firsts]


def model_card(cfg, name: str, summary=None, samples: list[tuple[str, str, str]] | None = None,
               step: int | None = None) -> str:
    """lora/README.md: what the LoRA is, how it was trained and how well, what it does to the
    eval prompts (`samples` from card_samples), and how to load it. `cfg` is the run's Config,
    `name` the run's; `summary` a console.RunSummary (None: no run yet); `step` the iteration
    of an intermediate LoRA (None: the run's final one)."""
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
    if step is not None:
        rows.append(("iteration", f"{step} (an intermediate LoRA of the run)"))
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
        + samples_section(samples or [], summary.final_step if summary is not None else None)
        + "## Files\n\n"
        f"- `{DIFFUSERS_FILE}`: diffusers, `pipe.load_lora_weights(<this folder>)`\n"
        f"- `{PEFT_DIR}/`: PEFT, `PeftModel.from_pretrained(pipe.transformer, <this folder>/{PEFT_DIR})`\n"
        f"- `{COMFYUI_DIR}/*.safetensors`: one file for ComfyUI and Forge (models/loras), with per-module alpha\n\n"
        "## Load\n\n```python\n" + loading_snippet(m.name_or_path, Path(".")) + "\n```\n"
    )


# ---------------------------------------------------------------------- from a checkpoint
USAGE = """python -m superflow_lite.export RUN_DIR [--step N]

Write a run's LoRA at a checkpointed iteration (default: the newest intact checkpoint) into
RUN_DIR/loras/<iteration>/, in lora/'s formats: the diffusers file, the PEFT adapter, the
ComfyUI/Forge file and the model card. Exit codes: 0 written, 2 bad input (the message says
what to fix)."""


class ExportError(Exception):
    """Bad input: the message says what to fix."""


def checkpoint_lora(state: dict, cfg) -> dict[str, torch.Tensor]:
    """The LoRA a checkpoint holds, as the trainer exports it: the EMA weights when the run
    keeps an EMA (its shadow follows the LoRA's parameter order, as the state dict does)."""
    lora = state["lora"]
    shadow = (state.get("ema") or {}).get("shadow")
    if cfg.train.ema and shadow is not None:
        return {key: ema.to(value.dtype) for (key, value), ema in zip(lora.items(), shadow)}
    return lora


def choose_checkpoint(run_path: Path, step: int | None) -> Path:
    from .rundir import checkpoint_iteration, intact_checkpoints

    intact = intact_checkpoints(run_path)
    if not intact:
        raise ExportError(f"{run_path} has no intact checkpoint to export; train it until its first "
                          "(output.checkpoint_every)")
    if step is None:
        return intact[0]
    by_step = {checkpoint_iteration(p): p for p in intact}
    if step not in by_step:
        have = ", ".join(str(s) for s in sorted(by_step))
        raise ExportError(f"--step {step}: {run_path} has no intact checkpoint at iteration {step} (it has: {have}); "
                          "to keep LoRAs of more iterations, train with output.save_lora_every")
    return by_step[step]


def run_config(run_path: Path):
    """The run's Config, from its config.yaml."""
    from .config import ConfigError, config_from_dict, read_config_file
    from .rundir import CONFIG_FILE

    if not (run_path / CONFIG_FILE).is_file():
        raise ExportError(f"{run_path}: no config.yaml there; give a run directory such as runs/<name>")
    try:
        return config_from_dict(read_config_file(run_path / CONFIG_FILE, "the run's config"))
    except ConfigError as err:
        raise ExportError(f"{run_path}: its config.yaml is broken: {err}") from None


def export_checkpoint(run_path: Path, cfg, step: int | None = None) -> Path:
    """Write the LoRA of `run_path`'s checkpoint at `step` (None: the newest intact one) into
    loras/<iteration>/. Returns that folder."""
    from .checkpoint import load_checkpoint
    from .models import make_lora_config
    from .rundir import RunDir, checkpoint_iteration

    checkpoint = choose_checkpoint(run_path, step)
    iteration = checkpoint_iteration(checkpoint)
    lora = checkpoint_lora(load_checkpoint(checkpoint), cfg)
    blocks = {int(k.split(".")[1]) for k in lora if k.startswith("transformer_blocks.")}
    lora_config = make_lora_config(cfg.model, max(blocks) + 1 if blocks else 0)
    name = run_path.name
    out = RunDir(run_path).intermediate_lora_dir(iteration)
    write_lora_formats(lora, lora_config, out, model_card(cfg, name, step=iteration), f"{name}-{iteration:06d}")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m superflow_lite.export", usage=USAGE)
    parser.add_argument("run", type=Path)
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's iteration (default: the newest)")
    args = parser.parse_args(argv)
    try:
        if not args.run.is_dir():
            raise ExportError(f"{args.run}: no such run directory; give one such as runs/<name>")
        cfg = run_config(args.run)
        out = export_checkpoint(args.run, cfg, args.step)
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"LoRA written to {out}\nLoad it with:\n\n{loading_snippet(cfg.model.name_or_path, out)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
