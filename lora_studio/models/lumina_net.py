"""Lumina-Image 2.0's denoiser (NextDiT, 2 B, GQA, patch 2, adaLN, refiners) in plain torch.

``LuminaTransformer(config).state_dict()`` has exactly the key names of the Lumina 2 single file
(``lumina_2_model_bf16.safetensors``, as sd-scripts' ``library/lumina_models.NextDiT`` names them): ``x_embedder``,
``t_embedder.mlp.{0,2}``, ``cap_embedder.{0,1}``, ``noise_refiner.N`` / ``context_refiner.N`` / ``layers.N`` with
``attention.qkv`` (q, k and v fused in one Linear: 2304 + 768 + 768 rows at real size, grouped-query attention),
``attention.out``, ``attention.q_norm`` / ``k_norm``, ``feed_forward.w1/w2/w3``, ``attention_norm1/2``,
``ffn_norm1/2``, ``adaLN_modulation.1`` (not in the context refiners), ``norm_final`` (in the file, unused, as in
sd-scripts) and ``final_layer.linear`` / ``final_layer.adaLN_modulation.1``. So a checkpoint loads with
``load_state_dict`` and LoRA names come straight from module paths.

What the forward does (sd-scripts' NextDiT.forward / patchify_and_embed, which this re-derives):
- time: the model time t (1 - sigma: 0 is noise, 1 the image) -> a 256-wide sinusoidal embedding of t itself (no
  x1000) -> ``t_embedder`` -> c (width min(dim, 1024)), which every modulated block and the final layer read.
- the caption (Gemma2's states, right-padded, with its mask) -> ``cap_embedder`` -> the context refiners, each
  caption attending its own valid tokens; the image (2x2 patches, features ordered row, column, channel) ->
  ``x_embedder`` -> the noise refiners.
- one joint sequence per sample: its L valid caption tokens, then its image tokens, padding after; a key mask hides
  the padding. RoPE over 3 axes (32, 32, 32 at real size, theta 10000): caption token j sits at (j, 0, 0), image
  patch (r, c) at (L, r, c).
- the main layers, then the final layer on every token; the image tokens are cut out and un-patchified.
The blocks are pre- and post-normed: x + tanh(gate) * norm2(f(norm1(x) * (1 + scale))) (no shift).

Pure model code: imported from inside functions only (it imports torch at import time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .transformer_base import CheckpointedTransformer, RMSNorm, block_count, last_blocks

COMFY_PREFIX = "model.diffusion_model."  # ComfyUI's all-in-one files (Neta Lumina) keep the DiT under it
FREQUENCY_DIM = 256  # the sinusoidal time embedding's width
ADALN_MAX = 1024  # the time embedding (and so every adaLN input) is min(dim, 1024) wide


@dataclass(frozen=True)
class LuminaConfig:
    """Sizes of a NextDiT (sd-scripts' LuminaParams). The defaults are Lumina-Image 2.0's 2 B model
    (``LuminaParams.get_2b_config``)."""

    patch_size: int = 2
    in_channels: int = 16  # the Flux AE's latent channels
    dim: int = 2304
    n_layers: int = 26
    n_refiner_layers: int = 2  # noise refiners, and as many context refiners
    n_heads: int = 24
    n_kv_heads: int = 8
    ffn_hidden: int = 9216  # feed_forward's width: 4 x dim rounded up to multiple_of 256
    norm_eps: float = 1e-5
    qk_norm: bool = True
    cap_feat_dim: int = 2304  # Gemma2-2B's hidden size
    axes_dims: tuple[int, ...] = (32, 32, 32)  # RoPE widths per axis; they sum to the head width
    axes_lens: tuple[int, ...] = (300, 512, 512)  # how far each axis' positions go (caption length, rows, columns)
    theta: float = 10_000.0
    norm_final: bool = True  # the unused top-level RMSNorm the released file carries

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.dim, ADALN_MAX)

    @property
    def qkv_rows(self) -> tuple[int, int, int]:
        """The rows of q, k and v in a fused ``attention.qkv`` (2304, 768, 768 at real size)."""
        return (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim)


LUMINA_2B = LuminaConfig()


# ---------------------------------------------------------------- math

def timestep_embedding(t: Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0) -> Tensor:
    """[cos | sin] of t x 10000^(-i/half), float32; t is used as it is (Lumina's time runs 0..1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_angles(positions: Tensor, axes_dims: tuple[int, ...], theta: float) -> Tensor:
    """(B, N, axes) integer positions -> (B, N, head_dim / 2, 2) float32 [cos, sin]: per axis the frequencies
    theta^(-2i/d), computed in float64 as sd-scripts' precompute_freqs_cis."""
    parts = []
    for axis, width in enumerate(axes_dims):
        omega = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=positions.device) / width)
        angles = positions[..., axis].to(torch.float64)[..., None] * omega
        parts.append(torch.stack([angles.cos(), angles.sin()], dim=-1))
    return torch.cat(parts, dim=-2).float()


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate consecutive pairs of each head of x (B, N, H, D) by pe (B, N, D/2, 2); float32 inside, x's dtype out.
    A zero pe (padding) zeroes the pair, as sd-scripts' zero complex frequencies do."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    cos, sin = pe[:, :, None, :, 0], pe[:, :, None, :, 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


