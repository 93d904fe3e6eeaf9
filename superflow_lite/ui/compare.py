"""Base model vs a run's LoRA, on the same prompts and seeds, each image scored by the
run's reward. The LoRA is loaded the way a user loads it (export.loading_snippet):

    pipe = StableDiffusion3Pipeline.from_pretrained(<the run's base model>)
    pipe.load_lora_weights("<run>/lora", adapter_name=...)
    pipe.set_adapters([...], adapter_weights=[scale])

torch and diffusers are imported on first use, so the rest of the app starts fast.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from .runs import lora_file


@dataclass
class ComparedImage:
    prompt: str
    seed: int
    base_image: object  # PIL.Image
    lora_image: object
    base_reward: float
    lora_reward: float


class Comparer:
    """Keeps one base pipeline and the last run's adapter loaded between calls."""

    def __init__(self) -> None:
        self._pipe = None
        self._base_key: tuple | None = None
        self._adapter: tuple | None = None  # (adapter name, lora dir, file mtime)
        self._rewards: dict[str, object] = {}
        self._lock = threading.Lock()

    def _load_base(self, cfg: dict):
        import torch

        model = cfg["model"]
        device = "cuda" if torch.cuda.is_available() and model.get("device") != "cpu" else "cpu"
        dtype = getattr(torch, model.get("dtype", "float32")) if device == "cuda" else torch.float32
        key = (model["name_or_path"], model.get("revision"), device, str(dtype))
        if self._base_key == key:
            return self._pipe
        self._pipe, self._adapter = None, None
        if model["name_or_path"] == "world":
            from ..world.model import load_world_pipeline

            pipe = load_world_pipeline(torch_dtype=dtype)
        else:
            from diffusers import StableDiffusion3Pipeline

            pipe = StableDiffusion3Pipeline.from_pretrained(model["name_or_path"], revision=model.get("revision"),
                                                            dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._base_key = pipe.to(device), key
        return pipe

    def _load_lora(self, pipe, run_path: Path) -> str:
        weights = lora_file(run_path)
        if weights is None:
            raise FileNotFoundError(f"run {run_path.name!r} has no exported LoRA yet "
                                    "(it is written when a run stops or ends)")
        key = (str(run_path), weights.stat().st_mtime_ns)
        if self._adapter and self._adapter[1:] == key:
            return self._adapter[0]
        if self._adapter:
            pipe.delete_adapters([self._adapter[0]])
        name = f"run{abs(hash(key)) % 10**8}"  # adapter names must be unique per load
        pipe.load_lora_weights(str(run_path / "lora"), adapter_name=name)
        self._adapter = (name, *key)
        return name

    def _reward(self, cfg: dict):
        from ..rewards.registry import build_reward

        spec = repr((cfg["reward"]["weights"], cfg["reward"].get("options")))
        if spec not in self._rewards:
            self._rewards[spec] = build_reward(cfg["reward"]["weights"], "cpu", cfg["reward"].get("options"))
        return self._rewards[spec]

    def compare(self, run_path: str | Path, prompts: list[str], seeds: list[int], lora_scale: float = 1.0,
                num_steps: int | None = None, guidance_scale: float | None = None) -> list[ComparedImage]:
        """One base and one LoRA image per (prompt, seed), the same initial noise for both."""
        import torch

        run_path = Path(run_path)
        cfg = yaml.safe_load((run_path / "config.yaml").read_text())
        sampling = cfg["sampling"]
        num_steps = int(num_steps or sampling["eval_num_steps"])
        guidance = float(sampling["eval_guidance_scale"] if guidance_scale is None else guidance_scale)
        pairs = [(p, s) for p in prompts for s in seeds]
        all_prompts, all_seeds = [p for p, _ in pairs], [s for _, s in pairs]
        with self._lock:
            pipe = self._load_base(cfg)
            adapter = self._load_lora(pipe, run_path)

            def generate(with_lora: bool) -> list:
                if with_lora:
                    pipe.enable_lora()
                    pipe.set_adapters([adapter], adapter_weights=[float(lora_scale)])
                else:
                    pipe.disable_lora()
                generators = [torch.Generator().manual_seed(int(s)) for s in all_seeds]
                return pipe(prompt=all_prompts, num_inference_steps=num_steps, guidance_scale=guidance,
                            height=sampling["resolution"], width=sampling["resolution"], generator=generators,
                            max_sequence_length=sampling["max_sequence_length"]).images

            base_images, lora_images = generate(False), generate(True)
            reward = self._reward(cfg)
            base_scores = reward(base_images, all_prompts).scores
            lora_scores = reward(lora_images, all_prompts).scores
        return [ComparedImage(p, s, b, l, float(rb), float(rl))
                for p, s, b, l, rb, rl in zip(all_prompts, all_seeds, base_images, lora_images, base_scores, lora_scores)]
