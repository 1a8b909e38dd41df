"""Read an image the way a person sees it: EXIF rotation applied, transparency on white, 16-bit and CMYK converted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # the images that train
# the folder beside a subset's images where latents and text-encoder outputs are cached (cache_*_to_disk)
CACHE_FOLDER = ".lora_studio_cache"
READ_FORMATS = ", ".join(ext[1:] for ext in IMAGE_EXTENSIONS)  # as messages name them
# pictures people keep that the trainer does not read (named as skipped, never silently left out)
OTHER_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".avif", ".heic", ".heif", ".jfif", ".jxl", ".jp2", ".ico",
                          ".psd", ".svg")

# Large scans are fine; decompression bombs are not (about 16k x 16k).
Image.MAX_IMAGE_PIXELS = 268_000_000


class UnreadableImage(Exception):
    """The file could not be decoded as an image; the message says why."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale ("I;16", "I", "F") scaled to 8-bit by their real range, not clipped."""
    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if img.mode == "F":
        top = max(float(arr.max()), 1.0) if arr.max() > 1.0 else 1.0
    arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def load_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image. Raises UnreadableImage with the reason."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except Exception as exc:  # OSError, DecompressionBombError, or a plugin's own error on a damaged file
        raise UnreadableImage(f"{exc.__class__.__name__}: {exc}") from None

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode == "CMYK":
        return img.convert("RGB")  # PIL applies the (inverted, Adobe) CMYK conversion itself
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_alpha(path: str | Path) -> Image.Image | None:
    """The image's transparency as an 8-bit "L" image (EXIF rotation applied, like ``load_rgb``), or None when it
    has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    if img.mode not in ("RGBA", "RGBa", "LA", "La", "PA"):
        return None
    return img.getchannel("A")


def load_mask(path: str | Path, size: tuple[int, int], image: Path) -> Image.Image:
    """A mask image (masked_loss) as "L" from its red channel, as sd-scripts reads it, at the size of ``image``
    (``size``). A mask of the same shape at another scale is resized; another shape is an error."""
    try:
        mask = load_rgb(path).getchannel("R")
    except UnreadableImage as exc:
        raise UnreadableImage(f"mask {path}: {exc}") from None
    if mask.size != size:
        if abs(mask.size[0] / mask.size[1] - size[0] / size[1]) > 0.01:
            raise UnreadableImage(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image} is "
                                  f"{size[0]}x{size[1]}: a mask must have its image's shape")
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return mask
