"""What a run builds before its first step: the model on its device, the attention it uses, the network, the
optimizer and its schedule, and the latent and text-encoder caches."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..config.network_args import NetworkArgs
from ..data.latent_cache import build_latent_cache, vae_fingerprint
from ..errors import UserError
from ..models.family import Components
from ..models.fp8 import fp8_problem, store_fp8
from ..network.lora import LoRANetwork
from .compile import compile_denoiser
from .optim import build_optimizer, build_scheduler
from .plan import images_per_vae_call
from .precision import Precision
from .outputs import latent_cache_fallback
from .te_cache import build_te_cache, check_te_cache_allowed, te_fingerprint
from .vae import encode_latents

log = logging.getLogger("lora_studio")


@dataclass(frozen=True)
class Trained:
    """Which parts of the model the run trains."""
    unet: bool
    text_encoder: bool

    @classmethod
    def from_config(cls, cfg: Config) -> Trained:
        """A part whose own learning rate is 0 is not trained, and gets no adapters (as the Kohya_ss GUI decides)."""
        te_lr = cfg.text_encoder_lr
        te_off = te_lr is not None and all(lr == 0 for lr in (te_lr if isinstance(te_lr, list) else [te_lr]))
        return cls(not cfg.network_train_text_encoder_only and cfg.unet_lr != 0,
                   not cfg.network_train_unet_only and not te_off)


def choose_attention(unet, cfg: Config) -> str:
    """Set the U-Net's attention: xformers when asked for, else PyTorch SDPA (sd-scripts' sdpa, its mem_eff_attn,
    and the default). Returns what is used, for the log."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if cfg.xformers:
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers" + (" (sdpa is set too; xformers wins, as in sd-scripts)" if cfg.sdpa else "")
        except Exception as exc:  # not installed, no wheel for this torch, or no GPU: SDPA does the same job
            unet.set_attn_processor(AttnProcessor2_0())
            log.warning("xformers = true but xformers cannot be used here (%s); training with PyTorch SDPA "
                        "attention, which is as fast", str(exc).splitlines()[0][:160])
            return "PyTorch SDPA (xformers unavailable)"
    unet.set_attn_processor(AttnProcessor2_0())
    if cfg.mem_eff_attn:
        return "PyTorch SDPA (mem_eff_attn is sd-scripts' own memory-efficient attention; SDPA does its job)"
    return "PyTorch SDPA"


@contextlib.contextmanager
def low_ram_loading(cfg: Config, device: torch.device, is_main: bool = True):
    """sd-scripts' lowram: a single-file checkpoint's weights go to the GPU one tensor at a time as they are read
    (each in its training dtype), so the model never sits in system RAM. Also says, once, that highvram changes
    nothing here."""
    if cfg.highvram and is_main:
        log.info("highvram: no effect; sd-scripts empties the CUDA cache while caching latents unless it is set, "
                 "LoRA Studio never does, so every run already works this way")
    why_not = None
    if cfg.lowram and device.type != "cuda":
        why_not = "no effect without a GPU (the model is built in system RAM, where it trains)"
    elif cfg.lowram and not Path(cfg.pretrained_model_name_or_path).expanduser().is_file():
        why_not = ("no effect with a diffusers folder: from_pretrained already reads its weights straight into the "
                   "model, with no second copy in system RAM")
    if why_not and is_main:
        log.info("lowram: %s", why_not)
    if not cfg.lowram or why_not:
        yield
        return
    with torch.device(device):
        yield


def place_model(c: Components, cfg: Config, precision: Precision, device: torch.device, trained: Trained) -> str:
    """Frozen weights in the training precision on the device (the VAE as the family needs it); returns the
    attention used."""
    place_encoders(c, cfg, precision, device, trained)
    return place_denoiser(c, cfg, precision, device)


def place_encoders(c: Components, cfg: Config, precision: Precision, device: torch.device, trained: Trained) -> None:
    """The text encoders and the VAE on the device, in the dtypes they run in; first, so that caching their outputs
    happens before the denoiser takes its share of the GPU (sd-scripts moves Flux's transformer out for it too)."""
    for te in c.text_encoders:
        te.to(device, precision.weight_dtype)
    vae_fp32 = c.family.vae_needs_float32(precision.mode, cfg.no_half_vae) or precision.cpu_loss_scaling
    c.vae.to(device, torch.float32 if vae_fp32 else precision.weight_dtype)
    store_frozen_fp8(c, precision, device, denoiser=False)
    if cfg.gradient_checkpointing and trained.text_encoder:
        for te in c.text_encoders:
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            te.train()


