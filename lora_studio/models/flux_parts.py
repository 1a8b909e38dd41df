"""The text side and the autoencoder of Flux.1 (dev, schnell) and Chroma, loaded from the files users download.

What sd-scripts does, and what this module reproduces (``library/strategy_base.py``, ``library/strategy_flux.py``,
``library/flux_utils.py``, ``library/flux_models.py``, ``flux_train_network.py``):

- Tokenizers: CLIP-L (``openai/clip-vit-large-patch14``) and T5-XXL (``google/t5-v1_1-xxl``), first from
  ``<tokenizer_cache_dir>/<hub id with "/" -> "_">``, else from the Hub, then saved into that folder.
- Conditioning: CLIP-L ids padded/truncated to 77 -> ``pooler_output`` (B, 768); T5 ids padded/truncated to
  ``t5xxl_max_token_length`` (None: 512 for dev, 256 for schnell) -> ``last_hidden_state`` (B, L, 4096); with
  ``apply_t5_attn_mask`` the padding mask goes into T5's attention (and the transformer's). Chroma has no CLIP.
- Files: ``clip_l.safetensors`` (transformers names, ``text_model.*``), ``t5xxl_fp16.safetensors`` /
  ``t5xxl_fp8_e4m3fn.safetensors`` (transformers names, ``encoder.block.*`` and ``shared.weight``), ``ae.safetensors``
  (BFL names = LDM VAE names without a prefix, 16 latent channels, no quant_conv). float8_e4m3fn files are used as
  they are; other float8 kinds are refused.
- The AE's latent normalisation ``(z - 0.1159) * 0.3611`` (inside sd-scripts' ``AutoEncoder.encode``) is NOT applied
  here: the diffusers AutoencoderKL returned carries it in its config (scaling_factor, shift_factor) and the family
  applies it once.

Every size is read from the file's tensor shapes, so the real models and the tiny test files load alike. The modules
are built empty (meta device) and each weight, read one at a time, becomes the module's own tensor: the weights are
in memory once. torch is imported inside the functions; the name checks (``is_t5`` ...) need only a header's names.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("lora_studio")

CLIP_L_TOKENIZER_ID = "openai/clip-vit-large-patch14"
T5_XXL_TOKENIZER_ID = "google/t5-v1_1-xxl"
# what a T5 tokenizer folder holds (tokenizer.json or spiece.model is the vocabulary; the other two its settings)
T5_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CLIP_MAX_LENGTH = 77
CLIP_L_POOLED_DIM = 768
AE_SCALING_FACTOR = 0.3611
AE_SHIFT_FACTOR = 0.1159
AE_LATENT_CHANNELS = 16

# The real Flux AE as a diffusers AutoencoderKL (sizes are replaced by the file's shapes when loading).
FLUX_AE = {"in_channels": 3, "out_channels": 3, "latent_channels": AE_LATENT_CHANNELS,
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
           "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": AE_SCALING_FACTOR,
           "shift_factor": AE_SHIFT_FACTOR, "use_quant_conv": False, "use_post_quant_conv": False,
           "force_upcast": True, "mid_block_add_attention": True}
# google/t5-v1_1-xxl's encoder (flux_utils.load_t5xxl's config); the sizes come from the file.
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "relative_attention_num_buckets": 32,
          "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
          "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "is_encoder_decoder": False,
          "use_cache": False, "tie_word_embeddings": False}
# openai/clip-vit-large-patch14's text tower (flux_utils.load_clip_l's config); the sizes come from the file.
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
          "layer_norm_eps": 1e-5, "projection_dim": 768}

_TRUE = ("1", "on", "yes", "true")


# ================================================================ tokenizers
def tokenizer_folder(cache_dir: str | Path, model_id: str) -> Path:
    """Where sd-scripts keeps a tokenizer in ``tokenizer_cache_dir``: the hub id with "/" replaced by "_"."""
    return Path(cache_dir).expanduser() / model_id.replace("/", "_")


def load_tokenizers(cache_dir: str | None, need_clip: bool = True):
    """(CLIP-L tokenizer or None when not ``need_clip`` (Chroma), T5-XXL tokenizer).

    CLIP-L: ``<cache_dir>/openai_clip-vit-large-patch14`` when that folder exists, else LoRA Studio's offline CLIP
    tokenizer (the same ids, nothing downloaded). T5: ``<cache_dir>/google_t5-v1_1-xxl``, else the Hugging Face
    cache, else (unless downloads are off: HF_HUB_OFFLINE=1) a one-time download of the tokenizer files (about a
    megabyte, with a progress bar), saved into ``cache_dir`` when one is set, as sd-scripts does. When none of these
    works: a UserError saying which files to put where.
    """
    clip = _clip_tokenizer(cache_dir) if need_clip else None
    return clip, _t5_tokenizer(cache_dir)


def _clip_tokenizer(cache_dir: str | None):
    from .tokenizer import clip_tokenizer

    if cache_dir:
        folder = tokenizer_folder(cache_dir, CLIP_L_TOKENIZER_ID)
        if folder.is_dir():
            from transformers import CLIPTokenizer

            try:
                return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
            except Exception as exc:
                raise UserError(f"tokenizer_cache_dir: cannot read the CLIP tokenizer in {folder} "
                                f"({_reason(exc)}); remove that folder (LoRA Studio has the CLIP-L tokenizer "
                                "built in) or put the files of openai/clip-vit-large-patch14's tokenizer there"
                                ) from None
    return clip_tokenizer()


def _t5_tokenizer(cache_dir: str | None):
    local = tokenizer_folder(cache_dir, T5_XXL_TOKENIZER_ID) if cache_dir else None
    if local is not None and local.is_dir():
        return t5_tokenizer_from_folder(local, "tokenizer_cache_dir")
    tokenizer = _t5_from_hub_cache()
    if tokenizer is None:
        if hub_offline():
            raise UserError(_t5_missing(local, "downloads are off (HF_HUB_OFFLINE=1)"))
        tokenizer = _download_t5(local)
    if local is not None:
        _save_tokenizer(tokenizer, local)
    return tokenizer


def t5_tokenizer_from_folder(folder: Path, setting: str):
    """The T5 tokenizer saved in ``folder`` (tokenizer.json, or spiece.model, with tokenizer_config.json)."""
    from transformers import T5TokenizerFast

    has_json, has_spm = (folder / "tokenizer.json").is_file(), (folder / "spiece.model").is_file()
    if not has_json and not has_spm:
        raise UserError(f"{setting}: {folder} holds no T5 tokenizer: it needs tokenizer.json or spiece.model, with "
                        f"tokenizer_config.json and special_tokens_map.json (from "
                        f"https://huggingface.co/{T5_XXL_TOKENIZER_ID})")
    if not has_json and not _has_sentencepiece():
        raise UserError(f"{setting}: {folder} holds spiece.model but no tokenizer.json; reading spiece.model needs "
                        "the sentencepiece package (pip install sentencepiece), or put tokenizer.json beside it")
    try:
        return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"{setting}: cannot read the T5 tokenizer in {folder} ({_reason(exc)}); put the "
                        f"{_t5_file_list()} of {T5_XXL_TOKENIZER_ID} there") from None


def hub_offline() -> bool:
    """Whether the user turned Hugging Face downloads off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), read now. The
    command line turns huggingface_hub's offline mode on against accidental downloads and keeps the user's own
    value in LORA_STUDIO_USER_HF_OFFLINE; that one decides here."""
    user = os.environ.get("LORA_STUDIO_USER_HF_OFFLINE")
    value = (user if user is not None else os.environ.get("HF_HUB_OFFLINE")) or \
        os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def hub_cache() -> Path:
    """The Hugging Face cache as the environment names it now (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub);
    huggingface_hub reads it once at import, this follows later changes too."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _t5_from_hub_cache():
    """The T5 tokenizer from the Hugging Face cache (never the network), or None when it is not there."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(T5_XXL_TOKENIZER_ID, cache_dir=str(hub_cache()), local_files_only=True,
                                        allow_patterns=list(T5_TOKENIZER_FILES)))
    except Exception:  # not cached (LocalEntryNotFoundError) or a broken cache entry
        return None
    if not any((folder / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        return None
    return t5_tokenizer_from_folder(folder, "the Hugging Face cache")


def _download_t5(local: Path | None):
    """Download the T5 tokenizer files (not the model) into the Hugging Face cache; huggingface_hub shows progress.
    LoRA Studio keeps huggingface_hub offline unless asked; this transfer is asked for, so it runs online."""
    from huggingface_hub import snapshot_download

    from ..training.hub_upload import hub_reachable

    log.info("downloading the T5-XXL tokenizer (%s, tokenizer files only) once", T5_XXL_TOKENIZER_ID)
    try:
        with hub_reachable():
            folder = Path(snapshot_download(T5_XXL_TOKENIZER_ID, cache_dir=str(hub_cache()),
                                            allow_patterns=list(T5_TOKENIZER_FILES)))
    except Exception as exc:
        raise UserError(_t5_missing(local, f"the download failed ({_reason(exc)})")) from None
    return t5_tokenizer_from_folder(folder, "the downloaded T5 tokenizer")


def _save_tokenizer(tokenizer, folder: Path) -> None:
    """Keep a copy in ``tokenizer_cache_dir`` (as sd-scripts does); a folder that cannot be written is only said."""
    try:
        tokenizer.save_pretrained(str(folder))
        log.info("saved the T5 tokenizer to %s", folder)
    except OSError as exc:
        log.warning("tokenizer_cache_dir: could not save the T5 tokenizer to %s (%s)", folder, _reason(exc))


def _t5_file_list() -> str:
    return "files spiece.model (or tokenizer.json), tokenizer_config.json and special_tokens_map.json"


def _t5_missing(local: Path | None, why: str) -> str:
    places = f"in {local}, nor in" if local is not None else "in"
    where = f"{local}/" if local is not None else \
        "<tokenizer_cache_dir>/google_t5-v1_1-xxl/ (tokenizer_cache_dir is not set now)"
    spm = "" if _has_sentencepiece() else ("; reading spiece.model needs the sentencepiece package (pip install "
                                           "sentencepiece), tokenizer.json does not")
    return (f"tokenizer_cache_dir: the T5-XXL tokenizer ({T5_XXL_TOKENIZER_ID}) is needed (Flux, Chroma, SD3 with "
            f"T5, Anima's adapter ids); it is not "
            f"{places} the Hugging Face cache ({hub_cache()}), and {why}. Download its {_t5_file_list()} from "
            f"https://huggingface.co/{T5_XXL_TOKENIZER_ID} (Files and versions) into {where} and set "
            f"tokenizer_cache_dir to the folder above it{spm}. Or run once with HF_HUB_OFFLINE=0 and a connection: "
            "they are downloaded (about 1 MB) and kept there")


def _has_sentencepiece() -> bool:
    return importlib.util.find_spec("sentencepiece") is not None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# ================================================================ recognising files by their tensor names
_CLIP_MARK = "encoder.layers.0.self_attn.q_proj.weight"
_T5_MARK = "encoder.block.0.layer.0.SelfAttention.q.weight"
_AE_LDM_MARK = "encoder.down.0.block.0.conv1.weight"
_AE_DIFFUSERS_MARK = "encoder.down_blocks.0.resnets.0.conv1.weight"
_AE_PREFIXES = ("", "first_stage_model.", "vae.", "ae.")


def _prefixes(keys: Iterable[str], mark: str) -> list[str]:
    """Every prefix under which ``mark`` is a key of ``keys``, shortest first."""
    return sorted({k[:-len(mark)] for k in keys if k.endswith(mark) and (len(k) == len(mark) or
                                                                          k[-len(mark) - 1] == ".")}, key=len)


def clip_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of a CLIP text encoder's names in a file, up to and including ``text_model.`` when the file has it
    (``text_model.``, ``text_encoders.clip_l.transformer.text_model.`` ...); a file with several (SD3's clip_l and
    clip_g): the one whose prefix names clip_l, else the first."""
    found = _prefixes(keys, _CLIP_MARK)
    return next((p for p in found if "clip_l" in p), found[0]) if found else None


