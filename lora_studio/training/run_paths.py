"""Every path a training run reads or writes, checked against the run's confinement before it reads or writes
anything: the settings' paths, the dataset's folders and files (from a dataset TOML, an ``in_json`` or a subset's
metadata file), the caches written beside the images, the output files and the state it resumes from."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config
from ..config.schema import SETTINGS
from ..confinement import Confinement
from ..data.images import CACHE_FOLDER
from ..data.metadata_file import metadata_captions
from ..data.sources import datasets_from_config
from ..errors import UserError
from .outputs import best_file, latent_cache_fallback, latest_state, output_paths

# keys of a log_tracker_config table that name a folder the tracker writes to
_TRACKER_FOLDER_KEYS = {"dir", "logdir", "log_dir", "logging_dir", "save_dir", "root_dir"}


def check_run_paths(cfg: Config, confinement: Confinement) -> None:
    """Raise a UserError naming the setting and the path for the first path outside ``confinement``; nothing is
    read but folder listings and the small files that name other paths (the dataset TOML, metadata files, the
    tracker config), each checked before it is read."""
    if not confinement.confined:
        return
    for setting in SETTINGS:
        value = getattr(cfg, setting.name)
        if setting.kind != "path" or not value or (setting.name == "resume" and (
                str(value).lower() == "latest" or cfg.resume_from_huggingface)):  # a state on the Hub, not a path
            continue
        confinement.check(value, setting.name)
        if setting.name in ("pretrained_model_name_or_path", "vae", "resume"):
            _check_tree(Path(value).expanduser(), setting.name, confinement)
    _check_outputs(cfg, confinement)
    if cfg.resume and str(cfg.resume).lower() == "latest":
        state = latest_state(cfg.output_dir, cfg.output_name)
        if state is not None:
            _check_tree(state, "resume", confinement)
    if cfg.log_tracker_config:
        _check_tracker_config(cfg.log_tracker_config, confinement)
    _check_dataset(cfg, confinement)


def _check_tree(root: Path, setting: str, confinement: Confinement) -> None:
    """A model folder or a state folder: every file and folder in it, links not followed into."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            confinement.check(Path(folder) / name, f"{setting} ({root})")


def _check_outputs(cfg: Config, confinement: Confinement) -> None:
    out = Path(cfg.output_dir).expanduser()
    for path in [*output_paths(cfg).values(), best_file(cfg)]:
        confinement.check(path, "output_dir")
    confinement.check_folder_entries(latent_cache_fallback(cfg), "output_dir")  # latents of read-only image folders
    if out.is_dir():  # epoch, step and state files of an earlier run: a link among them must not be written through
        for entry in out.iterdir():
            if entry.name.startswith(cfg.output_name):
                confinement.check(entry, "output_dir")


def _check_tracker_config(path: str, confinement: Confinement) -> None:
    import tomllib

    try:
        with open(path, "rb") as fh:
            tables = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return  # the run's own reading says what is wrong with it
    for tracker, table in tables.items():
        for key, value in (table.items() if isinstance(table, dict) else ()):
            if key in _TRACKER_FOLDER_KEYS and isinstance(value, str):
                confinement.check(value, f"log_tracker_config [{tracker}] {key}")


def _check_dataset(cfg: Config, confinement: Confinement) -> None:
    """The dataset's folders (each entry in them too: a linked image, caption or cache leads outside), its metadata
    files and the images they name, and the cache folders beside those images."""
    try:
        datasets = datasets_from_config(cfg)
    except UserError:
        return  # a dataset that cannot be described stops the run when it is read, before any image is opened
    for dataset in datasets:
        for subset in dataset.subsets:
            where = f"dataset {subset.name}"
            if subset.metadata_file is not None:
                confinement.check(subset.metadata_file, f"{where}: metadata_file")
            if subset.image_dir is not None:
                confinement.check_folder_entries(subset.image_dir, f"{where}: image_dir")
                confinement.check_folder_entries(subset.image_dir / CACHE_FOLDER, f"{where}: cache folder")
            if subset.conditioning_data_dir is not None:
                confinement.check_folder_entries(subset.conditioning_data_dir, f"{where}: conditioning_data_dir")
            if subset.metadata_file is not None:
                _check_metadata_images(subset, where, confinement)


def _check_metadata_images(subset, where: str, confinement: Confinement) -> None:
    try:
        found = metadata_captions(subset.metadata_file, subset.image_dir, subset.caption_separator,
                                  subset.enable_wildcard)
    except UserError:
        return
    for image, _ in found:
        confinement.check(image, f"{where}: an image {subset.metadata_file.name} names")
        confinement.check_folder_entries(image.parent / CACHE_FOLDER, f"{where}: cache folder")
