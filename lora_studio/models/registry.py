"""The model families LoRA Studio trains, and which one a model file or folder is (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .anima import Anima
from .family import ModelFamily
from .flux import Chroma, FluxFamily, FluxSchnell
from .lumina import LuminaFamily
from .sd1 import SD1
from .sd2 import SD2
from .sd3 import SD3Family, SD35Large, SD35Medium
from .sdxl import SDXL

# Asked in this order: a family's rule may assume the ones before it did not match.
FAMILIES: tuple[ModelFamily, ...] = (Chroma(), FluxFamily(), FluxSchnell(), Anima(), LuminaFamily(),
                                     SD3Family(), SD35Medium(), SD35Large(), SDXL(), SD2(), SD1())
BY_NAME = {f.name: f for f in FAMILIES}
# Families people bring that LoRA Studio does not train (yet): a weight name only they have, and their pipelines.
NOT_TRAINED = {"Stable Cascade": ("down_blocks.0.0.channelwise", "StableCascadeDecoderPipeline"),
               "Z-Image": ("layers.0.adaLN_modulation.0.", "ZImagePipeline"),
               "Flux.2": ("single_stream_modulation.lin.", "Flux2Pipeline"),
               "Qwen-Image": ("img_mod.1.", "QwenImagePipeline")}


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
    model_index = _json_file(index_file, setting) if index_file.is_file() else {}
    other = not_trained_family(pipeline=model_index.get("_class_name", ""))
    if other:
        raise UserError(_not_trained(folder, other))
    unet_cfg_file = next((folder / part / "config.json" for part in ("unet", "transformer")
                          if (folder / part / "config.json").is_file()), None)
    if unet_cfg_file is None:
        raise UserError(f"{setting}: {folder} is not a diffusers model folder "
                        "(no unet/config.json or transformer/config.json). Give a .safetensors checkpoint or a "
                        "diffusers folder.")
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
    return (f"{source} is a {other} model, which LoRA Studio does not train yet (it trains "
            f"{', '.join(f.title for f in reversed(FAMILIES))}); choose one of those base models")


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # torch.load files: they can run code when opened
MODEL_SETTING = "pretrained_model_name_or_path"


def is_pickle_file(path: Path) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_refusal(path: Path, setting: str) -> str:
    return (f"{setting}: {Path(path).name} is a pickle file ({Path(path).suffix}), which can run code when opened. "
            "Use a .safetensors version of the model, or set allow_pickle = true if you trust this file (it is then "
            "read as plain data only).")


def identify(model: str | Path, v2: bool, allow_pickle: bool = False, own_vae: bool = False) -> ModelFamily | None:
    """The family of a model file or folder, read as far as it can be without torch: a folder's configs and the
    headers of its weights, a single file's header (its type, its tensors' names, that its data is all there) and
    that it holds a U-Net, text encoder(s) and a VAE (not needed with ``own_vae``: the config's own VAE file). A
    UserError says what is wrong, before a run starts. None for a pickle file allowed by ``allow_pickle`` (only the
    engine opens those)."""
    from ..io_utils import SafetensorsFormatError, read_safetensors_header

    path = Path(model).expanduser()
    if not path.exists():
        raise UserError(f"{MODEL_SETTING}: not found: {path}")
    if path.is_dir():
        family, model_index = family_of_diffusers_folder(path)
        family = checked_family(family, str(path), v2)
        _check_folder_parts(path, model_index, own_vae)
        return family
    if is_pickle_file(path):
        if not allow_pickle:
            raise UserError(pickle_refusal(path, MODEL_SETTING))
        return None
    try:
        header = read_safetensors_header(path, MODEL_SETTING)
    except SafetensorsFormatError as exc:
        raise UserError(f"{exc}. Give a .safetensors checkpoint or a diffusers model folder") from None
    keys = list(header.tensors)
    family = checked_family(family_of_checkpoint(keys), str(path), v2, keys)
    counts = family.parameter_counts({k: v["shape"] for k, v in header.tensors.items()})
    parts = ("unet",) if family.separate_files else ("unet", "text_encoders", *(() if own_vae else ("vae",)))
    missing = [part for part in parts if not counts[part]]
    if missing:
        names = {"unet": family.denoiser_title, "text_encoders": "text encoder", "vae": "VAE"}
        raise UserError(f"{MODEL_SETTING}: {path} is an incomplete {family.title} checkpoint (no "
                        f"{' or '.join(names[m] for m in missing)} weights); is the download complete?"
                        + (" A checkpoint without its VAE trains with a VAE file given in vae" if missing == ["vae"]
                           else ""))
    return family


def _check_folder_parts(folder: Path, model_index: dict, own_vae: bool) -> None:
    """Each part a diffusers model folder names (U-Net, text encoders, VAE) has its config and complete weights."""
    from ..io_utils import read_safetensors_header

    known = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")
    parts = [name for name, value in model_index.items() if isinstance(value, list) and
             name in known and not (own_vae and name == "vae")]
    for part in parts or ["unet"]:
        where = folder / part
        weights = sorted(p for p in where.glob("*") if p.suffix in (".safetensors", ".bin"))
        if not (where / "config.json").is_file() or not weights:
            raise UserError(f"{MODEL_SETTING}: the diffusers folder {folder} is incomplete: {part}/ has no "
                            f"{'config.json' if not (where / 'config.json').is_file() else 'weights file'}")
        for file in weights:
            if file.suffix == ".safetensors":
                read_safetensors_header(file, MODEL_SETTING)
