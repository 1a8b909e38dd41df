"""What a run will need, before it starts: peak GPU memory, system RAM, cache disk and time per epoch.

Torch-free (the GUI shows it): parameter counts come from the model files' safetensors headers (a Flux transformer's
ae, clip_l and t5xxl from their own files), the rest from the settings. Activation memory and speed use per-family
coefficients from published and measured figures (shared/reference/perf.md; Flux's in models/flux.py and
docs/benchmarks.md); they are estimates, marked as such, and the benchmark (``lora-studio bench``) measures the real
numbers on the machine at hand.

The GPU peak is the larger of two phases, as the engine runs them (training/trainer.py): loading and caching, when
the text encoders and the VAE are on the device (caching latents and text-encoder outputs needs them) before the
denoiser comes in, and training, after ``build.release_unneeded`` has freed what the caches replace.
"""

from __future__ import annotations

import math
import re
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
from ..models.registry import BY_NAME, FAMILIES, family_of_checkpoint, family_of_diffusers_folder
from .plan import images_per_vae_call

GB = 1024**3
# Activation bytes per latent pixel and FLOPs per sample are each family's own (``ModelFamily.estimate``), measured
# on an H200 (bf16, rank 32; issue 26's table, docs/benchmarks.md): SD1.5-512 1.19 GiB a sample (batch 16: 21.5 GB
# with the U-Net's 1.6 GiB), SDXL-1024 8.0 GiB a sample (batch 4: 39.0 GB). With gradient checkpointing a U-Net
# keeps about a tenth of that: counted on the CPU with saved_tensors_hooks (SDXL-1024 batch 1: 0.54 of 6.45 GiB kept
# for the backward) and as the step's peak RSS (1.05 GiB above the step's start, the LoRA's gradients included;
# the GPU bench's 11.6 GB for it had 3.2 GiB more from its FLOP-counting step). A transformer family (Flux)
# checkpoints every block: its share is worked out from its blocks (``activation_bytes``).
CHECKPOINTED_SHARE = 0.10
# Caching latents: the VAE's encoder holds about 1.5 GiB a megapixel of the images it encodes at once in half
# precision (SDXL's VAE, 4 images at 1024 px: 6.4 GiB, measured on an H200), twice that in float32.
VAE_ENCODE_BYTES_PER_PIXEL = 1.52 * GB / 2**20
# Gradient checkpointing's extra FLOPs: U-Nets +34-36% (perf.md, counted); a transformer checkpointed block by block
# runs its whole forward again: +45% for Flux.1 (forward 74.8 of a 164.8 TFLOP LoRA step at 1024 px, counted).
CHECKPOINTED_FLOPS = 1.35
TRANSFORMER_CHECKPOINTED_FLOPS = 1.45
# A transformer step's FLOPs grow with its tokens (the Linears) and their square (attention): attention is 27% of a
# Flux.1 LoRA step at 1024 px (4096 image + 512 text tokens, the tokens its step_flops was counted with).
TRANSFORMER_ATTENTION_SHARE = 0.27
NATIVE_TEXT_TOKENS = 512
# A transformer family's constants are counted on its real model (Flux.1: width 3072, 19 + 38 blocks); a model of
# another width or depth (a pruned "lite" model, the tests' tiny ones) scales them: activations and attention with
# width x blocks, the Linears' FLOPs with width^2 x blocks.
NATIVE_WIDTH, NATIVE_BLOCKS = 3072, 57
# blocks_to_swap: host <-> device copies at ~20 GB/s (PCIe 4.0 x16 as measured in practice). The engine copies a
# swapped block in just before it runs, without overlapping compute, so the transfer time adds to the step: once in
# the forward and once more in the checkpoint's recompute (gradient checkpointing).
PCIE_BYTES_PER_S = 20e9
# cpu_offload_checkpointing: "decreases training speed by about 15%" (sd-scripts' docs/flux_train_network.md)
CPU_OFFLOAD_CHECKPOINTING_TIME = 1.15
# The engine's own RAM (Python, torch, diffusers, transformers), measured before the model loads: 0.41 GiB on the
# CPU, with some allocator slack; the CUDA runtime adds its libraries and context.
RAM_BASE_GB_CPU = 0.6
RAM_BASE_GB_CUDA = 1.5
CUDA_OVERHEAD_GB = 0.8  # CUDA context and allocator slack on the device
ASSUMED_MFU = 0.30
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.2, "4080": 97.0,
                   "3090": 71.0, "3080": 59.5, "3060": 25.6, "A10": 125.0, "T4": 65.0}
