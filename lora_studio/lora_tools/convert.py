"""``lora-studio lora convert``: kohya format <-> the diffusers / peft format, for SD1.x, SD2.x, SDXL, Flux.1 and
Chroma.

kohya: ``lora_unet_<name>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``, text encoders ``lora_te_`` (SDXL:
``lora_te1_``, ``lora_te2_``). diffusers / peft: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``,
``text_encoder.`` / ``text_encoder_2.``. peft keeps alpha in its adapter config, not in the file: going to
diffusers, each module's alpha / rank is folded into its B (up) weights, so it loads at exactly the same strength;
coming back, alpha is read from the file's ``lora_adapter_metadata`` (lora_alpha, alpha_pattern, r, rank_pattern)
when it has one, else alpha = rank (scale 1), as peft's default. Module names come from the base model (``--model``),
which is loaded to know them.

Flux.1 / Chroma: the names come from the transformer file's header (nothing is loaded). diffusers splits what BFL
fuses: a double block's ``img_attn.qkv`` is ``transformer.transformer_blocks.N.attn.to_q / to_k / to_v`` (the text
stream's ``add_q_proj ...``), a single block's ``linear1`` is ``attn.to_q / to_k / to_v`` and ``proj_mlp``. Going to
diffusers, a fused module's down goes to every part and its up is cut into the parts' rows (the change of each part
is exactly its rows of the fused change); a module stored split (a block-diagonal up: sd-scripts' split_qkv) gives
each part its own down and up. Coming back, the parts are fused again: when their downs are equal, one down and the
ups stacked (exact, the rank kept); otherwise the downs stacked into a rank of their sum with a block-diagonal up,
alpha scaled by the same count so alpha / rank keeps the strength. CLIP-L is the pipeline's ``text_encoder``
(lora_te1_), T5 its ``text_encoder_2`` (lora_te3_).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..io_utils import read_safetensors_header
from ..lora_delta import lora_module_table, read_lora_file
from ..models.family import TargetSpec
from ..models.loading import load_components, read_safetensors
from .common import check_output, history_entry, model_family, refuse_folder, streams_checkpoints, write_output
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


def _peft_pairs(state: dict) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], list[str]]:
    """(module path, lora_A, lora_B) of a diffusers / peft file's pairs, and its keys that are not in a pair."""
    pairs, unknown = [], []
    for key in state:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                unknown.append(key)
            continue
        path = key.removesuffix(".lora_A.weight")
        if f"{path}.lora_B.weight" not in state:
            unknown.append(key)
            continue
        pairs.append((path, state[key], state[f"{path}.lora_B.weight"]))
    return pairs, unknown


def _alpha_of(path: str, rank: int, alpha_pattern: dict, lora_alpha) -> float:
    """A module's alpha in a diffusers file: its alpha_pattern entry, else lora_alpha, else its rank (scale 1)."""
    alpha = next((float(a) for pattern, a in alpha_pattern.items() if path.endswith(pattern)), None)
    return alpha if alpha is not None else float(lora_alpha) if lora_alpha is not None else float(rank)


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
    tensors = {}
    pairs, unknown = _peft_pairs(state)
    for path, down, up in pairs:
        module = by_path.get(path)
        if module is None or id(module) not in stems:
            unknown.append(f"{path}.lora_A.weight")
            continue
        inner = path.split(".", 1)[1]
        alpha = _alpha_of(inner, down.shape[0], alpha_pattern, lora_alpha)
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
    family = model_family(model, "--model")
    if streams_checkpoints(family):
        refuse_folder(model, family, "--model")
        if not hasattr(family, "diffusers_lora_modules"):  # SD3 / SD3.5, Anima: no diffusers names here
            if to == "diffusers":
                verdict = family.lora_apps(list(read_lora_file(source).modules), True)["diffusers"]
                raise UserError(f"lora convert has no diffusers names for {family.title} ({model.name}); diffusers "
                                f"and {source.name}: {verdict}. Keep the kohya file: ComfyUI reads it as it is")
            raise UserError(f"lora convert reads diffusers / peft files of SD1.x, SD2.x, SDXL, Flux.1, Chroma and "
                            f"Lumina 2, not {family.title} ({model.name})")
        phase("reading the transformer's layer names")
        layers = _flux_layers(family, model)
        tensors = (_flux_to_diffusers if to == "diffusers" else _flux_to_kohya)(source, family, layers)
    else:
        phase("loading the base model's layer names")
        components = load_components(str(model), None, v2, setting="--model")
        tensors, _ = (_to_diffusers if to == "diffusers" else _to_kohya)(source, components)
        family = components.family
    phase("writing")
    entry = history_entry("convert", [source], {"to": to, "model": model.name})
    metadata = {"ss_base_model_version": family.base_model_version, "ss_network_module": "networks.lora",
                "modelspec.architecture": family.architecture(False), "modelspec.title": out.stem}
    return write_output(out, tensors, save_precision, metadata, entry)


