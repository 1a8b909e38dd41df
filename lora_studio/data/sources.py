"""Where the training images come from: the ``N_name`` folder convention or an sd-scripts dataset TOML.

Both end as a list of ``DatasetSpec`` (batch size, resolution, buckets) holding ``SubsetSpec`` (one image folder with
its repeats, class tokens and caption options). Subset keys inherit from their dataset, which inherits from
``[general]``, then from the training config, as in sd-scripts.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import Config, read_toml
from ..errors import ConfigError, UserError
from .images import is_image_file

log = logging.getLogger(__name__)


@dataclass
class SubsetSpec:
    image_dir: Path | None  # None: a metadata_file whose image names are absolute paths
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_separator: str = ","
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_dropout_every_n_epochs: int = 0
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    color_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False  # the image's transparency is its loss mask
    conditioning_data_dir: Path | None = None  # mask images named like the training images (masked_loss)
    metadata_file: Path | None = None  # sd-scripts' fine-tuning JSON: the images and their captions

    @property
    def name(self) -> str:
        """How sd-scripts' metadata names the subset (ss_dataset_dirs, ss_tag_frequency): its metadata file's name,
        or its image folder's."""
        return (self.metadata_file or self.image_dir).name


@dataclass
class DatasetSpec:
    resolution: tuple[int, int]
    batch_size: int
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    subsets: list[SubsetSpec] = field(default_factory=list)
    validation_split: float = 0.0  # the share of each subset's images held out to measure the validation loss
    validation_seed: int | None = None  # which ones (None: the run's seed)


SUBSET_KEYS = {f.name for f in fields(SubsetSpec)}
# sd-scripts' caption options: top-level settings that are also subset keys of a dataset TOML
CAPTION_SETTINGS = ("caption_prefix", "caption_suffix", "caption_separator", "keep_tokens_separator",
                    "secondary_separator", "enable_wildcard", "caption_dropout_every_n_epochs", "token_warmup_min",
                    "token_warmup_step", "color_aug", "random_crop", "alpha_mask")
# subset keys that name a file or folder (relative ones are found as image_dir is)
PATH_KEYS = {"image_dir": True, "conditioning_data_dir": True, "metadata_file": False}  # key -> is a folder
DATASET_KEYS = {"resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps", "bucket_no_upscale", "validation_split", "validation_seed"}
# sd-scripts dataset keys we do not implement: accepted at their default, an error otherwise.
UNSUPPORTED_DATASET_KEYS = {"cache_info": False, "face_crop_aug_range": None, "network_multiplier": 1.0,
                            "resize_interpolation": None,
                            "custom_attributes": None}

_FOLDER_RE = re.compile(r"^(\d+)_(.*)$")


def parse_folder_name(name: str) -> tuple[int, str | None] | None:
    """The kohya folder name ``<repeats>_<class tokens>`` ("10_emi person" -> (10, "emi person")), or None when the
    name has no number prefix."""
    match = _FOLDER_RE.match(name)
    if not match:
        return None
    return int(match.group(1)), match.group(2).strip() or None


