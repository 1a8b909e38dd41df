"""What changes an image each time it is drawn: sd-scripts' random_crop and color_aug (flip is the dataset's plan).

Each draw takes a ``random.Random`` seeded from the run's seed and the draw's place, so a run repeats exactly.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from .buckets import resized_and_crop

HUE_SHIFT = 8.0  # sd-scripts' limit, in OpenCV's hue units (half degrees): up to 16 degrees either way


def random_crop_origin(size: tuple[int, int], bucket: tuple[int, int], rng: random.Random) -> tuple[int, int]:
    """(left, top) of a random bucket-sized crop of the image resized to cover the bucket (sd-scripts' random_crop:
    the spare pixels of the longer side are cut at a random place instead of evenly)."""
    (new_w, new_h), _ = resized_and_crop(size, bucket)
    return rng.randint(0, new_w - bucket[0]), rng.randint(0, new_h - bucket[1])


def color_aug(rgb: np.ndarray, rng: random.Random) -> np.ndarray:
    """sd-scripts' color_aug on an 8-bit [H, W, 3] image: one draw in three changes it, half of those by a hue shift
    up to HUE_SHIFT, half by a gamma in [0.95, 1.05] applied to the 0-255 values (as sd-scripts computes it)."""
    if rng.random() > 0.33:
        return rgb
    if rng.random() > 0.5:
        shift = rng.uniform(-HUE_SHIFT, HUE_SHIFT)
        hsv = np.asarray(Image.fromarray(rgb, "RGB").convert("HSV")).copy()
        # PIL's hue runs over 0-255 for a full turn, OpenCV's over 0-180
        hue = (hsv[:, :, 0].astype(np.float64) + shift * 256.0 / 180.0) % 256.0
        hsv[:, :, 0] = hue.astype(np.uint8)
        return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(rgb.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)
