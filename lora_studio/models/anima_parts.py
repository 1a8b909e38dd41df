"""The text side and the autoencoder of Anima, loaded from the files users download.

What sd-scripts does (``library/anima_utils.py``, ``library/strategy_anima.py``, ``library/qwen_image_autoencoder_kl.
py``, ``anima_train_network.py``) and what this module reproduces:

- Qwen3-0.6B (``qwen3``): an HF folder (config.json, safetensors, its tokenizer) or one safetensors file
  (``qwen_3_06b_base.safetensors``; sd-scripts takes the config from its bundled ``configs/qwen3_06b``, we read the
  sizes from the file's shapes); ``model.`` / ComfyUI's ``text_encoders.qwen3_06b.transformer.model.`` prefixes taken
  off. The caption's Qwen3 ids, padded / truncated to ``qwen3_max_token_length`` (512), give ``last_hidden_state`` with
  the padded positions zeroed.
- The same caption tokenized by the old T5 tokenizer (sd-scripts' bundled ``configs/t5_old``: the 32,000-piece
  SentencePiece vocabulary + 100 sentinels that google/t5-v1_1-xxl also has), padded / truncated to
  ``t5_max_token_length`` (512): only its ids and mask go on, to the LLM adapter (no T5 model).
- Tokenizers offline as ``flux_parts``: a folder named in ``t5_tokenizer_path`` (sd-scripts' setting), else
  ``<tokenizer_cache_dir>/google_t5-v1_1-xxl`` / the HF cache / one download; Qwen3's from the ``qwen3`` folder, else
  ``<tokenizer_cache_dir>/Qwen_Qwen3-0.6B``, the HF cache, one download of its tokenizer files.
- The VAE (``vae``): the Qwen-Image VAE (Wan 2.1's, z_dim 16) as ``qwen_image_vae.safetensors`` (ComfyUI / Wan names:
  ``encoder.downsamples.N.residual.0`` ...) or in diffusers' names, loaded into diffusers' AutoencoderKLQwenImage and
  wrapped in ``AnimaVAE``, whose ``encode`` returns sd-scripts' latents: the posterior's mode, normalised per channel
  ``(z - latents_mean) / latents_std``, once; 4-D in and out (the 1-frame axis is added and taken off inside).
  ``vae_chunk_size`` runs its convolutions in bands of rows (sd-scripts' spatial chunking, less memory, the same
  numbers); ``vae_disable_cache`` skips the causal feature cache, which a single frame never reads (the same numbers).

torch is imported inside the functions; the name checks (``is_qwen3`` ...) need only a header's names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("lora_studio")

QWEN3_TOKENIZER_ID = "Qwen/Qwen3-0.6B"
QWEN3_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
QWEN3_PREFIXES = ("", "model.", "text_encoders.qwen3_06b.transformer.model.", "transformer.model.")
_QWEN3_MARK = "layers.0.self_attn.q_norm.weight"  # Qwen3 has per-head q/k norms (Qwen2 has none)
DEFAULT_QWEN3_LENGTH = 512
DEFAULT_T5_LENGTH = 512
# Qwen3-0.6B (sd-scripts' configs/qwen3_06b/config.json); the sizes are replaced by the file's shapes
QWEN3_06B = {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
             "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
             "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
             "tie_word_embeddings": True, "attention_bias": False, "use_cache": False}
# the Qwen-Image VAE (sd-scripts' load_vae config = diffusers' defaults)
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
               1.1253, 2.8251, 1.9160)
QWEN_IMAGE_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                  "temperal_downsample": [False, True, True], "dropout": 0.0, "input_channels": 3,
                  "latents_mean": list(LATENTS_MEAN), "latents_std": list(LATENTS_STD)}
_VAE_PREFIXES = ("", "vae.", "first_stage_model.")
_WAN_MARK = "encoder.downsamples.0.residual.0.gamma"
_DIFFUSERS_MARK = "encoder.down_blocks.0.norm1.gamma"


# ================================================================ recognising files by their tensor names
def qwen3_prefix(keys: Iterable[str]) -> str | None:
    keys = set(keys)
    return next((p for p in QWEN3_PREFIXES if p + _QWEN3_MARK in keys), None)


def is_qwen3(keys: Iterable[str]) -> bool:
    """A Qwen3 text model in transformers naming (qwen_3_06b_base.safetensors)."""
    return qwen3_prefix(keys) is not None


def vae_layout(keys: Iterable[str]) -> tuple[str, bool] | None:
    """(prefix, Wan/ComfyUI naming) of a Qwen-Image / Wan 2.1 VAE in a file, None when it is not one."""
    keys = set(keys)
    for prefix in _VAE_PREFIXES:
        if prefix + _WAN_MARK in keys:
            return prefix, True
        if prefix + _DIFFUSERS_MARK in keys:
            return prefix, False
    return None


def is_qwen_image_vae(keys: Iterable[str]) -> bool:
    return vae_layout(keys) is not None


def is_llm_adapter(keys: Iterable[str]) -> bool:
    """An Anima LLM adapter on its own or inside a DiT file (``llm_adapter.embed.weight``, or ``embed.weight`` with
    the adapter's blocks)."""
    keys = set(keys)
    return any(k.endswith("llm_adapter.embed.weight") for k in keys) or (
        "embed.weight" in keys and "blocks.0.cross_attn.q_proj.weight" in keys)


def is_anima_transformer(keys: Iterable[str]) -> bool:
    """An Anima DiT: Cosmos' block names (``blocks.N.self_attn.q_proj``, ``x_embedder.proj.1``) under ``net.`` /
    ComfyUI's ``model.diffusion_model.`` / no prefix."""
    return any(re.fullmatch(r"(net\.|model\.diffusion_model\.)?x_embedder\.proj\.1\.weight", k) for k in keys) and \
        any(re.match(r"(net\.|model\.diffusion_model\.)?blocks\.0\.adaln_modulation_self_attn\.", k) for k in keys)


# ================================================================ tokenizers
def load_tokenizers(cache_dir: str | None, qwen3_path: str | Path | None, t5_tokenizer_path: str | None = None):
    """(Qwen3 tokenizer, T5 tokenizer), offline first (module docstring)."""
    return qwen3_tokenizer(cache_dir, qwen3_path), t5_tokenizer(cache_dir, t5_tokenizer_path)


def t5_tokenizer(cache_dir: str | None, folder: str | None = None):
    """sd-scripts' t5_tokenizer_path when given, else flux_parts' T5-XXL tokenizer chain (the same vocabulary)."""
    from . import flux_parts

    if folder:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"t5_tokenizer_path: not a folder: {path}")
        return flux_parts.t5_tokenizer_from_folder(path, "t5_tokenizer_path")
    return flux_parts._t5_tokenizer(cache_dir)  # its message names Anima's adapter ids among the T5 users


