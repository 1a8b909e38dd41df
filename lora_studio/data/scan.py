"""What a run takes from its datasets, decided in one place for the trainer (``TrainingData``) and the dataset check
(``lora-studio dataset check`` and the GUI's dataset health): the dataset settings checked, each subset's images and
captions found (its folder, or its metadata file), unreadable images skipped with the reason, files that do not train
named, mask files matched, the validation images held out. Both read the same ``DatasetScan``, so the check reports
what training will do.

No torch here; nothing is logged (the trainer logs what it wants said, the check reports it).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError
from .buckets import bucket_resolutions, choose_bucket
from .captions import read_caption_lines
from .images import IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS, READ_FORMATS, UnreadableImage, is_image_file, load_rgb
from .metadata_file import metadata_captions
from .sources import DatasetSpec, SubsetSpec


@dataclass
class ImageItem:
    path: Path
    caption: str  # the caption it trains with before its random changes (the class tokens when it has none)
    subset: SubsetSpec
    dataset_index: int
    bucket: tuple[int, int]
    has_caption_file: bool  # a caption file beside it (or an entry in its metadata file), empty or not
    size: tuple[int, int] = (0, 0)  # (width, height) of the image file
    caption_lines: list[str] | None = None  # every line of the caption file, for enable_wildcard
    mask_path: Path | None = None  # its mask image in the subset's conditioning_data_dir (masked_loss)
    held_out: bool = False  # a validation image: never trained on, its loss measured (validation_split)
    lines: list[str] = field(default_factory=list)  # the lines of its caption file or metadata entry

    @property
    def captioned(self) -> bool:
        """False when it trains with its folder's class tokens: no caption file, or an empty one."""
        return any(line.strip() for line in self.lines)


@dataclass
class SkippedImage:
    path: Path
    reason: str  # why it does not train (the decoder's error), naming the file by its name only
    subset: SubsetSpec


@dataclass
class SubsetFiles:
    """A subset's image files, and the files beside them that do not train as they are (a metadata file's subset has
    only its images)."""
    images: list[Path] = field(default_factory=list)  # every image file found, readable or not
    other_formats: list[Path] = field(default_factory=list)  # pictures in a format the trainer does not read
    orphan_captions: list[Path] = field(default_factory=list)  # caption files without an image of their name
    shared_captions: list[Path] = field(default_factory=list)  # images sharing a name, so one caption (both train)


@dataclass
class DatasetScan:
    datasets: list[DatasetSpec]
    items: list[ImageItem] = field(default_factory=list)  # the readable images, held out or not
    skipped: list[SkippedImage] = field(default_factory=list)
    files: list[SubsetFiles] = field(default_factory=list)  # one per subset, in the order of ``subsets``
    hold_out_exact: bool = True  # False: no seed was known, so the held-out images are one draw of many

    @property
    def subsets(self) -> list[tuple[int, SubsetSpec]]:
        """(dataset index, subset) of every subset, in order."""
        return [(d, s) for d, spec in enumerate(self.datasets) for s in spec.subsets]

    def training_problem(self) -> str | None:
        """Why nothing would train (the trainer refuses to start; the check reports it), or None."""
        if not any(not it.subset.is_reg for it in self.items):
            where = ", ".join(str(s.image_dir) for _, s in self.subsets if not s.is_reg)
            return f"no usable training images found in {where or 'the dataset'} (looked for {READ_FORMATS})"
        if not any(not it.subset.is_reg and not it.held_out for it in self.items):
            return (f"validation_split = {self.datasets[0].validation_split} holds out every training image; "
                    "lower it (or add images)")
        return None


# ---------------------------------------------------------------- settings

def check_caption_extension(ext: str, setting: str) -> None:
    if not ext or not ext.startswith(".") or "/" in ext or "\\" in ext or ext == ".":
        raise UserError(f"{setting} must be a file extension starting with a dot, like .txt or .caption; got {ext!r}")


