"""What a run will need, before it starts: peak GPU memory, system RAM, cache disk and time per epoch.

Torch-free (the GUI shows it): parameter counts come from the model files' safetensors headers, the rest from the
settings. Activation memory and speed use per-family coefficients from published and measured figures
(shared/reference/perf.md); they are estimates, marked as such, and the benchmark (``lora-studio bench``) measures
the real numbers on the machine at hand.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..io_utils import safetensors_shapes
from ..models.family import ModelFamily
from ..models.registry import BY_NAME, family_of_checkpoint, family_of_diffusers_folder

GB = 1024**3
# Activation bytes per latent pixel and FLOPs per sample are each family's own (``ModelFamily.estimate``): SD1.5-512
# batch 1 LoRA ~3.5 GB of activations, in line with the ~7 GB peer reports; SDXL-1024 ~17 GB. The share gradient
# checkpointing keeps: SDXL-1024 LoRA with cached latents and TE outputs peaks at 4.4 GB with fp8 weights in
# sd-scripts #1057, which leaves ~1.7 GB of activations. Not yet calibrated on our own GPU runs.
CHECKPOINTED_SHARE = 0.10
# The engine's own RAM (Python, torch, diffusers, transformers), measured before the model loads: 0.41 GiB on the
# CPU, with some allocator slack; the CUDA runtime adds its libraries and context.
RAM_BASE_GB_CPU = 0.6
RAM_BASE_GB_CUDA = 1.5
ASSUMED_MFU = 0.30
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.2, "4080": 97.0,
                   "3090": 71.0, "3080": 59.5, "3060": 25.6, "A10": 125.0, "T4": 65.0}
OPTIMIZER_STATE_COPIES = {"adamw": 2, "adamw8bit": 0.5, "lion": 1, "lion8bit": 0.25, "prodigy": 4,
                          "adafactor": 0.5, "sgd": 0}


@dataclass
class GPU:
    name: str
    memory_gb: float

    @property
    def peak_flops(self) -> float | None:
        return next((p * 1e12 for key, p in GPU_PEAK_TFLOPS.items() if key in self.name), None)


@lru_cache(maxsize=1)
def detect_gpu() -> GPU | None:
    """The first NVIDIA GPU, from nvidia-smi (no torch needed), or None."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip().splitlines()
        name, memory = out[0].rsplit(",", 1)
        return GPU(name.strip(), float(memory) / 1024)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _model_shapes(model: Path) -> dict[str, list[int]]:
    files = [model] if model.is_file() else sorted(model.glob("*/*.safetensors"))
    shapes = {}
    for file in files:
        prefix = "" if model.is_file() else file.parent.name + "."
        shapes.update({prefix + k: v[0] for k, v in safetensors_shapes(file).items()})
    return shapes


@dataclass
class ModelSize:
    family: str  # the family's name
    unet: int
    text_encoders: int
    vae: int
    lora_linear: int  # sum of (in + out) over the layers a LoRA adapts (times rank = LoRA parameters)
    lora_te: int

    @property
    def recipe(self) -> ModelFamily:
        return BY_NAME[self.family]


def model_size(model: str | Path) -> ModelSize:
    """Parameter counts of a model file or folder from its headers; ValueError when its family is unknown."""
    model = Path(model)
    shapes = _model_shapes(model)
    family = family_of_diffusers_folder(model)[0] if model.is_dir() else family_of_checkpoint(shapes)
    if family is None:
        raise ValueError(f"{model}: not a model of a known family")
    return ModelSize(family.name, **family.parameter_counts(shapes))


@dataclass
class Estimate:
    vram_gb: float
    ram_gb: float
    cache_disk_gb: float
    seconds_per_epoch: float | None
    gpu: GPU | None
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        epoch = f"{self.seconds_per_epoch / 60:.1f} min" if self.seconds_per_epoch else "n/a (no known GPU)"
        where = f" on {self.gpu.name} ({self.gpu.memory_gb:.0f} GB)" if self.gpu else " (no NVIDIA GPU found)"
        return (f"estimated peak GPU memory {self.vram_gb:.1f} GB{where}, system RAM {self.ram_gb:.1f} GB, "
                f"cache disk {self.cache_disk_gb * 1024:.0f} MB, time per epoch {epoch}")


