"""One typed config tree: the only copy of every default, documented once.

Resolution order (later wins): defaults < preset (superflow_lite/presets/<name>.yaml) < --config FILE <
dotted CLI overrides (train.lr=1e-4). Every value is validated against the dataclass
types below; a bad value raises ConfigError naming the key and the valid choices.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Inside the package, so an installed wheel finds its built-in presets without the source tree.
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# SD3 was trained with at most 512 T5 tokens; its tokenizer and position bias stop there.
MAX_T5_TOKENS = 512
DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# Bounds on what a user's YAML may hold. A config is a few hundred values; these are far
# above any real one and far below what hangs a check: YAML aliases can nest a document of
# a few hundred bytes into 10^9 values (an "alias bomb"), and PyYAML reads ~1 MB/s.
MAX_YAML_VALUES = 100_000
MAX_OVERRIDE_CHARS = 10_000
MAX_CONFIG_FILE_BYTES = 1_000_000
# What an error message echoes of a user's value: enough to recognise it, one line long.
MAX_ECHO_CHARS = 80

log = logging.getLogger("superflow_lite")


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what to change."""


# Keys read under an older name for one release, with a warning: configs and runs written
# with the old name keep working while their owners rename them. Runs write the new names.
RENAMED_KEYS = {
    "superflow.prompts_per_iter": "batch.prompts_per_iter",
    "superflow.group_size": "batch.group_size",
    "superflow.rollout_cap": "batch.rollout_cap",
}
# Keys that no longer change anything, accepted (and ignored) for one release, with a warning.
RETIRED_KEYS = {"output.log_every": "the trainer logs every iteration"}
# Keys removed because a value of theirs was harmful: the value that kept the current behaviour
# (the old default, in every run's config.yaml) is accepted and ignored like a retired key;
# any other is refused with the reason and what to set instead.
REMOVED_KEYS = {
    "train.cfg_in_training": (True, "the update without CFG on rollouts sampled with CFG is off-policy from its "
                              "first step and collapses the model (benchmarks/RESULTS.md, 'The update without "
                              "CFG'); to train without CFG, sample without it: sampling.guidance_scale=1 "
                              "(the update then has no unconditional branch either)"),
}


@dataclass
class ModelConfig:
    name_or_path: str = "world"
    """'world' = the built-in tiny SD3 model; else a hub id (stabilityai/stable-diffusion-3.5-medium) or a local diffusers dir."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the base model; None = the default branch."""
    transformer_quant: Literal["none", "int8", "nf4"] = "none"
    """Transformer weights: bf16/fp32 ('none'), bitsandbytes LLM.int8 or nf4 (QLoRA)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the frozen weights. SDE math always runs in float32."""
    text_encoder_3: Literal["resident", "resident_8bit", "offload", "drop"] = "resident"
    """T5: kept on the accelerator, kept in 8-bit, moved to CPU between encodings, or not loaded (zero embeddings)."""
    clip_encoders: Literal["resident", "offload"] = "resident"
    """CLIP-L/G: kept on the accelerator, or moved to the CPU between encodings (~1.6 GB less on SD3.5-M)."""
    attention: Literal["sdpa", "xformers"] = "sdpa"
    """xformers needs CUDA and the [xformers] extra; torch's SDPA works everywhere."""
    gradient_checkpointing: bool = True
    """Recompute block activations in backward: ~half the activation memory for ~30% more compute."""
    lora_rank: int = 8
    """r of the LoRA matrices: adapter size and capacity (Flow-GRPO uses 32 on SD3.5-M)."""
    lora_alpha: float = 16.0
    """alpha: the update is scaled by alpha/r, so changing r keeps the step size comparable."""
    lora_targets: list[str] = field(
        default_factory=lambda: [
            "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
            "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
        ]
    )
    """Module-name suffixes that get LoRA: SD3's joint-attention projections."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs; auto = CUDA when visible, else the CPU (tiny preset only)."""


