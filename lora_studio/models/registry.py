"""The model families LoRA Studio trains, and which one a model file or folder is (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .family import ModelFamily
from .sd1 import SD1
from .sd2 import SD2
from .sdxl import SDXL

# Asked in this order: a family's rule may assume the ones before it did not match.
FAMILIES: tuple[ModelFamily, ...] = (SDXL(), SD2(), SD1())
BY_NAME = {f.name: f for f in FAMILIES}


def family_of_checkpoint(keys) -> ModelFamily | None:
    """The family of a single-file checkpoint from its tensor names, or None."""
    keys = set(keys)
    return next((f for f in FAMILIES if f.matches_checkpoint(keys)), None)


def family_of_diffusers_folder(folder: Path) -> tuple[ModelFamily, dict]:
    """(family, model_index) of a diffusers model folder."""
    index_file = folder / "model_index.json"
    unet_cfg_file = folder / "unet" / "config.json"
    if not unet_cfg_file.is_file():
        raise UserError(f"pretrained_model_name_or_path: {folder} is not a diffusers model folder "
                        "(no unet/config.json). Give a .safetensors checkpoint or a diffusers folder.")
    model_index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    unet_config = json.loads(unet_cfg_file.read_text())
    return next(f for f in FAMILIES if f.matches_diffusers(model_index, unet_config)), model_index


def checked_family(family: ModelFamily | None, source: str, v2: bool) -> ModelFamily:
    """The family to train, checking what the model is against what the config says."""
    if family is None:
        raise UserError(f"{source} does not look like a Stable Diffusion checkpoint (no UNet/text-encoder weights "
                        "with known names)")
    family.check_flags(v2, source)
    return family
