"""A model's weights named as in a single-file (A1111 / LDM) checkpoint: what ``lora merge --model`` writes and
AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file`` open."""

from __future__ import annotations

import torch

from . import ldm_keys


def single_file_state_dict(unet, vae, te, sd2_last_layer: dict[str, torch.Tensor] | None = None
                           ) -> dict[str, torch.Tensor]:
    """The U-Net, VAE and text encoder(s) under their checkpoint names (for SDXL ``te`` is the list of both
    encoders; an SD2 U-Net gets an OpenCLIP encoder). ``sd2_last_layer``: the weights of the last OpenCLIP layer,
    which SD2 checkpoints hold but the model never uses (left out when None)."""
    cfg = unet.config
    up_attn = ["CrossAttn" in t for t in cfg.up_block_types]
    out = {}
    for name, tensor in unet.state_dict().items():
        out[ldm_keys.UNET_PREFIX + ldm_keys.unet_key(name, cfg.layers_per_block, up_attn)] = tensor
    levels = len(vae.config.block_out_channels)
    for name, tensor in vae.state_dict().items():
        if ldm_keys.is_vae_attention_matrix(name):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[ldm_keys.VAE_PREFIX + ldm_keys.vae_key(name, levels)] = tensor
    if isinstance(te, (list, tuple)):  # SDXL
        for name, tensor in te[0].state_dict().items():
            out[ldm_keys.SDXL_TE1_PREFIX + ldm_keys.te_key(name)] = tensor
        out.update(ldm_keys.clip_to_openclip(te[1].state_dict(), None, ldm_keys.SDXL_TE2_PREFIX))
    elif cfg.use_linear_projection:  # SD2: OpenCLIP naming
        out.update(ldm_keys.clip_to_openclip(te.state_dict(), sd2_last_layer))
    else:
        for name, tensor in te.state_dict().items():
            out[ldm_keys.TE_PREFIX + ldm_keys.te_key(name)] = tensor
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
