"""JPEG (in)compressibility: the classic reward that needs no model (DDPO).

Score = -(size of the image as JPEG quality 95, in KiB) for compressibility, so smaller
files score higher. The declared range assumes images up to 512x512 RGB.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput


def jpeg_size_kib(image: Image.Image, quality: int = 95) -> float:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1024.0


def _max_kib(resolution: int) -> float:
    # Worst case for quality-95 JPEG is about 1 byte per pixel on noise images.
    return 3.0 * resolution * resolution / 1024.0


class JpegCompressibility(Reward):
    name = "jpeg_compressibility"

    def __init__(self, device: str = "cpu", resolution: int = 512, **options):
        super().__init__(device, **options)
        self.low, self.high = -_max_kib(resolution), 0.0

    def score(self, images: Sequence[Image.Image], prompts, metadata) -> RewardOutput:
        sizes = np.array([jpeg_size_kib(im) for im in images], dtype=np.float32)
        return RewardOutput(np.clip(-sizes, self.low, self.high))


class JpegIncompressibility(Reward):
    name = "jpeg_incompressibility"

    def __init__(self, device: str = "cpu", resolution: int = 512, **options):
        super().__init__(device, **options)
        self.low, self.high = 0.0, _max_kib(resolution)

    def score(self, images: Sequence[Image.Image], prompts, metadata) -> RewardOutput:
        sizes = np.array([jpeg_size_kib(im) for im in images], dtype=np.float32)
        return RewardOutput(np.clip(sizes, self.low, self.high))