def estimate(cfg: Config, size: ModelSize, num_images: int, steps_per_epoch: int, resolution: tuple[int, int],
             gpu: GPU | None) -> Estimate:
    half = cfg.mixed_precision in ("fp16", "bf16")
    weight_bytes = 2 if half else 4
    train_te = not cfg.network_train_unet_only
    te_cached = cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk
    # color_aug / random_crop redraw each image, so the run turns latent caching off
    latents_cached = (cfg.cache_latents or cfg.cache_latents_to_disk) and not (cfg.color_aug or cfg.random_crop)
    # fp8_base / fp8_base_unet: the Linear/Conv weights (nearly all of them) in float8, 1 byte each
    unet_bytes = 1 if half and (cfg.fp8_base or cfg.fp8_base_unet) else weight_bytes
    te_bytes = 1 if half and cfg.fp8_base and not cfg.fp8_base_unet else weight_bytes
    frozen = size.unet * unet_bytes
    if not (te_cached and not cfg.sample_prompts):
        frozen += size.text_encoders * te_bytes
    if not (latents_cached and not cfg.sample_prompts):
        vae_fp32 = size.recipe.vae_needs_float32(cfg.mixed_precision, cfg.no_half_vae)
        frozen += size.vae * (4 if vae_fp32 else 2)
    lora_params = cfg.network_dim * (size.lora_linear + (size.lora_te if train_te else 0))
    states = OPTIMIZER_STATE_COPIES.get(cfg.optimizer_type.lower(), 2)
    lora_bytes = lora_params * 4 * (2 + states)  # weights, gradients and optimizer state, float32
    latent_pixels = (resolution[0] // 8) * (resolution[1] // 8)
    constants = size.recipe.estimate
    per_sample = constants.activation_bytes_per_latent_pixel * latent_pixels * (1 if half else 2)
    if cfg.gradient_checkpointing:
        per_sample *= CHECKPOINTED_SHARE
    activations = per_sample * cfg.train_batch_size
    vram = (frozen + lora_bytes + activations) / GB + 0.8  # CUDA context and allocator slack
    all_params = size.unet + size.text_encoders + size.vae
    # lowram: a single-file model goes to the GPU a tensor at a time, each already in its training dtype
    lowram = cfg.lowram and gpu is not None and Path(cfg.pretrained_model_name_or_path or "").expanduser().is_file()

    latent_bytes = 4 * latent_pixels * 4
    entries = num_images * (2 if cfg.flip_aug else 1)
    cache_in_memory = entries * latent_bytes if latents_cached and not cfg.cache_latents_to_disk else 0
    # RAM: the U-Net and text encoders are read into it in the dtype they train in, the VAE in float32, each weight
    # once; with lowram they go to the GPU a tensor at a time. Training on the CPU adds the adapters, their
    # optimizer state and the activations. Checked against the measured peak: real-size SD1.5 layout, fp32, 64 px,
    # batch 2, rank 8, CPU: 4.60 GiB measured over 100 steps, 4.85 GiB estimated (docs/benchmarks.md).
    loaded = 0 if lowram else (size.unet + size.text_encoders) * weight_bytes + size.vae * 4
    ram = (loaded + cache_in_memory + (lora_bytes + activations if gpu is None else 0)) / GB
    ram += RAM_BASE_GB_CPU if gpu is None else RAM_BASE_GB_CUDA
    disk = entries * latent_bytes if latents_cached and cfg.cache_latents_to_disk else 0
    if cfg.cache_text_encoder_outputs_to_disk:
        disk += num_images * constants.te_cache_bytes_per_caption
    seconds = None
    if gpu is not None and gpu.peak_flops:
        sample_flops = constants.step_flops * (resolution[0] * resolution[1]) / constants.native_pixels
        if cfg.gradient_checkpointing:
            sample_flops *= 1.35
        seconds = steps_per_epoch * cfg.train_batch_size * cfg.gradient_accumulation_steps * sample_flops / (
            gpu.peak_flops * ASSUMED_MFU)
    result = Estimate(round(vram, 2), round(ram, 2), round(disk / GB, 6), seconds, gpu)
    if gpu is not None and vram > gpu.memory_gb * 0.95:
        result.warnings.append(_advice(cfg, vram, gpu, per_sample))
    return result


def memory_tips(cfg: Config, per_sample: float | None = None) -> list[str]:
    """What to change to use less GPU memory, most effective first; with ``per_sample`` (activation bytes of one
    sample) the savings are given in GB. Used before a run (the estimate) and after an out-of-memory error."""
    def saving(amount: float) -> str:
        return f" (about {amount / GB:.1f} GB less)" if per_sample else ""
    activations = (per_sample or 0) * cfg.train_batch_size
    tips = []
    if not cfg.gradient_checkpointing:
        tips.append(f"turn on gradient_checkpointing = true{saving(activations * (1 - CHECKPOINTED_SHARE))}")
    if cfg.train_batch_size > 1:
        tips.append(f"lower train_batch_size (now {cfg.train_batch_size}); lower train_batch_size from "
                    f"{cfg.train_batch_size} to 1{saving(activations - (per_sample or 0))}")
    if cfg.color_aug or cfg.random_crop:
        tips.append("turn off color_aug and random_crop, then cache_latents = true")
    elif not (cfg.cache_latents or cfg.cache_latents_to_disk):
        tips.append("turn on cache_latents = true")
    if cfg.mixed_precision == "no":
        tips.append('use mixed_precision = "bf16" (or "fp16")')
    if not (cfg.fp8_base or cfg.fp8_base_unet):
        tips.append("store the frozen weights in float8: fp8_base = true (with mixed precision)")
    if cfg.optimizer_type.lower() == "adamw":
        tips.append('use optimizer_type = "AdamW8bit"')
    if not cfg.network_train_unet_only:
        tips.append("train the U-Net only (network_train_unet_only) with cache_text_encoder_outputs")
    tips.append(f"lower the resolution (now {cfg.resolution})")
    return tips


def _advice(cfg: Config, vram: float, gpu: GPU, per_sample: float) -> str:
    return (f"this run needs about {vram:.1f} GB but {gpu.name} has {gpu.memory_gb:.0f} GB: "
            + "; ".join(memory_tips(cfg, per_sample)))


def resource_estimate(cfg: Config, data, steps_per_epoch: int, gpu: GPU | None) -> Estimate | None:
    """The estimate for a checked config and its scanned dataset; None when the model cannot be sized."""
    try:
        size = model_size(cfg.pretrained_model_name_or_path)
    except (OSError, ValueError, KeyError, struct.error, UserError):
        return None
    return estimate(cfg, size, len(data.items), steps_per_epoch, data.datasets[0].resolution, gpu)
