"""The memory plan: bytes per part, the peak of each phase, the micro-batches and the rollout cap R.

    peak = static + buffer + (1 + ALLOCATOR_MARGIN) * max(encode, sample, train)

static:  the parts held on the GPU in the preset's dtypes (parameter bytes computed exactly
         from the real configs, models.SD35_MEDIUM, by layouts.py; tests check them
         against meta-device builds), LoRA weights + gradients + optimizer state, a GPU
         reward model, the CUDA context.
buffer:  R stored rollouts (latents x_0..x_T in float32 + log-probs) when memory.rollout_buffer=gpu.
phases:  transient bytes of encoding new prompts, of one sampling micro-batch (transformer
         forward with CFG, VAE decode, the reward scoring the previous batch beside it) and of
         one training micro-batch (forward + backward, checkpointing, CFG, the KL reference
         pass). The transformer, VAE, encoder and reward terms are laws fitted to
         measurements of the real architectures (benchmarks/measure_activations.py ->
         superflow_lite/data/activation_measurements.json); the bitsandbytes kernels' scratch and
         the micro-batch inputs are counted from their shapes.
Choice: R first (up to prompts_per_iter * m_max, at least prompts_per_iter * m_min), then the
largest micro-batches up to the configured ones that keep the peak within the budget
(the card less HEADROOM). All figures are predictions until benchmarks/gpu_check.py has
run on a GPU (docs/MEMORY.md). bitsandbytes' int8 layers keep their inputs for backward
outside autograd's saved tensors (int8_saved_input_elements): counted from the config.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .algorithms import resolve_algorithm
from .config import Config
from .vram import CARD_GIB, GIB, detected_vram_gib

# Package data, so an installed wheel plans memory without the source tree.
MEASUREMENTS = Path(__file__).resolve().parent / "data" / "activation_measurements.json"

HEADROOM = 0.10  # the plan leaves 10% of the card free
ALLOCATOR_MARGIN = 0.10  # CUDA caching-allocator rounding/fragmentation on transients (assumed)
CUDA_CONTEXT_BYTES = GIB // 2  # CUDA context + cuBLAS workspaces, outside torch's allocator (assumed)
HOST_PIN_FRACTION = 0.25  # pin at most a quarter of host RAM for a CPU rollout buffer
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Reward -> (model in the measurements, vision tower only). Others run no model on the GPU.
REWARD_MODELS = {"aesthetic": ("clip_l14", True), "clipscore": ("clip_l14", False),
                 "pickscore": ("clip_h14", False), "hpsv2": ("clip_h14", False), "geneval": ("owlv2_b16", False)}


# ----------------------------------------------------------------------------- measured laws


@functools.lru_cache(maxsize=1)
def measurements() -> dict:
    """superflow_lite/data/activation_measurements.json: raw points and fitted coefficients."""
    if not MEASUREMENTS.is_file():
        raise FileNotFoundError(f"{MEASUREMENTS} is missing; run python benchmarks/measure_activations.py")
    return json.loads(MEASUREMENTS.read_text())


def law(term: dict, **features: float) -> float:
    """Evaluate a fitted term: c + sum(coef_f * feature_f), never below 0."""
    coef = term["coef"]
    return max(0.0, coef["c"] + sum(coef[name] * value for name, value in features.items()))


def transformer_variant(cfg: Config) -> str:
    """The measured training variant matching cfg: checkpointing and the KL reference pass."""
    return "train" + ("_ckpt" if cfg.model.gradient_checkpointing else "") + ("_kl" if cfg.train.kl_beta > 0 else "")


# ----------------------------------------------------------------------------- the plan

# What each term of a plan rests on; `--plan` prints it beside every term.
BASES = {
    "exact": "parameter arithmetic of the real configs (equal to meta-device builds, tests)",
    "measured": "a law fitted to CPU measurements of the real architecture (FakeTensor accounting)",
    "counted": "tensor shapes (the int8 kept inputs: checked exactly against real-width blocks on the CPU)",
    "assumed": "not measurable without a GPU",
}


class Terms(dict):
    """name -> bytes, and beside it the basis of each term (a key of BASES)."""

    def __init__(self) -> None:
        super().__init__()
        self.basis: dict[str, str] = {}

    def add(self, name: str, nbytes: int, basis: str) -> None:
        assert basis in BASES, basis
        self[name] = int(nbytes)
        self.basis[name] = basis



@dataclass
class MemoryPlan:
    """Bytes of every term, the chosen micro-batches and rollout cap, and the predicted peak."""

    preset: str
    device: str
    card_gib: float
    card_source: str
    budget: int
    static: Terms
    rollout_bytes: int
    rollout_cap: int
    buffer: int
    buffer_device: str
    sample_micro_batch: int
    train_micro_batch: int
    phases: dict[str, Terms]
    margin: float
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def phase_bytes(self, name: str) -> int:
        return int(sum(self.phases[name].values()) * (1 + self.margin))

    @property
    def static_bytes(self) -> int:
        return sum(self.static.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.static_bytes + self.buffer + self.phase_bytes(self.peak_phase)

    @property
    def fits(self) -> bool:
        return not self.problems and self.peak_bytes <= self.budget


@dataclass
class _Model:
    """What the plan needs to know about the configured model, derived once."""

    layouts: dict
    source: str
    act_scale: dict[str, float]
    n_img: int
    n_txt: int
    latent_bytes: int  # one latent x_t in float32
    transformer_config: dict


def _model_facts(cfg: Config) -> _Model:
    from . import models
    from .layouts import LAYOUTS, layout_of_module

    res = cfg.sampling.resolution
    if cfg.model.name_or_path == "world":
        from .world import model as world

        with torch.device("meta"):
            parts = {"transformer": world.build_transformer(), "vae": world.build_vae()}
            parts.update(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), world.build_text_encoders()))
        layouts = {k: layout_of_module(v) for k, v in parts.items()}
        tc, vc = dict(parts["transformer"].config), parts["vae"].config
        source = "the built-in tiny world (activation terms scaled from SD3.5-M, not measured)"
    else:
        configs, source = dict(models.SD35_MEDIUM), f"SD3.5-Medium's published configs ({cfg.model.name_or_path})"
        local = Path(cfg.model.name_or_path)
        if local.is_dir():
            for part in configs:
                path = local / part / "config.json"
                if path.is_file():
                    configs[part] = {**configs[part], **json.loads(path.read_text())}
            source = f"the configs in {local}"
        layouts = {part: LAYOUTS[part](c) for part, c in configs.items()}
        tc, vc = configs["transformer"], configs["vae"]
    ref = models.SD35_MEDIUM
    width = tc["num_attention_heads"] * tc["attention_head_dim"] * tc["num_layers"]
    act_scale = {"transformer": width / (1536 * 24), "vae": vc["block_out_channels"][0] / ref["vae"]["block_out_channels"][0]}
    factor = 2 ** (len(vc["block_out_channels"]) - 1)
    side = res // factor
    n_img = (side // tc["patch_size"]) ** 2
    n_txt = 77 + cfg.sampling.max_sequence_length  # CLIP tokens + T5 tokens (zeros when T5 is dropped)
    if cfg.model.name_or_path == "world":
        from .world.tokenizers import CLIP_MAX_LENGTH

        n_txt = CLIP_MAX_LENGTH + cfg.sampling.max_sequence_length
    return _Model(layouts, source, act_scale, n_img, n_txt, tc["in_channels"] * side * side * 4, tc)


def _device(cfg: Config) -> str:
    if cfg.model.device != "auto":
        return cfg.model.device
    return "cuda" if (cfg.preset != "tiny" or torch.cuda.is_available()) else "cpu"


def host_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return 16.0


def _card(cfg: Config, device: str) -> tuple[float, str]:
    if cfg.memory.vram_gib > 0:
        return cfg.memory.vram_gib, "memory.vram_gib"
    if device == "cpu":
        return host_memory_gib(), "host memory (a CPU run)"
    if torch.cuda.is_available():
        return detected_vram_gib(), f"the detected GPU ({torch.cuda.get_device_name(0)})"
    if cfg.preset in CARD_GIB:
        return CARD_GIB[cfg.preset], f"the {cfg.preset} preset's card; no GPU here"
    return CARD_GIB["24gb"], "no GPU here and no card for this preset: assumed 24 GB"


def _static_terms(cfg: Config, m: _Model, device: str) -> dict[str, int]:
    from . import layouts, models, text_encoders

    dt, db = cfg.model.dtype, DTYPE_BYTES[cfg.model.dtype]
    L = m.layouts
    q = cfg.model.transformer_quant
    name = f"transformer {q if q != 'none' else dt}" + (" (proj_out " + dt + ")" if q != "none" else "")
    terms = Terms()
    terms.add(name, layouts.layout_nbytes(L["transformer"], db, q, tuple(models.SKIP_QUANT_MODULES)), "exact")
    shapes = layouts.lora_tensor_shapes(L["transformer"], cfg.model.lora_targets, cfg.model.lora_rank,
                                       models.dead_lora_modules(m.transformer_config))
    n_lora = sum(r * c for r, c in shapes)
    terms.add(f"LoRA r={cfg.model.lora_rank} weights fp32 ({n_lora / 1e6:.1f} M)", 4 * n_lora, "exact")
    terms.add("LoRA gradients fp32", 4 * n_lora, "exact")
    if cfg.train.optimizer == "adamw8bit":  # bnb: uint8 states + a float32 absmax per 256; < 4096 elements stay 32-bit
        terms.add("optimizer AdamW8bit states", sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n
                                                    for n in (r * c for r, c in shapes)), "exact")
    else:
        terms.add("optimizer AdamW states fp32", 8 * n_lora, "exact")
    for part, label in (("text_encoder", "CLIP-L"), ("text_encoder_2", "CLIP-G")):
        if cfg.model.clip_encoders == "resident":
            terms.add(f"{label} text {dt}", layouts.layout_nbytes(L[part], db), "exact")
    t5 = cfg.model.text_encoder_3
    if t5 == "resident":
        terms.add(f"T5-XXL encoder {dt}", layouts.layout_nbytes(L["text_encoder_3"], db), "exact")
    elif t5 == "resident_8bit":
        terms.add(f"T5-XXL encoder int8 (wo {dt})",
                  layouts.layout_nbytes(L["text_encoder_3"], db, "int8", text_encoders.T5_INT8_SKIP), "exact")
    terms.add(f"VAE {dt}", layouts.layout_nbytes(L["vae"], db), "exact")
    for reward in _gpu_rewards(cfg):
        spec = measurements()["rewards"][REWARD_MODELS[reward][0]]
        params = spec["vision_params"] if REWARD_MODELS[reward][1] else spec["params"]
        params += measurements()["rewards"]["aesthetic_head_params"] if reward == "aesthetic" else 0
        terms.add(f"reward {reward} fp16", 2 * params, "exact")
    if device == "cuda":
        terms.add("CUDA context + workspaces", CUDA_CONTEXT_BYTES, "assumed")
    return terms


def _gpu_rewards(cfg: Config) -> list[str]:
    if not str(cfg.reward.device).startswith("cuda"):
        return []
    return [name for name in cfg.reward.weights if name in REWARD_MODELS]


def _quant_scratch(cfg: Config, m: _Model, tokens: int, backward: bool) -> int:
    """bitsandbytes' extra bytes beside a bf16 matmul, at the largest quantized Linear.

    int8 (MatMul8bitLt): an fp16 copy and an int8 copy of the input, an int32 accumulator
    beside the output; backward dequantizes the weight. nf4: the weight dequantized to bf16.
    Counted from the kernels' shapes (bitsandbytes 0.50), not measured: CPU kernels differ."""
    from . import layouts, models

    q, skip = cfg.model.transformer_quant, tuple(models.SKIP_QUANT_MODULES)
    if q == "none":
        return 0
    if q == "nf4":
        big = layouts.largest_linear(m.layouts["transformer"], skip)
        return 2 * big.fan_in * big.fan_out
    big = layouts.largest_linear(m.layouts["transformer"], skip, per_token=True)
    return int8_scratch(big, tokens) + (2 * big.fan_in * big.fan_out if backward else 0)


