"""Image-text similarity rewards built on a CLIP model: PickScore, CLIPScore, HPSv2.

All three embed the image and the prompt with a transformers CLIPModel, L2-normalise
both, and turn the cosine similarity cos into a score:

    pickscore  exp(logit_scale) * cos / 26     Kirstain et al. 2023; "/26" as in Flow-GRPO and
                                               the SuperFlow table (PickScore/26 ~ 0.83-0.87)
    clipscore  2.5 * max(cos, 0)               Hessel et al. 2021 (CLIPScore, w = 2.5)
    hpsv2      cos                             Wu et al. 2023 (HPS v2 = cosine of its CLIP)

Scores are clipped to the declared range [low, high] (options), which is also what the
trainer's value trackers map to [0, 1]. A narrower range than the default spreads the
trackers' values (PickScore/26 rarely leaves [0.7, 1.0]), at the price of clipping the rare
image outside it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..hub import PROCESSOR_FILES, WEIGHT_FILES, Needed
from .base import Reward, RewardOutput
from .hf_loading import check_dtype, load_pretrained, require_transformers, torch_dtype


class ClipSimilarity(Reward):
    """Base class; subclasses set the default repos, range and `transform`.

    Options:
      model_name_or_path      CLIPModel weights (hub id or local folder)
      processor_name_or_path  CLIPProcessor (tokenizer + image preprocessing); None = same as model
      dtype                   auto | float32 | float16 | bfloat16 (auto: fp16 on CUDA, fp32 on CPU)
      batch_size              images per forward pass (bounds activation memory)
      low, high               declared range; scores are clipped into it
    """

    default_model: str = ""
    default_processor: str | None = None
    default_low: float = 0.0
    default_high: float = 1.0

    def __init__(
        self,
        device: str = "cpu",
        model_name_or_path: str | None = None,
        processor_name_or_path: str | None = None,
        dtype: str = "auto",
        batch_size: int = 16,
        low: float | None = None,
        high: float | None = None,
    ):
        super().__init__(device)
        self.model_name_or_path = model_name_or_path or self.default_model
        # A local model folder normally carries its own processor; hub PickScore does not.
        is_default = model_name_or_path in (None, self.default_model)
        default_proc = self.default_processor if is_default else None
        self.processor_name_or_path = processor_name_or_path or default_proc or self.model_name_or_path
        self.dtype = check_dtype(dtype, self.name)
        self.batch_size = int(batch_size)
        self.low = float(self.default_low if low is None else low)
        self.high = float(self.default_high if high is None else high)
        if not self.high > self.low:
            raise ValueError(f"reward.options.{self.name}: high ({self.high}) must exceed low ({self.low})")
        self.model: Any = None
        self.processor: Any = None

    def needed_models(self) -> list[Needed]:
        opts = f"reward.options.{self.name}"
        return [Needed(self.model_name_or_path, WEIGHT_FILES, f"{opts}.model_name_or_path"),
                Needed(self.processor_name_or_path, PROCESSOR_FILES, f"{opts}.processor_name_or_path")]

    def load(self) -> None:
        require_transformers(self.name)
        from transformers import CLIPModel, CLIPProcessor

        # The model first: when it is missing, that is the option to name in the error.
        model = load_pretrained(
            CLIPModel.from_pretrained, self.model_name_or_path,
            reward=self.name, option="model_name_or_path",
        )
        self.processor = load_pretrained(
            CLIPProcessor.from_pretrained, self.processor_name_or_path,
            reward=self.name, option="processor_name_or_path",
        )
        self.model = model.to(self.device, torch_dtype(self.dtype, self.device)).eval().requires_grad_(False)

    def cosine(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
        """cos(image_i, prompt_i) for each pair, float32 [B]."""
        import torch

        out = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            texts = list(prompts[start : start + self.batch_size])
            inputs = self.processor(
                text=texts, images=ims, return_tensors="pt", padding=True, truncation=True
            )
            with torch.inference_mode():
                img = self._image_embeds(inputs["pixel_values"])
                txt = self._text_embeds(inputs["input_ids"], inputs["attention_mask"])
                out.append((img * txt).sum(-1).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _image_embeds(self, pixel_values: Any) -> Any:
        # vision tower + projection, called directly: get_image_features changed its
        # return type between transformers 4.x (tensor) and 5.x (model output).
        param = next(self.model.parameters())
        pooled = self.model.vision_model(pixel_values=pixel_values.to(param.device, param.dtype)).pooler_output
        emb = self.model.visual_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True)

    def _text_embeds(self, input_ids: Any, attention_mask: Any) -> Any:
        device = next(self.model.parameters()).device
        pooled = self.model.text_model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
        ).pooler_output
        emb = self.model.text_projection(pooled)
        return emb / emb.norm(dim=-1, keepdim=True)

    def transform(self, cos: np.ndarray) -> np.ndarray:
        return cos

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        cos = self.cosine(images, prompts)
        return RewardOutput(np.clip(self.transform(cos), self.low, self.high), {"cosine": cos})


class PickScore(ClipSimilarity):
    name = "pickscore"

    default_model = "yuvalkirstain/PickScore_v1"
    # PickScore_v1 has no processor files of its own; it was trained from this CLIP.
    default_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def transform(self, cos: np.ndarray) -> np.ndarray:
        scale = float(self.model.logit_scale.exp().item())  # ~100 for PickScore_v1
        return scale * cos / 26.0


class ClipScore(ClipSimilarity):
    name = "clipscore"

    default_model = "openai/clip-vit-large-patch14"
    default_high = 2.5

    def transform(self, cos: np.ndarray) -> np.ndarray:
        return 2.5 * np.maximum(cos, 0.0)


class HpsV2(ClipSimilarity):
    name = "hpsv2"

    # HPS v2 (an OpenCLIP ViT-H/14) converted to a transformers CLIPModel by its
    # uploader, who checked the embeddings match; its preprocessing is plain CLIP's.
    default_model = "adams-story/HPSv2-hf"
    default_processor = "openai/clip-vit-base-patch32"
    # HPS v2's benchmark scores of real generators lie within 0.2-0.3; [0, 0.5] keeps the
    # trackers' [0, 1] values spread instead of bunched near 0.27.
    default_high = 0.5
