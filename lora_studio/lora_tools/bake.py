"""``lora-studio lora merge --model BASE``: one or more LoRA files, each at a ratio, baked into a checkpoint.

The base model is loaded, every LoRA's change applied at its ratio as AUTOMATIC1111 and ComfyUI apply it
(``lora_delta``: LoRA, LoCon, LoHa, LoKr, (IA)3, full, DoRA), and the result written as a single-file
``.safetensors`` checkpoint in the layout A1111 and ComfyUI open (SD1.x, SD2.x, SDXL). From a single-file base,
every tensor the LoRAs do not change is copied from it as it is (the same bytes, whatever else the file holds).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save as serialize

from ..errors import UserError
from ..io_utils import atomic_write_bytes
from ..lora_delta import LoRAStack, read_lora_file
from ..models.loading import load_components, read_safetensors
from ..models.single_file import single_file_state_dict
from ..saving import SAVE_DTYPES, to_metadata
from .common import check_output, history_entry
from ..tool_progress import phase


def _held_by_model(key: str, converted: dict[str, torch.Tensor], sd2_last: int | None) -> bool:
    """SD2's OpenCLIP encoder has a last layer the model never uses (not loaded): its weights stay the base's."""
    if sd2_last is None:
        return key in converted
    return key in converted and not re.search(rf"transformer\.resblocks\.{sd2_last}\.", key)


def bake(model: str | Path, loras: list[str | Path], ratios: list[float], out: str | Path,
         save_precision: str | None = None, v2: bool = False) -> Path:
    if len(ratios) not in (0, len(loras)):
        raise UserError(f"give one --ratio per --lora ({len(loras)} files, {len(ratios)} ratios)")
    ratios = list(ratios) or [1.0] * len(loras)
    model = Path(model).expanduser()
    paths = [Path(p).expanduser() for p in loras]
    out = check_output(out, [model, *paths])
    files = [read_lora_file(p) for p in paths]
    phase("loading the base model")
    components = load_components(str(model), None, v2, setting="--model")
    family = components.family
    with LoRAStack(components, files) as stack:
        phase(f"applying {len(files)} LoRA file(s)")
        stack.apply(ratios)
        te = components.text_encoders if len(components.text_encoders) > 1 else components.text_encoders[0]
        converted = single_file_state_dict(components.denoiser, components.vae, te)
    if model.is_file():
        base = read_safetensors(model, "--model")
        resblocks = [int(m[1]) for k in base if (m := re.match(r"cond_stage_model\.model\.transformer\.resblocks\."
                                                                r"(\d+)\.", k))]
        sd2_last = max(resblocks) if resblocks else None
        dtype = SAVE_DTYPES[save_precision] if save_precision else None
        merged = {}
        for key, tensor in base.items():
            if _held_by_model(key, converted, sd2_last):
                merged[key] = converted[key].to(dtype or tensor.dtype)
            else:
                merged[key] = tensor if dtype is None or not tensor.is_floating_point() else tensor.to(dtype)
    else:
        if family.base_model_version == "sd_v2":
            raise UserError("an SD2.x base given as a diffusers folder cannot be written as a single file here (its "
                            "text encoder's unused last layer is missing); give the single-file checkpoint")
        dtype = SAVE_DTYPES[save_precision or "fp16"]
        merged = {k: v.to(dtype) if v.is_floating_point() else v for k, v in converted.items()}
    phase("writing")
    merged = {k: v.contiguous() for k, v in merged.items()}
    entry = history_entry("merge into checkpoint", [model, *paths], {"ratios": ratios,
                                                                     "save_precision": save_precision})
    metadata = to_metadata({"lora_studio_history": [entry],
                            "modelspec.title": out.stem, "modelspec.architecture": family.architecture(False)
                            .removesuffix("/lora")})
    atomic_write_bytes(out, serialize(merged, metadata=metadata))
    return out
