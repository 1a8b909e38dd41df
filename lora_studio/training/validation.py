"""The validation loss (sd-scripts' validation_split and validate_* settings), and what it decides: which weights
are the best so far (save_best) and when the run stops improving (early_stop_patience).

As sd-scripts measures it: every held-out batch at the objective's fixed points (DDPM: 4 timesteps spread over
[min_timestep, max_timestep]; flow matching: fixed sigmas), with the random state seeded by validation_seed (else the
seed) for the evaluation, so the same weights always give the same number; the training's random state is set aside
and restored.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from ..config import Config
from ..data.dataset import TrainingData
from ..data.loader import make_batch


class Validation:
    """Measures the loss of the held-out images with the network as it is now."""

    def __init__(self, cfg: Config, data: TrainingData, latents, batch_loss, seed: int, total_steps: int):
        self.cfg, self.data, self.latents, self.batch_loss = cfg, data, latents, batch_loss
        self.batches = data.validation_batches()[:cfg.max_validation_steps or None]
        self.timesteps = list(batch_loss.objective.validation_points)
        self.seed = cfg.validation_seed if cfg.validation_seed is not None else seed
        self.total_steps = total_steps

    @property
    def enabled(self) -> bool:
        return bool(self.batches)

    def due_at_epoch_end(self, epoch: int) -> bool:
        every = self.cfg.validate_every_n_epochs
        return self.enabled and (every is None or epoch % every == 0)

    def due_at_step(self, step: int) -> bool:
        every = self.cfg.validate_every_n_steps
        return self.enabled and every is not None and step % every == 0

    @torch.no_grad()
    def measure(self) -> float:
        """The mean loss over the held-out batches x the fixed timesteps."""
        python_state = random.getstate()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                random.seed(self.seed)
                total, count = 0.0, 0
                for k, entries in enumerate(self.batches):
                    batch = make_batch(self.data, entries, self.latents, 1, (-1, k), self.total_steps,
                                       self.total_steps, vary=False)
                    for t in self.timesteps:
                        total += float(self.batch_loss(batch, timestep=t))
                        count += 1
        finally:
            random.setstate(python_state)
        return total / count


@dataclass
class BestTracker:
    """The lowest validation loss so far and how many evaluations have passed without improving on it by at least
    ``min_delta``; ``patience`` of those ends the run (None: never)."""
    patience: int | None = None
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    best_step: int = 0
    since_best: int = 0

    def update(self, loss: float, epoch: int, step: int) -> bool:
        """Record a validation; True when it is a new best."""
        if loss < self.best - self.min_delta or (math.isinf(self.best) and math.isfinite(loss)):
            self.best, self.best_epoch, self.best_step, self.since_best = loss, epoch, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.since_best >= self.patience

    def stop_reason(self) -> str:
        return (f"early stop: {self.since_best} validations without an improvement of at least {self.min_delta:g} "
                f"(best {self.best:.6g} at epoch {self.best_epoch}, step {self.best_step})")

    def as_dict(self) -> dict:
        return {"best": self.best if math.isfinite(self.best) else None, "best_epoch": self.best_epoch,
                "best_step": self.best_step, "since_best": self.since_best}

    def restore(self, saved: dict | None) -> None:
        if saved:
            self.best = math.inf if saved["best"] is None else float(saved["best"])
            self.best_epoch, self.best_step = int(saved["best_epoch"]), int(saved["best_step"])
            self.since_best = int(saved["since_best"])