def place_denoiser(c: Components, cfg: Config, precision: Precision, device: torch.device) -> str:
    """The denoiser on the device in the training dtype, its frozen weights in float8 with fp8_base, then block
    swap where the family has it (after fp8: the swapped blocks keep their float8 weights); returns the attention."""
    attention = choose_attention(c.denoiser, cfg) if hasattr(c.denoiser, "set_attn_processor") \
        else "PyTorch SDPA" + (" (xformers is for U-Nets; SDPA does its job)" if cfg.xformers else "")
    c.family.place_denoiser(c, cfg, device, precision.weight_dtype)
    if cfg.channels_last:
        c.denoiser.to(memory_format=torch.channels_last)
    store_frozen_fp8(c, precision, device, text_encoders=False)
    c.family.finish_placing(c, cfg, device)
    if cfg.gradient_checkpointing:
        c.family.enable_gradient_checkpointing(c, cfg)
        c.denoiser.train()
    return attention


def release_unneeded(c: Components, latents_cached: bool, te_cached: bool, trained: Trained,
                     sampling: bool) -> list[str]:
    """Free the VAE once every image's latents are cached, and the text encoders once every caption's outputs are
    (when they are not trained), unless sample images need them; returns what was freed. A paused run's test images
    load them back (``restore_released``)."""
    freed = []
    if latents_cached and not sampling and c.vae is not None:
        c.vae = None
        freed.append("the VAE")
    if te_cached and not trained.text_encoder and not sampling and c.text_encoders:
        c.text_encoders = []
        freed.append("the text encoder(s)")
    if freed:
        import gc

        gc.collect()
        log.info("freed %s: the cache holds what training needs from them", " and ".join(freed))
    return freed


def restore_released(c: Components, cfg: Config, precision: Precision, device: torch.device) -> None:
    """Load the VAE and text encoders ``release_unneeded`` freed back from the model files (a paused run's test
    images need them)."""
    if c.vae is not None and c.text_encoders:
        return
    from ..models.ldm_build import load_dtypes
    from ..models.loading import load_components

    log.info("loading the VAE and text encoders back for the test images")
    with load_dtypes(unet=precision.weight_dtype, text_encoder=precision.weight_dtype):
        fresh = load_components(cfg.pretrained_model_name_or_path, cfg.vae, cfg.v2, cfg.allow_pickle, options=cfg)
    if c.vae is None:
        vae_fp32 = c.family.vae_needs_float32(precision.mode, cfg.no_half_vae) or precision.cpu_loss_scaling
        c.vae = fresh.vae.to(device, torch.float32 if vae_fp32 else precision.weight_dtype)
    if not c.text_encoders:
        c.text_encoders = [te.to(device, precision.weight_dtype) for te in fresh.text_encoders]


def store_frozen_fp8(c: Components, precision: Precision, device: torch.device, denoiser: bool = True,
                     text_encoders: bool = True) -> None:
    """fp8_base / fp8_base_unet: the denoiser's (and the text encoders') Linear and Conv2d weights in float8,
    computed in the training precision; before the adapters wrap those layers."""
    parts = ([(c.family.denoiser_title, c.denoiser)] if precision.fp8_unet and denoiser else []) + \
        ([("text encoder", te) for te in c.text_encoders] if precision.fp8_text_encoders and text_encoders else [])
    if not parts:
        return
    problem = fp8_problem(device)
    if problem:
        raise UserError(f"fp8_base: {problem}; turn fp8_base and fp8_base_unet off")
    layers = saved = 0
    for _, model in parts:
        n, b = store_fp8(model, precision.weight_dtype)
        layers, saved = layers + n, saved + b
    log.info("fp8_base: %d Linear/Conv weights of the %s stored in float8 (%.2f GB less), computed in %s", layers,
             " and ".join(dict.fromkeys(name + "s" if name == "text encoder" else name for name, _ in parts)),
             saved / 2**30, str(precision.weight_dtype).replace("torch.", ""))


