"""Measured GPU peak of one real training iteration per preset, beside the plan's prediction.

    python benchmarks/gpu_memory.py                         # all presets that fit this GPU
    python benchmarks/gpu_memory.py --presets 24gb,16gb --workdir /scratch/sd35-random

Needs a CUDA GPU and ~40 GB of disk; no download. It builds SD3.5-Medium with random
weights from the published configs (superflow_lite.models.SD35_MEDIUM; the world's small
tokenizers stand in for CLIP's and T5's), saves it as a diffusers directory once, and for each
preset runs `python -m superflow_lite.train --preset P` for one iteration in a fresh process
(model.name_or_path = that directory; the reward is jpeg_compressibility on the CPU, since the
reward models cannot be downloaded; the plan is computed with the same overrides). It records
torch's peak allocated and reserved bytes, the CUDA context, and the plan's prediction in
benchmarks/gpu_memory_results.json. Random weights give the same shapes, hence the same
memory, as the real checkpoint. It has not been run yet (docs/MEMORY.md).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).resolve().parent / "gpu_memory_results.json"
PRESETS = ["12gb", "16gb", "24gb", "48gb", "80gb"]
OVERRIDES = [  # one short iteration; the reward models cannot be downloaded here
    "train.iterations=1", "prompts.num_eval_prompts=1", "sampling.eval_num_steps=2",
    "reward.weights={jpeg_compressibility: 1.0}", "reward.device=cpu", "output.checkpoint_every=1000",
]


def build_random_sd35(path: Path) -> None:
    """SD3.5-Medium with random bf16 weights, saved as a diffusers directory."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    from superflow_lite.models import SD35_MEDIUM, build_component
    from superflow_lite.world.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    parts = {}
    for name, config in SD35_MEDIUM.items():  # the library's own random init, then bf16 (~2 min, ~40 GB RAM)
        parts[name] = build_component(name, config).to(torch.bfloat16)
    clip_tokenizers = [build_clip_tokenizer(), build_clip_tokenizer()]
    for tok in clip_tokenizers:
        tok.model_max_length = 77  # SD3's CLIP length, so the text sequence is the real 77 + T5 tokens
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), tokenizer=clip_tokenizers[0],
        tokenizer_2=clip_tokenizers[1], tokenizer_3=build_t5_tokenizer(), **parts)
    pipe.save_pretrained(path)


def child(preset: str, model_dir: str, run_dir: str) -> dict:
    """One iteration in this process; returns torch's peak figures."""
    import torch

    from superflow_lite.train import main

    torch.zeros(1, device="cuda")  # creates the CUDA context
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()  # the context (and any other process)
    t0 = time.perf_counter()
    code = main(["--preset", preset, "--output", run_dir, "--no-progress", f"model.name_or_path={model_dir}", *OVERRIDES])
    return {"exit_code": code, "seconds": round(time.perf_counter() - t0, 1),
            "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "context_gib": context / 2**30, "card_gib": total / 2**30}


def predicted(preset: str, model_dir: str) -> dict:
    from superflow_lite.config import build_config
    from superflow_lite.memory import GIB, plan_for_config

    cfg = build_config(preset, overrides=[f"model.name_or_path={model_dir}", *OVERRIDES])
    plan = plan_for_config(cfg)
    return {"predicted_peak_gib": plan.peak_bytes / GIB, "predicted_phase": plan.peak_phase,
            "predicted_static_gib": plan.static_bytes / GIB, "fits": plan.fits,
            "micro_batches": [plan.sample_micro_batch, plan.train_micro_batch], "rollout_cap": plan.rollout_cap}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--workdir", default="/tmp/superflow-sd35-random")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "MODEL_DIR", "RUN_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu_memory.py needs a CUDA GPU (none is visible here); the plan's figures stay "
              "predictions until it runs: python -m superflow_lite.train --preset 24gb --plan", file=sys.stderr)
        return 2
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return 0
    workdir = Path(args.workdir)
    model_dir = workdir / "sd35-medium-random"
    if not (model_dir / "model_index.json").is_file():
        print(f"building random-weight SD3.5-Medium in {model_dir} ...", flush=True)
        build_random_sd35(model_dir)
    card = torch.cuda.get_device_properties(0).total_memory / 2**30
    results = {"device": torch.cuda.get_device_name(0), "card_gib": card, "torch": torch.__version__, "presets": {}}
    for preset in args.presets.split(","):
        row = predicted(preset, str(model_dir))
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}
        proc = subprocess.run([sys.executable, __file__, "--child", preset, str(model_dir), str(workdir / "runs" / preset)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        row.update(json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-2000:]})
        if "max_reserved_gib" in row:
            row["measured_peak_gib"] = row["max_reserved_gib"] + row["context_gib"]
            row["measured_over_predicted"] = row["measured_peak_gib"] / row["predicted_peak_gib"]
        results["presets"][preset] = row
        print(preset, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