# ---------------------------------------------------------------- Flux / Chroma
@dataclass
class _Layer:
    """A BFL Linear of the transformer: its path, shape and the diffusers modules its output rows are."""
    path: str
    out_features: int
    in_features: int
    parts: list  # [(diffusers module path, rows)]


def _flux_layers(family, model: Path) -> dict[str, _Layer]:
    """Every LoRA stem of the transformer (sd-scripts', bare and ``diffusion_model.`` names) -> its layer."""
    header = read_safetensors_header(model, "--model")
    by_key: dict[str, _Layer] = {}
    for key, entry in header.tensors.items():
        if key.endswith(".weight") and len(entry["shape"]) == 2:
            path, (rows, columns) = family.module_path(key), entry["shape"]
            by_key[key] = _Layer(path, rows, columns, family.diffusers_lora_modules(path, rows, columns))
    return {stem: by_key[key] for stem, key in family.lora_weight_keys("transformer", header.tensors).items()
            if key in by_key}


def _flux_to_diffusers(source: Path, family, layers: dict[str, _Layer]) -> dict[str, torch.Tensor]:
    f = read_lora_file(source)
    tensors, missing = {}, []
    for stem, m in f.modules.items():
        if m.kind != "lora" or {"lora_mid.weight", "dora_scale"} & set(m.tensors):
            raise UserError(f"{source.name}: {stem} is not a plain LoRA module; the diffusers format holds those only")
        down = m.tensors["lora_down.weight"].float().flatten(1)
        up = m.tensors["lora_up.weight"].float().flatten(1) * m.scale  # alpha/rank folded in, as peft has no alpha
        text = family.text_encoder_module_path(stem)
        if text is not None:
            tensors[f"{text[0]}.{text[1]}.lora_A.weight"], tensors[f"{text[0]}.{text[1]}.lora_B.weight"] = down, up
            continue
        layer = layers.get(stem)
        if layer is None:
            missing.append(stem)
            continue
        if (up.shape[0], down.shape[1]) != (layer.out_features, layer.in_features):
            raise UserError(f"{source.name}: {stem} has the shape {up.shape[0]} x {down.shape[1]} but this model's "
                            f"{layer.path} is {layer.out_features} x {layer.in_features}: another model size?")
        if not layer.parts:
            raise UserError(f"{source.name}: {stem} ({layer.path}) has no diffusers LoRA name (its halves are stored "
                            "swapped there); leave it out or keep the kohya format")
        rows = tuple(n for _, n in layer.parts)
        split = family.split_ranks(up, rows) if len(rows) > 1 else None
        start = 0
        for i, (name, n) in enumerate(layer.parts):
            part_up, part_down = up[start:start + n], down
            if split:  # each part its own down and up, as trained (exact, and smaller)
                part_up, part_down = part_up[:, i * split[i]:(i + 1) * split[i]], down[i * split[i]:(i + 1) * split[i]]
            tensors[f"transformer.{name}.lora_A.weight"] = part_down.contiguous().clone()
            tensors[f"transformer.{name}.lora_B.weight"] = part_up.contiguous().clone()
            start += n
    if missing:
        raise UserError(f"{source.name}: {len(missing)} module(s) are not in this base model (e.g. {missing[0]}): "
                        "is it the model the LoRA was trained on?")
    return tensors