def int8_saved_input_elements(tc: dict, n_img: int, n_txt: int, rows: int) -> int:
    """Elements of the 8-bit Linears' inputs that bitsandbytes keeps alive until backward, for
    `rows` sequences of n_img image and n_txt text tokens through an SD3 transformer config tc.

    MatMul8bitLt (bitsandbytes 0.45-0.50) stores its input on ctx.tensors, outside
    save_for_backward, whenever that input requires grad; torch's non-reentrant checkpointing
    (diffusers' default) only intercepts save_for_backward, so these inputs stay alive from the
    forward to the backward under checkpointing too. Which inputs require grad follows from
    the LoRA on block 0's joint attention (the default targets): the AdaLayerNorm modulation
    (fed by the timestep alone) never does; block 0's own q/k/v inputs and its second
    attention do not yet. Unique storages per row, in units of the width D:
      block 0           joint attention output (to_out.0 + to_add_out read slices of it) Ni+Nt,
                        ff 5*Ni (net.0.proj input Ni, net.2 input 4*Ni), ff_context 5*Nt
      block i > 0       + q/k/v input Ni, add_q/k/v input Nt, dual blocks: attn2 q/k/v Ni + out Ni
      last block        no ff_context, no to_add_out: the joint output is kept whole at one
                        row (a contiguous slice is a view), only its Ni rows at more (a copy)
    Exact against real-width blocks on the CPU (benchmarks/measure_activations.py --int8).
    """
    num_layers, dual = tc["num_layers"], set(tc.get("dual_attention_layers") or ())
    width = tc["num_attention_heads"] * tc["attention_head_dim"]
    per_row = 0
    for i in range(num_layers):
        last = i == num_layers - 1
        per_row += (n_img + n_txt if not last or rows == 1 else n_img) + 5 * n_img + (0 if last else 5 * n_txt)
        if i > 0:
            per_row += n_img + n_txt + (2 * n_img if i in dual else 0)
    return rows * per_row * width


