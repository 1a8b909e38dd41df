"""Tiny random Stable Diffusion models with the real block topology, for the demo and the tests (nothing downloaded).

SD1.x topology: 4 UNet levels with 2 ResNets each (cross-attention in the first three), a 4-level VAE (8x scale),
a CLIP text encoder with the real 49,408-token vocabulary. Channels are small so a training step takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .ldm_build import attention_heads_per_64_channels
from .sd1 import SD1_TEXT_ENCODER, SD1_UNET
from .sd2 import SD2_TEXT_ENCODER, SD2_UNET
from .sdxl import SDXL_TEXT_ENCODER_2, SDXL_UNET, SDXL_VAE_SCALE
from .single_file import single_file_state_dict
from .stable_diffusion import SD_SCHEDULER, SD_VAE
from .tokenizer import clip_tokenizer

TINY_UNET = {**SD1_UNET, "block_out_channels": [32, 32, 64, 64], "cross_attention_dim": 64, "sample_size": 8}
TINY_VAE = {**SD_VAE, "block_out_channels": [32, 32, 32, 32], "sample_size": 64}
TINY_TEXT_ENCODER = {**SD1_TEXT_ENCODER, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                     "num_hidden_layers": 3, "projection_dim": 64}


_TINY_CHANNELS = [32, 32, 64, 64]
TINY_SD2_UNET = {**SD2_UNET, "block_out_channels": _TINY_CHANNELS, "cross_attention_dim": 64, "sample_size": 8,
                 "attention_head_dim": attention_heads_per_64_channels(_TINY_CHANNELS)}
TINY_SD2_TEXT_ENCODER = {**SD2_TEXT_ENCODER, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 1,
                         "num_hidden_layers": 3, "projection_dim": 64}


def build_tiny_sd2(seed: int = 0):
    """SD2.x topology (linear projections, per-level heads, an OpenCLIP-style gelu text encoder padded with "!")."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(TINY_SD2_UNET)
    vae = AutoencoderKL.from_config(TINY_VAE)
    te = CLIPTextModel(CLIPTextConfig(**TINY_SD2_TEXT_ENCODER))
    return unet, vae, te, clip_tokenizer(pad_token="!")


TINY_SDXL_UNET = {**SDXL_UNET, "block_out_channels": [32, 64, 64], "attention_head_dim": [1, 1, 1],
                  "transformer_layers_per_block": [1, 1, 2], "cross_attention_dim": 96, "sample_size": 8,
                  "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 64}
TINY_SDXL_TEXT_ENCODER_1 = {**TINY_TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32}
TINY_SDXL_TEXT_ENCODER_2 = {**SDXL_TEXT_ENCODER_2, "hidden_size": 64, "intermediate_size": 128,
                            "num_attention_heads": 1, "num_hidden_layers": 3, "projection_dim": 64}


def build_tiny_sdxl(seed: int = 0):
    """SDXL topology: 3 UNet levels (no attention in the first, 1 and 2 transformer layers after), size/crop
    conditioning, CLIP-L-style and OpenCLIP-bigG-style text encoders (the second with a projection)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(TINY_SDXL_UNET)
    vae = AutoencoderKL.from_config({**TINY_VAE, "scaling_factor": SDXL_VAE_SCALE})
    te1 = CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TEXT_ENCODER_1))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TEXT_ENCODER_2))
    return unet, vae, [te1, te2], [clip_tokenizer(), clip_tokenizer(pad_token="!")]


def save_sdxl_diffusers_folder(folder: Path, unet, vae, text_encoders, tokenizers) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
                                     tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                     scheduler=EulerDiscreteScheduler.from_config(SD_SCHEDULER))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_sd1(seed: int = 0):
    """(unet, vae, text_encoder, tokenizer) with random weights from ``seed``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(TINY_UNET)
    vae = AutoencoderKL.from_config(TINY_VAE)
    te = CLIPTextModel(CLIPTextConfig(**TINY_TEXT_ENCODER))
    return unet, vae, te, clip_tokenizer()


def save_diffusers_folder(folder: Path, unet, vae, te, tokenizer) -> Path:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler.from_config(SD_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def ldm_state_dict(unet, vae, te) -> dict[str, torch.Tensor]:
    """The tiny model as a single-file checkpoint names it; an SD2 model gets the unused last text-encoder layer real
    SD2 checkpoints hold (random here)."""
    extra = None
    if not isinstance(te, (list, tuple)) and unet.config.use_linear_projection:
        state = te.state_dict()
        layer0 = {k.split("encoder.layers.0.", 1)[1]: v for k, v in state.items() if "encoder.layers.0." in k}
        generator = torch.Generator().manual_seed(te.config.num_hidden_layers)
        extra = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in layer0.items()}
    return single_file_state_dict(unet, vae, te, extra)


def save_single_file(path: Path, unet, vae, te) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ldm_state_dict(unet, vae, te), str(path))
    return path
