"""Images to latents, safely: a half-precision VAE that overflows (the SDXL VAE does in fp16) is switched to
float32 and the batch encoded again, instead of training on NaN."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("lora_studio")


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, device, generator: torch.Generator | None = None,
                   scale_and_shift: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """Latents of ``pixels`` ([B, 3, H, W] in [-1, 1]) as ``(sample - shift) * scale`` (the model family's scale and
    shift); the same noise draw is used if it must retry."""
    state = generator.get_state() if generator is not None else None
    latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample(generator=generator)
    if not torch.isfinite(latents).all() and vae.dtype != torch.float32:
        log.warning("the VAE overflowed in %s (NaN/inf latents); encoding in float32 from now on (as no_half_vae)",
                    str(vae.dtype).replace("torch.", ""))
        vae.to(torch.float32)
        if state is not None:
            generator.set_state(state)
        latents = vae.encode(pixels.to(device, torch.float32)).latent_dist.sample(generator=generator)
    scale, shift = scale_and_shift
    return (latents - shift) * scale if shift else latents * scale