def parse_resolution(text: str) -> tuple[int, int]:
    parts = [int(p) for p in str(text).split(",")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _subset_defaults(cfg: Config) -> dict[str, Any]:
    return {"caption_extension": cfg.caption_extension, "shuffle_caption": cfg.shuffle_caption,
            "keep_tokens": cfg.keep_tokens, "caption_dropout_rate": cfg.caption_dropout_rate,
            "caption_tag_dropout_rate": cfg.caption_tag_dropout_rate, "flip_aug": cfg.flip_aug,
            **{name: getattr(cfg, name) for name in CAPTION_SETTINGS}}


def _dataset_defaults(cfg: Config) -> dict[str, Any]:
    return {"resolution": cfg.resolution, "batch_size": cfg.train_batch_size, "enable_bucket": cfg.enable_bucket,
            "min_bucket_reso": cfg.min_bucket_reso, "max_bucket_reso": cfg.max_bucket_reso,
            "bucket_reso_steps": cfg.bucket_reso_steps, "bucket_no_upscale": cfg.bucket_no_upscale,
            "validation_split": cfg.validation_split, "validation_seed": cfg.validation_seed}


def _make_dataset(values: dict[str, Any], subsets: list[SubsetSpec]) -> DatasetSpec:
    res = values["resolution"]
    resolution = (int(res), int(res)) if isinstance(res, int) else (
        (int(res[0]), int(res[1])) if isinstance(res, (list, tuple)) else parse_resolution(res))
    return DatasetSpec(resolution=resolution, batch_size=int(values["batch_size"]),
                       enable_bucket=bool(values["enable_bucket"]), min_bucket_reso=int(values["min_bucket_reso"]),
                       max_bucket_reso=int(values["max_bucket_reso"]),
                       bucket_reso_steps=int(values["bucket_reso_steps"]),
                       bucket_no_upscale=bool(values["bucket_no_upscale"]), subsets=subsets,
                       validation_split=float(values["validation_split"] or 0.0),
                       validation_seed=values["validation_seed"])


def _folder_example(root: Path) -> str:
    return (f"Put each set of images in a subfolder of {root} named <repeats>_<class tokens>, for example:\n"
            f"    {root / '10_emi person'}/001.png (+ 001.txt caption)\n"
            f"Then set train_data_dir = \"{root}\" (the parent folder, not the image folder itself).")


def subsets_from_folders(root: str | Path, defaults: dict[str, Any], is_reg: bool, setting: str,
                         masks: str | Path | None = None) -> list[SubsetSpec]:
    """The kohya convention: every ``<N>_<class tokens>`` subfolder of ``root`` is a subset repeated N times.
    ``masks`` (conditioning_data_dir) holds each subset's mask images in a subfolder of the same name, or all of
    them directly."""
    root = Path(root)
    if masks is not None and not Path(masks).is_dir():
        raise UserError(f"conditioning_data_dir: folder not found: {masks}")
    if not root.exists():
        raise UserError(f"{setting}: folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{setting}: {root} is a file, not a folder")
    subsets, skipped = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir():
            continue
        parsed = parse_folder_name(child.name)
        if parsed is None:
            skipped.append(child.name)
            continue
        repeats, tokens = parsed
        if repeats < 1:
            raise UserError(f"{setting}: folder '{child.name}' has 0 repeats; name it e.g. 10_{tokens or 'name'}")
        mask_dir = None if masks is None else (
            Path(masks) / child.name if (Path(masks) / child.name).is_dir() else Path(masks))
        subsets.append(SubsetSpec(image_dir=child, num_repeats=repeats, class_tokens=tokens, is_reg=is_reg,
                                  conditioning_data_dir=mask_dir, **defaults))
    if not subsets:
        images_here = [p.name for p in root.iterdir() if is_image_file(p)]
        hint = (f" It holds {len(images_here)} image(s) directly: move them into a subfolder." if images_here else "")
        other = f" Subfolders without a number prefix: {', '.join(skipped)}." if skipped else ""
        raise UserError(f"{setting}: no '<repeats>_<name>' subfolder in {root}.{hint}{other}\n{_folder_example(root)}")
    return subsets


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, path: Path) -> None:
    for key, value in table.items():
        if key in allowed:
            continue
        if key in UNSUPPORTED_DATASET_KEYS:
            if value in (UNSUPPORTED_DATASET_KEYS[key], None, False, "", 0):
                continue
            raise ConfigError(f"{path}: '{key}' in {where} is not supported by LoRA Studio yet (value {value!r})")
        close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{path}: unknown key '{key}' in {where}.{hint}")


def _find_path(path: Path, toml: Path, where: str, key: str) -> Path:
    """A relative image_dir (or mask folder, metadata file) is relative to the working folder, as sd-scripts reads
    it; beside the dataset TOML is looked at too (where people expect it), and one found in both places is named in
    a warning."""
    exists = Path.is_dir if PATH_KEYS[key] else Path.is_file
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / path, toml.parent / path]))
    found = [c for c in candidates if exists(c)]
    if not found:
        tried = " or ".join(str(c) for c in candidates)
        raise UserError(f"{toml}: {where}: {key} not found: {tried}")
    if len(found) > 1 and found[0].resolve() != found[1].resolve():
        log.warning("%s: %s: %s %s exists both in the working folder (%s, used, as sd-scripts does) and beside "
                    "the dataset TOML (%s); write an absolute path to choose", toml, where, key, path, found[0],
                    found[1])
    return found[0]


