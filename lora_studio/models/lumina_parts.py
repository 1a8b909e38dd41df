"""The text side of Lumina-Image 2.0 (Gemma2-2B and its tokenizer), loaded from the files users download; the
autoencoder is the Flux AE (``flux_parts.load_ae``: its latent normalisation is in its config and the family
applies it once).

What sd-scripts does, and what this module reproduces (``library/strategy_lumina.py``, ``library/lumina_util.py``,
``lumina_train_network.py``):

- Tokenizer: Gemma's (``google/gemma-2-2b``), padding on the right; a caption becomes
  ``f"{system_prompt} <Prompt Start> {caption}"`` when ``system_prompt`` is set (negative prompts never get it),
  tokenized with Gemma's BOS, padded / truncated to ``gemma2_max_token_length`` (None: 256; rounded up to a multiple
  of 8).
- Conditioning: Gemma2 run with that attention mask, ``hidden_states[-2]`` (the input of its last layer) (B, L,
  2304), and the mask, which the transformer uses to keep each caption's own tokens.
- Files: ``gemma_2_2b_fp16.safetensors`` (transformers' names with or without ``model.``; ComfyUI's all-in-one
  ``text_encoders.gemma2_2b.transformer.model.``), or a Gemma2 folder (config.json and safetensors shards). Sizes come
  from the tensors' shapes (Gemma2-2B's 256-wide heads; 16-wide under 256, for test models), the rest of the config
  is Gemma2-2B's (sd-scripts' GEMMA2_CONFIG).

The tokenizer is found without a download when it can be: ``<tokenizer_cache_dir>/google_gemma-2-2b``, a Hugging
Face cache (``tokenizer_cache_dir`` used as one, as sd-scripts passes it to ``from_pretrained(cache_dir=...)``, then
the user's own), then one download (a gated repository: it needs a Hugging Face login that accepted Gemma's licence)
kept in ``tokenizer_cache_dir``. torch is imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("lora_studio")

GEMMA_TOKENIZER_ID = "google/gemma-2-2b"
GEMMA_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MAX_LENGTH = 256  # sd-scripts' gemma2_max_token_length when none is set
PROMPT_START = "<Prompt Start>"  # between the system prompt and the caption (strategy_lumina)
GEMMA2_HIDDEN = 2304
# Gemma2-2B (sd-scripts' lumina_util GEMMA2_CONFIG); the sizes are replaced by the file's shapes when loading.
GEMMA2_2B = {"vocab_size": 256000, "hidden_size": GEMMA2_HIDDEN, "intermediate_size": 9216, "num_hidden_layers": 26,
             "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "query_pre_attn_scalar": 256,
             "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
             "rope_theta": 10000.0, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
             "sliding_window": 4096, "attention_bias": False, "attention_dropout": 0.0, "pad_token_id": 0,
             "eos_token_id": 1, "bos_token_id": 2, "use_cache": False}

# ================================================================ recognising a Gemma2 file by its tensor names
_MARK = "layers.0.pre_feedforward_layernorm.weight"  # Gemma2's extra norm (Llama / Qwen have none)
_EMBED = "embed_tokens.weight"


def gemma2_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of a Gemma2 model's names in a file ("", ``model.``, ``text_encoders.gemma2_2b.transformer.model.``
    ...), or None. Gemma3 (per-head q_norm) is not Gemma2."""
    keys = set(keys)
    found = sorted({k[:-len(_MARK)] for k in keys if k.endswith(_MARK) and (len(k) == len(_MARK) or
                                                                           k[-len(_MARK) - 1] == ".")}, key=len)
    for prefix in found:
        if prefix + _EMBED in keys and prefix + "layers.0.self_attn.q_norm.weight" not in keys:
            return prefix
    return None


def is_gemma2(keys: Iterable[str]) -> bool:
    """A Gemma2 text encoder in transformers naming (what gemma_2_2b_fp16.safetensors holds)."""
    return gemma2_prefix(keys) is not None


