"""Batches as tensors: the map-style dataset a DataLoader reads during training."""

from __future__ import annotations

import logging
import multiprocessing
import os

import torch

from .dataset import Entry, TrainingData, shard_batches
from .latent_cache import LatentCache


class EpochBatches(torch.utils.data.Dataset):
    """The batches one process trains in the current epoch, as a map-style dataset (a DataLoader worker loads each).

    The epoch and the first batch (after a resume) are shared with the loader's worker processes, which plan the
    epoch's batches themselves (the plan is fixed by seed and epoch): so persistent workers
    (``persistent_data_loader_workers``) serve every epoch without being started again."""

    def __init__(self, data: TrainingData, rank: int, world: int, latents: LatentCache | None,
                 steps_per_epoch: int = 1, accumulation: int = 1, total_steps: int = 0):
        self.data, self.rank, self.world, self.latents = data, rank, world, latents
        # where a batch falls in the run (caption token warm-up counts optimizer steps)
        self.steps_per_epoch, self.accumulation, self.total_steps = steps_per_epoch, accumulation, total_steps
        self._epoch = multiprocessing.RawValue("i", 0)
        self._start = multiprocessing.RawValue("i", 0)  # batches of the epoch already trained (resume)
        self._plan: tuple[int | None, list[list[Entry]]] = (None, [])

    def use_epoch(self, epoch: int, start: int = 0) -> None:
        """(Not named set_epoch: accelerate's loader calls a dataset's set_epoch with its own count.)"""
        self._epoch.value, self._start.value = epoch, start

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def batches(self) -> list[list[Entry]]:
        epoch = self.epoch
        if self._plan[0] != epoch:
            self._plan = (epoch, shard_batches(self.data.plan_epoch(epoch), self.rank, self.world))
        return self._plan[1]

    def __len__(self) -> int:
        return len(self.batches()) - self._start.value

    def __getitem__(self, position: int) -> dict:
        index = position + self._start.value  # captions are keyed by the batch's place in the whole epoch
        step = (self.epoch - 1) * self.steps_per_epoch + index // self.accumulation
        return make_batch(self.data, self.batches()[index], self.latents, self.epoch, (self.rank, index), step,
                          self.total_steps)


def make_batch(data: TrainingData, entries: list[Entry], latents: LatentCache | None, epoch: int,
               place: tuple[int, ...], step: int, total_steps: int, vary: bool = True) -> dict:
    """One batch as tensors. ``place`` (with each entry's position) keys its random draws; ``vary`` = False draws
    nothing at random (validation: plain captions, centre crops, no colour change)."""
    places = [(*place, k) for k in range(len(entries))]
    draws = [data.draw_rng(i, epoch, where) if vary else None for (i, _), where in zip(entries, places)]
    origins = [data.crop_origin(i, rng) for (i, _), rng in zip(entries, draws)]
    batch = {
        "captions": [data.caption_for(i, epoch, where, step, total_steps) if vary else data.fixed_caption(i)
                     for (i, _), where in zip(entries, places)],
        "loss_weights": torch.tensor([data.loss_weight(i) for i, _ in entries], dtype=torch.float32),
        "time_ids": torch.tensor([data.size_conditioning(i, flip, origin) for (i, flip), origin
                                  in zip(entries, origins)], dtype=torch.float32),
    }
    if latents is not None:  # cached latents are never random-cropped or colour-augmented
        batch["latents"] = torch.stack([latents[e] for e in entries])
        if data.uses_masks:
            batch["masks"] = torch.stack([latents.masks[e] for e in entries]).unsqueeze(1)
    else:
        batch["pixels"] = torch.stack([torch.from_numpy(data.pixels(i, flip, origin, rng))
                                       for (i, flip), origin, rng in zip(entries, origins, draws)])
        if data.uses_masks:
            batch["masks"] = torch.stack([torch.from_numpy(data.mask(i, flip, origin))
                                          for (i, flip), origin in zip(entries, origins)]).unsqueeze(1)
    return batch


def worker_started(worker_id: int) -> None:
    """A DataLoader worker's first act: say so (persistent workers start once per run, others once per epoch)."""
    logging.getLogger("lora_studio").info("data loader worker %d started (process %d)", worker_id, os.getpid())
