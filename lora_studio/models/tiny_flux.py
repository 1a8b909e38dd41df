"""Tiny random Flux.1 / Chroma parts written in the layouts users download, for the tests (nothing downloaded).

Text encoders and autoencoder (this section): clip_l.safetensors (transformers names under ``text_model.``, the real
49,408-token vocabulary so the real CLIP tokenizer works), t5xxl.safetensors (``encoder.block.*`` and
``shared.weight``; also as float8_e4m3fn like t5xxl_fp8_e4m3fn.safetensors), ae.safetensors (BFL names: the LDM VAE's
without a prefix, 16 latent channels, 4 levels so it downsamples by 8 like the real one, no quant_conv), and a
tokenizer_cache_dir with a tiny T5 tokenizer (<pad>=0, </s>=1, <unk>=2) and the CLIP-L tokenizer.

The transformer writer lives in its own section below. torch is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

# ================================================================ text encoders, autoencoder, tokenizers
TINY_CLIP_L = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
               "projection_dim": 32}
TINY_T5_VOCAB = 128  # the model's vocabulary; the tokenizer uses the first ~90 ids (the real: 32,128 and 32,100)
TINY_T5 = {"vocab_size": TINY_T5_VOCAB, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2, "num_heads": 2,
           "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
           "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
           "is_encoder_decoder": False, "use_cache": False}
TINY_AE_CHANNELS = [32, 32, 32, 32]  # 4 levels: 3 downsamplings, pixels / 8 as the real AE
TINY_AE_DOWNSAMPLE = 2 ** (len(TINY_AE_CHANNELS) - 1)
_TINY_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "photo", "picture", "cat", "dog", "man", "woman",
               "red", "blue", "green", "sky", "tree", "house", "car", "sitting", "standing", "style", "portrait",
               "painting", "sks", "person", "is", "at")


def tiny_ae_config() -> dict:
    """The tiny AE as a diffusers AutoencoderKL config (the Flux AE's with narrow levels and one ResNet each)."""
    from .flux_parts import FLUX_AE

    return {**FLUX_AE, "block_out_channels": list(TINY_AE_CHANNELS), "layers_per_block": 1, "sample_size": 64}


def build_tiny_clip_l(seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TINY_CLIP_L)).eval()


def build_tiny_t5(seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(**TINY_T5)).eval()


def build_tiny_ae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL.from_config(tiny_ae_config()).eval()


