"""The DDPM objective of the Stable Diffusion families (SD1.x, SD2.x, SDXL), as sd-scripts trains them: whole-number
timesteps of a 1000-step scaled-linear schedule, epsilon or v prediction, sd-scripts' noise options (offset,
multires, input perturbation) and its SNR-based loss weights (min-SNR-gamma, v-pred-like loss, debiased estimation)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .family import Components, Objective
from .noise import NoiseRecipe, input_noise, timesteps_in_range, training_noise

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' NUM_VALIDATION_TIMESTEPS: 200, 400, 600, 800 of 1000


def validation_timesteps(min_timestep: int | None, max_timestep: int | None, num_train_timesteps: int) -> list[int]:
    low = 0 if min_timestep is None else min_timestep
    high = num_train_timesteps if max_timestep is None else max_timestep
    return [int(t) for t in np.linspace(low, high, NUM_VALIDATION_TIMESTEPS + 2, dtype=int)[1:-1]]


class DDPMObjective(Objective):
    """``schedule``: the diffusers DDPMScheduler of the run (its prediction type and betas)."""

    def __init__(self, schedule, recipe: NoiseRecipe = NoiseRecipe()):
        self.schedule, self.recipe = schedule, recipe
        self.validation_points = validation_timesteps(recipe.min_timestep, recipe.max_timestep,
                                                      schedule.config.num_train_timesteps)

    @classmethod
    def for_model(cls, components: Components, v_parameterization: bool = False, zero_terminal_snr: bool = False,
                  recipe: NoiseRecipe = NoiseRecipe()) -> DDPMObjective:
        """The schedule of ``components``' scheduler config with the run's prediction type (which sample images
        then use too)."""
        from diffusers import DDPMScheduler

        family = components.family
        if v_parameterization and not getattr(family, "v_prediction_models", True):
            import logging

            logging.getLogger("lora_studio").warning(
                "v_parameterization with an %s model: no %s base predicts v (sd-scripts warns the same); train with it "
                "only if yours does", family.title, family.title)
        components.scheduler_config.update(prediction_type="v_prediction" if v_parameterization else "epsilon")
        if zero_terminal_snr:
            components.scheduler_config["rescale_betas_zero_snr"] = True
        return cls(DDPMScheduler.from_config(components.scheduler_config), recipe)

    @property
    def v_prediction(self) -> bool:
        return self.schedule.config.prediction_type == "v_prediction"

    def sample_noise(self, latents, generator=None):
        return training_noise(latents, self.recipe, generator)

    def sample_timesteps(self, latents):
        return timesteps_in_range(self.schedule.config.num_train_timesteps, latents.shape[0], latents.device,
                                  self.recipe)

    def fixed_timesteps(self, point, batch_size, device):
        return torch.full((batch_size,), int(point), dtype=torch.long, device=device)

    def prediction_and_target(self, components, latents, noise, timesteps, cond):
        from .fp8 import compute_dtype

        unet, schedule = components.denoiser, self.schedule
        noisy = schedule.add_noise(latents, input_noise(noise, self.recipe), timesteps)
        dtype = compute_dtype(unet)  # the mixed precision, also when fp8_base stores the weights in float8
        extra = {k: v for k, v in cond.items() if k != "encoder_hidden_states"}
        pred = unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                    return_dict=False, **({"added_cond_kwargs": extra} if extra else {}))[0]
        if self.v_prediction:
            return pred, schedule.get_velocity(latents, noise, timesteps)
        return pred, noise

    def loss_weights(self, timesteps, options):
        """sd-scripts' order: Min-SNR-gamma, scale_v_pred_loss_like_noise_pred, v_pred_like_loss (added:
        loss + loss / scale * weight), debiased estimation."""
        weight = None

        def times(factor):
            return factor if weight is None else weight * factor
        if options.min_snr_gamma:
            weight = times(self.min_snr_weights(timesteps, options.min_snr_gamma))
        if options.scale_v_pred_loss_like_noise_pred:
            weight = times(self.snr_scale(timesteps))
        if options.v_pred_like_loss:
            weight = times(1 + options.v_pred_like_loss / self.snr_scale(timesteps))
        if options.debiased_estimation:
            weight = times(self.debiased_weights(timesteps))
        return weight

    def _snr(self, timesteps):
        alphas_cumprod = self.schedule.alphas_cumprod.to(timesteps.device)[timesteps].float()
        return alphas_cumprod / (1 - alphas_cumprod)

    def min_snr_weights(self, timesteps, gamma: float):
        """Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction."""
        snr = self._snr(timesteps)
        clipped = torch.clamp(snr, max=gamma)
        if self.v_prediction:
            return clipped / (snr + 1)
        return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.ones_like(snr))  # zero terminal SNR: 1

    def snr_scale(self, timesteps):
        """SNR / (SNR + 1), SNR capped at 1000: sd-scripts' scale for scale_v_pred_loss_like_noise_pred (the loss
        times it) and v_pred_like_loss (the loss divided by it, times the weight, added)."""
        snr = torch.clamp(self._snr(timesteps), max=1000.0)
        return snr / (snr + 1)

    def huber_thresholds(self, timesteps, c, kind, scale):
        """sd-scripts' Huber threshold for each image's timestep t: constant c x scale; exponential
        exp(-alpha t) x scale with alpha = -ln(c) / T (c at the last timestep, 1 at the first); snr
        (1 - c) / (1 + sigma)^2 + c with sigma = sqrt((1 - alpha_bar) / alpha_bar) (huber_scale not used, as in
        sd-scripts)."""
        if kind == "constant":
            return torch.full((len(timesteps),), c * scale, device=timesteps.device)
        if kind == "exponential":
            alpha = -math.log(c) / self.schedule.config.num_train_timesteps
            return torch.exp(-alpha * timesteps.float()) * scale
        alpha_bar = self.schedule.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1.0 - alpha_bar) / alpha_bar) ** 0.5
        return (1 - c) / (1 + sigmas) ** 2 + c

    def debiased_weights(self, timesteps):
        """sd-scripts' debiased estimation: 1 / sqrt(SNR), or 1 / (SNR + 1) for v-prediction, SNR capped at 1000
        (timestep 0 has an infinite SNR)."""
        snr = torch.clamp(self._snr(timesteps), max=1000.0)
        if self.v_prediction:
            return 1 / (snr + 1)
        return 1 / torch.sqrt(snr)
