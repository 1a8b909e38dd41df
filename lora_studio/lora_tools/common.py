"""What every LoRA tool shares: precision names, and writing an output with its history."""

from __future__ import annotations

import json
import math
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


def model_family(path: Path, setting: str):
    """The family of a base model from its file header or its diffusers folder's configs (nothing is loaded), or
    None when it is none LoRA Studio knows (the loader then says why)."""
    from ..io_utils import SafetensorsFormatError, read_safetensors_header
    from ..models.registry import family_of_checkpoint, family_of_diffusers_folder

    try:
        if path.is_dir():
            return family_of_diffusers_folder(path, setting)[0]
        return family_of_checkpoint(read_safetensors_header(path, setting).tensors)
    except (UserError, SafetensorsFormatError, StopIteration):
        return None


def streams_checkpoints(family) -> bool:
    """Whether the tools read this family's checkpoints tensor by tensor from their headers (Flux / Chroma: a
    transformer and separate text-encoder files) instead of loading the model."""
    return family is not None and hasattr(family, "lora_weight_keys")


def refuse_folder(path: Path, family, setting: str) -> None:
    if path.is_dir():
        raise UserError(f"{setting}: {path} is a {family.title} diffusers folder; give its single-file "
                        "checkpoint in its native layout (e.g. flux1-dev.safetensors), which this tool reads tensor by "
                        "tensor")


def _safetensors_dtypes() -> dict[str, torch.dtype]:
    from ..models.loading import _SAFETENSORS_DTYPES

    return _SAFETENSORS_DTYPES


def stream_safetensors(source: Path, out: Path, changes: dict[str, Any], metadata: dict[str, str],
                       cast: torch.dtype | None = None, what: str = "--model") -> Path:
    """Write ``source``'s tensors to ``out`` one at a time, in the source's order, never holding the file whole:
    a tensor named in ``changes`` is read and replaced by ``changes[key](tensor)`` (same shape; kept in its dtype),
    a floating tensor is cast to ``cast`` when given, and every other tensor is copied as its bytes. ``metadata``
    is the new file's. Written atomically."""
    import struct

    from ..io_utils import atomic_write, read_safetensors_header
    from ..models.loading import SafetensorsView

    header = read_safetensors_header(source, what)
    view = SafetensorsView(source, what)
    dtypes = _safetensors_dtypes()
    names = {dtype: name for name, dtype in dtypes.items()}
    order = sorted(header.tensors, key=lambda k: header.tensors[k]["data_offsets"][0])
    entries, offset, out_dtype = {}, 0, {}
    for key in order:
        entry = header.tensors[key]
        dtype = dtypes[entry["dtype"]]
        if cast is not None and dtype.is_floating_point:
            dtype = cast
        out_dtype[key] = dtype
        size = math.prod(entry["shape"]) * torch.empty((), dtype=dtype).element_size()
        entries[key] = {"dtype": names[dtype], "shape": entry["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the tensors start 8-byte aligned, as safetensors writes them

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh, open(source, "rb") as src:
            fh.write(struct.pack("<Q", len(blob)) + blob)
            for key in order:
                begin, end = header.tensors[key]["data_offsets"]
                if key not in changes and out_dtype[key] == dtypes[header.tensors[key]["dtype"]]:
                    src.seek(header.data_start + begin)
                    _copy_bytes(src, fh, end - begin)
                    continue
                tensor = view[key]
                if key in changes:
                    tensor = changes[key](tensor).to(tensor.dtype)
                fh.write(tensor.to(out_dtype[key]).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return atomic_write(out, write)


def _copy_bytes(src, dst, count: int, chunk: int = 64 << 20) -> None:
    while count > 0:
        data = src.read(min(chunk, count))
        if not data:
            raise UserError(f"{src.name} ends inside its tensor data; is the file complete?")
        dst.write(data)
        count -= len(data)
