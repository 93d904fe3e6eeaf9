"""Loading through models.load_pipeline on the CPU: quantized transformer + LoRA, text-encoder
modes, the prompt-embedding cache, attention backends and the clear errors."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from superflow_lite import layouts, models, text_encoders
from superflow_lite.config import ModelConfig
from superflow_lite.embeddings import PromptEncoder

torch.set_num_threads(1)
CPU = torch.device("cpu")
PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A full tiny SD3 pipeline (with T5) saved as a diffusers directory, like a downloaded model."""
    from superflow_lite.world.model import build_tiny_sd3_pipeline

    path = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3_pipeline().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    pipe = models.load_pipeline(ModelConfig(name_or_path=tiny_dir), CPU)
    return pipe, PromptEncoder(pipe, CPU, 16).encode(PROMPTS)


@pytest.fixture
def cpu_quantization(monkeypatch):
    """Bypass only diffusers' 'No GPU found' check of the bitsandbytes quantizers."""
    from diffusers.quantizers.bitsandbytes import bnb_quantizer

    for cls in (bnb_quantizer.BnB8BitDiffusersQuantizer, bnb_quantizer.BnB4BitDiffusersQuantizer):
        monkeypatch.setattr(cls, "validate_environment", lambda self, *a, **k: None)


@pytest.mark.parametrize("quant", ["int8", "nf4"])
def test_quantized_transformer_gets_lora_on_top(tiny_dir, cpu_quantization, quant):
    import bitsandbytes as bnb
    from peft.tuners.lora import bnb as lora_bnb

    cfg = ModelConfig(name_or_path=tiny_dir, transformer_quant=quant, dtype="bfloat16", text_encoder_3="drop")
    pipe = models.load_pipeline(cfg, CPU)
    tr = pipe.transformer
    qcls = bnb.nn.Linear8bitLt if quant == "int8" else bnb.nn.Linear4bit
    linears = {n: type(m) for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears.pop("proj_out") is torch.nn.Linear  # kept in high precision
    assert set(linears.values()) == {qcls}

    # The plan's byte formula equals what bitsandbytes stores.
    from superflow_lite.world.model import build_transformer

    layout = layouts.layout_of_module(build_transformer())
    assert layouts.module_nbytes(tr) == layouts.layout_nbytes(layout, 2, quant, tuple(models.SKIP_QUANT_MODULES))

    models.add_lora(tr, cfg)
    lora_cls = lora_bnb.Linear8bitLt if quant == "int8" else lora_bnb.Linear4bit
    wrapped = [n for n, m in tr.named_modules() if isinstance(m, lora_cls)]
    dead = set(models.dead_lora_modules(dict(tr.config)))  # the last block's add_q_proj: never trained
    assert dead and not dead & set(wrapped)
    assert len(wrapped) == sum(1 for s in layout.linears
                               if any(s.name.endswith(t) for t in cfg.lora_targets) and s.name not in dead)
    params = models.lora_parameters(tr)
    assert params and all(p.dtype == torch.float32 for p in params)
    assert tr.is_gradient_checkpointing

    side = tr.config.sample_size  # the latent side the tiny model was built for
    x = torch.randn(2, 16, side, side, dtype=torch.bfloat16)
    out = tr(hidden_states=x, timestep=torch.full((2,), 500.0), encoder_hidden_states=torch.randn(2, 40, 64, dtype=torch.bfloat16),
             pooled_projections=torch.randn(2, 64, dtype=torch.bfloat16), return_dict=False)[0]
    out.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_world_model_quantizes_through_the_same_loader(cpu_quantization):
    import bitsandbytes as bnb

    pipe = models.load_pipeline(ModelConfig(name_or_path="world", transformer_quant="int8"), CPU)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in pipe.transformer.modules())


def test_t5_resident_8bit(tiny_dir, reference):
    import bitsandbytes as bnb

    pipe = models.load_pipeline(ModelConfig(name_or_path=tiny_dir, text_encoder_3="resident_8bit"), CPU)
    t5 = pipe.text_encoder_3
    kinds = {n.rsplit(".", 1)[-1]: type(m) for n, m in t5.named_modules() if isinstance(m, torch.nn.Linear)}
    assert kinds.pop("wo") is torch.nn.Linear and set(kinds.values()) == {bnb.nn.Linear8bitLt}
    assert layouts.module_nbytes(t5) == layouts.layout_nbytes(
        layouts.layout_of_module(reference[0].text_encoder_3), 4, "int8", text_encoders.T5_INT8_SKIP)
    got = PromptEncoder(pipe, CPU, 16).encode(PROMPTS)
    want = reference[1]
    assert torch.equal(got.pooled, want.pooled)  # CLIP untouched
    assert (got.embeds - want.embeds).norm() < 0.1 * want.embeds.norm()  # int8 error only


