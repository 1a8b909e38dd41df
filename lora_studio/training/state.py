"""The full training state, for resuming exactly where a run stopped (``save_state`` / ``resume``).

A state is a folder ``<output_name>-step00000500-state`` (or ``-000002-state`` per epoch, ``-state`` at the end)
holding ``state.safetensors`` (LoRA weights in float32, optimizer tensors, RNG states) and ``state.json`` (step,
epoch, position in the epoch, scheduler and scaler, what the run was: ranks, module names, dataset, settings). No
pickle: a state can be opened without trusting it. Folders are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..config import Config
from ..config.schema import BY_NAME, SETTINGS
from ..errors import UserError
from ..io_utils import atomic_folder
from .outputs import latest_state  # noqa: F401  (re-exported for the trainer)

STATE_VERSION = 1
# Settings that may differ when resuming (they change what is written, not what is learned).
MAY_CHANGE = {"output_dir", "output_name", "logging_dir", "training_comment", "save_model_as", "save_precision",
              "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs", "sample_prompts", "save_n_epoch_ratio",
              "output_config",
              "save_last_n_steps", "save_last_n_steps_state", "save_last_n_epochs_state",
              "sample_every_n_epochs", "sample_every_n_steps", "sample_sampler", "sample_at_first",
              "max_data_loader_n_workers", "persistent_data_loader_workers", "resume", "save_state",
              "save_state_on_train_end", "nan_policy",
              "cache_latents", "train_data_dir", "reg_data_dir", "dataset_config",
              "cache_latents_to_disk", "num_processes", "max_train_steps", "max_train_epochs",
              # what is measured, logged and kept, not what is learned
              "validate_every_n_epochs", "validate_every_n_steps", "max_validation_steps", "save_best",
              "early_stop_patience", "early_stop_min_delta", "log_with", "log_prefix", "log_tracker_name",
              "log_tracker_config", "wandb_run_name", "wandb_api_key", "log_config", "metadata_title",
              "metadata_author", "metadata_description", "metadata_license", "metadata_tags", "highvram", "lowram",
              # where the files are uploaded (the token is never written to a state)
              "huggingface_repo_id", "huggingface_token", "huggingface_repo_type", "huggingface_repo_visibility",
              "huggingface_path_in_repo", "save_state_to_huggingface", "resume_from_huggingface", "async_upload"}


# ---------------------------------------------------------------- (de)serialising nested state dicts
def _pack(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _pack(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_pack(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        if "__dict__" in obj:
            return {k: _unpack(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- what a run is
def dataset_fingerprint(data) -> list[list]:
    """Each image as <folder>/<file>, repeats, regularisation: the same data even if its parent folder moved."""
    return [[f"{it.path.parent.name}/{it.path.name}", it.subset.num_repeats, bool(it.subset.is_reg)]
            for it in data.items]


def learned_settings(cfg: Config) -> dict[str, Any]:
    return {s.name: getattr(cfg, s.name) for s in SETTINGS if s.name not in MAY_CHANGE}


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- write and read
def save_state(folder: Path, *, network, optimizer, scheduler, scaler, step: int, epoch: int, next_batch: int,
               cfg: Config, data, seed: int, world: int, rngs: list[dict], validation: dict | None = None) -> Path:
    """``rngs``: the random states of every process, by rank; ``validation``: the best validation loss so far."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in network.state_dict().items():
        tensors[f"network.{key}"] = value.detach().to("cpu").contiguous().clone()
    doc = {
        "version": STATE_VERSION, "step": step, "epoch": epoch, "next_batch": next_batch, "seed": seed,
        "world": world, "settings": learned_settings(cfg),
        "config_hash": hashlib.sha256(json.dumps(learned_settings(cfg), sort_keys=True, default=str)
                                      .encode()).hexdigest(),
        "network": {k: list(v.shape) for k, v in network.state_dict().items()},
        "dataset": dataset_fingerprint(data),
        "optimizer": _pack(optimizer.state_dict(), tensors, "optimizer"),
        "scheduler": _pack(scheduler.state_dict(), tensors, "scheduler"),
        "scaler": _pack(scaler.state_dict(), tensors, "scaler") if scaler is not None else None,
        "rng": _pack(rngs, tensors, "rng"),
        "validation": validation,
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(doc), encoding="utf-8")  # written last: marks it complete
    return atomic_folder(folder, write)


