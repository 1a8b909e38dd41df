"""Model families: what differs between SD1.x, SD2.x and SDXL, and nothing else.

A family knows its default component configs, how to recognise its checkpoints, how to encode a prompt, and how its
modules are named in a LoRA file. Data, networks, the loop and saving are shared by all families.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError

SD1_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False, "transformer_layers_per_block": 1,
}
SD1_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
SD1_TEXT_ENCODER = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-05,
}
# SD2.x: linear projections in the transformer blocks, 64-channel attention heads, the OpenCLIP ViT-H text encoder
# (23 of its 24 layers: SD2 conditions on the penultimate one), padded with "!".
SD2_UNET = {**SD1_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True, "sample_size": 96}
SD2_TEXT_ENCODER = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 512,
    "layer_norm_eps": 1e-05,
}


def sd2_attention_heads(block_out_channels: list[int]) -> list[int]:
    """SD2's heads per UNet level: one per 64 channels (320 -> 5, ..., 1280 -> 20)."""
    return [max(1, c // 64) for c in block_out_channels]


# SDXL: three levels (no attention in the first), 2 or 10 transformer layers a block, two text encoders whose
# penultimate hidden states are joined (768 + 1280 = 2048), the pooled projection of the second, and size/crop
# conditioning ("time ids") through the added embedding.
SDXL_UNET = {**SD1_UNET, "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
             "cross_attention_dim": 2048, "use_linear_projection": True, "sample_size": 128,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": [1, 2, 10], "addition_embed_type": "text_time",
             "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816}
SDXL_TEXT_ENCODER_1 = dict(SD1_TEXT_ENCODER)
SDXL_TEXT_ENCODER_2 = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 1280,
    "layer_norm_eps": 1e-05,
}
SDXL_VAE_SCALE = 0.13025

SD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}

# Children of a CLIP encoder layer that get an adapter, with their names in a LoRA file.
TE_TARGETS = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.k_proj": "self_attn_k_proj",
              "self_attn.v_proj": "self_attn_v_proj", "self_attn.out_proj": "self_attn_out_proj",
              "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2"}


@dataclass
class Components:
    """A loaded base model."""
    family: ModelFamily
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    scheduler_config: dict
    source: str
    info: dict = field(default_factory=dict)


class ModelFamily:
    name = ""
    base_model_version = ""
    modelspec_architecture = ""
    modelspec_implementation = "diffusers"
    te_prefixes: tuple[str, ...] = ()
    tokenizer_pad = "<|endoftext|>"
    size_conditioning = False  # SDXL: the UNet also takes (original size, crop, target size) per image

    def architecture(self, v_parameterization: bool) -> str:
        """The modelspec architecture of a LoRA for this family."""
        return self.modelspec_architecture

    def unet_lora_stem(self, module_path: str, unet_config) -> str:
        return "lora_unet_" + module_path.replace(".", "_")

    def te_lora_stem(self, te_index: int, layer_index: int, child: str) -> str:
        return f"{self.te_prefixes[te_index]}_text_model_encoder_layers_{layer_index}_{TE_TARGETS[child]}"

    def encode_prompt(self, components: Components, captions: list[str], clip_skip: int, max_token_length: int,
                      device) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _encoder_layers(text_encoder) -> torch.nn.ModuleList:
    """The CLIP encoder's layer list, wherever the installed transformers version puts it."""
    for name, module in text_encoder.named_modules():
        if name.endswith("encoder.layers") and isinstance(module, torch.nn.ModuleList):
            return module
    raise RuntimeError("no encoder.layers in the text encoder")


