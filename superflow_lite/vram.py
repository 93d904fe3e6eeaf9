"""The GPU cards the presets are made for, and the card this machine has.

Each VRAM preset (12gb ... 80gb) targets a class of card: VRAM_TIERS says from how many
GiB a preset is chosen for `--preset auto`, CARD_GIB the memory of the smallest common
card of its class (what the memory plan budgets when no GPU is visible). The config
resolves `auto` here; the memory plan reads the same cards.
"""
from __future__ import annotations

import torch

GIB = 2**30
# (minimum usable GiB, preset): a preset is a target, not a cap.
VRAM_TIERS = [(70.0, "80gb"), (40.0, "48gb"), (21.0, "24gb"), (14.0, "16gb"), (10.0, "12gb")]
# total_memory of the smallest common card of each class (RTX 3060/4070, 4080, 4090, L40S, H100).
CARD_GIB = {"12gb": 11.99, "16gb": 15.99, "24gb": 23.99, "48gb": 44.99, "80gb": 79.65}


def detected_vram_gib() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / GIB


def auto_preset() -> str:
    """The largest preset whose tier fits the detected GPU; without one, the CPU's default
    job (tiny-focus: the shapes world on a task where RL's gain shows within minutes)."""
    vram = detected_vram_gib()
    for minimum, name in VRAM_TIERS:
        if vram >= minimum:
            return name
    return "tiny-focus"