def t5_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of a T5 encoder's names in a file ("" for t5xxl_fp16.safetensors)."""
    found = _prefixes(keys, _T5_MARK)
    return found[0] if found else None


def ae_prefix(keys: Iterable[str]) -> tuple[str, bool] | None:
    """(prefix, LDM naming) of an autoencoder in a file: BFL/LDM names (``encoder.down.0...``) or diffusers names
    (``encoder.down_blocks.0...``), without a prefix or under ``first_stage_model.`` / ``vae.`` / ``ae.``."""
    keys = set(keys)
    for prefix in _AE_PREFIXES:
        if prefix + _AE_LDM_MARK in keys:
            return prefix, True
        if prefix + _AE_DIFFUSERS_MARK in keys:
            return prefix, False
    return None


def is_clip_l(keys: Iterable[str]) -> bool:
    """A CLIP text encoder in transformers naming (what clip_l.safetensors holds)."""
    return clip_prefix(keys) is not None


def is_t5(keys: Iterable[str]) -> bool:
    """A T5 encoder in transformers naming (t5xxl_fp16 / t5xxl_fp8_e4m3fn.safetensors)."""
    return t5_prefix(keys) is not None


def is_flux_ae(keys: Iterable[str]) -> bool:
    """An autoencoder without quant_conv (the Flux AE, ae.safetensors); SD's VAEs have one."""
    keys = list(keys)
    found = ae_prefix(keys)
    return found is not None and f"{found[0]}quant_conv.weight" not in set(keys)


