"""The training loss of one batch: the family's prediction against its target, weighted per image and per timestep.

What the model predicts and what it is compared with belong to the model family; how the difference becomes one
number (the loss function and its weights) is the same for every family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.family import Components
from ..models.noise import NoiseRecipe


def denoising_loss(components: Components, schedule, latents: torch.Tensor, cond: dict[str, torch.Tensor],
                   loss_weights: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   min_snr_gamma: float | None = None, recipe: NoiseRecipe = NoiseRecipe(),
                   debiased_estimation: bool = False) -> torch.Tensor:
    """Mean weighted MSE between the prediction and the target for the given noise and timesteps, weighted per
    image (loss_weights), then as sd-scripts does: Min-SNR-gamma, then debiased estimation."""
    family = components.family
    pred, target = family.prediction_and_target(components, schedule, latents, noise, timesteps, cond, recipe)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
    loss = loss * loss_weights.to(loss.device)
    if min_snr_gamma:
        loss = loss * family.min_snr_weights(schedule, timesteps, min_snr_gamma)
    if debiased_estimation:
        loss = loss * family.debiased_weights(schedule, timesteps)
    return loss.mean()
