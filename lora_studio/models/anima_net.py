"""The Anima denoiser (Cosmos-Predict2 MiniTrainDIT with circlestone-labs' LLM adapter) in plain torch.

``AnimaTransformer(config).state_dict()`` has exactly the key names of ``anima-base-v1.0.safetensors`` once its
``net.`` prefix is taken off (as sd-scripts' ``library/anima_models.Anima`` names them): ``x_embedder.proj.1``,
``t_embedder.1.linear_1``, ``t_embedding_norm``, ``blocks.N.self_attn.q_proj`` / ``k_proj`` / ``v_proj`` /
``output_proj`` (and their ``q_norm`` / ``k_norm``), ``blocks.N.cross_attn.*``, ``blocks.N.mlp.layer1`` / ``layer2``,
``blocks.N.adaln_modulation_{self_attn,cross_attn,mlp}.{1,2}``, ``final_layer.*`` and ``llm_adapter.*``. So a file
loads tensor by tensor and LoRA names come from module paths (``lora_unet_blocks_0_self_attn_q_proj``). The 3-D RoPE
tables are computed on the fly (sd-scripts keeps them as buffers the file does not hold).

What the model does (sd-scripts' ``Anima.forward``):
- text: the LLM adapter embeds the caption's T5 ids (the old 32,128-token vocabulary, no T5 model), runs 6 blocks of
  self-attention (T5 mask), cross-attention to Qwen3's hidden states (Qwen3 mask) and an MLP, and projects the result
  to the 1024-wide cross-attention context; T5 padding positions are zeroed.
- image: latents (B, 16, T, H, W) get a padding-mask channel (``concat_padding_mask``: the mask resized to the latent
  size, nearest), are cut into 1 x 2 x 2 patches and projected to 2048; 3-D RoPE over (t, h, w) with the h / w
  frequencies NTK-extrapolated by 4.
- time: the model gets sigma in [0, 1] (B,); its sinusoid (cos | sin, 2048 wide) goes through ``t_embedder`` to the
  AdaLN-LoRA vector (3 x 2048, added to every block's modulation) and through ``t_embedding_norm`` to the modulation
  input.
- 28 blocks: AdaLN-modulated self-attention, cross-attention (no mask) and GELU MLP, each gated; the final layer
  modulates, projects to 2 x 2 x 16 per patch and unpatchifies to (B, 16, T, H, W).

Pure model code: imported from inside functions only (it imports torch at import time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .transformer_base import CheckpointedTransformer, last_blocks

CHECKPOINT_PREFIXES = ("net.", "model.diffusion_model.")  # the official file's and ComfyUI's all-in-one prefix


@dataclass(frozen=True)
class AdapterConfig:
    """Sizes of the LLM adapter (sd-scripts' ``LLMAdapter(source_dim=1024, target_dim=1024, model_dim=1024,
    num_layers=6, self_attn=True)``, 16 heads, the 32,128-token T5 vocabulary)."""

    source_dim: int = 1024  # Qwen3-0.6B's hidden width
    target_dim: int = 1024  # the T5-id embedding width = the DiT's cross-attention width
    model_dim: int = 1024
    num_layers: int = 6
    num_heads: int = 16
    vocab_size: int = 32128
    mlp_ratio: float = 4.0
    self_attn: bool = True

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads


@dataclass(frozen=True)
class AnimaConfig:
    """Sizes of an Anima DiT (the fixed config of sd-scripts' ``anima_utils.load_anima_model``)."""

    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    crossattn_emb_channels: int = 1024
    in_channels: int = 16
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    concat_padding_mask: bool = True
    adaln_lora_dim: int = 256  # use_adaln_lora: every modulation is silu -> Linear(D, 256) -> Linear(256, n x D)
    rope_h_extrapolation: float = 4.0
    rope_w_extrapolation: float = 4.0
    rope_t_extrapolation: float = 1.0
    max_patches_hw: int = 256  # max_img_h / patch = 512 / 2: positions up to 4096 px
    max_patches_t: int = 128
    adapter: AdapterConfig | None = field(default_factory=AdapterConfig)

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def patch_in_features(self) -> int:
        channels = self.in_channels + (1 if self.concat_padding_mask else 0)
        return channels * self.patch_spatial ** 2 * self.patch_temporal

    @property
    def patch_out_features(self) -> int:
        return self.patch_spatial ** 2 * self.patch_temporal * self.out_channels


ANIMA = AnimaConfig()  # the released Anima (preview 1-3, base v1.0): 28 blocks of 2048, 16 heads
# A tiny Anima with the real topology (2 blocks of 32, 2 heads of 16, a 1-layer adapter) for tests and the bench.
TINY_ANIMA = AnimaConfig(model_channels=32, num_blocks=2, num_heads=2, crossattn_emb_channels=32, adaln_lora_dim=8,
                         adapter=AdapterConfig(source_dim=32, target_dim=32, model_dim=32, num_layers=1, num_heads=2,
                                               vocab_size=128))


# ---------------------------------------------------------------- math

def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The DiT's RMSNorm: normalised in float32, back to x's dtype, then times the weight."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def timestep_features(sigmas: Tensor, width: int) -> Tensor:
    """(B,) sigma -> (B, 1, width) float32 [cos | sin] of sigma x 10000^(-i / (width/2)) (Cosmos' Timesteps: the
    model takes sigma itself, not sigma x 1000)."""
    half = width // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=sigmas.device) / half)
    args = sigmas.float().reshape(-1, 1)[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) widths of a head in Cosmos' 3-D RoPE: h = w = head_dim // 6 * 2, t the rest (44, 42, 42 for 128)."""
    spatial = head_dim // 6 * 2
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(config: AnimaConfig, t: int, h: int, w: int, device) -> Tensor:
    """(T*H*W, head_dim) float32 angles of VideoRopePosition3DEmb for a t x h x w patch grid: per axis the positions
    times theta'^(-2i/width), theta' = 10000 x ratio^(width / (width - 2)) (NTK extrapolation), laid out [t | h | w]
    and repeated twice (the rotation pairs element i with element i + head_dim / 2)."""
    if h > config.max_patches_hw or w > config.max_patches_hw or t > config.max_patches_t:
        raise ValueError(f"a {t} x {h} x {w} patch grid is larger than Anima's RoPE table "
                         f"({config.max_patches_t} x {config.max_patches_hw} x {config.max_patches_hw})")
    dim_t, dim_h, dim_w = rope_split(config.head_dim)
    parts = []
    for count, width, ratio in ((t, dim_t, config.rope_t_extrapolation), (h, dim_h, config.rope_h_extrapolation),
                                (w, dim_w, config.rope_w_extrapolation)):
        theta = 10000.0 * ratio ** (width / (width - 2))
        exponents = torch.arange(0, width, 2, dtype=torch.float32, device=device)[:width // 2] / width
        parts.append(torch.outer(torch.arange(count, dtype=torch.float32, device=device), 1.0 / theta ** exponents))
    at, ah, aw = parts
    grid = torch.cat([at[:, None, None].expand(t, h, w, -1), ah[None, :, None].expand(t, h, w, -1),
                      aw[None, None, :].expand(t, h, w, -1)], dim=-1).reshape(t * h * w, -1)
    return torch.cat([grid, grid], dim=-1)


def rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate (x_i, x_{i + d/2}) pairs of (B, L, H, D) by angles (L, D) (half-split RoPE), in float32."""
    x32 = x.float()
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]
    first, second = x32.chunk(2, dim=-1)
    return (x32 * cos + torch.cat([-second, first], dim=-1) * sin).type_as(x)


def resize_nearest(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """torchvision's ``resize(mask, size, InterpolationMode.NEAREST)`` of a (B, 1, H, W) tensor (what sd-scripts
    calls; the venv has no torchvision): torch's "nearest" interpolation, the same index rule."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="nearest")


# ---------------------------------------------------------------- DiT layers (sd-scripts' names)

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    """q/k/v/output projections without bias, RMSNorm on q and k per head; RoPE on self-attention only."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.k_norm = RMSNorm(head_dim)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.output_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor | None = None, angles: Tensor | None = None) -> Tensor:
        source = x if context is None else context
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.num_heads, -1)))
        k = self.k_norm(self.k_proj(source).unflatten(-1, (self.num_heads, -1)))
        v = self.v_proj(source).unflatten(-1, (self.num_heads, -1))
        if context is None and angles is not None:
            q, k = rotate(q, angles), rotate(k, angles)
        out = F.scaled_dot_product_attention(q.transpose(1, 2).to(v.dtype), k.transpose(1, 2).to(v.dtype),
                                             v.transpose(1, 2))
        return self.output_proj(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """GPT-2 style MLP: layer1, exact GELU, layer2, no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(F.gelu(self.layer1(x)))


def _modulation(dim: int, lora_dim: int, chunks: int) -> nn.Sequential:
    """AdaLN(-LoRA) projection: silu -> Linear(D, lora_dim) -> Linear(lora_dim, chunks x D) (one Linear without it)."""
    if lora_dim:
        return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, chunks * dim,
                                                                                         bias=False))
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim, bias=False))


