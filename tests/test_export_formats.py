"""Every exported LoRA format reproduces the run's own eval samples in the loader people use
for it: PEFT's PeftModel.from_pretrained, and ComfyUI's single file applied as ComfyUI
applies it (W + alpha / rank * up @ down). diffusers' load_lora_weights is in
test_export_resume.py."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from superflow_lite.embeddings import PromptEncoder
from superflow_lite.evaluation import generate
from superflow_lite.export import COMFYUI_PREFIX, lora_layers

RANK, ALPHA = 4, 16.0  # alpha != r: a loader that ignores alpha is off by 4x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trainer with random (non-zero) LoRA weights, its eval samples at step 1 and its export."""
    from tests.conftest import FAST_OVERRIDES, build_trainer

    trainer = build_trainer(tmp_path_factory.mktemp("export") / "run",
                            FAST_OVERRIDES + [f"model.lora_rank={RANK}", f"model.lora_alpha={ALPHA}"])
    with torch.no_grad():
        for name, p in trainer.base_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(sum(map(ord, name))))
    trainer.evaluate(1)
    trainer.export()
    return trainer


def eval_kwargs(cfg) -> dict:
    return dict(resolution=cfg.sampling.resolution, num_steps=cfg.sampling.eval_num_steps,
                guidance_scale=cfg.sampling.eval_guidance_scale, micro_batch=4)


def max_pixel_difference(trainer, pipe, transformer) -> int:
    """Regenerate the run's step-1 samples with `transformer`; the largest 0..255 difference."""
    samples = trainer.run.samples_dir / "000001"
    index = json.loads((samples / "index.json").read_text())
    encoder = PromptEncoder(pipe, torch.device("cpu"), trainer.cfg.sampling.max_sequence_length)
    images = generate(pipe, transformer, encoder, [r["prompt"] for r in index], [r["seed"] for r in index],
                      **eval_kwargs(trainer.cfg))
    saved = [np.asarray(Image.open(samples / r["file"]).convert("RGB"), dtype=np.int16) for r in index]
    return max(int(np.abs(np.asarray(a, dtype=np.int16) - b).max()) for a, b in zip(images, saved))


def test_the_run_reproduces_its_own_samples(exported):
    # The reference every loader below is held to: 0 for the trained model itself.
    assert max_pixel_difference(exported, exported.pipe, exported.transformer) == 0


def test_peft_directory_loads_with_every_key_and_reproduces_the_samples(exported, tiny_pipe):
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(tiny_pipe.transformer, str(exported.run.lora_dir / "peft"))
    assert not [w for w in caught if "missing" in str(w.message).lower()], [str(w.message) for w in caught]
    trained = {p: (a, b) for p, a, b, _ in lora_layers(exported.base_model)}
    loaded = {p.removeprefix("base_model.model."): (a, b) for p, a, b, _ in lora_layers(model)}
    assert loaded.keys() == trained.keys()
    for path, (a, b) in trained.items():
        torch.testing.assert_close(loaded[path][0], a, rtol=0, atol=0)
        torch.testing.assert_close(loaded[path][1], b, rtol=0, atol=0)
    assert max_pixel_difference(exported, tiny_pipe, model) == 0


def comfyui_file(trainer):
    (path,) = (trainer.run.lora_dir / "comfyui").glob("*.safetensors")
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_comfyui_file_has_the_kohya_layout_and_the_trained_strength(exported):
    state, metadata = comfyui_file(exported)
    assert metadata["ss_network_dim"] == str(RANK)
    modules = {re.sub(r"\.(lora_down\.weight|lora_up\.weight|alpha)$", "", k) for k in state}
    paths = {p for p, *_ in lora_layers(exported.base_model)}
    # ComfyUI's SD3 key map: "lora_transformer_" + the diffusers module path with "_" for ".".
    assert modules == {COMFYUI_PREFIX + p.replace(".", "_") for p in paths}
    for module in modules:
        down, up, alpha = (state[f"{module}.{s}"] for s in ("lora_down.weight", "lora_up.weight", "alpha"))
        assert down.shape[0] == RANK and up.shape[1] == RANK and alpha.ndim == 0
        assert float(alpha) / down.shape[0] == pytest.approx(ALPHA / RANK)  # ComfyUI's scale = alpha / rank


def apply_like_comfyui(transformer, state) -> int:
    """Merge each module's LoRA into its weight as ComfyUI does; returns the modules merged."""
    by_key = {COMFYUI_PREFIX + path.replace(".", "_"): m for path, m in transformer.named_modules()
              if isinstance(m, torch.nn.Linear)}
    merged = 0
    with torch.no_grad():
        for key in {k.rsplit(".", 2)[0] for k in state if k.endswith(".lora_down.weight")}:
            down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
            scale = float(state[f"{key}.alpha"]) / down.shape[0]
            by_key[key].weight += (scale * up @ down).to(by_key[key].weight.dtype)
            merged += 1
    return merged


def test_comfyui_file_applied_by_hand_reproduces_the_samples(exported, tiny_pipe):
    state, _ = comfyui_file(exported)
    assert apply_like_comfyui(tiny_pipe.transformer, state) == len(list(lora_layers(exported.base_model)))
    # A merged weight rounds differently from base + LoRA branch: a few levels at most.
    assert max_pixel_difference(exported, tiny_pipe, tiny_pipe.transformer) <= 2
