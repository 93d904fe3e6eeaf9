"""Load the pipeline, put LoRA on the transformer, freeze the rest.

Two sources: the built-in tiny world model ('world') and any SD3-family diffusers model
(hub id or local dir, e.g. stabilityai/stable-diffusion-3.5-medium). The transformer is
quantized the normal diffusers way (BitsAndBytesConfig passed to from_pretrained, with a
device_map); the text encoders are handled per model.text_encoder_3 / model.clip_encoders
(text_encoders.py). SD35_MEDIUM holds the real configs of SD3.5-Medium's five parts, so
the memory plan, the tests and the GPU benchmark build the real architecture offline.
"""
from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import ModelConfig

if TYPE_CHECKING:
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig

log = logging.getLogger(__name__)

# The oldest bitsandbytes this code runs with (pyproject's floor; see require_bitsandbytes).
BITSANDBYTES_MIN = "0.48"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# diffusers' SD3 quantization docs: keep the output projection in high precision.
SKIP_QUANT_MODULES = ["proj_out"]
# VAE tiles of 512 px (SD3.5's config says 1024, so tiling would never start at <= 1024 px).
VAE_TILE_PX = 512

SD35_MEDIUM_ID = "stabilityai/stable-diffusion-3.5-medium"
# The published configs (model_index.json's five parts), without the loader's bookkeeping keys.
SD35_MEDIUM: dict[str, dict] = {
    "transformer": dict(  # SD3Transformer2DModel, MMDiT-X
        sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
        caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=384,
        dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    ),
    "vae": dict(  # AutoencoderKL, 16 latent channels
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024,
        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False,
        force_upcast=True, mid_block_add_attention=True,
    ),
    "text_encoder": dict(  # CLIP-L/14 text, CLIPTextModelWithProjection
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, projection_dim=768, max_position_embeddings=77,
        hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
    "text_encoder_2": dict(  # OpenCLIP bigG/14 text, CLIPTextModelWithProjection
        vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
        num_attention_heads=20, projection_dim=1280, max_position_embeddings=77,
        hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
    "text_encoder_3": dict(  # T5-v1.1-XXL encoder, T5EncoderModel
        vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        is_encoder_decoder=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ),
}


class ModelUnavailable(RuntimeError):
    """The base model cannot be loaded; the message says how to get it."""


def build_component(name: str, config: dict) -> torch.nn.Module:
    """One pipeline part from its config, with random weights (under `with torch.device('meta')`
    it allocates nothing): the memory plan's tests and the GPU benchmark build SD3.5-M this way."""
    if name == "transformer":
        from diffusers import SD3Transformer2DModel

        return SD3Transformer2DModel(**config)
    if name == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**config)
    if name in ("text_encoder", "text_encoder_2"):
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        return CLIPTextModelWithProjection(CLIPTextConfig(**config))
    if name == "text_encoder_3":
        from transformers import T5Config, T5EncoderModel

        return T5EncoderModel(T5Config(**config))
    raise ValueError(f"unknown pipeline part {name!r}")


def sd35m_shaped_config(num_layers: int, dual_layers: int | None = None, pos_embed_max_size: int = 384) -> dict:
    """SD3.5-Medium's transformer config cut to `num_layers` blocks: the real widths, heads,
    qk-norm and dual-attention blocks (the first `dual_layers`, default: all but the last, as
    SD3.5-M's first 13 of 24), the last block context_pre_only as always. For checks that need
    the real per-block shapes without 2.5 B parameters (CPU tests, the GPU check's smoke mode)."""
    dual = num_layers - 1 if dual_layers is None else dual_layers
    return {**SD35_MEDIUM["transformer"], "num_layers": num_layers, "dual_attention_layers": tuple(range(dual)),
            "pos_embed_max_size": pos_embed_max_size}


def quantize_linears(module: torch.nn.Module, quant: str, compute_dtype: torch.dtype, skip: tuple[str, ...] = (),
                     device: torch.device | str = "cpu") -> torch.nn.Module:
    """Swap each nn.Linear (but `skip`) for bitsandbytes' int8 or nf4 layer, quantized on `device`.

    What diffusers' from_pretrained(quantization_config=...) does to a checkpoint, for a model
    built from its config with random weights (the GPU check, CPU tests): no checkpoint to
    load. Marks the model is_loaded_in_8bit / _4bit so peft wraps the layers with its bnb LoRA."""
    import bitsandbytes as bnb

    silence_int8_cast_warning()
    for parent_name, parent in list(module.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, torch.nn.Linear) or _is_skipped(LinearSpec(full, 0, 0, False), skip):
                continue
            bias = child.bias is not None
            if quant == "int8":  # Int8Params quantizes when moved from the CPU to the device
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias, has_fp16_weights=False, device="meta")
                new.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias, compute_dtype=compute_dtype,
                                        quant_type="nf4", device="meta")
                new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            if bias:
                new.bias = torch.nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(parent, name, new.to(device))
            del child
    module.is_loaded_in_8bit, module.is_loaded_in_4bit = quant == "int8", quant == "nf4"
    return module


