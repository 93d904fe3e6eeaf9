"""Text rendering: does the image show the text the prompt asks for? (Flow-GRPO's OCR task)

The prompt names its target text in double quotes: 'A neon sign that reads "OPEN LATE"'.
An OCR engine reads the image, and

    score = 1 - min(d, n) / n,   d = edit distance(read, target), n = len(target)

after lower-casing and dropping whitespace on both sides (OCR engines split and join
words unpredictably, and letter case is style, not content). If the target appears
anywhere in what was read, the score is 1: extra text on the image is not penalised,
as in Flow-GRPO. Range [0, 1].

Engine: RapidOCR (PaddleOCR's PP-OCRv4 detector/recogniser as ONNX, on onnxruntime).
The wheel `rapidocr-onnxruntime` ships its three ONNX models inside the package, so it
runs offline on CPU; install with `pip install -e ".[ocr]"`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput, RewardUnavailable


def extract_target_text(prompt: str) -> str:
    """The text between the first pair of double quotes; '' when the prompt has none."""
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else ""


def normalise_text(text: str) -> str:
    return "".join(text.split()).lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1); O(len(a)*len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_match_score(target: str, read: str) -> float:
    """1 - normalised edit distance of `read` to `target`, in [0, 1] (see module doc)."""
    target, read = normalise_text(target), normalise_text(read)
    if not target:
        # Nothing was asked for: no evidence either way, so no credit (keeps the
        # reward from being gamed by prompts without quotes).
        return 0.0
    if target in read:
        return 1.0
    distance = min(edit_distance(read, target), len(target))
    return 1.0 - distance / len(target)


class OcrReward(Reward):
    """Options: min_confidence (drop OCR lines the recogniser is less sure of than this).

    metadata[i]["text"], when present, overrides the quoted text of prompt i.
    """

    name = "ocr"
    low, high = 0.0, 1.0

    def __init__(self, device: str = "cpu", min_confidence: float = 0.0):
        super().__init__(device)
        # 0 keeps every line read, as Flow-GRPO does; raise it to ignore faint guesses.
        self.min_confidence = float(min_confidence)
        self._engine: Any = None

    def prompt_problem(self, prompt: str) -> str | None:
        if extract_target_text(prompt).strip():
            return None
        return 'no text in double quotes to render, as in: a sign that says "OPEN"'

    def load(self) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as err:
            raise RewardUnavailable(
                "the 'ocr' reward needs RapidOCR: pip install -e \".[ocr]\" "
                "(rapidocr-onnxruntime; its ONNX models ship inside the wheel, no download)"
            ) from err
        # RapidOCR runs on onnxruntime's CPU provider; the reward's device does not apply.
        self._engine = RapidOCR()

    def read_text(self, image: Image.Image) -> str:
        """All text lines the engine reads, joined in its reading order."""
        # A PIL image, not an array: RapidOCR takes arrays as OpenCV's BGR, PIL as RGB.
        result, _timings = self._engine(image.convert("RGB"))
        if not result:
            return ""
        return "".join(text for _box, text, conf in result if float(conf) >= self.min_confidence)

    def score(
        self, images: Sequence[Image.Image], prompts: Sequence[str], metadata: Sequence[dict]
    ) -> RewardOutput:
        scores = np.zeros(len(images), dtype=np.float32)
        exact = np.zeros(len(images), dtype=np.float32)
        for i, (image, prompt, meta) in enumerate(zip(images, prompts, metadata)):
            target = meta.get("text") or extract_target_text(prompt)
            scores[i] = text_match_score(target, self.read_text(image))
            exact[i] = float(scores[i] == 1.0)
        return RewardOutput(scores, {"exact": exact})
