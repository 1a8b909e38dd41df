"""Batches as tensors: the map-style dataset a DataLoader reads during training."""

from __future__ import annotations

import torch

from .dataset import Entry, TrainingData


class EpochBatches(torch.utils.data.Dataset):
    """The batches one process trains in one epoch, as a map-style dataset (a DataLoader worker loads each)."""

    def __init__(self, data: TrainingData, batches: list[list[Entry]], epoch: int, rank: int,
                 latents: dict[Entry, torch.Tensor] | None, start: int = 0):
        self.data, self.batches, self.epoch = data, batches, epoch
        self.rank, self.latents, self.start = rank, latents, start  # start: batches already trained (resume)

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __getitem__(self, position: int) -> dict:
        index = position + self.start  # captions are keyed by the batch's place in the whole epoch
        entries = self.batches[index]
        batch = {
            "captions": [self.data.caption_for(i, self.epoch, (self.rank, index, k))
                         for k, (i, _) in enumerate(entries)],
            "loss_weights": torch.tensor([self.data.loss_weight(i) for i, _ in entries], dtype=torch.float32),
            "time_ids": torch.tensor([self.data.size_conditioning(i) for i, _ in entries], dtype=torch.float32),
        }
        if self.latents is not None:
            batch["latents"] = torch.stack([self.latents[e] for e in entries])
        else:
            batch["pixels"] = torch.stack([torch.from_numpy(self.data.pixels(i, flip)) for i, flip in entries])
        return batch