class _Int8CastFilter(logging.Filter):
    """Drops bitsandbytes' "MatMul8bitLt: inputs will be cast from ... to float16" record.

    bitsandbytes 0.45-0.50 logs it through its logger on every int8 matmul (about 390 lines
    per SD3.5-M forward): LLM.int8 quantizes its input through float16 by design, so the
    line says nothing a run can act on. Only that message of that logger is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


INT8_CAST_LOGGER = "bitsandbytes.autograd._functions"


def silence_int8_cast_warning() -> None:
    """Install _Int8CastFilter on bitsandbytes' matmul logger once (idempotent)."""
    logger = logging.getLogger(INT8_CAST_LOGGER)
    if not any(isinstance(f, _Int8CastFilter) for f in logger.filters):
        logger.addFilter(_Int8CastFilter())


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """The base model inside the block (LoRA off), the adapters back on however it is left:
    an out-of-memory error in the reference pass must not leave the retried step without LoRA."""
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("model.device=cuda but no CUDA GPU is visible; use model.device=cpu with --preset tiny")
    return torch.device(requested)


def require_bitsandbytes(purpose: str) -> None:
    """Raise ModelUnavailable (exit 2) when bitsandbytes cannot serve `purpose`."""
    try:
        import bitsandbytes as bnb  # noqa: F401
        from bitsandbytes.nn import Linear4bit, Linear8bitLt  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library raising at import
        raise ModelUnavailable(
            f"{purpose} needs bitsandbytes, which is unusable here ({type(err).__name__}: {err}). "
            "Install it with `pip install 'bitsandbytes>=0.48'` (CUDA builds ship in the wheel), or choose "
            "model.transformer_quant=none, model.text_encoder_3=offload and train.optimizer=adamw."
        ) from None
    from packaging.version import Version

    if Version(bnb.__version__.split("+")[0]) < Version(BITSANDBYTES_MIN):
        # diffusers refuses .to() on 8-bit models below 0.48, and accelerate's prepare() calls it
        raise ModelUnavailable(
            f"{purpose} needs bitsandbytes >= {BITSANDBYTES_MIN}, found {bnb.__version__}: "
            f"`pip install -U 'bitsandbytes>={BITSANDBYTES_MIN}'`, or choose model.transformer_quant=none, "
            "model.text_encoder_3=offload and train.optimizer=adamw.")


def bitsandbytes_needs(cfg: ModelConfig) -> list[str]:
    """The settings of `cfg` that use bitsandbytes (train.optimizer=adamw8bit is checked by the trainer)."""
    needs = []
    if cfg.transformer_quant != "none":
        needs.append(f"model.transformer_quant={cfg.transformer_quant}")
    if cfg.text_encoder_3 == "resident_8bit":
        needs.append("model.text_encoder_3=resident_8bit")
    return needs


def transformer_quantization_config(quant: str, compute_dtype: torch.dtype):
    """diffusers' BitsAndBytesConfig for the transformer, or None for full precision."""
    if quant == "none":
        return None
    from diffusers import BitsAndBytesConfig

    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANT_MODULES)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=SKIP_QUANT_MODULES,
    )