OPTIMIZER_STATE_COPIES = {"adamw": 2, "adamw8bit": 0.5, "lion": 1, "lion8bit": 0.25, "prodigy": 4,
                          "adafactor": 0.5, "sgd": 0}
DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I8": 1, "U8": 1, "BOOL": 1}
# the separate-file parts that are text encoders, of every transformer family (SD3's clip_g, Anima's qwen3, Lumina
# 2's gemma2 too); those a family has are its text_encoder_lora_prefixes. The rest are autoencoders, but for parts of
# the transformer itself (Anima's LLM adapter in a file of its own).
TEXT_ENCODER_FILES = ("clip_l", "clip_g", "t5xxl", "qwen3", "gemma2")
TRANSFORMER_FILES = ("llm_adapter_path",)


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
class PartSize:
    """A part of the model in a file of its own (Flux's ae, clip_l, t5xxl), from that file's header."""
    params: int
    linear_params: int  # in 2-D weights other than embeddings: what fp8 storage keeps in one byte
    file_bytes: int  # its weights as the file stores them (a float8_e4m3fn T5 file: one byte each)
    lora_linear: int  # sum of (in + out) over its attention and MLP Linears (an adapter's rank multiplies it)

    @property
    def stored_fp8(self) -> bool:
        return self.linear_params > 0 and self.file_bytes < 1.5 * self.params


_EMBEDDINGS = ("embed", "shared.weight", "relative_attention_bias")
# CLIP's and T5's attention and MLP layers, and the decoder-only LLMs' (Qwen3, Gemma2: ``model.layers.N.``)
_ADAPTED = re.compile(r"(^|\.)(encoder\.layers|encoder\.block|layers)\.\d+\.")


def part_size(path: str | Path) -> PartSize:
    """A separate part's sizes from its header (the weights need not be there)."""
    params = linear = stored = lora = 0
    for name, (shape, dtype) in safetensors_shapes(Path(path).expanduser()).items():
        count = math.prod(shape)
        params += count
        stored += count * DTYPE_BYTES.get(dtype, 2)
        if len(shape) == 2 and name.endswith(".weight") and not any(e in name for e in _EMBEDDINGS):
            linear += count
            if _ADAPTED.search(name):
                lora += shape[0] + shape[1]
    return PartSize(params, linear, stored, lora)


@dataclass
class ModelSize:
    family: str  # the family's name
    unet: int  # the denoiser (U-Net or transformer)
    text_encoders: int  # with a transformer's separate clip_l and t5xxl files
    vae: int  # with a transformer's separate ae file
    lora_linear: int  # sum of (in + out) over the layers a LoRA adapts (times rank = LoRA parameters)
    lora_te: int
    # a transformer's blocks: {"double": [count, parameters of one], "single": [...], "hidden": width} (block swap,
    # gradient checkpointing); empty for a U-Net
    blocks: dict = field(default_factory=dict)
    latent_channels: int = 4
    parts: dict[str, PartSize] = field(default_factory=dict)  # the separate files, by their setting

    @property
    def recipe(self) -> ModelFamily:
        return BY_NAME[self.family]

    @property
    def block_count(self) -> int:
        return sum(self.blocks.get(kind, (0, 0))[0] for kind in ("double", "single"))

    def transformer_scale(self, power: int) -> float:
        """(width / native)^power x blocks / native blocks: how far this transformer's per-token work is from the
        one its family's constants were counted on."""
        return (self.blocks.get("hidden", NATIVE_WIDTH) / NATIVE_WIDTH) ** power * self.block_count / NATIVE_BLOCKS

    def text_encoder_linear(self) -> int:
        """Text-encoder parameters fp8 storage keeps in one byte: the Linears of the separate files, or all of them
        when they come from the checkpoint (their embeddings are a small part)."""
        separate = [p for name, p in self.parts.items() if name in TEXT_ENCODER_FILES]
        inside = self.text_encoders - sum(p.params for p in separate)
        return inside + sum(p.linear_params for p in separate)


