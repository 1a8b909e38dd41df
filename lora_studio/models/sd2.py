"""Stable Diffusion 2.x: SD1's UNet with linear projections and 64-channel attention heads, the OpenCLIP ViT-H text
encoder (23 of its 24 layers: SD2 conditions on the penultimate one) padded with "!", epsilon (512) or v (768-v)
prediction. Its LoRA files name the text encoder's layers as SD1's do."""

from __future__ import annotations

from .family import EstimateConstants
from .sd1 import SD1, SD1_UNET

SD2_UNET = {**SD1_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": True, "sample_size": 96}
SD2_TEXT_ENCODER = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "gelu", "projection_dim": 512,
    "layer_norm_eps": 1e-05,
}


class SD2(SD1):
    name = "sd2"
    title = "SD2.x"
    base_model_version = "sd_v2"
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    tokenizer_pad = "!"
    # not measured on a GPU: SD1.5's measured figure scaled by the wider heads (0.95 / 0.85, as before calibration)
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.35e6, step_flops=2.1e12,
                                 native_pixels=768 * 768, te_cache_bytes_per_caption=77 * 1024 * 4)

    def matches_checkpoint(self, keys):
        return any(k.startswith("cond_stage_model.model.") for k in keys)

    def matches_diffusers(self, model_index, unet_config):
        return bool(unet_config.get("use_linear_projection"))

    def check_flags(self, v2, source):
        from ..errors import UserError

        if not v2:
            raise UserError(f"{source} is an SD2.x model: set v2 = true (and v_parameterization = true for 768-v "
                            "models)")

    def load_single_file(self, sd, source, options=None):
        from . import ldm_build, ldm_keys
        from .stable_diffusion import SD_VAE
        from .tokenizer import clip_tokenizer

        vae = ldm_build.build_vae(sd, SD_VAE, source, self.vae_scale)
        unet_cfg = ldm_build.unet_config_from_ldm(sd, SD2_UNET)
        unet_cfg["attention_head_dim"] = ldm_build.attention_heads_per_64_channels(unet_cfg["block_out_channels"])
        unet = ldm_build.build_unet(sd, unet_cfg, source)
        te = ldm_build.build_openclip_text_encoder(sd, ldm_keys.OPENCLIP_PREFIX, SD2_TEXT_ENCODER, source,
                                                   with_projection=False)
        return self._components(unet, vae, [te], [clip_tokenizer(pad_token=self.tokenizer_pad)], source)

    def architecture(self, v_parameterization):
        return "stable-diffusion-v2-768-v/lora" if v_parameterization else self.modelspec_architecture
