"""Measure the activation terms of the memory plan on the real SD3.5-Medium architecture.

    python benchmarks/measure_activations.py           # all terms -> superflow_lite/data/activation_measurements.json
    python benchmarks/measure_activations.py --check   # the tracker: fake vs real tensors on a small SD3

How. Each part is built from its published config (superflow_lite.models.SD35_MEDIUM, and
the public configs of the reward models below) on the meta device; its weights become
FakeTensors on the CPU device (shape, dtype, no storage), and the work the trainer does is
run under FakeTensorMode: the real diffusers/transformers/peft code, the real autograd graph,
torch's own kernel choice for the CPU device (flash attention for SDPA: it saves the output
and the log-sum-exp, as CUDA's flash kernel does; no N^2 matrix). LiveBytes, a
TorchDispatchMode, adds the bytes of every new tensor storage an op creates and subtracts
them when Python frees it; storages that existed before (the weights, the inputs) count 0.
Its peak above the start is the activation peak: the bytes the tensors hold, without the
CUDA caching allocator's rounding and fragmentation (the plan adds a margin for those).
--check runs the same tracker on real tensors and on FakeTensors of a small SD3 and
asserts they agree, so the fake accounting is the accounting of real allocations.

Each term is measured at several sizes, and a linear law is fitted by least squares
(written beside each term); memory.py evaluates the laws. The fitted law reproduces every
point within max_rel_err. Uses one CPU thread; about 10 minutes on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(__file__).resolve().parent.parent / "superflow_lite" / "data" / "activation_measurements.json"
DTYPE = torch.bfloat16
LORA_RANK = 32
LORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
                "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]

# Reward models' public configs (transformers classes); the plan reads their parameter counts.
CLIP_L14 = dict(  # openai/clip-vit-large-patch14 (aesthetic's tower, clipscore)
    text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768),
    vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, patch_size=14, image_size=224, projection_dim=768),
    projection_dim=768)
CLIP_H14 = dict(  # laion/CLIP-ViT-H-14 (PickScore_v1, HPSv2)
    text_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, projection_dim=1024, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),
    projection_dim=1024)
OWLV2_B16 = dict(  # google/owlv2-base-patch16-ensemble (geneval)
    text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12, max_position_embeddings=16),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, patch_size=16, image_size=960),
    projection_dim=512)
AESTHETIC_HEAD_PARAMS = 768 * 1024 + 1024 + 1024 * 128 + 128 + 128 * 64 + 64 + 64 * 16 + 16 + 16 + 1  # LAION MLP


class LiveBytes(TorchDispatchMode):
    """Live bytes of the tensor storages ops create inside the mode, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: dict[int, int] = {}

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.pop(key, None)

    def _note(self, t: torch.Tensor, nbytes_if_new: bool) -> None:
        st = t.untyped_storage()  # torch keeps one Python object per storage: weakref-able
        if id(st) in self._seen:
            return
        n = st.nbytes() if nbytes_if_new else 0
        self._seen[id(st)] = n
        weakref.finalize(st, self._free, id(st), n)
        self.live += n
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                self._note(t, False)  # existed before: weights, inputs, views of them
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._note(t, True)
        return out