# ---------------------------------------------------------------- layers (native names)

class Attention(nn.Module):
    """Grouped-query self-attention: one fused ``qkv`` (q heads, then k and v of the fewer kv heads), per-head
    RMS ``q_norm`` / ``k_norm`` (eps 1e-6), RoPE, a key mask, and ``out``. No biases."""

    def __init__(self, config: LuminaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.rows = config.qkv_rows
        self.qkv = nn.Linear(config.dim, sum(self.rows), bias=False)
        self.out = nn.Linear(config.n_heads * config.head_dim, config.dim, bias=False)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim)
            self.k_norm = RMSNorm(self.head_dim)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x: Tensor, key_mask: Tensor | None, pe: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split(list(self.rows), dim=-1)
        q = apply_rope(self.q_norm(q.view(b, n, self.n_heads, self.head_dim)), pe).to(x.dtype)
        k = apply_rope(self.k_norm(k.view(b, n, self.n_kv_heads, self.head_dim)), pe).to(x.dtype)
        v = v.view(b, n, self.n_kv_heads, self.head_dim)
        repeat = self.n_heads // self.n_kv_heads
        if repeat > 1:  # query head h reads kv head h // repeat
            k, v = k.repeat_interleave(repeat, dim=2), v.repeat_interleave(repeat, dim=2)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(2).to(x.dtype))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class JointBlock(nn.Module):
    """A NextDiT block (sd-scripts' JointTransformerBlock): attention and feed-forward, each between two RMSNorms.
    With ``modulation`` (the main layers and the noise refiners) ``adaLN_modulation`` turns c into scale and gate for
    each half: x + tanh(gate) * norm2(f(norm1(x) * (1 + scale))); the context refiners have none."""

    def __init__(self, config: LuminaConfig, modulation: bool):
        super().__init__()
        dim, eps = config.dim, config.norm_eps
        self.attention = Attention(config)
        self.feed_forward = FeedForward(dim, config.ffn_hidden)
        self.attention_norm1 = RMSNorm(dim, eps)
        self.ffn_norm1 = RMSNorm(dim, eps)
        self.attention_norm2 = RMSNorm(dim, eps)
        self.ffn_norm2 = RMSNorm(dim, eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.adaln_dim, 4 * dim)) if modulation else None

    def forward(self, x: Tensor, key_mask: Tensor | None, pe: Tensor, c: Tensor | None = None) -> Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), key_mask, pe))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(4, dim=-1)
        attn = self.attention(self.attention_norm1(x) * (1 + scale_msa), key_mask, pe)
        x = x + gate_msa.tanh() * self.attention_norm2(attn)
        return x + gate_mlp.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp)))


class FinalLayer(nn.Module):
    """LayerNorm (no weights, eps 1e-6) scaled by (1 + adaLN_modulation(c)), then ``linear`` to the patches."""

    def __init__(self, config: LuminaConfig):
        super().__init__()
        self.linear = nn.Linear(config.dim, config.patch_size ** 2 * config.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.adaln_dim, config.dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        scale = self.adaLN_modulation(c).unsqueeze(1)
        return self.linear(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale))


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------- the model

