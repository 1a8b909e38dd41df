"""Flux.1 (dev, schnell) and Chroma denoisers in the Black Forest Labs (BFL) layout, in plain torch.

``FluxTransformer(config).state_dict()`` has exactly the key names of ``flux1-dev.safetensors`` (as sd-scripts'
``library/flux_models.Flux`` and ``library/chroma_models.Chroma`` name them), so a BFL checkpoint loads with
``load_state_dict`` and LoRA module names come straight from module paths: ``double_blocks.3.img_attn.qkv`` (q, k, v
fused in one Linear), ``single_blocks.7.linear1`` (q, k, v and the MLP input fused), ``single_blocks.7.modulation.lin``.
A diffusers ``transformer/`` folder loads through ``diffusers_to_bfl``.

Pure model code: imported from inside functions only (it imports torch at import time).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .transformer_base import CheckpointedTransformer, block_count, rms_norm

TIME_EMBED_DIM = 256  # BFL's timestep_embedding width for time_in / guidance_in
BFL_PREFIX = "model.diffusion_model."  # the prefix of a DiT inside a full (ComfyUI-style) checkpoint


@dataclass(frozen=True)
class FluxConfig:
    """Sizes of a Flux.1 / Chroma denoiser (the fields of sd-scripts' FluxParams and ChromaParams)."""

    in_channels: int = 64  # 16 latent channels packed 2x2
    vec_in_dim: int = 768  # CLIP-L pooled (not used by Chroma)
    context_in_dim: int = 4096  # T5-XXL
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE widths per id axis; they sum to the head width
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True  # dev: guidance_in; schnell and Chroma have none
    chroma: bool = False  # modulations from distilled_guidance_layer instead of per-block *_mod.lin
    approximator_in_dim: int = 64
    approximator_depth: int = 5
    approximator_hidden_size: int = 5120

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def modulation_count(self) -> int:
        """Chroma's modulation vectors: 3 per single block, 6 + 6 per double block, 2 for the final layer."""
        return 3 * self.depth_single_blocks + 12 * self.depth + 2


FLUX_DEV = FluxConfig()
FLUX_SCHNELL = FluxConfig(guidance_embed=False)
CHROMA = FluxConfig(guidance_embed=False, chroma=True)


# ---------------------------------------------------------------- math (float32 where BFL uses it)

def timestep_embedding(t: Tensor, dim: int, time_factor: float = 1000.0, max_period: float = 10_000.0) -> Tensor:
    """BFL's sinusoidal embedding of ``time_factor * t``: [cos | sin], float32 (sigma in [0, 1] -> 0..1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * time_factor)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_angles(ids: Tensor, axes_dim: tuple[int, ...], theta: int) -> Tensor:
    """(B, N, axes) position ids -> (B, 1, N, head_dim/2, 2) float32 [cos, sin], one block of pairs per axis.

    As BFL's EmbedND: frequencies theta^(-2i/d) per axis in float64, the result in float32."""
    parts = []
    for axis, width in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=ids.device) / width)
        angles = ids[..., axis].to(torch.float64)[..., None] * omega
        parts.append(torch.stack([angles.cos(), angles.sin()], dim=-1))
    return torch.cat(parts, dim=-2).unsqueeze(1).float()


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate consecutive pairs (x0, x1) of each head by the angles in ``pe`` (in float32, result in x's dtype)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1, cos, sin = pairs[..., 0], pairs[..., 1], pe[..., 0], pe[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor, attn_mask: Tensor | None) -> Tensor:
    """Joint attention with RoPE: (B, H, N, D) each -> (B, N, H*D)."""
    out = F.scaled_dot_product_attention(apply_rope(q, pe), apply_rope(k, pe), v, attn_mask=attn_mask)
    return out.transpose(1, 2).flatten(2)


def _layer_norm(x: Tensor) -> Tensor:
    """The blocks' LayerNorm: no affine weights (so nothing in the state dict), eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _shift_scale(x: Tensor, mods: Tensor, start: int) -> Tensor:
    """adaLN: (1 + scale) * x + shift, with shift and scale the vectors ``start`` and ``start + 1`` of mods."""
    return (1 + mods[:, start + 1:start + 2]) * x + mods[:, start:start + 1]


# ---------------------------------------------------------------- layers (BFL names)

class RMSNorm(nn.Module):
    """BFL's RMSNorm: float32, eps 1e-6, a ``scale`` parameter."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.scale)


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)