def build_network(c: Components, cfg: Config, net_args: NetworkArgs, trained: Trained, seed: int,
                  device: torch.device, precision: Precision, shapes: int = 1) -> LoRANetwork:
    """The run's adapters on ``device`` (float32 unless full_fp16 / full_bf16), computing in the run's autocast
    dtype; with torch_compile the denoiser is compiled after they are attached (``shapes``: its bucket shapes)."""
    torch.manual_seed(seed)  # identical initial adapters in every process
    network = LoRANetwork(c, cfg.network_dim, cfg.network_alpha, trained.unet, trained.text_encoder,
                          cfg.network_dropout, net_args)
    if cfg.network_weights:
        network.load_weights(cfg.network_weights)
    network.attach().to(device, precision.adapter_dtype)
    network.set_compute_dtype(precision.compute_dtype)
    if cfg.torch_compile:  # after the LoRA hooks are in place, so the compiled graph includes them
        compile_denoiser(c.denoiser, cfg, shapes)
    network.train()
    return network


def describe_network(network: LoRANetwork, cfg: Config, net_args: NetworkArgs) -> None:
    log.info("%s: %d U-Net and %d text-encoder modules, rank %d, alpha %s%s", net_args.describe(),
             len(network.unet_stems), sum(len(s) for s in network.te_stems), cfg.network_dim,
             cfg.network_alpha or cfg.network_dim,
             f"; conv rank {net_args.conv_dim}, alpha {net_args.conv_alpha}" if net_args.conv_dim else "")


def build_optimization(network: LoRANetwork, cfg: Config, total_steps: int):
    """(param groups, optimizer, learning-rate schedule) with sd-scripts' per-part learning rates."""
    unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate
    te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
    groups = network.param_groups(unet_lr, te_lr if isinstance(te_lr, list) else [te_lr])
    if not groups:
        raise UserError("every learning rate is 0: nothing would be trained (check unet_lr / text_encoder_lr)")
    optimizer = build_optimizer(cfg, groups)
    return groups, optimizer, build_scheduler(cfg, optimizer, total_steps)


def cache_latents(c: Components, data, cfg: Config, device: torch.device, seed: int, accelerator) -> dict:
    """Latents of every image (and its flip). On disk, the first process of each machine writes the cache beside
    that machine's images and the others read it (machines sharing a disk write the same files, atomically)."""
    scale_shift = c.family.vae_scale_and_shift(c.vae)
    vae_id = vae_fingerprint(c.vae) + f"|{scale_shift}"
    generator = torch.Generator(device=device).manual_seed(seed)
    fallback = latent_cache_fallback(cfg)

    def encode(pixels):
        return encode_latents(c.vae, pixels, device, generator, scale_shift)

    largest = max((w * h for w, h in data.bucket_counts()), default=0)
    to_disk, batch = cfg.cache_latents_to_disk, images_per_vae_call(cfg.vae_batch_size, largest)
    if to_disk and accelerator.num_processes > 1:
        if accelerator.is_local_main_process:
            build_latent_cache(data, encode, vae_id, True, True, fallback, batch)
        accelerator.wait_for_everyone()
        return build_latent_cache(data, encode, vae_id, True, False, fallback, batch, show_progress=False)
    return build_latent_cache(data, encode, vae_id, to_disk, True, fallback, batch,
                              show_progress=accelerator.is_main_process)


def cache_text_encoder_outputs(c: Components, data, cfg: Config, trained: Trained, device: torch.device,
                               precision: Precision, accelerator) -> dict:
    check_te_cache_allowed(cfg, trained.text_encoder, data, c.family)
    folders = {}
    for i, item in enumerate(data.items):
        folders.setdefault(data.caption_for(i, 0, (0,)), item.path.parent)
    options = c.family.prompt_options(cfg)
    fingerprint = te_fingerprint(c.text_encoders, options, cfg.weighted_captions,
                                 c.info.get("text_encoder_identity")) + c.family.name

    def encode(captions):
        with precision.autocast(device):
            return c.family.encode_prompt(c, captions, device, options, weighted=cfg.weighted_captions)

    to_disk = cfg.cache_text_encoder_outputs_to_disk
    batch = getattr(cfg, "text_encoder_batch_size", None) or 8  # sd-scripts' text_encoder_batch_size
    if to_disk and accelerator.num_processes > 1:
        if accelerator.is_local_main_process:
            build_te_cache(folders, encode, fingerprint, True, batch)
        accelerator.wait_for_everyone()
    return build_te_cache(folders, encode, fingerprint, to_disk, batch, show_progress=accelerator.is_main_process)