def _fused(parts: dict[int, tuple[torch.Tensor, torch.Tensor, float]], rows: tuple[int, ...]
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(down, up, alpha) of one fused module from its parts {index: (down [r, in], up [rows, r], scale)}: one down
    when every part has the same down (exact, the rank kept), else the downs stacked with a block-diagonal up. A
    part the file lacks has zero rows. alpha keeps the parts' common scale (alpha / rank: x 3 for three stacked
    parts), or is the rank with each part's scale folded into its up."""
    scales = {s for _, _, s in parts.values()}
    common = scales.pop() if len(scales) == 1 else None
    downs = [parts[i][0] for i in sorted(parts)]  # the up's columns follow the parts' order
    shared = len(parts) == len(rows) and all(d.shape == downs[0].shape and torch.equal(d, downs[0]) for d in downs)
    rank = downs[0].shape[0] if shared else sum(d.shape[0] for d in downs)
    up = torch.zeros(sum(rows), rank)
    down = downs[0] if shared else torch.cat(downs)
    start = column = 0
    for i, n in enumerate(rows):
        if i in parts:
            _, part_up, scale = parts[i]
            part_up = part_up if common is not None else part_up * scale
            width = part_up.shape[1]
            up[start:start + n, (0 if shared else column):(0 if shared else column) + width] = part_up
            column += 0 if shared else width
        start += n
    return down, up, (common * rank if common is not None else float(rank))


def _flux_to_kohya(source: Path, family, layers: dict[str, _Layer]) -> dict[str, torch.Tensor]:
    state = read_safetensors(source, "convert")
    alpha_pattern, _, lora_alpha = _alphas(read_safetensors_header(source).metadata)
    by_part = {}  # diffusers module path -> (layer, part index)
    for layer in {id(v): v for v in layers.values()}.values():
        for i, (name, _) in enumerate(layer.parts):
            by_part[name] = (layer, i)
    groups: dict[str, dict[int, tuple]] = {}
    singles = {}
    pairs, unknown = _peft_pairs(state)
    for path, down, up in pairs:
        down, up = down.float(), up.float()
        scale = _alpha_of(path, down.shape[0], alpha_pattern, lora_alpha) / down.shape[0]
        part, _, inner = path.partition(".")
        setting = family.diffusers_text_encoders.get(part)  # the pipeline's text encoder -> its setting
        if setting is not None:
            singles[family.text_encoder_lora_prefixes[setting] + inner.replace(".", "_")] = (down, up, scale)
            continue
        found = by_part.get(inner if part == "transformer" else path)
        if found is None:
            unknown.append(f"{path}.lora_A.weight")
            continue
        layer, index = found
        groups.setdefault(layer.path, {})[index] = (down, up, scale)
    if unknown:
        raise UserError(f"{source.name}: {len(unknown)} key(s) do not match this base model's layers (e.g. "
                        f"{unknown[0]}): is it the model the LoRA was made for?")
    if not groups and not singles:
        raise UserError(f"{source.name} has no diffusers / peft LoRA weights (keys transformer.<module>.lora_A.weight)")
    paths = {layer.path: layer for layer in layers.values()}
    modules = [(stem, down, up, scale * down.shape[0]) for stem, (down, up, scale) in singles.items()]
    modules += [("lora_unet_" + path.replace(".", "_"), *_fused(parts, tuple(n for _, n in paths[path].parts)))
                for path, parts in groups.items()]
    tensors = {}
    for stem, down, up, alpha in modules:
        tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = down.contiguous(), up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return tensors