def load_pipeline(cfg: ModelConfig, device: torch.device) -> StableDiffusion3Pipeline:
    """The frozen pipeline on `device`: transformer per cfg.transformer_quant, text encoders
    per cfg.text_encoder_3 / cfg.clip_encoders, VAE ready to decode in slices or tiles."""
    from . import text_encoders

    for purpose in bitsandbytes_needs(cfg):
        require_bitsandbytes(purpose)
    if bitsandbytes_needs(cfg):
        silence_int8_cast_warning()
    dtype = DTYPES[cfg.dtype]
    if cfg.name_or_path == "world":
        pipe = _load_world(cfg, dtype, device)
    else:
        pipe = _load_pretrained(cfg, dtype, device)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.transformer):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    if cfg.transformer_quant == "none":
        pipe.transformer.to(device)
    pipe.vae.to(device)
    if pipe.vae.tile_sample_min_size > VAE_TILE_PX:
        pipe.vae.tile_sample_min_size = VAE_TILE_PX
        pipe.vae.tile_latent_min_size = VAE_TILE_PX // pipe.vae_scale_factor
    text_encoders.place_text_encoders(pipe, cfg, device)
    set_attention_backend(pipe.transformer, cfg.attention, device)
    return pipe


def _load_world(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> StableDiffusion3Pipeline:
    """The tiny world; quantized settings go through the same from_pretrained path as SD3.5-M."""
    from .world.model import WORLD_MODEL_DIR, load_world_pipeline

    if not bitsandbytes_needs(cfg):
        pipe = load_world_pipeline(torch_dtype=dtype)
        if cfg.text_encoder_3 == "drop":
            pipe.text_encoder_3, pipe.tokenizer_3 = None, None
        return pipe
    if (WORLD_MODEL_DIR / "model_index.json").is_file():
        return _load_pretrained(cfg, dtype, device, source=str(WORLD_MODEL_DIR))
    with tempfile.TemporaryDirectory() as tmp:  # random-weight fallback: save it, load it quantized
        load_world_pipeline(torch_dtype=dtype).save_pretrained(tmp)
        return _load_pretrained(cfg, dtype, device, source=tmp)


def _missing_model(source: str, err: BaseException) -> ModelUnavailable:
    return ModelUnavailable(
        f"cannot load {source!r} ({type(err).__name__}: {err}).\nSD3.5-Medium is gated: accept its licence at "
        f"https://huggingface.co/{SD35_MEDIUM_ID}, run `huggingface-cli login` (and unset HF_HUB_OFFLINE), "
        "or download it (`huggingface-cli download stabilityai/stable-diffusion-3.5-medium --local-dir DIR`) "
        "and set model.name_or_path=DIR."
    )


def _load_pretrained(
    cfg: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu", source: str | None = None
) -> StableDiffusion3Pipeline:
    """from_pretrained of each part: quantized parts are placed on `device` by their device_map."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    from . import text_encoders

    source = source or cfg.name_or_path
    if source.startswith(("/", ".")) and not Path(source).is_dir():
        raise ModelUnavailable(f"model.name_or_path {source!r} is not a directory; give a diffusers model dir or a hub id")
    device = torch.device(device)
    # An index for CUDA, as diffusers' own default: accelerate.prepare() compares it with its device.
    device_map = {"": (device.index if device.index is not None else torch.cuda.current_device())
                  if device.type == "cuda" else str(device)}
    try:
        quant = transformer_quantization_config(cfg.transformer_quant, dtype)
        transformer = SD3Transformer2DModel.from_pretrained(
            source, subfolder="transformer", revision=cfg.revision, torch_dtype=dtype,
            quantization_config=quant, device_map=device_map if quant is not None else None,
        )
        extra = text_encoders.pretrained_t5_kwargs(cfg, source, dtype, device_map)
        pipe = StableDiffusion3Pipeline.from_pretrained(
            source, transformer=transformer, revision=cfg.revision, torch_dtype=dtype, **extra
        )
    except OSError as err:  # not found, gated, offline without a cached copy
        raise _missing_model(source, err) from None
    except Exception as err:
        if type(err).__name__ in ("GatedRepoError", "RepositoryNotFoundError", "HfHubHTTPError", "LocalEntryNotFoundError"):
            raise _missing_model(source, err) from None
        raise
    return pipe


def set_attention_backend(transformer: torch.nn.Module, backend: str, device: torch.device) -> None:
    """sdpa: torch's scaled_dot_product_attention (flash/memory-efficient on CUDA), nothing to do.
    xformers: needs a CUDA device and a working xformers; anything else is a clear error."""
    if backend == "sdpa":
        return
    if backend != "xformers":
        raise ModelUnavailable(f"model.attention={backend!r}: choose sdpa or xformers")
    if device.type != "cuda":
        raise ModelUnavailable(f"model.attention=xformers needs a CUDA GPU (device is {device.type}); use model.attention=sdpa")
    try:
        import xformers  # noqa: F401
    except ImportError:
        raise ModelUnavailable(
            "model.attention=xformers but xformers is not installed: pip install -e '.[xformers]' "
            "(a build matching your torch and CUDA), or use model.attention=sdpa"
        ) from None
    try:
        transformer.enable_xformers_memory_efficient_attention()
    except Exception as err:  # built for another torch/CUDA: its kernels do not load
        raise ModelUnavailable(
            f"xformers is installed but unusable here ({type(err).__name__}: {err}); install the build for "
            "your torch and CUDA, or use model.attention=sdpa"
        ) from None


def make_lora_config(cfg: ModelConfig, num_layers: int) -> LoraConfig:
    """The adapter configuration a run trains (and its exports record) for a transformer of
    `num_layers` blocks."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=list(cfg.lora_targets),
        # no dead adapters in the exports: they would never train (dead_lora_modules)
        exclude_modules=dead_lora_modules({"num_layers": num_layers}) or None,
    )


