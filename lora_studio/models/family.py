"""What a model family is: the whole recipe for training a LoRA on its models.

A family (SD1.x, SD2.x, SDXL, Flux.1, Chroma ...) answers every question whose answer depends on the kind of model:
how its files are recognised and loaded (one file, or a denoiser with separate autoencoder and text-encoder files),
which modules get adapters and their names in a LoRA file, how a prompt is encoded and what the denoiser is
conditioned on, the training objective (``Objective``: how noise and timesteps or sigmas are drawn, what the model is
given and predicts, what the loss compares it with and how it is weighted, the validation points), how pixels become
latents (the normalisation, applied once, and the pixel multiple), how a sample image is made, what the resource
estimate assumes, which ids the metadata carries, and which settings are its own. The loop, the data, the networks and
saving ask the family and never branch on its name.

Importing this module (and the family modules) does not import torch: the GUI and the estimate use the families'
recognition rules and constants, and they never load torch. Methods that compute import what they need.

Adding a family: one module beside ``sd1.py`` or ``flux.py`` with its subclass, one line in ``registry.py``, a tiny
builder for the tests, and its tests; its own settings are one group in ``config/schema.py`` (``families=``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Components:
    """A loaded base model."""
    family: ModelFamily
    denoiser: Any  # the U-Net or the transformer
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
    rank: int | None = None  # the family's own rank for it (Flux's per-type dims, in_dims), else network_dim
    split: tuple[int, ...] = ()  # a fused projection trained as these separate output parts (Flux split_qkv)
    lr: float | None = None  # the family's own learning rate for it (Anima's network_reg_lrs), else its part's


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
    t5: bool = False  # a T5 text encoder's layers too (sd-scripts' train_t5xxl)
    family_args: tuple = ()  # a family's own network_args, (name, value) as given (Flux: train_blocks, in_dims ...)


@dataclass(frozen=True)
class PartFile:
    """Where users keep a separate model file and what they call it: the GUI looks for it beside the model."""
    folders: tuple[str, ...]  # sibling folders of the model's folder to look in (ComfyUI's names), in order
    names: tuple[str, ...]  # the names it is downloaded as, preferred in this order
    hints: tuple[str, ...] = ()  # parts of other names that suggest it


@dataclass(frozen=True)
class EstimateConstants:
    """What the resource estimate assumes for a family (sources in training/estimate.py and reference/perf.md)."""
    activation_bytes_per_latent_pixel: float  # one sample's activations in bf16, SDPA, no checkpointing
    step_flops: float  # one LoRA training sample at the native size
    native_pixels: int
    te_cache_bytes_per_caption: int  # one caption's cached text-encoder outputs (float32)
    vae_fp32_under_fp16: bool = False  # the VAE overflows in fp16 and stays in float32


class Objective:
    """A family's training objective for one run: how the noise and the per-image timesteps (DDPM: whole-number
    timesteps; flow matching: sigmas in [0, 1]) are drawn, what the denoiser is given and what the loss compares its
    output with, the per-image loss weights the objective adds, and the fixed points validation measures at."""

    validation_points: list  # the timesteps (or sigmas) the validation loss is measured at, each for every batch

    def sample_noise(self, latents, generator=None):
        raise NotImplementedError

    def sample_timesteps(self, latents):
        """One timestep (or sigma) per image of the batch ``latents``."""
        raise NotImplementedError

    def fixed_timesteps(self, point, batch_size: int, device):
        """``point`` (one of ``validation_points``) for every image of a batch."""
        raise NotImplementedError

    def prediction_and_target(self, components: Components, latents, noise, timesteps, cond):
        """(what the model predicts for the noised latents, what the loss compares it with), in the latents' layout."""
        raise NotImplementedError

    def huber_thresholds(self, timesteps, c: float, kind: str, scale: float):
        """The Huber loss threshold per image for huber_schedule ``kind`` (constant, exponential, snr)."""
        raise NotImplementedError

    def loss_weights(self, timesteps, options):
        """The per-image factor the objective applies to the loss after the loss function (``training.loss.
        LossOptions``: min-SNR, v-pred-like ... for DDPM; the weighting scheme for flow matching), or None."""
        raise NotImplementedError