def clip_l_file_state(model) -> dict:
    """A CLIPTextModel's weights named as in clip_l.safetensors (``text_model.`` + transformers' names)."""
    return {"text_model." + k.removeprefix("text_model."): v.detach().contiguous().clone()
            for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def t5_file_state(model) -> dict:
    """A T5EncoderModel's weights named as in t5xxl_fp16.safetensors (the tied embedding once, as shared.weight)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
            if k != "encoder.embed_tokens.weight"}


def ae_file_state(model) -> dict:
    """An AutoencoderKL's weights named as in BFL's ae.safetensors (LDM names, attention as 1x1 convolutions)."""
    from . import ldm_keys

    levels = len(model.config.block_out_channels)
    out = {}
    for name, tensor in model.state_dict().items():
        if ldm_keys.is_vae_attention_matrix(name):
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[ldm_keys.vae_key(name, levels)] = tensor.detach().contiguous().clone()
    return out


def write_tiny_text_encoders(folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write clip_l.safetensors and t5xxl.safetensors (float32) into ``folder``; returns their paths. The models are
    ``build_tiny_clip_l(seed)`` and ``build_tiny_t5(seed + 1)``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip_path, t5_path = folder / "clip_l.safetensors", folder / "t5xxl.safetensors"
    save_file(clip_l_file_state(build_tiny_clip_l(seed)), str(clip_path))
    save_file(t5_file_state(build_tiny_t5(seed + 1)), str(t5_path))
    return clip_path, t5_path


def write_t5_fp8(source: str | Path, path: str | Path, dtype_name: str = "float8_e4m3fn") -> Path:
    """A copy of a T5 file with its Linear weights and embedding in float8 (as t5xxl_fp8_e4m3fn.safetensors stores
    them; the layer norms stay as they are). ``dtype_name="float8_e5m2"`` writes the kind LoRA Studio refuses."""
    import torch
    from safetensors.torch import load_file, save_file

    fp8 = getattr(torch, dtype_name)
    state = load_file(str(source))
    out = {k: (v.to(fp8) if v.ndim == 2 and "relative_attention_bias" not in k else v) for k, v in state.items()}
    save_file(out, str(path))
    return Path(path)


def write_tiny_ae(path: str | Path, seed: int = 0) -> Path:
    """Write the tiny AE (``build_tiny_ae(seed)``, float32) as ae.safetensors in BFL naming."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(ae_file_state(build_tiny_ae(seed)), str(path))
    return path


def tiny_t5_vocab() -> list[tuple[str, float]]:
    """A Unigram vocabulary as T5's: <pad>=0, </s>=1, <unk>=2, the word boundary, then words and letters with and
    without the boundary mark (any lowercase text tokenizes, letter by letter at worst)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in _TINY_WORDS]
    vocab += [("\u2581" + c, -6.0) for c in letters if c not in _TINY_WORDS] + [(c, -5.0) for c in letters]
    vocab += [(",", -4.0), (".", -4.0)]
    return vocab


def write_tiny_tokenizers(cache_dir: str | Path, with_clip: bool = True) -> Path:
    """A tokenizer_cache_dir as sd-scripts lays it out: ``google_t5-v1_1-xxl/`` with a tiny T5 tokenizer (a Unigram
    model of the ``tokenizers`` library, saved as tokenizer.json + tokenizer_config.json, which
    ``T5TokenizerFast.from_pretrained`` loads) and, with ``with_clip``, ``openai_clip-vit-large-patch14/`` with the
    real CLIP-L tokenizer (LoRA Studio's offline copy). Returns ``cache_dir``."""
    from transformers import T5TokenizerFast

    from .flux_parts import CLIP_L_TOKENIZER_ID, T5_XXL_TOKENIZER_ID, tokenizer_folder
    from .tokenizer import clip_tokenizer

    cache_dir = Path(cache_dir)
    t5 = T5TokenizerFast(vocab=tiny_t5_vocab(), extra_ids=0, model_max_length=512)
    t5.save_pretrained(str(tokenizer_folder(cache_dir, T5_XXL_TOKENIZER_ID)))
    if with_clip:
        clip_tokenizer().save_pretrained(str(tokenizer_folder(cache_dir, CLIP_L_TOKENIZER_ID)))
    return cache_dir


# ================================================================ transformer (Flux / Chroma DiT)
VARIANTS = ("dev", "schnell", "chroma")


def tiny_flux_config(variant: str = "dev"):
    """The real block topology (double and single blocks, fused qkv and linear1, RoPE over 3 axes, Chroma's
    approximator) at a tiny size: one head of Flux's width 128 (so the RoPE axes are the real (16, 56, 56) and the
    file reads like a real one), 2 + 2 blocks, the tiny CLIP-L's 32-wide pooled vector and the tiny T5's 32-wide
    states, 16 latent channels packed 2x2."""
    from .flux_net import FluxConfig

    return FluxConfig(in_channels=64, vec_in_dim=TINY_CLIP_L["hidden_size"], context_in_dim=TINY_T5["d_model"],
                      hidden_size=128, mlp_ratio=4.0, num_heads=1, depth=2, depth_single_blocks=2,
                      axes_dim=(16, 56, 56),
                      guidance_embed=variant == "dev", chroma=variant == "chroma", approximator_in_dim=16,
                      approximator_depth=1, approximator_hidden_size=32)


def build_tiny_flux(variant: str = "dev", seed: int = 0):
    import torch

    from .flux_net import FluxTransformer

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    torch.manual_seed(seed)
    model = FluxTransformer(tiny_flux_config(variant))
    with torch.no_grad():  # BFL zero-initialises nothing that matters here; larger weights make learning visible
        for name, param in model.named_parameters():
            if name.endswith("scale"):
                param.fill_(1.0)
    return model.eval()


def write_tiny_flux(folder: str | Path, variant: str = "dev", seed: int = 0, comfy_prefix: bool = False) -> dict:
    """A tiny Flux dev / schnell or Chroma as users have it: the transformer in BFL layout (``flux1-<variant>.
    safetensors``; with ``comfy_prefix`` under ``model.diffusion_model.`` as ComfyUI's all-in-one files),
    ``ae.safetensors``, ``clip_l.safetensors`` (not for Chroma), ``t5xxl.safetensors`` and a tokenizer_cache_dir.
    Returns the settings naming them."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_tiny_flux(variant, seed)
    prefix = "model.diffusion_model." if comfy_prefix else ""
    state = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    name = "chroma" if variant == "chroma" else f"flux1-{variant}"
    transformer = folder / f"{name}.safetensors"
    save_file(state, str(transformer))
    clip_l, t5 = write_tiny_text_encoders(folder, seed)
    settings = {"pretrained_model_name_or_path": str(transformer), "ae": str(write_tiny_ae(folder / "ae.safetensors",
                                                                                            seed)),
                "t5xxl": str(t5), "tokenizer_cache_dir": str(write_tiny_tokenizers(folder / "tokenizers",
                                                                                   with_clip=variant != "chroma"))}
    if variant != "chroma":
        settings["clip_l"] = str(clip_l)
    return settings
