"""The parameter layouts of the pipeline's parts: every Linear layer (what bitsandbytes
quantizes), the other parameters and the floating buffers, and the bytes they take.

A layout comes from a part's config by arithmetic (transformer_layout, vae_layout,
clip_text_layout, t5_encoder_layout: the real SD3.5-Medium parts without building them)
or from a built module (layout_of_module, module_nbytes: what the arithmetic must equal,
checked by the tests on meta-device and quantized builds). The memory plan sizes its exact
terms from them (weights per dtype and quantization, LoRA tensors, the largest quantized
Linear); the launch gate checks LoRA targets against a layout's Linear names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .models import skips_quantization


@dataclass(frozen=True)
class LinearSpec:
    """One nn.Linear: its module path, fan-in, fan-out and bias."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool


@dataclass(frozen=True)
class Layout:
    """A part's parameters: its Linear layers (what bitsandbytes quantizes), the other
    parameters (norms, convolutions, embeddings) and the floating buffers loaded with it
    (SD3's 384x384 positional table), plus its largest single module (what a streamed
    encoder holds on the accelerator at a time)."""

    linears: tuple[LinearSpec, ...]
    other_params: int
    float_buffers: int
    largest_module: int

    @property
    def num_params(self) -> int:
        return self.other_params + sum(l.fan_in * l.fan_out + l.fan_out * l.bias for l in self.linears)


def linear_nbytes(spec: LinearSpec, dtype_bytes: int, quant: str) -> int:
    """Bytes of one Linear as bitsandbytes 0.45+ stores it.

    int8 (Linear8bitLt after loading): int8 weight + one float32 scale per output row (SCB).
    nf4 (Linear4bit): two weights per byte + one float32 absmax per 64-weight block + the
    16-entry float32 code book. The bias stays in the compute dtype.
    """
    weight, bias = spec.fan_in * spec.fan_out, spec.fan_out * spec.bias * dtype_bytes
    if quant == "int8":
        return weight + 4 * spec.fan_out + bias
    if quant == "nf4":
        return (weight + 1) // 2 + 4 * math.ceil(weight / 64) + 4 * 16 + bias
    return weight * dtype_bytes + bias


def layout_nbytes(layout: Layout, dtype_bytes: int, quant: str = "none", skip: tuple[str, ...] = ()) -> int:
    total = (layout.other_params + layout.float_buffers) * dtype_bytes
    for spec in layout.linears:
        total += linear_nbytes(spec, dtype_bytes, "none" if skips_quantization(spec.name, skip) else quant)
    return total


def largest_linear(layout: Layout, skip: tuple[str, ...] = (), per_token: bool = False) -> LinearSpec:
    """The quantized Linear with the most weights (its scratch bounds the 8-bit/4-bit kernels').
    per_token: only layers applied to every token (attention and feed-forward projections;
    not the AdaLayerNorm modulation, which sees one timestep embedding per sequence)."""
    specs = [s for s in layout.linears if not skips_quantization(s.name, skip)]
    if per_token:
        specs = [s for s in specs if not s.name.endswith(".linear") and "embed" not in s.name] or specs
    return max(specs, key=lambda s: s.fan_in * s.fan_out)


def layout_of_module(module: torch.nn.Module) -> Layout:
    """The layout of a built module (any device, meta included): what the formulas must equal."""
    linears, linear_params, largest = [], 0, 0
    for name, m in module.named_modules():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        largest = max(largest, own)
        if isinstance(m, torch.nn.Linear):
            linears.append(LinearSpec(name, m.in_features, m.out_features, m.bias is not None))
            linear_params += own
    other = sum(p.numel() for p in module.parameters()) - linear_params
    buffers = sum(b.numel() for _, b in module.named_buffers() if b.is_floating_point())
    return Layout(tuple(sorted(linears, key=lambda s: s.name)), other, buffers, largest)


