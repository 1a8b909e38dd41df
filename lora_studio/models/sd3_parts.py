"""The text side and the VAE of SD3 / SD3.5, loaded from the files users download.

What sd-scripts does, and what this module reproduces (``library/sd3_utils.py``, ``library/strategy_sd3.py``,
``sd3_train_network.py``):

- Files: the checkpoint may hold its parts itself (``text_encoders.clip_l.transformer.*``,
  ``text_encoders.clip_g.transformer.*``, ``text_encoders.t5xxl.transformer.*``, ``first_stage_model.*``: the
  ``sd3_medium_incl_clips_t5xxlfp8.safetensors`` kind; ``sd3.5_large.safetensors`` holds the VAE only), else they
  come from the settings clip_l, clip_g, t5xxl and vae (``text_encoders/clip_l.safetensors`` ...: transformers names).
  A setting that is given wins over the checkpoint's own part. T5 may be absent (its states are then zeros).
- CLIP-L and CLIP-G are CLIPTextModelWithProjection (CLIP-L gets an identity ``text_projection`` when its file has
  none, as sd_utils.load_clip_l; the same here for CLIP-G); sizes from the file's shapes, CLIP-L with quick_gelu,
  CLIP-G with gelu. T5 and the tokenizer code are Flux's (``flux_parts``).
- Tokenizers: CLIP-L and CLIP-G share OpenAI's BPE vocabulary (LoRA Studio's offline copy; a folder
  ``<tokenizer_cache_dir>/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k`` wins for CLIP-G), CLIP-G pads with id 0 ("!"),
  CLIP-L with its end token; T5 as Flux finds it.
- Conditioning (``Sd3TextEncodingStrategy.encode_tokens`` / ``concat_encodings``): CLIP-L and CLIP-G on 77 tokens,
  their penultimate hidden states (``hidden_states[-2]``) side by side (768 + 1280) and zero-padded to T5's width
  (4096), then T5's last hidden states (t5xxl_max_token_length tokens; zeros of 77 tokens without T5) after them
  along the sequence; the pooled vector is CLIP-L's and CLIP-G's projected pooled outputs side by side (2048).
  apply_lg_attn_mask / apply_t5_attn_mask give the tokenizer's padding mask to the encoders' attention, as
  sd-scripts' code does (the MMDiT itself takes no mask).
- The VAE: the 16-channel LDM autoencoder (the Flux AE's architecture), ``first_stage_model.*`` in the checkpoint or
  a ``vae`` file, as a diffusers AutoencoderKL whose config carries SD3's latent normalisation
  ``(z - 0.0609) * 1.5305`` (sd3_models.SDVAE.process_in), applied once by the family, not here.

torch is imported inside the functions; the name checks need only a header's names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import UserError
from . import flux_parts

CLIP_G_TOKENIZER_ID = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
CLIP_MAX_LENGTH = 77
VAE_SCALING_FACTOR = 1.5305
VAE_SHIFT_FACTOR = 0.0609
LATENT_CHANNELS = 16
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 768, 1280, 4096
# where a full checkpoint keeps each part (ComfyUI's / Stability AI's single files)
CHECKPOINT_PARTS = {"clip_l": "text_encoders.clip_l.transformer.", "clip_g": "text_encoders.clip_g.transformer.",
                    "t5xxl": "text_encoders.t5xxl.transformer.", "vae": "first_stage_model."}
# laion/CLIP-ViT-bigG-14's text tower (sd3_utils.load_clip_g's config); the sizes come from the file
CLIP_G = {**flux_parts.CLIP_L, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
          "num_hidden_layers": 32, "num_attention_heads": 20, "projection_dim": 1280}


# ================================================================ recognising files by their tensor names
def checkpoint_parts(keys: Iterable[str]) -> dict[str, bool]:
    """Which of its parts an SD3 checkpoint holds itself (the settings clip_l, clip_g, t5xxl, vae)."""
    keys = list(keys)
    marks = {"clip_l": flux_parts._CLIP_MARK, "clip_g": flux_parts._CLIP_MARK, "t5xxl": flux_parts._T5_MARK,
             "vae": flux_parts._AE_LDM_MARK}
    return {part: any(k.startswith(prefix) and k.endswith(marks[part]) for k in keys)
            for part, prefix in CHECKPOINT_PARTS.items()}


def is_clip(keys: Iterable[str]) -> bool:
    """A CLIP text encoder in transformers naming (clip_l.safetensors, clip_g.safetensors)."""
    return flux_parts.clip_prefix(keys) is not None


def is_sd3_vae(keys: Iterable[str]) -> bool:
    """A 16-channel-style autoencoder without quant_conv (SD3's VAE has the Flux AE's names); SD1/SDXL VAEs have one."""
    return flux_parts.is_flux_ae(keys)


def is_sd3_transformer(keys: Iterable[str]) -> bool:
    return any(k.startswith(("joint_blocks.0.", "model.diffusion_model.joint_blocks.0.")) for k in keys)


class _WithExtra(Mapping):
    """A tensor mapping plus a few tensors made here (an identity text_projection a file lacks)."""

    def __init__(self, base: Mapping, extra: dict):
        self._base, self._extra = base, extra

    def __getitem__(self, key):
        return self._extra[key] if key in self._extra else self._base[key]

    def __contains__(self, key):
        return key in self._extra or key in self._base

    def __iter__(self):
        yield from self._extra
        yield from self._base

    def __len__(self):
        return len(self._extra) + len(self._base)


# ================================================================ CLIP-L / CLIP-G
def _clip_prefix(keys: list[str], part: str, in_checkpoint: bool) -> str | None:
    """The ``...text_model.`` prefix of ``part``'s CLIP in a file: under ``text_encoders.<part>.transformer.`` in a
    checkpoint, the only (or first) one in a separate file."""
    found = flux_parts._prefixes(keys, flux_parts._CLIP_MARK)
    if in_checkpoint:
        found = [p for p in found if p.startswith(CHECKPOINT_PARTS[part])]
    return found[0] if found else None


def load_clip(path: str | Path, part: str, dtype, in_checkpoint: bool = False):
    """CLIP-L (``part`` "clip_l") or CLIP-G ("clip_g") as a transformers CLIPTextModelWithProjection, from its own file
    or, ``in_checkpoint``, from an SD3 checkpoint's ``text_encoders.<part>.transformer.``. Sizes from the shapes
    (64-wide heads); a missing text_projection is the identity. float8 files are upcast to ``dtype``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .ldm_build import empty

    setting = "pretrained_model_name_or_path" if in_checkpoint else part
    sd, shapes, dtypes, path = flux_parts._open(path, setting)
    keys = list(shapes)
    prefix = _clip_prefix(keys, part, in_checkpoint)
    if prefix is None:
        raise flux_parts._not_a(setting, f"a CLIP text encoder ({part})", path, keys)
    flux_parts._refuse_other_float8(setting, path, dtypes)
    try:
        cfg = flux_parts.clip_l_config(shapes, prefix)
    except KeyError as exc:
        raise UserError(f"{setting}: {path} has an incomplete CLIP text encoder (no {prefix}{exc.args[0]})") from None
    width = cfg["hidden_size"]
    swapped = {"clip_l": CLIP_G_WIDTH, "clip_g": CLIP_L_WIDTH}[part]
    if width == swapped:
        other = "clip_g" if part == "clip_l" else "clip_l"
        raise UserError(f"{setting}: {path.name} is {width} wide: it is {other.replace('_', '-').upper()}, not "
                        f"{part.replace('_', '-').upper()}; did the files of clip_l and clip_g swap places?")
    if part == "clip_g":
        cfg["hidden_act"] = "gelu"
    root = prefix.removesuffix("text_model.")
    projection = root + "text_projection.weight"
    extra = {}
    if projection in shapes:
        cfg["projection_dim"] = shapes[projection][0]
    else:
        extra[projection] = torch.eye(width)
    model = empty(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg)))
    flux_parts._assign(model, lambda name: root + name, _WithExtra(sd, extra), lambda name, file_dtype: dtype,
                       f"{part.replace('_', '-').upper()} text encoder", setting, path)
    return model