@dataclass
class SamplingConfig:
    resolution: int = 64
    """Image side in pixels (a multiple of 16: VAE factor 8 x patch size 2)."""
    num_steps: int = 10
    """Denoising steps T of a training rollout (Flow-GRPO: 10)."""
    guidance_scale: float = 4.5
    """Classifier-free guidance w of training rollouts (Flow-GRPO: 4.5)."""
    noise_level: float = 0.7
    """a in sigma_t = a*sqrt(s/(1-s)) (ALGORITHM.md 1); 0 gives the ODE sampler."""
    group_noise: Literal["independent", "shared"] = "independent"
    """independent: each rollout its own initial noise (Flow-GRPO); shared: a group starts from one
    noise (DanceGRPO's init_same_noise), so its reward spread comes only from the SDE noise the
    policy gradient credits (ALGORITHM.md 1)."""
    micro_batch: int = 8
    """Rollouts per sampling forward pass (doubled inside by CFG)."""
    max_sequence_length: int = 128
    """T5 tokens per prompt (Flow-GRPO: 128)."""
    eval_num_steps: int = 40
    """Denoising steps of the eval samples: the deterministic ODE sampler a user would run."""
    eval_guidance_scale: float = 4.5
    """CFG w of the eval samples."""


@dataclass
class BatchConfig:
    """What one iteration samples, under either algorithm."""

    prompts_per_iter: int = 8
    """B: prompts drawn per iteration."""
    group_size: int = 8
    """G: rollouts per prompt of a fixed group (flow_grpo; superflow with dynamic_groups off)."""
    rollout_cap: int = 64
    """R: most rollouts per iteration (ALGORITHM.md 5); 0 = take it from the memory plan."""


@dataclass
class SuperFlowConfig:
    """SuperFlow's additions to Flow-GRPO (ALGORITHM.md 3 and 4); flow_grpo reads none of them."""

    dynamic_groups: bool = True
    """Variance-aware group sizes (ALGORITHM.md 3); off = fixed group_size."""
    m_max: int = 12
    """Group size of the most uncertain bin."""
    m_min: int = 4
    """Group size of the least uncertain bin (>= 2 with the group-mean baseline)."""
    num_bins: int = 4
    """K: uncertainty bins between m_max and m_min."""
    baseline: Literal["tracker", "group_mean"] = "tracker"
    """b_i in A_i = r_i - b_i (ALGORITHM.md 4): the prompt's tracker value v_c before this iteration
    (a first visit uses its group mean), or the group mean as Flow-GRPO."""
    step_weights: Literal["sigma", "sigma_sqrt_dt", "none"] = "sigma"
    """Per-step advantage weights along the flow (ALGORITHM.md 4); none = Flow-GRPO."""
    rho: float = 0.875
    """Discount of the per-prompt Beta trackers."""
    adaptive_rho: bool = False
    """rho = clip(2^(-D/d_half), 0.875, 0.96) from the policy drift D."""
    d_half: float = 0.01
    """D_half of adaptive rho: the drift (mean k3 KL per step) that halves old evidence's weight."""
    weight_floor: float = 0.05
    """epsilon in w_c = sqrt(v(1-v)) + epsilon: every prompt keeps a chance."""
    allocation: Literal["bins", "probe"] = "bins"
    """How dynamic groups are sized (ALGORITHM.md 3): bins from the trackers before sampling, or
    probe (streaming-to-group): probe_size rollouts per prompt, then the rest of R where the
    probes' reward variance is highest. Off by default: on the shapes world it buys nothing
    measurable (benchmarks/RESULTS.md)."""
    probe_size: int = 2
    """Rollouts per prompt in the probe phase: 2 is the fewest that show a variance; more are
    added to the most uncertain prompts to fill whole sampling micro-batches."""
    variance_prior: float = 1.0
    """kappa: pseudo degrees of freedom of the probe variance's shrinkage toward the tracker's
    v(1-v) (unseen: 0.25); 1 weighs the prior like a second probe pair; 0 = probes alone."""
    step_credit: Literal["none", "x0_value"] = "none"
    """Per-step credit (ALGORITHM.md 4): x0_value scores the decoded one-step prediction
    x0 = x_t - s_t v_t at each step and credits each step with the value change it caused."""
    step_credit_mix: float = 0.5
    """lambda in A_it = (1 - lambda) w_t A_i + lambda K D_it; 0 = the trajectory advantage alone."""
    credit_every: int = 1
    """Score x0 every k-th step (1 = all); unscored steps share their interval's credit. A k-fold
    cut of the extra decodes and reward calls, for costly rewards."""