def add_lora(transformer: torch.nn.Module, cfg: ModelConfig) -> LoraConfig:
    """LoRA adapters on the attention projections; only they train, in float32.

    Gaussian init zeroes lora_B, so the adapted model starts equal to the base model. peft
    gives adapters the dtype of a floating base layer (bf16 here); optimizer steps on bf16
    weights lose small updates, so the trainable weights are upcast (as diffusers' scripts do).
    On 8-bit / 4-bit layers peft keeps them float32 already.
    """
    lora_config = make_lora_config(cfg, transformer.config["num_layers"])
    transformer.add_adapter(lora_config)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if not any(p.requires_grad for p in transformer.parameters()):
        raise ValueError(f"model.lora_targets {cfg.lora_targets} matched no module of the transformer")
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return lora_config


def lora_parameters(transformer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in transformer.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- parameter layouts


@dataclass(frozen=True)
class LinearSpec:
    """One nn.Linear: its module path, fan-in, fan-out and bias."""

    name: str
    fan_in: int
    fan_out: int
    bias: bool

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


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


def _is_skipped(spec: LinearSpec, skip: tuple[str, ...]) -> bool:
    # as diffusers' and transformers' replace_with_bnb_linear match modules_to_not_convert
    return any(spec.leaf == k or spec.name == k or spec.name.startswith(k + ".") for k in skip)


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
        total += linear_nbytes(spec, dtype_bytes, "none" if _is_skipped(spec, skip) else quant)
    return total


def largest_linear(layout: Layout, skip: tuple[str, ...] = (), per_token: bool = False) -> LinearSpec:
    """The quantized Linear with the most weights (its scratch bounds the 8-bit/4-bit kernels').
    per_token: only layers applied to every token (attention and feed-forward projections;
    not the AdaLayerNorm modulation, which sees one timestep embedding per sequence)."""
    specs = [s for s in layout.linears if not _is_skipped(s, skip)]
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


def dead_lora_modules(transformer_config: dict) -> list[str]:
    """Modules whose output the transformer never uses, so a LoRA there gets no gradient.

    SD3's last block is context_pre_only: it drops its text stream, so the text queries
    (attn.add_q_proj) feed only discarded outputs (its text keys and values still reach the
    image tokens; it has no to_add_out or ff_context). peft's exclude_modules takes these names."""
    num_layers = transformer_config["num_layers"]
    return [f"transformer_blocks.{num_layers - 1}.attn.add_q_proj"] if num_layers > 0 else []


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
