"""``lora-studio lora extract``: a LoRA from a fine-tuned model and its base, as sd-scripts'
networks/extract_lora_from_models.py makes it: per LoRA target, the SVD of (tuned - base) cut to ``dim`` (``conv_dim``
for 3x3 convolutions, which are only extracted when it is given), up and down clamped at the ``clamp_quantile`` of
their values, alpha = the rank. The text encoders are left out when no weight of theirs differs by more than
``min_diff`` (a model whose text encoder was not trained). A dynamic method (sv_ratio, sv_fro, sv_cumulative)
chooses each module's rank up to ``dim``, as ``resize`` does.

Flux.1 / Chroma, as sd-scripts' networks/flux_extract_lora.py: the two transformer files (BFL layout; a ComfyUI
``model.diffusion_model.`` prefix is read through) are read tensor by tensor, never whole, and every Linear of the
double and single blocks gives a module with sd-scripts' name (``lora_unet_double_blocks_0_img_attn_qkv``: a fused
qkv or linear1 is one module). The text encoders are separate files: CLIP-L (``lora_te1_``) and T5 (``lora_te3_``)
are extracted only when both of their files are given and differ by more than ``min_diff``. SD3 / SD3.5, Anima and
Lumina 2 the same way, with their own names and text encoders (SD3: CLIP-L, CLIP-G, T5, which a checkpoint may hold
itself: each is extracted only when it differs by more than ``min_diff``; Anima: Qwen3; Lumina 2: Gemma2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import UserError
from ..models.family import TargetSpec
from ..models.loading import load_components
from .common import check_output, history_entry, model_family, refuse_folder, streams_checkpoints, write_output
from ..tool_progress import phase, track
from .resize import DYNAMIC_METHODS, choose_rank

log = logging.getLogger("lora_studio")


def _targets(components, conv: bool) -> dict[str, tuple[torch.nn.Module, bool]]:
    spec = TargetSpec(conv_blocks=conv, kxk_convs=conv)
    return {t.stem: (t.module, t.text_encoder is not None)
            for t in components.family.adapter_targets(components, True, True, spec) if not t.norm}


def _low_rank(diff: torch.Tensor, cap: int, clamp_quantile: float, dynamic_method: str | None,
              dynamic_param: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of the best rank <= ``cap`` (or the dynamic method's) of ``diff`` [out, in, ...], clamped at the
    quantile, shaped as the module's LoRA weights."""
    u, s, vh = torch.linalg.svd(diff.flatten(1), full_matrices=False)
    rank = choose_rank(s, min(cap, diff.shape[0], diff.shape[1]), dynamic_method, dynamic_param)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile < 1:
        high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-high, high), down.clamp(-high, high)
    return (up.reshape(diff.shape[0], rank, *([1, 1] if diff.ndim == 4 else [])),
            down.reshape(rank, *diff.shape[1:]))


def extract_lora(model: str | Path, tuned: str | Path, out: str | Path, dim: int = 4, conv_dim: int | None = None,
                 clamp_quantile: float = 0.99, min_diff: float = 0.01, dynamic_method: str | None = None,
                 dynamic_param: float | None = None, device: str = "cpu", save_precision: str = "float",
                 v2: bool = False, show_progress: bool = True,
                 text_encoders: dict[str, tuple[str | Path, str | Path]] | None = None) -> Path:
    """``text_encoders``: a family's separate text-encoder files as {part: (base, tuned)} (Flux: "clip_l",
    "t5xxl")."""
    if dynamic_method and (dynamic_method not in DYNAMIC_METHODS or not dynamic_param):
        raise UserError(f"dynamic_method must be one of {', '.join(DYNAMIC_METHODS)}, with dynamic_param")
    model, tuned = Path(model).expanduser(), Path(tuned).expanduser()
    out = check_output(out, [model, tuned])
    family = model_family(model, "--model")
    if streams_checkpoints(family):
        return _extract_streamed(family, model, tuned, out, dim, clamp_quantile, min_diff, dynamic_method,
                                 dynamic_param, device, save_precision, text_encoders or {}, show_progress)
    if text_encoders:
        raise UserError("separate text-encoder files are for the transformer families (Flux.1, Chroma, SD3, Anima, "
                        "Lumina 2); this base model holds its own")
    phase("loading the models")
    base_c = load_components(str(model), None, v2, setting="--model")
    tuned_c = load_components(str(tuned), None, v2, setting="--tuned")
    if type(base_c.family) is not type(tuned_c.family):
        raise UserError(f"{model.name} is {base_c.family.title} but {tuned.name} is {tuned_c.family.title}")
    base_t, tuned_t = _targets(base_c, conv_dim is not None), _targets(tuned_c, conv_dim is not None)
    if set(base_t) != set(tuned_t):
        raise UserError(f"{model.name} and {tuned.name} have different layers: is one of them another model size?")
    diffs: dict[str, torch.Tensor] = {}
    te_differs = False
    for stem, (module, in_te) in base_t.items():
        diff = tuned_t[stem][0].weight.detach().float().to(device) - module.weight.detach().float().to(device)
        if in_te and float(diff.abs().max()) > min_diff:
            te_differs = True
        diffs[stem] = diff
    if not te_differs:
        log.info("the text encoders differ by at most %g (min_diff): extracting the U-Net only", min_diff)
        diffs = {s: d for s, d in diffs.items() if not base_t[s][1]}
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for stem, diff in track(diffs.items(), "extracting", show=show_progress, total=len(diffs)):
            kxk = diff.ndim == 4 and diff.shape[2:] != (1, 1)
            up, down = _low_rank(diff, conv_dim if kxk else dim, clamp_quantile, dynamic_method, dynamic_param)
            tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"] = up, down
            tensors[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]))
    phase("writing")
    family = base_c.family
    net_args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_dim))} if conv_dim else {}
    metadata = {"ss_v2": str(bool(v2)), "ss_base_model_version": family.base_model_version,
                "ss_network_module": "networks.lora", "ss_network_dim": str(dim), "ss_network_alpha": str(float(dim)),
                "ss_network_args": str(net_args).replace("'", '"'), "ss_output_name": out.stem,
                "modelspec.title": out.stem, "modelspec.architecture": family.architecture(False)}
    entry = history_entry("extract", [model, tuned], {"dim": dim, "conv_dim": conv_dim, "clamp_quantile":
                                                      clamp_quantile, "min_diff": min_diff,
                                                      "dynamic_method": dynamic_method, "dynamic_param": dynamic_param})
    return write_output(out, tensors, save_precision, metadata, entry)


