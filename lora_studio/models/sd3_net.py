"""SD3 / SD3.5 denoisers (MMDiT, MMDiT-X) in Stability AI's layout, in plain torch.

``MMDiT(config).state_dict()`` has exactly the key names of ``sd3_medium.safetensors`` / ``sd3.5_large.safetensors``
without their ``model.diffusion_model.`` prefix (as sd-scripts' ``library/sd3_models.MMDiT`` and ComfyUI name them), so
a checkpoint loads with ``load_state_dict`` and LoRA module names come straight from module paths:
``joint_blocks.3.x_block.attn.qkv`` (q, k, v fused in one Linear), ``joint_blocks.3.context_block.adaLN_modulation.1``,
``joint_blocks.3.x_block.attn2.qkv`` (SD3.5 medium's second, image-only attention).

What the model is (sd-scripts' sd3_models.py, the SD3 paper and SD3.5's mmditx):
- the latent (B, 16, H, W) is cut into 2 x 2 patches by ``x_embedder.proj`` (a stride-2 convolution) and gets a fixed
  2-D sin-cos position embedding (``pos_embed``, a buffer stored in the checkpoint, pos_embed_max_size^2 positions)
  cropped at the centre (or at a random place: pos_emb_random_crop_rate), or a table scaled to each training size
  (enable_scaled_pos_embed, SD3.5 medium);
- the timestep (0..1000, not sigma) through a 256-wide sinusoidal embedding and ``t_embedder``, plus the pooled text
  vector through ``y_embedder``: the conditioning vector c of every adaLN;
- each joint block runs a context (text) and an x (image) stream with their own weights and one joint attention over
  [context, image]; the last block's context stream is "pre-only" (it only feeds the attention); SD3.5 has RMS q/k
  norms (``ln_q`` / ``ln_k``), SD3.5 medium adds an image-only attention ``attn2`` in its first 13 x blocks;
- widths: 64 per head, as many heads as blocks (hidden = 64 x depth).

Pure model code: imported from inside functions only (it imports torch at import time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .transformer_base import CheckpointedTransformer, RMSNorm, last_blocks

SD3_PREFIX = "model.diffusion_model."  # the MMDiT inside sd3_medium.safetensors / sd3.5_*.safetensors
TIME_EMBED_DIM = 256
HEAD_DIM = 64  # every released MMDiT: hidden = 64 x depth, heads = depth
POS_EMBED_MAX_RATIO = 1.5  # sd-scripts' scaled position embedding covers 1.5 x the training size
SCALED_POS_EMBED_BASE = 16  # ... with the training size's grid spread over 16 positions (its base_size)


@dataclass(frozen=True)
class SD3Config:
    """Sizes of an MMDiT (the fields of sd-scripts' SD3Params, read from a checkpoint's shapes)."""

    depth: int = 24
    hidden_size: int = 1536
    num_heads: int = 24
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    adm_in_channels: int = 2048  # the pooled CLIP-L + CLIP-G vector
    context_in_dim: int = 4096  # T5-XXL's width (CLIP-L + CLIP-G states are padded to it)
    pos_embed_max_size: int = 192  # the stored position table is this many patches on each side
    qk_norm: bool = False  # SD3.5: RMSNorm on q and k per head
    x_block_self_attn_layers: tuple[int, ...] = field(default_factory=tuple)  # SD3.5 medium: attn2 in these blocks
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def model_type(self) -> str:
        """sd-scripts' model_type (analyze_state_dict_state): "medium" (no q/k norm), "5-medium" (q/k norm and x-block
        attn2), "5-large" (q/k norm only); ss_base_model_version, and modelspec's "stable-diffusion-3-" + it."""
        if not self.qk_norm:
            return "medium"
        return "5-medium" if self.x_block_self_attn_layers else "5-large"