def is_flux_transformer(keys: Iterable[str]) -> bool:
    """A Flux/Chroma transformer in BFL naming (with or without ComfyUI's ``model.diffusion_model.``)."""
    return any(re.match(r"(model\.diffusion_model\.)?double_blocks\.0\.", k) for k in keys)


def what_file_is(keys: Iterable[str]) -> str | None:
    """What a file seems to be, with the setting it belongs in, for telling users they swapped files; None when
    unknown."""
    keys = list(keys)
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        return "a Stable Diffusion checkpoint"
    if is_flux_transformer(keys):
        return "a Flux/Chroma transformer (the base model, pretrained_model_name_or_path)"
    if is_t5(keys):
        return "a T5 text encoder (the t5xxl setting)"
    if is_flux_ae(keys):
        return "the Flux autoencoder (the ae setting)"
    if ae_prefix(keys) is not None:
        return "a Stable Diffusion VAE (it has quant_conv; the Flux AE has none)"
    if is_clip_l(keys):
        return "a CLIP text encoder (the clip_l setting)"
    if any(k.startswith("lora_") for k in keys):
        return "a LoRA file"
    return None


def _not_a(setting: str, kind: str, path: Path, keys: list[str]) -> UserError:
    seems = what_file_is(keys)
    return UserError(f"{setting}: {path} is not {kind}" + (f"; it looks like {seems}" if seems else
                                                             " (no weight names of one)") +
                     ". Check which file each of the model's part settings names")


