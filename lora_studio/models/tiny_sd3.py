"""Tiny random SD3 / SD3.5 models written in the layouts users download, for the tests (nothing downloaded).

- The MMDiT in Stability AI's names under ``model.diffusion_model.`` (2 joint blocks of 2 heads x 64, the real block
  topology: the last context block pre-only, SD3.5's q/k RMS norms, SD3.5 medium's attn2 in block 0), its position
  table the real 2-D sin-cos one.
- Its parts in one of the ways the real files come: inside the checkpoint (``text_encoders.clip_l.transformer.*``,
  ``text_encoders.clip_g.transformer.*``, ``text_encoders.t5xxl.transformer.*``, ``first_stage_model.*``, like
  ``sd3_medium_incl_clips_t5xxlfp8.safetensors``), or the VAE inside and the text encoders in ``clip_l.safetensors``,
  ``clip_g.safetensors``, ``t5xxl.safetensors`` (like ``sd3.5_large.safetensors`` + its ``text_encoders/``).
- CLIP-L and CLIP-G 32 wide over the real 49,408-token vocabulary (the real tokenizers work), T5 64 wide (the text
  states are padded to it), the tiny 16-channel VAE of ``tiny_flux`` (8x), and a tokenizer_cache_dir with the tiny T5
  tokenizer.

torch is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS = ("medium", "5-medium", "5-large")  # sd-scripts' model types
LAYOUTS = ("all_in_one", "clips_inside", "separate")
TINY_CLIP_G = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 32}
TINY_T5_WIDTH = 64


def tiny_sd3_config(variant: str = "medium"):
    """``sd3_net.TINY_CONFIGS[variant]``: 2 joint blocks of width 128 (heads of 64, as every MMDiT), pooled 32 + 32
    (CLIP-L + CLIP-G), text input 64 (the tiny T5), a position table of 8 x 8 patches (12 x 12 for 5-medium)."""
    from .sd3_net import TINY_CONFIGS

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    return TINY_CONFIGS[variant]


def build_tiny_mmdit(variant: str = "medium", seed: int = 0):
    import torch

    from .sd3_net import MMDiT, sincos_2d

    torch.manual_seed(seed)
    config = tiny_sd3_config(variant)
    model = MMDiT(config)
    with torch.no_grad():
        side = torch.arange(config.pos_embed_max_size)
        model.pos_embed.copy_(sincos_2d(config.hidden_size, side, side).float().unsqueeze(0))
    return model.eval()


def build_tiny_clip(which: str, seed: int = 0):
    """CLIP-L ("clip_l", quick_gelu) or CLIP-G ("clip_g", gelu) as CLIPTextModelWithProjection, 32 wide."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .tiny_flux import TINY_CLIP_L

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(**(TINY_CLIP_L if which == "clip_l" else TINY_CLIP_G))).eval()


def build_tiny_t5(seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    from .tiny_flux import TINY_T5

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**{**TINY_T5, "d_model": TINY_T5_WIDTH, "d_kv": 32})).eval()


def _clip_state(model, with_projection: bool = True) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
            if not k.endswith("position_ids") and (with_projection or k != "text_projection.weight")}


def write_tiny_sd3(folder: str | Path, variant: str = "medium", seed: int = 0, layout: str = "all_in_one") -> dict:
    """A tiny SD3 medium / SD3.5 medium / SD3.5 large as users have it (``layout``):
    - "all_in_one": everything in ``sd3_<variant>.safetensors`` (the MMDiT, CLIP-L, CLIP-G, T5, the VAE);
    - "clips_inside": the MMDiT, the CLIPs and the VAE inside, T5 in ``t5xxl.safetensors``;
    - "separate": the MMDiT and the VAE inside, ``clip_l.safetensors`` (without text_projection, as some are),
      ``clip_g.safetensors`` and ``t5xxl.safetensors`` beside it.
    Returns the settings naming them (with a tokenizer_cache_dir holding the tiny T5 tokenizer)."""
    from safetensors.torch import save_file

    from .tiny_flux import ae_file_state, build_tiny_ae, write_tiny_tokenizers

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model.diffusion_model." + k: v.contiguous() for k, v in build_tiny_mmdit(variant, seed).state_dict().items()}
    state.update({"first_stage_model." + k: v for k, v in ae_file_state(build_tiny_ae(seed)).items()})
    clip_l, clip_g = build_tiny_clip("clip_l", seed + 1), build_tiny_clip("clip_g", seed + 2)
    t5 = {k: v.detach().contiguous().clone() for k, v in build_tiny_t5(seed + 3).state_dict().items()
          if k != "encoder.embed_tokens.weight"}
    settings = {}
    if layout == "separate":
        for name, tensors in (("clip_l", _clip_state(clip_l, with_projection=False)), ("clip_g", _clip_state(clip_g))):
            save_file(tensors, str(folder / f"{name}.safetensors"))
            settings[name] = str(folder / f"{name}.safetensors")
    else:
        for name, model in (("clip_l", clip_l), ("clip_g", clip_g)):
            state.update({f"text_encoders.{name}.transformer." + k: v for k, v in _clip_state(model).items()})
    if layout == "all_in_one":
        state.update({"text_encoders.t5xxl.transformer." + k: v for k, v in t5.items()})
    else:
        save_file(t5, str(folder / "t5xxl.safetensors"))
        settings["t5xxl"] = str(folder / "t5xxl.safetensors")
    checkpoint = folder / f"sd3_{variant}.safetensors"
    save_file(state, str(checkpoint))
    settings["pretrained_model_name_or_path"] = str(checkpoint)
    settings["tokenizer_cache_dir"] = str(write_tiny_tokenizers(folder / "tokenizers", with_clip=False))
    return settings


def write_tiny_vae(path: str | Path, seed: int = 0) -> Path:
    """The tiny 16-channel VAE alone (LDM names, no prefix), as a ``vae`` file."""
    from .tiny_flux import write_tiny_ae

    return write_tiny_ae(path, seed)