@dataclass
class TrainConfig:
    iterations: int = 20
    """Iterations of sample -> reward -> update; a resume may raise it."""
    lr: float = 3e-4
    """AdamW learning rate of the LoRA (Flow-GRPO on SD3.5-M: 3e-4; the shapes world is tuned to 1e-3)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant: lr at every iteration (Flow-GRPO). cosine: from lr at the first iteration down to
    lr_final_frac x lr at the last, so a run that has found its gain stops wandering away from
    it. The cosine's horizon is train.iterations: raising it on a resume changes the rest of the
    curve (the next iteration's lr is read off the new, longer one)."""
    lr_final_frac: float = 0.1
    """The cosine schedule's last lr as a fraction of lr (0 = decay to zero)."""
    weight_decay: float = 1e-4
    """AdamW weight decay of the LoRA (Flow-GRPO: 1e-4)."""
    grad_clip: float = 1.0
    """Max global norm of the LoRA gradient before each optimizer step (Flow-GRPO: 1.0)."""
    clip_range: float = 1e-4
    """eps of the clipped ratio; tiny because log-probs are per-dimension means."""
    kl_beta: float = 0.04
    """beta of the KL to the reference (LoRA disabled); 0 skips the reference pass."""
    adv_clip: float = 5.0
    """Advantages are clamped to [-adv_clip, adv_clip] after the step weights (Flow-GRPO: 5)."""
    adv_std: Literal["global", "group", "residual"] = "global"
    """What r - b is divided by (ALGORITHM.md 4): the std of the batch's raw rewards (global,
    Flow-GRPO's global_std), of the prompt's group (group), or centred residuals by their own std."""
    adv_eps: float = 1e-4
    """Added to that std (Flow-GRPO: 1e-4): a batch of near-equal rewards keeps near-zero advantages."""
    detach_uncond: bool = True
    """Detach the unconditional CFG branch in the policy update (Flow-GRPO); false differentiates both."""
    updates_per_iter: int = 2
    """Optimizer steps per iteration (the rollouts are split into this many minibatches)."""
    micro_batch: int = 8
    """Rollouts per training forward/backward."""
    train_steps: int = 0
    """Steps trained per rollout: 0 = the first T-1 (the last is near-deterministic)."""
    sde_window: int = 0
    """k > 0: SDE on k consecutive steps at a random position, ODE elsewhere; train only those."""
    sde_window_span: int = 0
    """The window starts within the first `span` - k + 1 steps (0 = anywhere but the last step): the
    high-noise steps decide a picture's layout, the late ones only its detail."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """adamw8bit (bitsandbytes, CUDA) keeps the optimizer state in 8 bits: a quarter of AdamW's."""
    ema: bool = False
    """Keep an exponential moving average of the LoRA; evaluation and export use it."""
    ema_decay: float = 0.95
    """Weight of the old average at each EMA update."""
    seed: int = 0
    """Seeds every random choice of the run (prompts, noise, minibatch order): same seed, same run."""


@dataclass
class RewardConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"shapes": 1.0})
    """Reward names and weights; several names give a weighted sum."""
    options: dict[str, dict] = field(default_factory=dict)
    """Per-reward keyword options, e.g. {remote: {url: http://127.0.0.1:8000}}."""
    device: str = "cpu"
    """Where reward models run: cpu, cuda or cuda:N (a second GPU keeps them off the policy's memory)."""


@dataclass
class PromptsConfig:
    source: str = "shapes"
    """A built-in set (shapes, ocr, geneval, preference) or a .txt file, one prompt per line."""
    test_source: str | None = None
    """Eval prompts: a .txt file; default = the built-in set's test split (or source's first lines)."""
    num_eval_prompts: int = 8
    """Eval prompts, spread evenly over the split."""
    eval_seeds: list[int] = field(default_factory=lambda: [0])
    """One image per (prompt, seed); each seed fixes its noise, so every method and step sees the same noise."""
    eval_split: Literal["test", "val", "pool"] = "test"
    """test: final figures on held-out prompts; val: train prompts held out of the RL pool, for
    tuning hyper-parameters; pool: the RL pool's own prompts at the eval seeds (how well a run
    learns what it trains on; keep the eval seeds apart from tuning's)."""