def model_size(model: str | Path, separate_files: dict | None = None) -> ModelSize:
    """Parameter counts of a model file or folder from its headers, with the family's separate parts (Flux's ae,
    clip_l, t5xxl: ``separate_files`` maps the settings to their paths) each from its own header; ValueError when
    its family is unknown."""
    model = Path(model)
    shapes = _model_shapes(model)
    family = family_of_diffusers_folder(model)[0] if model.is_dir() else family_of_checkpoint(shapes)
    if family is None:
        raise ValueError(f"{model}: not a model of a known family")
    size = ModelSize(family.name, **family.parameter_counts(shapes))
    for name in family.separate_files:
        path = (separate_files or {}).get(name)
        if not path or not Path(path).expanduser().is_file():  # Check settings names a missing file
            continue
        part = size.parts[name] = part_size(path)
        if name in TEXT_ENCODER_FILES:
            size.text_encoders += part.params
            size.lora_te += part.lora_linear if name != "t5xxl" else 0  # T5 only with train_t5xxl
        elif name in TRANSFORMER_FILES:
            size.unet += part.params
        else:
            size.vae += part.params
    return size


@dataclass
class Estimate:
    vram_gb: float
    ram_gb: float
    cache_disk_gb: float
    seconds_per_epoch: float | None
    gpu: GPU | None
    warnings: list[str] = field(default_factory=list)
    # the GPU memory of each phase: "loading and caching" and "training" (vram_gb is the larger)
    phases: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        epoch = f"{self.seconds_per_epoch / 60:.1f} min" if self.seconds_per_epoch else "n/a (no known GPU)"
        where = f" on {self.gpu.name} ({self.gpu.memory_gb:.0f} GB)" if self.gpu else " (no NVIDIA GPU found)"
        caching = self.phases.get("loading and caching", 0.0)
        when = (f" (while caching, with the text encoders and VAE beside the model; training "
                f"{self.phases['training']:.1f} GB)" if caching > self.phases.get("training", caching) else "")
        return (f"estimated peak GPU memory {self.vram_gb:.1f} GB{where}{when}, system RAM {self.ram_gb:.1f} GB, "
                f"cache disk {self.cache_disk_gb * 1024:.0f} MB, time per epoch {epoch}")


@dataclass
class _Run:
    """What the settings make of the model: which parts are where, in which dtype."""
    cfg: Config
    size: ModelSize
    half: bool
    weight_bytes: int  # frozen weights in the training dtype
    unet_bytes: int  # the denoiser's frozen weights on the device (fp8_base: 1)
    fp8_text_encoders: bool
    te_cached: bool
    latents_cached: bool

    @classmethod
    def of(cls, cfg: Config, size: ModelSize) -> _Run:
        half = cfg.mixed_precision in ("fp16", "bf16")
        weight_bytes = 2 if half else 4
        te_cached = bool(cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk)
        # color_aug / random_crop redraw each image, so the run turns latent caching off
        latents_cached = bool((cfg.cache_latents or cfg.cache_latents_to_disk) and not (cfg.color_aug
                                                                                       or cfg.random_crop))
        # fp8_base / fp8_base_unet: the Linear/Conv weights (nearly all of them) in float8, 1 byte each
        unet_bytes = 1 if half and (cfg.fp8_base or cfg.fp8_base_unet) else weight_bytes
        return cls(cfg, size, half, weight_bytes, unet_bytes, bool(half and cfg.fp8_base and not cfg.fp8_base_unet),
                   te_cached, latents_cached)

    @property
    def sampling(self) -> bool:
        return bool(self.cfg.sample_prompts)

    def text_encoder_bytes(self) -> float:
        """The text encoders on the device: fp8_base stores their Linears in one byte (embeddings stay)."""
        size = self.size
        if not self.fp8_text_encoders:
            return size.text_encoders * self.weight_bytes
        linear = size.text_encoder_linear()
        return linear + (size.text_encoders - linear) * self.weight_bytes

    def text_encoder_ram_bytes(self) -> float:
        """The text encoders as they are read into RAM: the training dtype, but a float8 T5 file's Linears stay in
        float8 with fp8_base (flux_parts.load_t5xxl's keep_fp8)."""
        total = self.size.text_encoders * self.weight_bytes
        t5 = self.size.parts.get("t5xxl")
        if t5 is not None and t5.stored_fp8 and self.cfg.fp8_base:
            total -= t5.linear_params * (self.weight_bytes - 1)
        return total

    def vae_bytes(self) -> float:
        vae_fp32 = self.size.recipe.vae_needs_float32(self.cfg.mixed_precision, self.cfg.no_half_vae)
        return self.size.vae * (4 if vae_fp32 else 2)

    def text_tokens(self) -> int:
        """The text tokens a transformer attends beside the image (T5's length); 0 for a U-Net."""
        if not self.size.blocks:
            return 0
        return self.size.recipe.joint_text_tokens(self.size.recipe.prompt_options(self.cfg))

    def lora_params(self) -> int:
        train_te = not self.cfg.network_train_unet_only
        te = self.size.lora_te + (self.size.parts["t5xxl"].lora_linear if "t5xxl" in self.size.parts
                                  and _network_arg_on(self.cfg, "train_t5xxl") else 0)
        return self.cfg.network_dim * (self.size.lora_linear + (te if train_te else 0))


