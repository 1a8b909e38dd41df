"""Stable Diffusion 1.x: a 4-level UNet with cross-attention in the first three levels, one CLIP ViT-L text encoder,
epsilon prediction."""

from __future__ import annotations

from .family import EstimateConstants
from .stable_diffusion import SD_VAE, StableDiffusionFamily

SD1_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": False, "transformer_layers_per_block": 1,
}
SD1_TEXT_ENCODER = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-05,
}


class SD1(StableDiffusionFamily):
    name = "sd1"
    title = "SD1.x"
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    v_prediction_models = False
    # SD1.5-512 LoRA keeps 1.19 GiB of activations a sample in bf16 (measured on an H200, training/estimate.py); a LoRA
    # step is 1.74 TFLOP a sample (perf.md).
    estimate = EstimateConstants(activation_bytes_per_latent_pixel=0.31e6, step_flops=1.738e12,
                                 native_pixels=512 * 512, te_cache_bytes_per_caption=77 * 768 * 4)

    def matches_checkpoint(self, keys):
        return any(k.startswith(("cond_stage_model.transformer.", "model.diffusion_model.")) for k in keys)

    def matches_diffusers(self, model_index, unet_config):
        return True  # the last one asked: any other UNet2DConditionModel folder

    def load_single_file(self, sd, source, options=None):
        from . import ldm_build, ldm_keys
        from .tokenizer import clip_tokenizer

        vae = ldm_build.build_vae(sd, SD_VAE, source, self.vae_scale)
        unet = ldm_build.build_unet(sd, ldm_build.unet_config_from_ldm(sd, SD1_UNET), source)
        te = ldm_build.build_clip_text_encoder(sd, ldm_keys.TE_PREFIX, SD1_TEXT_ENCODER, source)
        return self._components(unet, vae, [te], [clip_tokenizer(pad_token=self.tokenizer_pad)], source)

    def encode_prompt(self, components, captions, device, options, weighted=False):
        from .clip import encode_with_clip

        hidden = encode_with_clip(components.text_encoders[0], components.tokenizers[0], captions,
                                  options["clip_skip"], options["max_token_length"], device, weighted=weighted)
        return {"encoder_hidden_states": hidden}
