"""Load a base model from a diffusers folder or a single-file (A1111-style) checkpoint, offline.

Single-file checkpoints need no hub: the component configs start from the family's shipped defaults and take every
size from the checkpoint's own tensor shapes; the tokenizer is built from the CLIP BPE file (models.tokenizer).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import UserError
from . import ldm_keys
from .family import (
    SD1_TEXT_ENCODER,
    SD1_UNET,
    SD1_VAE,
    SD2_TEXT_ENCODER,
    SD2_UNET,
    SD_SCHEDULER,
    Components,
    family_from_checkpoint_keys,
    family_from_diffusers_folder,
    get_family,
    sd2_attention_heads,
    SDXL_TEXT_ENCODER_1,
    SDXL_TEXT_ENCODER_2,
    SDXL_UNET,
    SDXL_VAE_SCALE,
)
from .tokenizer import clip_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


# ---------------------------------------------------------------- config from shapes
def _count(keys, pattern: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def unet_config_from_ldm(sd: dict, base: dict) -> dict:
    p = ldm_keys.UNET_PREFIX
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    cfg = dict(base)
    cfg["in_channels"] = sd[p + "input_blocks.0.0.weight"].shape[1]
    cfg["out_channels"] = sd[p + "out.2.weight"].shape[0]
    n_inputs = _count(keys, r"input_blocks\.(\d+)\.")
    downs = [i for i in range(n_inputs) if f"{p}input_blocks.{i}.0.op.weight" in sd]
    layers = downs[0] - 1 if downs else n_inputs - 1
    levels = len(downs) + 1
    channels, has_attn, depths = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(sd[f"{p}input_blocks.{first}.0.out_layers.3.weight"].shape[0])
        attn = f"{p}input_blocks.{first}.1.proj_in.weight" in sd
        has_attn.append(attn)
        depths.append(_count(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.") if attn else 1)
        if attn:
            context = sd[f"{p}input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
            cfg["cross_attention_dim"] = context
            cfg["use_linear_projection"] = sd[f"{p}input_blocks.{first}.1.proj_in.weight"].ndim == 2
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = layers
    cfg["transformer_layers_per_block"] = depths[-1] if len(set(depths)) == 1 else depths
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    if f"{p}label_emb.0.0.weight" in sd:  # SDXL's added embedding: pooled text + 6 size/crop ids
        cfg["projection_class_embeddings_input_dim"] = sd[f"{p}label_emb.0.0.weight"].shape[1]
    return cfg


def vae_config_from_ldm(sd: dict, base: dict) -> dict:
    p = ldm_keys.VAE_PREFIX
    keys = [k[len(p):] for k in sd if k.startswith(p)]
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    cfg = dict(base)
    cfg["block_out_channels"] = [sd[f"{p}encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    cfg["layers_per_block"] = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    cfg["latent_channels"] = sd[f"{p}encoder.conv_out.weight"].shape[0] // 2
    cfg["in_channels"] = sd[f"{p}encoder.conv_in.weight"].shape[1]
    cfg["out_channels"] = sd[f"{p}decoder.conv_out.weight"].shape[0]
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * levels
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * levels
    return cfg


def te_config_from_ldm(sd: dict, prefix: str, base: dict) -> dict:
    def get(name):
        return sd.get(f"{prefix}text_model.{name}", sd.get(f"{prefix}{name}"))
    tok = get("embeddings.token_embedding.weight")
    keys = [k.replace("text_model.", "", 1) for k in (k[len(prefix):] for k in sd if k.startswith(prefix))]
    cfg = dict(base)
    cfg["vocab_size"], cfg["hidden_size"] = tok.shape
    cfg["max_position_embeddings"] = get("embeddings.position_embedding.weight").shape[0]
    cfg["num_hidden_layers"] = _count(keys, r"encoder\.layers\.(\d+)\.")
    cfg["intermediate_size"] = get("encoder.layers.0.mlp.fc1.weight").shape[0]
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    return cfg


# ---------------------------------------------------------------- state dict transfer
def _fill(model: torch.nn.Module, lookup, what: str, source: str) -> None:
    """Load every weight of ``model`` through ``lookup(name, expected_shape) -> tensor``."""
    state = {}
    missing = []
    for name, tensor in model.state_dict().items():
        value = lookup(name, tensor.shape)
        if value is None:
            if name.endswith("position_ids"):
                continue
            missing.append(name)
            continue
        state[name] = value.to(tensor.dtype)
    if missing:
        raise UserError(f"{source}: the {what} weights are incomplete ({len(missing)} missing, e.g. {missing[0]}); "
                        "is this a full Stable Diffusion checkpoint?")
    model.load_state_dict(state, strict=False)


def _ldm_unet(sd, cfg, source):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(cfg)
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]

    def lookup(name, shape):
        return sd.get(ldm_keys.UNET_PREFIX + ldm_keys.unet_key(name, cfg["layers_per_block"], up_attn))
    _fill(unet, lookup, "UNet", source)
    return unet


def _ldm_vae(sd, cfg, source, prefix=ldm_keys.VAE_PREFIX):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(cfg)
    levels = len(cfg["block_out_channels"])

    def lookup(name, shape):
        value = sd.get(prefix + ldm_keys.vae_key(name, levels))
        if value is not None and ldm_keys.is_vae_attention_matrix(name) and value.ndim != len(shape):
            value = value.reshape(shape)
        return value
    _fill(vae, lookup, "VAE", source)
    return vae


def te_config_from_clip_names(clip: dict, base: dict) -> dict:
    """A CLIPTextModel config from weights already in transformers naming (no ``text_model.``)."""
    cfg = dict(base)
    cfg["vocab_size"], cfg["hidden_size"] = clip["embeddings.token_embedding.weight"].shape
    cfg["max_position_embeddings"] = clip["embeddings.position_embedding.weight"].shape[0]
    cfg["num_hidden_layers"] = _count(clip, r"encoder\.layers\.(\d+)\.")
    cfg["intermediate_size"] = clip["encoder.layers.0.mlp.fc1.weight"].shape[0]
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    return cfg


def _openclip_text_encoder(sd, source, sdxl: bool = False):
    """An OpenCLIP text encoder as a transformers model: SD2's CLIPTextModel without its last layer (SD2 uses the
    penultimate one), or SDXL's second encoder whole, with its text projection (CLIPTextModelWithProjection)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if sdxl:
        clip = ldm_keys.openclip_to_clip(sd, ldm_keys.SDXL_TE2_PREFIX, drop_last=False)
        cfg = te_config_from_clip_names(clip, SDXL_TEXT_ENCODER_2)
        cfg["projection_dim"] = clip["text_projection.weight"].shape[0]
        te = CLIPTextModelWithProjection(CLIPTextConfig(**cfg))
    else:
        clip = ldm_keys.openclip_to_clip(sd)
        te = CLIPTextModel(CLIPTextConfig(**te_config_from_clip_names(clip, SD2_TEXT_ENCODER)))

    def lookup(name, shape):
        return clip.get(name.replace("text_model.", "", 1))
    _fill(te, lookup, "text encoder", source)
    return te


