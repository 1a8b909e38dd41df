"""The denoising loss of one batch: noise, timesteps, target (epsilon or v), offset noise and Min-SNR weighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    if v_prediction:
        return clipped / (snr + 1)
    return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.ones_like(snr))  # zero terminal SNR: 1


def denoising_loss(unet, scheduler, latents: torch.Tensor, cond: dict[str, torch.Tensor],
                   loss_weights: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """Mean weighted MSE between the UNet's prediction and the target for the given noise and timesteps."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    model_dtype = unet.dtype
    hidden = cond["encoder_hidden_states"].to(model_dtype)
    extra = {k: v for k, v in cond.items() if k != "encoder_hidden_states"}
    pred = unet(noisy.to(model_dtype), timesteps, encoder_hidden_states=hidden, return_dict=False,
                **({"added_cond_kwargs": extra} if extra else {}))[0]
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    loss = loss * loss_weights.to(loss.device)
    if min_snr_gamma:
        loss = loss * min_snr_weight(scheduler, timesteps, min_snr_gamma, v_prediction)
    return loss.mean()


def sample_noise(latents: torch.Tensor, noise_offset: float, generator=None) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                             device=latents.device, dtype=latents.dtype)
        noise = noise + noise_offset * offset
    return noise
