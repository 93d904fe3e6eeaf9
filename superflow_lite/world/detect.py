"""Find the coloured shapes in an image: colour segmentation, connected components, shape
classification from the blob's geometry. numpy only (scipy is not a dependency).

The world's images are saturated shapes on a grey background, so a pixel's hue names its
colour and low saturation marks background; a generated image is blurrier, which the
saturation threshold, the minimum blob area and the IoU-based shape choice tolerate.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .constants import WORLD_RESOLUTION

# Hue ranges in degrees per colour; hues between them (orange, purple, cyan) are "other".
HUE_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((0.0, 22.0), (330.0, 360.0)),
    "yellow": ((35.0, 75.0),),
    "green": ((85.0, 170.0),),
    "blue": ((195.0, 265.0),),
}
OTHER = "other"
MIN_SATURATION = 0.35  # the background's saturation is ~0.03, the shapes' ~0.8
MIN_VALUE = 0.2  # very dark pixels have meaningless hue
# Blobs smaller than this (in pixels at 64 px) are noise: the smallest world shape (a
# 12 px triangle) covers ~60 px.
MIN_AREA = 20
TRIANGLE_TAPER = 0.65  # top-third / bottom-third width below this: a triangle
SQUARE_CORNERS = 0.55  # corner patches fuller than this: a square


@dataclass(frozen=True)
class Detection:
    """One blob: colour name (or "other"), shape, centre (x, y), area in pixels and
    fill = area / bounding-box area."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float


def pixel_colours(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W] int labels: 0 background, 1.. = COLOUR_LABELS order."""
    x = rgb.astype(np.float32) / 255.0
    top, bottom = x.max(-1), x.min(-1)
    chroma = top - bottom
    saturation = np.where(top > 0, chroma / np.maximum(top, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(
        top == r, ((g - b) / safe) % 6, np.where(top == g, (b - r) / safe + 2, (r - g) / safe + 4)
    ) * 60.0
    labels = np.full(hue.shape, len(COLOUR_LABELS), dtype=np.int32)  # default: other
    for i, name in enumerate(COLOUR_LABELS[:-1]):
        for lo, hi in HUE_RANGES[name]:
            labels[(hue >= lo) & (hue < hi)] = i + 1
    labels[(saturation < MIN_SATURATION) | (top < MIN_VALUE)] = 0
    return labels


COLOUR_LABELS: tuple[str, ...] = tuple(HUE_RANGES) + (OTHER,)


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean [H, W] mask, as arrays of (y, x) pixel indices."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    components = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        components.append(np.array(pixels))
    return components


def classify_shape(pixels: np.ndarray) -> tuple[str, float]:
    """Circle, square or upright triangle from two blur-tolerant features of the blob's
    bounding box; returns the shape and the blob's fill ratio (area / box area).

    taper:   mean width of the top third of rows / of the bottom third. ~0.2 for a
             triangle (apex up), ~1 for circles and squares; a blurred triangle whose apex
             melted away still stays well under TRIANGLE_TAPER.
    corners: how full the four corner patches (a quarter of the side each) are. ~1 for a
             square, ~0.36 for a circle; a blurred square (rounded corners) keeps ~0.7.
    """
    y0, x0 = pixels.min(0)
    y1, x1 = pixels.max(0)
    blob = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.float32)
    blob[pixels[:, 0] - y0, pixels[:, 1] - x0] = 1.0
    height, width = blob.shape
    fill = float(blob.mean())
    third = max(1, height // 3)
    rows = blob.sum(1)
    if rows[:third].mean() < TRIANGLE_TAPER * rows[-third:].mean():
        return "triangle", fill
    c = max(1, round(min(height, width) / 4))
    corners = np.mean([blob[:c, :c].mean(), blob[:c, -c:].mean(), blob[-c:, :c].mean(), blob[-c:, -c:].mean()])
    return ("square" if corners > SQUARE_CORNERS else "circle"), fill


def detect_shapes(image: Image.Image) -> list[Detection]:
    """Every blob of at least MIN_AREA pixels (scaled to the image size), largest first."""
    rgb = np.asarray(image.convert("RGB"))
    min_area = MIN_AREA * (rgb.shape[0] * rgb.shape[1]) / WORLD_RESOLUTION**2
    labels = pixel_colours(rgb)
    found = []
    for i, name in enumerate(COLOUR_LABELS):
        for pixels in connected_components(labels == i + 1):
            if len(pixels) < min_area:
                continue
            shape, fill = classify_shape(pixels)
            cy, cx = pixels.mean(0) + 0.5
            found.append(Detection(name, shape, float(cx), float(cy), len(pixels), fill))
    return sorted(found, key=lambda d: -d.area)