class SelfAttention(nn.Module):
    """Holds one stream's fused ``qkv``, its q/k ``norm`` and the output ``proj`` (the attention runs jointly)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, dim) -> normed q, k and v of shape (B, H, N, D); the qkv rows are [q | k | v], each head-major."""
        q, k, v = _split_heads(self.qkv(x), self.num_heads)
        return self.norm.query_norm(q).to(v), self.norm.key_norm(k).to(v), v


def _split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    return q, k, v


class Modulation(nn.Module):
    """Flux's per-block adaLN projection ``lin``: silu(vec) -> 6 (double) or 3 (single) vectors of width dim."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.count = count
        self.lin = nn.Linear(dim, count * dim, bias=True)

    def forward(self, vec: Tensor) -> Tensor:
        return self.lin(F.silu(vec)).unflatten(-1, (self.count, -1))  # (B, count, dim)


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, one joint attention over [text, image].

    ``cond`` is Flux's vector (B, dim), projected here by img_mod / txt_mod, or for Chroma the block's 12 ready
    modulation vectors (B, 12, dim): image 6 then text 6, each as (shift, scale, gate) x 2."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        dim = config.hidden_size
        self.img_mod = None if config.chroma else Modulation(dim, 6)
        self.img_attn = SelfAttention(dim, config.num_heads, config.qkv_bias)
        self.img_mlp = _mlp(dim, config.mlp_hidden)
        self.txt_mod = None if config.chroma else Modulation(dim, 6)
        self.txt_attn = SelfAttention(dim, config.num_heads, config.qkv_bias)
        self.txt_mlp = _mlp(dim, config.mlp_hidden)

    def forward(self, img: Tensor, txt: Tensor, cond: Tensor, pe: Tensor, attn_mask: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        if self.img_mod is not None:
            img_mods, txt_mods = self.img_mod(cond), self.txt_mod(cond)
        else:
            img_mods, txt_mods = cond[:, :6], cond[:, 6:]
        img_q, img_k, img_v = self.img_attn.heads(_shift_scale(_layer_norm(img), img_mods, 0))
        txt_q, txt_k, txt_v = self.txt_attn.heads(_shift_scale(_layer_norm(txt), txt_mods, 0))
        joint = attention(torch.cat((txt_q, img_q), 2), torch.cat((txt_k, img_k), 2), torch.cat((txt_v, img_v), 2),
                          pe, attn_mask)
        txt_attn, img_attn = joint[:, :txt.shape[1]], joint[:, txt.shape[1]:]
        img = _stream_update(img, img_attn, img_mods, self.img_attn.proj, self.img_mlp)
        txt = _stream_update(txt, txt_attn, txt_mods, self.txt_attn.proj, self.txt_mlp)
        return img, txt


def _stream_update(x: Tensor, attn: Tensor, mods: Tensor, proj: nn.Module, mlp: nn.Module) -> Tensor:
    """Gated residual attention output, then the gated residual MLP on the re-modulated stream."""
    x = x + mods[:, 2:3] * proj(attn)
    return x + mods[:, 5:6] * mlp(_shift_scale(_layer_norm(x), mods, 3))


class SingleStreamBlock(nn.Module):
    """One stream over [text, image]: ``linear1`` gives q, k, v and the MLP input, ``linear2`` takes the attention
    output and the MLP activation together (ViT-22B style parallel block, as BFL)."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads, self.hidden_size, self.mlp_hidden = config.num_heads, dim, config.mlp_hidden
        self.linear1 = nn.Linear(dim, dim * 3 + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.norm = QKNorm(config.head_dim)
        self.modulation = None if config.chroma else Modulation(dim, 3)

    def forward(self, x: Tensor, cond: Tensor, pe: Tensor, attn_mask: Tensor | None) -> Tensor:
        mods = cond if self.modulation is None else self.modulation(cond)
        qkv, mlp = self.linear1(_shift_scale(_layer_norm(x), mods, 0)).split(
            [3 * self.hidden_size, self.mlp_hidden], dim=-1)
        q, k, v = _split_heads(qkv, self.num_heads)
        q, k = self.norm.query_norm(q).to(v), self.norm.key_norm(k).to(v)
        out = self.linear2(torch.cat((attention(q, k, v, pe, attn_mask), F.gelu(mlp, approximate="tanh")), 2))
        return x + mods[:, 2:3] * out


class LastLayer(nn.Module):
    """Final adaLN (shift, scale: BFL order; diffusers stores scale first) and the projection to latent patches."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        dim = config.hidden_size
        self.linear = nn.Linear(dim, config.in_channels)
        self.adaLN_modulation = None if config.chroma else nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        mods = cond if self.adaLN_modulation is None else self.adaLN_modulation(cond).unflatten(-1, (2, -1))
        return self.linear(_shift_scale(_layer_norm(x), mods, 0))


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class Approximator(nn.Module):
    """Chroma's ``distilled_guidance_layer``: a residual MLP (pre-RMSNorm) mapping each modulation's input to it."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        hidden = config.approximator_hidden_size
        self.in_proj = nn.Linear(config.approximator_in_dim, hidden)
        self.layers = nn.ModuleList(MLPEmbedder(hidden, hidden) for _ in range(config.approximator_depth))
        self.norms = nn.ModuleList(RMSNorm(hidden) for _ in range(config.approximator_depth))
        self.out_proj = nn.Linear(hidden, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms):
            x = x + layer(norm(x))
        return self.out_proj(x)


# ---------------------------------------------------------------- the model

class FluxTransformer(CheckpointedTransformer):
    """Flux.1 / Chroma denoiser: ``forward`` takes packed latents and returns the velocity prediction."""

    def __init__(self, config: FluxConfig):
        super().__init__()
        if config.hidden_size % config.num_heads or sum(config.axes_dim) != config.head_dim:
            raise ValueError(f"hidden {config.hidden_size} / {config.num_heads} heads and RoPE axes {config.axes_dim} "
                             "do not fit: the axes must sum to the head width")
        self.config = config
        dim = config.hidden_size
        self.img_in = nn.Linear(config.in_channels, dim)
        if config.chroma:
            self.distilled_guidance_layer = Approximator(config)
        else:
            self.time_in = MLPEmbedder(TIME_EMBED_DIM, dim)
            self.vector_in = MLPEmbedder(config.vec_in_dim, dim)
            if config.guidance_embed:
                self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.txt_in = nn.Linear(config.context_in_dim, dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(config) for _ in range(config.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(config) for _ in range(config.depth_single_blocks))
        self.final_layer = LastLayer(config)

    def block_layout(self) -> tuple[int, int]:
        """(double-stream block count, single-stream block count)."""
        return len(self.double_blocks), len(self.single_blocks)

    def swap_plan(self, count: int) -> list[tuple[nn.ModuleList, int]]:
        """sd-scripts' --blocks_to_swap N: N // 2 double blocks and (N - N // 2) * 2 single blocks (the last ones)
        stay on the CPU (``Flux.enable_block_swap``; at most all but 2 of each)."""
        doubles, singles = count // 2, (count - count // 2) * 2
        if count < 0:
            raise UserError(f"blocks_to_swap must be 0 or more, not {count}")
        if doubles > len(self.double_blocks) - 2 or singles > len(self.single_blocks) - 2:
            raise UserError(f"blocks_to_swap {count} is too many for {len(self.double_blocks)} double and "
                            f"{len(self.single_blocks)} single blocks (each keeps at least 2 on the device)")
        return [(self.double_blocks, doubles), (self.single_blocks, singles)]

    def forward(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timesteps: Tensor,
                y: Tensor | None = None, guidance: Tensor | None = None, txt_mask: Tensor | None = None) -> Tensor:
        """img (B, L, in_channels) packed latents, img_ids (B, L, 3), txt (B, S, context) T5 states, txt_ids
        (B, S, 3), timesteps (B,) sigma in [0, 1], y (B, vec_in_dim) CLIP pooled (Flux only), guidance (B,) (dev;
        Chroma reads it as its distilled guidance, 0 when None), txt_mask (B, S) 1 = attend (text keys only; image
        tokens are always attended, as sd-scripts' apply_t5_attn_mask). Returns (B, L, in_channels)."""
        if img.ndim != 3 or txt.ndim != 3:
            raise ValueError("img and txt must be (batch, tokens, channels)")
        img, txt = self.img_in(img), self.txt_in(txt)
        cond = self._conditioning(timesteps, y, guidance, img.shape[0], img.dtype)
        pe = rope_angles(torch.cat((_batched(txt_ids, img), _batched(img_ids, img)), 1), self.config.axes_dim,
                         self.config.theta)
        attn_mask = _key_mask(txt_mask, img.shape[1])
        for i, block in enumerate(self.double_blocks):
            img, txt = self.run_block(block, pe.device, img, txt, self._double_cond(cond, i), pe, attn_mask)
        x = torch.cat((txt, img), 1)
        for i, block in enumerate(self.single_blocks):
            x = self.run_block(block, pe.device, x, self._single_cond(cond, i), pe, attn_mask)
        img = x[:, txt.shape[1]:].to(cond.device)
        return self.final_layer(img, self._final_cond(cond))

    def _conditioning(self, timesteps: Tensor, y: Tensor | None, guidance: Tensor | None, batch: int,
                      dtype: torch.dtype) -> Tensor:
        """Flux: one vector (B, dim) = time_in + guidance_in + vector_in. Chroma: all modulations (B, M, dim)."""
        if self.config.chroma:
            return self.chroma_modulations(timesteps, guidance, batch, dtype)
        vec = self.time_in(timestep_embedding(timesteps, TIME_EMBED_DIM).to(dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("Flux dev is guidance-distilled: pass guidance (e.g. 1.0 for training)")
            vec = vec + self.guidance_in(timestep_embedding(guidance, TIME_EMBED_DIM).to(dtype))
        if y is None:
            raise ValueError("Flux needs the CLIP-L pooled vector y")
        return vec + self.vector_in(y.to(dtype))

    def chroma_modulations(self, timesteps: Tensor, guidance: Tensor | None, batch: int, dtype: torch.dtype) -> Tensor:
        """Chroma's approximator input per modulation index m: [emb(t) | emb(guidance) | emb(m)], widths in/4, in/4,
        in/2 (``Chroma.get_mod_vectors``; diffusers' ChromaCombinedTimestepTextProjEmbeddings uses guidance 0).
        Index order: single blocks (3 each), image mods of the double blocks (6 each), text mods (6 each), final 2."""
        width = self.config.approximator_in_dim
        if guidance is None:
            guidance = torch.zeros_like(timesteps, dtype=torch.float32)
        index = torch.arange(self.config.modulation_count, device=timesteps.device)
        per_sample = torch.cat([timestep_embedding(timesteps, width // 4), timestep_embedding(guidance, width // 4)], 1)
        per_index = timestep_embedding(index, width // 2)
        inputs = torch.cat([per_sample[:, None].expand(batch, len(index), -1),
                            per_index[None].expand(batch, -1, -1)], dim=-1)
        return self.distilled_guidance_layer(inputs.to(dtype))

    def _double_cond(self, cond: Tensor, i: int) -> Tensor:
        if not self.config.chroma:
            return cond
        img_start = 3 * self.config.depth_single_blocks + 6 * i
        txt_start = img_start + 6 * self.config.depth
        return torch.cat((cond[:, img_start:img_start + 6], cond[:, txt_start:txt_start + 6]), 1)

    def _single_cond(self, cond: Tensor, i: int) -> Tensor:
        return cond[:, 3 * i:3 * i + 3] if self.config.chroma else cond

    def _final_cond(self, cond: Tensor) -> Tensor:
        return cond[:, -2:] if self.config.chroma else cond



def _batched(ids: Tensor, like: Tensor) -> Tensor:
    """(N, 3) ids (diffusers style) or (B, N, 3) ids -> (B, N, 3)."""
    return ids.expand(like.shape[0], -1, -1) if ids.ndim == 2 else ids


def _key_mask(txt_mask: Tensor | None, image_tokens: int) -> Tensor | None:
    """(B, S) text mask -> SDPA bool mask (B, 1, 1, S + L) over the keys [text, image]; image keys always on."""
    if txt_mask is None:
        return None
    keep = txt_mask.to(torch.bool)
    keep = torch.cat((keep, keep.new_ones(keep.shape[0], image_tokens)), 1)
    return keep[:, None, None, :]


def chroma_text_mask(t5_mask: Tensor) -> Tensor:
    """Chroma attends one padding token after each prompt: sd-scripts' ``Chroma.forward`` (attn_padding=1) and
    diffusers' ChromaPipeline (``mask_indices <= seq_lengths``) both do. (B, S) tokenizer mask -> (B, S) bool."""
    lengths = t5_mask.to(torch.int64).sum(-1, keepdim=True)
    return torch.arange(t5_mask.shape[-1], device=t5_mask.device)[None] <= lengths


# ---------------------------------------------------------------- reading a checkpoint's sizes

def strip_bfl_prefix(key: str) -> str:
    return key[len(BFL_PREFIX):] if key.startswith(BFL_PREFIX) else key


def config_from_state_dict(keys_and_shapes: Mapping[str, tuple], *, axes_dim: tuple[int, ...] | None = None
                           ) -> FluxConfig:
    """The config of a BFL-layout Flux/Chroma state dict, from key names and shapes only (a safetensors header is
    enough; tensors work too). Block counts come from the keys (pruned models load); heads from the q-norm width
    (128 in every released model, as BFL's hidden/128). ``axes_dim`` is needed only for a head width other than 128
    (RoPE has no weights to read it from)."""
    shapes = {strip_bfl_prefix(k): tuple(getattr(v, "shape", v)) for k, v in keys_and_shapes.items()}
    if "img_in.weight" not in shapes or "txt_in.weight" not in shapes:
        raise UserError("this is not a Flux or Chroma transformer in the BFL layout (no img_in / txt_in weights)")
    hidden, in_channels = shapes["img_in.weight"]
    depth, singles = block_count(shapes, "double_blocks"), block_count(shapes, "single_blocks")
    head_dim = _first_shape(shapes, r"(double|single)_blocks\.0\..*query_norm\.scale", (128,))[0]
    mlp_rows = _first_shape(shapes, r"double_blocks\.0\.img_mlp\.0\.weight", None)
    mlp_ratio = mlp_rows[0] / hidden if mlp_rows else _single_mlp_ratio(shapes, hidden)
    if axes_dim is None:
        if head_dim != 128:
            raise UserError(f"head width {head_dim} is not Flux's 128: pass the RoPE axes_dim")
        axes_dim = FLUX_DEV.axes_dim
    chroma = "distilled_guidance_layer.in_proj.weight" in shapes
    approximator = {}
    if chroma:
        approx_hidden, approx_in = shapes["distilled_guidance_layer.in_proj.weight"]
        approximator = dict(approximator_in_dim=approx_in, approximator_hidden_size=approx_hidden,
                            approximator_depth=block_count(shapes, "distilled_guidance_layer.layers"))
    return FluxConfig(
        in_channels=in_channels, hidden_size=hidden, context_in_dim=shapes["txt_in.weight"][1],
        vec_in_dim=shapes.get("vector_in.in_layer.weight", (0, FLUX_DEV.vec_in_dim))[1],
        mlp_ratio=mlp_ratio, num_heads=hidden // head_dim, depth=depth, depth_single_blocks=singles,
        axes_dim=tuple(axes_dim), qkv_bias=depth == 0 or "double_blocks.0.img_attn.qkv.bias" in shapes,
        guidance_embed="guidance_in.in_layer.weight" in shapes, chroma=chroma, **approximator)


def _first_shape(shapes: Mapping[str, tuple], pattern: str, default):
    regex = re.compile(pattern)
    return next((shape for key, shape in shapes.items() if regex.fullmatch(key)), default)


def _single_mlp_ratio(shapes: Mapping[str, tuple], hidden: int) -> float:
    rows = _first_shape(shapes, r"single_blocks\.0\.linear1\.weight", None)
    return (rows[0] - 3 * hidden) / hidden if rows else FLUX_DEV.mlp_ratio


# ---------------------------------------------------------------- diffusers -> BFL

_DOUBLE = {  # inside transformer_blocks.{i} -> inside double_blocks.{i}
    "attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
}
_DOUBLE_MODS = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}  # Flux only
_DOUBLE_NORMS = {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                 "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm"}
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _top_level_names(config: FluxConfig) -> dict[str, str]:
    """diffusers module -> BFL module outside the blocks."""
    names = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear"}
    if config.chroma:
        approximator = "distilled_guidance_layer."
        names.update({approximator + n: approximator + n for n in ("in_proj", "out_proj")})
        for i in range(config.approximator_depth):
            layer = f"{approximator}layers.{i}."
            names.update({layer + "linear_1": layer + "in_layer", layer + "linear_2": layer + "out_layer"})
        return names
    embedders = {"timestep_embedder": "time_in", "text_embedder": "vector_in"}
    if config.guidance_embed:
        embedders["guidance_embedder"] = "guidance_in"
    for src, dst in embedders.items():
        names.update({f"time_text_embed.{src}.linear_1": f"{dst}.in_layer",
                      f"time_text_embed.{src}.linear_2": f"{dst}.out_layer"})
    return names


def diffusers_to_bfl(state_dict: Mapping[str, Tensor], config: FluxConfig) -> dict[str, Tensor]:
    """A diffusers FluxTransformer2DModel / ChromaTransformer2DModel state dict in BFL names: q, k, v concatenated
    into ``qkv`` (and with the MLP input into ``linear1``), RMSNorm ``weight`` -> ``scale``, and the final adaLN's
    halves swapped back (diffusers stores scale, shift; BFL shift, scale) - the inverse of diffusers'
    convert_flux/chroma_transformer_checkpoint_to_diffusers. A missing or an unused key is a UserError."""
    source, out = dict(state_dict), {}

    def take(key: str) -> Tensor:
        if key not in source:
            raise UserError(f"the diffusers transformer has no {key}: it is not {_describe(config)}")
        return source.pop(key)

    def move(dst: str, *parts: str) -> None:
        """diffusers Linear(s) ``parts`` -> one BFL Linear ``dst`` (rows concatenated in the given order)."""
        for suffix in ("weight", "bias"):
            if suffix == "weight" or f"{parts[0]}.bias" in source:
                tensors = [take(f"{p}.{suffix}") for p in parts]
                out[f"{dst}.{suffix}"] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)

    for src, dst in _top_level_names(config).items():
        move(dst, src)
    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for name, bfl in {**_DOUBLE, **({} if config.chroma else _DOUBLE_MODS)}.items():
            move(dst + bfl, src + name)
        for bfl, parts in _DOUBLE_FUSED.items():
            move(dst + bfl, *(src + p for p in parts))
        for name, bfl in _DOUBLE_NORMS.items():
            out[f"{dst}{bfl}.scale"] = take(f"{src}{name}.weight")
    for i in range(config.depth_single_blocks):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        move(dst + "linear2", src + "proj_out")
        if not config.chroma:
            move(dst + "modulation.lin", src + "norm.linear")
        move(dst + "linear1", *(src + p for p in _SINGLE_LINEAR1))
        for name, bfl in _SINGLE_NORMS.items():
            out[f"{dst}{bfl}.scale"] = take(f"{src}{name}.weight")
    if config.chroma:
        for i in range(config.approximator_depth):
            out[f"distilled_guidance_layer.norms.{i}.scale"] = take(f"distilled_guidance_layer.norms.{i}.weight")
    else:
        for suffix in ("weight", "bias"):
            scale, shift = take(f"norm_out.linear.{suffix}").chunk(2)
            out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale])
    if source:
        raise UserError(f"the diffusers transformer has weights that {_describe(config)} does not have: "
                        f"{', '.join(sorted(source)[:5])}")
    return out


def _describe(config: FluxConfig) -> str:
    kind = "Chroma" if config.chroma else "Flux dev" if config.guidance_embed else "Flux schnell"
    return f"{kind} with {config.depth} double and {config.depth_single_blocks} single blocks"
