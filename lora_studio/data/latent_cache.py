"""Latents encoded once, in memory and optionally on disk.

A disk entry is named by a hash of the image file's bytes, the bucket size, the flip and the VAE's weights, so a
changed image, resolution or VAE never reuses a stale latent.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..io_utils import atomic_write, file_sha256
from .dataset import Entry, TrainingData
from .images import CACHE_FOLDER

log = logging.getLogger(__name__)

CACHE_VERSION = "1"


def vae_fingerprint(vae: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache(dict):
    """(image, flip) -> its latent; ``masks``: (image, flip) -> its loss mask at the latent's size, when the run
    masks the loss (masked_loss, alpha_mask)."""

    def __init__(self):
        super().__init__()
        self.masks: dict[Entry, torch.Tensor] = {}


def _cache_path(image: Path, bucket: tuple[int, int], flip: bool, vae_id: str, fallback_dir: Path,
                mask: str | None = None) -> Path:
    """``mask`` names where the entry's loss mask comes from (the entry then holds it); a changed mask file is a new
    entry."""
    masked = f"|{mask}" if mask else ""
    key = hashlib.sha256(f"{CACHE_VERSION}|{file_sha256(image)}|{bucket}|{flip}|{vae_id}{masked}".encode()).hexdigest()[:20]
    folder = image.parent / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
    except OSError:  # read-only image folder: keep the cache with the outputs instead
        folder = fallback_dir
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{image.stem}_{bucket[0]}x{bucket[1]}{'_flip' if flip else ''}_{key}.safetensors"


def needed_entries(data: TrainingData) -> list[Entry]:
    entries = []
    for i, item in enumerate(data.items):
        entries.append((i, False))
        if item.subset.flip_aug:
            entries.append((i, True))
    return entries


def build_latent_cache(data: TrainingData, encode: Callable[[torch.Tensor], torch.Tensor], vae_id: str,
                       to_disk: bool, write: bool, fallback_dir: Path, batch_size: int = 4,
                       show_progress: bool = True) -> LatentCache:
    """Latents for every (image, flip) the run can draw, and their loss masks when the run has masks. ``encode``
    maps [B,3,H,W] pixels to scaled latents.

    With ``to_disk``, entries found on disk are read and new ones written (only where ``write`` is true: the main
    process); other processes read what the main process wrote.
    """
    cache = LatentCache()
    masked = data.uses_masks
    todo: dict[tuple[int, int], list[tuple[Entry, Path | None]]] = defaultdict(list)
    for entry in needed_entries(data):
        item = data.items[entry[0]]
        mask = (data.mask_source(entry[0]) or "none") if masked else None
        path = _cache_path(item.path, item.bucket, entry[1], vae_id, fallback_dir, mask) if to_disk else None
        if path is not None and path.is_file():
            try:
                stored = load_file(str(path))
                cache[entry] = stored["latent"]
                if masked:
                    cache.masks[entry] = stored["mask"]
                continue
            except Exception as exc:  # a damaged cache file is re-made, never trusted
                log.warning("re-encoding %s: cache file %s unreadable (%s)", item.path, path, exc)
        todo[item.bucket].append((entry, path))

    total = sum(len(v) for v in todo.values())
    if total and not write:
        raise RuntimeError("latent cache incomplete on a non-main process")
    with tqdm(total=total, desc="caching latents", disable=not show_progress or total == 0, unit="img") as bar:
        for bucket, jobs in todo.items():
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                pixels = torch.stack([torch.from_numpy(data.pixels(i, flip)) for (i, flip), _ in chunk])
                latents = encode(pixels).float().cpu()
                for ((i, flip), path), latent in zip(chunk, latents):
                    if not torch.isfinite(latent).all():
                        raise UserError(f"the VAE produced NaN/inf latents for {data.items[i].path}; "
                                        "use mixed_precision = \"no\" or a fixed VAE")
                    stored = {"latent": latent.contiguous()}
                    cache[(i, flip)] = stored["latent"]
                    if masked:
                        stored["mask"] = cache.masks[(i, flip)] = torch.from_numpy(data.mask(i, flip))
                    if path is not None:
                        meta = {"image": data.items[i].path.name, "bucket": f"{bucket[0]}x{bucket[1]}"}
                        atomic_write(path, lambda tmp, t=stored, m=meta: save_file(t, tmp, metadata=m))
                bar.update(len(chunk))
    return cache