def _layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)  # elementwise_affine=False: nothing in the state dict


class Block(nn.Module):
    """Self-attention, cross-attention and MLP on (B, L, D) tokens, each x = x + gate * f(norm(x) (1 + scale) +
    shift) with (shift, scale, gate) = modulation(emb) + adaln_lora."""

    def __init__(self, config: AnimaConfig):
        super().__init__()
        dim = config.model_channels
        self.self_attn = Attention(dim, dim, config.num_heads)
        self.cross_attn = Attention(dim, config.crossattn_emb_channels, config.num_heads)
        self.mlp = FeedForward(dim, int(dim * config.mlp_ratio))
        self.adaln_modulation_self_attn = _modulation(dim, config.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _modulation(dim, config.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _modulation(dim, config.adaln_lora_dim, 3)

    def forward(self, x: Tensor, emb: Tensor, adaln_lora: Tensor | None, context: Tensor, angles: Tensor) -> Tensor:
        def mods(layer):
            out = layer(emb) if adaln_lora is None else layer(emb) + adaln_lora
            return out.chunk(3, dim=-1)  # each (B, 1, D): one frame's vector broadcast over its tokens

        shift, scale, gate = mods(self.adaln_modulation_self_attn)
        x = x + gate * self.self_attn(_layer_norm(x) * (1 + scale) + shift, angles=angles)
        shift, scale, gate = mods(self.adaln_modulation_cross_attn)
        x = x + gate * self.cross_attn(_layer_norm(x) * (1 + scale) + shift, context=context)
        shift, scale, gate = mods(self.adaln_modulation_mlp)
        return x + gate * self.mlp(_layer_norm(x) * (1 + scale) + shift)


class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T, H/p, W/p, D): each patch's features ordered channel, time, row, column."""

    def __init__(self, config: AnimaConfig):
        super().__init__()
        self.p, self.pt = config.patch_spatial, config.patch_temporal
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(config.patch_in_features, config.model_channels,
                                                           bias=False))

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        p, pt = self.p, self.pt
        if h % p or w % p or t % pt:
            raise ValueError(f"latent {t} x {h} x {w} is not a multiple of the patch {pt} x {p} x {p}")
        x = x.reshape(b, c, t // pt, pt, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return self.proj(x.reshape(b, t // pt, h // p, w // p, -1))


class TimestepEmbedding(nn.Module):
    """linear_1 -> silu -> linear_2: the AdaLN-LoRA vector (3 x D) from the timestep sinusoid."""

    def __init__(self, config: AnimaConfig):
        super().__init__()
        dim, lora = config.model_channels, bool(config.adaln_lora_dim)
        self.linear_1 = nn.Linear(dim, dim, bias=not lora)
        self.linear_2 = nn.Linear(dim, 3 * dim if lora else dim, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class FinalLayer(nn.Module):
    def __init__(self, config: AnimaConfig):
        super().__init__()
        self.dim = config.model_channels
        self.linear = nn.Linear(self.dim, config.patch_out_features, bias=False)
        self.adaln_modulation = _modulation(self.dim, config.adaln_lora_dim, 2)

    def forward(self, x: Tensor, emb: Tensor, adaln_lora: Tensor | None) -> Tensor:
        mods = self.adaln_modulation(emb)
        if adaln_lora is not None:
            mods = mods + adaln_lora[..., :2 * self.dim]
        shift, scale = mods.chunk(2, dim=-1)
        return self.linear(_layer_norm(x) * (1 + scale) + shift)


# ---------------------------------------------------------------- the LLM adapter (sd-scripts' names)

def _t5_rms(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """The adapter's T5-style RMSNorm: the variance in float32; cast to the weight's dtype when that is half."""
    out = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        out = out.to(weight.dtype)
    return weight * out


class AdapterNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return _t5_rms(x, self.weight)


def _rotate_half(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class AdapterAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, head_dim = num_heads, dim // num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = AdapterNorm(head_dim)
        self.k_proj = nn.Linear(context_dim, dim, bias=False)
        self.k_norm = AdapterNorm(head_dim)
        self.v_proj = nn.Linear(context_dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, rope_q, rope_k) -> Tensor:
        q = self.q_norm(self.q_proj(x).unflatten(-1, (self.num_heads, -1))).transpose(1, 2)
        k = self.k_norm(self.k_proj(context).unflatten(-1, (self.num_heads, -1))).transpose(1, 2)
        v = self.v_proj(context).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        q, k = _rotate_half(q, *rope_q), _rotate_half(k, *rope_k)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class AdapterBlock(nn.Module):
    def __init__(self, config: AdapterConfig):
        super().__init__()
        dim = config.model_dim
        if config.self_attn:
            self.norm_self_attn = AdapterNorm(dim)
            self.self_attn = AdapterAttention(dim, dim, config.num_heads)
        self.norm_cross_attn = AdapterNorm(dim)
        self.cross_attn = AdapterAttention(dim, config.source_dim, config.num_heads)
        self.norm_mlp = AdapterNorm(dim)
        hidden = int(dim * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, context, target_mask, source_mask, rope_target, rope_source):
        if hasattr(self, "self_attn"):
            normed = self.norm_self_attn(x)
            x = x + self.self_attn(normed, normed, target_mask, rope_target, rope_target)
        x = x + self.cross_attn(self.norm_cross_attn(x), context, source_mask, rope_target, rope_source)
        return x + self.mlp(self.norm_mlp(x))


class LLMAdapter(nn.Module):
    """Qwen3 hidden states (source) -> the DiT's cross-attention context, queried by the caption's T5 ids."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.target_dim)
        if config.model_dim != config.target_dim:
            self.in_proj = nn.Linear(config.target_dim, config.model_dim)
        self.blocks = nn.ModuleList(AdapterBlock(config) for _ in range(config.num_layers))
        self.out_proj = nn.Linear(config.model_dim, config.target_dim)
        self.norm = AdapterNorm(config.target_dim)

    def _rope(self, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """HF-style RoPE (theta 10000) cos / sin for positions 0..length-1, in like's dtype: (1, 1, L, head_dim)."""
        hd = self.config.head_dim
        inv = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float32, device=like.device) / hd)
        freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=like.device), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(like.dtype)[None, None], emb.sin().to(like.dtype)[None, None]

    def forward(self, source: Tensor, target_ids: Tensor, target_mask: Tensor | None = None,
                source_mask: Tensor | None = None) -> Tensor:
        x = self.embed(target_ids)
        if hasattr(self, "in_proj"):
            x = self.in_proj(x)
        t_mask = target_mask.bool()[:, None, None, :] if target_mask is not None else None
        s_mask = source_mask.bool()[:, None, None, :] if source_mask is not None else None
        rope_t, rope_s = self._rope(x.shape[1], x), self._rope(source.shape[1], x)
        for block in self.blocks:
            x = block(x, source, t_mask, s_mask, rope_t, rope_s)
        return self.norm(self.out_proj(x))


# ---------------------------------------------------------------- the model

class AnimaTransformer(CheckpointedTransformer):
    """The Anima DiT: ``forward`` takes 5-D latents and sigma and returns the velocity prediction (B, C, T, H, W)."""

    def __init__(self, config: AnimaConfig):
        super().__init__()
        if config.model_channels % config.num_heads or rope_split(config.head_dim)[1] < 4:
            raise ValueError(f"{config.model_channels} channels / {config.num_heads} heads does not fit Anima's RoPE "
                             "(a head needs at least 12 channels)")
        self.config = config
        self.x_embedder = PatchEmbed(config)
        self.t_embedder = nn.Sequential(nn.Identity(), TimestepEmbedding(config))
        if config.adapter is not None:
            self.llm_adapter = LLMAdapter(config.adapter)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_blocks))
        self.final_layer = FinalLayer(config)
        self.t_embedding_norm = RMSNorm(config.model_channels)

    # ---- training switches
    def swap_plan(self, count: int) -> list[tuple[nn.ModuleList, int]]:
        """sd-scripts' --blocks_to_swap N for Anima: the last N of the blocks (at most all but 2: 26 of 28)."""
        return last_blocks(self.blocks, count, "Anima")

    # ---- forward
    def text_context(self, qwen3: Tensor, qwen3_mask: Tensor | None, t5_ids: Tensor | None,
                     t5_mask: Tensor | None) -> Tensor:
        """The cross-attention context: the LLM adapter's output with the T5 padding positions zeroed (without T5
        ids, or without an adapter: the Qwen3 states as they are)."""
        if t5_ids is None or not hasattr(self, "llm_adapter"):
            return qwen3
        dtype = self.llm_adapter.out_proj.weight.dtype
        context = self.llm_adapter(qwen3.to(dtype), t5_ids.long(), t5_mask, qwen3_mask)
        if t5_mask is not None:
            context = context.masked_fill(~t5_mask.bool().to(context.device)[..., None], 0.0)
        return context

    def forward(self, x: Tensor, sigmas: Tensor, context: Tensor, padding_mask: Tensor | None = None,
                t5_ids: Tensor | None = None, t5_mask: Tensor | None = None,
                qwen3_mask: Tensor | None = None) -> Tensor:
        """x (B, C, T, H, W) noisy latents; sigmas (B,) in [0, 1]; context (B, S, 1024): Qwen3's hidden states
        (with ``t5_ids`` / ``t5_mask`` / ``qwen3_mask`` they go through the LLM adapter) or a ready context;
        padding_mask (B, 1, H', W') (zeros: no padding; resized to the latent size). Returns (B, C, T, H, W)."""
        if x.ndim != 5:
            raise ValueError("Anima takes 5-D latents (batch, channels, frames, height, width)")
        config = self.config
        dtype = self.x_embedder.proj[1].weight.dtype
        dtype = dtype if dtype.is_floating_point and dtype.itemsize > 1 else x.dtype
        context = self.text_context(context, qwen3_mask, t5_ids, t5_mask).to(dtype)
        b, _, t, h, w = x.shape
        if config.concat_padding_mask:
            if padding_mask is None:
                padding_mask = x.new_zeros(b, 1, h, w)
            mask = resize_nearest(padding_mask.to(x.dtype), (h, w))
            x = torch.cat([x, mask[:, :, None].expand(b, 1, t, h, w)], dim=1)
        tokens = self.x_embedder(x.to(dtype))
        _, tt, hh, ww, dim = tokens.shape
        tokens = tokens.reshape(b, tt * hh * ww, dim)
        angles = rope_angles(config, tt, hh, ww, tokens.device)
        features = timestep_features(sigmas.to(tokens.device), config.model_channels).to(dtype)
        if config.adaln_lora_dim:  # AdaLN-LoRA: the sinusoid is the modulation input, t_embedder's output the LoRA
            adaln_lora, emb = self.t_embedder(features), self.t_embedding_norm(features)
        else:
            adaln_lora, emb = None, self.t_embedding_norm(self.t_embedder(features))
        for block in self.blocks:
            tokens = self.run_block(block, angles.device, tokens, emb, adaln_lora, context, angles)
        out = self.final_layer(tokens.to(emb.device), emb, adaln_lora)
        p, pt, c = config.patch_spatial, config.patch_temporal, config.out_channels
        out = out.reshape(b, tt, hh, ww, p, p, pt, c).permute(0, 7, 1, 6, 2, 4, 3, 5)
        return out.reshape(b, c, tt * pt, hh * p, ww * p)