def int8_scratch(spec, tokens: int) -> int:
    """LLM.int8 forward beside a bf16 matmul: fp16 + int8 copies of the input, int32 accumulator."""
    return tokens * (3 * spec.fan_in + 4 * spec.fan_out)


def _phases(cfg: Config, m: _Model, rows_sample: int, rows_train: int) -> dict[str, dict[str, int]]:
    meas = measurements()
    s, res = cfg.sampling, cfg.sampling.resolution
    sc = m.act_scale["transformer"]
    cfg_rows = 2 if s.guidance_scale != 1.0 else 1  # CFG doubles the sequences; the update recomputes it too
    rollout = m.latent_bytes * (s.num_steps + 1)
    embeds = 2 * m.n_txt * 4096 * 4  # cond + uncond rows in float32 on the device
    variants = meas["transformer"]["variants"]

    seqs = rows_sample * cfg_rows
    forward = sc * law(variants["sample"], seq_img=seqs * m.n_img, seq_txt=seqs * m.n_txt)
    forward += _quant_scratch(cfg, m, seqs * (m.n_img + m.n_txt), backward=False)
    vae_rows = 1 if cfg.memory.vae_decode == "sliced" else rows_sample
    side = min(res, 512) if cfg.memory.vae_decode == "tiled" else res
    decode = m.act_scale["vae"] * law(meas["vae_decode"], pixels=vae_rows * side * side)
    decode += rows_sample * 3 * res * res * 4 if cfg.memory.vae_decode == "tiled" else 0  # the assembled output
    sample = Terms()
    sample.add("inputs: embeddings + trajectory", rows_sample * (embeds + 2 * rollout), "counted")
    sample.add("transformer forward or VAE decode", int(max(forward, decode)), "measured")
    for reward in _gpu_rewards(cfg):
        sample.add(f"reward {reward} (beside sampling)", int(law(meas["rewards"][REWARD_MODELS[reward][0]], rows=rows_sample)),
                   "measured")

    seqs = rows_train * cfg_rows
    act = sc * law(variants[transformer_variant(cfg)], seq_img=seqs * m.n_img, seq_txt=seqs * m.n_txt)
    train = Terms()
    train.add("inputs: embeddings + rollouts", rows_train * (embeds + rollout), "counted")
    train.add("forward + backward", int(act), "measured")
    if cfg.model.transformer_quant == "int8":  # kept with or without checkpointing (an upper bound without)
        kept = int8_saved_input_elements(m.transformer_config, m.n_img, m.n_txt, seqs) * DTYPE_BYTES[cfg.model.dtype]
        train.add("int8: Linear inputs kept for backward", kept, "counted")
    if cfg.model.transformer_quant != "none":
        train.add("bitsandbytes scratch", _quant_scratch(cfg, m, seqs * (m.n_img + m.n_txt), backward=True), "counted")

    prompts = cfg.batch.prompts_per_iter + 1  # + the empty prompt
    enc = meas["encoders"]
    encode = Terms()
    encode.add("CLIP-L + CLIP-G", int(law(enc["clip"], rows=prompts)), "measured")
    if cfg.model.text_encoder_3 != "drop":
        L = s.max_sequence_length
        encode.add("T5", int(law(enc["t5"], tokens=prompts * L, tokens_sq=prompts * L * L, length_sq=L * L)), "measured")
        if cfg.model.text_encoder_3 == "resident_8bit":
            from . import layouts, text_encoders

            big = layouts.largest_linear(m.layouts["text_encoder_3"], text_encoders.T5_INT8_SKIP)
            encode.add("T5 int8 scratch", int8_scratch(big, prompts * L), "counted")
    streamed = [p for p, on in (("text_encoder", cfg.model.clip_encoders == "offload"),
                                ("text_encoder_2", cfg.model.clip_encoders == "offload"),
                                ("text_encoder_3", cfg.model.text_encoder_3 == "offload")) if on]
    if streamed:
        encode.add("streamed layer", max(m.layouts[p].largest_module for p in streamed) * DTYPE_BYTES[cfg.model.dtype], "exact")
    return {"encode": encode, "sample": sample, "train": train}