SD3_MEDIUM = SD3Config()
SD35_MEDIUM = SD3Config(pos_embed_max_size=384, qk_norm=True, x_block_self_attn_layers=tuple(range(13)))
SD35_LARGE = SD3Config(depth=38, hidden_size=38 * HEAD_DIM, num_heads=38, qk_norm=True)
CONFIGS = {"medium": SD3_MEDIUM, "5-medium": SD35_MEDIUM, "5-large": SD35_LARGE}
# The tests' and bench --tiny's sizes: 2 joint blocks of 2 heads x 64 with the real topology, pooled 32 + 32 (tiny
# CLIP-L + CLIP-G), text input 64 (the tiny T5), an 8 x 8 position table (12 x 12 for 5-medium: room to crop at 64 px)
TINY_CONFIGS = {kind: SD3Config(depth=2, hidden_size=128, num_heads=2, adm_in_channels=64, context_in_dim=64,
                                pos_embed_max_size=12 if kind == "5-medium" else 8, qk_norm=kind != "medium",
                                x_block_self_attn_layers=(0,) if kind == "5-medium" else ())
                for kind in CONFIGS}
TINY_CONFIG = TINY_CONFIGS["5-large"]


# ---------------------------------------------------------------- math

def timestep_embedding(t: Tensor, dim: int = TIME_EMBED_DIM, max_period: float = 10_000.0) -> Tensor:
    """The sinusoidal embedding [cos | sin] of the timestep as given (0..1000: SD3 feeds timesteps, not sigmas)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, dim) [sin | cos] with frequencies 10000^(-i / (dim/2)), in float64 as MAE's table."""
    omega = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, columns: Tensor, rows: Tensor) -> Tensor:
    """The 2-D table of a grid: the first half of each vector encodes the column, the second the row (the meshgrid
    order of SD3's get_2d_sincos_pos_embed). ``columns`` (W,) and ``rows`` (H,) -> (H*W, dim), row-major."""
    grid_rows, grid_cols = torch.meshgrid(rows.to(torch.float64), columns.to(torch.float64), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, grid_cols), sincos_1d(dim // 2, grid_rows)], dim=1)


def scaled_pos_embed(dim: int, patched_size: int) -> Tensor:
    """sd-scripts' scaled table for a training size of ``patched_size`` patches a side (get_scaled_2d_sincos_pos_embed
    with base_size 16): a grid 1.5 x as large, whose central ``patched_size`` positions span 0..16 (the positions the
    model saw around its own training size) and the rest continue outward. (1, G*G, dim) float32, G = the grid side."""
    grid = int(patched_size * POS_EMBED_MAX_RATIO)
    step = SCALED_POS_EMBED_BASE / patched_size
    positions = (torch.arange(grid, dtype=torch.float64) - (grid - patched_size) / 2) * step
    return sincos_2d(dim, positions, positions).float().unsqueeze(0)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _layer_norm(x: Tensor) -> Tensor:
    """The blocks' LayerNorm: no affine weights (nothing in the state dict), eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


# ---------------------------------------------------------------- layers (Stability AI's names)

class PatchEmbed(nn.Module):
    def __init__(self, config: SD3Config):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_size, p, p)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, hidden), row-major patches


class MLPEmbedder(nn.Module):
    """``mlp``: Linear, SiLU, Linear (t_embedder, y_embedder)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Attention(nn.Module):
    """One stream's fused ``qkv`` (rows [q | k | v], each head-major), its q/k norms ``ln_q`` / ``ln_k`` (SD3.5) and
    the output ``proj`` (none in a pre-only block)."""

    def __init__(self, config: SD3Config, pre_only: bool = False):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=config.qkv_bias)
        if not pre_only:
            self.proj = nn.Linear(dim, dim)
        if config.qk_norm:
            self.ln_q = RMSNorm(config.head_dim)
            self.ln_k = RMSNorm(config.head_dim)
        else:
            self.ln_q = self.ln_k = None

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, dim) -> q, k, v (B, H, N, D), q and k normed."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        if self.ln_q is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        return q, k, v


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(B, H, N, D) each -> (B, N, H*D)."""
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype)).transpose(1, 2).flatten(2)


class DiTBlock(nn.Module):
    """One stream of a joint block (sd-scripts' SingleDiTBlock): adaLN-modulated attention and MLP. ``adaLN_modulation``
    gives 6 vectors (shift, scale, gate for attention, then for the MLP), 2 in a pre-only block (shift, scale), 9 with
    ``attn2`` (the 6, then shift, scale, gate of attn2)."""

    def __init__(self, config: SD3Config, pre_only: bool = False, with_attn2: bool = False):
        super().__init__()
        dim = config.hidden_size
        self.pre_only = pre_only
        self.attn = Attention(config, pre_only)
        self.attn2 = Attention(config) if with_attn2 else None
        if not pre_only:
            self.mlp = Mlp(dim, config.mlp_hidden)
        count = 9 if with_attn2 else 2 if pre_only else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, count * dim))

    def modulations(self, c: Tensor) -> tuple[Tensor, ...]:
        return self.adaLN_modulation(c).chunk(self.adaLN_modulation[1].out_features // c.shape[-1], dim=-1)

    def finish(self, x: Tensor, attn: Tensor, mods: tuple[Tensor, ...], attn2: Tensor | None = None) -> Tensor:
        """Gated residual attention (and attn2) output, then the gated residual MLP on the re-modulated stream."""
        x = x + mods[2].unsqueeze(1) * self.attn.proj(attn)
        if attn2 is not None:
            x = x + mods[8].unsqueeze(1) * self.attn2.proj(attn2)
        return x + mods[5].unsqueeze(1) * self.mlp(modulate(_layer_norm(x), mods[3], mods[4]))


class JointBlock(nn.Module):
    """A context (text) and an x (image) stream over one joint attention [context, image] (sd-scripts' MMDiTBlock);
    SD3.5 medium's x stream also attends to itself alone (attn2, with its own heads of 64)."""

    def __init__(self, config: SD3Config, pre_only: bool, with_attn2: bool):
        super().__init__()
        self.context_block = DiTBlock(config, pre_only=pre_only)
        self.x_block = DiTBlock(config, with_attn2=with_attn2)

    def forward(self, context: Tensor, x: Tensor, c: Tensor) -> tuple[Tensor | None, Tensor]:
        cb, xb = self.context_block, self.x_block
        c_mods, x_mods = cb.modulations(c), xb.modulations(c)
        ctx_q, ctx_k, ctx_v = cb.attn.heads(modulate(_layer_norm(context), c_mods[0], c_mods[1]))
        x_norm = _layer_norm(x)
        x_q, x_k, x_v = xb.attn.heads(modulate(x_norm, x_mods[0], x_mods[1]))
        joint = _attention(torch.cat((ctx_q, x_q), 2), torch.cat((ctx_k, x_k), 2), torch.cat((ctx_v, x_v), 2))
        ctx_attn, x_attn = joint[:, :context.shape[1]], joint[:, context.shape[1]:]
        attn2 = None
        if xb.attn2 is not None:
            attn2 = _attention(*xb.attn2.heads(modulate(x_norm, x_mods[6], x_mods[7])))
        x = xb.finish(x, x_attn, x_mods, attn2)
        context = None if cb.pre_only else cb.finish(context, ctx_attn, c_mods)
        return context, x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) and the projection to patches (features ordered patch row, patch column, channel)."""

    def __init__(self, config: SD3Config):
        super().__init__()
        dim, p = config.hidden_size, config.patch_size
        self.linear = nn.Linear(dim, p * p * config.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(_layer_norm(x), shift, scale))


# ---------------------------------------------------------------- the model

class MMDiT(CheckpointedTransformer):
    """SD3 / SD3.5 denoiser: ``forward(x, t, y, context)`` takes latents (B, 16, H, W), timesteps 0..1000, the pooled
    vector and the text states, and returns the flow prediction (B, 16, H, W)."""

    def __init__(self, config: SD3Config):
        super().__init__()
        if config.hidden_size % config.num_heads:
            raise ValueError(f"hidden {config.hidden_size} is not a multiple of {config.num_heads} heads")
        self.config = config
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config)
        self.register_buffer("pos_embed", torch.zeros(1, config.pos_embed_max_size ** 2, dim))
        self.t_embedder = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.y_embedder = MLPEmbedder(config.adm_in_channels, dim)
        self.context_embedder = nn.Linear(config.context_in_dim, dim)
        attn2 = set(config.x_block_self_attn_layers)
        self.joint_blocks = nn.ModuleList(JointBlock(config, pre_only=i == config.depth - 1, with_attn2=i in attn2)
                                          for i in range(config.depth))
        self.final_layer = FinalLayer(config)
        self.pos_emb_random_crop_rate = 0.0
        self.scaled_pos_embeds: dict[int, Tensor] | None = None  # patched training size -> its scaled table

    # ---- training switches
    def swap_plan(self, count: int) -> list[tuple[nn.ModuleList, int]]:
        """blocks_to_swap: the last ``count`` joint blocks (sd-scripts' MMDiT.enable_block_swap swaps joint_blocks,
        at most all but 2)."""
        return last_blocks(self.joint_blocks, count, "the MMDiT")

    def set_pos_emb_random_crop_rate(self, rate: float) -> None:
        """SD3.5 medium's pos_emb_random_crop_rate: how often a training step crops the position table at a random
        place instead of the centre (sd-scripts also crops at random when sampling; LoRA Studio only in steps
        that train, i.e. with gradients)."""
        self.pos_emb_random_crop_rate = float(rate or 0.0)

    def enable_scaled_pos_embed(self, latent_sizes: list[int] | None) -> None:
        """sd-scripts' --enable_scaled_pos_embed: a table per training size (latent sizes, one per dataset
        resolution: round(sqrt(w h)) / 8), each image using the one of the nearest area (up to the midpoint between
        two sizes; beyond the largest: the largest, grown when the image does not fit). None turns it off."""
        if not latent_sizes:
            self.scaled_pos_embeds = None
            return
        p = self.config.patch_size
        self.scaled_pos_embeds = {size // p: scaled_pos_embed(self.config.hidden_size, size // p)
                                  for size in sorted(set(latent_sizes))}

    def _scaled_table(self, h: int, w: int) -> tuple[Tensor, int]:
        """(table, side) for an image of h x w patches, as sd-scripts' cropped_scaled_pos_embed chooses it."""
        sizes = sorted(self.scaled_pos_embeds)
        limits = [(a * a + b * b) // 2 for a, b in zip(sizes, sizes[1:])] + [int((sizes[-1] * POS_EMBED_MAX_RATIO) ** 2)]
        chosen = next((size for size, limit in zip(sizes, limits) if h * w <= limit), sizes[-1])
        table = self.scaled_pos_embeds[chosen]
        side = round(math.sqrt(table.shape[1]))
        if h > side or w > side:  # an image too tall or wide for its table: a table for its longer side
            chosen = max(h, w)
            table = self.scaled_pos_embeds.setdefault(chosen, scaled_pos_embed(self.config.hidden_size, chosen))
            side = round(math.sqrt(table.shape[1]))
        return table, side

    def position_embedding(self, h: int, w: int, device, dtype, random_crop: bool = False) -> Tensor:
        """The (1, h*w, hidden) crop of the position table for h x w patches: centred, or at a random place."""
        if self.scaled_pos_embeds is not None:
            table, side = self._scaled_table(h, w)
        else:
            table, side = self.pos_embed, self.config.pos_embed_max_size
            if h > side or w > side:
                most = side * self.config.patch_size * 8
                raise UserError(f"an image of {w * self.config.patch_size * 8} x {h * self.config.patch_size * 8} px "
                                f"is larger than this model's position embedding ({most} x {most} px at most)")
        if random_crop:
            top = int(torch.randint(0, side - h + 1, (1,)))
            left = int(torch.randint(0, side - w + 1, (1,)))
        else:
            top, left = (side - h) // 2, (side - w) // 2
        grid = table.reshape(1, side, side, -1)[:, top:top + h, left:left + w]
        return grid.reshape(1, h * w, -1).to(device=device, dtype=dtype)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, context: Tensor) -> Tensor:
        """x (B, C, H, W) noisy latents, t (B,) timesteps 0..1000, y (B, adm) pooled CLIP-L + CLIP-G, context
        (B, S, context_in_dim) text states; x, y and context in the dtype the model computes in. Returns
        (B, out_channels, H, W)."""
        b, _, height, width = x.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"latent {height}x{width} is not a multiple of the patch size {p}")
        h, w = height // p, width // p
        random_crop = (self.pos_emb_random_crop_rate > 0 and torch.is_grad_enabled()
                       and float(torch.rand(1)) < self.pos_emb_random_crop_rate)
        hidden = self.x_embedder(x)
        hidden = hidden + self.position_embedding(h, w, hidden.device, hidden.dtype, random_crop)
        c = self.t_embedder(timestep_embedding(t).to(hidden.dtype)) + self.y_embedder(y.to(hidden.dtype))
        ctx = self.context_embedder(context.to(hidden.dtype))
        for block in self.joint_blocks:
            ctx, hidden = self.run_block(block, c.device, ctx, hidden, c)
        out = self.final_layer(hidden.to(c.device), c)
        out = out.reshape(b, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, -1, height, width)



