"""Where a run writes its files (no torch: the GUI uses these names to follow a run)."""

from __future__ import annotations

from pathlib import Path

from ..config import Config


def output_paths(cfg: Config) -> dict[str, Path]:
    out = Path(cfg.output_dir)
    name = cfg.output_name
    return {"final": out / f"{name}.safetensors", "config": out / f"{name}_config.toml",
            "events": out / f"{name}_events.jsonl", "samples": out / "sample", "stop": out / f"{name}.stop"}


def epoch_file(cfg: Config, epoch: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.output_name}-{epoch:06d}.safetensors"


def step_file(cfg: Config, step: int) -> Path:
    return Path(cfg.output_dir) / f"{cfg.output_name}-step{step:08d}.safetensors"