def _qwen3_from_folder(folder: Path, setting: str):
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise UserError(f"{setting}: {folder} holds no Qwen3 tokenizer (tokenizer.json, or vocab.json and merges.txt, "
                        f"with tokenizer_config.json from https://huggingface.co/{QWEN3_TOKENIZER_ID})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{setting}: cannot read the Qwen3 tokenizer in {folder} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if tokenizer.pad_token is None:  # as sd-scripts: pad with the end-of-text token
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def qwen3_tokenizer(cache_dir: str | None, qwen3_path: str | Path | None):
    """The ``qwen3`` folder's own tokenizer; for a single file ``<tokenizer_cache_dir>/Qwen_Qwen3-0.6B``, else the
    HF cache, else (downloads on) a one-time download of the tokenizer files, kept in tokenizer_cache_dir."""
    from huggingface_hub import snapshot_download

    from .flux_parts import hub_cache, hub_offline, tokenizer_folder

    if qwen3_path and Path(qwen3_path).expanduser().is_dir():
        return _qwen3_from_folder(Path(qwen3_path).expanduser(), "qwen3")
    local = tokenizer_folder(cache_dir, QWEN3_TOKENIZER_ID) if cache_dir else None
    if local is not None and local.is_dir():
        return _qwen3_from_folder(local, "tokenizer_cache_dir")
    try:
        folder = Path(snapshot_download(QWEN3_TOKENIZER_ID, cache_dir=str(hub_cache()), local_files_only=True,
                                        allow_patterns=list(QWEN3_TOKENIZER_FILES)))
        return _qwen3_from_folder(folder, "the Hugging Face cache")
    except UserError:
        raise
    except Exception:
        pass
    where = f"{local}/" if local is not None else \
        "<tokenizer_cache_dir>/Qwen_Qwen3-0.6B/ (tokenizer_cache_dir is not set now)"
    if hub_offline():
        raise UserError(f"tokenizer_cache_dir: Anima needs the Qwen3 tokenizer ({QWEN3_TOKENIZER_ID}); it is not in "
                        f"the qwen3 folder, {where} nor the Hugging Face cache ({hub_cache()}), and downloads are off "
                        f"(HF_HUB_OFFLINE=1). Download tokenizer.json, vocab.json, merges.txt and "
                        f"tokenizer_config.json from https://huggingface.co/{QWEN3_TOKENIZER_ID} into {where} and set "
                        "tokenizer_cache_dir to the folder above it")
    from ..training.hub_upload import hub_reachable

    log.info("downloading the Qwen3 tokenizer (%s, tokenizer files only) once", QWEN3_TOKENIZER_ID)
    try:
        with hub_reachable():
            folder = Path(snapshot_download(QWEN3_TOKENIZER_ID, cache_dir=str(hub_cache()),
                                            allow_patterns=list(QWEN3_TOKENIZER_FILES)))
    except Exception as exc:
        raise UserError(f"tokenizer_cache_dir: the Qwen3 tokenizer ({QWEN3_TOKENIZER_ID}) is not in {where} and its "
                        f"download failed ({type(exc).__name__}); put its tokenizer files there") from None
    tokenizer = _qwen3_from_folder(folder, "the downloaded Qwen3 tokenizer")
    if local is not None:
        try:
            tokenizer.save_pretrained(str(local))
        except OSError as exc:
            log.warning("tokenizer_cache_dir: could not save the Qwen3 tokenizer to %s (%s)", local, exc)
    return tokenizer


# ================================================================ Qwen3
def qwen3_config(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """A Qwen3Config from tensor shapes under ``prefix``: head width from q_norm, heads and KV heads from the q / k
    rows; rope_theta (1e6) and the norm epsilon are not in the shapes (Qwen3-0.6B's)."""
    names = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    cfg = dict(QWEN3_06B)
    cfg["vocab_size"], cfg["hidden_size"] = names["embed_tokens.weight"]
    cfg["head_dim"] = names[_QWEN3_MARK][0]
    cfg["num_attention_heads"] = names["layers.0.self_attn.q_proj.weight"][0] // cfg["head_dim"]
    cfg["num_key_value_heads"] = names["layers.0.self_attn.k_proj.weight"][0] // cfg["head_dim"]
    cfg["intermediate_size"] = names["layers.0.mlp.gate_proj.weight"][0]
    cfg["num_hidden_layers"] = len({int(m[1]) for k in names if (m := re.match(r"layers\.(\d+)\.", k))})
    return cfg


def load_qwen3(path: str | Path, dtype):
    """Qwen3 (a transformers Qwen3Model, the text model without the LM head) from an HF folder or one safetensors
    file; built empty and filled tensor by tensor."""
    import json

    from transformers import Qwen3Config, Qwen3Model

    from .flux_parts import _assign, _refuse_other_float8
    from .ldm_build import empty
    from .loading import SafetensorsView, ShardedView

    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise UserError(f"qwen3: {path} has no .safetensors weights; give the Qwen3-0.6B folder or "
                            "qwen_3_06b_base.safetensors")
        views = [SafetensorsView(f, "qwen3") for f in files]
        sd = ShardedView(views)
        shapes = {k: tuple(v["shape"]) for view in views for k, v in view._entries.items()}
        dtypes = {k: v["dtype"] for view in views for k, v in view._entries.items()}
    else:
        if path.suffix.lower() != ".safetensors" or not path.is_file():
            raise UserError(f"qwen3: {path} is not a .safetensors file or an HF folder of Qwen3-0.6B")
        view = SafetensorsView(path, "qwen3")
        sd, shapes = view, {k: tuple(v["shape"]) for k, v in view._entries.items()}
        dtypes = {k: v["dtype"] for k, v in view._entries.items()}
    prefix = qwen3_prefix(shapes)
    if prefix is None:
        raise UserError(f"qwen3: {path} is not a Qwen3 text encoder (no {_QWEN3_MARK}); Anima needs Qwen3-0.6B "
                        "(qwen_3_06b_base.safetensors)")
    _refuse_other_float8("qwen3", path, dtypes)
    try:
        cfg = qwen3_config(shapes, prefix)
    except KeyError as exc:
        raise UserError(f"qwen3: {path} is an incomplete Qwen3 text encoder (no {prefix}{exc.args[0]})") from None
    if path.is_dir() and (path / "config.json").is_file():
        own = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cfg.update({k: own[k] for k in ("rope_theta", "rms_norm_eps", "max_position_embeddings") if k in own})
    model = empty(lambda: Qwen3Model(Qwen3Config(**cfg)))
    _assign(model, lambda name: prefix + name, sd, lambda name, file_dtype: dtype, "Qwen3 text encoder", "qwen3", path)
    return model


# ================================================================ prompts
def encode_prompts(qwen3, qwen3_tokenizer, t5_tokenizer, captions: list[str], qwen3_length: int, t5_length: int,
                   device) -> dict:
    """The conditioning of ``captions`` as sd-scripts computes it (``AnimaTokenizeStrategy.tokenize``,
    ``AnimaTextEncodingStrategy.encode_tokens``): {"qwen3": last_hidden_state (B, qwen3_length, 1024) with padded
    positions zeroed, "qwen3_mask": (B, qwen3_length) int64, "t5_ids": the T5 ids (B, t5_length) int64, "t5_mask":
    (B, t5_length) int64}. Row i depends only on caption i (cacheable per caption)."""
    q = qwen3_tokenizer(captions, max_length=qwen3_length, padding="max_length", truncation=True,
                        return_tensors="pt")
    ids, mask = q["input_ids"].to(device), q["attention_mask"].to(device)
    hidden = qwen3(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.masked_fill(~mask.bool()[..., None], 0.0)
    t5 = t5_tokenizer(captions, max_length=t5_length, padding="max_length", truncation=True, return_tensors="pt")
    return {"qwen3": hidden, "qwen3_mask": mask.long(), "t5_ids": t5["input_ids"].to(device).long(),
            "t5_mask": t5["attention_mask"].to(device).long()}


def drop_condition(cond: dict, drop) -> dict:
    """sd-scripts' ``drop_cached_text_encoder_outputs`` for the rows ``drop`` (B,) bool marks: Qwen3 states and mask
    zero, T5 ids [1 (</s>), 0, 0, ...] and T5 mask [1, 0, 0, ...]; a new dict (the cached tensors are not changed)."""
    import torch

    drop = torch.as_tensor(drop, dtype=torch.bool)
    if not bool(drop.any()):
        return cond
    out = dict(cond)
    rows = drop.to(cond["qwen3"].device)
    out["qwen3"] = cond["qwen3"].masked_fill(rows[:, None, None], 0.0)
    out["qwen3_mask"] = cond["qwen3_mask"].masked_fill(rows[:, None], 0)
    first = torch.zeros_like(cond["t5_ids"])
    first[:, 0] = 1
    for name in ("t5_ids", "t5_mask"):
        out[name] = torch.where(rows.to(cond[name].device)[:, None], first.to(cond[name].device), cond[name])
    return out


# ================================================================ the VAE
def wan_to_diffusers(name: str, num_res_blocks: int, levels: int) -> str:
    """A Wan / ComfyUI Qwen-Image VAE key -> diffusers' AutoencoderKLQwenImage key (sd-scripts' convert_comfyui_state_
    dict as a rule: the decoder's flat ``upsamples.N`` are per level ``num_res_blocks + 1`` residual blocks and, but
    for the last level, one upsampler)."""
    residual = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}
    top = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    module, _, leaf = name.rpartition(".")
    if module in top:
        return f"{top[module]}.{leaf}"
    part, _, rest = module.partition(".")
    if rest == "conv1":
        return f"{part}.conv_in.{leaf}"
    if rest in ("head.0", "head.2"):
        return f"{part}.{'norm_out' if rest == 'head.0' else 'conv_out'}.{leaf}"
    m = re.fullmatch(r"middle\.(\d)\.(.+)", rest)
    if m:
        index, inner = int(m[1]), m[2]
        if index == 1:
            return f"{part}.mid_block.attentions.0.{inner}.{leaf}"
        inner = residual.get(inner.removeprefix("residual."), inner)
        return f"{part}.mid_block.resnets.{index // 2}.{inner}.{leaf}"
    m = re.fullmatch(r"(downsamples|upsamples)\.(\d+)\.(.+)", rest)
    if not m:
        return name
    index, inner = int(m[2]), m[3]
    if inner.startswith("residual."):
        inner = residual[inner.removeprefix("residual.")]
    elif inner == "shortcut":
        inner = "conv_shortcut"
    if m[1] == "downsamples":
        return f"{part}.down_blocks.{index}.{inner}.{leaf}"
    per_level = num_res_blocks + 1
    level, at = 0, index
    while level < levels:
        size = per_level + (1 if level < levels - 1 else 0)
        if at < size:
            break
        at, level = at - size, level + 1
    if at == per_level:
        return f"{part}.up_blocks.{level}.upsamplers.0.{inner}.{leaf}"
    return f"{part}.up_blocks.{level}.resnets.{at}.{inner}.{leaf}"


def vae_config(shapes: Mapping[str, tuple], prefix: str, wan: bool) -> dict:
    """AutoencoderKLQwenImage's config from a file's shapes: base width, levels and their multipliers, residual
    blocks per level, which downsamplings are temporal (a ``time_conv``), latent channels."""
    names = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if wan:
        names = {wan_to_diffusers(k, 0, 0) if "upsamples" not in k else k: v for k, v in names.items()}
    base = names["encoder.conv_in.weight"][0]
    z_dim = names["quant_conv.weight"][0] // 2
    blocks = {int(m[1]): k for k in names if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))}
    resample = sorted({int(m[1]) for k in names if (m := re.match(r"encoder\.down_blocks\.(\d+)\.resample\.", k))})
    levels = len(resample) + 1
    num_res = (max(blocks) + 1 - len(resample)) // levels
    mults, temporal = [], []
    for level in range(levels):
        first = level * (num_res + 1)
        mults.append(names[f"encoder.down_blocks.{first}.conv1.weight"][0] // base)
        if level < levels - 1:
            temporal.append(f"encoder.down_blocks.{resample[level]}.time_conv.weight" in names)
    cfg = dict(QWEN_IMAGE_VAE)
    cfg.update(base_dim=base, z_dim=z_dim, dim_mult=mults, num_res_blocks=num_res, temperal_downsample=temporal,
               input_channels=names["encoder.conv_in.weight"][1])
    return cfg


def load_vae(path: str | Path, dtype, chunk_size: int | None = None, disable_cache: bool = False):
    """The Qwen-Image VAE (``AnimaVAE`` around diffusers' AutoencoderKLQwenImage) from qwen_image_vae.safetensors."""
    from diffusers import AutoencoderKLQwenImage

    from .flux_parts import _assign, _open, _refuse_other_float8
    from .ldm_build import empty

    sd, shapes, dtypes, path = _open(path, "vae")
    found = vae_layout(shapes)
    if found is None:
        raise UserError(f"vae: {path} is not the Qwen-Image VAE (qwen_image_vae.safetensors: Wan 2.1's 16-channel "
                        "video VAE); Anima cannot use an SD / SDXL / Flux VAE")
    prefix, wan = found
    _refuse_other_float8("vae", path, dtypes)
    try:
        cfg = vae_config(shapes, prefix, wan)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"vae: {path} is an incomplete Qwen-Image VAE ({type(exc).__name__}: {exc})") from None
    model = empty(lambda: AutoencoderKLQwenImage(**cfg))
    levels = len(cfg["dim_mult"])
    if wan:
        mapping = {wan_to_diffusers(k[len(prefix):], cfg["num_res_blocks"], levels): k for k in shapes
                   if k.startswith(prefix)}
        key_of = mapping.get
    else:
        def key_of(name):
            return prefix + name
    _assign(model, key_of, sd, lambda name, file_dtype: dtype, "Qwen-Image VAE", "vae", path)
    from .anima_net import AnimaVAE

    return AnimaVAE(model, chunk_size=chunk_size, disable_cache=disable_cache)