# ================================================================ weights into empty modules
def _open(path: str | Path, setting: str):
    """(tensors read one at a time, {name: shape}, {name: safetensors dtype}) of a .safetensors file."""
    from ..io_utils import read_safetensors_header
    from .loading import SafetensorsView

    path = Path(path).expanduser()
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{setting}: {path} is not a .safetensors file; LoRA Studio reads this part from a single "
                        ".safetensors file")
    header = read_safetensors_header(path, setting)
    shapes = {k: tuple(v["shape"]) for k, v in header.tensors.items()}
    dtypes = {k: v["dtype"] for k, v in header.tensors.items()}
    return SafetensorsView(path, setting), shapes, dtypes, path


def _refuse_other_float8(setting: str, path: Path, dtypes: Mapping[str, str]) -> None:
    """sd-scripts uses float8 files only as float8_e4m3fn; e5m2 (and others) would compute wrong values."""
    other = sorted({d for d in dtypes.values() if d.startswith("F8") and d != "F8_E4M3"})
    if other:
        raise UserError(f"{setting}: {path} stores its weights as {other[0]}; only float8_e4m3fn (F8_E4M3) files "
                        "can be used, as in sd-scripts. Use the fp16 file (e.g. t5xxl_fp16.safetensors) or the "
                        "e4m3fn one")


