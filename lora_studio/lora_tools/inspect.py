"""``lora-studio lora inspect``: what a kohya-format LoRA file is, what it was trained with, and who loads it."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..lora_delta import ModuleWeights, read_lora_file
from ..tool_progress import track

KIND_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)3", "full": "full (native fine-tuning)",
              "norm": "norm"}
_BLOCK = re.compile(r"^lora_unet_((?:down|up)_blocks_\d+|mid_block|input_blocks_\d+|middle_block|output_blocks_\d+"
                    r"|double_blocks|single_blocks)")
# the cross-attention's key projection reads the text encoder's width: which Stable Diffusion made a file
_CROSS_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def block_of(stem: str, family=None) -> str:
    """The block a module is in: a text encoder (te, te1 ...), a U-Net block, or a transformer family's block list
    (its ``block_pattern``: joint_blocks, blocks, layers, noise_refiner ...); else "unet (other)"."""
    te = re.match(r"lora_(te[123]?)_", stem)
    if te:  # the text encoder, whatever its layers are named (CLIP's text_model, T5's encoder, Qwen3's layers)
        return te.group(1)
    match = _BLOCK.match(stem)
    if match is None and getattr(family, "block_pattern", None):
        match = re.match("lora_unet_" + family.block_pattern.replace(r"\.", "_"), stem)
    return match.group(1) if match else "unet (other)"


def _families():
    from ..models.registry import FAMILIES

    return FAMILIES


def _architecture_fits(family, arch: str) -> bool:
    """Whether a file's ``modelspec.architecture`` is one of the family's (with or without "/lora", or a variant
    of it: "stable-diffusion-v1-5/lora" is SD1's "stable-diffusion-v1/lora")."""
    def plain(text: str) -> str:
        return re.sub(r"[^a-z0-9]", "", text.lower().removesuffix("/lora"))

    given = plain(arch)
    own = {plain(family.architecture(v)) for v in (False, True)}
    return bool(given) and any(given.startswith(o) or o.startswith(given) for o in own)


def _named(candidates, why: str) -> tuple[str, str, list]:
    return " / ".join(f.title for f in candidates), why, list(candidates)


def _family(modules: dict[str, ModuleWeights], metadata: dict[str, str]) -> tuple[str, str, list]:
    """(family, how it was found, the families it can be), asking each family of ``models.registry``: its
    ss_base_model_version, its modelspec architecture, and (where a family says) whether the module names fit it."""
    families, stems = _families(), list(modules)
    fit = [f for f in families if getattr(f, "lora_file_fits", None) and f.lora_file_fits(stems)]
    version = metadata.get("ss_base_model_version", "")
    arch = metadata.get("modelspec.architecture", "")
    by_version = [f for f in families if version and f.base_model_version and version.startswith(f.base_model_version)]
    if by_version:
        narrowed = [f for f in by_version if _architecture_fits(f, arch)] or [f for f in by_version if f in fit] \
            or by_version
        return _named(narrowed, f"metadata ss_base_model_version = {version}" +
                      (f", modelspec.architecture = {arch}" if len(narrowed) < len(by_version) and arch else ""))
    by_arch = [f for f in families if _architecture_fits(f, arch)]
    if by_arch:
        return _named(by_arch, f"metadata modelspec.architecture = {arch}")
    if fit:
        return _named(fit, "its module names (the family's block names)")
    if any(s.startswith(("lora_te1_", "lora_te2_")) for s in modules):
        return _named([f for f in families if f.title == "SDXL"], "two text encoders (lora_te1_ / lora_te2_)")
    for stem, m in modules.items():
        reads = {"lora": "lora_down.weight", "loha": "hada_w1_b"}.get(m.kind)
        if ("attn2_to_k" in stem or "attn2_k_proj" in stem) and reads:
            width = int(m.tensors[reads].shape[1])
            if width in _CROSS_WIDTH:
                return _named([f for f in families if f.title == _CROSS_WIDTH[width]], f"cross-attention width {width}")
    if any(s.startswith("lora_te_") or "down_blocks" in s for s in modules):
        return "SD1.x / SD2.x", "the key layout (one text encoder, diffusers block names)", []
    return "unknown", "no metadata and no cross-attention module to measure", []


def network_type(modules: dict[str, ModuleWeights]) -> str:
    kinds = sorted({m.kind for m in modules.values()})
    names = []
    for kind in kinds:
        name = KIND_NAMES[kind]
        if kind == "lora" and any(m.kind == "lora" and m.tensors["lora_down.weight"].ndim == 4
                                  and m.tensors["lora_down.weight"].shape[-1] > 1 for m in modules.values()):
            name = "LoCon (LoRA with 3x3 convolutions)"
        names.append(name)
    if any("dora_scale" in m.tensors for m in modules.values()):
        names.append("DoRA")
    if any({"lora_mid.weight", "hada_t1", "lokr_t2"} & set(m.tensors) for m in modules.values()):
        names.append("Tucker")
    return " + ".join(names)


def loaders(modules: dict[str, ModuleWeights], unknown: list[str], family=None) -> dict[str, str]:
    """Which apps apply the file, judged from its keys (and, where it says, by the family: ``lora_apps``)."""
    everyone = "yes" if not unknown else f"yes, but {len(unknown)} key(s) no app reads are left out"
    plain = all(m.kind == "lora" and not {"lora_mid.weight", "dora_scale"} & set(m.tensors)
                for m in modules.values())
    if family is not None and hasattr(family, "lora_apps"):
        apps = family.lora_apps(list(modules), plain)
        return {app: everyone if verdict == "yes" else verdict for app, verdict in apps.items()}
    if plain:
        diffusers = everyone
    else:
        other = sorted({KIND_NAMES[m.kind] for m in modules.values() if m.kind != "lora"}
                       | ({"DoRA"} if any("dora_scale" in m.tensors for m in modules.values()) else set())
                       | ({"Tucker LoCon"} if any("lora_mid.weight" in m.tensors for m in modules.values())
                          else set()))
        diffusers = f"no: its load_lora_weights reads LoRA/LoCon only, not {', '.join(other)}"
    return {"AUTOMATIC1111 / Forge": everyone, "ComfyUI": everyone, "diffusers": diffusers}


def _delta_norm(m: ModuleWeights) -> float:
    """The Frobenius norm of the module's weight change (DoRA's rescaling left out: it needs the base weight)."""
    if m.kind in ("ia3", "norm"):
        return float(next(iter(m.tensors.values())).float().norm())
    plain = ModuleWeights(m.stem, m.kind, {k: v for k, v in m.tensors.items() if k != "dora_scale"})
    diff, _ = plain.delta(torch.zeros(plain.delta_numel()))
    return float(diff.norm())


def _parsed(value: str) -> Any:
    if value[:1] in "[{" or value in ("true", "false", "null") or re.fullmatch(r"-?[\d.e+-]+", value or "x"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def inspect_lora(path: str | Path, show_progress: bool = False) -> dict[str, Any]:
    f = read_lora_file(path)
    meta = f.metadata
    family, why, candidates = _family(f.modules, meta)
    own = candidates[0] if candidates else None
    named = getattr(own, "kohya_stem", lambda stem: stem)  # a stem that is a module path, in sd-scripts' form
    blocks: dict[str, dict] = defaultdict(lambda: {"modules": 0, "ranks": set(), "alphas": set(), "norms": []})
    for stem, m in track(sorted(f.modules.items()), "measuring", show=show_progress):
        b = blocks[block_of(named(stem), own)]
        b["modules"] += 1
        if m.rank is not None:
            b["ranks"].add(m.rank)
        if m.alpha is not None:
            b["alphas"].add(round(m.alpha, 6))
        b["norms"].append(_delta_norm(m))
    bad = sorted(f"{stem}.{name}" for stem, m in f.modules.items() for name, t in m.tensors.items()
                 if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    tags = {}
    try:
        for folder, counts in json.loads(meta.get("ss_tag_frequency", "{}")).items():
            tags[folder] = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:20])
    except (json.JSONDecodeError, AttributeError, TypeError):  # another tool's form: left out
        pass
    skip = {"ss_tag_frequency", "ss_bucket_info", "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_datasets"}
    return {
        "file": str(f.path), "family": family, "family_from": why, "type": network_type(f.modules),
        "modules": len(f.modules), "kinds": f.kinds(),
        "blocks": {name: {"modules": b["modules"], "rank": sorted(b["ranks"]), "alpha": sorted(b["alphas"]),
                          "mean_delta_norm": sum(b["norms"]) / len(b["norms"])}
                   for name, b in sorted(blocks.items())},
        "loads_in": loaders(f.modules, f.unknown_keys, own), "unknown_keys": f.unknown_keys,
        "non_finite": bad, "training": {k: _parsed(v) for k, v in sorted(meta.items())
                                        if k.startswith("ss_") and k not in skip},
        "tag_frequency": tags, "history": _parsed(meta.get("lora_studio_history", "[]")),
        "recipe": _recipe(own, meta), "ignored_settings": sorted(getattr(own, "ignored_settings", {})),
        "details": own.lora_file_summary(f.modules, meta) if hasattr(own, "lora_file_summary") else {},
    }


def _recipe(family, metadata: dict[str, str]) -> dict[str, Any]:
    """The family's own training-recipe keys (those its ``metadata`` writes: Flux's ss_timestep_sampling,
    ss_guidance_scale ...) with the file's values, where the file has them."""
    if family is None:
        return {}
    from ..config import build_config

    keys = family.metadata(build_config({}))
    return {k: _parsed(metadata[k]) for k in keys if k in metadata}


def describe(report: dict[str, Any]) -> str:
    lines = [f"{report['file']}", f"  family: {report['family']} ({report['family_from']})",
             f"  type: {report['type']}, {report['modules']} modules"]
    lines.append("  blocks (rank, alpha, mean |delta|):")
    for name, b in report["blocks"].items():
        rank = "/".join(map(str, b["rank"])) or "-"
        alpha = "/".join(f"{a:g}" for a in b["alpha"]) or "-"
        lines.append(f"    {name:24} {b['modules']:4} modules  rank {rank:8} alpha {alpha:8} "
                     f"{b['mean_delta_norm']:.4g}")
    lines.append("  loads in:")
    lines += [f"    {app}: {verdict}" for app, verdict in report["loads_in"].items()]
    lines.append("  NaN/inf: " + (", ".join(report["non_finite"][:5]) if report["non_finite"] else "none"))
    wanted = ("ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
              "ss_learning_rate", "ss_optimizer", "ss_lr_scheduler", "ss_num_train_images", "ss_num_epochs",
              "ss_epoch", "ss_steps", "ss_resolution", "ss_clip_skip", "ss_mixed_precision", "ss_sd_model_name",
              "ss_seed")
    ignored = {f"ss_{name}" for name in report.get("ignored_settings", ())}  # what the family does not read
    training = {k: v for k, v in report["training"].items()
                if (k in wanted or k in report.get("recipe", {})) and k not in ignored}
    if training:
        lines.append("  trained with:")
        lines += [f"    {k.removeprefix('ss_')}: {v}" for k, v in training.items()]
    lines += _describe_details(report.get("details") or {})
    for folder, counts in report["tag_frequency"].items():
        lines.append(f"  tags in {folder}: " + ", ".join(f"{t} ({n})" for t, n in list(counts.items())[:10]))
    history = report["history"] if isinstance(report["history"], list) else []  # another tool's form: left out
    for step in (s for s in history if isinstance(s, dict)):
        inputs = step.get("inputs") if isinstance(step.get("inputs"), list) else []
        lines.append(f"  history: {step.get('tool')} {step.get('parameters')} from "
                     + ", ".join(str(i.get("file") or i.get("folder")) if isinstance(i, dict) else "?"
                                 for i in inputs))
    return "\n".join(lines)


def _describe_details(details: dict[str, Any]) -> list[str]:
    """A family's own part of the report (``lora_file_summary``: Flux's module types, fused modules, split_qkv)."""
    if not details:
        return []
    lines = ["  module types (modules, rank, alpha):"]
    types = details.get("module_types", {})
    width = max([28, *map(len, types)])  # SD3's "joint_blocks context_block_adaLN_modulation_1" is longer
    for name, t in types.items():
        rank = "/".join(map(str, t["rank"])) or "-"
        alpha = "/".join(f"{a:g}" for a in t["alpha"]) or "-"
        lines.append(f"    {name:{width}} {t['modules']:4} modules  rank {rank:8} alpha {alpha}")
    fused = details.get("fused")
    if fused:
        kinds = [f"{fused['qkv']} qkv (q, k, v)"] + ([f"{fused['linear1']} linear1 (q, k, v, MLP in)"]
                                                    if "linear1" in fused else [])  # Lumina 2: qkv only
        lines.append(f"  fused modules: {', '.join(kinds)}; {fused['stored_split']} stored split (block-diagonal up)")
    for kind in ("double", "single"):
        indices = details.get(f"{kind}_blocks")
        if indices:
            lines.append(f"  {kind} blocks changed: {_ranges(indices)}")
    for kind, indices in (details.get("blocks") or {}).items():  # the other transformers' block lists
        if indices:
            lines.append(f"  {kind} changed: {_ranges(indices)}")
    if details.get("split_qkv") is not None:
        lines.append(f"  split_qkv (network_args): {details['split_qkv']}")
    return lines


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(f"{start}-{n}" if n != start else f"{n}")
            start = None
    return ", ".join(parts)
