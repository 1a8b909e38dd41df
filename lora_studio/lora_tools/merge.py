"""``lora-studio lora merge`` (without ``--model``): several LoRA / LoCon files, each with a ratio, into one.

``concat`` stacks the files' ranks: each module's up weights times ratio x alpha/rank, the down weights as they are,
alpha = the new rank; applying the result is exactly applying every file at its ratio. ``svd`` sums the changes and
keeps the best ``new_rank`` (``new_conv_rank`` for 3x3 convolutions) by SVD, as sd-scripts' svd_merge_lora does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..lora_delta import LoRAFile, ModuleWeights, read_lora_file
from .common import check_output, history_entry, precision_of, write_output
from ..tool_progress import phase, track
from .resize import choose_rank

MODES = ("concat", "svd")


def _plain(m: ModuleWeights, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in x k x k]) with Tucker folded into down, in float32, unscaled."""
    if "lora_mid.weight" in m.tensors:
        raise UserError(f"{name}: module {m.stem} is a Tucker LoCon (lora_mid); resize it first to a plain LoCon")
    return m.tensors["lora_up.weight"].flatten(1).float(), m.tensors["lora_down.weight"].flatten(1).float()


def merge_loras(sources: list[str | Path], ratios: list[float], out: str | Path, mode: str = "concat",
                new_rank: int | None = None, new_conv_rank: int | None = None, save_precision: str | None = None,
                show_progress: bool = True) -> Path:
    if mode not in MODES:
        raise UserError(f"merge mode must be one of {', '.join(MODES)}")
    if len(ratios) not in (0, len(sources)):
        raise UserError(f"give one --ratio per --lora ({len(sources)} files, {len(ratios)} ratios)")
    ratios = list(ratios) or [1.0] * len(sources)
    if mode == "svd" and not new_rank:
        raise UserError("merge --mode svd needs --new_rank")
    paths = [Path(p).expanduser() for p in sources]
    out = check_output(out, paths)
    files: list[LoRAFile] = [read_lora_file(p) for p in paths]
    for f in files:
        other = sorted({m.kind for m in f.modules.values()} - {"lora"})
        if other or any("dora_scale" in m.tensors for m in f.modules.values()):
            raise UserError(f"{f.path.name}: merging works on LoRA / LoCon files; this one has "
                            f"{', '.join(other) or 'DoRA'} modules")
    stems = sorted({s for f in files for s in f.modules})
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for stem in track(stems, f"merging ({mode})", show=show_progress):
            parts = [(f.modules[stem], r, f.path.name) for f, r in zip(files, ratios) if stem in f.modules]
            shapes = {(m.tensors["lora_up.weight"].shape[0], *m.tensors["lora_down.weight"].shape[1:])
                      for m, _, _ in parts}
            if len(shapes) > 1:
                raise UserError(f"{stem} has different shapes in {', '.join(n for _, _, n in parts)}: files of "
                                "different models cannot be merged")
            first = parts[0][0].tensors
            up_shape, down_shape = first["lora_up.weight"].shape, first["lora_down.weight"].shape
            if mode == "concat":
                ups, downs = [], []
                for m, ratio, name in parts:
                    up, down = _plain(m, name)
                    ups.append(up * (ratio * m.scale))
                    downs.append(down)
                up, down = torch.cat(ups, 1), torch.cat(downs, 0)
            else:
                total = sum(_plain(m, name)[0] @ _plain(m, name)[1] * (ratio * m.scale) for m, ratio, name in parts)
                u, s, vh = torch.linalg.svd(total, full_matrices=False)
                conv = len(down_shape) == 4 and down_shape[-1] > 1
                rank = choose_rank(s, (new_conv_rank or new_rank) if conv else new_rank, None, None)
                up, down = u[:, :rank] * s[:rank], vh[:rank]
            rank = up.shape[1]
            tensors[f"{stem}.lora_up.weight"] = up.reshape(up_shape[0], rank, *up_shape[2:])
            tensors[f"{stem}.lora_down.weight"] = down.reshape(rank, *down_shape[1:])
            tensors[f"{stem}.alpha"] = torch.tensor(float(rank))  # scale 1: the ratios are in the weights
    phase("writing")
    entry = history_entry("merge", paths, {"mode": mode, "ratios": ratios, "new_rank": new_rank,
                                           "new_conv_rank": new_conv_rank})
    names = " + ".join(f"{r:g} x {p.stem}" for p, r in zip(paths, ratios))
    updates = {"ss_training_comment": f"merged ({mode}): {names}", "ss_network_dim": "Dynamic",
               "ss_network_alpha": "Dynamic", "ss_output_name": out.stem}
    precision = save_precision or precision_of({k: v for m in files[0].modules.values() for k, v in m.tensors.items()})
    return write_output(out, tensors, precision, files[0].metadata, entry, updates)