def check_dataset_settings(spec: DatasetSpec, prefix: str = "") -> None:
    """Raise UserError for dataset settings the trainer cannot use (named as settings, or with ``prefix`` "--" as
    the dataset check's options)."""
    w, h = spec.resolution
    if w < 64 or h < 64 or w % 8 or h % 8:
        raise UserError(f"{prefix}resolution must be a multiple of 8 and at least 64, got {w},{h}")
    if spec.batch_size < 1:
        name = "batch_size" if prefix else "train_batch_size"
        raise UserError(f"{prefix}{name} must be at least 1, got {spec.batch_size}")
    if spec.bucket_reso_steps < 8 or spec.bucket_reso_steps % 8:
        raise UserError(f"{prefix}bucket_reso_steps must be a multiple of 8 (the VAE's scale), got "
                        f"{spec.bucket_reso_steps}")
    if spec.enable_bucket and spec.min_bucket_reso > spec.max_bucket_reso:
        raise UserError(f"{prefix}min_bucket_reso ({spec.min_bucket_reso}) is larger than {prefix}max_bucket_reso "
                        f"({spec.max_bucket_reso})")
    if not 0.0 <= spec.validation_split < 1.0:
        raise UserError(f"validation_split must be at least 0 and below 1 (a share of the images), got "
                        f"{spec.validation_split}")
    for subset in spec.subsets:
        check_caption_extension(subset.caption_extension, f"{prefix}caption_extension")


# ---------------------------------------------------------------- finding the files

def caption_path(image: Path, subset: SubsetSpec) -> Path:
    """The caption file an image trains with: its name with the subset's caption_extension."""
    return image.with_suffix(subset.caption_extension)


