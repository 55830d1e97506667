"""Scan- and photo-like degradations: rotation, blur, noise, uneven light, JPEG artefacts."""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageFilter


def degrade(image: Image.Image, rng: random.Random, strength: float = 1.0) -> tuple[Image.Image, float]:
    """Make a clean render look scanned or photographed; `strength` 0 leaves it untouched.
    Returns the image and the angle it was rotated by (degrees, counter-clockwise, canvas expanded)."""
    if strength <= 0:
        return image, 0.0
    np_rng = np.random.default_rng(rng.getrandbits(64))
    if rng.random() < 0.5:
        image = image.convert("L").convert("RGB")
    angle = rng.uniform(-2.5, 2.5) * strength
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1) * strength))
    pixels = np.asarray(image, dtype=np.float32)
    contrast, brightness = rng.uniform(0.8, 1.0), rng.uniform(-25, 10) * strength
    pixels = (pixels - 128) * contrast + 128 + brightness
    if rng.random() < 0.4:
        # Uneven lighting, as in a phone photo: a linear shade across the page.
        height, width = pixels.shape[:2]
        shade = np.linspace(0, rng.uniform(-50, 0) * strength, width, dtype=np.float32)
        pixels += (
            shade[None, :, None] if rng.random() < 0.5 else np.linspace(0, shade[-1], height)[:, None, None]
        )
    pixels += np_rng.normal(0, rng.uniform(2, 10) * strength, pixels.shape[:2])[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(35, 80))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), angle


def rotate_box(
    box: tuple[int, int, int, int], angle: float, size: tuple[int, int], rotated_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a (top, left, bottom, right) box of an image of `size` lands after `Image.rotate(angle,
    expand=True)`: the axis-aligned box around its rotated corners."""
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    (cx, cy), (rx, ry) = (size[0] / 2, size[1] / 2), (rotated_size[0] / 2, rotated_size[1] / 2)
    top, left, bottom, right = box
    xs, ys = [], []
    for x, y in ((left, top), (right, top), (left, bottom), (right, bottom)):
        xs.append(rx + (x - cx) * cos + (y - cy) * sin)
        ys.append(ry - (x - cx) * sin + (y - cy) * cos)
    return round(min(ys)), round(min(xs)), round(max(ys)), round(max(xs))