def test_t5_and_clip_offload_stream_from_cpu(tiny_dir, reference):
    pipe = models.load_pipeline(ModelConfig(name_or_path=tiny_dir, text_encoder_3="offload", clip_encoders="offload"), CPU)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        assert text_encoders.is_streamed(encoder)
        assert {p.device.type for p in encoder.parameters()} == {"meta"}  # weights live in the CPU map
    got = PromptEncoder(pipe, CPU, 16).encode(PROMPTS)
    assert torch.equal(got.embeds, reference[1].embeds) and torch.equal(got.pooled, reference[1].pooled)


def test_t5_drop_feeds_zero_embeddings(tiny_dir, reference):
    pipe = models.load_pipeline(ModelConfig(name_or_path=tiny_dir, text_encoder_3="drop"), CPU)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    got = PromptEncoder(pipe, CPU, 16).encode(PROMPTS)
    assert got.embeds.shape == reference[1].embeds.shape
    clip_tokens = got.embeds.shape[1] - 16
    assert torch.equal(got.embeds[:, :clip_tokens], reference[1].embeds[:, :clip_tokens])
    assert got.embeds[:, clip_tokens:].abs().max() == 0


def test_world_t5_drop():
    pipe = models.load_pipeline(ModelConfig(name_or_path="world", text_encoder_3="drop"), CPU)
    assert pipe.text_encoder_3 is None


def test_prompt_embeddings_cached_on_cpu_lru(reference):
    pipe = reference[0]
    encoder = PromptEncoder(pipe, CPU, 16, cache_size=2)
    calls = []
    original = encoder._encode_uncached
    encoder._encode_uncached = lambda prompts: calls.append(list(prompts)) or original(prompts)
    first = encoder.encode(PROMPTS + PROMPTS[:1])
    again = encoder.encode(PROMPTS)
    assert calls == [[p] for p in PROMPTS]  # each prompt encoded once, alone; the repeat came from the cache
    assert torch.equal(first.embeds[:2], again.embeds) and first.embeds.device.type == "cpu"
    encoder.encode(["a green triangle"])  # evicts the least recently used ("a red circle")
    encoder.encode(["two blue squares"])
    encoder.encode(["a red circle"])
    assert calls == [[p] for p in PROMPTS] + [["a green triangle"], ["a red circle"]]
    # Alone or beside others, a prompt gets the same embedding: a resumed run (empty cache) repeats a straight one.
    alone = PromptEncoder(pipe, CPU, 16).encode(PROMPTS[1:])
    assert torch.equal(alone.embeds[0], first.embeds[1]) and torch.equal(alone.pooled[0], first.pooled[1])


def test_attention_backends(monkeypatch):
    tr = types.SimpleNamespace(called=0)
    tr.enable_xformers_memory_efficient_attention = lambda: setattr(tr, "called", tr.called + 1)
    models.set_attention_backend(tr, "sdpa", CPU)
    with pytest.raises(models.ModelUnavailable, match="needs a CUDA GPU"):
        models.set_attention_backend(tr, "xformers", CPU)
    cuda = torch.device("cuda")
    monkeypatch.setitem(sys.modules, "xformers", None)  # not installed
    with pytest.raises(models.ModelUnavailable, match="not installed"):
        models.set_attention_backend(tr, "xformers", cuda)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    models.set_attention_backend(tr, "xformers", cuda)
    assert tr.called == 1

    def broken():
        raise RuntimeError("No operator found for memory_efficient_attention_forward")

    tr.enable_xformers_memory_efficient_attention = broken
    with pytest.raises(models.ModelUnavailable, match="unusable"):
        models.set_attention_backend(tr, "xformers", cuda)


def test_missing_model_says_how_to_get_it(monkeypatch, tmp_path, capsys):
    with pytest.raises(models.ModelUnavailable, match="huggingface-cli login"):
        models.load_pipeline(ModelConfig(name_or_path=str(tmp_path)), CPU)  # a directory without a model
    import huggingface_hub.constants

    if huggingface_hub.constants.HF_HUB_OFFLINE:  # no network: the hub id is not in the cache
        with pytest.raises(models.ModelUnavailable, match="accept its licence"):
            models.load_pipeline(ModelConfig(name_or_path=models.SD35_MEDIUM_ID), CPU)
    with pytest.raises(models.ModelUnavailable, match="not a directory"):
        models.load_pipeline(ModelConfig(name_or_path="./no/such/dir"), CPU)
    from superflow_lite.train import main

    code = main(["--preset", "tiny", f"model.name_or_path={tmp_path}", "--output", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "licence" in capsys.readouterr().err


def test_bitsandbytes_unusable_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(models.ModelUnavailable, match="bitsandbytes"):
        models.load_pipeline(ModelConfig(name_or_path="world", transformer_quant="int8"), CPU)
    with pytest.raises(models.ModelUnavailable, match="resident_8bit"):
        models.require_bitsandbytes("model.text_encoder_3=resident_8bit")