def _largest_fitting(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest b in [1, limit] with fits(b) (fits is monotone); 0 when none."""
    best = 0
    for b in range(1, limit + 1):
        if not fits(b):
            break
        best = b
    return best


def plan_for_config(cfg: Config, vram_gib: float | None = None, host_gib: float | None = None) -> MemoryPlan:
    """The plan for cfg on a card of vram_gib (default: memory.vram_gib, the GPU, the preset's card)."""
    device = _device(cfg)
    card, card_source = (vram_gib, "given") if vram_gib else _card(cfg, device)
    m = _model_facts(cfg)
    static = _static_terms(cfg, m, device)
    b, sf, s = cfg.batch, cfg.superflow, cfg.sampling
    per_prompt = resolve_algorithm(cfg).group_bounds(b.group_size, sf.m_max, sf.m_min)
    r_target, r_min = b.prompts_per_iter * per_prompt[0], b.prompts_per_iter * per_prompt[1]
    rollout = m.latent_bytes * (s.num_steps + 1) + 4 * s.num_steps + 16  # latents, log-probs, row/group ids
    margin = ALLOCATOR_MARGIN if device == "cuda" else 0.0
    # On a CPU run there is no GPU: the buffer lies in the same memory as the model, whatever
    # memory.rollout_buffer says.
    buffer_device = "cpu" if device == "cpu" else cfg.memory.rollout_buffer
    plan = MemoryPlan(cfg.preset, device, card, card_source, int(card * GIB * (1 - HEADROOM)), static, rollout, 0, 0,
                      buffer_device, 0, 0, {}, margin, notes=[f"model: {m.source}"])
    if plan.static_bytes > plan.budget:
        plan.problems.append(f"the resident weights alone need {plan.static_bytes / GIB:.1f} GiB: quantize the transformer, "
                             "offload the text encoders, put the reward on the CPU, or pick a smaller preset")
    smallest = _phases(cfg, m, 1, 1)
    plan.phases = smallest
    room = plan.budget - plan.static_bytes - max(plan.phase_bytes(p) for p in smallest)
    on_gpu = cfg.memory.rollout_buffer == "gpu" or device == "cpu"
    if b.rollout_cap > 0:
        plan.rollout_cap = b.rollout_cap
        plan.notes.append(f"R = batch.rollout_cap = {b.rollout_cap} (set, not planned)")
    elif on_gpu:
        plan.rollout_cap = min(r_target, max(0, room) // rollout)
    else:
        host = (host_gib or host_memory_gib()) * GIB * HOST_PIN_FRACTION
        plan.rollout_cap = min(r_target, int(host // rollout))
    if plan.rollout_cap < r_min:
        plan.problems.append(f"the rollout cap R={plan.rollout_cap} is below prompts_per_iter*m_min = {r_min}: "
                             "use memory.rollout_buffer=cpu, fewer batch.prompts_per_iter, or a smaller resolution")
    plan.buffer = plan.rollout_cap * rollout if on_gpu else 0

    def fits(phase: str, rows_s: int, rows_t: int) -> bool:
        plan.phases = _phases(cfg, m, rows_s, rows_t)
        return plan.static_bytes + plan.buffer + plan.phase_bytes(phase) <= plan.budget

    plan.sample_micro_batch = _largest_fitting(s.micro_batch, lambda b: fits("sample", b, 1))
    plan.train_micro_batch = _largest_fitting(cfg.train.micro_batch, lambda b: fits("train", 1, b))
    for key, got, want in (("sampling.micro_batch", plan.sample_micro_batch, s.micro_batch),
                           ("train.micro_batch", plan.train_micro_batch, cfg.train.micro_batch)):
        if got == 0:
            plan.problems.append(f"{key}=1 does not fit the budget")
        elif got < want:
            plan.notes.append(f"{key} {want} -> {got} to fit the budget")
    plan.sample_micro_batch, plan.train_micro_batch = max(1, plan.sample_micro_batch), max(1, plan.train_micro_batch)
    plan.phases = _phases(cfg, m, plan.sample_micro_batch, plan.train_micro_batch)
    if plan.peak_bytes > plan.budget and not plan.problems:
        plan.problems.append(f"encoding prompts alone needs {plan.peak_bytes / GIB:.1f} GiB")
    return plan


def format_plan(cfg: Config, plan: MemoryPlan | None = None) -> str:
    """The table `python -m superflow_lite.train --plan` prints."""
    plan = plan or plan_for_config(cfg)
    g = lambda n: f"{n / GIB:7.2f}"  # noqa: E731
    s = cfg.sampling
    cfg_tr = "CFG" if s.guidance_scale != 1.0 else "no CFG"
    lines = [
        f"Memory plan: preset {plan.preset}, {s.resolution} px, {s.num_steps} steps, on {plan.device}",
        f"budget {plan.budget / GIB:.2f} GiB = {1 - HEADROOM:.0%} of {plan.card_gib:.2f} GiB ({plan.card_source})",
        "PREDICTED: nothing here was measured on a GPU. Each term says what it rests on:",
        *[f"  [{k}] {v}" for k, v in BASES.items()],
        "", f"{'static (held all run)':58s}    GiB",
        *[f"  {k:56s}{g(v)}  [{plan.static.basis.get(k, '')}]" for k, v in plan.static.items()],
        f"  {'total':56s}{g(plan.static_bytes)}",
        "", f"rollout buffer: R = {plan.rollout_cap} rollouts x {plan.rollout_bytes / 1e6:.2f} MB on {plan.buffer_device}"
        + (" (pinned host memory)" if plan.device == "cuda" and plan.buffer_device == "cpu" else ""),
        f"  {'in the budget (' + plan.device + ' memory)':56s}{g(plan.buffer)}  [counted]",
        "", f"{'transient peaks (x' + format(1 + plan.margin, '.2f') + ' margin, assumed)':46s}micro-batch    GiB",
    ]
    heads = {"encode": f"encode new prompts ({cfg.batch.prompts_per_iter} + the empty one)",
             "sample": f"sample (CFG x2, VAE {cfg.memory.vae_decode}, reward {cfg.reward.device})",
             "train": f"train ({cfg_tr}, {'checkpointing' if cfg.model.gradient_checkpointing else 'no checkpointing'}"
                      f"{', KL ref' if cfg.train.kl_beta > 0 else ''})"}
    mb = {"encode": "-", "sample": str(plan.sample_micro_batch), "train": str(plan.train_micro_batch)}
    for phase, terms in plan.phases.items():
        lines.append(f"  {heads[phase]:50s}{mb[phase]:>6s}{g(plan.phase_bytes(phase))}")
        lines += [f"      {k:46s}{'':6s}{g(v)}  [{terms.basis.get(k, '')}]" for k, v in terms.items()]
    lines += ["", f"predicted peak: {plan.peak_bytes / GIB:.2f} GiB in {plan.peak_phase} "
              f"({plan.peak_bytes / (plan.card_gib * GIB):.0%} of {plan.card_gib:.2f} GiB); rollout cap R = {plan.rollout_cap}; "
              f"micro-batches sample {plan.sample_micro_batch}, train {plan.train_micro_batch}"]
    lines += [f"note: {n}" for n in plan.notes]
    lines += [f"DOES NOT FIT: {p}" for p in plan.problems]
    return "\n".join(lines)