# ---------------------------------------------------------------- Flux / Chroma: tensor by tensor
def _pairs(family, part: str, base: Path, tuned: Path, what: str) -> list[tuple[str, str, str]]:
    """(stem, base key, tuned key) of every layer LoRA trains in a part's two files, which must have the same."""
    from ..io_utils import read_safetensors_header

    headers = [read_safetensors_header(p, f"{what} ({p.name})") for p in (base, tuned)]
    tables = [family.lora_weight_keys(part, h.tensors, targets_only=True) for h in headers]
    if not tables[0]:
        raise UserError(f"{what}: {base.name} has none of the layers a {family.title} LoRA trains; is it the right "
                        "file?")
    shapes = [{stem: h.tensors[key]["shape"] for stem, key in t.items()} for h, t in zip(headers, tables)]
    if shapes[0] != shapes[1]:
        raise UserError(f"{what}: {base.name} and {tuned.name} have different layers: is one of them another model "
                        "size?")
    return [(stem, key, tables[1][stem]) for stem, key in tables[0].items()]


def _differs(pairs, base, tuned, min_diff: float) -> bool:
    """Whether any weight differs by more than ``min_diff`` (read one pair at a time; stops at the first)."""
    return any(float((tuned[t].float() - base[b].float()).abs().max()) > min_diff for _, b, t in pairs)


def _extract_streamed(family, model: Path, tuned: Path, out: Path, dim: int, clamp_quantile: float,
                      min_diff: float, dynamic_method, dynamic_param, device: str, save_precision: str,
                      text_encoders: dict, show_progress: bool) -> Path:
    from ..models.loading import SafetensorsView

    for path, setting in ((model, "--model"), (tuned, "--tuned")):
        refuse_folder(path, family, setting)
    other = model_family(tuned, "--tuned")
    if type(other) is not type(family):
        raise UserError(f"{model.name} is {family.title} but {tuned.name} is "
                        f"{other.title if other else 'no model LoRA Studio knows'}")
    unknown = sorted(set(text_encoders) - set(family.text_encoder_lora_prefixes))
    if unknown:
        raise UserError(f"{family.title} has no {unknown[0]} text encoder")
    parts = {"transformer": (model, tuned, "--model / --tuned")}
    for part, files in text_encoders.items():
        if not files or not all(files):
            raise UserError(f"--{part} needs both files: the base and the tuned {part}")
        parts[part] = (Path(files[0]).expanduser(), Path(files[1]).expanduser(), f"--{part}")
    phase("reading the headers")
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for part, (base_path, tuned_path, what) in parts.items():
            pairs = _pairs(family, part, base_path, tuned_path, what)
            base, other_view = SafetensorsView(base_path, what), SafetensorsView(tuned_path, what)
            if part != "transformer" and not _differs(pairs, base, other_view, min_diff):
                log.info("the %s files differ by at most %g (min_diff): left out", part, min_diff)
                continue
            for te, prefix in family.text_encoder_lora_prefixes.items():  # those inside the checkpoint (SD3's)
                held = [p for p in pairs if p[0].startswith(prefix)]
                if part == "transformer" and held and not _differs(held, base, other_view, min_diff):
                    log.info("the checkpoints' %s differs by at most %g (min_diff): left out", te, min_diff)
                    pairs = [p for p in pairs if not p[0].startswith(prefix)]
            for stem, base_key, tuned_key in track(pairs, f"extracting ({part})", show=show_progress):
                diff = other_view[tuned_key].to(device, torch.float32) - base[base_key].to(device, torch.float32)
                up, down = _low_rank(diff, dim, clamp_quantile, dynamic_method, dynamic_param)
                tensors[f"{stem}.lora_up.weight"], tensors[f"{stem}.lora_down.weight"] = up.cpu(), down.cpu()
                tensors[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]))
    phase("writing")
    net_args = {"train_t5xxl": "True"} if any(k.startswith("lora_te3_") for k in tensors) else {}
    metadata = {"ss_base_model_version": family.base_model_version, "ss_network_module": family.lora_module,
                "ss_network_dim": str(dim), "ss_network_alpha": str(float(dim)),
                "ss_network_args": json.dumps(net_args), "ss_output_name": out.stem, "modelspec.title": out.stem,
                "modelspec.architecture": family.architecture(False),
                "modelspec.implementation": family.modelspec_implementation}
    inputs = [model, tuned] + [p for part in parts if part != "transformer" for p in parts[part][:2]]
    entry = history_entry("extract", inputs, {"dim": dim, "clamp_quantile": clamp_quantile, "min_diff": min_diff,
                                              "dynamic_method": dynamic_method, "dynamic_param": dynamic_param,
                                              "text_encoders": sorted(p for p in parts if p != "transformer")})
    return write_output(out, tensors, save_precision, metadata, entry)
