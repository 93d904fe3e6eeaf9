"""The memory plan: which preset fits this machine."""
from __future__ import annotations

import torch

# (minimum usable GiB, preset): a preset is a target, not a cap.
VRAM_TIERS = [(70.0, "80gb"), (40.0, "48gb"), (21.0, "24gb"), (14.0, "16gb"), (10.0, "12gb")]


def detected_vram_gib() -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def auto_preset() -> str:
    """The largest preset whose tier fits the detected GPU; 'tiny' without a GPU."""
    vram = detected_vram_gib()
    for minimum, name in VRAM_TIERS:
        if vram >= minimum:
            return name
    return "tiny"
