"""``lora-studio lora resize``: a LoRA / LoCon to another rank by SVD, as sd-scripts' networks/resize_lora.py does.

Each module's up x down (without its alpha/rank scale) is decomposed; the new rank is ``new_rank`` (``new_conv_rank``
for 3x3 convolutions), or chosen per module by a dynamic method, capped at it: ``sv_ratio`` keeps the singular values
above the largest / ratio, ``sv_fro`` the fewest whose Frobenius share reaches the target, ``sv_cumulative`` the
fewest whose sum share reaches it. The new alpha keeps the module's scale (alpha / rank), so the strength means the
same. The report gives, per module, the Frobenius share of the change kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..lora_delta import read_lora_file
from .common import check_output, history_entry, precision_of, write_output
from ..tool_progress import phase, track

MIN_SV = 1e-6  # a module whose largest singular value is below this is all zeros: rank 1
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass
class ModuleResize:
    stem: str
    old_rank: int
    new_rank: int
    fro_kept: float  # the share of the change's Frobenius norm the new rank keeps


def _dynamic_rank(s: torch.Tensor, method: str, param: float) -> int:
    """sd-scripts' index functions, then + 1: a rank between 2 and len(s)."""
    if method == "sv_ratio":
        index = int((s > s[0] / param).sum())
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(s, 0) / s.sum(), torch.tensor(param))) + 1
    else:  # sv_fro
        index = int(torch.searchsorted(torch.cumsum(s ** 2, 0) / (s ** 2).sum(), torch.tensor(param ** 2))) + 1
    return max(1, min(index, len(s) - 1)) + 1


def choose_rank(s: torch.Tensor, cap: int, method: str | None, param: float | None) -> int:
    if float(s[0]) <= MIN_SV:
        return 1
    rank = _dynamic_rank(s, method, param) if method else cap
    return min(rank, cap, len(s))


def resize_lora(source: str | Path, out: str | Path, new_rank: int, new_conv_rank: int | None = None,
                dynamic_method: str | None = None, dynamic_param: float | None = None, device: str = "cpu",
                save_precision: str | None = None, show_progress: bool = True) -> tuple[Path, list[ModuleResize]]:
    if dynamic_method and dynamic_method not in DYNAMIC_METHODS:
        raise UserError(f"dynamic_method must be one of {', '.join(DYNAMIC_METHODS)}")
    if dynamic_method and not dynamic_param:
        raise UserError(f"dynamic_method {dynamic_method} needs dynamic_param (e.g. 0.9 for sv_fro)")
    if new_rank < 1:
        raise UserError("new_rank must be at least 1")
    source = Path(source).expanduser()
    out = check_output(out, [source])
    f = read_lora_file(source)
    other = sorted({m.kind for m in f.modules.values()} - {"lora"})
    if other:
        raise UserError(f"{source.name}: resize works on LoRA / LoCon modules; this file has {', '.join(other)}")
    if any("dora_scale" in m.tensors for m in f.modules.values()):
        raise UserError(f"{source.name}: a DoRA file's magnitudes depend on the base weights; resize keeps LoRA / "
                        "LoCon files only")
    conv_rank = new_conv_rank or new_rank
    tensors: dict[str, torch.Tensor] = {}
    report: list[ModuleResize] = []
    with torch.no_grad():
        for stem, m in track(sorted(f.modules.items()), "resizing", show=show_progress):
            down = m.tensors["lora_down.weight"]
            up = m.tensors["lora_up.weight"]
            if "lora_mid.weight" in m.tensors:  # a Tucker LoCon: its whole change, then a plain LoCon
                plain, _ = type(m)(stem, "lora", {k: v for k, v in m.tensors.items() if k != "alpha"}).delta(
                    torch.zeros(m.delta_numel()))
                matrix = plain.reshape(up.shape[0], -1)
                down_shape = (down.shape[1], *m.tensors["lora_mid.weight"].shape[2:])
            else:
                matrix = up.flatten(1).float() @ down.flatten(1).float()
                down_shape = tuple(down.shape[1:])
            conv = down.ndim == 4 and len(down_shape) == 3 and down_shape[1] > 1
            u, s, vh = torch.linalg.svd(matrix.to(device, torch.float32), full_matrices=False)
            rank = choose_rank(s, conv_rank if conv else new_rank, dynamic_method, dynamic_param)
            kept = float((s[:rank] ** 2).sum().sqrt() / (s ** 2).sum().sqrt()) if float(s[0]) > 0 else 1.0
            scale = m.scale  # alpha / old rank, kept: the same strength means the same change
            new_up = (u[:, :rank] * s[:rank]).cpu()
            new_down = vh[:rank].cpu()
            tensors[f"{stem}.lora_up.weight"] = new_up.reshape(up.shape[0], rank, *([1, 1] if up.ndim == 4 else []))
            tensors[f"{stem}.lora_down.weight"] = new_down.reshape(rank, *down_shape)
            tensors[f"{stem}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
            report.append(ModuleResize(stem, m.rank, rank, kept))
    old = max(r.old_rank for r in report)
    comment = f.metadata.get("ss_training_comment", "")
    if dynamic_method:
        updates = {"ss_training_comment": f"Dynamic resize with {dynamic_method}: {dynamic_param} from {old}; "
                                          f"{comment}", "ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic"}
    else:
        conv_text = "" if conv_rank == new_rank else f" (conv: {conv_rank})"
        alphas = {float(t) for k, t in tensors.items() if k.endswith(".alpha")}
        updates = {"ss_training_comment": f"dimension is resized from {old} to {new_rank}{conv_text}; {comment}",
                   "ss_network_dim": new_rank,
                   "ss_network_alpha": alphas.pop() if len(alphas) == 1 else "Dynamic"}
    phase("writing")
    entry = history_entry("resize", [source], {"new_rank": new_rank, "new_conv_rank": conv_rank,
                                               "dynamic_method": dynamic_method, "dynamic_param": dynamic_param})
    precision = save_precision or precision_of({k: v for m in f.modules.values() for k, v in m.tensors.items()})
    return write_output(out, tensors, precision, f.metadata, entry, updates), report