class ResumeState:
    def __init__(self, folder: Path):
        self.folder = folder
        try:
            self.doc = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            self.tensors = load_file(str(folder / "state.safetensors"))
        except FileNotFoundError:
            raise UserError(f"resume: {folder} is not a complete LoRA Studio state folder (no state.json / "
                            "state.safetensors)") from None
        except (ValueError, OSError) as exc:
            raise UserError(f"resume: cannot read the state in {folder} ({exc})") from None
        if self.doc.get("version") != STATE_VERSION:
            raise UserError(f"resume: {folder} was written by another LoRA Studio version")

    step = property(lambda self: int(self.doc["step"]))
    epoch = property(lambda self: int(self.doc["epoch"]))
    next_batch = property(lambda self: int(self.doc["next_batch"]))
    seed = property(lambda self: int(self.doc["seed"]))
    validation = property(lambda self: self.doc.get("validation"))

    def check_matches(self, cfg: Config, network, data, world: int) -> None:
        """Refuse a state that belongs to another run, saying what differs."""
        saved = self.doc["settings"]
        now = learned_settings(cfg)
        # a setting newer than the state counts as at its default there
        then = {k: saved.get(k, BY_NAME[k].default) for k in now}
        changed = [f"{k} was {then[k]!r}, now {now.get(k)!r}" for k in sorted(now)
                   if _norm(then[k]) != _norm(now.get(k))]
        if changed:
            raise UserError(f"resume: {self.folder.name} was trained with other settings: " + "; ".join(changed[:6]))
        shapes = {k: list(v.shape) for k, v in network.state_dict().items()}
        if set(shapes) != set(self.doc["network"]):
            missing = sorted(set(self.doc["network"]) - set(shapes))
            extra = sorted(set(shapes) - set(self.doc["network"]))
            example = (missing or extra)[0]
            raise UserError(f"resume: the LoRA targets differ from the state's ({len(missing)} module weights only in "
                            f"the state, {len(extra)} only in this run, e.g. {example})")
        for key, shape in shapes.items():
            if shape != self.doc["network"][key]:
                raise UserError(f"resume: the rank differs: {key} is {self.doc['network'][key]} in the state, "
                                f"{shape} now (network_dim / conv_dim)")
        then, now_data = self.doc["dataset"], dataset_fingerprint(data)
        if then != now_data:
            first = next((f"{a} vs {b}" for a, b in zip(then, now_data) if a != b), "")
            raise UserError(f"resume: the dataset changed: {len(then)} images in the state, {len(now_data)} now"
                            + (f" (first difference: {first})" if first else ""))
        if int(self.doc["world"]) != world:
            raise UserError(f"resume: the state was written by {self.doc['world']} process(es), this run has {world}")

    def restore(self, network, optimizer, scheduler, scaler) -> None:
        own = {k[len("network."):]: v for k, v in self.tensors.items() if k.startswith("network.")}
        network.load_state_dict(own)
        optimizer.load_state_dict(_unpack(self.doc["optimizer"], self.tensors))
        scheduler.load_state_dict(_unpack(self.doc["scheduler"], self.tensors))
        if scaler is not None and self.doc.get("scaler") is not None:
            scaler.load_state_dict(_unpack(self.doc["scaler"], self.tensors))

    def restore_rng(self, rank: int = 0) -> None:
        set_rng_state(_unpack(self.doc["rng"], self.tensors)[rank])


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
