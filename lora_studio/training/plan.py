"""How many steps and epochs a run takes: one function, used by the engine and by the GUI before a start."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class StepPlan:
    batches_per_epoch: int  # all processes together
    steps_per_epoch: int  # optimizer steps of one epoch (per process, after gradient accumulation)
    total_steps: int
    total_epochs: int

    def describe(self) -> str:
        return (f"{self.total_steps} steps = {self.total_epochs} epoch(s) of {self.steps_per_epoch} step(s) "
                f"({self.batches_per_epoch} batches per epoch)")


def plan_steps(batches_per_epoch: int, cfg: Config, world: int = 1) -> StepPlan:
    per_process = math.ceil(batches_per_epoch / world)
    steps_per_epoch = math.ceil(per_process / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_train_epochs * steps_per_epoch if cfg.max_train_epochs else cfg.max_train_steps
    total_epochs = math.ceil(total_steps / steps_per_epoch)
    return StepPlan(batches_per_epoch, steps_per_epoch, total_steps, total_epochs)


def warmup_steps(cfg: Config, total_steps: int) -> int:
    """lr_warmup_steps as steps: a number up to 1 (a float) is a share of the run, as sd-scripts reads it."""
    value = cfg.lr_warmup_steps or 0
    return int(math.ceil(value * total_steps)) if isinstance(value, float) and value <= 1 else int(value)


# Images the VAE encodes at once when vae_batch_size is not set: up to 4, and no more than a megapixel together, so
# that caching latents at 1024 px (one image a call) never needs more memory than training (the SDXL VAE's encoder
# holds about 1.6 GiB a megapixel in half precision, measured on an H200).
VAE_BATCH_IMAGES, VAE_BATCH_PIXELS = 4, 1024 * 1024


def images_per_vae_call(vae_batch_size: int | None, pixels: int) -> int:
    """``vae_batch_size``, or the default for images of ``pixels`` pixels each."""
    if vae_batch_size:
        return vae_batch_size
    return max(1, min(VAE_BATCH_IMAGES, VAE_BATCH_PIXELS // max(pixels, 1)))
