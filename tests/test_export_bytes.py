"""The same LoRA is written as the same files, whichever process writes it: every tensor and
every metadata value equal, every other file byte for byte. (safetensors orders a header's
metadata keys by a per-process hash of its own, so the header bytes themselves may differ.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

WRITE = """
import sys, torch
from pathlib import Path

from safetensors import safe_open
from peft import LoraConfig
from superflow_lite.export import write_lora_formats
modules = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj"]
config = LoraConfig(r=2, lora_alpha=4.0, target_modules=modules, exclude_modules=["blocks.1.attn.to_q", "blocks.1.attn.to_k"])
generator = torch.Generator().manual_seed(0)
state = {}
for m in modules:
    state[f"transformer_blocks.0.{m}.lora_A.weight"] = torch.randn(2, 8, generator=generator)
    state[f"transformer_blocks.0.{m}.lora_B.weight"] = torch.randn(8, 2, generator=generator)
out = Path(sys.argv[1])
out.mkdir(parents=True)
write_lora_formats(state, config, out / "lora", "card", "run")
"""


def content(path: Path):
    """A safetensors file's metadata and tensor bytes; any other file's bytes."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in sorted(f.keys())}


def written_files(tmp_path: Path, hash_seed: str) -> dict:
    out = tmp_path / f"hash{hash_seed}"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", WRITE, str(out)], env=env, check=True, capture_output=True)
    return {str(p.relative_to(out)): content(p) for p in sorted(out.rglob("*")) if p.is_file()}


def test_every_format_is_the_same_bytes_under_any_string_hashing(tmp_path):
    # PEFT keeps target_modules as a set, iterated in the order of the process's string hashes:
    # they reach the diffusers file's metadata and peft/adapter_config.json.
    first, second = written_files(tmp_path, "1"), written_files(tmp_path, "2")
    assert sorted(first) == sorted(second) and len(first) >= 4
    assert [name for name in first if first[name] != second[name]] == []
