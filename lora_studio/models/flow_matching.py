"""The rectified-flow training and sampling recipe of Flux.1 (dev, schnell) and Chroma, as kohya-ss/sd-scripts
implements it (library/flux_train_utils.py, library/flux_utils.py, flux_train_network.py), written as pure functions.

Conventions (sd-scripts' Flux path): sigma in (0, 1] is the noise level, the model input is
x_t = (1 - sigma) * x0 + sigma * eps, sd-scripts' "timesteps" are sigma * 1000 (the model itself gets sigma), and the
training target is the velocity eps - x0. Sampling walks sigma from 1 down to 0 with Euler steps along the predicted
velocity. Latents are (B, C, H, W) with H, W the latent sizes (pixels / 8); the transformer sees them packed in 2x2
patches, so a latent of H x W is (H/2) * (W/2) "packed tokens".

Every random draw takes an optional torch.Generator so that a fixed seed gives the same numbers; draws are made on
the generator's device (the CPU without one) and then moved to the requested device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000  # sd-scripts builds its scheduler with 1000 train timesteps; timesteps = sigma * 1000
TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift", "nextdit_shift")
WEIGHTING_SCHEMES = ("uniform", "none", "logit_normal", "mode", "cosmap", "sigma_sqrt")
PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
SIGMA_FLOOR = 1e-7  # draws are kept above 0 so that sigma**-2 weighting and time_shift stay finite

# BFL's resolution-dependent shift: mu grows linearly with the packed token count, 0.5 at 256 tokens (256 px images)
# and 1.15 at 4096 tokens (1024 px), as sd-scripts' get_lin_function defaults and BFL's get_schedule.
BASE_SHIFT_TOKENS, BASE_SHIFT_MU = 256, 0.5
MAX_SHIFT_TOKENS, MAX_SHIFT_MU = 4096, 1.15


@dataclass(frozen=True)
class FlowRecipe:
    """sd-scripts' Flux/Chroma timestep and prediction options (flux_train_utils.add_flux_train_arguments and
    train_util.add_dit_training_arguments). The defaults are sd-scripts' defaults; for Chroma its docs recommend
    timestep_sampling "sigmoid" with model_prediction_type "raw", for Flux dev "shift" 3.1582 or "flux_shift" with
    "raw"."""

    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0  # scales the normal draw of sigmoid / shift / flux_shift (larger: closer to uniform)
    discrete_flow_shift: float = 3.0  # used by "shift" and, through the scheduler's table, by "sigma"
    weighting_scheme: str = "uniform"  # density of u for "sigma" sampling and loss weighting for "sigma_scaled"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    model_prediction_type: str = "sigma_scaled"
    min_timestep: int | None = None  # timestep range in 0..1000 (sigma * 1000); see limit_to_timestep_range
    max_timestep: int | None = None
    ip_noise_gamma: float | None = None  # input perturbation: the model input gets extra noise, the target does not
    ip_noise_gamma_random_strength: bool = False  # gamma * U(0, 1), one draw per batch

    def __post_init__(self):
        _require_choice("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLINGS)
        _require_choice("weighting_scheme", self.weighting_scheme, WEIGHTING_SCHEMES)
        _require_choice("model_prediction_type", self.model_prediction_type, PREDICTION_TYPES)
        low, high = self.timestep_range()
        if not 0 <= low <= high <= NUM_TRAIN_TIMESTEPS or high == 0:
            raise ValueError(f"timestep range must satisfy 0 <= min <= max <= {NUM_TRAIN_TIMESTEPS} and max > 0, "
                             f"got min_timestep={self.min_timestep}, max_timestep={self.max_timestep}")
        if self.discrete_flow_shift <= 0:
            raise ValueError(f"discrete_flow_shift must be positive, got {self.discrete_flow_shift}")

    def timestep_range(self) -> tuple[int, int]:
        """(min, max) in timestep units, defaulting to the whole 0..1000."""
        low = 0 if self.min_timestep is None else self.min_timestep
        high = NUM_TRAIN_TIMESTEPS if self.max_timestep is None else self.max_timestep
        return low, high

    def limits_timesteps(self) -> bool:
        return self.min_timestep is not None or self.max_timestep is not None


def _require_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Shifts and the scheduler table


def discrete_shift(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's constant shift s*t / (1 + (s-1)*t): moves sigma towards 1 (more noise) for s > 1. Used by the "shift"
    sampler and by FlowMatchEulerDiscreteScheduler's table."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def shift_mu(packed_tokens: float) -> float:
    """BFL's mu for an image of packed_tokens 2x2 patches: the line through (256, 0.5) and (4096, 1.15)."""
    slope = (MAX_SHIFT_MU - BASE_SHIFT_MU) / (MAX_SHIFT_TOKENS - BASE_SHIFT_TOKENS)
    return BASE_SHIFT_MU + slope * (packed_tokens - BASE_SHIFT_TOKENS)


