"""The images of a run, their captions and buckets, and the batches of each epoch.

No torch here: the GUI uses it to count steps before a run (``loader`` turns batches into tensors)."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import UserError
from .buckets import fit_to_bucket, resized_and_crop
from .captions import steady_rules, vary_caption
from ..io_utils import file_sha256
from .augment import color_aug, random_crop_origin
from .images import READ_FORMATS, UnreadableImage, load_alpha, load_mask, load_rgb
from .scan import DatasetScan, ImageItem, scan_datasets
from .sources import DatasetSpec

__all__ = ["Entry", "ImageItem", "TrainingData", "plan_batches", "shard_batches"]

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # pixels per latent pixel, each side (the VAE of every Stable Diffusion family)

# One entry of a batch: (item index, flipped?)
Entry = tuple[int, bool]


class TrainingData:
    """The images of ``scan_datasets`` (the dataset check reads the same), and the batches of any epoch, planned
    deterministically from the seed."""

    def __init__(self, datasets: list[DatasetSpec], prior_loss_weight: float, seed: int):
        self.datasets = datasets
        self.prior_loss_weight = prior_loss_weight
        self.seed = seed
        scan = scan_datasets(datasets, seed)
        _log_findings(scan)
        self.items: list[ImageItem] = scan.items
        self.skipped: list[tuple[Path, str]] = [(s.path, s.reason) for s in scan.skipped]
        problem = scan.training_problem()
        if problem:
            raise UserError(problem)
        self._batches_per_epoch = len(self.plan_epoch(0))

    # ---- numbers the user sees ----
    @property
    def num_train_images(self) -> int:
        """Training images counted with their repeats (sd-scripts' ss_num_train_images)."""
        return sum(it.subset.num_repeats for it in self.items if not it.subset.is_reg and not it.held_out)

    @property
    def num_validation_images(self) -> int:
        return sum(1 for it in self.items if it.held_out)

    def validation_batches(self) -> list[list[Entry]]:
        """The held-out images once each (no repeats, no flip), a bucket per batch, in a fixed order."""
        batches = []
        for d_index, spec in enumerate(self.datasets):
            by_bucket: dict[tuple[int, int], list[Entry]] = defaultdict(list)
            for i, it in enumerate(self.items):
                if it.held_out and it.dataset_index == d_index:
                    by_bucket[it.bucket].append((i, False))
            for bucket in sorted(by_bucket):
                entries = by_bucket[bucket]
                batches += [entries[k:k + spec.batch_size] for k in range(0, len(entries), spec.batch_size)]
        return batches

    @property
    def num_reg_images(self) -> int:
        return sum(it.subset.num_repeats for it in self.items if it.subset.is_reg)

    @property
    def batches_per_epoch(self) -> int:
        return self._batches_per_epoch

    def bucket_counts(self) -> Counter:
        return Counter(it.bucket for it in self.items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        freq: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for it in self.items:
            for tag in (t.strip() for t in it.caption.split(",")):
                if tag:
                    freq[it.subset.name][tag] += 1
        return {k: dict(v) for k, v in freq.items()}

    def summary(self) -> str:
        held = f", {self.num_validation_images} held out for validation" if self.num_validation_images else ""
        lines = [f"{len(self.items)} images ({self.num_train_images} training with repeats, "
                 f"{self.num_reg_images} regularisation{held}), {self.batches_per_epoch} batches per epoch"]
        missing = sum(1 for it in self.items if not it.has_caption_file)
        empty = sum(1 for it in self.items if it.has_caption_file and not it.captioned)
        if missing or empty:
            lines.append(f"{missing + empty} image(s) without a caption ({missing} without a caption file, {empty} "
                         "empty) train with their folder's class tokens")
        for bucket, count in sorted(self.bucket_counts().items()):
            lines.append(f"bucket {bucket[0]}x{bucket[1]}: {count} image(s)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s): "
                         + ", ".join(str(p) for p, _ in self.skipped))
        return "\n".join(lines)

    # ---- epochs ----
    def plan_epoch(self, epoch: int) -> list[list[Entry]]:
        """Batches of one epoch: each batch is one bucket of one dataset; order fixed by (seed, epoch)."""
        return plan_batches(self.items, self.datasets, self.seed, epoch)

    def caption_for(self, item_index: int, epoch: int, position: tuple[int, ...], step: int = 0,
                    total_steps: int = 0) -> str:
        """The caption this image trains with at this place of the run (``step``: the optimizer step it is in)."""
        it = self.items[item_index]
        s = it.subset
        rng = random.Random(hash((self.seed, epoch, position, item_index)) & 0xFFFFFFFF)
        return vary_caption(it.caption, rng, s, epoch, it.caption_lines, step, total_steps)

    def fixed_caption(self, item_index: int) -> str:
        """The caption without its random changes (no shuffle, dropout or warm-up): what validation measures."""
        it = self.items[item_index]
        return vary_caption(it.caption, random.Random(item_index), steady_rules(it.subset), 1, it.caption_lines)

    # ---- one draw of an image ----
    def draw_rng(self, item_index: int, epoch: int, position: tuple[int, ...]) -> random.Random | None:
        """The randomness of one draw of an image (random_crop, color_aug), or None when its subset has neither."""
        s = self.items[item_index].subset
        if not (s.random_crop or s.color_aug):
            return None
        return random.Random(hash((self.seed, epoch, position, item_index, 1)) & 0xFFFFFFFF)

    def crop_origin(self, item_index: int, rng: random.Random | None = None) -> tuple[int, int]:
        """(left, top) of the image's bucket-sized crop in the resized image: its centre, or a random place with
        random_crop."""
        it = self.items[item_index]
        if rng is not None and it.subset.random_crop:
            return random_crop_origin(it.size, it.bucket, rng)
        return resized_and_crop(it.size, it.bucket)[1]

    def size_conditioning(self, item_index: int, flip: bool = False, origin: tuple[int, int] | None = None) -> list[int]:
        """SDXL's (original h, w, crop top, left, target h, w) for an image: the crop is in resized pixels, as the
        UNet saw such crops in pre-training (a flipped image's crop is mirrored, a random crop's is where it was)."""
        it = self.items[item_index]
        (new_w, _), centre = resized_and_crop(it.size, it.bucket)
        left, top = origin if origin is not None else centre
        if flip:
            left = new_w - left - it.bucket[0]
        return [it.size[1], it.size[0], top, left, it.bucket[1], it.bucket[0]]

    def loss_weight(self, item_index: int) -> float:
        return self.prior_loss_weight if self.items[item_index].subset.is_reg else 1.0

    def pixels(self, item_index: int, flip: bool, origin: tuple[int, int] | None = None,
               rng: random.Random | None = None) -> np.ndarray:
        """The image in its bucket as a float32 [3, H, W] array in [-1, 1] (cropped at ``origin``; color_aug drawn
        from ``rng``), in sd-scripts' order: crop, colour, flip."""
        it = self.items[item_index]
        rgb = np.asarray(fit_to_bucket(load_rgb(it.path), it.bucket, origin))
        if rng is not None and it.subset.color_aug:
            rgb = color_aug(rgb, rng)
        arr = rgb.astype(np.float32) / 127.5 - 1.0
        if flip:
            arr = arr[:, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    # ---- loss masks (masked_loss, alpha_mask) ----
    def mask_source(self, item_index: int) -> str | None:
        """What an image's loss mask comes from: its mask file (masked_loss), its transparency (alpha_mask), or
        nothing (the whole image trains)."""
        it = self.items[item_index]
        if it.mask_path is not None:
            return f"mask file {file_sha256(it.mask_path)}"
        return "alpha" if it.subset.alpha_mask else None

    def redrawn_folders(self) -> list[str]:
        """Folders whose images change each time they are drawn (color_aug, random_crop): no latent cache for them."""
        return sorted({str(it.path.parent) for it in self.items if it.subset.color_aug or it.subset.random_crop})

    @property
    def uses_masks(self) -> bool:
        return any(it.mask_path is not None or it.subset.alpha_mask for it in self.items)

    def mask(self, item_index: int, flip: bool, origin: tuple[int, int] | None = None) -> np.ndarray:
        """The image's loss mask in [0, 1] at the latents' size ([H/8, W/8], float32): put in the bucket exactly as
        the image is (resize, crop, flip), then averaged over each latent pixel's 8x8 pixels (what sd-scripts' "area"
        interpolation to the loss's size does). All ones when the image has no mask."""
        it = self.items[item_index]
        bw, bh = it.bucket
        if it.mask_path is not None:
            try:
                mask = load_mask(it.mask_path, it.size, it.path)
            except UnreadableImage as exc:
                raise UserError(str(exc)) from None
        else:
            mask = load_alpha(it.path) if it.subset.alpha_mask else None
        if mask is None:
            return np.ones((bh // LATENT_SCALE, bw // LATENT_SCALE), dtype=np.float32)
        arr = np.asarray(fit_to_bucket(mask, it.bucket, origin), dtype=np.float32) / 255.0
        if flip:
            arr = arr[:, ::-1]
        pooled = arr.reshape(bh // LATENT_SCALE, LATENT_SCALE, bw // LATENT_SCALE, LATENT_SCALE).mean(axis=(1, 3))
        return np.ascontiguousarray(pooled, dtype=np.float32)


def _log_findings(scan: DatasetScan) -> None:
    """What the scan found that does not train as the user may expect (the dataset check reports the same)."""
    for (_, subset), files in zip(scan.subsets, scan.files):
        if not files.images:
            log.warning("no images in %s (looked for %s)", subset.metadata_file or subset.image_dir, READ_FORMATS)
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in files.shared_captions:
            by_stem[path.stem].append(path)
        for stem, same in by_stem.items():  # both train; the user may not expect one caption for two pictures
            log.warning("%s share the caption %s%s in %s", " and ".join(p.name for p in same), stem,
                        subset.caption_extension, subset.image_dir)
        if files.other_formats:
            log.warning("not trained, a format the trainer does not read (it reads %s): %s",
                        READ_FORMATS, ", ".join(str(p) for p in files.other_formats))
        if files.orphan_captions:
            log.warning("caption file(s) without an image of the same name: %s",
                        ", ".join(str(p) for p in files.orphan_captions))
    for skipped in scan.skipped:
        log.warning("skipping unreadable image %s (%s)", skipped.path, skipped.reason)


def plan_batches(items: list[ImageItem], datasets: list[DatasetSpec], seed: int, epoch: int) -> list[list[Entry]]:
    """The batches of one epoch (``items`` indices, flipped?): each batch is one bucket of one dataset, held-out
    images left out, as many regularisation samples as training samples (sd-scripts); order fixed by (seed, epoch).
    The dataset check counts its batches with it."""
    rng = random.Random(seed * 1_000_003 + epoch)
    batches: list[list[Entry]] = []
    for d_index, spec in enumerate(datasets):
        train = [i for i, it in enumerate(items) if it.dataset_index == d_index and not it.subset.is_reg
                 and not it.held_out for _ in range(it.subset.num_repeats)]
        reg = [i for i, it in enumerate(items) if it.dataset_index == d_index and it.subset.is_reg
               for _ in range(it.subset.num_repeats)]
        if reg:
            rng.shuffle(reg)
            reg = [reg[k % len(reg)] for k in range(len(train))]
        by_bucket: dict[tuple[int, int], list[Entry]] = defaultdict(list)
        for i in train + reg:
            flip = items[i].subset.flip_aug and rng.random() < 0.5
            by_bucket[items[i].bucket].append((i, flip))
        for bucket in sorted(by_bucket):
            entries = by_bucket[bucket]
            rng.shuffle(entries)
            for start in range(0, len(entries), spec.batch_size):
                batches.append(entries[start:start + spec.batch_size])
    rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[Entry]], rank: int, world: int) -> list[list[Entry]]:
    """This process's share; every process gets the same count (the last ones repeat early batches) so none waits."""
    if world == 1:
        return batches
    per_process = -(-len(batches) // world)
    padded = batches + batches[: per_process * world - len(batches)]
    return padded[rank::world]
