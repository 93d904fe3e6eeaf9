"""Base model vs a run's LoRA, on the same prompts and seeds, each image scored by the
run's reward. The base model loads as the run loaded it (models.load_pipeline: its
quantization, dtype and text-encoder offload), the LoRA the way a user loads it:

    pipe.load_lora_weights("<run>/lora", adapter_name=...)
    pipe.set_adapters([...], adapter_weights=[scale])

and images come from the run's own evaluation sampler, so at scale 1 they are the run's
eval samples. On a GPU that a training run is using, Compare first checks that the model
fits beside it and refuses with the numbers if not.

torch and diffusers are imported on first use, so the rest of the app starts fast.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..config import load_yaml
from ..rundir import CONFIG_FILE, LORA_DIR, lora_file


class CompareRefused(RuntimeError):
    """Compare cannot run now (no room beside a training run); the message says why."""


@dataclass
class ComparedImage:
    prompt: str
    seed: int
    base_image: object  # PIL.Image
    lora_image: object
    base_reward: float
    lora_reward: float


def compare_need_bytes(config) -> int:
    """What Compare holds on the GPU: the frozen parts as the run places them plus one
    sampling step (the memory plan's static terms + its sample phase; the LoRA's optimizer
    terms make this a slight over-estimate)."""
    from ..memory import plan_for_config

    plan = plan_for_config(config)
    return plan.static_bytes + plan.phase_bytes("sample")


def check_room_beside(config, training_run: str | None, free_bytes: int) -> None:
    """Refuse when a training run holds the GPU and the model would not fit in what is free."""
    from ..vram import GIB

    need = compare_need_bytes(config)
    if training_run and need > free_bytes:
        raise CompareRefused(
            f"run {training_run!r} is training on this GPU: {free_bytes / GIB:.1f} GiB are free and Compare needs about "
            f"{need / GIB:.1f} GiB for {config.model.name_or_path} as the run loads it "
            f"(transformer_quant={config.model.transformer_quant}, text_encoder_3={config.model.text_encoder_3}). "
            "Stop the run (it checkpoints first) or compare when it has finished.")


class Comparer:
    """Keeps one base pipeline and the last run's adapter loaded between calls."""

    def __init__(self) -> None:
        self._pipe = None
        self._encoder = None
        self._base_key: tuple | None = None
        self._adapter: tuple | None = None  # (adapter name, lora dir, file mtime)
        self._rewards: dict[str, object] = {}
        self._lock = threading.Lock()

    def _load_base(self, cfg: dict, training_run: str | None):
        """The run's frozen pipeline and prompt encoder, loaded once per model config."""
        import dataclasses

        import torch

        from ..config import config_from_dict
        from ..embeddings import PromptEncoder
        from ..models import load_pipeline, resolve_device

        config = config_from_dict(cfg)
        device = resolve_device(config.model.device)
        key = (repr(dataclasses.asdict(config.model)), str(device))
        if self._base_key == key:
            return self._pipe, self._encoder
        self._pipe = self._encoder = self._adapter = self._base_key = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            check_room_beside(config, training_run, torch.cuda.mem_get_info(device)[0])
        pipe = load_pipeline(config.model, device)
        pipe.set_progress_bar_config(disable=True)
        encoder = PromptEncoder(pipe, device, config.sampling.max_sequence_length, config.memory.embed_cache_size)
        self._pipe, self._encoder, self._base_key = pipe, encoder, key
        return pipe, encoder

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
        pipe.load_lora_weights(str(run_path / LORA_DIR), adapter_name=name)
        self._adapter = (name, *key)
        return name

    def _reward(self, cfg: dict):
        from ..rewards.registry import build_reward

        spec = repr((cfg["reward"]["weights"], cfg["reward"].get("options")))
        if spec not in self._rewards:
            self._rewards[spec] = build_reward(cfg["reward"]["weights"], "cpu", cfg["reward"].get("options"))
        return self._rewards[spec]

    def compare(self, run_path: str | Path, prompts: list[str], seeds: list[int], lora_scale: float = 1.0,
                num_steps: int | None = None, guidance_scale: float | None = None,
                training_run: str | None = None) -> list[ComparedImage]:
        """One base and one LoRA image per (prompt, seed), the same initial noise for both.
        `training_run`: the run now training on this machine, if any (see check_room_beside)."""
        from ..evaluation import generate

        run_path = Path(run_path)
        cfg = load_yaml((run_path / CONFIG_FILE).read_text())
        sampling = cfg["sampling"]
        num_steps = int(num_steps or sampling["eval_num_steps"])
        guidance = float(sampling["eval_guidance_scale"] if guidance_scale is None else guidance_scale)
        pairs = [(p, s) for p in prompts for s in seeds]
        all_prompts, all_seeds = [p for p, _ in pairs], [int(s) for _, s in pairs]
        with self._lock:
            pipe, encoder = self._load_base(cfg, training_run)
            adapter = self._load_lora(pipe, run_path)

            def images(with_lora: bool) -> list:
                if with_lora:
                    pipe.enable_lora()
                    pipe.set_adapters([adapter], adapter_weights=[float(lora_scale)])
                else:
                    pipe.disable_lora()
                return generate(pipe, pipe.transformer, encoder, all_prompts, all_seeds, sampling["resolution"],
                                num_steps, guidance, int(sampling["micro_batch"]), cfg["memory"]["vae_decode"])

            base_images, lora_images = images(False), images(True)
            reward = self._reward(cfg)
            base_scores = reward(base_images, all_prompts).scores
            lora_scores = reward(lora_images, all_prompts).scores
        return [ComparedImage(p, s, b, l, float(rb), float(rl))
                for p, s, b, l, rb, rl in zip(all_prompts, all_seeds, base_images, lora_images, base_scores, lora_scores)]