@dataclass
class MemoryConfig:
    vram_gib: float = 0.0
    """Budget the plan fits to; 0 = detect the GPU's memory."""
    rollout_buffer: Literal["gpu", "cpu"] = "gpu"
    """Where stored latents/log-probs live between sampling and training (cpu = pinned host memory)."""
    vae_decode: Literal["full", "sliced", "tiled"] = "full"
    """VAE decode of rollouts: all at once, one image at a time, or in tiles (least memory at high resolution)."""
    embed_cache_size: int = 256
    """Prompt embeddings kept on the CPU (LRU): SuperFlow revisits prompts."""


@dataclass
class OutputConfig:
    root: str = "runs"
    """Folder that holds the run directories."""
    name: str = ""
    """Run name; empty = <preset>-<algorithm>-<timestamp>."""
    eval_every: int = 5
    """Iterations between evals (eval samples and eval/ metrics); the last iteration always evaluates."""
    checkpoint_every: int = 5
    """Iterations between checkpoints: at most this many iterations are lost to a crash."""
    save_lora_every: int = 0
    """Iterations between intermediate LoRAs in loras/<iteration>/ (lora/'s formats), to pick an earlier
    step when a later one over-fits the reward; 0 = only the final lora/. A step with no copy left is
    exported from its checkpoint with `python -m superflow_lite.export RUN --step N`."""
    keep_loras: int = 0
    """How many intermediate LoRAs to keep, newest first (each is a few MB to ~100 MB); 0 = all."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Also log metrics and eval images to a tracker (accelerate's integration); metrics.jsonl is always written."""