# ---------------------------------------------------------------- reading a checkpoint's sizes

def strip_prefix(key: str) -> str:
    for prefix in CHECKPOINT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _count(shapes: Mapping[str, tuple], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := regex.match(k))}
    if found != set(range(len(found))):
        raise UserError(f"the blocks are numbered with gaps ({sorted(found)}): this checkpoint cannot be read")
    return len(found)


def adapter_config_from_shapes(shapes: Mapping[str, tuple], prefix: str = "llm_adapter.") -> AdapterConfig | None:
    """The LLM adapter's sizes from tensor shapes under ``prefix`` (None when there is no adapter)."""
    names = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if "embed.weight" not in names:
        return None
    vocab, target = names["embed.weight"]
    model_dim = names.get("in_proj.weight", (target,))[0]
    head_dim = names["blocks.0.cross_attn.q_norm.weight"][0]
    return AdapterConfig(source_dim=names["blocks.0.cross_attn.k_proj.weight"][1], target_dim=target,
                         model_dim=model_dim, num_layers=_count(names, r"blocks\.(\d+)\."),
                         num_heads=model_dim // head_dim, vocab_size=vocab,
                         mlp_ratio=names["blocks.0.mlp.0.weight"][0] / model_dim,
                         self_attn="blocks.0.self_attn.q_proj.weight" in names)


