"""What every LoRA tool shares: precision names, and writing an output with its history."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..file_hashes import cached_sha256, folder_sha256
from ..saving import SAVE_DTYPES, save_lora

HISTORY_KEY = "lora_studio_history"
# recomputed for every file written, never carried over from an input
_RECOMPUTED = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")


def precision_of(tensors: dict[str, torch.Tensor]) -> str:
    """The save precision name of a file's weights (what a tool keeps unless told otherwise)."""
    dtype = next((t.dtype for k, t in tensors.items() if t.is_floating_point() and t.ndim > 1), torch.float32)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "float")


def check_output(out: str | Path, inputs: list[Path]) -> Path:
    out = Path(out).expanduser()
    if out.suffix.lower() != ".safetensors":
        raise UserError(f"{out}: the output must be a .safetensors file")
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the output's file name")
    for source in inputs:
        if out.exists() and out.resolve() == Path(source).expanduser().resolve():
            raise UserError(f"{out} is also an input: write the result to another file (inputs are never "
                            "overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _input_record(path: Path) -> dict:
    """A file: its name and sha256. A diffusers folder: its name, the hash of its weight files (file_hashes) and
    how many there are."""
    path = Path(path)
    if path.is_dir():
        digest, count = folder_sha256(path)
        return {"folder": path.name, "sha256": digest, "weight_files": count}
    return {"file": path.name, "sha256": cached_sha256(path)}


def history_entry(tool: str, inputs: list[Path], parameters: dict[str, Any]) -> dict:
    return {"tool": tool, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "inputs": [_input_record(p) for p in inputs], "parameters": parameters}


def write_output(out: Path, tensors: dict[str, torch.Tensor], precision: str, metadata: dict[str, str],
                 entry: dict, updates: dict[str, Any] | None = None) -> Path:
    """Write ``tensors`` with the input's metadata, ``updates`` applied and ``entry`` appended to the history."""
    if precision not in SAVE_DTYPES:
        raise UserError(f"save precision must be one of {', '.join(SAVE_DTYPES)}, got {precision!r}")
    meta: dict[str, Any] = {k: v for k, v in metadata.items() if k not in _RECOMPUTED}
    try:
        history = json.loads(meta.get(HISTORY_KEY, "[]"))
    except json.JSONDecodeError:
        history = []
    if not isinstance(history, list):  # another tool's value under our key: not ours to extend
        history = []
    meta[HISTORY_KEY] = [*history, entry]
    meta.update(updates or {})
    return save_lora(out, tensors, precision, meta, {})