@dataclass
class Config:
    algorithm: Literal["superflow", "flow_grpo"] = "superflow"
    """superflow (variance-aware groups, trackers, step weights) or flow_grpo (the baseline, ALGORITHM.md)."""
    preset: str = "tiny"
    """The preset this config was resolved from (superflow_lite/presets/<name>.yaml); set by --preset."""
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    superflow: SuperFlowConfig = field(default_factory=SuperFlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ----------------------------------------------------------------------------- typing


def shorten(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was: a message stays one readable line."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def echo(value: Any) -> str:
    """A user's value as an error message shows it: its repr, shortened."""
    if isinstance(value, str) and len(value) > MAX_ECHO_CHARS:
        return f"{value[:MAX_ECHO_CHARS]!r}... ({len(value):,} characters)"
    return shorten(repr(value))


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_describe(tp)}, got {echo(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise bad
    if tp is type(None):
        if value is not None:
            raise bad
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ConfigError(f"{key} must be a finite number (not nan or inf); give a plain number, "
                              f"got {echo(value)}") from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def check_type(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against the annotation `tp` (ints widen to float); ConfigError naming
    `key` and the expected type otherwise. For values typed outside this tree (a reward's options)."""
    return _coerce(value, tp, key)


_ABSENT = object()


def _pop_key(out: dict, dotted: str) -> Any:
    """Remove section.key from a nested config mapping and return its value (_ABSENT if unset)."""
    section, key = dotted.split(".")
    if not isinstance(out.get(section), dict) or key not in out[section]:
        return _ABSENT
    return out[section].pop(key)


def upgrade_keys(data: dict) -> dict:
    """A copy of a nested mapping of config keys with RENAMED_KEYS under their new names and
    RETIRED_KEYS (and REMOVED_KEYS at their kept value) left out, warning once for each (the
    superflow_lite logger; before the run's log exists, Python prints it on stderr)."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for old, (kept, why) in REMOVED_KEYS.items():
        value = _pop_key(out, old)
        if value is _ABSENT:
            continue
        if value != kept:
            raise ConfigError(f"{old} was removed and cannot be {echo(value)}: {why}")
        log.warning("%s is no longer used (its value %s is what every run does): remove it from your config", old, kept)
    for old, why in RETIRED_KEYS.items():
        if _pop_key(out, old) is not _ABSENT:
            log.warning("%s is no longer used (%s): remove it from your config", old, why)
    for old, new in RENAMED_KEYS.items():
        value = _pop_key(out, old)
        if value is _ABSENT:
            continue
        new_section, new_key = new.split(".")
        target = out.setdefault(new_section, {})
        if not isinstance(target, dict):
            continue  # _merge_into reports the section that is not a mapping
        if new_key in target:
            raise ConfigError(f"both {old} and {new} are set; {old} is the old name of {new}: keep only {new}")
        log.warning("%s is renamed %s; the old name is read in this release only: rename it in your config", old, new)
        target[new_key] = value
    return out


def _merge_into(obj: Any, data: dict, prefix: str = "") -> None:
    """Overlay a (partial) nested dict onto a dataclass instance, validating each key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {echo(data)}")
    if not prefix:
        data = upgrade_keys(data)
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {echo(full)}; valid keys here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ----------------------------------------------------------------------------- sources


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document whose aliases expand beyond MAX_YAML_VALUES
    values (or refer to themselves): the checks walk the expanded tree, so an alias bomb
    would hang them for hours."""

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise ConfigError(f"its YAML aliases (*name) refer to themselves or expand to more than "
                              f"{MAX_YAML_VALUES:,} values; "
                              "write the values out instead of nesting aliases")
        return node


def _expanded_size(root: yaml.Node) -> float:
    """Values in the tree `root` stands for once every alias is expanded (inf: a cycle).
    Each node is sized once (memoised), so the count itself stays linear in the document."""
    sizes: dict[int, float] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> float:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in in_progress:
            return math.inf  # an alias inside its own anchor
        in_progress.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            total = 1
        in_progress.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def load_yaml(text: str):
    """yaml.safe_load with aliases bounded (_BoundedLoader): ConfigError for an alias bomb or
    a value nested too deep, yaml.YAMLError for anything else it cannot read."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except RecursionError:  # PyYAML composes nested values recursively: a few hundred levels at most
        raise ConfigError("its values nest too deep (hundreds of [ or { inside each other); "
                          "write a flatter value") from None
    except ValueError as err:  # PyYAML's own constructors: an integer of 5,000 digits, a date like 2020-13-45
        raise yaml.constructor.ConstructorError(problem=f"a value cannot be read: {shorten(str(err))}") from None
    finally:
        loader.dispose()


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml") if not p.stem.startswith("task-"))


def task_presets() -> list[str]:
    """The task-* presets: a task's reward and prompts (and what they need changed) on the defaults."""
    return sorted(p.stem for p in PRESETS_DIR.glob("task-*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; check the path")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{what} {str(path)!r} is {size:,} bytes, more than a config holds (at most "
                              f"{MAX_CONFIG_FILE_BYTES:,}); give a YAML file of config keys")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text; give a YAML file of config keys") from None
    except OSError as err:
        raise ConfigError(f"{what} {str(path)!r} cannot be read ({err.strerror}); check its permissions") from None
    try:
        data = load_yaml(text) or {}
    except ConfigError as err:  # an alias bomb, a value nested too deep
        raise ConfigError(f"{what} {str(path)!r}: {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML{at} ({problem}); fix or replace the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of config keys")
    return data


def preset_layers(name: str, _children: tuple[str, ...] = ()) -> list[dict]:
    """A preset's YAML, after the presets it `extends` (base first): a preset that varies
    another states only what it changes."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {echo(name)}; available: {', '.join(available_presets())}")
    data = _read_yaml(path, "preset")
    base = data.pop("extends", None)
    if base is None:
        return [data]
    if base == name or base in _children:
        raise ConfigError(f"preset {echo(name)} extends {echo(base)}, which extends it back; break the cycle")
    return [*preset_layers(str(base), (*_children, name)), data]


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). Values are parsed as YAML scalars/lists."""
    if len(text) > MAX_OVERRIDE_CHARS:  # before the YAML parser, which would take minutes over megabytes
        raise ConfigError(f"override {echo(text)} is longer than {MAX_OVERRIDE_CHARS:,} characters; "
                          "put large values in a --config file")
    if "=" not in text:
        raise ConfigError(f"override {echo(text)} must look like section.key=value (e.g. train.lr=1e-4)")
    dotted, raw = text.split("=", 1)
    if not dotted or any(not part for part in dotted.split(".")):
        raise ConfigError(f"override {echo(text)}: empty key")
    try:
        value = load_yaml(raw) if raw != "" else ""
    except ConfigError as err:
        raise ConfigError(f"override {echo(text)}: {err}") from None
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string (no dot); numbers are what users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            pass
    return dotted.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def resolve_preset_name(name: str) -> str:
    """'auto' -> the preset that fits the detected GPU; the CPU's default job (tiny-focus) without one."""
    if name != "auto":
        return name
    from .vram import auto_preset  # the presets' cards and their VRAM tiers

    return auto_preset()


def build_config(
    preset: str = "auto", config_file: str | None = None, overrides: list[str] | None = None
) -> Config:
    cfg = Config()
    preset = resolve_preset_name(preset)
    cfg.preset = preset
    for layer in preset_layers(preset):
        _merge_into(cfg, layer)
    if config_file:
        _merge_into(cfg, _read_yaml(Path(config_file), "config file"))
    merge_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg


def merge_overrides(cfg: Config, overrides: list[str]) -> None:
    """Apply dotted overrides in order; a bad one (its form, key or type) does not hide the
    next: every one is reported, in one ConfigError."""
    problems = []
    for text in overrides:
        try:
            path, value = parse_override(text)
            _merge_into(cfg, _nest(path, value))
        except ConfigError as err:
            problems.append(str(err))
    _require(not problems, "; ".join(problems))


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _merge_into(cfg, data)
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Dotted key=value overrides onto a resolved config (a resume's changes), validated."""
    merge_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def read_config_file(path: Path, what: str = "config file") -> dict:
    """A YAML mapping of config keys; ConfigError saying what is wrong with the file."""
    return _read_yaml(Path(path), what)


def non_finite_values(value: Any, key: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite number in a config (nested dicts and lists included)."""
    if dataclasses.is_dataclass(value):
        return [k for f in dataclasses.fields(value) for k in non_finite_values(getattr(value, f.name), f"{key}{f.name}.")]
    key = key.rstrip(".")
    if isinstance(value, float):
        return [] if math.isfinite(value) else [key]
    if isinstance(value, dict):
        return [k for name, v in value.items() for k in non_finite_values(v, f"{key}.{name}.")]
    if isinstance(value, (list, tuple)):
        return [k for i, v in enumerate(value) for k in non_finite_values(v, f"{key}[{i}].")]
    return []


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: Config) -> None:
    """Cross-field and range checks that types alone cannot express."""
    # NaN passes every `> 0` test below and inf every upper bound: reject both first.
    bad = non_finite_values(cfg)
    _require(not bad, f"{bad[0] if bad else ''} must be a finite number (not nan or inf); give a plain number")
    s, b, sf, t = cfg.sampling, cfg.batch, cfg.superflow, cfg.train
    positive = {
        "sampling.resolution": s.resolution, "sampling.num_steps": s.num_steps,
        "sampling.micro_batch": s.micro_batch, "sampling.eval_num_steps": s.eval_num_steps,
        "sampling.max_sequence_length": s.max_sequence_length,
        "batch.prompts_per_iter": b.prompts_per_iter, "batch.group_size": b.group_size,
        "superflow.m_max": sf.m_max, "superflow.m_min": sf.m_min, "superflow.num_bins": sf.num_bins,
        "train.iterations": t.iterations, "train.updates_per_iter": t.updates_per_iter,
        "train.micro_batch": t.micro_batch, "model.lora_rank": cfg.model.lora_rank,
        "output.eval_every": cfg.output.eval_every, "output.checkpoint_every": cfg.output.checkpoint_every,
        "prompts.num_eval_prompts": cfg.prompts.num_eval_prompts,
    }
    positive.update({"train.lr": t.lr, "train.clip_range": t.clip_range, "train.adv_clip": t.adv_clip,
                     "model.lora_alpha": cfg.model.lora_alpha, "train.grad_clip": t.grad_clip})
    # Every out-of-range value at once: a user fixing one per run would need as many runs.
    problems = [f"{key} must be > 0, got {value}" for key, value in positive.items() if not value > 0]
    problems += [f"{key} must be >= 0, got {value}" for key, value in {"train.kl_beta": t.kl_beta, "train.weight_decay": t.weight_decay,
                       "sampling.noise_level": s.noise_level, "batch.rollout_cap": b.rollout_cap,
                       "sampling.guidance_scale": s.guidance_scale, "train.train_steps": t.train_steps,
                       "train.sde_window": t.sde_window, "memory.vram_gib": cfg.memory.vram_gib,
                       "output.save_lora_every": cfg.output.save_lora_every,
                       "output.keep_loras": cfg.output.keep_loras}.items() if not value >= 0]
    _require(not problems, "; ".join(problems))
    _require(s.max_sequence_length <= MAX_T5_TOKENS,
             f"sampling.max_sequence_length must be <= {MAX_T5_TOKENS} (SD3's T5 limit), got {s.max_sequence_length}")
    _require(bool(cfg.model.lora_targets), "model.lora_targets is empty: name the modules that get LoRA, e.g. [attn.to_q]")
    _require(bool(cfg.model.name_or_path.strip()), "model.name_or_path is empty: give 'world', a hub id or a model dir")
    _require(cfg.train.seed >= 0, f"train.seed must be >= 0, got {cfg.train.seed}")
    _require(cfg.memory.embed_cache_size >= 0, f"memory.embed_cache_size must be >= 0, got {cfg.memory.embed_cache_size}")
    _require(DEVICE.match(cfg.reward.device) is not None,
             f"reward.device must be cpu, cuda or cuda:N, got {echo(cfg.reward.device)}")
    _require(s.resolution % 16 == 0, f"sampling.resolution must be a multiple of 16, got {s.resolution}")
    _require(s.num_steps >= 2, f"sampling.num_steps must be >= 2, got {s.num_steps}")
    _require(t.train_steps <= s.num_steps, f"train.train_steps ({t.train_steps}) exceeds sampling.num_steps ({s.num_steps})")
    _require(t.sde_window <= s.num_steps - 1, f"train.sde_window must be < sampling.num_steps ({s.num_steps})")
    _require(t.sde_window_span == 0 or t.sde_window <= t.sde_window_span <= s.num_steps - 1,
             f"train.sde_window_span must be 0 or between train.sde_window ({t.sde_window}) and "
             f"sampling.num_steps - 1 ({s.num_steps - 1})")
    _require(sf.m_min <= sf.m_max, f"superflow.m_min ({sf.m_min}) must be <= superflow.m_max ({sf.m_max})")
    _require(0 < sf.rho <= 1, f"superflow.rho must be in (0, 1], got {sf.rho}")
    _require(0 < t.ema_decay < 1, f"train.ema_decay must be in (0, 1), got {t.ema_decay}")
    _require(0.0 <= t.lr_final_frac <= 1.0, f"train.lr_final_frac must be in [0, 1], got {t.lr_final_frac}")
    _require(t.adv_eps >= 0, f"train.adv_eps must be >= 0, got {t.adv_eps}")
    _require(0.0 <= sf.step_credit_mix <= 1.0, f"superflow.step_credit_mix must be in [0, 1], got {sf.step_credit_mix}")
    _require(1 <= sf.credit_every <= s.num_steps,
             f"superflow.credit_every must be in 1..sampling.num_steps ({s.num_steps}), got {sf.credit_every}")
    from .algorithms import algorithm_problems  # what each algorithm needs of the config is decided there

    problems = algorithm_problems(cfg)
    _require(not problems, "; ".join(problems))
    _require(bool(cfg.reward.weights), "reward.weights is empty: name at least one reward, e.g. {shapes: 1.0}")
    _require(len(cfg.prompts.eval_seeds) > 0, "prompts.eval_seeds must list at least one seed")
    src = cfg.prompts.source
    if src.endswith(".txt"):
        _require(Path(src).is_file(), f"prompts.source {echo(src)} does not exist; give a .txt file with one prompt per line")
    if cfg.model.name_or_path != "world" and cfg.model.name_or_path.startswith(("/", "./", "../")):
        _require(Path(cfg.model.name_or_path).is_dir(),
                 f"model.name_or_path {echo(cfg.model.name_or_path)} is not a directory; give a diffusers model dir or a hub id")