# ================================================================ the VAE
def load_vae(path: str | Path, dtype, in_checkpoint: bool = False):
    """SD3's VAE (a diffusers AutoencoderKL) from a ``vae`` file or the checkpoint's ``first_stage_model.``: LDM or
    diffusers names, 16 latent channels, no quant_conv; its config carries scaling_factor 1.5305 and shift_factor
    0.0609, which this loader does not apply (the family does, once)."""
    from diffusers import AutoencoderKL

    from . import ldm_keys
    from .ldm_build import empty

    setting = "pretrained_model_name_or_path" if in_checkpoint else "vae"
    sd, shapes, dtypes, path = flux_parts._open(path, setting)
    keys = [k for k in shapes if k.startswith("first_stage_model.")] if in_checkpoint else list(shapes)
    found = flux_parts.ae_prefix(keys)
    if found is None:
        raise flux_parts._not_a(setting, "an autoencoder", path, keys)
    prefix, ldm_names = found
    if f"{prefix}quant_conv.weight" in shapes:
        raise UserError(f"{setting}: {path} holds a Stable Diffusion 1/2/XL VAE (it has quant_conv, 4 latent channels);"
                        " SD3 needs its own 16-channel VAE (the one inside sd3.5_large.safetensors / "
                        "sd3_medium.safetensors, or a vae file made from it)")
    flux_parts._refuse_other_float8(setting, path, dtypes)
    try:
        cfg = flux_parts.flux_ae_config(shapes, prefix, ldm_names)
    except (KeyError, IndexError) as exc:
        raise UserError(f"{setting}: {path} has an incomplete VAE (no {exc.args[0] if exc.args else '?'})") from None
    if cfg["latent_channels"] != LATENT_CHANNELS:
        raise UserError(f"{setting}: {path} has a VAE of {cfg['latent_channels']} latent channels; SD3's has "
                        f"{LATENT_CHANNELS}")
    cfg["scaling_factor"], cfg["shift_factor"] = VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
    model = empty(lambda: AutoencoderKL.from_config(cfg))
    levels = len(cfg["block_out_channels"])

    def key_of(name: str) -> str:
        return prefix + (ldm_keys.vae_key(name, levels) if ldm_names else name)
    flux_parts._assign(model, key_of, sd, lambda name, file_dtype: dtype, "VAE", setting, path)
    return model


