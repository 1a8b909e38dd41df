"""What a model family is: the whole recipe for training a LoRA on its models.

A family (SD1.x, SD2.x, SDXL; later others) answers every question whose answer depends on the kind of model: how its
files are recognised and loaded, which modules get adapters and their names in a LoRA file, how a prompt is encoded
and what the denoiser is conditioned on, how noise and timesteps are drawn, what the model predicts and what the loss
compares it with, how pixels become latents, how a sample image is made, what the resource estimate assumes, and which
ids the metadata carries. The loop, the data, the networks and saving ask the family and never branch on its name.

Importing this module (and the family modules) does not import torch: the GUI and the estimate use the families'
recognition rules and constants, and they never load torch. Methods that compute import what they need.

Adding a family: one module beside ``sd1.py`` with its subclass, one line in ``registry.py``, a tiny builder in
``tiny.py`` for the tests, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Components:
    """A loaded base model."""
    family: ModelFamily
    unet: Any  # the denoiser
    vae: Any
    text_encoders: list
    tokenizers: list
    scheduler_config: dict
    source: str
    info: dict = field(default_factory=dict)


@dataclass
class AdapterTarget:
    """One frozen module that gets an adapter, and the adapter's name (stem) in a LoRA file."""
    stem: str
    module: Any
    text_encoder: int | None  # index of the text encoder it belongs to; None for the denoiser
    conv: bool = False  # a k x k convolution (LoCon's conv_dim / conv_alpha apply)
    norm: bool = False  # a normalisation layer (LyCORIS train_norm: its scale and shift are trained)


@dataclass(frozen=True)
class TargetSpec:
    """Which layers get adapters, in words every family understands. The default is sd-scripts' LoRA; LoCon adds
    the convolution blocks; LyCORIS presets choose other sets (``config.network_args.lycoris_targets``)."""
    transformer: bool = True  # the denoiser's attention blocks: their linear and 1x1 layers
    attention_only: bool = False  # of those (and of the text encoder), only the attention projections
    conv_blocks: bool = False  # the denoiser's ResNet and resampling blocks: their linear and 1x1 layers
    kxk_convs: bool = False  # ... and their k x k convolutions (conv_dim / conv_alpha)
    stem: tuple[str, ...] = ()  # single layers outside the blocks: "conv_in", "conv_out", "time_embedding"
    text_encoder: bool = True  # the text encoders' attention and MLP layers
    norms: bool = False  # the normalisation layers inside the chosen denoiser blocks


@dataclass(frozen=True)
class EstimateConstants:
    """What the resource estimate assumes for a family (sources in training/estimate.py and reference/perf.md)."""
    activation_bytes_per_latent_pixel: float  # one sample's activations in bf16, SDPA, no checkpointing
    step_flops: float  # one LoRA training sample at the native size
    native_pixels: int
    te_cache_bytes_per_caption: int  # one caption's cached text-encoder outputs (float32)
    vae_fp32_under_fp16: bool = False  # the VAE overflows in fp16 and stays in float32


class ModelFamily:
    """The interface the engine uses. Every method is implemented by ``StableDiffusionFamily`` for the UNet/DDPM
    families; a family of another kind (a DiT with flow matching, say) implements them its own way."""

    name = ""  # short id, also in caches' fingerprints: "sd1", "sd2", "sdxl"
    title = ""  # for people: "SD1.x"
    # metadata ids
    base_model_version = ""  # ss_base_model_version
    modelspec_implementation = "diffusers"
    estimate: EstimateConstants

    # ---- recognising and loading models
    def matches_checkpoint(self, keys: set[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names is of this family."""
        raise NotImplementedError

    def matches_diffusers(self, model_index: dict, unet_config: dict) -> bool:
        raise NotImplementedError

    def check_flags(self, v2: bool, source: str) -> None:
        """Refuse a config whose model-type switches (v2) contradict this family's model."""
        raise NotImplementedError

    def load_single_file(self, state_dict: dict, source: str) -> Components:
        raise NotImplementedError

    def load_diffusers(self, folder, model_index: dict) -> Components:
        raise NotImplementedError

    # ---- adapters
    def adapter_targets(self, components: Components, train_unet: bool, train_text_encoder: bool,
                        spec: TargetSpec) -> list[AdapterTarget]:
        raise NotImplementedError

    def lora_blocks(self):
        """The block layout of block-wise LoRA (``network.blocks.BlockLayout``), or None if the family has none."""
        return None

    def lora_block_index(self, stem: str) -> int:
        """sd-scripts' block number of a U-Net LoRA name (-1: in no block)."""
        return -1

    # ---- prompts and conditioning
    def encode_prompt(self, components: Components, captions: list[str], clip_skip: int, max_token_length: int,
                      device, weighted: bool = False) -> dict:
        """The text conditioning of ``captions`` as a dict of batched tensors (cacheable per caption). ``weighted``
        (weighted_captions): the captions use A1111 emphasis, ``(word:1.2)``, weighting their tokens."""
        raise NotImplementedError

    def add_image_conditioning(self, cond: dict, batch: dict, device) -> dict:
        """Conditioning that comes from the image rather than the caption (SDXL: size and crop)."""
        return cond

    # ---- noise, timesteps, prediction and loss inputs
    def noise_schedule(self, components: Components, v_parameterization: bool, zero_terminal_snr: bool):
        """The training noise schedule; also makes sample images use the same prediction type and schedule."""
        raise NotImplementedError

    def sample_noise(self, latents, recipe, generator=None):
        """The noise of a batch; ``recipe`` is a ``noise.NoiseRecipe`` (offset, multires ... as sd-scripts)."""
        raise NotImplementedError

    def sample_timesteps(self, schedule, batch_size: int, device, recipe):
        raise NotImplementedError

    def prediction_and_target(self, components: Components, schedule, latents, noise, timesteps, cond, recipe):
        """(what the model predicts for the noised latents, what the loss compares it with)."""
        raise NotImplementedError

    def min_snr_weights(self, schedule, timesteps, gamma: float):
        raise NotImplementedError

    def snr_scale(self, schedule, timesteps):
        """SNR / (SNR + 1) per timestep (scale_v_pred_loss_like_noise_pred, v_pred_like_loss)."""
        raise NotImplementedError

    def huber_thresholds(self, schedule, timesteps, c: float, kind: str, scale: float):
        """The Huber loss threshold per image for huber_schedule ``kind`` (constant, exponential, snr)."""
        raise NotImplementedError

    def debiased_weights(self, schedule, timesteps):
        raise NotImplementedError

    # ---- latents
    def vae_scale_and_shift(self, vae) -> tuple[float, float]:
        """latents = (VAE latent - shift) * scale."""
        raise NotImplementedError

    def vae_needs_float32(self, precision: str, no_half_vae: bool) -> bool:
        raise NotImplementedError

    # ---- sample images
    def pipeline(self, components: Components, scheduler):
        """A diffusers pipeline over the loaded components (the network attached), for sample images."""
        raise NotImplementedError

    def pipeline_prompt_kwargs(self, cond: dict, uncond: dict, dtype) -> dict:
        raise NotImplementedError

    # ---- metadata
    def architecture(self, v_parameterization: bool) -> str:
        """The modelspec architecture of a LoRA for this family."""
        raise NotImplementedError

    # ---- resource estimate (torch-free: from a safetensors header)
    def parameter_counts(self, shapes: dict[str, list[int]]) -> dict[str, int]:
        """{"unet", "text_encoders", "vae", "lora_linear", "lora_te"} from tensor shapes by name."""
        raise NotImplementedError