def to_fake(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """Meta-device weights -> FakeTensors on the CPU device (Module.to cannot swap fakes)."""
    conv, cpu = mode.fake_tensor_converter, torch.device("cpu")
    for m in module.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = torch.nn.Parameter(conv.from_meta_and_device(mode, p.data, cpu), requires_grad=p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = conv.from_meta_and_device(mode, b, cpu)
    return module


def peak_of(fn) -> int:
    with LiveBytes() as lb:
        fn()
    return lb.peak


def fit(points: list[dict], features: list[str]) -> dict:
    """Least squares bytes ~ sum(coef_f * point[f]) + c; max relative error over the points."""
    a = np.array([[p[f] for f in features] + [1.0] for p in points], dtype=np.float64)
    y = np.array([p["bytes"] for p in points], dtype=np.float64)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    pred = a @ coef
    err = float(np.max(np.abs(pred - y) / y))
    return {"coef": {f: float(c) for f, c in zip(features + ["c"], coef)}, "max_rel_err": err}


# ----------------------------------------------------------------------------- transformer


def build_transformer(mode: FakeTensorMode):
    from peft import LoraConfig

    from superflow_lite.models import SD35_MEDIUM, build_component

    with torch.device("meta"):
        tr = build_component("transformer", SD35_MEDIUM["transformer"]).to(DTYPE)
    tr.requires_grad_(False)
    tr.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    for p in tr.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # as models.add_lora
    tr.eval()
    return to_fake(tr, mode)


def transformer_point(tr, kind: str, res: int, n_txt: int, b: int, cfg: bool, kl: bool) -> dict:
    """One trainer step on fake tensors: a sampling step (kind=sample) or step_loss + backward."""
    from superflow_lite.embeddings import PromptEmbeds
    from superflow_lite.policy import clipped_policy_loss
    from superflow_lite.rollout import predict_velocity
    from superflow_lite.sde import gaussian_logp, kl_to_reference, sde_step, sde_step_mean_std

    h = res // 8
    x, x_next = torch.randn(b, 16, h, h), torch.randn(b, 16, h, h)
    cond = PromptEmbeds(torch.randn(b, n_txt, 4096), torch.randn(b, 2048))
    unc = PromptEmbeds(torch.randn(b, n_txt, 4096), torch.randn(b, 2048)) if cfg else None
    logp_old, adv = torch.randn(b), torch.randn(b)
    s, s_next, sigma_t = 0.8, 0.7, 0.5

    def sample():
        with torch.no_grad():
            v = predict_velocity(tr, x, 800.0, cond, unc, 4.5)
            sde_step(x, v, s, s_next, sigma_t)

    def train():
        v = predict_velocity(tr, x, 800.0, cond, unc, 4.5)
        mu, std = sde_step_mean_std(x, v, s, s_next, sigma_t)
        loss_pg, _ = clipped_policy_loss(gaussian_logp(x_next, mu, std), logp_old, adv, 1e-4)
        loss = loss_pg.mean()
        if kl:
            with torch.no_grad():
                tr.disable_adapters()
                v_ref = predict_velocity(tr, x, 800.0, cond, unc, 4.5)
                tr.enable_adapters()
            mu_ref, _ = sde_step_mean_std(x, v_ref, s, s_next, sigma_t)
            loss = loss + 0.04 * kl_to_reference(mu_ref, mu, sigma_t).mean()
        loss.backward()

    nbytes = peak_of(sample if kind == "sample" else train)
    seqs = b * (2 if cfg else 1)
    return {"res": res, "n_txt": n_txt, "rows": b, "cfg": cfg, "n_img": (res // 16) ** 2,
            "seq_img": seqs * (res // 16) ** 2, "seq_txt": seqs * n_txt, "bytes": nbytes}


TRANSFORMER_GRID = [  # (res, n_txt, rows, cfg): n_txt = 77 CLIP + max_sequence_length T5 tokens
    (512, 205, 1, False), (512, 205, 1, True), (512, 205, 2, True), (256, 205, 2, True),
    (1024, 205, 1, True), (512, 333, 1, True), (1024, 333, 1, False),
]
TRANSFORMER_VARIANTS = {  # name: (kind, gradient checkpointing, KL reference pass)
    "sample": ("sample", False, False),
    "train_ckpt_kl": ("train", True, True), "train_ckpt": ("train", True, False),
    "train_kl": ("train", False, True), "train": ("train", False, False),
}


def measure_transformer(mode: FakeTensorMode) -> dict:
    tr = build_transformer(mode)
    lora = [p for p in tr.parameters() if p.requires_grad]
    out = {"config": "SD3.5-Medium transformer", "dtype": str(DTYPE), "lora_rank": LORA_RANK,
           "lora_params": sum(p.numel() for p in lora), "law": "bytes = a_img*seq_img + a_txt*seq_txt + c "
           "(seq_* = tokens summed over the forward's sequences; CFG doubles the sequences)", "variants": {}}
    with mode:
        for p in lora:  # gradients exist from the first micro-batch on: the plan counts them apart
            p.grad = torch.zeros_like(p)
        for name, (kind, ckpt, kl) in TRANSFORMER_VARIANTS.items():
            if ckpt:
                tr.enable_gradient_checkpointing()
            else:
                tr.disable_gradient_checkpointing()
            t0 = time.perf_counter()
            points = [transformer_point(tr, kind, *g, kl=kl) for g in TRANSFORMER_GRID]
            out["variants"][name] = {"checkpointing": ckpt, "kl": kl, "points": points, **fit(points, ["seq_img", "seq_txt"])}
            print(f"  transformer {name}: {time.perf_counter() - t0:.0f}s, fit err {out['variants'][name]['max_rel_err']:.3%}", flush=True)
    return out


# ----------------------------------------------------------------------------- other parts


def measure_vae(mode: FakeTensorMode) -> dict:
    from superflow_lite.models import SD35_MEDIUM, build_component

    with torch.device("meta"):
        vae = build_component("vae", SD35_MEDIUM["vae"]).to(DTYPE).eval()
    vae = to_fake(vae, mode)
    points = []
    with mode, torch.no_grad():
        for res, b in [(256, 1), (512, 1), (512, 2), (768, 1), (1024, 1)]:
            z = torch.randn(b, 16, res // 8, res // 8)
            nbytes = peak_of(lambda: vae.decode((z.to(DTYPE) / 1.5305) + 0.0609, return_dict=False)[0].float())
            points.append({"res": res, "rows": b, "pixels": b * res * res, "bytes": nbytes})
    return {"law": "bytes = a_px*pixels + c (pixels summed over the decoded images)", "points": points, **fit(points, ["pixels"])}


def measure_encoders(mode: FakeTensorMode) -> dict:
    from superflow_lite.models import SD35_MEDIUM, build_component

    out = {}
    with torch.device("meta"):
        t5 = build_component("text_encoder_3", SD35_MEDIUM["text_encoder_3"]).to(DTYPE).eval()
        clips = [build_component(n, SD35_MEDIUM[n]).to(DTYPE).eval() for n in ("text_encoder", "text_encoder_2")]
    t5, clips = to_fake(t5, mode), [to_fake(c, mode) for c in clips]
    points = []
    with mode, torch.no_grad():
        for length, b in [(77, 1), (77, 4), (128, 1), (128, 4), (192, 2), (256, 1), (256, 4)]:
            ids = torch.zeros(b, length, dtype=torch.long)
            points.append({"tokens": b * length, "tokens_sq": b * length * length, "length_sq": length * length,
                           "rows": b, "length": length, "bytes": peak_of(lambda: t5(ids)[0])})
        out["t5"] = {"law": "bytes = a_tok*tokens + a_sq*tokens_sq + a_len*length_sq + c (tokens_sq = rows*L^2: "
                     "attention scores; length_sq = L^2: the position bias, shared by the rows)",
                     "points": points, **fit(points, ["tokens", "tokens_sq", "length_sq"])}
        points = []
        for b in (1, 4, 8):
            ids = torch.zeros(b, 77, dtype=torch.long)
            nbytes = peak_of(lambda: [c(ids, output_hidden_states=True) for c in clips])
            points.append({"rows": b, "bytes": nbytes})
        out["clip"] = {"law": "bytes = a_row*rows + c (CLIP-L then CLIP-G, 77 tokens, all hidden states kept)",
                       "points": points, **fit(points, ["rows"])}
    return out


def measure_rewards(mode: FakeTensorMode) -> dict:
    from transformers import CLIPConfig, CLIPModel, Owlv2Config, Owlv2ForObjectDetection

    out = {}
    specs = {"clip_l14": (CLIPModel, CLIPConfig, CLIP_L14, 224), "clip_h14": (CLIPModel, CLIPConfig, CLIP_H14, 224),
             "owlv2_b16": (Owlv2ForObjectDetection, Owlv2Config, OWLV2_B16, 960)}
    for name, (cls, config_cls, config, size) in specs.items():
        with torch.device("meta"):
            model = cls(config_cls(**config)).to(torch.float16).eval()
        vision_params = sum(p.numel() for p in model.vision_model.parameters()) if hasattr(model, "vision_model") else None
        params = sum(p.numel() for p in model.parameters())
        model = to_fake(model, mode)
        points = []
        with mode, torch.no_grad():
            for b in (1, 4):
                pixels = torch.randn(b, 3, size, size, dtype=torch.float16)
                ids = torch.zeros(b * (4 if name.startswith("owl") else 1), 16, dtype=torch.long)
                nbytes = peak_of(lambda: model(input_ids=ids, pixel_values=pixels))
                points.append({"rows": b, "bytes": nbytes})
        out[name] = {"params": params, "vision_params": vision_params, "dtype": "float16", "image_size": size,
                     "law": "bytes = a_row*rows + c", "points": points, **fit(points, ["rows"])}
    out["aesthetic_head_params"] = AESTHETIC_HEAD_PARAMS
    return out


# ----------------------------------------------------------------------------- check


def tracker_check() -> dict:
    """LiveBytes on real tensors vs FakeTensors of a small SD3 (train step with checkpointing)."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig

    config = dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=32,
                  num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=128,
                  pooled_projection_dim=64, pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")

    def build():
        torch.manual_seed(0)
        tr = SD3Transformer2DModel(**config)
        tr.requires_grad_(False)
        tr.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        tr.enable_gradient_checkpointing()
        return tr

    def step(tr):
        x = torch.randn(2, 16, 16, 16)
        out = tr(hidden_states=x, timestep=torch.full((2,), 500.0), encoder_hidden_states=torch.randn(2, 20, 64),
                 pooled_projections=torch.randn(2, 64), return_dict=False)[0]
        out.float().pow(2).mean().backward()

    real = build()
    real_peak = peak_of(lambda: step(real))
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.device("meta"):
        fake = build()
    fake = to_fake(fake, mode)
    with mode:
        fake_peak = peak_of(lambda: step(fake))
    return {"real_bytes": real_peak, "fake_bytes": fake_peak}


def int8_kept_check(shapes=((1, 64, 32), (2, 16, 32))) -> list[dict]:
    """Bytes bitsandbytes' int8 layers keep from the forward to the backward under gradient
    checkpointing, on real tensors: live bytes at the end of the forward of a 4-block
    SD3.5-M-shaped transformer (real widths; blocks: dual, dual, single, context_pre_only) in
    int8 minus the same in bf16, against memory.int8_saved_input_elements. shapes: (rows,
    image tokens, text tokens). CPU, eval mode (MatMul8bitLt, as the trainer runs it)."""
    import logging

    from peft import LoraConfig

    from superflow_lite import memory, models

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    config = models.sd35m_shaped_config(4, dual_layers=2, pos_embed_max_size=16)
    live = {}
    for quant in ("none", "int8"):
        torch.manual_seed(0)
        with torch.device("meta"):
            tr = models.build_component("transformer", config)
        tr = tr.to_empty(device="cpu").to(DTYPE)
        for p in tr.parameters():
            p.data.normal_(0, 0.02)
        if quant != "none":
            models.quantize_linears(tr, quant, DTYPE, tuple(models.SKIP_QUANT_MODULES))
        tr.requires_grad_(False)
        tr.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS,
                                  exclude_modules=models.dead_lora_modules(config)))
        for p in tr.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        tr.enable_gradient_checkpointing()
        tr.eval()
        for rows, n_img, n_txt in shapes:
            side = 2 * int(n_img ** 0.5)
            x = torch.randn(rows, 16, side, side, dtype=DTYPE)
            kwargs = dict(timestep=torch.full((rows,), 500.0), encoder_hidden_states=torch.randn(rows, n_txt, 4096, dtype=DTYPE),
                          pooled_projections=torch.randn(rows, 2048, dtype=DTYPE), return_dict=False)
            with LiveBytes() as lb:
                out = tr(hidden_states=x, **kwargs)[0]
                live[quant, rows, n_img, n_txt] = lb.live
                out.float().pow(2).mean().backward()
    return [{"rows": r, "n_img": i, "n_txt": t, "measured_bytes": live["int8", r, i, t] - live["none", r, i, t],
             "law_bytes": 2 * memory.int8_saved_input_elements(config, i, t, r)} for r, i, t in shapes]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the tracker on real vs fake tensors")
    parser.add_argument("--int8", action="store_true", help="only compare the int8 kept inputs with the counted law")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.int8:
        points = int8_kept_check()
        for p in points:
            print(f"int8 kept inputs, rows {p['rows']}, {p['n_img']}+{p['n_txt']} tokens: "
                  f"measured {p['measured_bytes']} B, law {p['law_bytes']} B")
        return 0 if all(p["measured_bytes"] == p["law_bytes"] for p in points) else 1
    check = tracker_check()
    print(f"tracker check: real {check['real_bytes']} B, fake {check['fake_bytes']} B", flush=True)
    if check["real_bytes"] != check["fake_bytes"]:
        print("the fake accounting differs from the real one", file=sys.stderr)
        return 1
    if args.check:
        return 0
    import diffusers
    import peft
    import transformers

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    t0 = time.perf_counter()
    result = {
        "about": "Activation peaks (bytes above the weights) of SD3.5-Medium's parts, measured with "
                 "benchmarks/measure_activations.py on FakeTensors of the real architecture (CPU device, "
                 "torch's tensor accounting, no CUDA allocator). memory.py reads the fitted coefficients.",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
        "tracker_check": check,
    }
    result["transformer"] = measure_transformer(mode)
    result["vae_decode"] = measure_vae(mode)
    print(f"  vae: fit err {result['vae_decode']['max_rel_err']:.3%}", flush=True)
    result["encoders"] = measure_encoders(mode)
    result["rewards"] = measure_rewards(mode)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
