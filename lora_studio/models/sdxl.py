"""SDXL: three UNet levels (no attention in the first, 2 and 10 transformer layers after), two text encoders whose
penultimate hidden states are joined (768 + 1280 = 2048), the pooled projection of the second, and size/crop
conditioning ("time ids") through the added embedding. LoRA files name the UNet in SGM/LDM layout
(``lora_unet_input_blocks_4_1_...``), as sd-scripts writes them, and the encoders ``lora_te1_`` / ``lora_te2_``."""

from __future__ import annotations

from .family import EstimateConstants
from .sd1 import SD1_TEXT_ENCODER, SD1_UNET
from .stable_diffusion import SD_VAE, StableDiffusionFamily, loading_dtype

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


class SDXL(StableDiffusionFamily):
    name = "sdxl"
    title = "SDXL"
    base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    te_prefixes = ("lora_te1", "lora_te2")
    vae_scale = SDXL_VAE_SCALE
    # SDXL-1024 LoRA keeps 8.0 GiB of activations a sample in bf16 (measured on an H200); 14.3 TFLOP a sample
    # (perf.md). Its VAE overflows in fp16.
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.52e6, step_flops=14.31e12,
                                 native_pixels=1024 * 1024, te_cache_bytes_per_caption=77 * 2048 * 4 + 1280 * 4,
                                 vae_fp32_under_fp16=True)

    def matches_checkpoint(self, keys):
        return any(k.startswith("conditioner.embedders.") for k in keys)

    def matches_diffusers(self, model_index, unet_config):
        return "text_encoder_2" in model_index or unet_config.get("addition_embed_type") == "text_time"

    def load_single_file(self, sd, source, options=None):
        from . import ldm_build, ldm_keys
        from .tokenizer import clip_tokenizer

        vae = ldm_build.build_vae(sd, SD_VAE, source, self.vae_scale)
        te1 = ldm_build.build_clip_text_encoder(sd, ldm_keys.SDXL_TE1_PREFIX, SDXL_TEXT_ENCODER_1, source)
        te2 = ldm_build.build_openclip_text_encoder(sd, ldm_keys.SDXL_TE2_PREFIX, SDXL_TEXT_ENCODER_2, source,
                                                    with_projection=True)
        unet_cfg = ldm_build.unet_config_from_ldm(sd, SDXL_UNET)
        unet_cfg["attention_head_dim"] = ldm_build.attention_heads_per_64_channels(unet_cfg["block_out_channels"])
        unet_cfg["addition_time_embed_dim"] = (unet_cfg["projection_class_embeddings_input_dim"]
                                               - te2.config.projection_dim) // 6
        unet = ldm_build.build_unet(sd, unet_cfg, source)
        tokenizers = [clip_tokenizer(pad_token=self.tokenizer_pad), clip_tokenizer(pad_token="!")]
        return self._components(unet, vae, [te1, te2], tokenizers, source)

    def _diffusers_text_encoders(self, folder):
        from transformers import CLIPTextModelWithProjection

        text_encoders, tokenizers = super()._diffusers_text_encoders(folder)
        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2",
                                                                         local_files_only=True,
                                                                         dtype=loading_dtype("text encoder")))
        tokenizers.append(self._tokenizer(folder / "tokenizer_2", "!"))
        return text_encoders, tokenizers

    def unet_lora_stem(self, module_path, unet_config):
        from .ldm_keys import unet_key

        up_attn = ["CrossAttn" in t for t in unet_config.up_block_types]
        ldm = unet_key(module_path + ".weight", unet_config.layers_per_block, up_attn).removesuffix(".weight")
        return "lora_unet_" + ldm.replace(".", "_")

    def lora_blocks(self):
        from ..network.blocks import BlockLayout

        return BlockLayout(per_side=9, middle=3, total=23, ends=True)

    def lora_block_index(self, stem):
        """sd-scripts' SDXL numbering of SGM names: input_blocks_N -> 1 + N, middle_block_N -> 10 + N,
        output_blocks_N -> 13 + N; the embeddings 0 and out 22."""
        name = stem.removeprefix("lora_unet_")
        for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
            if name.startswith(prefix):
                return base + int(name[len(prefix):].split("_")[0])
        if name.startswith(("time_embed_", "label_emb_")):
            return 0
        return 22 if name.startswith("out_") else -1

    def encode_prompt(self, components, captions, device, options, weighted=False):
        """Penultimate hidden states of both encoders side by side, and the second one's pooled projection (never
        weighted by the captions' emphasis, as in sd-scripts)."""
        import torch

        from .clip import encode_with_clip

        te1, te2 = components.text_encoders
        tok1, tok2 = components.tokenizers
        length = options["max_token_length"]
        hidden1 = encode_with_clip(te1, tok1, captions, 2, length, device, final_norm=False, weighted=weighted)
        hidden2, pooled = encode_with_clip(te2, tok2, captions, 2, length, device, final_norm=False, pooled=True,
                                           weighted=weighted)
        return {"encoder_hidden_states": torch.cat([hidden1, hidden2.to(hidden1.dtype)], dim=-1),
                "text_embeds": pooled}

    def add_image_conditioning(self, cond, batch, device):
        """(original height, width, crop top, left, target height, width) of each image, from the data."""
        return {**cond, "time_ids": batch["time_ids"].to(device)}

    def pipeline(self, components, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoders[0],
                                         text_encoder_2=components.text_encoders[1],
                                         tokenizer=components.tokenizers[0], tokenizer_2=components.tokenizers[1],
                                         unet=components.denoiser, scheduler=scheduler)

    def pipeline_prompt_kwargs(self, cond, uncond, dtype):
        return {**super().pipeline_prompt_kwargs(cond, uncond, dtype),
                "pooled_prompt_embeds": cond["text_embeds"].to(dtype),
                "negative_pooled_prompt_embeds": uncond["text_embeds"].to(dtype)}
