"""Load a base model from a diffusers folder or a single-file (A1111-style) checkpoint, offline.

The file is read here (safetensors, or a pickle only with consent and only as data); which family it is and how its
components are built is the family's business (``registry``, ``sd1`` ...).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import UserError
from ..io_utils import read_safetensors_header
from . import ldm_build, ldm_keys
from .family import Components
from .registry import checked_family, family_of_checkpoint, family_of_diffusers_folder, is_pickle_file, pickle_refusal
from .stable_diffusion import SD_VAE

os.environ.setdefault("HF_HUB_OFFLINE", "1")



_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                       "F8_E5M2": torch.float8_e5m2}


def return_freed_buffers_to_the_system() -> None:
    """glibc serves a large allocation from its heap once one of that size was freed (its mmap threshold grows),
    and freed heap memory stays counted against the process: loading, which reads and frees a buffer for each
    tensor it converts, would keep about a model's worth of it. A fixed threshold (1 MiB) keeps large buffers in
    their own maps, returned when freed. Linux (glibc) only; elsewhere nothing changes."""
    global _THRESHOLD_SET
    if _THRESHOLD_SET or not sys.platform.startswith("linux"):
        return
    _THRESHOLD_SET = True
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_THRESHOLD_SET = False


class SafetensorsView(Mapping):
    """A .safetensors file as a read-only mapping whose tensors are read one at a time, when asked for, into memory
    of their own (not a map of the file, whose pages would stay counted against the process): a model built from it
    never holds the file beside itself."""

    def __init__(self, path: Path, what: str):
        self.path = path
        return_freed_buffers_to_the_system()
        header = read_safetensors_header(path, what)
        self._start, self._entries = header.data_start, header.tensors
        for key, entry in self._entries.items():
            if entry["dtype"] not in _SAFETENSORS_DTYPES:
                raise UserError(f"{what}: {path}: the tensor {key} has the dtype {entry['dtype']}, which LoRA Studio "
                                "does not read")
            entry["torch_dtype"] = _SAFETENSORS_DTYPES[entry["dtype"]]

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        shape, dtype = entry["shape"], entry["torch_dtype"]
        if end == begin:
            return torch.empty(shape, dtype=dtype, device="cpu")
        # on the CPU whatever the default device (lowram builds under the GPU's): the read fills it, not zeroed
        data = torch.empty(end - begin, dtype=torch.uint8, device="cpu")
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self._start + begin)
            if fh.readinto(memoryview(data.numpy())) != end - begin:
                raise UserError(f"{self.path} ends inside the tensor {key}; is the download complete?")
        return data.view(dtype).reshape(shape)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class ShardedView(Mapping):
    """name -> tensor over several ``SafetensorsView`` (a model in shards), each tensor read when asked for."""

    def __init__(self, views):
        self._views = {key: view for view in views for key in view}  # name -> the view that holds it

    def __getitem__(self, key):
        return self._views[key][key]

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    read_safetensors_header(path, what)  # a missing, truncated or foreign file: the one clear message
    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"{what}: cannot read {path} as a .safetensors file ({exc.__class__.__name__}: {exc})") from None


def read_pickle_weights(path: Path, setting: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Tensors of a .ckpt/.pt/.bin file, only with ``allow_pickle`` and only as plain data (``weights_only=True``:
    a file that holds code is refused, never run)."""
    if not allow_pickle:
        raise UserError(pickle_refusal(path, setting))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{setting}: {path.name} was refused: it is not plain tensor data "
                        f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"{setting}: {path.name} holds no state dict of weights")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_single_file(path: Path, v2: bool, allow_pickle: bool = False,
                     setting: str = "pretrained_model_name_or_path", options=None) -> Components:
    sd = read_pickle_weights(path, setting, allow_pickle) if is_pickle_file(path) else SafetensorsView(path, setting)
    keys = list(sd)
    family = checked_family(family_of_checkpoint(keys), str(path), v2, keys)
    try:
        return family.load_single_file(sd, str(path), options)
    except KeyError as exc:
        raise UserError(f"{setting}: {path} is an incomplete {family.title} checkpoint "
                        f"(no {exc.args[0]}); is the download complete?") from None


def load_diffusers_folder(path: Path, v2: bool, setting: str = "pretrained_model_name_or_path",
                          options=None) -> Components:
    """A diffusers folder's components; a damaged or incomplete folder (a part or a config missing, a weights file
    cut short) is a UserError naming the folder, not diffusers' traceback."""
    family, model_index = family_of_diffusers_folder(path, setting)
    family = checked_family(family, str(path), v2)
    for weights in sorted(path.glob("*/*.safetensors")):
        read_safetensors_header(weights, setting)
    try:
        return family.load_diffusers(path, model_index, options)
    except (OSError, json.JSONDecodeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300].rstrip(".")
        raise UserError(f"{setting}: cannot load the diffusers folder {path}: {reason}; is it complete (each part's "
                        "folder with its config.json and weights)?") from None


def load_vae(path: Path, allow_pickle: bool = False) -> torch.nn.Module:
    """A VAE from a diffusers folder (with or without vae/), or a .safetensors file in LDM or diffusers naming."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        if sub is None and not (path / "config.json").is_file():
            raise UserError(f"vae: {path} is not a diffusers VAE folder (no config.json in it or in vae/); give a "
                            "VAE .safetensors file or a diffusers folder")
        try:
            return AutoencoderKL.from_pretrained(path, subfolder=sub, local_files_only=True)
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"vae: cannot load the VAE in {path}: {str(exc).strip()[:300]}") from None
    sd = read_pickle_weights(path, "vae", allow_pickle) if is_pickle_file(path) else read_safetensors(path, "vae")
    if any(k.startswith(ldm_keys.VAE_PREFIX) for k in sd):
        prefix = ldm_keys.VAE_PREFIX
    elif "encoder.down.0.block.0.conv1.weight" in sd:
        prefix = ""
    else:  # diffusers naming
        vae = AutoencoderKL.from_config(dict(SD_VAE))
        vae.load_state_dict(sd)
        return vae
    ldm = {ldm_keys.VAE_PREFIX + k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return ldm_build.build_vae(ldm, SD_VAE, str(path))


def load_components(model_path: str, vae_path: str | None, v2: bool, allow_pickle: bool = False,
                    setting: str = "pretrained_model_name_or_path", options=None) -> Components:
    """The base model; ``setting`` is the option that named it (for the error messages: a tool's ``--model``);
    ``options``: the run's settings (a Config or a dict of setting values), which a family with separate files
    (Flux: ae, clip_l, t5xxl) or loading options (fp8_base) reads."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise UserError(f"{setting}: not found: {path}. Give a local .safetensors checkpoint or a diffusers folder "
                        "(LoRA Studio never downloads models).")
    if isinstance(options, dict):
        from ..config import build_config

        options = build_config(options)
    components = (load_diffusers_folder(path, v2, setting, options) if path.is_dir()
                  else load_single_file(path, v2, allow_pickle, setting, options))
    if vae_path and "vae" not in components.family.separate_files:  # Anima's vae is its own part, loaded
        vpath = Path(vae_path).expanduser()
        if not vpath.exists():
            raise UserError(f"vae: not found: {vpath}")
        scale = components.vae.config.scaling_factor  # the family's latent scale, whatever the file says
        components.vae = load_vae(vpath, allow_pickle)
        components.vae.register_to_config(scaling_factor=scale)
        components.info["vae"] = str(vpath)
    for module in [components.denoiser, components.vae, *components.text_encoders]:
        module.requires_grad_(False)
        module.eval()
    return components
