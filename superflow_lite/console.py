"""What a person sees in the terminal: evaluation lines, a closing summary, and only the
library messages that are theirs to act on.

The trainer logs through the "superflow_lite" logger; the lines built here are plain text
so the same words reach the console, train.log and the app's log tail.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

# The evaluation metrics the console reports, with the words it uses for them.
EVAL_METRICS = {"eval/reward_mean": "test reward", "eval/strict_mean": "strict accuracy"}


def metric_words(split: str = "test") -> dict[str, str]:
    """EVAL_METRICS as a run evaluated on `prompts.eval_split` says them: a tuning run's
    numbers must never read as test figures."""
    scope = {"val": "validation", "pool": "trained-prompt"}.get(split, "test")
    return {key: words.replace("test", scope) for key, words in EVAL_METRICS.items()}

# Library notices that say nothing a user of this project can act on, by the logger that
# emits them and a fragment of the message. Everything else those loggers say still shows.
LIBRARY_NOTICES: dict[str, tuple[str, ...]] = {
    # transformers 5 without torchvision: image processors fall back to their PIL twin,
    # which is the one the reward models here are tested with.
    "transformers.utils.import_utils": ("requires torchvision (not installed)",),
    # bitsandbytes on CPUs with AVX512-BF16: an optional kernel package; its own path runs.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward",),
    # ...and, under HF_HUB_OFFLINE=1, the kernels package says why it did not ask the hub who
    # published that kernel before failing to find it in the cache.
    "kernels._internals.hf_hub": ("Skipping publisher trust check",),
    # bitsandbytes LLM.int8: casts bf16 activations to fp16, said once per matmul call.
    "bitsandbytes.autograd._functions": ("MatMul8bitLt: inputs will be cast",),
    # load_lora_weights on SD3 also looks for text-encoder keys; these LoRAs train only the
    # transformer. (The transformer's own "No LoRA keys" warning stays: it means a bad file.)
    "diffusers.loaders.lora_base": ("No LoRA keys associated to CLIPTextModel", "No LoRA keys associated to T5"),
}


class _DropNotices(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def filter_library_notices() -> None:
    """Drop LIBRARY_NOTICES at their loggers (idempotent; imports nothing heavy)."""
    for name, fragments in LIBRARY_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(fragments))


def hide_loading_bars() -> None:
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" bars:
    a fraction of a second each, and escape debris in log files and the app's log tail."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _changes(metrics: dict, baseline: dict | None, split: str = "test") -> list[str]:
    parts = []
    for key, words in metric_words(split).items():
        value = metrics.get(key)
        if value is None:
            continue
        text = f"{words} {value:.3f}"
        before = (baseline or {}).get(key)
        if before is not None and metrics is not baseline:
            text += f" ({value - before:+.3f} since step 0)"
        parts.append(text)
    return parts


def eval_line(step: int, total: int, metrics: dict, baseline: dict | None, split: str = "test") -> str:
    """`eval 5/20: test reward 0.781 (+0.030 since step 0), strict accuracy 0.458 (+0.042 since step 0)`."""
    parts = _changes(metrics, baseline, split) or ["no evaluation metrics"]
    return f"eval {step}/{total}: " + ", ".join(parts)


def iteration_line(iteration: int, total: int, row: dict) -> str:
    """`iteration 3/20 rollouts 8 reward 0.4375 loss -1.2e-02 clipfrac 0.000 (4.1s)`, with
    `kl` only when the run computes it (train.kl_beta > 0): a KL never computed is not 0."""
    parts = [f"iteration {iteration}/{total}", f"rollouts {row['rollouts/iter']}", f"reward {row['reward/mean']:.4f}"]
    if row.get("grpo/loss") is not None:
        parts.append(f"loss {row['grpo/loss']:.2e}")
    if row.get("grpo/kl") is not None:
        parts.append(f"kl {row['grpo/kl']:.2e}")
    parts.append(f"clipfrac {row.get('grpo/clipped', 0.0):.3f} ({row['perf/iter_s']:.1f}s)")
    return " ".join(parts)


def eval_started_line(step: int, num_images: int) -> str:
    return f"evaluating step {step} ({num_images} images) ..."


@dataclass
class RunSummary:
    """What a run ends by telling its user."""

    state: str  # "done" or "stopped"
    iterations: int
    total: int
    rollouts: int
    seconds: float
    baseline: dict | None  # the step-0 evaluation metrics
    final: dict | None  # the last evaluation's metrics
    final_step: int | None
    lora_dir: Path
    samples_dir: Path
    split: str = "test"  # prompts.eval_split: what the evaluation figures are figures of

    def lines(self) -> list[str]:
        head = f"{self.state} after {self.iterations}/{self.total} iterations, {self.rollouts} rollouts, in {format_duration(self.seconds)}"
        out = [head]
        for key, words in metric_words(self.split).items():
            before, after = (self.baseline or {}).get(key), (self.final or {}).get(key)
            if before is not None and after is not None and self.final_step:
                change = self.paired_change(key)
                detail = (f"{change.fmt()}, 95% paired bootstrap over {change.items} images" if change
                          else f"{after - before:+.3f}")
                out.append(f"{words}: {before:.3f} -> {after:.3f} ({detail}, step 0 -> {self.final_step})")
        out.append(f"LoRA: {self.lora_dir}")
        before = self.samples_dir / f"{0:06d}"
        if self.final_step:
            out.append(f"samples: {before} (before) and {self.samples_dir / f'{self.final_step:06d}'} (after)")
        elif self.final_step == 0:  # stopped before its first evaluation after step 0: there is no "after"
            out.append(f"samples: {before} (step 0 only; no evaluation ran after it)")
        return out


    def paired_change(self, key: str):
        """The change of an eval metric from step 0 to the final step, image by image: the same
        (prompt, seed) items with the same noise at both steps. None without both index files."""
        from .stats import paired_change

        metric = key.removeprefix("eval/").removesuffix("_mean")
        steps = [self.samples_dir / f"{step:06d}" for step in (0, self.final_step or 0)]
        if not all((d / "index.json").is_file() for d in steps):
            return None
        try:
            return paired_change(*steps, metric)
        except (KeyError, ValueError):  # an index without this metric, or no common items
            return None


def eval_scope_line(prompts: list[str], seeds: list[int], split: str) -> str:
    """What every evaluation of the run scores, said once at its start."""
    kind = {"pool": "trained prompts (fresh noise seeds)", "val": "validation prompts"}.get(split, "test prompts")
    consecutive = len(seeds) > 1 and seeds == list(range(seeds[0], seeds[0] + len(seeds)))
    span = f"{seeds[0]}-{seeds[-1]}" if consecutive else ", ".join(map(str, seeds))
    shown = "; ".join(prompts[:4]) + (f"; ... ({len(prompts) - 4} more)" if len(prompts) > 4 else "")
    return (f"evaluation: {len(prompts)} {kind} x {len(seeds)} seeds ({span}) = {len(prompts) * len(seeds)} images, "
            f"the same noise at every step: {shown}")


def evaluations(rows: list[dict]) -> tuple[dict | None, tuple[int, dict] | None]:
    """From metrics.jsonl rows: the step-0 evaluation and the latest (step, evaluation), so a
    resumed run still compares against its own step 0."""
    evals = [(int(r["iteration"]), eval_metrics(r)) for r in rows if r.get("eval/reward_mean") is not None]
    baseline = next((m for step, m in evals if step == 0), None)
    return baseline, (evals[-1] if evals else None)


def eval_metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("eval/")}
