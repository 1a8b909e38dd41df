"""The images of a run, their captions and buckets, and the batches of each epoch.

No torch here: the GUI uses it to count steps before a run (``loader`` turns batches into tensors)."""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .buckets import bucket_resolutions, choose_bucket, fit_to_bucket, resized_and_crop
from .captions import read_caption_lines, vary_caption
from .images import UnreadableImage, is_image_file, load_rgb
from .sources import DatasetSpec, SubsetSpec

log = logging.getLogger(__name__)


@dataclass
class ImageItem:
    path: Path
    caption: str
    subset: SubsetSpec
    dataset_index: int
    bucket: tuple[int, int]
    has_caption_file: bool
    size: tuple[int, int] = (0, 0)  # (width, height) of the image file
    caption_lines: list[str] | None = None  # every line of the caption file, for enable_wildcard


# One entry of a batch: (item index, flipped?)
Entry = tuple[int, bool]


class TrainingData:
    """Scans every subset once, then plans the batches of any epoch deterministically from the seed."""

    def __init__(self, datasets: list[DatasetSpec], prior_loss_weight: float, seed: int):
        self.datasets = datasets
        self.prior_loss_weight = prior_loss_weight
        self.seed = seed
        self.items: list[ImageItem] = []
        self.skipped: list[tuple[Path, str]] = []
        for d_index, spec in enumerate(datasets):
            self._check_dataset(spec)
            buckets = bucket_resolutions(spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso,
                                         spec.bucket_reso_steps) if spec.enable_bucket else []
            for subset in spec.subsets:
                self._scan_subset(subset, spec, d_index, buckets)
        if not any(not it.subset.is_reg for it in self.items):
            where = ", ".join(str(s.image_dir) for d in datasets for s in d.subsets if not s.is_reg)
            raise UserError(f"no usable training images found in {where or 'the dataset'} "
                            f"(looked for {', '.join(('png', 'jpg', 'jpeg', 'webp', 'bmp'))})")
        self._batches_per_epoch = len(self.plan_epoch(0))

    # ---- scanning ----
    @staticmethod
    def _check_dataset(spec: DatasetSpec) -> None:
        if spec.bucket_reso_steps % 8:
            raise UserError(f"bucket_reso_steps must be a multiple of 8 (the VAE's scale), got {spec.bucket_reso_steps}")
        if any(r % 8 for r in spec.resolution):
            raise UserError(f"resolution must be a multiple of 8, got {spec.resolution[0]},{spec.resolution[1]}")
        if spec.enable_bucket and spec.min_bucket_reso > spec.max_bucket_reso:
            raise UserError(f"min_bucket_reso ({spec.min_bucket_reso}) is larger than max_bucket_reso "
                            f"({spec.max_bucket_reso})")

    def _scan_subset(self, subset: SubsetSpec, spec: DatasetSpec, d_index: int, buckets) -> None:
        files = sorted((p for p in subset.image_dir.iterdir() if is_image_file(p)), key=lambda p: p.name)
        if not files:
            log.warning("no images in %s", subset.image_dir)
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in files:
            by_stem[path.stem].append(path)
        for stem, same in by_stem.items():
            if len(same) > 1:  # both train; the user may not expect one caption for two pictures
                log.warning("%s share the caption %s%s in %s", " and ".join(p.name for p in same), stem,
                            subset.caption_extension, subset.image_dir)
        for path in files:
            try:
                size = load_rgb(path).size
            except UnreadableImage as exc:
                self.skipped.append((path, str(exc)))
                log.warning("skipping unreadable image %s (%s)", path, exc)
                continue
            caption_path = path.with_suffix(subset.caption_extension)
            has_caption = caption_path.is_file()
            lines = read_caption_lines(caption_path) if has_caption else []
            caption = lines[0] if lines else subset.class_tokens or ""
            bucket = choose_bucket(size, spec.resolution, spec.enable_bucket, buckets, spec.bucket_reso_steps,
                                   spec.bucket_no_upscale)
            self.items.append(ImageItem(path, caption, subset, d_index, bucket, has_caption, size,
                                        lines if subset.enable_wildcard and len(lines) > 1 else None))

    # ---- numbers the user sees ----
    @property
    def num_train_images(self) -> int:
        """Training images counted with their repeats (sd-scripts' ss_num_train_images)."""
        return sum(it.subset.num_repeats for it in self.items if not it.subset.is_reg)

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
                    freq[it.subset.image_dir.name][tag] += 1
        return {k: dict(v) for k, v in freq.items()}

    def summary(self) -> str:
        lines = [f"{len(self.items)} images ({self.num_train_images} training with repeats, "
                 f"{self.num_reg_images} regularisation), {self.batches_per_epoch} batches per epoch"]
        missing = sum(1 for it in self.items if not it.has_caption_file)
        if missing:
            lines.append(f"{missing} image(s) without a caption file use their folder's class tokens")
        for bucket, count in sorted(self.bucket_counts().items()):
            lines.append(f"bucket {bucket[0]}x{bucket[1]}: {count} image(s)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable file(s): "
                         + ", ".join(str(p) for p, _ in self.skipped))
        return "\n".join(lines)

    # ---- epochs ----
    def plan_epoch(self, epoch: int) -> list[list[Entry]]:
        """Batches of one epoch: each batch is one bucket of one dataset; order fixed by (seed, epoch)."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        batches: list[list[Entry]] = []
        for d_index, spec in enumerate(self.datasets):
            train = [i for i, it in enumerate(self.items) if it.dataset_index == d_index and not it.subset.is_reg
                     for _ in range(it.subset.num_repeats)]
            reg = [i for i, it in enumerate(self.items) if it.dataset_index == d_index and it.subset.is_reg
                   for _ in range(it.subset.num_repeats)]
            if reg:  # as sd-scripts: as many regularisation samples as training samples each epoch
                rng.shuffle(reg)
                reg = [reg[k % len(reg)] for k in range(len(train))]
            by_bucket: dict[tuple[int, int], list[Entry]] = defaultdict(list)
            for i in train + reg:
                flip = self.items[i].subset.flip_aug and rng.random() < 0.5
                by_bucket[self.items[i].bucket].append((i, flip))
            for bucket in sorted(by_bucket):
                entries = by_bucket[bucket]
                rng.shuffle(entries)
                for start in range(0, len(entries), spec.batch_size):
                    batches.append(entries[start:start + spec.batch_size])
        rng.shuffle(batches)
        return batches

    def caption_for(self, item_index: int, epoch: int, position: tuple[int, ...], step: int = 0,
                    total_steps: int = 0) -> str:
        """The caption this image trains with at this place of the run (``step``: the optimizer step it is in)."""
        it = self.items[item_index]
        s = it.subset
        rng = random.Random(hash((self.seed, epoch, position, item_index)) & 0xFFFFFFFF)
        return vary_caption(it.caption, rng, s, epoch, it.caption_lines, step, total_steps)

    def size_conditioning(self, item_index: int) -> list[int]:
        """SDXL's (original h, w, crop top, left, target h, w) for an image: the crop is in resized pixels, as the
        UNet saw such crops in pre-training."""
        it = self.items[item_index]
        _, (left, top) = resized_and_crop(it.size, it.bucket)
        return [it.size[1], it.size[0], top, left, it.bucket[1], it.bucket[0]]

    def loss_weight(self, item_index: int) -> float:
        return self.prior_loss_weight if self.items[item_index].subset.is_reg else 1.0

    def pixels(self, item_index: int, flip: bool) -> np.ndarray:
        """The image in its bucket as a float32 [3, H, W] array in [-1, 1]."""
        it = self.items[item_index]
        img = fit_to_bucket(load_rgb(it.path), it.bucket)
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        if flip:
            arr = arr[:, ::-1]
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


def shard_batches(batches: list[list[Entry]], rank: int, world: int) -> list[list[Entry]]:
    """This process's share; every process gets the same count (the last ones repeat early batches) so none waits."""
    if world == 1:
        return batches
    per_process = -(-len(batches) // world)
    padded = batches + batches[: per_process * world - len(batches)]
    return padded[rank::world]
