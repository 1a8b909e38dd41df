"""diffusers and transformers modules built from a single-file (A1111 / LDM-named) checkpoint, offline.

Each component's config starts from the family's shipped defaults and takes every size from the checkpoint's own
tensor shapes; the weights are then looked up by their LDM names (``ldm_keys``).

Memory: a module is built empty (on the meta device) and each of its weights is read from the checkpoint (a
``SafetensorsView`` reads one tensor at a time), put in the dtype the run trains in (``load_dtypes``) and becomes the
module's own tensor: the weights are in memory once, never as the file's copy beside the model's.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Mapping

import torch

from ..errors import UserError
from . import ldm_keys


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


def attention_heads_per_64_channels(block_out_channels: list[int]) -> list[int]:
    """SD2's and SDXL's heads per UNet level: one per 64 channels (320 -> 5, ..., 1280 -> 20)."""
    return [max(1, c // 64) for c in block_out_channels]


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


def te_config_from_clip_names(clip: dict, base: dict) -> dict:
    """A CLIPTextModel config from weights in transformers naming without ``text_model.``."""
    cfg = dict(base)
    cfg["vocab_size"], cfg["hidden_size"] = clip["embeddings.token_embedding.weight"].shape
    cfg["max_position_embeddings"] = clip["embeddings.position_embedding.weight"].shape[0]
    cfg["num_hidden_layers"] = _count(clip, r"encoder\.layers\.(\d+)\.")
    cfg["intermediate_size"] = clip["encoder.layers.0.mlp.fc1.weight"].shape[0]
    cfg["num_attention_heads"] = max(1, cfg["hidden_size"] // 64)
    return cfg


class _Renamed(Mapping):
    """``sd``'s keys under ``prefix``, without the prefix and ``text_model.``; tensors read only when asked for."""

    def __init__(self, sd, prefix: str):
        self._sd = sd
        self._names = {k[len(prefix):].replace("text_model.", "", 1): k for k in sd if k.startswith(prefix)}

    def __getitem__(self, key):
        return self._sd[self._names[key]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


def te_config_from_ldm(sd: dict, prefix: str, base: dict) -> dict:
    """A CLIPTextModel config from an OpenAI CLIP encoder stored under ``prefix`` (with or without ``text_model.``)."""
    return te_config_from_clip_names(_Renamed(sd, prefix), base)


# ---------------------------------------------------------------- state dict transfer
_DTYPES: contextvars.ContextVar[dict] = contextvars.ContextVar("load_dtypes", default={})


@contextlib.contextmanager
def load_dtypes(unet: torch.dtype | None = None, text_encoder: torch.dtype | None = None,
                vae: torch.dtype | None = None):
    """Modules built from a checkpoint inside this block get their weights in these dtypes as they are read (None:
    float32, as the modules are made)."""
    token = _DTYPES.set({"UNet": unet, "text encoder": text_encoder, "VAE": vae})
    try:
        yield
    finally:
        _DTYPES.reset(token)


def wanted_dtype(what: str) -> torch.dtype | None:
    """The dtype ``load_dtypes`` asks for this part ("UNet", "text encoder", "VAE"), or None."""
    return _DTYPES.get().get(what)


def empty(make):
    """``make()`` with its parameters on the meta device (its buffers real): nothing allocated, nothing drawn."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return make()


def _fill(model: torch.nn.Module, lookup, what: str, source: str) -> None:
    """Give every weight of ``model`` (built by ``empty``) its tensor through ``lookup(name, expected_shape)``, in
    the dtype ``load_dtypes`` asks for, on the current default device (the GPU under lowram)."""
    dtype = wanted_dtype(what)
    device = torch.get_default_device()
    state = {}
    missing = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        value = lookup(name, tensor.shape)
        if value is None:
            if name.endswith("position_ids"):
                continue
            missing.append(name)
            continue
        if tuple(value.shape) != tuple(tensor.shape):
            raise UserError(f"{source}: the {what} weight {name} has the shape {tuple(value.shape)}, not "
                            f"{tuple(tensor.shape)}; is this a complete checkpoint of one model?")
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        state[name] = value.to(device=device, dtype=target).contiguous()
    if missing:
        raise UserError(f"{source}: the {what} weights are incomplete ({len(missing)} missing, e.g. {missing[0]}); "
                        "is this a full Stable Diffusion checkpoint?")
    model.load_state_dict(state, strict=False, assign=True)
    left = [n for n, p in model.named_parameters() if p.is_meta] if device.type != "meta" else []
    if left:
        raise UserError(f"{source}: the {what} weights are incomplete (e.g. {left[0]})")


def build_unet(sd: dict, cfg: dict, source: str):
    from diffusers import UNet2DConditionModel

    unet = empty(lambda: UNet2DConditionModel.from_config(cfg))
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]

    def lookup(name, shape):
        return sd.get(ldm_keys.UNET_PREFIX + ldm_keys.unet_key(name, cfg["layers_per_block"], up_attn))
    _fill(unet, lookup, "UNet", source)
    return unet


def build_vae(sd: dict, base: dict, source: str, scaling_factor: float | None = None):
    """The VAE of an LDM state dict (``first_stage_model.`` names); ``scaling_factor`` as the family knows it."""
    from diffusers import AutoencoderKL

    cfg = vae_config_from_ldm(sd, base)
    if scaling_factor is not None:
        cfg["scaling_factor"] = scaling_factor
    vae = empty(lambda: AutoencoderKL.from_config(cfg))
    levels = len(cfg["block_out_channels"])

    def lookup(name, shape):
        value = sd.get(ldm_keys.VAE_PREFIX + ldm_keys.vae_key(name, levels))
        if value is not None and ldm_keys.is_vae_attention_matrix(name) and value.ndim != len(shape):
            value = value.reshape(shape)
        return value
    _fill(vae, lookup, "VAE", source)
    return vae


def build_clip_text_encoder(sd: dict, prefix: str, base: dict, source: str):
    """An OpenAI CLIP text encoder stored under ``prefix`` (SD1's, SDXL's first)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    te = empty(lambda: CLIPTextModel(CLIPTextConfig(**te_config_from_ldm(sd, prefix, base))))

    def lookup(name, shape):
        return sd.get(prefix + ldm_keys.te_key(name), sd.get(prefix + name.replace("text_model.", "", 1)))
    _fill(te, lookup, "text encoder", source)
    return te


def build_openclip_text_encoder(sd: dict, prefix: str, base: dict, source: str, with_projection: bool):
    """An OpenCLIP text encoder as a transformers model: SD2's CLIPTextModel without its last layer (SD2 uses the
    penultimate one), or SDXL's second encoder whole, with its text projection (``with_projection``)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    clip = ldm_keys.openclip_to_clip(sd, prefix, drop_last=not with_projection)
    cfg = te_config_from_clip_names(clip, base)
    if with_projection:
        cfg["projection_dim"] = clip["text_projection.weight"].shape[0]
        te = empty(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg)))
    else:
        te = empty(lambda: CLIPTextModel(CLIPTextConfig(**cfg)))

    def lookup(name, shape):
        return clip.get(name.replace("text_model.", "", 1))
    _fill(te, lookup, "text encoder", source)
    return te
