"""Tiny random Lumina 2 parts written in the layouts users download, for the tests (nothing downloaded).

- ``lumina_2_model.safetensors``: a NextDiT in the native names (optionally under ComfyUI's
  ``model.diffusion_model.``), the real topology (GQA fused qkv, noise and context refiners, adaLN, the unused
  norm_final) at width 48: 2 query heads and 1 kv head of 24 (RoPE axes 8, 8, 8), 2 layers, 2 refiners of each kind.
- ``gemma_2_2b.safetensors``: a Gemma2 in transformers' names under ``model.`` (as gemma_2_2b_fp16.safetensors),
  width 32, 2 layers, 2 query heads and 1 kv head of 16, a 256-token vocabulary.
- ``ae.safetensors``: ``tiny_flux``'s Flux AE (16 latent channels, pixels / 8).
- ``tokenizers/google_gemma-2-2b/``: a Gemma tokenizer (BPE with Gemma's special ids: <pad> 0, <eos> 1, <bos> 2,
  <unk> 3; BOS added, no EOS) over letters and the test captions' words, saved as tokenizer.json by transformers'
  GemmaTokenizer (the tokenizers library underneath).

torch is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

TINY_GEMMA2 = {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 16}
_WORDS = ("lsdemo", "shape", "red", "disc", "blue", "background", "cat", "dog", "photo", "of", "a", "the", "sks",
          "blurry", "assistant", "prompt", "start", "images", "you", "are", "an", "high", "quality")


def tiny_lumina_config():
    """The NextDiT topology at a tiny size (cap_feat_dim: the tiny Gemma2's width)."""
    from .lumina_net import LuminaConfig

    return LuminaConfig(dim=48, n_layers=2, n_refiner_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64,
                        cap_feat_dim=TINY_GEMMA2["hidden_size"], axes_dims=(8, 8, 8))


def build_tiny_lumina(seed: int = 0):
    """A tiny NextDiT with random weights large enough that a LoRA visibly changes it (norm weights 1)."""
    import torch

    from .lumina_net import LuminaTransformer

    torch.manual_seed(seed)
    model = LuminaTransformer(tiny_lumina_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and "norm" in name or name.startswith("cap_embedder.0"):
                param.fill_(1.0)
            elif param.ndim == 2:
                param.normal_(0.0, 0.1)
            else:
                param.zero_()
    return model.eval()


def build_tiny_gemma2(seed: int = 0):
    import torch
    from transformers import Gemma2Config, Gemma2Model

    from .lumina_parts import GEMMA2_2B

    torch.manual_seed(seed)
    return Gemma2Model(Gemma2Config(**{**GEMMA2_2B, **TINY_GEMMA2})).eval()


def tiny_gemma_tokenizer():
    """A Gemma tokenizer over a tiny vocabulary: Gemma's special tokens first, then the word boundary, characters
    with and without it, and the test words merged whole (any text tokenizes; what is not known is <unk>)."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {t: i for i, t in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581"))}
    merges = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyz,.":
        add(ch)
        add("\u2581" + ch)
        merges.append(("\u2581", ch))
    for word in _WORDS:
        piece = "\u2581" + word[0]
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            add(piece)
    if len(vocab) > TINY_GEMMA2["vocab_size"]:
        raise ValueError(f"the tiny vocabulary has {len(vocab)} tokens, more than the tiny Gemma2's")
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tokenizer.padding_side = "right"
    return tokenizer


def write_tiny_tokenizer(cache_dir: str | Path) -> Path:
    """``cache_dir/google_gemma-2-2b/`` with the tiny tokenizer (tokenizer.json + tokenizer_config.json); returns
    ``cache_dir``."""
    from .lumina_parts import tokenizer_folder

    tiny_gemma_tokenizer().save_pretrained(str(tokenizer_folder(cache_dir)))
    return Path(cache_dir)


def gemma2_file_state(model, prefix: str = "model.") -> dict:
    """A Gemma2Model's weights named as in gemma_2_2b_fp16.safetensors (``model.`` + transformers' names)."""
    return {prefix + k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def write_tiny_lumina(folder: str | Path, variant: str = "lumina2", seed: int = 0, comfy_prefix: bool = False) -> dict:
    """A tiny Lumina 2 as users have it: the transformer file (with ``comfy_prefix`` under
    ``model.diffusion_model.``), gemma_2_2b.safetensors, ae.safetensors and a tokenizer_cache_dir. Returns the
    settings naming them."""
    from safetensors.torch import save_file

    from .tiny_flux import write_tiny_ae

    if variant != "lumina2":
        raise ValueError("the only Lumina variant is lumina2")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "model.diffusion_model." if comfy_prefix else ""
    transformer = folder / "lumina_2_model.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in build_tiny_lumina(seed).state_dict().items()}, str(transformer))
    gemma = folder / "gemma_2_2b.safetensors"
    save_file(gemma2_file_state(build_tiny_gemma2(seed + 1)), str(gemma))
    return {"pretrained_model_name_or_path": str(transformer), "gemma2": str(gemma),
            "ae": str(write_tiny_ae(folder / "ae.safetensors", seed)),
            "tokenizer_cache_dir": str(write_tiny_tokenizer(folder / "tokenizers"))}