def _only_trailing_ones_differ(a, b) -> bool:
    strip = (lambda s: tuple(s[:len(s) - next((i for i, d in enumerate(reversed(s)) if d != 1), len(s))]))
    return strip(tuple(a)) == strip(tuple(b))


def _assign(model, file_key_of, sd, target_dtype, what: str, setting: str, path: Path) -> None:
    """Give every weight of ``model`` (built empty) the file's tensor ``sd[file_key_of(name)]``, converted to
    ``target_dtype(name, file_dtype)`` on the current default device. A tensor two weights share (T5's tied
    embedding) is read and converted once. LDM 1x1 convolutions fill Linear weights (the AE's attention)."""
    import torch

    device = torch.get_default_device()
    state, converted, missing = {}, {}, []
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = file_key_of(name)
        if key is None or key not in sd:
            if not name.endswith("position_ids"):
                missing.append(name)
            continue
        if key not in converted:
            value = sd[key]
            if tuple(value.shape) != tuple(tensor.shape):
                if not _only_trailing_ones_differ(value.shape, tensor.shape):
                    raise UserError(f"{setting}: {path}: the {what} weight {key} has the shape {tuple(value.shape)},"
                                    f" not {tuple(tensor.shape)}; is this one complete {what} file?")
                value = value.reshape(tensor.shape)
            dtype = target_dtype(name, value.dtype) if tensor.is_floating_point() else tensor.dtype
            converted[key] = value.to(device=device, dtype=dtype).contiguous()
        state[name] = converted[key]
    if missing:
        raise UserError(f"{setting}: {path} lacks {len(missing)} weight(s) of the {what} (e.g. {missing[0]}); is the "
                        "download complete, and is it the right file?")
    model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left and device.type != "meta":
        raise UserError(f"{setting}: {path}: the {what} weights are incomplete (e.g. {left[0]})")
    model.requires_grad_(False)
    model.eval()


