"""Write LoRA files that A1111, Forge, ComfyUI and diffusers load: kohya keys, string metadata, hashes, atomic."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from .io_utils import atomic_write_bytes, safetensors_header_of_bytes

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}


def model_hashes(blob: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts defines them for a serialised file."""
    model_hash = hashlib.sha256(blob[safetensors_header_of_bytes(blob).data_start:]).hexdigest()
    legacy = hashlib.sha256(blob[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy


def legacy_model_hash(path: str | Path) -> str:
    """The old 8-character A1111 model hash: sha256 of 64 KiB at offset 1 MiB."""
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        return hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]


def to_metadata(values: dict[str, Any]) -> dict[str, str]:
    """All values as strings; dicts and lists as JSON (A1111 parses values that start with '{')."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return out


def lora_tensors(state_dict: dict[str, torch.Tensor], precision: str) -> dict[str, torch.Tensor]:
    """The tensors in the save precision; (IA)3's integer on_input flag stays an integer, and a scalar the save
    precision cannot hold (a full-matrix LoKr's alpha of 100000 is inf in fp16) stays float32."""
    dtype = SAVE_DTYPES[precision]

    def cast(value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value
        out = value.to(dtype)
        if value.ndim == 0 and bool(torch.isfinite(value)) and not bool(torch.isfinite(out)):
            return value.to(torch.float32)
        return out
    return {k: cast(v.detach().to("cpu")).contiguous() for k, v in state_dict.items()}


def save_lora(path: str | Path, state_dict: dict[str, torch.Tensor], precision: str, metadata: dict[str, Any],
              modelspec: dict[str, Any]) -> Path:
    """Write the LoRA atomically, with sshs_* hashes and modelspec.* keys, then reopen it to verify."""
    tensors = lora_tensors(state_dict, precision)
    ss_meta = to_metadata(metadata)
    model_hash, legacy_hash = model_hashes(serialize(tensors, metadata=ss_meta))
    full_meta = {**ss_meta, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash,
                 **to_metadata({f"modelspec.{k}": v for k, v in modelspec.items()}),
                 "modelspec.hash_sha256": "0x" + model_hash}
    path = Path(path)
    atomic_write_bytes(path, serialize(tensors, metadata=full_meta))
    verify_lora(path, tensors)
    return path


def verify_lora(path: Path, expected: dict[str, torch.Tensor]) -> None:
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        if keys != set(expected):
            raise OSError(f"{path}: written file has {len(keys)} tensors, expected {len(expected)}")
        for key in expected:
            if not torch.equal(fh.get_tensor(key), expected[key]):
                raise OSError(f"{path}: tensor {key} differs after writing")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