class ModelFamily:
    """The interface the engine uses. ``StableDiffusionFamily`` implements it for the U-Net/DDPM families and
    ``FluxFamily`` for the flow-matching transformers."""

    name = ""  # short id, also in caches' fingerprints: "sd1", "sd2", "sdxl", "flux", "chroma"
    title = ""  # for people: "SD1.x"
    # metadata ids
    base_model_version = ""  # ss_base_model_version
    modelspec_implementation = "diffusers"
    estimate: EstimateConstants
    pixel_multiple = 8  # image sides are multiples of this (the autoencoder's scale x the denoiser's patch size)
    # settings naming files the family loads besides pretrained_model_name_or_path, with the part each holds
    separate_files: dict[str, str] = {}
    part_files: dict[str, PartFile] = {}  # where each of those is usually found (for the GUI to fill them in)
    # settings of the other families that mean nothing here: named at Check settings and at the start of a run
    # (name -> why), when they are set to something else than their default
    ignored_settings: dict[str, str] = {}
    denoiser_title = "U-Net"
    snr_schedule = True  # a DDPM noise schedule with an SNR per timestep (huber_schedule "snr" needs one)
    # what a sample prompt without --s / --l renders with in the Test tab (sd-scripts' 30 steps and CFG 7.5 for SD)
    sample_steps = 30
    sample_cfg = 7.5
    # sd-scripts' LoRA network module of the family, written for plain LoRA (None: the network_module setting's)
    lora_module: str | None = None

    # ---- recognising and loading models
    def matches_checkpoint(self, keys: set[str]) -> bool:
        """Whether a single-file checkpoint with these tensor names is of this family."""
        raise NotImplementedError

    def matches_diffusers(self, model_index: dict, unet_config: dict) -> bool:
        raise NotImplementedError

    def check_flags(self, v2: bool, source: str) -> None:
        """Refuse a config whose model-type switches (v2) contradict this family's model."""
        raise NotImplementedError

    def is_part_file(self, setting: str, tensors: dict) -> bool:
        """Whether a safetensors header (name -> {"dtype", "shape"}) is the part ``setting`` names, in a form the
        family loads (torch-free)."""
        return False

    def check_settings(self, cfg) -> list[tuple[str, str]]:
        """The family's own requirements on a config (a UserError names the setting), and (setting, message)
        warnings about values it will use; Check settings and the start of a run both ask."""
        return []

    def load_single_file(self, state_dict: dict, source: str, options=None) -> Components:
        """The model in a single file. ``options``: the run's settings (a Config, or None for the defaults), for the
        families that load separate files (``separate_files``) or have loading options (fp8 files)."""
        raise NotImplementedError

    def load_diffusers(self, folder, model_index: dict, options=None) -> Components:
        raise NotImplementedError

    def place_denoiser(self, components: Components, cfg, device, dtype) -> None:
        """Move the frozen denoiser to the device in the training dtype (a family with block swap keeps some of its
        blocks on the CPU)."""
        components.denoiser.to(device, dtype)

    def finish_placing(self, components: Components, cfg, device) -> None:
        """After the denoiser is placed and its weights stored as they train (fp8): the family's last step (Flux:
        block swap)."""

    def enable_gradient_checkpointing(self, components: Components, cfg) -> None:
        """gradient_checkpointing for the denoiser (Flux: also cpu_offload_checkpointing)."""
        components.denoiser.enable_gradient_checkpointing()

    # ---- adapters
    def adapter_targets(self, components: Components, train_unet: bool, train_text_encoder: bool,
                        spec: TargetSpec) -> list[AdapterTarget]:
        raise NotImplementedError

    def network_args(self) -> tuple[str, ...]:
        """The family's own network_args names it reads (``config.network_args.FLUX_ARGS`` for Flux)."""
        return ()

    def denoiser_lora_stem(self, module_path: str, components: Components) -> str:
        """The LoRA-file name of the denoiser module at ``module_path``."""
        raise NotImplementedError

    def lora_names(self, components: Components) -> dict:
        """Every LoRA stem a file may use for this model -> the module it changes: the names the family writes and
        the aliases other trainers use, which the tools (merge, bake, the Test tab) read."""
        raise NotImplementedError

    def lora_blocks(self):
        """The block layout of block-wise LoRA (``network.blocks.BlockLayout``), or None if the family has none."""
        return None

    def lora_block_index(self, stem: str) -> int:
        """sd-scripts' block number of a U-Net LoRA name (-1: in no block)."""
        return -1

    # ---- prompts and conditioning
    def prompt_options(self, settings) -> dict:
        """The settings prompt encoding depends on (a Config or any object with those attributes), as a dict for
        ``encode_prompt`` and the text-encoder cache's fingerprint."""
        raise NotImplementedError

    def encode_prompt(self, components: Components, captions: list[str], device, options: dict,
                      weighted: bool = False) -> dict:
        """The text conditioning of ``captions`` as a dict of batched tensors (cacheable per caption); ``options``
        from ``prompt_options``. ``weighted`` (weighted_captions): the captions use A1111 emphasis, ``(word:1.2)``."""
        raise NotImplementedError

    def add_image_conditioning(self, cond: dict, batch: dict, device) -> dict:
        """Conditioning that comes from the image rather than the caption (SDXL: size and crop)."""
        return cond

    # ---- the training objective
    def objective(self, components: Components, cfg) -> Objective:
        """The run's training objective from its settings."""
        raise NotImplementedError

    # ---- latents
    def vae_scale_and_shift(self, vae) -> tuple[float, float]:
        """latents = (VAE latent - shift) * scale: the family's latent normalisation, applied once, at encoding."""
        raise NotImplementedError

    def vae_needs_float32(self, precision: str, no_half_vae: bool) -> bool:
        raise NotImplementedError

    # ---- sample images
    def samplers(self) -> tuple[str, ...]:
        """The sampler names sample prompts may ask for (``--ss``)."""
        raise NotImplementedError

    def render(self, components: Components, prompt, sampler: str, options: dict, device, dtype, seed: int,
               output_type: str = "pil"):
        """One image for ``prompt`` (``training.prompts.SamplePrompt``) with the network as attached: a PIL image,
        or with ``output_type="np"`` a float array [H, W, 3] in 0..1."""
        raise NotImplementedError

    # ---- metadata
    def architecture(self, v_parameterization: bool) -> str:
        """The modelspec architecture of a LoRA for this family."""
        raise NotImplementedError

    def modelspec_prediction_type(self, v_parameterization: bool) -> str | None:
        """modelspec.prediction_type of a LoRA for this family ("epsilon" / "v"), None when it stamps none."""
        return "v" if v_parameterization else "epsilon"

    def metadata(self, cfg) -> dict:
        """The family's own ``ss_*`` recipe keys of a LoRA trained with ``cfg`` (sd-scripts' update_metadata)."""
        return {}

    # ---- resource estimate (torch-free: from a safetensors header)
    def parameter_counts(self, shapes: dict[str, list[int]]) -> dict[str, int]:
        """{"unet", "text_encoders", "vae", "lora_linear", "lora_te"} from tensor shapes by name ("unet": the
        denoiser)."""
        raise NotImplementedError