# ================================================================ Gemma2
def gemma2_config(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """A Gemma2Config (as a dict) from tensor shapes under ``prefix``. Head width is not in the shapes: Gemma2-2B's
    is 256; q widths under 256 (test models) get 16-wide heads."""
    names = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    cfg = dict(GEMMA2_2B)
    cfg["vocab_size"], cfg["hidden_size"] = names[_EMBED]
    cfg["num_hidden_layers"] = _count(names, r"layers\.(\d+)\.")
    cfg["intermediate_size"] = names["layers.0.mlp.gate_proj.weight"][0]
    q_rows, k_rows = names["layers.0.self_attn.q_proj.weight"][0], names["layers.0.self_attn.k_proj.weight"][0]
    head = 256 if q_rows >= 256 and q_rows % 256 == 0 and k_rows % 256 == 0 else 16
    cfg["head_dim"] = cfg["query_pre_attn_scalar"] = head
    cfg["num_attention_heads"], cfg["num_key_value_heads"] = q_rows // head, k_rows // head
    return cfg


def _gemma2_files(path: Path) -> tuple[Mapping, dict, dict, Path]:
    """(tensors read one at a time, {name: shape}, {name: dtype}, path) of a single file or a folder's shards."""
    from ..io_utils import read_safetensors_header
    from .flux_parts import _open
    from .loading import SafetensorsView, ShardedView

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"gemma2: not found: {path}")
    if not path.is_dir():
        return _open(path, "gemma2")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"gemma2: {path} is a folder without .safetensors files; give gemma_2_2b_fp16.safetensors "
                        "or a Gemma2-2B folder (config.json and model*.safetensors)")
    shapes, dtypes = {}, {}
    for file in files:
        header = read_safetensors_header(file, "gemma2")
        shapes.update({k: tuple(v["shape"]) for k, v in header.tensors.items()})
        dtypes.update({k: v["dtype"] for k, v in header.tensors.items()})
    return ShardedView([SafetensorsView(f, "gemma2") for f in files]), shapes, dtypes, path


def load_gemma2(path: str | Path, dtype):
    """Gemma2 (a transformers Gemma2Model, eval, frozen) from gemma_2_2b_fp16.safetensors or a folder. float8
    files (e4m3fn only) are upcast to ``dtype``."""
    from transformers import Gemma2Config, Gemma2Model

    from .flux_parts import _assign, _refuse_other_float8, what_file_is
    from .ldm_build import empty

    sd, shapes, dtypes, path = _gemma2_files(path)
    prefix = gemma2_prefix(shapes)
    if prefix is None:
        seems = what_file_is(list(shapes))
        raise UserError(f"gemma2: {path} is not a Gemma2 text encoder" + (f"; it looks like {seems}" if seems else "")
                        + ". Lumina 2 needs gemma_2_2b_fp16.safetensors (Comfy-Org/Lumina_Image_2.0_Repackaged)")
    _refuse_other_float8("gemma2", path, dtypes)
    try:
        cfg = gemma2_config(shapes, prefix)
    except (KeyError, TypeError) as exc:
        raise UserError(f"gemma2: {path} is an incomplete Gemma2 model (no {prefix}{exc.args[0] if exc.args else '?'})"
                        ) from None
    model = empty(lambda: Gemma2Model(Gemma2Config(**cfg)))
    _assign(model, lambda name: prefix + name, sd, lambda name, file_dtype: dtype, "Gemma2 text encoder", "gemma2",
            path)
    return model


def _count(keys: Iterable[str], pattern: str) -> int:
    import re

    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ================================================================ tokenizer
def tokenizer_folder(cache_dir: str | Path) -> Path:
    """``<tokenizer_cache_dir>/google_gemma-2-2b`` (the hub id with "/" -> "_", as flux_parts keeps T5's)."""
    return Path(cache_dir).expanduser() / GEMMA_TOKENIZER_ID.replace("/", "_")