def encode_with_clip(text_encoder, tokenizer, captions: list[str], clip_skip: int, max_token_length: int,
                     device, final_norm: bool = True, pooled: bool = False):
    """Hidden states of ``captions`` as sd-scripts computes them.

    Captions longer than 75 tokens (max_token_length 150/225) are encoded in 75-token chunks, each framed by start
    and end tokens, and joined keeping one start token at the front and one end token at the back. With ``pooled``,
    also the projected pooled output of the first chunk (SDXL's second encoder), as sd-scripts takes it.
    """
    chunk = tokenizer.model_max_length  # 77
    total = max_token_length + 2
    ids = tokenizer(captions, padding="max_length", truncation=True, max_length=total, return_tensors="pt").input_ids
    ids = ids.to(device)
    if total == chunk:
        pieces = [ids]
    else:
        body = ids[:, 1:-1]
        pieces = []
        for start in range(0, max_token_length, chunk - 2):
            part = body[:, start:start + chunk - 2]
            bos = ids[:, :1]
            eos = torch.full_like(bos, tokenizer.eos_token_id)
            part = torch.cat([bos, part, eos], dim=1)
            # A chunk past the caption's end: pad after the end token, as the tokenizer does.
            pieces.append(part)
    states, pooled_out = [], None
    for piece in pieces:
        out = text_encoder(piece, output_hidden_states=clip_skip > 1, return_dict=True)
        if clip_skip > 1:
            hidden = out.hidden_states[-clip_skip]
            if final_norm:
                hidden = _final_layer_norm(text_encoder)(hidden)
        else:
            hidden = out.last_hidden_state
        states.append(hidden)
        if pooled and pooled_out is None:
            pooled_out = out.text_embeds
    if len(states) == 1:
        joined = states[0]
    else:
        joined = torch.cat([states[0][:, :1]] + [s[:, 1:-1] for s in states] + [states[-1][:, -1:]], dim=1)
    return (joined, pooled_out) if pooled else joined


def _final_layer_norm(text_encoder):
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    raise RuntimeError("no final_layer_norm in the text encoder")


class SD1(ModelFamily):
    name = "sd1"
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    te_prefixes = ("lora_te",)

    def encode_prompt(self, components, captions, clip_skip, max_token_length, device):
        hidden = encode_with_clip(components.text_encoders[0], components.tokenizers[0], captions, clip_skip,
                                  max_token_length, device)
        return {"encoder_hidden_states": hidden}


class SD2(SD1):
    """SD2.x: same prompt encoding as SD1 with the OpenCLIP encoder; the file names its layers like SD1's."""
    name = "sd2"
    base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    tokenizer_pad = "!"

    def architecture(self, v_parameterization: bool) -> str:
        return "stable-diffusion-v2-768-v/lora" if v_parameterization else self.modelspec_architecture


class SDXL(ModelFamily):
    """SDXL: UNet names in the LoRA file in SGM/LDM layout (``lora_unet_input_blocks_4_1_...``), as sd-scripts
    writes them; text encoders ``lora_te1_`` (CLIP ViT-L) and ``lora_te2_`` (OpenCLIP ViT-bigG)."""
    name = "sdxl"
    base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    te_prefixes = ("lora_te1", "lora_te2")
    size_conditioning = True

    def unet_lora_stem(self, module_path: str, unet_config) -> str:
        from .ldm_keys import unet_key

        up_attn = ["CrossAttn" in t for t in unet_config.up_block_types]
        ldm = unet_key(module_path + ".weight", unet_config.layers_per_block, up_attn).removesuffix(".weight")
        return "lora_unet_" + ldm.replace(".", "_")

    def encode_prompt(self, components, captions, clip_skip, max_token_length, device):
        """Penultimate hidden states of both encoders side by side, and the second one's pooled projection."""
        te1, te2 = components.text_encoders
        tok1, tok2 = components.tokenizers
        hidden1 = encode_with_clip(te1, tok1, captions, 2, max_token_length, device, final_norm=False)
        hidden2, pooled = encode_with_clip(te2, tok2, captions, 2, max_token_length, device, final_norm=False,
                                           pooled=True)
        return {"encoder_hidden_states": torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1),
                "text_embeds": pooled}


FAMILIES = {"sd1": SD1(), "sd2": SD2(), "sdxl": SDXL()}


def family_from_checkpoint_keys(keys) -> str:
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys) or \
            any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd1"
    return "unknown"


def family_from_diffusers_folder(model_index: dict, unet_config: dict) -> str:
    if "text_encoder_2" in model_index or unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet_config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


def get_family(detected: str, source: str, v2: bool) -> ModelFamily:
    """The family to train, checking what the checkpoint is against what the config says."""
    if detected == "unknown":
        raise UserError(f"{source} does not look like a Stable Diffusion checkpoint (no UNet/text-encoder weights "
                        "with known names)")
    if detected == "sd1" and v2:
        raise UserError(f"{source} is an SD1.x model but the config sets v2 = true; remove v2")
    if detected == "sdxl" and v2:
        raise UserError(f"{source} is an SDXL model but the config sets v2 = true; remove v2")
    if detected == "sd2" and not v2:
        raise UserError(f"{source} is an SD2.x model: set v2 = true (and v_parameterization = true for 768-v models)")
    if detected not in FAMILIES:
        raise UserError(f"{source} is a {detected} model, which LoRA Studio does not train")
    return FAMILIES[detected]
