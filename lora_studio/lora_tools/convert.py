"""``lora-studio lora convert``: kohya format <-> the diffusers / peft format, for SD1.x, SD2.x and SDXL.

kohya: ``lora_unet_<name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, text encoders ``lora_te_`` (SDXL:
``lora_te1_``, ``lora_te2_``). diffusers / peft: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``,
``text_encoder.`` / ``text_encoder_2.``. peft keeps alpha in its adapter config, not in the file: going to
diffusers, each module's alpha / rank is folded into its B (up) weights, so it loads at exactly the same strength;
coming back, alpha is read from the file's ``lora_adapter_metadata`` (lora_alpha, alpha_pattern, r, rank_pattern)
when it has one, else alpha = rank (scale 1), as peft's default. Module names come from the base model (``--model``),
which is loaded to know them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..io_utils import read_safetensors_header
from ..lora_delta import lora_module_table, read_lora_file
from ..models.family import TargetSpec
from ..models.loading import load_components, read_safetensors
from .common import check_output, history_entry, write_output
from ..tool_progress import phase

FORMATS = ("diffusers", "kohya")
_ALL = TargetSpec(conv_blocks=True, kxk_convs=True, stem=("conv_in", "conv_out", "time_embedding"))


def _paths(components) -> dict[int, str]:
    """id(module) -> its diffusers path with the pipeline part in front (unet., text_encoder., text_encoder_2.)."""
    parts = [("unet", components.denoiser)] + [("text_encoder" + (f"_{i + 1}" if i else ""), te)
                                               for i, te in enumerate(components.text_encoders)]
    return {id(m): f"{prefix}.{path}" for prefix, model in parts for path, m in model.named_modules() if path}


def _to_diffusers(source: Path, components) -> tuple[dict[str, torch.Tensor], dict]:
    f = read_lora_file(source)
    table, paths = lora_module_table(components), _paths(components)
    tensors, missing = {}, []
    for stem, m in f.modules.items():
        if m.kind != "lora" or {"lora_mid.weight", "dora_scale"} & set(m.tensors):
            raise UserError(f"{source.name}: {stem} is not a plain LoRA / LoCon module; the diffusers format holds "
                            "those only")
        module = table.get(stem)
        if module is None:
            missing.append(stem)
            continue
        path = paths[id(module)]
        tensors[f"{path}.lora_A.weight"] = m.tensors["lora_down.weight"].float()
        tensors[f"{path}.lora_B.weight"] = m.tensors["lora_up.weight"].float() * m.scale  # alpha/rank folded in
    if missing:
        raise UserError(f"{source.name}: {len(missing)} module(s) are not in this base model (e.g. {missing[0]}): "
                        "is it the model the LoRA was trained on?")
    return tensors, {}


def _alphas(metadata: dict[str, str]) -> tuple[dict[str, float], dict[str, int], float | None]:
    """(alpha_pattern, rank_pattern, lora_alpha) from a diffusers file's adapter metadata, where it has it."""
    try:
        meta = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return {}, {}, None
    config = next((v for v in meta.values() if isinstance(v, dict)), meta) if meta else {}
    return config.get("alpha_pattern", {}) or {}, config.get("rank_pattern", {}) or {}, config.get("lora_alpha")


def _to_kohya(source: Path, components) -> tuple[dict[str, torch.Tensor], dict]:
    state = read_safetensors(source, "convert")
    metadata = read_safetensors_header(source).metadata
    alpha_pattern, _, lora_alpha = _alphas(metadata)
    by_path = {}
    for prefix, model in [("unet", components.denoiser)] + [("text_encoder" + (f"_{i + 1}" if i else ""), te)
                                                            for i, te in enumerate(components.text_encoders)]:
        for path, module in model.named_modules():
            by_path[f"{prefix}.{path}"] = module
    stems = {id(t.module): t.stem for t in components.family.adapter_targets(components, True, True, _ALL)}
    tensors, unknown = {}, []
    for key in state:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                unknown.append(key)
            continue
        path = key.removesuffix(".lora_A.weight")
        module = by_path.get(path)
        if module is None or id(module) not in stems or f"{path}.lora_B.weight" not in state:
            unknown.append(key)
            continue
        down, up = state[key], state[f"{path}.lora_B.weight"]
        rank = down.shape[0]
        inner = path.split(".", 1)[1]
        alpha = next((float(a) for pattern, a in alpha_pattern.items() if inner.endswith(pattern)), None)
        alpha = alpha if alpha is not None else float(lora_alpha) if lora_alpha is not None else float(rank)
        stem = stems[id(module)]
        tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = down, up
        tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    if not tensors:
        raise UserError(f"{source.name} has no diffusers / peft LoRA weights (keys <part>.<module>.lora_A.weight) for "
                        "this base model")
    if unknown:
        raise UserError(f"{source.name}: {len(unknown)} key(s) do not match this base model's layers (e.g. "
                        f"{unknown[0]}): is it the model the LoRA was made for?")
    return tensors, {}


def convert_lora(source: str | Path, out: str | Path, model: str | Path, to: str, v2: bool = False,
                 save_precision: str = "float") -> Path:
    if to not in FORMATS:
        raise UserError(f"--to must be one of {', '.join(FORMATS)}")
    source, model = Path(source).expanduser(), Path(model).expanduser()
    out = check_output(out, [source])
    phase("loading the base model's layer names")
    components = load_components(str(model), None, v2, setting="--model")
    tensors, _ = (_to_diffusers if to == "diffusers" else _to_kohya)(source, components)
    phase("writing")
    entry = history_entry("convert", [source], {"to": to, "model": model.name})
    family = components.family
    metadata = {"ss_base_model_version": family.base_model_version, "ss_network_module": "networks.lora",
                "modelspec.architecture": family.architecture(False), "modelspec.title": out.stem}
    return write_output(out, tensors, save_precision, metadata, entry)