# ================================================================ tokenizers
def load_tokenizers(cache_dir: str | None, need_t5: bool = True):
    """(CLIP-L tokenizer, CLIP-G tokenizer, T5 tokenizer or None): CLIP-L as Flux's; CLIP-G from
    ``<cache_dir>/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k`` when that folder exists, else the built-in CLIP vocabulary
    padded with "!" (id 0, as sd-scripts sets CLIP-G's pad_token_id); T5 as Flux's (cache dir, Hugging Face cache,
    one download), only when T5 is used."""
    clip_l, t5 = flux_parts.load_tokenizers(cache_dir, need_clip=True) if need_t5 else \
        (flux_parts._clip_tokenizer(cache_dir), None)
    return clip_l, _clip_g_tokenizer(cache_dir), t5


def _clip_g_tokenizer(cache_dir: str | None):
    from .tokenizer import clip_tokenizer

    if cache_dir:
        folder = flux_parts.tokenizer_folder(cache_dir, CLIP_G_TOKENIZER_ID)
        if folder.is_dir():
            from transformers import CLIPTokenizer

            try:
                tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
            except Exception as exc:
                raise UserError(f"tokenizer_cache_dir: cannot read the CLIP-G tokenizer in {folder} "
                                f"({flux_parts._reason(exc)}); remove that folder (LoRA Studio has the CLIP "
                                f"vocabulary built in) or put the files of {CLIP_G_TOKENIZER_ID}'s tokenizer there"
                                ) from None
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)  # sd-scripts: pad_token_id = 0 for CLIP-G
            return tokenizer
    return clip_tokenizer(pad_token="!")


# ================================================================ prompts
def _clip_states(clip, tokenizer, captions: list[str], apply_mask: bool, device):
    """(penultimate hidden states (B, 77, width), projected pooled output (B, projection))."""
    tokens = tokenizer(captions, max_length=CLIP_MAX_LENGTH, padding="max_length", truncation=True,
                       return_tensors="pt")
    mask = tokens["attention_mask"].to(device) if apply_mask else None
    out = clip(input_ids=tokens["input_ids"].to(device), attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-2], out.text_embeds


def encode_prompts(clip_l, clip_g, t5, tokenizers, captions: list[str], t5_max_length: int, apply_lg_mask: bool,
                   apply_t5_mask: bool, context_width: int, device) -> dict:
    """The conditioning of ``captions`` as sd-scripts computes it: {"context": (B, 77 + L, context_width) = CLIP-L's
    and CLIP-G's penultimate states side by side, zero-padded to ``context_width``, then T5's last hidden states
    (L = ``t5_max_length``; 77 zero rows without T5); "pooled": (B, L-proj + G-proj) the projected pooled outputs}.
    The masks go into the encoders' attention when asked (``apply_lg_mask`` / ``apply_t5_mask``). Row i depends only
    on caption i (cacheable per caption); gradients follow torch's grad mode."""
    import torch

    clip_l_tok, clip_g_tok, t5_tok = tokenizers
    l_out, l_pooled = _clip_states(clip_l, clip_l_tok, captions, apply_lg_mask, device)
    g_out, g_pooled = _clip_states(clip_g, clip_g_tok, captions, apply_lg_mask, device)
    lg = torch.cat([l_out, g_out.to(l_out.dtype)], dim=-1)
    if lg.shape[-1] > context_width:
        raise UserError(f"clip_l / clip_g: their states are {lg.shape[-1]} wide together, wider than the MMDiT's "
                        f"text input ({context_width}); are these the model's own text encoders?")
    lg = torch.nn.functional.pad(lg, (0, context_width - lg.shape[-1]))
    if t5 is None:
        t5_out = torch.zeros(len(captions), CLIP_MAX_LENGTH, context_width, dtype=lg.dtype, device=lg.device)
    else:
        tokens = t5_tok(captions, max_length=t5_max_length, padding="max_length", truncation=True,
                        return_tensors="pt")
        mask = tokens["attention_mask"].to(device) if apply_t5_mask else None
        t5_out = t5(input_ids=tokens["input_ids"].to(device), attention_mask=mask).last_hidden_state
        if t5_out.shape[-1] != context_width:
            raise UserError(f"t5xxl: its states are {t5_out.shape[-1]} wide, the MMDiT reads {context_width}; is it "
                            "the model's own T5?")
    return {"context": torch.cat([lg, t5_out.to(lg.dtype)], dim=1),
            "pooled": torch.cat([l_pooled, g_pooled.to(l_pooled.dtype)], dim=-1)}
