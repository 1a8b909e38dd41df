"""Aspect-ratio buckets (as sd-scripts makes them) and the resize-and-crop that puts an image in its bucket."""

from __future__ import annotations

import math

from PIL import Image


def bucket_resolutions(resolution: tuple[int, int], min_reso: int, max_reso: int, step: int) -> list[tuple[int, int]]:
    """Every (width, height) with sides multiple of ``step`` in [min_reso, max_reso] and area <= resolution's area."""
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    resos = {(side, side)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, int((max_area // width) // step) * step)
        if height >= min_reso:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def choose_bucket(size: tuple[int, int], resolution: tuple[int, int], enable_bucket: bool, buckets, step: int,
                  no_upscale: bool) -> tuple[int, int]:
    """The (width, height) an image of ``size`` is trained at."""
    if not enable_bucket:
        return resolution
    width, height = size
    max_area = resolution[0] * resolution[1]
    if no_upscale:
        if width * height > max_area:
            aspect = width / height
            width = math.sqrt(max_area * aspect)
            height = max_area / width
        bucket = (max(step, int(width // step) * step), max(step, int(height // step) * step))
        return bucket
    aspect = width / height
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - aspect), -b[0] * b[1]))


def resized_and_crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized width, height) that covers the bucket, and the (left, top) of the centred crop."""
    bw, bh = bucket
    w, h = size
    scale = max(bw / w, bh / h)
    new_w, new_h = max(bw, math.ceil(w * scale - 1e-6)), max(bh, math.ceil(h * scale - 1e-6))
    return (new_w, new_h), ((new_w - bw) // 2, (new_h - bh) // 2)


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int], origin: tuple[int, int] | None = None) -> Image.Image:
    """Resize so the image covers the bucket, then crop exactly the bucket size: at ``origin`` (left, top), or the
    centre."""
    (new_w, new_h), centre = resized_and_crop(img.size, bucket)
    left, top = origin if origin is not None else centre
    if (new_w, new_h) != img.size:
        shrink = new_w < img.size[0]
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS if shrink else Image.Resampling.BICUBIC)
    return img.crop((left, top, left + bucket[0], top + bucket[1]))