def transformer_layout(c: dict) -> Layout:
    """SD3Transformer2DModel (diffusers 0.3x-0.4x) from its config."""
    D, hd = c["num_attention_heads"] * c["attention_head_dim"], c["attention_head_dim"]
    p, L, dual = c["patch_size"], c["num_layers"], set(c.get("dual_attention_layers") or ())
    lin = [LinearSpec("time_text_embed.timestep_embedder.linear_1", 256, D, True),
           LinearSpec("time_text_embed.timestep_embedder.linear_2", D, D, True),
           LinearSpec("time_text_embed.text_embedder.linear_1", c["pooled_projection_dim"], D, True),
           LinearSpec("time_text_embed.text_embedder.linear_2", D, D, True),
           LinearSpec("context_embedder", c["joint_attention_dim"], c["caption_projection_dim"], True),
           LinearSpec("norm_out.linear", D, 2 * D, True),
           LinearSpec("proj_out", D, p * p * c["out_channels"], True)]
    other = c["in_channels"] * D * p * p + D  # pos_embed.proj, a patch-size convolution
    qk = hd if c.get("qk_norm") == "rms_norm" else 2 * hd if c.get("qk_norm") == "layer_norm" else 0
    for i in range(L):
        pre_only, b = i == L - 1, f"transformer_blocks.{i}."
        lin.append(LinearSpec(b + "norm1.linear", D, (9 if i in dual else 6) * D, True))
        lin.append(LinearSpec(b + "norm1_context.linear", D, (2 if pre_only else 6) * D, True))
        for proj in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj") + (() if pre_only else ("to_add_out",)):
            lin.append(LinearSpec(b + "attn." + proj, D, D, True))
        other += 4 * qk
        if i in dual:
            lin += [LinearSpec(b + "attn2." + proj, D, D, True) for proj in ("to_q", "to_k", "to_v", "to_out.0")]
            other += 2 * qk
        for ff in ("ff",) + (() if pre_only else ("ff_context",)):
            lin += [LinearSpec(b + ff + ".net.0.proj", D, 4 * D, True), LinearSpec(b + ff + ".net.2", 4 * D, D, True)]
    buffers = c["pos_embed_max_size"] ** 2 * D if c.get("pos_embed_max_size") else 0
    largest = max(max(s.fan_in * s.fan_out + s.fan_out for s in lin), other)
    return Layout(tuple(sorted(lin, key=lambda s: s.name)), other, buffers, largest)


def _resnet(cin: int, cout: int) -> int:
    """ResnetBlock2D without time embedding: two GroupNorms, two 3x3 convs, a 1x1 shortcut if needed."""
    return 2 * cin + cin * cout * 9 + cout + 2 * cout + cout * cout * 9 + cout + (cin * cout + cout if cin != cout else 0)


def vae_layout(c: dict) -> Layout:
    """AutoencoderKL (no quant convs) from its config."""
    ch, n, z = list(c["block_out_channels"]), c["layers_per_block"], c["latent_channels"]
    lin, other = [], 0
    for part in ("encoder", "decoder"):
        top = ch[-1]
        other += _resnet(top, top) * 2 + 2 * top  # mid block: two resnets + the attention's GroupNorm
        lin += [LinearSpec(f"{part}.mid_block.attentions.0.{p}", top, top, True) for p in ("to_q", "to_k", "to_v", "to_out.0")]
    other += c["in_channels"] * ch[0] * 9 + ch[0]  # encoder.conv_in
    prev = ch[0]
    for i, out in enumerate(ch):
        for j in range(n):
            other += _resnet(prev if j == 0 else out, out)
        prev = out
        if i < len(ch) - 1:
            other += out * out * 9 + out  # Downsample2D conv
    other += 2 * ch[-1] + ch[-1] * 2 * z * 9 + 2 * z  # encoder.conv_norm_out, conv_out (mean and logvar)
    other += z * ch[-1] * 9 + ch[-1]  # decoder.conv_in
    rev, prev = ch[::-1], ch[-1]
    for i, out in enumerate(rev):
        for j in range(n + 1):
            other += _resnet(prev if j == 0 else out, out)
        prev = out
        if i < len(rev) - 1:
            other += out * out * 9 + out  # Upsample2D conv
    other += 2 * ch[0] + ch[0] * c["out_channels"] * 9 + c["out_channels"]  # decoder.conv_norm_out, conv_out
    return Layout(tuple(sorted(lin, key=lambda s: s.name)), other, 0, max(ch[-1] * ch[-1] * 9 + ch[-1], ch[-1] ** 2 + ch[-1]))


