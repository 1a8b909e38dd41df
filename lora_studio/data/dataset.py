"""The images of a run, their captions and buckets, and the batches of each epoch.

No torch here: the GUI uses it to count steps before a run (``loader`` turns batches into tensors)."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .buckets import bucket_resolutions, choose_bucket, fit_to_bucket, resized_and_crop
from .captions import read_caption_lines, vary_caption
from ..io_utils import file_sha256
from .augment import color_aug, random_crop_origin
from .images import UnreadableImage, is_image_file, load_alpha, load_mask, load_rgb
from .metadata_file import metadata_captions
from .sources import DatasetSpec, SubsetSpec

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # pixels per latent pixel, each side (the VAE of every Stable Diffusion family)


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
    mask_path: Path | None = None  # its mask image in the subset's conditioning_data_dir (masked_loss)
    held_out: bool = False  # a validation image: never trained on, its loss measured (validation_split)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


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
        self._mask_folders: dict[Path, dict[str, Path]] = {}
        self._masks_claimed: set[Path] = set()
        for d_index, spec in enumerate(datasets):
            self._check_dataset(spec)
            buckets = bucket_resolutions(spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso,
                                         spec.bucket_reso_steps) if spec.enable_bucket else []
            for subset in spec.subsets:
                self._scan_subset(subset, spec, d_index, buckets)
        self._check_unused_masks()
        for spec in datasets:
            if spec.validation_split:
                self._hold_out(spec)
        if not any(not it.subset.is_reg for it in self.items):
            where = ", ".join(str(s.image_dir) for d in datasets for s in d.subsets if not s.is_reg)
            raise UserError(f"no usable training images found in {where or 'the dataset'} "
                            f"(looked for {', '.join(('png', 'jpg', 'jpeg', 'webp', 'bmp'))})")
        if not any(not it.subset.is_reg and not it.held_out for it in self.items):
            raise UserError(f"validation_split = {datasets[0].validation_split} holds out every training image; "
                            "lower it (or add images)")
        self._batches_per_epoch = len(self.plan_epoch(0))

    # ---- scanning ----
    @staticmethod
    def _check_dataset(spec: DatasetSpec) -> None:
        if spec.bucket_reso_steps % 8:
            raise UserError(f"bucket_reso_steps must be a multiple of 8 (the VAE's scale), got {spec.bucket_reso_steps}")
        if any(r % 8 for r in spec.resolution):
            raise UserError(f"resolution must be a multiple of 8, got {spec.resolution[0]},{spec.resolution[1]}")
        if not 0.0 <= spec.validation_split < 1.0:
            raise UserError(f"validation_split must be at least 0 and below 1 (a share of the images), got "
                            f"{spec.validation_split}")
        if spec.enable_bucket and spec.min_bucket_reso > spec.max_bucket_reso:
            raise UserError(f"min_bucket_reso ({spec.min_bucket_reso}) is larger than max_bucket_reso "
                            f"({spec.max_bucket_reso})")

    def _scan_subset(self, subset: SubsetSpec, spec: DatasetSpec, d_index: int, buckets) -> None:
        if subset.metadata_file is not None:
            found = metadata_captions(subset.metadata_file, subset.image_dir, subset.caption_separator,
                                      subset.enable_wildcard)
        else:
            found = [(path, None) for path in self._image_files(subset)]
        masks = self._mask_files(subset, [path for path, _ in found])
        for path, lines in found:
            try:
                size = load_rgb(path).size
            except UnreadableImage as exc:
                self.skipped.append((path, str(exc)))
                log.warning("skipping unreadable image %s (%s)", path, exc)
                continue
            has_caption = lines is not None
            if lines is None:
                caption_path = path.with_suffix(subset.caption_extension)
                has_caption = caption_path.is_file()
                lines = read_caption_lines(caption_path) if has_caption else []
            caption = lines[0] if lines else subset.class_tokens or ""
            bucket = choose_bucket(size, spec.resolution, spec.enable_bucket, buckets, spec.bucket_reso_steps,
                                   spec.bucket_no_upscale)
            self.items.append(ImageItem(path, caption, subset, d_index, bucket, has_caption, size,
                                        lines if subset.enable_wildcard and len(lines) > 1 else None,
                                        masks.get(path)))

    @staticmethod
    def _image_files(subset: SubsetSpec) -> list[Path]:
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
        return files

    def _mask_files(self, subset: SubsetSpec, images: list[Path]) -> dict[Path, Path]:
        """Each image's mask in the subset's conditioning_data_dir (same name, any image extension). As sd-scripts,
        every image needs one."""
        if subset.conditioning_data_dir is None:
            return {}
        folder = subset.conditioning_data_dir
        by_stem = {p.stem: p for p in sorted(folder.iterdir(), key=lambda p: p.name) if is_image_file(p)}
        self._mask_folders[folder] = by_stem
        self._masks_claimed.update(by_stem[image.stem] for image in images if image.stem in by_stem)
        missing = [image.name for image in images if image.stem not in by_stem]
        if missing:
            raise UserError(f"conditioning_data_dir {folder}: no mask for {len(missing)} image(s) of "
                            f"{subset.image_dir}: {_listed(missing)} (a mask has its image's name, any image "
                            "extension)")
        return {image: by_stem[image.stem] for image in images}

    def _check_unused_masks(self) -> None:
        """A mask no image uses is named too, as sd-scripts does: a misspelt name would train that image unmasked."""
        extra = sorted(str(p) for masks in self._mask_folders.values() for p in masks.values()
                       if p not in self._masks_claimed)
        if extra:
            raise UserError(f"{len(extra)} mask(s) in conditioning_data_dir without a training image of the same "
                            f"name: {_listed(extra)}")

    def _hold_out(self, spec: DatasetSpec) -> None:
        """sd-scripts' validation_split: each training subset's images shuffled by validation_seed (else the seed),
        the last round(n x split) held out for validation."""
        for subset in spec.subsets:
            if subset.is_reg:
                continue
            mine = [it for it in self.items if it.subset is subset]
            order = list(range(len(mine)))
            random.Random(self.seed if spec.validation_seed is None else spec.validation_seed).shuffle(order)
            for k in order[len(mine) - round(len(mine) * spec.validation_split):]:
                mine[k].held_out = True

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
                     and not it.held_out for _ in range(it.subset.num_repeats)]
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

    def fixed_caption(self, item_index: int) -> str:
        """The caption without its random changes (no shuffle, dropout or warm-up): what validation measures."""
        it = self.items[item_index]
        steady = dataclasses.replace(it.subset, shuffle_caption=False, caption_dropout_rate=0.0,
                                     caption_tag_dropout_rate=0.0, caption_dropout_every_n_epochs=0,
                                     token_warmup_step=0)
        return vary_caption(it.caption, random.Random(item_index), steady, 1, it.caption_lines)

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


def shard_batches(batches: list[list[Entry]], rank: int, world: int) -> list[list[Entry]]:
    """This process's share; every process gets the same count (the last ones repeat early batches) so none waits."""
    if world == 1:
        return batches
    per_process = -(-len(batches) // world)
    padded = batches + batches[: per_process * world - len(batches)]
    return padded[rank::world]