def datasets_from_toml(path: str | Path, cfg: Config) -> list[DatasetSpec]:
    path = Path(path)
    data = read_toml(path)
    _check_keys({k: v for k, v in data.items()}, {"general", "datasets"}, "the top level", path)
    general = data.get("general", {})
    _check_keys(general, SUBSET_KEYS | DATASET_KEYS, "[general]", path)
    raw_datasets = data.get("datasets")
    if isinstance(raw_datasets, dict):  # [[datasets.subsets]] with no [[datasets]] line above it
        raise ConfigError(f"{path}: [[datasets.subsets]] must follow a [[datasets]] line (each dataset starts with "
                          "[[datasets]], then its subsets)")
    if not raw_datasets:
        raise ConfigError(f"{path}: no [[datasets]] table; add one with at least one [[datasets.subsets]]")
    datasets = []
    for d_index, raw in enumerate(raw_datasets, 1):
        where = f"[[datasets]] #{d_index}"
        _check_keys(raw, SUBSET_KEYS | DATASET_KEYS | {"subsets"}, where, path)
        d_values = {**_dataset_defaults(cfg), **{k: v for k, v in general.items() if k in DATASET_KEYS},
                    **{k: v for k, v in raw.items() if k in DATASET_KEYS}}
        s_inherited = {**_subset_defaults(cfg), **{k: v for k, v in general.items() if k in SUBSET_KEYS},
                       **{k: v for k, v in raw.items() if k in SUBSET_KEYS}}
        subsets = []
        for s_index, raw_subset in enumerate(raw.get("subsets", []), 1):
            s_where = f"{where} subset #{s_index}"
            _check_keys(raw_subset, SUBSET_KEYS, s_where, path)
            values = {**s_inherited, **raw_subset}
            if not values.get("image_dir") and not values.get("metadata_file"):
                raise ConfigError(f"{path}: {s_where} needs image_dir (or a metadata_file)")
            for key in PATH_KEYS:
                if values.get(key):
                    values[key] = _find_path(Path(values[key]), path, s_where, key)
            values.setdefault("image_dir", None)
            subsets.append(SubsetSpec(**values))
        if not subsets:
            raise ConfigError(f"{path}: {where} has no [[datasets.subsets]]")
        datasets.append(_make_dataset(d_values, subsets))
    return datasets


def datasets_from_config(cfg: Config) -> list[DatasetSpec]:
    """The datasets a training config describes (dataset_config wins over the image folders, as in sd-scripts)."""
    datasets = _described_datasets(cfg)
    _check_masks(datasets, cfg.masked_loss)
    return datasets


def _check_masks(datasets: list[DatasetSpec], masked_loss: bool) -> None:
    """As sd-scripts: mask images count only with masked_loss; alpha_mask masks the loss with or without it."""
    subsets = [s for d in datasets for s in d.subsets]
    with_files = [s for s in subsets if s.conditioning_data_dir is not None]
    if with_files and not masked_loss:
        log.warning("conditioning_data_dir is set but masked_loss is off: the mask images are not used (turn on "
                    "masked_loss to train with them)")
        for s in with_files:
            s.conditioning_data_dir = None
    if masked_loss and not with_files and not any(s.alpha_mask for s in subsets):
        log.warning("masked_loss is on but no image has a mask: set conditioning_data_dir (a folder of mask "
                    "images) or alpha_mask (the images' transparency); the whole image trains")


def _described_datasets(cfg: Config) -> list[DatasetSpec]:
    if cfg.dataset_config:
        if cfg.conditioning_data_dir or cfg.in_json:
            log.warning("conditioning_data_dir and in_json are set per subset in a dataset config (as sd-scripts "
                        "reads it: conditioning_data_dir, metadata_file); the top-level ones are not used with %s",
                        cfg.dataset_config)
        return datasets_from_toml(cfg.dataset_config, cfg)
    if not cfg.train_data_dir:
        raise ConfigError("set train_data_dir (the Image folder) or dataset_config")
    if cfg.in_json:  # sd-scripts' fine-tuning method: the metadata file names the images and holds their captions
        if not Path(cfg.in_json).is_file():
            raise UserError(f"in_json: metadata file not found: {cfg.in_json}")
        subsets = [SubsetSpec(image_dir=Path(cfg.train_data_dir), num_repeats=cfg.dataset_repeats,
                              metadata_file=Path(cfg.in_json), **_subset_defaults(cfg))]
    else:
        subsets = subsets_from_folders(cfg.train_data_dir, _subset_defaults(cfg), False, "train_data_dir",
                                       cfg.conditioning_data_dir)
    if cfg.reg_data_dir:
        subsets += subsets_from_folders(cfg.reg_data_dir, _subset_defaults(cfg), True, "reg_data_dir")
    return [_make_dataset(_dataset_defaults(cfg), subsets)]
