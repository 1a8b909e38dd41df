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
# Families people bring that LoRA Studio does not train (yet): a weight name only they have, and their pipelines.
NOT_TRAINED = {"Flux": ("double_blocks.", "FluxPipeline"), "SD3 / SD3.5": ("joint_blocks.", "StableDiffusion3Pipeline"),
               "Stable Cascade": ("down_blocks.0.0.channelwise", "StableCascadeDecoderPipeline")}


def not_trained_family(keys=(), pipeline: str = "") -> str | None:
    """The name of a known family LoRA Studio does not train, from weight names or a diffusers pipeline class."""
    for name, (weight, pipeline_class) in NOT_TRAINED.items():
        if pipeline == pipeline_class or any(weight in k for k in keys):
            return name
    return None


def family_of_checkpoint(keys) -> ModelFamily | None:
    """The family of a single-file checkpoint from its tensor names, or None."""
    keys = set(keys)
    return next((f for f in FAMILIES if f.matches_checkpoint(keys)), None)


def _json_file(path: Path, setting: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{setting}: cannot read {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{setting}: {path} is not a JSON object")
    return data


def family_of_diffusers_folder(folder: Path, setting: str = "pretrained_model_name_or_path"
                               ) -> tuple[ModelFamily, dict]:
    """(family, model_index) of a diffusers model folder (``setting``: the option that named it, for the errors)."""
    index_file = folder / "model_index.json"
    unet_cfg_file = folder / "unet" / "config.json"
    model_index = _json_file(index_file, setting) if index_file.is_file() else {}
    other = not_trained_family(pipeline=model_index.get("_class_name", ""))
    if other:
        raise UserError(_not_trained(folder, other))
    if not unet_cfg_file.is_file():
        raise UserError(f"{setting}: {folder} is not a diffusers model folder "
                        "(no unet/config.json). Give a .safetensors checkpoint or a diffusers folder.")
    unet_config = _json_file(unet_cfg_file, setting)
    return next(f for f in FAMILIES if f.matches_diffusers(model_index, unet_config)), model_index


def checked_family(family: ModelFamily | None, source: str, v2: bool, keys=()) -> ModelFamily:
    """The family to train, checking what the model is against what the config says."""
    other = not_trained_family(keys)
    if other:
        raise UserError(_not_trained(source, other))
    if family is None:
        raise UserError(f"{source} does not look like a Stable Diffusion checkpoint (no UNet/text-encoder weights "
                        "with known names)")
    family.check_flags(v2, source)
    return family


def _not_trained(source, other: str) -> str:
    return (f"{source} is a {other} model, which LoRA Studio does not train (it trains SD1.x, SD2.x and SDXL); "
            "choose an SD1.5, SD2 or SDXL base model")


def identify(model: str | Path, v2: bool) -> ModelFamily | None:
    """The family of a model file or folder from its names alone (no weights read, no torch), checked against the
    config's v2; a UserError says what is wrong. None for a file whose header cannot be read or a pickle file (the
    engine opens those, and says what is wrong with them)."""
    from ..io_utils import safetensors_shapes

    path = Path(model).expanduser()
    if path.is_dir():
        return checked_family(family_of_diffusers_folder(path)[0], str(path), v2)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        keys = list(safetensors_shapes(path))
    except (OSError, ValueError):
        return None
    return checked_family(family_of_checkpoint(keys), str(path), v2, keys)