def _ldm_text_encoder(sd, cfg, source, prefix=ldm_keys.TE_PREFIX):
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig(**cfg))

    def lookup(name, shape):
        full = prefix + ldm_keys.te_key(name)
        return sd.get(full, sd.get(prefix + name.replace("text_model.", "", 1)))
    _fill(te, lookup, "text encoder", source)
    return te


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:
        raise UserError(f"{what}: cannot read {path} as a .safetensors file ({exc.__class__.__name__}: {exc})") from None


def is_pickle_file(path: Path) -> bool:
    return path.suffix.lower() in PICKLE_SUFFIXES


def read_pickle_weights(path: Path, setting: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Tensors of a .ckpt/.pt/.bin file, only with ``allow_pickle`` and only as plain data (``weights_only=True``:
    a file that holds code is refused, never run)."""
    if not allow_pickle:
        raise UserError(f"{setting}: {path.name} is a pickle file ({path.suffix}), which can run code when opened. "
                        "Use a .safetensors version of the model, or set allow_pickle = true if you trust this file "
                        "(it is then read as plain data only).")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{setting}: {path.name} was refused: it is not plain tensor data "
                        f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise UserError(f"{setting}: {path.name} holds no state dict of weights")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def load_single_file(path: Path, v2: bool, allow_pickle: bool = False) -> Components:
    setting = "pretrained_model_name_or_path"
    if is_pickle_file(path):
        sd = read_pickle_weights(path, setting, allow_pickle)
        keys = list(sd)
    else:
        try:
            with safe_open(str(path), "pt") as fh:
                keys = list(fh.keys())
        except Exception as exc:
            raise UserError(f"{setting}: cannot read {path} as a .safetensors file "
                            f"({exc}); is the download complete?") from None
        sd = None
    family = get_family(family_from_checkpoint_keys(keys), str(path), v2)
    if sd is None:
        sd = read_safetensors(path, setting)
    try:
        return _components_from_ldm(sd, family, path)
    except KeyError as exc:
        raise UserError(f"{setting}: {path} is an incomplete {family.name.upper()} checkpoint "
                        f"(no {exc.args[0]}); is the download complete?") from None


def _components_from_ldm(sd: dict, family, path: Path) -> Components:
    vae = _ldm_vae(sd, vae_config_from_ldm(sd, SD1_VAE), str(path))
    tokenizers = [clip_tokenizer(pad_token=family.tokenizer_pad)]
    if family.name == "sdxl":
        vae.register_to_config(scaling_factor=SDXL_VAE_SCALE)
        unet_cfg = unet_config_from_ldm(sd, SDXL_UNET)
        unet_cfg["attention_head_dim"] = sd2_attention_heads(unet_cfg["block_out_channels"])
        te1_prefix = ldm_keys.SDXL_TE1_PREFIX
        te1 = _ldm_text_encoder(sd, te_config_from_ldm(sd, te1_prefix, SDXL_TEXT_ENCODER_1), str(path), te1_prefix)
        te2 = _openclip_text_encoder(sd, str(path), sdxl=True)
        unet_cfg["addition_time_embed_dim"] = (unet_cfg["projection_class_embeddings_input_dim"]
                                               - te2.config.projection_dim) // 6
        unet = _ldm_unet(sd, unet_cfg, str(path))
        del sd
        tokenizers.append(clip_tokenizer(pad_token="!"))
        return Components(family, unet, vae, [te1, te2], tokenizers, dict(SD_SCHEDULER), str(path))
    if family.name == "sd2":
        unet_cfg = unet_config_from_ldm(sd, SD2_UNET)
        unet_cfg["attention_head_dim"] = sd2_attention_heads(unet_cfg["block_out_channels"])
        te = _openclip_text_encoder(sd, str(path))
    else:
        unet_cfg = unet_config_from_ldm(sd, SD1_UNET)
        te = _ldm_text_encoder(sd, te_config_from_ldm(sd, ldm_keys.TE_PREFIX, SD1_TEXT_ENCODER), str(path))
    unet = _ldm_unet(sd, unet_cfg, str(path))
    del sd
    return Components(family, unet, vae, [te], tokenizers, dict(SD_SCHEDULER), str(path))


def load_diffusers_folder(path: Path, v2: bool) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    index_file = path / "model_index.json"
    unet_cfg_file = path / "unet" / "config.json"
    if not unet_cfg_file.is_file():
        raise UserError(f"pretrained_model_name_or_path: {path} is not a diffusers model folder "
                        "(no unet/config.json). Give a .safetensors checkpoint or a diffusers folder.")
    model_index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    family = get_family(family_from_diffusers_folder(model_index, json.loads(unet_cfg_file.read_text())),
                        str(path), v2)
    opts = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **opts)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **opts)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **opts)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **opts) if (path / "tokenizer").is_dir() \
        else clip_tokenizer(pad_token=family.tokenizer_pad)
    text_encoders, tokenizers = [te], [tokenizer]
    if family.name == "sdxl":
        from transformers import CLIPTextModelWithProjection

        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **opts))
        tokenizers.append(CLIPTokenizer.from_pretrained(path / "tokenizer_2", **opts)
                          if (path / "tokenizer_2").is_dir() else clip_tokenizer(pad_token="!"))
    sched_file = path / "scheduler" / "scheduler_config.json"
    sched = dict(SD_SCHEDULER)
    if sched_file.is_file():
        loaded = json.loads(sched_file.read_text())
        sched.update({k: v for k, v in loaded.items() if k in SD_SCHEDULER})
    return Components(family, unet, vae, text_encoders, tokenizers, sched, str(path))


def load_vae(path: Path, allow_pickle: bool = False) -> torch.nn.Module:
    """A VAE from a diffusers folder (with or without vae/), or a .safetensors file in LDM or diffusers naming."""
    from diffusers import AutoencoderKL

    if path.is_dir():
        sub = "vae" if (path / "vae" / "config.json").is_file() else None
        return AutoencoderKL.from_pretrained(path, subfolder=sub, local_files_only=True)
    sd = read_pickle_weights(path, "vae", allow_pickle) if is_pickle_file(path) else read_safetensors(path, "vae")
    if any(k.startswith(ldm_keys.VAE_PREFIX) for k in sd):
        prefix = ldm_keys.VAE_PREFIX
    elif "encoder.down.0.block.0.conv1.weight" in sd:
        prefix = ""
    else:  # diffusers naming
        vae = AutoencoderKL.from_config(dict(SD1_VAE))
        vae.load_state_dict(sd)
        return vae
    ldm = {ldm_keys.VAE_PREFIX + k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return _ldm_vae(ldm, vae_config_from_ldm(ldm, SD1_VAE), str(path))


def load_components(model_path: str, vae_path: str | None, v2: bool, allow_pickle: bool = False) -> Components:
    path = Path(model_path).expanduser()
    if not path.exists():
        raise UserError(f"pretrained_model_name_or_path: not found: {path}. Give a local .safetensors checkpoint or "
                        "a diffusers folder (LoRA Studio never downloads models while training).")
    components = load_diffusers_folder(path, v2) if path.is_dir() else load_single_file(path, v2, allow_pickle)
    if vae_path:
        vpath = Path(vae_path).expanduser()
        if not vpath.exists():
            raise UserError(f"vae: not found: {vpath}")
        components.vae = load_vae(vpath, allow_pickle)
        components.info["vae"] = str(vpath)
    for module in [components.unet, components.vae, *components.text_encoders]:
        module.requires_grad_(False)
        module.eval()
    return components