def subset_files(subset: SubsetSpec) -> tuple[list[tuple[Path, list[str] | None]], SubsetFiles]:
    """(image, its metadata caption lines or None: look for a caption file) of a subset, by name, and its files."""
    if subset.metadata_file is not None:
        entries = metadata_captions(subset.metadata_file, subset.image_dir, subset.caption_separator,
                                    subset.enable_wildcard)
        return entries, SubsetFiles(images=[path for path, _ in entries])
    if subset.image_dir is None or not subset.image_dir.is_dir():
        raise UserError(f"image folder not found: {subset.image_dir}")
    files = sorted((p for p in subset.image_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.name)
    images = [p for p in files if is_image_file(p)]
    stems = Counter(p.stem for p in images)
    ext = subset.caption_extension.lower()
    found = SubsetFiles(
        images=images,
        other_formats=[p for p in files if p.suffix.lower() in OTHER_IMAGE_EXTENSIONS],
        orphan_captions=[p for p in files if p.name.lower().endswith(ext) and p.suffix.lower() not in IMAGE_EXTENSIONS
                         and p.name[:len(p.name) - len(ext)] not in stems],
        shared_captions=[p for p in images if stems[p.stem] > 1])
    return [(p, None) for p in images], found


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


class _Masks:
    """Each image's mask in its subset's conditioning_data_dir (same name, any image extension). As sd-scripts, every
    image needs one, and a mask no image uses is named too (a misspelt name would train that image unmasked)."""

    def __init__(self):
        self.folders: dict[Path, dict[str, Path]] = {}
        self.claimed: set[Path] = set()

    def of(self, subset: SubsetSpec, images: list[Path]) -> dict[Path, Path]:
        if subset.conditioning_data_dir is None:
            return {}
        folder = subset.conditioning_data_dir
        by_stem = {p.stem: p for p in sorted(folder.iterdir(), key=lambda p: p.name) if is_image_file(p)}
        self.folders[folder] = by_stem
        self.claimed.update(by_stem[image.stem] for image in images if image.stem in by_stem)
        missing = [image.name for image in images if image.stem not in by_stem]
        if missing:
            raise UserError(f"conditioning_data_dir {folder}: no mask for {len(missing)} image(s) of "
                            f"{subset.image_dir}: {_listed(missing)} (a mask has its image's name, any image "
                            "extension)")
        return {image: by_stem[image.stem] for image in images}

    def check_unused(self) -> None:
        extra = sorted(str(p) for masks in self.folders.values() for p in masks.values() if p not in self.claimed)
        if extra:
            raise UserError(f"{len(extra)} mask(s) in conditioning_data_dir without a training image of the same "
                            f"name: {_listed(extra)}")


@dataclass
class _Found:
    path: Path
    subset: SubsetSpec
    dataset_index: int
    lines: list[str] | None  # a metadata entry's caption lines (None: look for a caption file)
    mask: Path | None


# ---------------------------------------------------------------- reading

def _reason(exc: Exception, path: Path) -> str:
    return str(exc).replace(f"'{path}'", path.name).replace(str(path), path.name)


def _caption_lines(found: _Found) -> tuple[bool, list[str]]:
    """(has a caption file, its lines); OSError when the file is there but cannot be read."""
    if found.lines is not None:
        return True, found.lines
    path = caption_path(found.path, found.subset)
    if not path.is_file():
        return False, []
    return True, read_caption_lines(path)


def _hold_out(items: list[ImageItem], datasets: list[DatasetSpec], seed: int | None) -> bool:
    """sd-scripts' validation_split: each training subset's images shuffled by validation_seed (else the run's seed),
    the last round(n x split) held out for validation. Returns False when neither seed is known (drawn with 0: the
    counts are right, the images one draw of many)."""
    exact = True
    for spec in datasets:
        if not spec.validation_split:
            continue
        draw_seed = spec.validation_seed if spec.validation_seed is not None else seed
        if draw_seed is None:
            exact, draw_seed = False, 0
        for subset in spec.subsets:
            if subset.is_reg:
                continue
            mine = [it for it in items if it.subset is subset]
            order = list(range(len(mine)))
            random.Random(draw_seed).shuffle(order)
            for k in order[len(mine) - round(len(mine) * spec.validation_split):]:
                mine[k].held_out = True
    return exact


def scan_datasets(datasets: list[DatasetSpec], seed: int | None,
                  progress: Callable[[list], Iterable] | None = None,
                  on_image: Callable[[ImageItem, Image.Image], None] | None = None) -> DatasetScan:
    """Check the settings, find every subset's files, read each image (as training reads it) and its caption, draw
    the held-out images with ``seed`` (the run's). ``progress`` wraps the list of image files read; ``on_image``
    sees each readable image with its decoded pixels (the dataset check's own findings)."""
    for spec in datasets:
        check_dataset_settings(spec)
    scan = DatasetScan(datasets)
    masks = _Masks()
    found: list[_Found] = []
    for d_index, subset in scan.subsets:
        entries, files = subset_files(subset)
        scan.files.append(files)
        mask_of = masks.of(subset, [path for path, _ in entries])
        found += [_Found(path, subset, d_index, lines, mask_of.get(path)) for path, lines in entries]
    masks.check_unused()
    bucket_sets = [bucket_resolutions(spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso,
                                      spec.bucket_reso_steps) if spec.enable_bucket else [] for spec in datasets]
    for f in (progress(found) if progress is not None else found):
        try:
            rgb = load_rgb(f.path)
            has_file, lines = _caption_lines(f)
        except UnreadableImage as exc:
            scan.skipped.append(SkippedImage(f.path, _reason(exc, f.path), f.subset))
            continue
        except OSError as exc:  # the caption file is there but cannot be read (permissions)
            reason = _reason(exc, caption_path(f.path, f.subset))
            scan.skipped.append(SkippedImage(f.path, f"its caption file could not be read: {exc.__class__.__name__}: "
                                                     f"{reason}", f.subset))
            continue
        spec, subset = datasets[f.dataset_index], f.subset
        caption = next((line for line in lines if line.strip()), None) or subset.class_tokens or ""
        bucket = choose_bucket(rgb.size, spec.resolution, spec.enable_bucket, bucket_sets[f.dataset_index],
                               spec.bucket_reso_steps, spec.bucket_no_upscale)
        item = ImageItem(f.path, caption, subset, f.dataset_index, bucket, has_file, rgb.size,
                         lines if subset.enable_wildcard and len(lines) > 1 else None, f.mask, lines=lines)
        scan.items.append(item)
        if on_image is not None:
            on_image(item, rgb)
    scan.hold_out_exact = _hold_out(scan.items, datasets, seed)
    return scan