def time_shift(mu: float, sigmas: torch.Tensor) -> torch.Tensor:
    """BFL's time_shift with exponent 1: e^mu / (e^mu + 1/t - 1), the same as discrete_shift with s = e^mu.
    Written in the discrete form so that t = 0 gives 0 without dividing by zero."""
    return discrete_shift(sigmas, math.exp(mu))


def packed_token_count(latent_height: int, latent_width: int) -> int:
    """(h // 2) * (w // 2): the transformer's image tokens for a latent of h x w, as sd-scripts' flux_shift uses."""
    return (latent_height // 2) * (latent_width // 2)


def scheduler_sigma_table(shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The sigmas of FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift) as sd-scripts builds it for training
    (its own copy in library/sd3_train_utils.py, same as diffusers'): t = N, N-1, ..., 1 over N, then shifted.
    Descending from 1 to shift(1/N); float32, computed in the same order so the values match bit for bit."""
    steps = torch.arange(num_train_timesteps, 0, -1, dtype=torch.float32)
    return discrete_shift(steps / num_train_timesteps, shift)


# ---------------------------------------------------------------------------------------------------------------
# Training: sigma draws


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _normal(size: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(size, generator=generator, device=_draw_device(generator), dtype=torch.float32)


def _uniform(size: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(size, generator=generator, device=_draw_device(generator), dtype=torch.float32)


def density_draws(recipe: FlowRecipe, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """u in [0, 1] from the weighting scheme's density, as SD3's compute_density_for_timestep_sampling (diffusers
    training_utils, copied in sd-scripts): logit_normal = sigmoid(N(logit_mean, logit_std)); mode = 1 - u -
    mode_scale * (cos(pi u / 2)^2 - 1 + u) for u ~ U(0, 1); every other scheme U(0, 1)."""
    if recipe.weighting_scheme == "logit_normal":
        return torch.sigmoid(recipe.logit_mean + recipe.logit_std * _normal(batch_size, generator))
    u = _uniform(batch_size, generator)
    if recipe.weighting_scheme == "mode":
        return 1 - u - recipe.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def _table_sigmas(recipe: FlowRecipe, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """The "sigma" sampler: index the scheduler's descending table with floor(u * 1000), so u near 0 picks sigma
    near 1 (a larger u, e.g. logit_mean > 0, means LESS noise). With a timestep range only the table entries whose
    timestep (sigma * 1000) lies in it are indexed, u spread over them."""
    table = scheduler_sigma_table(recipe.discrete_flow_shift)
    first, count = 0, len(table)
    if recipe.limits_timesteps():
        low, high = recipe.timestep_range()
        inside = ((table * NUM_TRAIN_TIMESTEPS >= low) & (table * NUM_TRAIN_TIMESTEPS <= high)).nonzero().flatten()
        if len(inside) == 0:
            raise ValueError(f"no scheduler sigma (shift {recipe.discrete_flow_shift}) has a timestep in "
                             f"[{low}, {high}]; widen min_timestep / max_timestep")
        first, count = int(inside[0]), len(inside)
    u = density_draws(recipe, batch_size, generator)
    indices = first + (u * count).long().clamp(0, count - 1)  # the "mode" density can return exactly 1
    return table.to(u.device)[indices]


def _logit_normal_sigmas(recipe: FlowRecipe, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.sigmoid(recipe.sigmoid_scale * _normal(batch_size, generator))


def limit_to_timestep_range(sigmas: torch.Tensor, recipe: FlowRecipe) -> torch.Tensor:
    """Squeeze continuous sigma draws linearly into [min_timestep, max_timestep] / 1000 (keeping the distribution's
    shape), as SD3's sampler (sd3_train_utils) and musubi-tuner's flow samplers do. sd-scripts' Flux sampler (at
    48d368fa) ignores --min_timestep/--max_timestep; without them set this changes nothing."""
    if not recipe.limits_timesteps():
        return sigmas
    low, high = recipe.timestep_range()
    return low / NUM_TRAIN_TIMESTEPS + sigmas * ((high - low) / NUM_TRAIN_TIMESTEPS)


def sample_sigmas(recipe: FlowRecipe, batch_size: int, latent_height: int, latent_width: int,
                  device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """One training sigma per image, float32 (B,), in (0, 1], drawn as sd-scripts' get_noisy_model_input_and_timesteps:
    - uniform: U(0, 1)
    - sigmoid: sigmoid(sigmoid_scale * N(0, 1)) (logit-normal, x-flux style)
    - shift: that sigmoid draw, then discrete_shift with discrete_flow_shift
    - flux_shift: that sigmoid draw, then time_shift with mu of the packed token count (h/2)*(w/2)
    - nextdit_shift (Lumina 2, sd-scripts' lumina_train_util): a uniform draw, then that same time_shift
    - sigma (sd-scripts' default): the scheduler table (shift = discrete_flow_shift) indexed by the weighting
      scheme's density, so discrete_flow_shift shifts it too although sd-scripts' docs say it is for "shift" only.
    A timestep range (min/max_timestep) then narrows the draw (limit_to_timestep_range; for "sigma" the table)."""
    mode = recipe.timestep_sampling
    if mode == "sigma":
        sigmas = _table_sigmas(recipe, batch_size, generator)
    else:
        if mode in ("uniform", "nextdit_shift"):
            sigmas = _uniform(batch_size, generator)
        else:
            sigmas = _logit_normal_sigmas(recipe, batch_size, generator)
        if mode == "shift":
            sigmas = discrete_shift(sigmas, recipe.discrete_flow_shift)
        elif mode in ("flux_shift", "nextdit_shift"):
            sigmas = time_shift(shift_mu(packed_token_count(latent_height, latent_width)), sigmas)
        sigmas = limit_to_timestep_range(sigmas, recipe)
    return sigmas.clamp(SIGMA_FLOOR, 1.0).to(device=device, dtype=torch.float32)


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """sd-scripts' "timesteps" (sigma * 1000): what it logs and what Chroma's and Flux's forward divide back by 1000."""
    return sigmas * NUM_TRAIN_TIMESTEPS


# ---------------------------------------------------------------------------------------------------------------
# Training: model input, target, prediction type, weighting


def _per_image(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sigmas (B,) shaped (B, 1, 1, ...) to broadcast over `like`, in its dtype and device."""
    return sigmas.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The rectified-flow forward process x_t = (1 - sigma) * x0 + sigma * eps, one sigma per image."""
    s = _per_image(sigmas, latents)
    return (1 - s) * latents + s * noise


def ip_noise_strength(recipe: FlowRecipe, generator: torch.Generator | None = None) -> float:
    """ip_noise_gamma, or gamma * U(0, 1) (one draw per batch) with random strength; 0 when unset."""
    if not recipe.ip_noise_gamma:
        return 0.0
    if recipe.ip_noise_gamma_random_strength:
        return float(_uniform(1, generator)[0]) * recipe.ip_noise_gamma
    return float(recipe.ip_noise_gamma)


def model_input(recipe: FlowRecipe, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The transformer's noisy input. With ip_noise_gamma the noise term becomes noise + gamma * xi (xi ~ N(0, 1)),
    as sd-scripts' Flux path does; the training target stays velocity_target(latents, noise) with the plain noise."""
    gamma = ip_noise_strength(recipe, generator)
    if gamma:
        xi = torch.randn(latents.shape, generator=generator, device=_draw_device(generator), dtype=latents.dtype)
        noise = noise + gamma * xi.to(latents.device)
    return noisy_latents(latents, noise, sigmas)


def velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target of Flux and Chroma in sd-scripts: eps - x0 (d x_t / d sigma)."""
    return noise - latents


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """SD3's per-image loss weights (compute_loss_weighting_for_sd3): sigma_sqrt = sigma^-2,
    cosmap = 2 / (pi * (1 - 2 sigma + 2 sigma^2)), every other scheme 1. Float32 (B,)."""
    _require_choice("weighting_scheme", scheme, WEIGHTING_SCHEMES)
    sigmas = sigmas.float()
    if scheme == "sigma_sqrt":
        return sigmas ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas ** 2))
    return torch.ones_like(sigmas)


def apply_prediction_type(kind: str, model_pred: torch.Tensor, noisy: torch.Tensor, sigmas: torch.Tensor,
                          weighting_scheme: str = "uniform") -> tuple[torch.Tensor, torch.Tensor | None]:
    """What sd-scripts' apply_model_prediction_type does with the transformer's output before the loss:
    - raw: the output as is (a velocity, compared with eps - x0); no weighting.
    - additive: output + x_t.
    - sigma_scaled (sd-scripts' Flux default): output * (-sigma) + x_t, i.e. SD3's preconditioning to an x0
      estimate, plus loss_weighting(weighting_scheme) per image (B,).
    Note (reference sheet, from reading sd-scripts): Flux still uses the velocity target with sigma_scaled and
    additive, so those pair an x0-like estimate with a velocity target; "raw" is the consistent choice."""
    _require_choice("model_prediction_type", kind, PREDICTION_TYPES)
    if kind == "raw":
        return model_pred, None
    if kind == "additive":
        return model_pred + noisy, None
    return model_pred * (-_per_image(sigmas, model_pred)) + noisy, loss_weighting(weighting_scheme, sigmas)


def validation_sigmas(count: int = 4, min_timestep: int | None = None, max_timestep: int | None = None
                      ) -> torch.Tensor:
    """Fixed sigmas for a deterministic validation loss: `count` whole timesteps evenly inside the timestep range,
    both ends excluded, over 1000 — for count 4 and the full range 0.2, 0.4, 0.6, 0.8 — the list sd-scripts'
    train_network builds (NUM_VALIDATION_TIMESTEPS = 4). (sd-scripts passes them through min/max_timestep, which its
    Flux sampler ignores, so its Flux validation sigmas are in fact random; these are not.)"""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    low = 0 if min_timestep is None else min_timestep
    high = NUM_TRAIN_TIMESTEPS if max_timestep is None else max_timestep
    timesteps = [low + (index * (high - low)) // (count + 1) for index in range(1, count + 1)]
    return torch.tensor(timesteps, dtype=torch.float32) / NUM_TRAIN_TIMESTEPS


# ---------------------------------------------------------------------------------------------------------------
# Inference


def sampling_sigmas(steps: int, packed_tokens: int, shift: bool) -> list[float]:
    """steps + 1 sigmas from 1 down to 0 (BFL's and sd-scripts' get_schedule): linspace(1, 0, steps + 1), time-shifted
    with mu = shift_mu(packed_tokens) when `shift` (Flux dev, Chroma), unshifted for schnell."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = torch.linspace(1, 0, steps + 1, dtype=torch.float32)
    if shift:
        sigmas = time_shift(shift_mu(packed_tokens), sigmas)
    return sigmas.tolist()


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_sample(velocity_fn: VelocityFn, latents: torch.Tensor, sigmas: Sequence[float], cfg_scale: float = 1.0,
                 negative_velocity_fn: VelocityFn | None = None) -> torch.Tensor:
    """Integrate dx/dsigma = v from sigmas[0] to sigmas[-1] with Euler steps x <- x + (s_next - s) * v, as BFL's and
    sd-scripts' denoise. velocity_fn(x, sigma_batch) gets sigma as a (B,) tensor in x's dtype. With a negative
    function and cfg_scale != 1, classifier-free guidance v = v_neg + cfg_scale * (v_pos - v_neg) (how sd-scripts
    samples Chroma). Call it under torch.no_grad() for sampling."""
    guided = negative_velocity_fn is not None and cfg_scale != 1.0
    x = latents
    for current, following in zip(sigmas[:-1], sigmas[1:]):
        sigma_batch = torch.full((x.shape[0],), float(current), dtype=x.dtype, device=x.device)
        velocity = velocity_fn(x, sigma_batch)
        if guided:
            negative = negative_velocity_fn(x, sigma_batch)
            velocity = negative + cfg_scale * (velocity - negative)
        x = x + (float(following) - float(current)) * velocity
    return x


# ---------------------------------------------------------------------------------------------------------------
# Packing and position ids (BFL layout)


def _require_even(height: int, width: int) -> None:
    if height % 2 or width % 2:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches, got {height}x{width}")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, C*4): 2x2 patches in row-major patch order, each patch's features ordered
    channel, then row in patch, then column in patch (BFL's "b c (h ph) (w pw) -> b (h w) (c ph pw)")."""
    b, c, h, w = latents.shape
    _require_even(h, w)
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of pack_latents: (B, H/2 * W/2, C*4) -> (B, C, H, W), H and W the latent sizes."""
    _require_even(height, width)
    b, tokens, features = packed.shape
    if tokens != (height // 2) * (width // 2) or features % 4:
        raise ValueError(f"packed shape {tuple(packed.shape)} does not fit a {height}x{width} latent")
    c = features // 4
    patches = packed.reshape(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, c, height, width)


def image_ids(batch_size: int, height: int, width: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H/2 * W/2, 3) position ids of the packed image tokens: (0, patch row, patch column), row-major like
    pack_latents (sd-scripts' prepare_img_ids); H, W are latent sizes."""
    _require_even(height, width)
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, -1, 3)
    return ids.expand(batch_size, -1, -1).to(device=device, dtype=dtype).contiguous()


def text_ids(batch_size: int, length: int, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L, 3) zeros: Flux's text tokens all sit at position (0, 0, 0)."""
    return torch.zeros(batch_size, length, 3, device=device, dtype=dtype)
