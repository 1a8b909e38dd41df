"""Tiny random Anima parts written in the layouts users download, for the tests (nothing downloaded).

- the DiT as ``anima-base-v1.0.safetensors`` has it: every key under ``net.``, the LLM adapter (``llm_adapter.*``)
  bundled (or written apart, for llm_adapter_path), float32;
- Qwen3 as ``qwen_3_06b_base.safetensors`` (``model.`` + transformers' names) and as an HF folder (config.json,
  model.safetensors and its tokenizer);
- the Qwen-Image VAE as ``qwen_image_vae.safetensors`` in ComfyUI / Wan names (``encoder.downsamples.N.residual.0``
  ...), 4 levels so it downsamples by 8 like the real one;
- a tokenizer_cache_dir with a tiny byte-level Qwen tokenizer (``Qwen_Qwen3-0.6B/``: tokenizer.json +
  tokenizer_config.json, ``<|endoftext|>`` the pad) and the tiny T5 tokenizer of ``tiny_flux``
  (``google_t5-v1_1-xxl/``).

torch is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

TINY_QWEN3 = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 1024,
              "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_cache": False}
TINY_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0, "input_channels": 3}
QWEN_ENDOFTEXT = "<|endoftext|>"


def build_tiny_dit(seed: int = 0):
    """The tiny Anima (``anima_net.TINY_ANIMA``: 2 blocks of 32, a 1-layer LLM adapter over the tiny T5 vocabulary),
    with modulations and the final projection drawn large enough that a LoRA's change shows within a few steps."""
    import torch

    from .anima_net import TINY_ANIMA, AnimaTransformer

    torch.manual_seed(seed)
    model = AnimaTransformer(TINY_ANIMA)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "_norm." in name or ".norm_" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


def build_tiny_qwen3(seed: int = 0):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    return Qwen3Model(Qwen3Config(**TINY_QWEN3)).eval()


def build_tiny_vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(**TINY_VAE).eval()


def diffusers_to_wan(name: str, num_res_blocks: int, levels: int) -> str:
    """diffusers' AutoencoderKLQwenImage key -> the Wan / ComfyUI name (the inverse of
    ``anima_parts.wan_to_diffusers``)."""
    import re

    residual = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
                "conv_shortcut": "shortcut"}
    module, _, leaf = name.rpartition(".")
    top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    if module in top:
        return f"{top[module]}.{leaf}"
    part, _, rest = module.partition(".")
    simple = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
    if rest in simple:
        return f"{part}.{simple[rest]}.{leaf}"
    m = re.fullmatch(r"mid_block\.(attentions|resnets)\.(\d+)\.(.+)", rest)
    if m:
        if m[1] == "attentions":
            return f"{part}.middle.1.{m[3]}.{leaf}"
        return f"{part}.middle.{2 * int(m[2])}.{residual.get(m[3], m[3])}.{leaf}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)
    if m:
        return f"{part}.downsamples.{m[1]}.{residual.get(m[2], m[2])}.{leaf}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", rest)
    level = int(m[1])
    start = level * (num_res_blocks + 2)
    index = start + (int(m[3]) if m[2] == "resnets" else num_res_blocks + 1)
    return f"{part}.upsamples.{index}.{residual.get(m[4], m[4])}.{leaf}"


def tiny_qwen_tokenizer():
    """A byte-level BPE tokenizer like Qwen's (no merges: one token per byte) with ``<|endoftext|>`` as pad / eos,
    as a transformers Qwen2Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    vocab[QWEN_ENDOFTEXT] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([QWEN_ENDOFTEXT])
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=QWEN_ENDOFTEXT, pad_token=QWEN_ENDOFTEXT)


def write_tiny_qwen_tokenizer(folder: str | Path) -> Path:
    """tokenizer.json and a tokenizer_config.json naming Qwen2Tokenizer, as Qwen/Qwen3-0.6B's folder has them."""
    import json

    folder = Path(folder)
    tiny_qwen_tokenizer().save_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update({"tokenizer_class": "Qwen2Tokenizer", "eos_token": QWEN_ENDOFTEXT, "pad_token": QWEN_ENDOFTEXT,
                   "bos_token": None, "add_bos_token": False, "add_prefix_space": False})
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def write_tiny_anima(folder: str | Path, variant: str = "single", seed: int = 0) -> dict:
    """A tiny Anima as users have it, returning the settings naming its files. ``variant``: "single" (the DiT with
    its adapter, qwen3 as one file), "folder" (qwen3 as an HF folder with its own tokenizer), "adapter_apart" (the
    DiT without llm_adapter.*, the adapter in ``llm_adapter.safetensors``: llm_adapter_path), "comfy" (the DiT under
    ComfyUI's ``model.diffusion_model.``)."""
    import json

    from safetensors.torch import save_file

    from .flux_parts import T5_XXL_TOKENIZER_ID, tokenizer_folder
    from .tiny_flux import tiny_t5_vocab

    if variant not in ("single", "folder", "adapter_apart", "comfy"):
        raise ValueError(f"unknown variant {variant!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dit = build_tiny_dit(seed)
    prefix = "model.diffusion_model." if variant == "comfy" else "net."
    state = {k: v.contiguous() for k, v in dit.state_dict().items()}
    settings = {}
    if variant == "adapter_apart":
        adapter = {k: state.pop(k) for k in list(state) if k.startswith("llm_adapter.")}
        save_file(adapter, str(folder / "llm_adapter.safetensors"))
        settings["llm_adapter_path"] = str(folder / "llm_adapter.safetensors")
    dit_path = folder / "anima-tiny.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(dit_path), metadata={"format": "pt"})
    qwen = build_tiny_qwen3(seed + 1)
    qwen_state = {"model." + k: v.detach().contiguous().clone() for k, v in qwen.state_dict().items()}
    cache = folder / "tokenizers"
    from transformers import T5TokenizerFast

    T5TokenizerFast(vocab=tiny_t5_vocab(), extra_ids=0, model_max_length=512).save_pretrained(
        str(tokenizer_folder(cache, T5_XXL_TOKENIZER_ID)))
    if variant == "folder":
        qwen_path = folder / "Qwen3-0.6B"
        qwen_path.mkdir(exist_ok=True)
        save_file(qwen_state, str(qwen_path / "model.safetensors"))
        (qwen_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"],
                                                           "model_type": "qwen3", **TINY_QWEN3}), encoding="utf-8")
        write_tiny_qwen_tokenizer(qwen_path)
    else:
        qwen_path = folder / "qwen_3_06b_tiny.safetensors"
        save_file(qwen_state, str(qwen_path))
        write_tiny_qwen_tokenizer(tokenizer_folder(cache, "Qwen/Qwen3-0.6B"))
    vae = build_tiny_vae(seed + 2)
    levels = len(TINY_VAE["dim_mult"])
    vae_state = {diffusers_to_wan(k, TINY_VAE["num_res_blocks"], levels): v.detach().contiguous().clone()
                 for k, v in vae.state_dict().items()}
    vae_path = folder / "qwen_image_vae.safetensors"
    save_file(vae_state, str(vae_path))
    settings.update({"pretrained_model_name_or_path": str(dit_path), "qwen3": str(qwen_path), "vae": str(vae_path),
                     "tokenizer_cache_dir": str(cache)})
    return settings
