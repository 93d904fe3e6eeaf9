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
import tempfile
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


def skips_quantization(module_name: str, skip: tuple[str, ...]) -> bool:
    """Whether bitsandbytes leaves the Linear `module_name` unquantized, `skip` being its
    modules_to_not_convert: matched as diffusers' and transformers' replace_with_bnb_linear
    match them (the last name component, the whole name, or a parent module's name)."""
    leaf = module_name.rsplit(".", 1)[-1]
    return any(leaf == k or module_name == k or module_name.startswith(k + ".") for k in skip)


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
            if not isinstance(child, torch.nn.Linear) or skips_quantization(full, skip):
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


def dead_lora_modules(transformer_config: dict) -> list[str]:
    """Modules whose output the transformer never uses, so a LoRA there gets no gradient.

    SD3's last block is context_pre_only: it drops its text stream, so the text queries
    (attn.add_q_proj) feed only discarded outputs (its text keys and values still reach the
    image tokens; it has no to_add_out or ff_context). peft's exclude_modules takes these names."""
    num_layers = transformer_config["num_layers"]
    return [f"transformer_blocks.{num_layers - 1}.attn.add_q_proj"] if num_layers > 0 else []
