"""The GPU check: one command on a bare CUDA machine, within about 8 minutes.

    python benchmarks/gpu_check.py [--out FILE] [--budget-s 420]   # a CUDA machine (benchmarks/README.md)
    python benchmarks/gpu_check.py --cpu-smoke [--out FILE]         # tiny shapes on the CPU (in the tests)

SD3.5-Medium at its real size with random weights built from its published configs
(superflow_lite.models.SD35_MEDIUM; no hub, no download), the parts each preset keeps on the
card, in the preset's storage. Steps, each appended to the JSON file as soon as it ends, so a
run cut short keeps what it measured:
  env        torch, CUDA, the card, library versions
  numerics   int8 and nf4 against bf16 on the same random weights with LoRA: one forward and
             the LoRA backward at 512 px: finite, relative error of the velocity, cosine of the
             LoRA gradients; for int8 the largest |input| of any 8-bit Linear (LLM.int8 casts
             it to fp16: overflow past 65,504) and whether any output left the fp16 range
  <preset>   in a fresh process under the preset card's memory (set_per_process_memory_fraction):
             the peak of each phase (load, encode, sample, train) beside the plan's prediction,
             the time of each phase and a full iteration extrapolated from them
  oom        a training micro-batch of 8 under a cap that holds about 2 rows: retry_on_oom must
             halve and finish
Random weights carry the real shapes, not the real values: activations (and so fp16 overflow)
of the published weights can differ; the memory and the time do not depend on the values.
Encoding feeds random token ids to the real CLIP-L, CLIP-G and T5 modules as the SD3 pipeline
combines them (no tokenizers on a bare machine). --cpu-smoke runs every step on tiny shapes
on the CPU (no memory caps; the OOM is a fake cap that raises torch.OutOfMemoryError).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).resolve().parent / "gpu_check_results.json"
PRESETS = ["24gb", "16gb", "12gb", "48gb", "80gb"]  # the most used cards first: a cut-short run keeps them
GIB = 2**30
log = logging.getLogger("gpu_check")

# Tiny stand-ins for --cpu-smoke: SD3.5-M's structure (dual-attention blocks, qk-norm, the
# context_pre_only last block), small widths; the CLIP hidden sizes add up to T5's width.
SMOKE = {
    "transformer": dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=3, attention_head_dim=16,
                        num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=64, pooled_projection_dim=64,
                        pos_embed_max_size=16, dual_attention_layers=(0, 1), qk_norm="rms_norm"),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 16, 16),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
                norm_num_groups=8, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                use_post_quant_conv=False),
    "text_encoder": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         projection_dim=32, max_position_embeddings=77),
    "text_encoder_2": dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           projection_dim=32, max_position_embeddings=77),
    "text_encoder_3": dict(vocab_size=1000, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
                           feed_forward_proj="gated-gelu", is_encoder_decoder=False),
}
SMOKE_RES, SMOKE_T5_LEN = 64, 16
SDE_STEP = (900.0, 0.9, 0.8, 0.5)  # the step sampled and trained: timestep, sigma, next sigma, sigma_t


class Results:
    """A JSON list of step records, rewritten whole (atomically) after every step."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> list[dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def append(self, record: dict) -> None:
        records = self.load() + [record]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1) + "\n")
        os.replace(tmp, self.path)
        print(json.dumps(record), flush=True)


# ----------------------------------------------------------------------------- building parts


def configs(smoke: bool) -> dict:
    from superflow_lite.models import SD35_MEDIUM

    return SMOKE if smoke else SD35_MEDIUM


def build(part: str, smoke: bool, device, dtype=torch.bfloat16) -> torch.nn.Module:
    """One part with random weights, built directly on `device` in `dtype` (no float32 copy)."""
    from superflow_lite.models import build_component

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = build_component(part, configs(smoke)[part])
    finally:
        torch.set_default_dtype(previous)
    # float buffers built in float32 regardless (SD3's positional table) take the part's dtype,
    # as from_pretrained(torch_dtype=...) gives them
    return module.to(dtype).requires_grad_(False).eval()


