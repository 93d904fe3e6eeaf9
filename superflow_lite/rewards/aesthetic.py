"""LAION aesthetic predictor: a small head on CLIP ViT-L/14 image embeddings (DDPO's reward).

score = head(e / |e|), e = the CLIP image embedding (768-d for ViT-L/14). The head is a
chain of linear layers read from its state dict:
  - v2 "improved aesthetic predictor" (sac+logos+ava1-l14-linearMSE): layers.{0,2,4,6,7},
    768 -> 1024 -> 128 -> 64 -> 16 -> 1, no activations (dropouts between, inert at eval);
    on the Hub as trl-lib/ddpo-aesthetic-predictor, file aesthetic-model.pth (TRL's DDPO);
  - v1 linear head (sa_0_4_vit_l_14_linear.pth): weight [1, 768], bias [1].
It was trained on 1-10 ratings, so the declared range is [0, 10] and scores are clipped.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..hub import PROCESSOR_FILES, WEIGHT_FILES, Needed
from .base import Reward, RewardOutput, RewardUnavailable
from .hf_loading import check_dtype, load_pretrained, require_transformers, torch_dtype


def _head_from_state_dict(state: dict[str, Any]) -> Any:
    """Rebuild the linear chain (see module doc) from its state dict."""
    import torch

    if "weight" in state and "bias" in state:
        indexed = {0: ("weight", "bias")}
    else:
        indices = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
        indexed = {i: (f"layers.{i}.weight", f"layers.{i}.bias") for i in indices}
    if not indexed:
        raise RewardUnavailable(
            f"aesthetic head: unrecognised state dict (keys {sorted(state)[:6]}); expected the "
            "LAION predictor's 'layers.N.weight' keys or a single linear layer's 'weight'/'bias'"
        )
    layers = []
    for weight_key, bias_key in indexed.values():
        weight = state[weight_key].float()
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        linear.weight.data.copy_(weight)
        linear.bias.data.copy_(state[bias_key].float())
        layers.append(linear)
    return torch.nn.Sequential(*layers)


def load_head(path: str | Path) -> Any:
    """Read a head from .pth/.pt (torch.save of a state dict) or .safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        import torch

        # weights_only: a state dict needs no pickled code, and the file may be untrusted.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise RewardUnavailable(f"aesthetic head {path}: expected a state dict, got {type(state).__name__}")
    return _head_from_state_dict(state)


def _load_vision_tower(name_or_path: str) -> Any:
    """CLIPVisionModelWithProjection from a full CLIP checkpoint, without its text tower
    (~120 M parameters for ViT-L/14 that an image-only score never uses)."""
    from transformers import AutoConfig, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type == "clip":
        # The projection width lives on the top-level config; the vision sub-config's own
        # projection_dim is a default that need not match the checkpoint.
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        config = vision_config
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # else it lists every unused text-tower weight
    try:
        return CLIPVisionModelWithProjection.from_pretrained(name_or_path, config=config)
    finally:
        hf_logging.set_verbosity(previous)


class AestheticReward(Reward):
    """Options:
      model_name_or_path   CLIP weights whose vision tower + projection embed images
      head_path            local head file; None = download head_repo/head_filename from the Hub
      head_repo, head_filename
      dtype                auto | float32 | float16 | bfloat16 (the CLIP tower; the head is fp32)
      batch_size, low, high
    """

    name = "aesthetic"

    def __init__(
        self,
        device: str = "cpu",
        model_name_or_path: str = "openai/clip-vit-large-patch14",
        head_path: str | None = None,
        head_repo: str = "trl-lib/ddpo-aesthetic-predictor",
        head_filename: str = "aesthetic-model.pth",
        dtype: str = "auto",
        batch_size: int = 16,
        low: float = 0.0,
        high: float = 10.0,
    ):
        super().__init__(device)
        self.model_name_or_path = model_name_or_path
        self.head_path, self.head_repo, self.head_filename = head_path, head_repo, head_filename
        self.dtype = check_dtype(dtype, "aesthetic")
        self.batch_size = int(batch_size)
        self.low, self.high = float(low), float(high)
        if not self.high > self.low:
            raise ValueError(f"reward.options.aesthetic: high ({self.high}) must exceed low ({self.low})")
        self.model: Any = None
        self.processor: Any = None
        self.head: Any = None

    def _head_file(self) -> str:
        if self.head_path is not None:
            if not Path(self.head_path).is_file():
                raise RewardUnavailable(f"aesthetic: head_path {self.head_path!r} is not a file")
            return self.head_path
        from huggingface_hub import hf_hub_download

        return load_pretrained(
            lambda repo: hf_hub_download(repo, self.head_filename), self.head_repo,
            reward="aesthetic", option="head_path",
        )

    def needed_models(self) -> list[Needed]:
        opts = "reward.options.aesthetic"
        needed = [Needed(self.model_name_or_path, WEIGHT_FILES, f"{opts}.model_name_or_path"),
                  Needed(self.model_name_or_path, PROCESSOR_FILES, f"{opts}.model_name_or_path")]
        head = self.head_path or self.head_repo
        return needed + [Needed(head, (self.head_filename,), f"{opts}.head_path")]

    def load(self) -> None:
        require_transformers("aesthetic")
        from transformers import CLIPImageProcessor

        model = load_pretrained(
            _load_vision_tower, self.model_name_or_path, reward="aesthetic", option="model_name_or_path"
        )
        self.processor = load_pretrained(
            CLIPImageProcessor.from_pretrained, self.model_name_or_path,
            reward="aesthetic", option="model_name_or_path",
        )
        self.model = model.to(self.device, torch_dtype(self.dtype, self.device)).eval().requires_grad_(False)
        self.head = load_head(self._head_file()).to(self.device).eval().requires_grad_(False)
        embed_dim = self.model.config.projection_dim
        if self.head[0].in_features != embed_dim:
            raise RewardUnavailable(
                f"aesthetic: head expects {self.head[0].in_features}-d embeddings but "
                f"{self.model_name_or_path} gives {embed_dim}-d (the LAION heads need ViT-L/14)"
            )

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        import torch

        param = next(self.model.parameters())
        out = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            pixels = self.processor(images=ims, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                emb = self.model(pixel_values=pixels.to(param.device, param.dtype)).image_embeds.float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out.append(self.head(emb).squeeze(-1).cpu().numpy())
        return RewardOutput(np.clip(np.concatenate(out), self.low, self.high))
