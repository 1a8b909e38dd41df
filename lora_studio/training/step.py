"""One batch's loss, as the forward of the module accelerate prepares.

accelerate wraps the module that holds the trained parameters (DistributedDataParallel when there are several
processes): running the loss through that module's forward is what lets it synchronise the gradients in the backward
pass, skip the synchronisation while gradients accumulate, and find adapters that had no part in a loss.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..models.family import Components, Objective
from ..models.noise import NoiseRecipe
from .loss import LossOptions, denoising_loss
from .plan import images_per_vae_call
from .precision import Precision
from .te_cache import cached_condition
from .vae import encode_latents


class BatchLoss:
    """The denoising loss of a batch from the data loader, with the family's conditioning, noise and target."""

    def __init__(self, components: Components, objective: Objective, cfg: Config, device: torch.device,
                 precision: Precision, train_text_encoder: bool, te_cache: dict | None):
        self.components, self.family, self.objective = components, components.family, objective
        self.cfg, self.device, self.precision = cfg, device, precision
        self.train_text_encoder, self.te_cache = train_text_encoder, te_cache
        self.prompt_options = self.family.prompt_options(cfg)
        self.loss_options = LossOptions.from_config(cfg)

    def latents(self, batch: dict) -> torch.Tensor:
        if "latents" in batch:
            latents = batch["latents"].to(self.device, non_blocking=True)
        else:
            vae, pixels = self.components.vae, batch["pixels"]
            # vae_batch_size: encode in chunks of that many images (by default a megapixel's worth, at most 4)
            chunk = images_per_vae_call(self.cfg.vae_batch_size, pixels.shape[-1] * pixels.shape[-2])
            latents = torch.cat([encode_latents(vae, part, self.device, None, self.family.vae_scale_and_shift(vae))
                                 for part in pixels.split(chunk)])
        latents = latents.float()
        if self.cfg.channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last)
        return latents

    def condition(self, batch: dict) -> dict:
        if self.te_cache is not None:
            cond = cached_condition(self.te_cache, batch["captions"], self.device,
                                    getattr(self.family, "drop_cached_condition", None))
        else:
            with torch.set_grad_enabled(self.train_text_encoder), self.precision.autocast(self.device):
                cond = self.family.encode_prompt(self.components, batch["captions"], self.device, self.prompt_options,
                                                 weighted=self.cfg.weighted_captions)
        return self.family.add_image_conditioning(cond, batch, self.device)

    def __call__(self, batch: dict, timestep=None) -> torch.Tensor:
        """The batch's loss at random timesteps, or at ``timestep`` (one of the objective's validation points) for
        every image (validation)."""
        latents = self.latents(batch)
        cond = self.condition(batch)
        noise = self.objective.sample_noise(latents)
        if timestep is None:
            timesteps = self.objective.sample_timesteps(latents)
        else:
            timesteps = self.objective.fixed_timesteps(timestep, latents.shape[0], self.device)
        with self.precision.autocast(self.device):
            return denoising_loss(self.components, self.objective, latents, cond, batch["loss_weights"], noise,
                                  timesteps, self.loss_options, batch.get("masks"))


def noise_recipe(cfg: Config) -> NoiseRecipe:
    return NoiseRecipe(cfg.noise_offset, cfg.noise_offset_random_strength, cfg.adaptive_noise_scale,
                       cfg.multires_noise_iterations, cfg.multires_noise_discount, cfg.ip_noise_gamma,
                       cfg.ip_noise_gamma_random_strength, cfg.min_timestep, cfg.max_timestep)


class TrainingStep(nn.Module):
    """Holds the network (the only trained parameters); ``forward(batch)`` is the batch's loss. The frozen model is
    reached through the loss function, not registered here, so accelerate never copies or broadcasts it."""

    def __init__(self, network: nn.Module, loss: BatchLoss):
        super().__init__()
        self.network = network
        self._loss = [loss]  # a list keeps it out of the module tree
        cfg = loss.cfg
        # dynamo_mode reduce-overhead: the compiled denoiser replays CUDA graphs; each micro-batch starts a new
        # generation of them, so that the last one's outputs may be overwritten
        self._cudagraphs = bool(cfg.torch_compile and cfg.dynamo_mode == "reduce-overhead")

    def forward(self, batch: dict) -> torch.Tensor:
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._loss[0](batch)
