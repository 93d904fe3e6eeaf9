"""Tiny random-weight reward models, saved like hub checkpoints, for offline tests and smoke runs.

The scores they give are meaningless; what they exercise is real: from_pretrained
loading, the processors, the forward passes and the post-processing of every model
reward. Each builder writes a folder that the reward's `model_name_or_path` option accepts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.,'\"-"


def tiny_clip_tokenizer(max_length: int = 32) -> Any:
    """A CLIP BPE tokenizer over single characters (no merges), built without downloads."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):  # CLIP marks a word's last symbol with </w>
        for ch in _ALPHABET:
            vocab[ch + suffix] = len(vocab)
    vocab[_BOS], vocab[_EOS] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = max_length
    return tokenizer


def _tower(size: int, **extra: Any) -> dict[str, Any]:
    return dict(hidden_size=size, intermediate_size=2 * size, num_hidden_layers=1, num_attention_heads=2, **extra)


def _text_config(tokenizer: Any, size: int) -> dict[str, Any]:
    ids = tokenizer.get_vocab()
    return _tower(
        size, vocab_size=len(ids), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=ids[_BOS], eos_token_id=ids[_EOS], pad_token_id=ids[_EOS],
    )


def save_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 32, logit_scale: float = 100.0) -> Path:
    """A random CLIPModel + CLIPProcessor (width 32, 1 layer per tower) in `path`."""
    import math

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = Path(path)
    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=_text_config(tokenizer, 32),
        vision_config=_tower(32, image_size=image_size, patch_size=image_size // 4),
        projection_dim=16,
        logit_scale_init_value=math.log(logit_scale),
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def save_tiny_aesthetic_head(path: str | Path, embed_dim: int = 16, seed: int = 0) -> Path:
    """A random head with the LAION v2 predictor's layout (layers.{0,2,4,6,7}), as .pth."""
    import torch

    torch.manual_seed(seed)
    widths = [embed_dim, 32, 16, 8, 4, 1]
    state: dict[str, torch.Tensor] = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        layer = torch.nn.Linear(fan_in, fan_out)
        state[f"layers.{index}.weight"], state[f"layers.{index}.bias"] = layer.weight.data, layer.bias.data
    path = Path(path)
    torch.save(state, path)
    return path


def save_tiny_owlv2(path: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random Owlv2ForObjectDetection + Owlv2Processor in `path` (16 patches = 16 boxes)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    path = Path(path)
    tokenizer = tiny_clip_tokenizer(max_length=16)
    config = Owlv2Config(
        text_config=_text_config(tokenizer, 32),
        vision_config=_tower(32, image_size=image_size, patch_size=image_size // 4),
        projection_dim=32,  # OWLv2's box/class heads need projection_dim == the tower widths
    )
    torch.manual_seed(seed)
    Owlv2ForObjectDetection(config).save_pretrained(path)
    image_processor = Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