class LuminaTransformer(CheckpointedTransformer):
    """NextDiT: ``forward(x, t, cap_feats, cap_mask)`` as sd-scripts calls it, returning the model's prediction in
    the latents' layout (Lumina predicts x0 - eps: its time runs from noise to image)."""

    def __init__(self, config: LuminaConfig):
        super().__init__()
        if config.dim % config.n_heads or config.n_heads % config.n_kv_heads or \
                sum(config.axes_dims) != config.head_dim:
            raise ValueError(f"dim {config.dim}, {config.n_heads} heads, {config.n_kv_heads} kv heads and RoPE axes "
                             f"{config.axes_dims} do not fit: the axes must sum to the head width")
        self.config = config
        dim = config.dim
        self.t_embedder = TimestepEmbedder(config.adaln_dim)
        self.cap_embedder = nn.Sequential(RMSNorm(config.cap_feat_dim, config.norm_eps),
                                          nn.Linear(config.cap_feat_dim, dim))
        self.context_refiner = nn.ModuleList(JointBlock(config, modulation=False)
                                             for _ in range(config.n_refiner_layers))
        self.x_embedder = nn.Linear(config.patch_size ** 2 * config.in_channels, dim)
        self.noise_refiner = nn.ModuleList(JointBlock(config, modulation=True) for _ in range(config.n_refiner_layers))
        self.layers = nn.ModuleList(JointBlock(config, modulation=True) for _ in range(config.n_layers))
        if config.norm_final:
            self.norm_final = RMSNorm(dim, config.norm_eps)  # in the released file; NextDiT's forward never uses it
        self.final_layer = FinalLayer(config)

    # ---- memory options
    def swap_plan(self, count: int) -> list[tuple[nn.ModuleList, int]]:
        """sd-scripts' --blocks_to_swap N for Lumina: the last N of the main ``layers`` (the refiners never), at most
        all but 2 of them (NextDiT.enable_block_swap: 24 of 26)."""
        return last_blocks(self.layers, count, "Lumina 2")

    # ---- forward
    def forward(self, x: Tensor, t: Tensor, cap_feats: Tensor, cap_mask: Tensor) -> Tensor:
        """x (B, C, H, W) noisy latents, t (B,) model time 1 - sigma, cap_feats (B, S, cap_feat_dim) Gemma2's
        states, cap_mask (B, S) 1 on the caption's tokens (right padding). Returns (B, C, H, W)."""
        b, channels, height, width = x.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} is not a multiple of the patch size {p}")
        rows, cols = height // p, width // p
        image_len = rows * cols
        dtype = self.x_embedder.bias.dtype  # a bias: never stored in float8 (fp8_base), so the compute dtype
        c = self.t_embedder(t)
        cap_mask = cap_mask.to(torch.bool)
        cap_len = cap_mask.sum(1)  # each sample's valid caption tokens (at least its BOS)
        longest = int(cap_len.max())
        cap_feats, cap_mask = cap_feats[:, :longest], cap_mask[:, :longest]
        cap = self.cap_embedder(cap_feats.to(dtype))

        # positions: caption token j at (j, 0, 0); image patch (r, c) at (L, r, c)
        device = x.device
        j = torch.arange(longest, device=device)
        cap_pos = torch.stack([j.expand(b, -1), torch.zeros_like(j).expand(b, -1),
                               torch.zeros_like(j).expand(b, -1)], -1)
        cap_pe = rope_angles(cap_pos, self.config.axes_dims, self.config.theta) * cap_mask[..., None, None]
        grid_r, grid_c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device),
                                        indexing="ij")
        img_pos = torch.stack([cap_len[:, None].expand(-1, image_len), grid_r.flatten().expand(b, -1),
                               grid_c.flatten().expand(b, -1)], -1)
        img_pe = rope_angles(img_pos, self.config.axes_dims, self.config.theta)

        for block in self.context_refiner:
            cap = self.run_block(block, cap_pe.device, cap, cap_mask, cap_pe)
        patches = x.view(b, channels, rows, p, cols, p).permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)
        img = self.x_embedder(patches.to(dtype))
        for block in self.noise_refiner:
            img = self.run_block(block, c.device, img, None, img_pe, c)

        # one joint sequence per sample: its caption tokens, its image tokens, then padding
        total = longest + image_len
        slots = cap_len[:, None] + torch.arange(image_len, device=device)[None]  # where each image token goes
        joint = torch.zeros(b, total, cap.shape[-1], device=device, dtype=img.dtype)
        joint[:, :longest] = cap.to(img.dtype) * cap_mask[..., None]
        joint = joint.scatter(1, slots[..., None].expand(-1, -1, joint.shape[-1]), img)
        pe = torch.zeros(b, total, *img_pe.shape[2:], device=device, dtype=img_pe.dtype)
        pe[:, :longest] = cap_pe
        pe = pe.scatter(1, slots[..., None, None].expand(-1, -1, *img_pe.shape[2:]), img_pe)
        key_mask = torch.arange(total, device=device)[None] < (cap_len + image_len)[:, None]
        for block in self.layers:
            joint = self.run_block(block, c.device, joint, key_mask, pe, c)
        out = self.final_layer(joint, c)
        out = out.gather(1, slots[..., None].expand(-1, -1, out.shape[-1]))  # the image tokens, in patch order
        out = out.view(b, rows, cols, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, channels, height, width)



