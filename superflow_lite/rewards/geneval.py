"""GenEval-style compositional reward: an open-vocabulary detector checks objects, counts,
colours and positions (Flow-GRPO's GenEval task, for real photos).

GenEval itself runs a Mask2Former from mmdetection; this kit uses OWLv2 from transformers
(Minderer et al. 2023), which takes the class names as text queries, so any prompt's
objects can be looked for without a fixed label set. Rules: geneval_scoring.py.

score = fraction of checks passed (partial credit), range [0, 1];
extras["strict"] = 1 when every check passed (GenEval's accuracy).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..hub import PROCESSOR_FILES, WEIGHT_FILES, Needed
from .base import Reward, RewardOutput
from .geneval_scoring import Detection, evaluate, non_max_suppression
from .geneval_spec import TaskSpec, parse_prompt, spec_from_metadata
from .hf_loading import check_dtype, load_pretrained, require_transformers, torch_dtype


def task_spec(prompt: str, meta: dict) -> TaskSpec:
    """GenEval metadata when given, else the parsed prompt; a clear error otherwise."""
    if meta.get("include"):
        return spec_from_metadata(meta)
    spec = parse_prompt(prompt)
    if spec is None:
        raise ValueError(
            f"geneval: cannot tell what {prompt!r} asks for. Use the built-in prompts "
            "(prompts.source: geneval), prompts of the form 'a photo of two dogs' / 'a photo "
            "of a red car and a blue cup' / 'a photo of a cat left of a dog', or pass GenEval "
            "metadata {include: [{class, count, color?, position?}], exclude: [...]}."
        )
    return spec


def spec_classes(spec: TaskSpec) -> list[str]:
    names = [req.name for req in spec.include] + [name for name, _ in spec.exclude]
    return list(dict.fromkeys(names))


def _clip_box(box: list[float], size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Clip to the image (not OWLv2's padded square); None when nothing is left inside."""
    width, height = size
    x0, y0 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x1, y1 = min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


class GenEvalReward(Reward):
    """Options:
      model_name_or_path      Owlv2ForObjectDetection weights
      processor_name_or_path  Owlv2Processor; None = same as the model
      threshold               detection confidence kept (OWLv2's sigmoid scores are lower
                              than a closed-set detector's; 0.2 keeps true objects while
                              dropping most duplicates and background hits)
      nms_iou                 boxes of one class overlapping more than this are one object
      query_template          text query per class ("a photo of a {}", as in OWL-ViT's examples)
      dtype, batch_size
    """

    name = "geneval"
    low, high = 0.0, 1.0

    def __init__(
        self,
        device: str = "cpu",
        model_name_or_path: str = "google/owlv2-base-patch16-ensemble",
        processor_name_or_path: str | None = None,
        threshold: float = 0.2,
        nms_iou: float = 0.5,
        query_template: str = "a photo of a {}",
        dtype: str = "auto",
        batch_size: int = 4,
    ):
        super().__init__(device)
        self.model_name_or_path = model_name_or_path
        self.processor_name_or_path = processor_name_or_path or model_name_or_path
        self.threshold, self.nms_iou = float(threshold), float(nms_iou)
        if "{}" not in query_template:
            raise ValueError(f"reward.options.geneval.query_template needs a '{{}}' for the class: {query_template!r}")
        self.query_template = query_template
        self.dtype = check_dtype(dtype, "geneval")
        self.batch_size = int(batch_size)
        self.model: Any = None
        self.processor: Any = None

    def prompt_problem(self, prompt: str) -> str | None:
        if parse_prompt(prompt) is not None:
            return None
        return "not a GenEval prompt such as 'a photo of two dogs' or 'a photo of a cat left of a dog'"

    def needed_models(self) -> list[Needed]:
        return [Needed(self.model_name_or_path, WEIGHT_FILES, "reward.options.geneval.model_name_or_path"),
                Needed(self.processor_name_or_path, PROCESSOR_FILES, "reward.options.geneval.processor_name_or_path")]

    def load(self) -> None:
        require_transformers("geneval")
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        model = load_pretrained(
            Owlv2ForObjectDetection.from_pretrained, self.model_name_or_path,
            reward="geneval", option="model_name_or_path",
        )
        self.processor = load_pretrained(
            Owlv2Processor.from_pretrained, self.processor_name_or_path,
            reward="geneval", option="processor_name_or_path",
        )
        self.model = model.to(self.device, torch_dtype(self.dtype, self.device)).eval().requires_grad_(False)

    def detect(self, images: Sequence[Image.Image], classes: list[str]) -> list[list[Detection]]:
        """Thresholded, de-duplicated detections of `classes` in each image."""
        import torch

        queries = [self.query_template.format(name) for name in classes]
        param = next(self.model.parameters())
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            inputs = self.processor(text=[queries] * len(ims), images=ims, return_tensors="pt")
            inputs = {k: v.to(param.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
            # OWLv2 pads each image to a square (right/bottom) before resizing, so its
            # boxes are relative to that square: scale by the longer side on both axes.
            sides = [(max(im.size), max(im.size)) for im in ims]
            per_image = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.threshold, target_sizes=sides
            )
            for found, image in zip(per_image, ims):
                dets = [
                    Detection(classes[int(label)], float(score), box)
                    for score, label, raw in zip(found["scores"], found["labels"], found["boxes"])
                    if (box := _clip_box(raw.tolist(), image.size)) is not None
                ]
                results.append(non_max_suppression(dets, self.nms_iou))
        return results

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        specs = [task_spec(p, m) for p, m in zip(prompts, metadata)]
        # One query list for the whole batch keeps OWLv2's batched forward pass; each
        # image's verdict only looks at its own spec's classes.
        classes = list(dict.fromkeys(name for spec in specs for name in spec_classes(spec)))
        detections = self.detect(images, classes)
        partial = np.zeros(len(images), dtype=np.float32)
        strict = np.zeros(len(images), dtype=np.float32)
        for i, (spec, dets, image) in enumerate(zip(specs, detections, images)):
            verdict = evaluate(spec, dets, image)
            partial[i], strict[i] = verdict.partial, float(verdict.strict)
        return RewardOutput(partial, {"strict": strict})