def _count(keys: Iterable[str], pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ================================================================ CLIP-L
def clip_l_config(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """A CLIPTextModel config from tensor shapes under ``prefix``. The head count is not in the shapes: every CLIP
    text tower has 64-wide heads (L: 768/12); widths under 64 (test models) get 16-wide heads."""
    names = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    cfg = dict(CLIP_L)
    cfg["vocab_size"], cfg["hidden_size"] = names["embeddings.token_embedding.weight"]
    cfg["max_position_embeddings"] = names["embeddings.position_embedding.weight"][0]
    cfg["num_hidden_layers"] = _count(names, r"encoder\.layers\.(\d+)\.")
    cfg["intermediate_size"] = names["encoder.layers.0.mlp.fc1.weight"][0]
    width = cfg["hidden_size"]
    cfg["num_attention_heads"] = width // 64 if width >= 64 else max(1, width // 16)
    cfg["projection_dim"] = width
    return cfg


def load_clip_l(path: str | Path, dtype):
    """CLIP-L (a transformers CLIPTextModel) from clip_l.safetensors: ``text_model.*`` names, with or without a
    prefix such as ComfyUI's ``text_encoders.clip_l.transformer.``; extra tensors (text_projection, logit_scale)
    are left out. float8 files are upcast to ``dtype``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from .ldm_build import empty

    sd, shapes, dtypes, path = _open(path, "clip_l")
    keys = list(shapes)
    prefix = clip_prefix(keys)
    if prefix is None:
        raise _not_a("clip_l", "a CLIP-L text encoder", path, keys)
    _refuse_other_float8("clip_l", path, dtypes)
    try:
        cfg = clip_l_config(shapes, prefix)
    except KeyError as exc:
        raise UserError(f"clip_l: {path} is an incomplete CLIP text encoder (no {prefix}{exc.args[0]})") from None
    model = empty(lambda: CLIPTextModel(CLIPTextConfig(**cfg)))
    _assign(model, lambda name: prefix + name.removeprefix("text_model."), sd, lambda name, file_dtype: dtype,
            "CLIP-L text encoder", "clip_l", path)
    return model


# ================================================================ T5-XXL
def t5_config(shapes: Mapping[str, tuple], prefix: str) -> dict:
    """A T5 encoder config from tensor shapes under ``prefix``: heads and buckets from the relative attention bias
    [buckets, heads], d_kv from q's rows, gated-gelu when the feed-forward has wi_0/wi_1 (T5 v1.1), relu otherwise.
    The bucket distance (128) is not in the shapes; every T5 uses 128."""
    names = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    embed = names.get("shared.weight") or names["encoder.embed_tokens.weight"]
    block = "encoder.block.0.layer."
    cfg = dict(T5_XXL)
    cfg["vocab_size"], cfg["d_model"] = embed
    cfg["relative_attention_num_buckets"], cfg["num_heads"] = \
        names[block + "0.SelfAttention.relative_attention_bias.weight"]
    cfg["d_kv"] = names[block + "0.SelfAttention.q.weight"][0] // cfg["num_heads"]
    cfg["num_layers"] = _count(names, r"encoder\.block\.(\d+)\.")
    gated = block + "1.DenseReluDense.wi_0.weight" in names
    cfg["d_ff"] = names[block + ("1.DenseReluDense.wi_0.weight" if gated else "1.DenseReluDense.wi.weight")][0]
    cfg["feed_forward_proj"] = "gated-gelu" if gated else "relu"
    cfg["dense_act_fn"] = "gelu_new" if gated else "relu"
    cfg["num_decoder_layers"] = cfg["num_layers"]
    return cfg


def _t5_file_key(prefix: str, keys: set[str]):
    """Model weight name -> file name; the embedding is ``shared.weight`` or ``encoder.embed_tokens.weight``
    (tied: either fills both)."""
    embeddings = [prefix + n for n in ("shared.weight", "encoder.embed_tokens.weight") if prefix + n in keys]

    def key_of(name: str) -> str | None:
        if name in ("shared.weight", "encoder.embed_tokens.weight"):
            return embeddings[0] if embeddings else None
        return prefix + name
    return key_of


def load_t5xxl(path: str | Path, dtype, keep_fp8: bool = False):
    """T5-XXL's encoder (a transformers T5EncoderModel) from t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors
    (``encoder.block.*`` names, with or without a prefix such as ``text_encoders.t5xxl.transformer.``).

    ``keep_fp8``: the Linear weights are kept in float8_e4m3fn (as the file has them, or converted) and computed in
    ``dtype``, the rest (embedding, norms, position bias) in ``dtype``, as sd-scripts' fp8_base prepares T5. Without
    it every weight is ``dtype``; in float16 the feed-forward output layers (wo) stay float32, as transformers keeps
    them, since T5 overflows float16 there. "scaled" fp8 files (weights with scale factors) are refused.
    """
    import torch
    from transformers import T5Config, T5EncoderModel

    from .ldm_build import empty

    sd, shapes, dtypes, path = _open(path, "t5xxl")
    keys = set(shapes)
    prefix = t5_prefix(keys)
    if prefix is None:
        raise _not_a("t5xxl", "a T5 text encoder", path, list(shapes))
    _refuse_other_float8("t5xxl", path, dtypes)
    if any(k.endswith("scaled_fp8") or k.endswith(".scale_weight") for k in keys):
        raise UserError(f"t5xxl: {path} is a 'scaled' fp8 file (its weights need scale factors); use "
                        "t5xxl_fp8_e4m3fn.safetensors (not the _scaled one) or t5xxl_fp16.safetensors, as sd-scripts "
                        "asks")
    try:
        cfg = t5_config(shapes, prefix)
    except (KeyError, TypeError) as exc:
        raise UserError(f"t5xxl: {path} is an incomplete T5 encoder (no {prefix}{exc.args[0] if exc.args else '?'})"
                        ) from None
    model = empty(lambda: T5EncoderModel(T5Config(**cfg)))
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}

    def target_dtype(name: str, file_dtype):
        if name in linear and keep_fp8 and file_dtype == torch.float8_e4m3fn:
            return file_dtype
        if dtype == torch.float16 and name.endswith("DenseReluDense.wo.weight") and not keep_fp8:
            return torch.float32
        return dtype
    _assign(model, _t5_file_key(prefix, keys), sd, target_dtype, "T5 text encoder", "t5xxl", path)
    _tie_t5_embedding(model)
    if keep_fp8:
        _compute_fp8_linears(model, dtype)
    return model


def _tie_t5_embedding(model) -> None:
    """One embedding Parameter for ``shared`` and ``encoder.embed_tokens`` (tied in T5EncoderModel)."""
    model.encoder.embed_tokens.weight = model.shared.weight


def _compute_fp8_linears(model, dtype) -> None:
    """float8 Linear weights computed in ``dtype`` (``fp8``'s mechanism): the ones the file had in float8 are used as
    they are (no full-precision copy is ever made), the others are converted by ``fp8.store_fp8``. T5's gated
    feed-forward casts its input to ``wo``'s weight dtype, which would be float8: it gets a forward without that
    cast, as sd-scripts' flux_train_network gives it."""
    import types

    import torch

    from . import fp8

    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype == fp8.FP8 and "forward" not in vars(module):
            module.fp8_compute_dtype = dtype
            module.forward = types.MethodType(fp8._fp8_linear_forward, module)
    fp8.store_fp8(model, dtype)
    for module in model.modules():
        if type(module).__name__ == "T5DenseGatedActDense":
            module.forward = types.MethodType(_gated_feed_forward_without_cast, module)


def _gated_feed_forward_without_cast(self, hidden_states):
    """T5 v1.1's feed-forward, gelu(x W0) * (x W1) -> W_o, in the input's dtype whatever W_o's storage dtype."""
    gated = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
    return self.wo(self.dropout(gated))


# ================================================================ the autoencoder
class _ShapesOnly(Mapping):
    """Header shapes as a mapping whose values have ``.shape`` (what ``ldm_build.vae_config_from_ldm`` reads), under
    the ``first_stage_model.`` names it expects."""

    def __init__(self, shapes: Mapping[str, tuple], prefix: str, new_prefix: str):
        self._shapes = {new_prefix + k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}

    def __getitem__(self, key):
        from types import SimpleNamespace

        return SimpleNamespace(shape=self._shapes[key])

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)


def flux_ae_config(shapes: Mapping[str, tuple], prefix: str, ldm_names: bool) -> dict:
    """A diffusers AutoencoderKL config of the Flux AE from the file's shapes (levels, widths, layers, channels)."""
    from . import ldm_keys
    from .ldm_build import vae_config_from_ldm

    if ldm_names:
        cfg = vae_config_from_ldm(_ShapesOnly(shapes, prefix, ldm_keys.VAE_PREFIX), FLUX_AE)
    else:
        names = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        levels = _count(names, r"encoder\.down_blocks\.(\d+)\.")
        cfg = dict(FLUX_AE)
        cfg["block_out_channels"] = [names[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0]
                                     for i in range(levels)]
        cfg["layers_per_block"] = _count(names, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
        cfg["latent_channels"] = names["encoder.conv_out.weight"][0] // 2
        cfg["in_channels"] = names["encoder.conv_in.weight"][1]
        cfg["out_channels"] = names["decoder.conv_out.weight"][0]
        cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
        cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    cfg["scaling_factor"], cfg["shift_factor"] = AE_SCALING_FACTOR, AE_SHIFT_FACTOR
    cfg["use_quant_conv"] = cfg["use_post_quant_conv"] = False
    return cfg


def load_ae(path: str | Path, dtype):
    """The Flux AE (a diffusers AutoencoderKL) from ae.safetensors: BFL names (the LDM VAE's, no prefix; also under
    ``first_stage_model.``, ``vae.`` or ``ae.``) or diffusers names. 16 latent channels, no quant_conv; the config
    carries scaling_factor 0.3611 and shift_factor 0.1159, which this loader does not apply (the family does)."""
    from diffusers import AutoencoderKL

    from . import ldm_keys
    from .ldm_build import empty

    sd, shapes, dtypes, path = _open(path, "ae")
    keys = list(shapes)
    found = ae_prefix(keys)
    if found is None:
        raise _not_a("ae", "an autoencoder", path, keys)
    prefix, ldm_names = found
    if f"{prefix}quant_conv.weight" in shapes:
        raise UserError(f"ae: {path} is a Stable Diffusion VAE (it has quant_conv); Flux, Chroma and Lumina 2 need "
                        "the Flux AE (ae.safetensors from black-forest-labs/FLUX.1-schnell or FLUX.1-dev)")
    _refuse_other_float8("ae", path, dtypes)
    try:
        cfg = flux_ae_config(shapes, prefix, ldm_names)
    except (KeyError, IndexError) as exc:
        raise UserError(f"ae: {path} is an incomplete autoencoder (no {exc.args[0] if exc.args else '?'})") from None
    if cfg["latent_channels"] != AE_LATENT_CHANNELS:
        raise UserError(f"ae: {path} has {cfg['latent_channels']} latent channels; the Flux AE has "
                        f"{AE_LATENT_CHANNELS} (is it another model's VAE?)")
    model = empty(lambda: AutoencoderKL.from_config(cfg))
    levels = len(cfg["block_out_channels"])

    def key_of(name: str) -> str:
        return prefix + (ldm_keys.vae_key(name, levels) if ldm_names else name)
    _assign(model, key_of, sd, lambda name, file_dtype: dtype, "autoencoder", "ae", path)
    return model


# ================================================================ prompts
def t5_max_length_default(schnell: bool) -> int:
    """sd-scripts' t5xxl_max_token_length when none is set: 256 for schnell, 512 for dev (and Chroma)."""
    return 256 if schnell else 512


def encode_prompts(clip, t5, clip_tokenizer, t5_tokenizer, captions: list[str], t5_max_length: int,
                   apply_t5_mask: bool, device, pooled_dim: int = CLIP_L_POOLED_DIM) -> dict:
    """The conditioning of ``captions`` as sd-scripts computes it (``FluxTokenizeStrategy.tokenize``,
    ``FluxTextEncodingStrategy.encode_tokens``).

    Returns {"pooled": CLIP-L's pooler_output (B, 768) of the ids padded/truncated to 77, or zeros (B,
    ``pooled_dim``) when ``clip`` is None (Chroma); "t5": T5's last_hidden_state (B, t5_max_length, d_model) of the
    ids padded/truncated to ``t5_max_length``; "t5_mask": (B, t5_max_length) int64, 1 on tokens (with the closing
    </s>) and 0 on padding}. With ``apply_t5_mask`` the mask also goes into T5's attention; it is returned either
    way (the transformer masks with it when asked). Row i depends only on caption i, so rows can be cached per
    caption. Gradients follow torch's grad mode (wrap in ``torch.no_grad()`` when caching).
    """
    import torch

    t5_tokens = t5_tokenizer(captions, max_length=t5_max_length, padding="max_length", truncation=True,
                             return_tensors="pt")
    ids, mask = t5_tokens["input_ids"].to(device), t5_tokens["attention_mask"].to(device)
    hidden = t5(input_ids=ids, attention_mask=mask if apply_t5_mask else None).last_hidden_state
    if clip is None:
        pooled = torch.zeros(len(captions), pooled_dim, dtype=hidden.dtype, device=hidden.device)
    else:
        clip_ids = clip_tokenizer(captions, max_length=CLIP_MAX_LENGTH, padding="max_length", truncation=True,
                                  return_tensors="pt")["input_ids"].to(device)
        pooled = clip(input_ids=clip_ids).pooler_output
    return {"pooled": pooled, "t5": hidden, "t5_mask": mask}