def config_from_shapes(keys_and_shapes: Mapping[str, tuple], adapter: AdapterConfig | None = None) -> AnimaConfig:
    """An Anima DiT's config from its key names and shapes (a safetensors header is enough), prefixes ``net.`` /
    ``model.diffusion_model.`` taken off: width from x_embedder, heads from the q-norm width, the block count from the
    keys, the AdaLN-LoRA width from the modulations, patch and padding-mask channel from the patch projections (16
    latent channels), the LLM adapter's sizes from its weights (``adapter`` when it comes from another file). The
    RoPE extrapolation (4, 4, 1) is not in the shapes: sd-scripts fixes it, so do we."""
    shapes = {strip_prefix(k): tuple(getattr(v, "shape", v)) for k, v in keys_and_shapes.items()}
    if "x_embedder.proj.1.weight" not in shapes or "blocks.0.self_attn.q_proj.weight" not in shapes:
        raise UserError("this is not an Anima DiT (no x_embedder.proj.1 / blocks.0.self_attn.q_proj weights)")
    dim, in_features = shapes["x_embedder.proj.1.weight"]
    out_rows = shapes["final_layer.linear.weight"][0]
    latent = ANIMA.out_channels
    patch = int(round(math.sqrt(out_rows / latent)))
    if patch * patch * latent != out_rows:
        raise UserError(f"the final layer has {out_rows} outputs, not 16 latent channels x a square patch")
    channels = in_features // (patch * patch)
    lora = shapes.get("blocks.0.adaln_modulation_self_attn.1.weight")
    lora_dim = lora[0] if lora is not None and "blocks.0.adaln_modulation_self_attn.2.weight" in shapes else 0
    head_dim = shapes["blocks.0.self_attn.q_norm.weight"][0]
    if adapter is None:
        adapter = adapter_config_from_shapes(shapes)
    return replace(ANIMA, model_channels=dim, num_blocks=_count(shapes, r"blocks\.(\d+)\."), num_heads=dim // head_dim,
                   mlp_ratio=shapes["blocks.0.mlp.layer1.weight"][0] / dim,
                   crossattn_emb_channels=shapes["blocks.0.cross_attn.k_proj.weight"][1], in_channels=latent,
                   out_channels=latent, patch_spatial=patch, concat_padding_mask=channels == latent + 1,
                   adaln_lora_dim=lora_dim, adapter=adapter)


