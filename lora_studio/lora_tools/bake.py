"""``lora-studio lora merge --model BASE``: one or more LoRA files, each at a ratio, baked into a checkpoint.

Stable Diffusion (SD1.x, SD2.x, SDXL): the base model is loaded, every LoRA's change applied at its ratio as
AUTOMATIC1111 and ComfyUI apply it (``lora_delta``: LoRA, LoCon, LoHa, LoKr, (IA)3, full, DoRA), and the result
written as a single-file ``.safetensors`` checkpoint in the layout A1111 and ComfyUI open. From a single-file base,
every tensor the LoRAs do not change is copied from it as it is (the same bytes, whatever else the file holds).

Flux.1 / Chroma: the transformer file (BFL layout, with or without ComfyUI's ``model.diffusion_model.``) is rewritten
tensor by tensor, never held whole (a 24 GB file needs one tensor's memory): each weight a LoRA module changes
becomes W + ratio x delta in its own dtype (a fused qkv or linear1 module changes its one weight), every other tensor
is copied byte for byte, the keys stay as they were. The text encoders live in their own files: CLIP-L (lora_te1_)
and T5 (lora_te3_) modules are baked into copies of ``clip_l`` / ``t5xxl`` when those are given, else left out and
named.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as serialize

from ..errors import UserError
from ..io_utils import atomic_write_bytes
from ..lora_delta import LoRAStack, read_lora_file
from ..models.loading import load_components, read_safetensors
from ..models.single_file import single_file_state_dict
from ..saving import SAVE_DTYPES, to_metadata
from .common import check_output, history_entry, model_family, refuse_folder, stream_safetensors, streams_checkpoints
from ..tool_progress import phase

log = logging.getLogger("lora_studio")


def _held_by_model(key: str, converted: dict[str, torch.Tensor], sd2_last: int | None) -> bool:
    """SD2's OpenCLIP encoder has a last layer the model never uses (not loaded): its weights stay the base's."""
    if sd2_last is None:
        return key in converted
    return key in converted and not re.search(rf"transformer\.resblocks\.{sd2_last}\.", key)


def bake(model: str | Path, loras: list[str | Path], ratios: list[float], out: str | Path,
         save_precision: str | None = None, v2: bool = False, text_encoders: dict[str, str | Path] | None = None
         ) -> Path:
    """Bake the LoRA files into ``model``; returns the checkpoint written (``bake_checkpoint`` also says what was
    left out)."""
    return bake_checkpoint(model, loras, ratios, out, save_precision, v2, text_encoders)[0]


def bake_checkpoint(model: str | Path, loras: list[str | Path], ratios: list[float], out: str | Path,
                    save_precision: str | None = None, v2: bool = False,
                    text_encoders: dict[str, str | Path] | None = None) -> tuple[Path, list[str]]:
    """(the checkpoint written, notes: other files written and modules left out). ``text_encoders``: a family's
    separate text-encoder files to bake too (Flux: {"clip_l": path, "t5xxl": path})."""
    if len(ratios) not in (0, len(loras)):
        raise UserError(f"give one --ratio per --lora ({len(loras)} files, {len(ratios)} ratios)")
    ratios = list(ratios) or [1.0] * len(loras)
    model = Path(model).expanduser()
    paths = [Path(p).expanduser() for p in loras]
    out = check_output(out, [model, *paths])
    family = model_family(model, "--model")
    text_encoders = {k: Path(v).expanduser() for k, v in (text_encoders or {}).items() if v}
    if streams_checkpoints(family):
        refuse_folder(model, family, "--model")
        return _bake_streamed(family, model, paths, ratios, out, save_precision, text_encoders)
    if text_encoders:
        raise UserError(f"--{', --'.join(text_encoders)}: separate text-encoder files are for the transformer "
                        "families (Flux.1, Chroma, SD3, Anima, Lumina 2); this base model holds its own text encoders")
    return _bake_loaded(model, paths, ratios, out, save_precision, v2), []


def _bake_loaded(model: Path, paths: list[Path], ratios: list[float], out: Path, save_precision: str | None,
                 v2: bool) -> Path:
    """Stable Diffusion: the model loaded, the LoRAs applied, its single file written."""
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


# ---------------------------------------------------------------- Flux / Chroma: tensor by tensor
@dataclass
class _Change:
    """What the LoRA files do to one weight of a checkpoint: (ratio, module) pairs, and the bias they change."""
    shape: tuple
    modules: list = field(default_factory=list)

    def weight(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor.float()
        new = base.clone()
        for ratio, module in self.modules:
            new += ratio * module.delta(base)[0]
        return new

    def bias(self, tensor: torch.Tensor) -> torch.Tensor:
        new = tensor.float().clone()
        for ratio, module in self.modules:
            db = module.delta(torch.zeros(self.shape))[1]
            if db is not None:
                new += ratio * db.reshape(new.shape)
        return new


def _bake_streamed(family, model: Path, paths: list[Path], ratios: list[float], out: Path,
                   save_precision: str | None, text_encoders: dict[str, Path]) -> tuple[Path, list[str]]:
    from ..io_utils import read_safetensors_header

    unknown = sorted(set(text_encoders) - set(family.text_encoder_lora_prefixes))
    if unknown:
        raise UserError(f"--{unknown[0]}: {family.title} has no such text encoder (it has "
                        f"{', '.join(family.text_encoder_lora_prefixes)})")
    files = [read_lora_file(p) for p in paths]
    sources = {"transformer": (model, "--model"), **{part: (path, f"--{part}") for part, path in text_encoders.items()}}
    headers = {part: read_safetensors_header(path, what) for part, (path, what) in sources.items()}
    tables = {part: family.lora_weight_keys(part, header.tensors) for part, header in headers.items()}
    changes: dict[str, dict[str, _Change]] = {part: {} for part in sources}
    skipped: dict[str, int] = {}
    for lora, ratio in zip(files, ratios):
        matched = 0
        for stem, module in lora.modules.items():
            # a text encoder's own file, when given, wins over the one a checkpoint holds (SD3's), as in training
            part = next((p for p in [*text_encoders, "transformer"] if stem in tables[p]), None)
            if part is None:
                te = next((p for p, prefix in family.text_encoder_lora_prefixes.items() if stem.startswith(prefix)),
                          None)
                if te is not None and te not in text_encoders:
                    skipped[te] = skipped.get(te, 0) + 1
                    matched += 1
                    continue
                raise UserError(f"{lora.path.name}: its module {stem} is not in {model.name}"
                                + (f" or {', '.join(p.name for p in text_encoders.values())}" if text_encoders else "")
                                + f": was it trained for another model type? ({family.title} here)")
            key = tables[part][stem]
            shape = tuple(headers[part].tensors[key]["shape"])
            if module.delta_numel() not in (-1, math.prod(shape)):
                raise UserError(f"{lora.path.name} does not fit {sources[part][0].name}: {stem} ({module.kind}) does "
                                f"not change a weight of shape {shape}. Was it trained for another model size?")
            change = changes[part].setdefault(key, _Change(shape))
            change.modules.append((ratio, module))
            matched += 1
        log.info("%s: %d modules baked at %g", lora.path.name, matched, ratio)
    cast = SAVE_DTYPES[save_precision] if save_precision else None
    written, notes = {}, []
    for part, (source, what) in sources.items():
        target = out if part == "transformer" else check_output(out.with_name(f"{out.stem}-{part}.safetensors"),
                                                                 [source, *paths])
        phase(f"writing {target.name}")
        edits = {}
        for key, change in changes[part].items():
            edits[key] = change.weight
            bias = key.removesuffix(".weight") + ".bias"
            if bias in headers[part].tensors and any(m.kind in ("full", "norm") for _, m in change.modules):
                edits[bias] = change.bias
        entry = history_entry("merge into checkpoint", [source, *paths], {"ratios": ratios,
                                                                          "save_precision": save_precision})
        metadata = {**headers[part].metadata, **to_metadata({"lora_studio_history": [entry],
                                                             "modelspec.title": target.stem})}
        if part == "transformer":
            metadata["modelspec.architecture"] = family.architecture(False).removesuffix("/lora")
        written[part] = stream_safetensors(source, target, edits, metadata, cast, what)
        if part != "transformer":
            notes.append(f"wrote {target} ({len(edits)} {part} weights changed)")
    for part, count in sorted(skipped.items()):
        prefix = family.text_encoder_lora_prefixes[part]
        notes.append(f"left out {count} {family.separate_files.get(part, part)} modules ({prefix}): give --{part} "
                     "to bake them into a copy of that file")
        log.warning("%s", notes[-1])
    return written["transformer"], notes