def clip_text_layout(c: dict) -> Layout:
    """CLIPTextModelWithProjection from its config."""
    H, I, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    lin = [LinearSpec("text_projection", H, c["projection_dim"], False)]
    for i in range(L):
        b = f"text_model.encoder.layers.{i}."
        lin += [LinearSpec(b + f"self_attn.{p}_proj", H, H, True) for p in ("q", "k", "v", "out")]
        lin += [LinearSpec(b + "mlp.fc1", H, I, True), LinearSpec(b + "mlp.fc2", I, H, True)]
    embed = c["vocab_size"] * H
    other = embed + c["max_position_embeddings"] * H + L * 4 * H + 2 * H
    return Layout(tuple(sorted(lin, key=lambda s: s.name)), other, 0, max(embed, H * I + I))


def t5_encoder_layout(c: dict) -> Layout:
    """T5EncoderModel (gated-gelu, v1.1) from its config; the input embedding is shared once."""
    d, inner, ff, L = c["d_model"], c["num_heads"] * c["d_kv"], c["d_ff"], c["num_layers"]
    gated = c.get("feed_forward_proj", "relu").startswith("gated")
    lin = []
    for i in range(L):
        b = f"encoder.block.{i}.layer."
        lin += [LinearSpec(b + f"0.SelfAttention.{p}", d, inner, False) for p in ("q", "k", "v")]
        lin.append(LinearSpec(b + "0.SelfAttention.o", inner, d, False))
        lin += [LinearSpec(b + f"1.DenseReluDense.{w}", d, ff, False) for w in (("wi_0", "wi_1") if gated else ("wi",))]
        lin.append(LinearSpec(b + "1.DenseReluDense.wo", ff, d, False))
    embed = c["vocab_size"] * d
    other = embed + c["relative_attention_num_buckets"] * c["num_heads"] + L * 2 * d + d
    return Layout(tuple(sorted(lin, key=lambda s: s.name)), other, 0, max(embed, d * ff))


LAYOUTS = {"transformer": transformer_layout, "vae": vae_layout, "text_encoder": clip_text_layout,
           "text_encoder_2": clip_text_layout, "text_encoder_3": t5_encoder_layout}


def lora_tensor_shapes(layout: Layout, targets: list[str], rank: int, exclude: list[str] = ()) -> list[tuple[int, int]]:
    """(rows, cols) of every LoRA A and B matrix peft creates for `targets` (suffix match),
    less the `exclude`d module names."""
    shapes = []
    for spec in layout.linears:
        if spec.name in exclude:
            continue
        if any(spec.name == t or spec.name.endswith("." + t) for t in targets):
            shapes += [(rank, spec.fan_in), (spec.fan_out, rank)]
    return shapes


def module_nbytes(module: torch.nn.Module) -> int:
    """Bytes a built module holds: its unique parameter and buffer storages plus bitsandbytes'
    side tensors (int8 row scales, 4-bit block absmax and code book)."""
    seen: dict[int, int] = {}

    def add(t) -> None:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            key = st.data_ptr() if t.device.type != "meta" and st.data_ptr() else id(st)
            seen[key] = st.nbytes()

    for p in module.parameters():
        add(p)
        add(getattr(p, "SCB", None))
        state = getattr(p, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
    for b in module.buffers():
        add(b)
    return sum(seen.values())