# ---------------------------------------------------------------- reading a checkpoint's sizes

def strip_prefix(key: str) -> str:
    return key[len(SD3_PREFIX):] if key.startswith(SD3_PREFIX) else key


def config_from_state_dict(keys_and_shapes: Mapping[str, tuple]) -> SD3Config:
    """The config of an MMDiT state dict (with or without ``model.diffusion_model.``; other parts' keys are ignored)
    from key names and shapes only, as sd-scripts' analyze_state_dict_state: patch and width from x_embedder, the
    position table's side from pos_embed, the pooled and context widths from y_embedder / context_embedder, q/k norm
    from ``ln_k``, SD3.5 medium's attn2 layers from their keys. Blocks are counted from the keys; heads are 64 wide
    (the q/k norm's width when there is one)."""
    shapes = {strip_prefix(k): tuple(getattr(v, "shape", v)) for k, v in keys_and_shapes.items()
              if k.startswith(SD3_PREFIX) or not k.startswith(("text_encoders.", "first_stage_model.", "model."))}
    needed = ("x_embedder.proj.weight", "pos_embed", "y_embedder.mlp.0.weight", "context_embedder.weight")
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise UserError(f"this is not an SD3 / SD3.5 MMDiT in Stability AI's layout (no {missing[0]})")
    hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    pattern = re.compile(r"joint_blocks\.(\d+)\.")
    indices = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    if not indices or indices != set(range(len(indices))):
        raise UserError(f"the MMDiT's joint_blocks are missing or numbered with gaps ({sorted(indices)[:10]})")
    qk_norm = "joint_blocks.0.context_block.attn.ln_k.weight" in shapes
    head_dim = shapes["joint_blocks.0.context_block.attn.ln_k.weight"][0] if qk_norm else min(HEAD_DIM, hidden)
    attn2 = sorted(int(m.group(1)) for k in shapes if (m := re.fullmatch(r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight", k)))
    out_rows = shapes["final_layer.linear.weight"][0] if "final_layer.linear.weight" in shapes else \
        patch * patch * in_channels
    mlp = shapes.get("joint_blocks.0.x_block.mlp.fc1.weight", (hidden * 4,))[0]
    return SD3Config(depth=len(indices), hidden_size=hidden, num_heads=hidden // head_dim, patch_size=patch,
                     in_channels=in_channels, out_channels=out_rows // (patch * patch),
                     adm_in_channels=shapes["y_embedder.mlp.0.weight"][1],
                     context_in_dim=shapes["context_embedder.weight"][1],
                     pos_embed_max_size=round(math.sqrt(shapes["pos_embed"][1])), qk_norm=qk_norm,
                     x_block_self_attn_layers=tuple(attn2), mlp_ratio=mlp / hidden,
                     qkv_bias="joint_blocks.0.x_block.attn.qkv.bias" in shapes)


def build_empty(config: SD3Config) -> MMDiT:
    """The MMDiT on the meta device (no memory): real-size module counts and names."""
    with torch.device("meta"):
        return MMDiT(config)
