"""Scan- and photo-like degradations: rotation, blur, noise, uneven light, JPEG artefacts."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageFilter


def degrade(image: Image.Image, rng: random.Random, strength: float = 1.0) -> Image.Image:
    """Make a clean render look scanned or photographed; `strength` 0 leaves it untouched."""
    if strength <= 0:
        return image
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
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