# ---------------------------------------------------------------- reading a checkpoint's sizes

def strip_prefix(key: str) -> str:
    return key[len(COMFY_PREFIX):] if key.startswith(COMFY_PREFIX) else key


def default_axes(head_dim: int) -> tuple[int, ...]:
    """RoPE widths for a head width (not in the weights): (32, 32, 32) for Lumina's 96, else three equal even
    parts."""
    if head_dim % 6:
        raise UserError(f"head width {head_dim} cannot be split into 3 even RoPE axes; this is not a Lumina 2 model")
    return (head_dim // 3,) * 3


def config_from_state_dict(keys_and_shapes: Mapping[str, tuple]) -> LuminaConfig:
    """The config of a NextDiT state dict from key names and shapes only (a safetensors header is enough; tensors
    work too; ComfyUI's ``model.diffusion_model.`` prefix is taken off). Block counts from the keys, the head width
    from q_norm (else Lumina's 96), kv heads from qkv's rows, the patch size 2 (every NextDiT)."""
    shapes = {strip_prefix(k): tuple(getattr(v, "shape", v)) for k, v in keys_and_shapes.items()}
    needed = ("x_embedder.weight", "cap_embedder.1.weight", "final_layer.linear.weight", "t_embedder.mlp.0.weight")
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise UserError(f"this is not a Lumina 2 (NextDiT) transformer: it has no {missing[0]}")
    dim, patch_features = shapes["x_embedder.weight"]
    patch = 2
    n_layers = block_count(shapes, "layers")
    refiners = block_count(shapes, "noise_refiner")
    if block_count(shapes, "context_refiner") != refiners:
        raise UserError("this Lumina transformer has unlike numbers of noise and context refiners")
    block = "layers.0." if n_layers else "noise_refiner.0."
    head_dim = shapes.get(block + "attention.q_norm.weight", (96,))[0]
    qkv_rows = shapes[block + "attention.qkv.weight"][0]
    n_heads = dim // head_dim
    n_kv = (qkv_rows // head_dim - n_heads) // 2
    return LuminaConfig(patch_size=patch, in_channels=patch_features // patch ** 2, dim=dim, n_layers=n_layers,
                        n_refiner_layers=refiners, n_heads=n_heads, n_kv_heads=n_kv,
                        ffn_hidden=shapes[block + "feed_forward.w1.weight"][0],
                        qk_norm=block + "attention.q_norm.weight" in shapes,
                        cap_feat_dim=shapes["cap_embedder.1.weight"][1], axes_dims=default_axes(head_dim),
                        norm_final="norm_final.weight" in shapes)