def _network_arg_on(cfg: Config, name: str) -> bool:
    for arg in cfg.network_args or []:
        key, _, value = str(arg).partition("=")
        if key.strip() == name:
            return value.strip().strip("\"'").lower() in ("true", "1", "yes")
    return False


@dataclass
class BlockSwap:
    """blocks_to_swap as the engine does it (the denoiser's ``swap_plan``, sd-scripts' split): for Flux the last
    N // 2 double and 2 x (N - N // 2) single blocks, for a transformer of one kind of block its last N, keep their
    frozen weights in RAM, each copied in just before it runs. With gradient checkpointing one block is on the device at a time; without it the copies stay until the
    backward (the saved tensors hold them), so nothing is saved."""
    swapped_bytes: float  # the swapped blocks' weights (in RAM)
    device_saving: float  # what it takes off the device's peak in training

    @classmethod
    def of(cls, cfg: Config, size: ModelSize, bytes_per_weight: int) -> BlockSwap:
        count = int(getattr(cfg, "blocks_to_swap", None) or 0)
        if not count or not size.blocks:
            return cls(0.0, 0.0)
        (doubles, double_size), (singles, single_size) = size.blocks["double"], size.blocks["single"]
        if singles:  # Flux's split (sd-scripts): N // 2 double and 2 x (N - N // 2) single blocks
            n_double, n_single = min(count // 2, doubles), min((count - count // 2) * 2, singles)
        else:  # one kind of block (SD3, Anima, Lumina 2): the last N
            n_double, n_single = min(count, doubles), 0
        swapped = (n_double * double_size + n_single * single_size) * bytes_per_weight
        in_flight = (double_size if n_double else single_size) * bytes_per_weight
        return cls(swapped, swapped - in_flight if cfg.gradient_checkpointing else 0.0)


def activation_bytes(run: _Run, resolution: tuple[int, int]) -> tuple[float, float]:
    """(activations of one sample without checkpointing, the share gradient checkpointing keeps). A transformer's
    text tokens count as latent pixels (a token is 2 x 2 latent pixels); its checkpoints hold each block's input
    (2 bytes x width a token; on the CPU with cpu_offload_checkpointing) and, in the backward, one block's
    activations and their gradients."""
    cfg, size = run.cfg, run.size
    latent_pixels = (resolution[0] // 8) * (resolution[1] // 8) + 4 * run.text_tokens()
    per_pixel = size.recipe.estimate.activation_bytes_per_latent_pixel
    if size.blocks:
        per_pixel *= size.transformer_scale(1)
    per_sample = per_pixel * latent_pixels * (1 if run.half else 2)
    if not size.blocks:
        return per_sample, CHECKPOINTED_SHARE
    blocks, per_token = max(size.block_count, 1), 4 * per_pixel
    inputs = 0 if cfg.cpu_offload_checkpointing else blocks * 2 * size.blocks.get("hidden", 0)
    return per_sample, min(1.0, (inputs + 2 * per_token / blocks) / per_token)


def sample_flops(run: _Run, resolution: tuple[int, int]) -> float:
    """FLOPs of one training sample: the family's step at its native size, scaled by pixels (U-Net) or by tokens
    and their square (transformer attention) and the transformer's size; gradient checkpointing's extra forward."""
    constants = run.size.recipe.estimate
    pixels = resolution[0] * resolution[1]
    if not run.size.blocks:
        flops = constants.step_flops * pixels / constants.native_pixels
        return flops * (CHECKPOINTED_FLOPS if run.cfg.gradient_checkpointing else 1)
    ratio = (pixels / 256 + run.text_tokens()) / (constants.native_pixels / 256 + NATIVE_TEXT_TOKENS)
    linear = (1 - TRANSFORMER_ATTENTION_SHARE) * ratio * run.size.transformer_scale(2)
    flops = constants.step_flops * (linear + TRANSFORMER_ATTENTION_SHARE * ratio**2 * run.size.transformer_scale(1))
    return flops * (TRANSFORMER_CHECKPOINTED_FLOPS if run.cfg.gradient_checkpointing else 1)


def estimate(cfg: Config, size: ModelSize, num_images: int, steps_per_epoch: int, resolution: tuple[int, int],
             gpu: GPU | None) -> Estimate:
    run = _Run.of(cfg, size)
    swap = BlockSwap.of(cfg, size, run.unet_bytes)
    te_on_device, vae_on_device = run.text_encoder_bytes(), run.vae_bytes()
    lora_params = run.lora_params()
    states = OPTIMIZER_STATE_COPIES.get(cfg.optimizer_type.lower(), 2)
    lora_bytes = lora_params * 4 * (2 + states)  # weights, gradients and optimizer state, float32
    full_sample, share = activation_bytes(run, resolution)
    batch = cfg.train_batch_size
    activations = full_sample * (share if cfg.gradient_checkpointing else 1) * batch
    denoiser = size.unet * run.unet_bytes
    training = denoiser - swap.device_saving + lora_bytes + activations
    if not (run.te_cached and not run.sampling):
        training += te_on_device
    if not (run.latents_cached and not run.sampling):
        training += vae_on_device
    if not run.latents_cached:  # the VAE encodes each batch as it comes
        training += _vae_encode_bytes(run, resolution, batch)
    # the caches are built with the text encoders and the VAE on the device, before the denoiser is placed; the VAE
    # encodes a megapixel's worth of images at a time (vae_batch_size)
    caching = te_on_device + vae_on_device + (_vae_encode_bytes(run, resolution) if run.latents_cached else 0)
    phases = {"loading and caching": round(caching / GB + CUDA_OVERHEAD_GB, 2),
              "training": round(training / GB + CUDA_OVERHEAD_GB, 2)}
    vram = max(phases.values())
    ram = _ram_bytes(run, swap, num_images, resolution, gpu, lora_bytes + activations) / GB
    ram += RAM_BASE_GB_CPU if gpu is None else RAM_BASE_GB_CUDA
    disk = _cache_entries(cfg, num_images) * _latent_bytes(size, resolution) \
        if run.latents_cached and cfg.cache_latents_to_disk else 0
    if cfg.cache_text_encoder_outputs_to_disk:
        disk += num_images * size.recipe.estimate.te_cache_bytes_per_caption
    seconds = None
    if gpu is not None and gpu.peak_flops:
        micro_batches = steps_per_epoch * cfg.gradient_accumulation_steps
        seconds = micro_batches * cfg.train_batch_size * sample_flops(run, resolution) / (gpu.peak_flops
                                                                                          * ASSUMED_MFU)
        if cfg.gradient_checkpointing and cfg.cpu_offload_checkpointing:
            seconds *= CPU_OFFLOAD_CHECKPOINTING_TIME
        seconds += micro_batches * swap.swapped_bytes * (2 if cfg.gradient_checkpointing else 1) / PCIE_BYTES_PER_S
    result = Estimate(round(vram, 2), round(ram, 2), round(disk / GB, 6), seconds, gpu, phases=phases)
    if gpu is not None and vram > gpu.memory_gb * 0.95:
        result.warnings.append(_advice(cfg, vram, gpu, full_sample, share, bool(size.blocks)))
    return result


def _vae_encode_bytes(run: _Run, resolution: tuple[int, int], images: int | None = None) -> float:
    """The VAE encoder's working memory for the images it encodes at once (``images``, at most the batch's)."""
    pixels = resolution[0] * resolution[1]
    per_call = images_per_vae_call(run.cfg.vae_batch_size, pixels)
    if images is not None:
        per_call = min(per_call, images)
    vae_fp32 = run.size.recipe.vae_needs_float32(run.cfg.mixed_precision, run.cfg.no_half_vae)
    return VAE_ENCODE_BYTES_PER_PIXEL * pixels * per_call * (2 if vae_fp32 else 1)


def _cache_entries(cfg: Config, num_images: int) -> int:
    return num_images * (2 if cfg.flip_aug else 1)


def _latent_bytes(size: ModelSize, resolution: tuple[int, int]) -> int:
    """One cached latent: float32, the family's channels at 1/8 of the image's sides."""
    return size.latent_channels * (resolution[0] // 8) * (resolution[1] // 8) * 4


def _ram_bytes(run: _Run, swap: BlockSwap, num_images: int, resolution: tuple[int, int], gpu: GPU | None,
               training_on_cpu: float) -> float:
    """System RAM without the engine's own base. The denoiser and text encoders are read into it in the dtype they
    train in (a float8 T5 file stays float8 with fp8_base), the VAE in float32, each weight once; they leave for
    the device when placed, but for blocks_to_swap's blocks, which stay. With lowram a single-file model goes to the
    GPU a tensor at a time. In-memory caches (latents, text-encoder outputs) add; training on the CPU adds the
    adapters, their optimizer state and the activations. Checked against the measured peak: real-size SD1.5 layout,
    fp32, 64 px, batch 2, rank 8, CPU: 4.60 GiB measured over 100 steps, 4.85 GiB estimated (docs/benchmarks.md)."""
    cfg, size = run.cfg, run.size
    lowram = cfg.lowram and gpu is not None and Path(cfg.pretrained_model_name_or_path or "").expanduser().is_file()
    loaded = 0 if lowram else size.unet * run.weight_bytes + run.text_encoder_ram_bytes() + size.vae * 4
    held = max(loaded, swap.swapped_bytes)
    if run.latents_cached and not cfg.cache_latents_to_disk:
        held += _cache_entries(cfg, num_images) * _latent_bytes(size, resolution)
    if run.te_cached and not cfg.cache_text_encoder_outputs_to_disk:
        held += num_images * size.recipe.estimate.te_cache_bytes_per_caption
    return held + (training_on_cpu if gpu is None else 0)


def memory_tips(cfg: Config, per_sample: float | None = None, share: float = CHECKPOINTED_SHARE,
                transformer: bool = False) -> list[str]:
    """What to change to use less GPU memory, most effective first; with ``per_sample`` (activation bytes of one
    sample without checkpointing, ``share`` of them kept with it) the savings are given in GB. ``transformer``: the
    model has blocks to swap and its text encoders are large (Flux). Used before a run (the estimate) and after an
    out-of-memory error."""
    def saving(amount: float) -> str:
        return f" (about {amount / GB:.1f} GB less)" if per_sample else ""
    activations = (per_sample or 0) * cfg.train_batch_size
    kept = share if cfg.gradient_checkpointing else 1.0
    tips = []
    if not cfg.gradient_checkpointing:
        tips.append(f"turn on gradient_checkpointing = true{saving(activations * (1 - share))}")
    if cfg.train_batch_size > 1:
        tips.append(f"lower train_batch_size (now {cfg.train_batch_size}); lower train_batch_size from "
                    f"{cfg.train_batch_size} to 1{saving((activations - (per_sample or 0)) * kept)}")
    if cfg.color_aug or cfg.random_crop:
        tips.append("turn off color_aug and random_crop, then cache_latents = true")
    elif not (cfg.cache_latents or cfg.cache_latents_to_disk):
        tips.append("turn on cache_latents = true")
    if cfg.mixed_precision == "no":
        tips.append('use mixed_precision = "bf16" (or "fp16")')
    if not (cfg.fp8_base or cfg.fp8_base_unet):
        tips.append("store the frozen weights in float8: fp8_base = true (with mixed precision)")
    if transformer and not getattr(cfg, "blocks_to_swap", None):
        tips.append("keep some transformer blocks in system RAM: blocks_to_swap = 16 (with gradient_checkpointing; "
                    "slower; sd-scripts: 12 GB cards train Flux.1 this way)")
    if cfg.optimizer_type.lower() == "adamw":
        tips.append('use optimizer_type = "AdamW8bit"')
    if not cfg.network_train_unet_only:
        tips.append("train the U-Net only (network_train_unet_only) with cache_text_encoder_outputs")
    elif transformer and not (cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk):
        tips.append("turn on cache_text_encoder_outputs = true (T5-XXL leaves the GPU once the captions are encoded)")
    tips.append(f"lower the resolution (now {cfg.resolution})")
    return tips


def _advice(cfg: Config, vram: float, gpu: GPU, per_sample: float, share: float, transformer: bool) -> str:
    return (f"this run needs about {vram:.1f} GB but {gpu.name} has {gpu.memory_gb:.0f} GB: "
            + "; ".join(memory_tips(cfg, per_sample, share, transformer)))


def resource_estimate(cfg: Config, data, steps_per_epoch: int, gpu: GPU | None) -> Estimate | None:
    """The estimate for a checked config and its scanned dataset; None when the model cannot be sized."""
    separate = {name: getattr(cfg, name, None) for family in FAMILIES for name in family.separate_files}
    try:
        size = model_size(cfg.pretrained_model_name_or_path, separate)
    except (OSError, ValueError, KeyError, struct.error, UserError):
        return None
    return estimate(cfg, size, len(data.items), steps_per_epoch, data.datasets[0].resolution, gpu)