def build_transformer(smoke: bool, quant: str, device, lora_rank: int = 32) -> torch.nn.Module:
    from peft import LoraConfig

    from superflow_lite import models
    from superflow_lite.config import ModelConfig

    tr = build("transformer", smoke, device)
    if quant != "none":
        models.quantize_linears(tr, quant, torch.bfloat16, tuple(models.SKIP_QUANT_MODULES), device)
    targets = ModelConfig().lora_targets
    torch.manual_seed(1)
    tr.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=targets,
                              exclude_modules=models.dead_lora_modules(dict(tr.config))))
    for p in tr.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return tr


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Phase:
    """Peak bytes above the start (torch's allocator) and seconds of a block of work."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        sync("cuda" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync("cuda" if self.cuda else "cpu")
        self.seconds = time.perf_counter() - self.t0
        self.peak_gib = (torch.cuda.max_memory_allocated() - self.start) / GIB if self.cuda else None
        self.reserved_gib = torch.cuda.max_memory_reserved() / GIB if self.cuda else None


# ----------------------------------------------------------------------------- work of each phase


def encode(parts: dict, rows: int, t5_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, 77 + t5_len, D] embeddings and [rows, P] pooled, combined as SD3's encode_prompt."""
    clip_hidden, pooled = [], []
    for name in ("text_encoder", "text_encoder_2"):
        enc = parts[name]
        ids = torch.randint(0, enc.config.vocab_size, (rows, 77), device=device)
        out = enc(ids, output_hidden_states=True)
        clip_hidden.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    clip = torch.cat(clip_hidden, dim=-1)
    t5 = parts.get("text_encoder_3")
    width = t5.config.d_model if t5 is not None else configs(device == "cpu")["transformer"]["joint_attention_dim"]
    clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
    if t5 is not None:
        t5_ids = torch.randint(0, t5.config.vocab_size, (rows, t5_len), device=device)
        t5_out = t5(t5_ids)[0]
    else:
        t5_out = torch.zeros(rows, t5_len, width, device=device, dtype=clip.dtype)
    return torch.cat([clip, t5_out.to(clip.dtype)], dim=1).float(), torch.cat(pooled, dim=-1).float()


def sample_velocity(tr, x, cond, uncond, guidance: float) -> torch.Tensor:
    from superflow_lite.rollout import predict_velocity

    return predict_velocity(tr, x, SDE_STEP[0], cond, uncond, guidance)


def sample_step(tr, x, cond, uncond, guidance: float):
    from superflow_lite.sde import sde_step

    with torch.no_grad():
        return sde_step(x, sample_velocity(tr, x, cond, uncond, guidance), *SDE_STEP[1:])[0]


def stored_step(tr, x, cond, uncond, guidance: float) -> dict:
    """A training micro-batch of SDE_STEP from x as sampling stores it: the latents before and
    after the step, its log-prob, and random advantages."""
    from superflow_lite.sde import sde_step

    with torch.no_grad():
        x_next, logp, _ = sde_step(x, sample_velocity(tr, x, cond, uncond, guidance), *SDE_STEP[1:])
    return {"latents": torch.stack([x, x_next], dim=1), "logp_old": logp[:, None],
            "adv": torch.randn(x.shape[0], 1, device=x.device), "cond": cond, "uncond": uncond}


def train_step(tr, batch: dict, settings) -> torch.Tensor:
    """One trained step of a stored micro-batch as the trainer computes it (policy.step_loss), and its backward."""
    from superflow_lite.models import adapters_disabled
    from superflow_lite.policy import step_loss
    from superflow_lite.rollout import Schedule

    timestep, sigma, sigma_next, sigma_t = SDE_STEP
    schedule = Schedule(sigmas=(sigma, sigma_next), timesteps=(timestep,), sigma_t=(sigma_t,))
    loss, _ = step_loss(tr, batch, schedule, 0, 0, settings, lambda: adapters_disabled(tr))
    loss.backward()
    return loss.detach()


