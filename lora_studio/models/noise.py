"""sd-scripts' noise options for latent diffusion training, as it defines them (library/custom_train_functions.py
and train_util.get_noise_noisy_latents_and_timesteps): offset noise (with random strength and the adaptive scale),
multi-resolution (pyramid) noise, input perturbation noise (ip_noise_gamma) and the timestep range. A family's recipe
uses them where they mean what they mean for it."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseRecipe:
    offset: float = 0.0  # noise_offset
    offset_random_strength: bool = False  # noise_offset_random_strength: offset * U(0, 1) per batch
    adaptive_scale: float | None = None  # adaptive_noise_scale: + scale * |mean of each latent channel|
    multires_iterations: int | None = None  # multires_noise_iterations
    multires_discount: float = 0.3  # multires_noise_discount
    ip_gamma: float | None = None  # ip_noise_gamma: noise added to the model's input only, not to the target
    ip_gamma_random_strength: bool = False  # ip_noise_gamma * U(0, 1) per batch
    min_timestep: int | None = None  # timesteps are drawn from [min_timestep, max_timestep) (or are max_timestep)
    max_timestep: int | None = None


def offset_noise(latents: torch.Tensor, noise: torch.Tensor, recipe: NoiseRecipe) -> torch.Tensor:
    """noise + offset * N(0, 1) per image and channel; the offset drawn in [0, offset) with random strength, and
    raised by adaptive_scale * |channel mean of the latents| (never below 0)."""
    offset = recipe.offset
    if recipe.offset_random_strength:
        offset = torch.rand(1, device=latents.device) * offset
    if recipe.adaptive_scale is not None:
        channel_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(offset + recipe.adaptive_scale * channel_mean, min=0.0)
    return noise + offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), device=latents.device,
                                        dtype=latents.dtype)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise: the noise plus ever coarser noise (each level a random 2-4x smaller, weighted by
    discount**level, bilinearly upsampled), scaled back to unit standard deviation."""
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for level in range(iterations):
        r = random.random() * 2 + 2
        hn, wn = max(1, int(h / (r**level))), max(1, int(w / (r**level)))
        noise = noise + upsample(torch.randn(b, c, hn, wn, device=noise.device, dtype=noise.dtype)) * discount**level
        if hn == 1 or wn == 1:
            break  # the coarsest level is one pixel
    return noise / noise.std()


def training_noise(latents: torch.Tensor, recipe: NoiseRecipe, generator=None) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if recipe.offset:
        noise = offset_noise(latents, noise, recipe)
    if recipe.multires_iterations:
        noise = pyramid_noise(noise, recipe.multires_iterations, recipe.multires_discount)
    return noise


def timesteps_in_range(num_train_timesteps: int, batch_size: int, device, recipe: NoiseRecipe) -> torch.Tensor:
    low = recipe.min_timestep if recipe.min_timestep is not None else 0
    high = recipe.max_timestep if recipe.max_timestep is not None else num_train_timesteps
    if low >= high:  # min_timestep = max_timestep: that one timestep, as sd-scripts does
        return torch.full((batch_size,), high, device=device, dtype=torch.long)
    return torch.randint(low, high, (batch_size,), device=device)


def input_noise(noise: torch.Tensor, recipe: NoiseRecipe) -> torch.Tensor:
    """The noise that goes into the model's input: with ip_noise_gamma, noise + gamma * N(0, 1); the target keeps
    the plain noise."""
    if not recipe.ip_gamma:
        return noise
    gamma = recipe.ip_gamma
    if recipe.ip_gamma_random_strength:
        gamma = torch.rand(1, device=noise.device) * gamma
    return noise + gamma * torch.randn_like(noise)
