"""Where a run writes its files (no torch: the GUI uses these names to follow a run)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..config import Config


def output_paths(cfg: Config) -> dict[str, Path]:
    out = Path(cfg.output_dir)
    name = cfg.output_name
    return {"final": out / f"{name}.safetensors", "config": out / f"{name}_config.toml",
            "events": out / f"{name}_events.jsonl", "samples": out / "sample", "stop": out / f"{name}.stop",
            "pause": out / f"{name}.pause", "tests": out / f"{name}.tests"}


def latent_cache_fallback(cfg: Config) -> Path:
    """Where latents are cached when an image folder is read-only."""
    return Path(cfg.output_dir) / "latent_cache"


def epoch_file(cfg: Config, epoch: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.output_name}-{epoch:06d}.safetensors"


def best_file(cfg: Config) -> Path:
    """save_best: the weights with the lowest validation loss so far."""
    return Path(cfg.output_dir) / f"{cfg.output_name}-best.safetensors"


def step_file(cfg: Config, step: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.output_name}-step{step:08d}.safetensors"


def latest_state(output_dir: str | Path, output_name: str) -> Path | None:
    """The newest complete ``save_state`` folder of a run (by step), or None. A folder is complete once its
    ``state.json`` exists: it is written last, inside a folder that is renamed into place."""
    best, best_step = None, -1
    pattern = re.compile(re.escape(output_name) + r"(-step\d{8}|-\d{6})?-state")
    for folder in Path(output_dir).glob(f"{output_name}*-state"):
        doc = folder / "state.json"
        if not pattern.fullmatch(folder.name) or not folder.is_dir() or not doc.is_file():
            continue
        try:
            step = int(json.loads(doc.read_text(encoding="utf-8"))["step"])
        except (ValueError, KeyError, OSError):
            continue
        if step > best_step:
            best, best_step = folder, step
    return best
