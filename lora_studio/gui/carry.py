"""What the Tools and Dataset tabs take from the LoRA tab's form and the latest run when they are opened: the form's
model and folders, its dataset settings (resolution, buckets, batch size, caption extension, token length) and the
latest training run's best (else final) file. A field the user already filled is left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.schema import BY_NAME
from ..config.values import parse_value
from ..data.images import is_image_file
from ..data.sources import parse_folder_name
from ..errors import ConfigError
from ..jobs.runs import RunManager
from . import views
from .runs_tab import default_file
from .widgets import from_widget

# the LoRA tab's settings the other tabs read, in this order (the inputs of their "opened" events)
FORM_KEYS = ("pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "resolution",
             "caption_extension", "max_token_length", "train_batch_size", "enable_bucket", "min_bucket_reso",
             "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")
# the folders the picker offers as places (label, setting)
FORM_PLACES = (("Model (LoRA tab)", "pretrained_model_name_or_path"), ("Image folder (LoRA tab)", "train_data_dir"),
               ("Regularisation folder (LoRA tab)", "reg_data_dir"), ("Output folder (LoRA tab)", "output_dir"))


def form_settings(values: list | tuple) -> dict[str, Any]:
    """The form's widget values (``FORM_KEYS`` order) as setting values; an empty or bad one is its default."""
    out = {}
    for name, value in zip(FORM_KEYS, values):
        setting = BY_NAME[name]
        raw = from_widget(setting, value)
        try:
            out[name] = setting.default if raw is None else parse_value(setting, raw)
        except ConfigError:
            out[name] = setting.default
    return out


def is_empty(value: Any) -> bool:
    return not str(value or "").strip()


def kohya_subfolders(folder: str | Path) -> list[Path]:
    """The ``N_name`` subfolders of a Kohya training folder (none: not one, or not a folder)."""
    try:
        return sorted(c for c in Path(folder).expanduser().iterdir() if c.is_dir() and parse_folder_name(c.name))
    except OSError:
        return []


def has_images(folder: str | Path) -> bool:
    try:
        return any(is_image_file(p) for p in Path(folder).expanduser().iterdir())
    except OSError:
        return False


def image_folder(train_dir: str) -> str:
    """The folder of images a per-folder tool (tagging, captioning) starts on: the training folder itself when its
    images lie in it, its only ``N_name`` subfolder, else the training folder (with Include subfolders)."""
    train_dir = (train_dir or "").strip()
    if not train_dir or has_images(train_dir):
        return train_dir
    subfolders = kohya_subfolders(train_dir)
    return str(subfolders[0]) if len(subfolders) == 1 else train_dir


def latest_file(manager: RunManager) -> str:
    """The latest finished training run's best file (the lowest validation loss), else its final one, else its last
    saved; empty when there is none."""
    rec = next((r for r in manager.history() if r.kind == "train" and r.started), None)
    return (default_file(views.saved_choices(manager.live(rec))) if rec else None) or ""