def decode(vae, latents: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "sliced":
        vae.enable_slicing()
    elif mode == "tiled":
        vae.enable_tiling()
    with torch.no_grad():
        z = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        return vae.decode(z, return_dict=False)[0]


def score(reward_model, images: torch.Tensor) -> torch.Tensor:
    """A CLIP reward's forward (PickScore's shape: CLIP-H) on the decoded images at 224 px."""
    size = reward_model.config.vision_config.image_size
    pixels = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear").to(reward_model.dtype)
    ids = torch.zeros(images.shape[0], 77, dtype=torch.long, device=images.device)
    with torch.no_grad():
        return reward_model(input_ids=ids, pixel_values=pixels).logits_per_image.diagonal()


# ----------------------------------------------------------------------------- steps


def step_env(smoke: bool) -> dict:
    import importlib

    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception as err:  # a missing wheel is what this step is for
            versions[name] = f"missing: {type(err).__name__}: {err}"
    out = {"versions": versions, "cuda": torch.cuda.is_available(), "smoke": smoke}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(card=props.name, total_gib=props.total_memory / GIB, capability=f"{props.major}.{props.minor}")
    return out


def step_numerics(smoke: bool, device) -> dict:
    """int8 and nf4 against bf16 on the same weights and LoRA: forward, LoRA backward."""
    import bitsandbytes as bnb

    res = SMOKE_RES if smoke else 512
    c = configs(smoke)["transformer"]
    side = res // 8
    torch.manual_seed(2)
    x = torch.randn(1, c["in_channels"], side, side, device=device)
    cond = _embeds(1, 77 + (SMOKE_T5_LEN if smoke else 128), c["joint_attention_dim"], c["pooled_projection_dim"], device)
    out, grads = {}, {}
    result: dict = {"resolution": res}
    for quant in ("none", "int8", "nf4"):
        tr = build_transformer(smoke, quant, device)
        for name, p in tr.named_parameters():  # lora_B away from zero, the same in every variant
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name)), dtype=p.dtype).to(device) * 1e-3
        stats = {"max_abs_input": 0.0, "nonfinite_outputs": 0}
        hooks = []
        if quant == "int8":
            def hook(mod, inputs, output, stats=stats):
                stats["max_abs_input"] = max(stats["max_abs_input"], float(inputs[0].detach().abs().max()))
                stats["nonfinite_outputs"] += int(not torch.isfinite(output).all())
            hooks = [m.register_forward_hook(hook) for m in tr.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
        from superflow_lite.rollout import predict_velocity

        v = predict_velocity(tr, x, 900.0, cond, None, 1.0)
        v.pow(2).mean().backward()
        for h in hooks:
            h.remove()
        out[quant] = v.detach().float().cpu()
        grads[quant] = torch.cat([p.grad.flatten().float().cpu() for _, p in sorted(
            ((n, p) for n, p in tr.named_parameters() if p.requires_grad), key=lambda t: t[0])])
        entry = {"finite": bool(torch.isfinite(out[quant]).all() and torch.isfinite(grads[quant]).all())}
        if quant != "none":
            entry["rel_err_velocity"] = float((out[quant] - out["none"]).norm() / out["none"].norm())
            entry["grad_cosine"] = float(torch.nn.functional.cosine_similarity(grads[quant], grads["none"], dim=0))
        if quant == "int8":
            entry.update(stats, fp16_overflow=stats["max_abs_input"] > 65504 or stats["nonfinite_outputs"] > 0)
        result[quant] = entry
        del tr
        _free(device)
    return result


def _embeds(rows: int, n_txt: int, width: int, pooled: int, device):
    from superflow_lite.embeddings import PromptEmbeds

    return PromptEmbeds(torch.randn(rows, n_txt, width, device=device), torch.randn(rows, pooled, device=device))


def _free(device) -> None:
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def step_preset(preset: str, smoke: bool, device) -> dict:
    """Load, encode, sample and train as the preset does, under its card's memory."""
    from superflow_lite import memory, text_encoders, vram
    from superflow_lite.algorithms import resolve_algorithm
    from superflow_lite.config import build_config
    from superflow_lite.models import quantize_linears
    from superflow_lite.policy import LossSettings

    cfg = build_config(preset)
    card = vram.CARD_GIB[preset]
    plan = memory.plan_for_config(cfg, vram_gib=card)
    res, t5_len = (SMOKE_RES, SMOKE_T5_LEN) if smoke else (cfg.sampling.resolution, cfg.sampling.max_sequence_length)
    cuda = torch.device(device).type == "cuda"
    record: dict = {"card_gib": card, "plan": {
        "static_gib": plan.static_bytes / GIB, "buffer_gib": plan.buffer / GIB, "peak_gib": plan.peak_bytes / GIB,
        **{f"{p}_gib": plan.phase_bytes(p) / GIB for p in plan.phases},
        "sample_micro_batch": plan.sample_micro_batch, "train_micro_batch": plan.train_micro_batch, "R": plan.rollout_cap}}
    m = cfg.model
    parts: dict = {}
    # Streamed encoders live in host memory: built before the cap, moved to the CPU.
    streamed = [p for p, on in (("text_encoder", m.clip_encoders == "offload"), ("text_encoder_2", m.clip_encoders == "offload"),
                                ("text_encoder_3", m.text_encoder_3 == "offload")) if on]
    for part in streamed:
        parts[part] = build(part, smoke, device).to("cpu")
        if cuda:
            text_encoders.stream_from_cpu(parts[part], torch.device(device))
    _free(device)
    if cuda:
        torch.cuda.set_per_process_memory_fraction(min(1.0, card * GIB / torch.cuda.get_device_properties(0).total_memory))
    with Phase(device) as ph:
        tr = build_transformer(smoke, m.transformer_quant, device, m.lora_rank)
        if m.gradient_checkpointing:
            tr.enable_gradient_checkpointing()
        for part in ("text_encoder", "text_encoder_2"):
            if part not in streamed:
                parts[part] = build(part, smoke, device)
        if m.text_encoder_3 in ("resident", "resident_8bit"):
            parts["text_encoder_3"] = build("text_encoder_3", smoke, device)
            if m.text_encoder_3 == "resident_8bit":
                quantize_linears(parts["text_encoder_3"], "int8", torch.bfloat16, text_encoders.T5_INT8_SKIP, device)
        vae = build("vae", smoke, device)
        reward = _reward_model(smoke, device) if str(cfg.reward.device).startswith("cuda") or smoke else None
        params = [p for p in tr.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        if cfg.train.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(params, lr=1e-5)
    record["load"] = _phase_record(ph, static=True)
    rows_enc = cfg.batch.prompts_per_iter + 1
    with Phase(device) as ph:
        with torch.no_grad():
            embeds, pooled = encode(parts, rows_enc, t5_len, device)
    record["encode"] = _phase_record(ph)
    from superflow_lite.embeddings import PromptEmbeds

    c = tr.config
    side = res // 8
    b_s, b_t, g = plan.sample_micro_batch, plan.train_micro_batch, cfg.sampling.guidance_scale
    rep = lambda b: PromptEmbeds(embeds[:1].expand(b, -1, -1).contiguous(), pooled[:1].expand(b, -1).contiguous())  # noqa: E731
    # CPU only: an eval forward repacks bitsandbytes' nf4 weights for an inference-only kernel
    # (no autograd after it); the smoke keeps nf4 in train mode. CUDA runs as the trainer: eval.
    tr.train() if (not cuda and m.transformer_quant == "nf4") else tr.eval()
    x = torch.randn(b_s, c.in_channels, side, side, device=device)
    if cuda:  # one warm-up step: kernel selection and cuBLAS set-up are not an iteration's time
        sample_step(tr, x, rep(b_s), rep(b_s), g)
    with Phase(device) as ph:
        x = sample_step(tr, x, rep(b_s), rep(b_s), g)
    record["sample_step"] = _phase_record(ph)
    with Phase(device) as ph:
        images = decode(vae, x, cfg.memory.vae_decode)
        if reward is not None:
            score(reward, images)
    record["decode_and_score"] = _phase_record(ph)
    del images, x
    batch = stored_step(tr, torch.randn(b_t, c.in_channels, side, side, device=device), rep(b_t), rep(b_t), g)
    settings = LossSettings.from_config(cfg, resolve_algorithm(cfg))
    if cuda:  # warm-up, as for sampling; its peak is in max_reserved_gib below
        train_step(tr, batch, settings)
    with Phase(device) as ph:
        train_step(tr, batch, settings)
        opt.step()
        opt.zero_grad(set_to_none=False)
    record["train_micro_batch_step"] = _phase_record(ph)
    record["iteration_s_extrapolated"] = _extrapolate(cfg, plan, record)
    if cuda:
        record["max_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    return record


def _phase_record(ph: Phase, static: bool = False) -> dict:
    out = {"seconds": round(ph.seconds, 3)}
    if ph.peak_gib is not None:
        out["peak_gib"] = round(ph.peak_gib, 3)
        out["reserved_gib"] = round(ph.reserved_gib, 3)
        if static:
            out["held_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
    return out


def _extrapolate(cfg, plan, record: dict) -> dict:
    """A full iteration from the measured pieces: R rollouts of T steps in micro-batches, one
    decode + score per micro-batch, (T - 1 or train_steps) trained steps per rollout per update."""
    T, R = cfg.sampling.num_steps, plan.rollout_cap
    chunks = math.ceil(R / plan.sample_micro_batch)
    trained = cfg.train.train_steps or T - 1
    micro = math.ceil(R / plan.train_micro_batch)  # every rollout once per iteration, over the updates
    sample = chunks * (T * record["sample_step"]["seconds"] + record["decode_and_score"]["seconds"])
    train = micro * trained * record["train_micro_batch_step"]["seconds"]
    return {"encode": record["encode"]["seconds"], "sample": round(sample, 1), "train": round(train, 1),
            "total": round(record["encode"]["seconds"] + sample + train, 1)}


def _reward_model(smoke: bool, device):
    from transformers import CLIPConfig, CLIPModel

    if smoke:
        config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                             vocab_size=1000), vision_config=dict(hidden_size=32, intermediate_size=64,
                                             num_attention_heads=2, num_hidden_layers=2, image_size=32, patch_size=8))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from measure_activations import CLIP_H14  # PickScore's / HPSv2's CLIP-H/14

        config = CLIPConfig(**CLIP_H14)
    torch.manual_seed(0)
    with torch.device(device):
        return CLIPModel(config).to(torch.float16 if torch.device(device).type == "cuda" else torch.float32).eval()


def step_oom(smoke: bool, device) -> dict:
    """retry_on_oom on a training micro-batch of 8 where only about 2 rows fit."""
    from superflow_lite import memory, oom
    from superflow_lite.policy import LossSettings

    c = configs(smoke)["transformer"]
    res = SMOKE_RES if smoke else 512
    tr = build_transformer(smoke, "none", device)
    tr.enable_gradient_checkpointing()
    side, n_txt = res // 8, 77 + (SMOKE_T5_LEN if smoke else 128)
    per_row = memory.law(memory.measurements()["transformer"]["variants"]["train_ckpt_kl"],
                         seq_img=2 * (side // 2) ** 2, seq_txt=2 * n_txt)
    if torch.device(device).type == "cuda":
        cap = torch.cuda.memory_allocated() + 2.5 * per_row + GIB // 2
        torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    settings = LossSettings(guidance_scale=4.5, clip_range=1e-4, kl_beta=0.04, detach_uncond=True)
    tried = []

    def fn(rows: int):
        tried.append(rows)
        if smoke and rows > 2:  # the CPU has no allocator cap: a fake one
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake cap of 2 rows; asked {rows})")
        x = torch.randn(rows, c["in_channels"], side, side, device=device)
        e = _embeds(rows, n_txt, c["joint_attention_dim"], c["pooled_projection_dim"], device)
        return float(train_step(tr, stored_step(tr, x, e, e, 4.5), settings))

    loss, size = oom.retry_on_oom(fn, 8, log, "gpu check training")
    return {"tried": tried, "finished_at": size, "loss_finite": math.isfinite(loss), "halved": size < 8}


# ----------------------------------------------------------------------------- driver


def run_step(results: Results, name: str, fn, *args) -> dict:
    t0 = time.perf_counter()
    try:
        record = {"step": name, "ok": True, **fn(*args)}
    except Exception as err:  # one failed step must not lose the others
        record = {"step": name, "ok": False, "error": f"{type(err).__name__}: {err}"[:2000]}
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    results.append(record)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU, every step (seconds)")
    parser.add_argument("--out", default=str(OUT), help="the JSON results file (appended to after each step)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no step after this many seconds")
    parser.add_argument("--only", default="", help="internal: run one step in this process (a preset, oom, numerics)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from superflow_lite.models import silence_int8_cast_warning

    silence_int8_cast_warning()
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or use --cpu-smoke", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    results = Results(Path(args.out))
    if args.only:
        fns = {"numerics": step_numerics, "oom": step_oom}
        fn = fns.get(args.only)
        if fn is None:
            return 0 if run_step(results, args.only, step_preset, args.only, smoke, device)["ok"] else 1
        return 0 if run_step(results, args.only, fn, smoke, device)["ok"] else 1
    t0 = time.perf_counter()
    run_step(results, "env", step_env, smoke)
    failed = 0
    for name in ["numerics", *PRESETS, "oom"]:
        if time.perf_counter() - t0 > args.budget_s:
            results.append({"step": name, "ok": False, "error": f"skipped: past the {args.budget_s:.0f} s budget"})
            continue
        if smoke:  # one process: tiny shapes, no caps to isolate
            fn = {"numerics": step_numerics, "oom": step_oom}.get(name)
            record = run_step(results, name, fn, smoke, device) if fn else run_step(results, name, step_preset, name, smoke, device)
            failed += not record["ok"]
            continue
        # A fresh process per step: its own memory cap, and a crash or hang costs one step only.
        left = max(30.0, args.budget_s + 60 - (time.perf_counter() - t0))
        try:
            rc = subprocess.run([sys.executable, __file__, "--only", name, "--out", args.out], timeout=left).returncode
        except subprocess.TimeoutExpired:
            results.append({"step": name, "ok": False, "error": f"timed out after {left:.0f} s"})
            rc = 1
        failed += rc != 0
    print(f"gpu_check: {failed} step(s) failed; results in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
