"""The training loss of one batch: the family's prediction against its target, weighted per image and per timestep.

What the model predicts and what it is compared with belong to the family's objective (and so do the weights that
depend on the timestep: SNR weights for DDPM, the weighting scheme for flow matching); how the difference becomes one
number (the loss function) is the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.family import Components, Objective

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")


@dataclass(frozen=True)
class LossOptions:
    """sd-scripts' loss settings: the loss function and the weights applied after it, in sd-scripts' order."""
    loss_type: str = "l2"
    huber_c: float = 0.1
    huber_schedule: str = "snr"
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation: bool = False

    @classmethod
    def from_config(cls, cfg) -> LossOptions:
        return cls(cfg.loss_type, cfg.huber_c, cfg.huber_schedule, cfg.huber_scale, cfg.min_snr_gamma,
                   cfg.scale_v_pred_loss_like_noise_pred, cfg.v_pred_like_loss, cfg.debiased_estimation_loss)


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """sd-scripts' conditional_loss without reduction. huber: 2c(sqrt(d^2 + c^2) - c); smooth_l1: the same / c, with
    a threshold c per image (its timestep's)."""
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = huber_c.view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c ** 2) - c
    return 2 * c * root if loss_type == "huber" else 2 * root


def denoising_loss(components: Components, objective: Objective, latents: torch.Tensor, cond: dict[str, torch.Tensor],
                   loss_weights: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   options: LossOptions = LossOptions(), masks: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over the batch of the per-image loss, weighted per image (loss_weights), then by the objective's
    weights (``Objective.loss_weights``: for DDPM Min-SNR-gamma, scale_v_pred_loss_like_noise_pred, v_pred_like_loss,
    debiased estimation, in sd-scripts' order).

    ``masks`` ([B, 1, h, w] at the latents' size, in [0, 1]): masked_loss / alpha_mask, as sd-scripts applies them:
    each latent pixel's loss times its mask, then the mean over all pixels (so a half-masked image weighs half)."""
    pred, target = objective.prediction_and_target(components, latents, noise, timesteps, cond)
    huber_c = None
    if options.loss_type in ("huber", "smooth_l1"):
        huber_c = objective.huber_thresholds(timesteps, options.huber_c, options.huber_schedule,
                                             options.huber_scale).to(pred.device)
    loss = elementwise_loss(pred.float(), target.float(), options.loss_type, huber_c)
    if masks is not None:
        loss = loss * masks.to(loss.device, loss.dtype)
    loss = loss.mean(dim=list(range(1, pred.ndim)))
    loss = loss * loss_weights.to(loss.device)
    weights = objective.loss_weights(timesteps, options)
    if weights is not None:
        loss = loss * weights.to(loss.device)
    return loss.mean()