def gemma_tokenizer_from_folder(folder: Path, setting: str):
    """Gemma's tokenizer saved in ``folder`` (tokenizer.json, or tokenizer.model with sentencepiece), padding right."""
    from transformers import GemmaTokenizer

    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise UserError(f"{setting}: {folder} holds no Gemma tokenizer: it needs tokenizer.json (or tokenizer.model) "
                        f"with tokenizer_config.json, from https://huggingface.co/{GEMMA_TOKENIZER_ID}")
    try:
        tokenizer = GemmaTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{setting}: cannot read the Gemma tokenizer in {folder} ({_reason(exc)}); put the "
                        f"tokenizer files of {GEMMA_TOKENIZER_ID} there") from None
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(cache_dir: str | None):
    """Gemma's tokenizer: ``<cache_dir>/google_gemma-2-2b``, else a Hugging Face cache (``cache_dir`` itself, as
    sd-scripts uses it, then the user's), else (downloads on) one download of the tokenizer files, kept in
    ``cache_dir``. A UserError naming tokenizer_cache_dir says what to put where when none works."""
    from .flux_parts import hub_offline

    local = tokenizer_folder(cache_dir) if cache_dir else None
    if local is not None and local.is_dir():
        return gemma_tokenizer_from_folder(local, "tokenizer_cache_dir")
    caches = ([Path(cache_dir).expanduser()] if cache_dir else []) + [None]
    for cache in caches:
        tokenizer = _from_hub_cache(cache)
        if tokenizer is not None:
            break
    else:
        if hub_offline():
            raise UserError(_missing(local, "downloads are off (HF_HUB_OFFLINE=1)"))
        tokenizer = _download(local)
    if local is not None:
        try:
            tokenizer.save_pretrained(str(local))
        except OSError as exc:
            log.warning("tokenizer_cache_dir: could not save the Gemma tokenizer to %s (%s)", local, _reason(exc))
    return tokenizer


def _from_hub_cache(cache: Path | None):
    from huggingface_hub import snapshot_download

    from .flux_parts import hub_cache

    try:
        folder = Path(snapshot_download(GEMMA_TOKENIZER_ID, cache_dir=str(cache or hub_cache()), local_files_only=True,
                                        allow_patterns=list(GEMMA_TOKENIZER_FILES)))
    except Exception:  # not cached, or a broken cache entry
        return None
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        return None
    return gemma_tokenizer_from_folder(folder, "the Hugging Face cache")


def _download(local: Path | None):
    from huggingface_hub import snapshot_download

    from ..training.hub_upload import hub_reachable
    from .flux_parts import hub_cache

    log.info("downloading Gemma's tokenizer (%s, tokenizer files only) once", GEMMA_TOKENIZER_ID)
    try:
        with hub_reachable():
            folder = Path(snapshot_download(GEMMA_TOKENIZER_ID, cache_dir=str(hub_cache()),
                                            allow_patterns=list(GEMMA_TOKENIZER_FILES)))
    except Exception as exc:
        raise UserError(_missing(local, f"the download failed ({_reason(exc)}; {GEMMA_TOKENIZER_ID} is gated: log in "
                                        "with a Hugging Face token whose account accepted Gemma's licence)")) from None
    return gemma_tokenizer_from_folder(folder, "the downloaded Gemma tokenizer")


def _missing(local: Path | None, why: str) -> str:
    where = f"{local}/" if local is not None else \
        "<tokenizer_cache_dir>/google_gemma-2-2b/ (tokenizer_cache_dir is not set now)"
    return (f"tokenizer_cache_dir: Lumina 2 needs Gemma's tokenizer ({GEMMA_TOKENIZER_ID}); it is in neither "
            f"tokenizer_cache_dir nor the Hugging Face cache, and {why}. Download tokenizer.json, "
            f"tokenizer_config.json and special_tokens_map.json from https://huggingface.co/{GEMMA_TOKENIZER_ID} "
            f"into {where} and set tokenizer_cache_dir to the folder above it")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# ================================================================ prompts
def with_system_prompt(caption: str, system_prompt: str | None) -> str:
    """sd-scripts' text for a caption: ``"{system_prompt} <Prompt Start> {caption}"``, or the caption alone."""
    return f"{system_prompt} {PROMPT_START} {caption}" if system_prompt else caption


def encode_prompts(gemma2, tokenizer, captions: list[str], max_length: int, system_prompt: str | None,
                   device) -> dict:
    """{"gemma2": hidden_states[-2] (B, L, hidden), "gemma2_mask": (B, L) int64, 1 on the tokens} of ``captions``
    with the system prompt in front (give None for negative prompts), as sd-scripts' LuminaTokenizeStrategy and
    LuminaTextEncodingStrategy compute them. Row i depends only on caption i (fixed length, right padding)."""
    texts = [with_system_prompt(c, system_prompt) for c in captions]
    tokens = tokenizer(texts, max_length=max_length, padding="max_length", truncation=True, pad_to_multiple_of=8,
                       return_tensors="pt")
    ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
    hidden = gemma2(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    return {"gemma2": hidden, "gemma2_mask": mask}