# ---------------------------------------------------------------- the Qwen-Image VAE as the engine uses it

def _chunked_conv_forward(conv, chunk: int):
    """A forward for a Conv2d / Conv3d that computes its output in bands of ``chunk`` rows (the height axis), each
    from the input rows it reads: exact, with a smaller peak (sd-scripts' spatial chunking). The Qwen-Image VAE's
    causal Conv3d pads in its own forward; the band split runs on the padded input."""
    original = conv.forward
    is3d = conv.weight.dim() == 5
    axis = 3 if is3d else 2
    kernel, stride = conv.kernel_size[axis - 2], conv.stride[axis - 2]

    conv_nd = F.conv3d if is3d else F.conv2d

    def conv_rows(x):
        return conv_nd(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    def run(x):
        if kernel <= 1 or x.shape[axis] <= chunk + kernel:
            return conv_rows(x)
        out_rows = (x.shape[axis] - kernel) // stride + 1
        bands = []
        for start in range(0, out_rows, chunk):
            end = min(start + chunk, out_rows)
            bands.append(conv_rows(x.narrow(axis, start * stride, (end - start - 1) * stride + kernel)))
        return torch.cat(bands, dim=axis)

    def forward(x, cache_x=None):
        if is3d:
            padding = list(conv._padding)
            if cache_x is not None and conv._padding[4] > 0:
                x = torch.cat([cache_x.to(x.device), x], dim=2)
                padding[4] -= cache_x.shape[2]
            return run(F.pad(x, padding))
        if any(conv.padding):
            pad_h, pad_w = conv.padding
            return run(F.pad(x, (pad_w, pad_w, pad_h, pad_h)))
        return run(x)

    forward.original = original
    return forward


class AnimaVAE(nn.Module):
    """The Qwen-Image VAE as the engine uses a VAE, with Anima's latent normalisation inside: ``encode(pixels)``
    ([B, 3, H, W] in [-1, 1]) gives ``.latent_dist.sample()`` = the posterior's mode (as sd-scripts'
    encode_pixels_to_latents; deterministic, so the generator is not drawn from) normalised per channel, [B, 16, H/8,
    W/8]; ``decode(latents)`` undoes it and returns ``.sample`` [B, 3, H, W]. ``vae_scale_and_shift`` is then (1, 0)."""

    def __init__(self, model, chunk_size: int | None = None, disable_cache: bool = False):
        super().__init__()
        self.model = model
        self.config = model.config
        self.disable_cache = disable_cache
        self.chunk_size = None
        mean, std = self.config.latents_mean, self.config.latents_std
        self.register_buffer("latents_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("latents_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)
        if chunk_size:
            self.enable_chunking(chunk_size)

    def enable_chunking(self, chunk_size: int) -> None:
        """sd-scripts' vae_chunk_size: an odd size is raised to the next even one, as sd-scripts does."""
        chunk = int(chunk_size) + (int(chunk_size) % 2)
        self.chunk_size = chunk
        for module in self.model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                module.forward = _chunked_conv_forward(module, chunk)

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _run(self, part: str, x):
        """encoder / decoder on one frame, with the feature cache (diffusers' path) or without it."""
        m = self.model
        if part == "encoder":
            if self.disable_cache:
                return m.quant_conv(m.encoder(x))
            return m._encode(x)
        if self.disable_cache:
            return m.decoder(m.post_quant_conv(x)).clamp(-1.0, 1.0)
        return m._decode(x).sample

    def encode(self, pixels):
        from types import SimpleNamespace

        with torch.no_grad():
            h = self._run("encoder", pixels.to(self.dtype).unsqueeze(2))
        mode = h[:, :h.shape[1] // 2, 0].float()
        latents = (mode - self.latents_mean.to(mode.device)) / self.latents_std.to(mode.device)
        return SimpleNamespace(latent_dist=_Fixed(latents))

    def decode(self, latents):
        from types import SimpleNamespace

        import torch

        z = latents.float() * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)
        with torch.no_grad():
            out = self._run("decoder", z.to(self.dtype).unsqueeze(2))
        return SimpleNamespace(sample=out[:, :, 0])


class _Fixed:
    """A posterior whose sample is its mode (sd-scripts encodes Anima latents with ``posterior.mode()``)."""

    def __init__(self, latents):
        self.latents = latents

    def sample(self, generator=None):
        return self.latents

    def mode(self):
        return self.latents
