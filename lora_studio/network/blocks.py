"""Block-wise LoRA as sd-scripts' ``networks.lora`` does it: a learning-rate weight, a rank and an alpha for each
U-Net block (``down_lr_weight``, ``mid_lr_weight``, ``up_lr_weight``, ``block_lr_zero_threshold``, ``block_dims``,
``block_alphas``, ``conv_block_dims``, ``conv_block_alphas`` in ``network_args``).

Blocks are numbered as sd-scripts numbers them (the family says which block a LoRA name is in): for SD1.x/2.x 25
blocks, 0-11 down (0, conv_in, has no LoRA), 12 the middle, 13-24 up; for SDXL 23: 0 the embeddings, 1-9 input
blocks, 10-12 the middle block's parts, 13-21 output blocks, 22 out. A block with weight 0 (or at or below the zero
threshold) gets no adapters at all, so the file simply lacks it and loads everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
              "block_alphas", "conv_block_dims", "conv_block_alphas")
PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")


@dataclass(frozen=True)
class BlockLayout:
    """How many down/up and middle entries a family's lr weights have; the total number of blocks."""
    per_side: int  # down (= up) entries of down_lr_weight / up_lr_weight
    middle: int
    total: int
    ends: bool  # SDXL: one fixed entry (weight 1) before the down and after the up entries


def _floats(value: Any, name: str) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    try:
        return [float(v) if v not in ("", None) else 0.0 for v in items]
    except (TypeError, ValueError):
        raise UserError(f"network_args {name}: {value!r} is not a list of numbers") from None


def _preset(text: str, count: int, name: str) -> list[float]:
    """sd-scripts' named curves over the blocks of one side, plus an optional offset: "sine+0.5"."""
    preset, _, offset_text = text.partition("+")
    offset = float(offset_text) if offset_text else 0.0
    steps = [i / (count - 1) for i in range(count)]
    curves = {"sine": [math.sin(math.pi * s / 2) for s in steps],
              "cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
              "linear": steps, "reverse_linear": list(reversed(steps)), "zeros": [0.0] * count}
    if preset not in curves:
        raise UserError(f"network_args {name}: '{preset}' is not a list of numbers nor one of {', '.join(PRESETS)}")
    return [v + offset for v in curves[preset]]


def _side(value: Any, count: int, name: str) -> list[float]:
    if isinstance(value, str) and "," not in value:
        values = _preset(value.strip(), count, name)
    else:  # "1,0.5,,1" (an empty entry is 0, as in sd-scripts) or numbers
        values = _floats(value.split(",") if isinstance(value, str) else value, name)
    return (values + [1.0] * count)[:count]  # too long: cut; too short: filled with 1 (sd-scripts warns)


def lr_weights(values: dict[str, Any], layout: BlockLayout) -> list[float] | None:
    """The learning-rate weight of every block, or None when no block weight is given."""
    if not any(k in values for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")):
        return None
    threshold = float(values.get("block_lr_zero_threshold", 0.0) or 0.0)

    def part(name, count):
        if name not in values:
            return [1.0] * count
        return [w if w > threshold else 0.0 for w in _side(values[name], count, name)]
    weights = (part("down_lr_weight", layout.per_side) + part("mid_lr_weight", layout.middle)
               + part("up_lr_weight", layout.per_side))
    return [1.0] + weights + [1.0] if layout.ends else weights


@dataclass(frozen=True)
class BlockPlan:
    """Per-block learning-rate weights (or None) and ranks/alphas (or None: network_dim and conv_dim everywhere)."""
    lr_weights: list[float] | None
    dims: list[int] | None
    alphas: list[float] | None
    conv_dims: list[int] | None
    conv_alphas: list[float] | None

    def rank(self, block: int, conv: bool, rank, alpha, conv_rank, conv_alpha):
        """(rank, alpha) of an adapter in ``block`` (0 rank: none), as sd-scripts' create_modules chooses it."""
        if self.dims is None or block < 0:
            return (conv_rank, conv_alpha) if conv else (rank, alpha)
        if conv:
            return (self.conv_dims[block], self.conv_alphas[block]) if self.conv_dims is not None else (0, None)
        return self.dims[block], self.alphas[block]

    def lr_weight(self, block: int) -> float:
        return 1.0 if self.lr_weights is None or block < 0 else self.lr_weights[block]


def block_plan(values: dict[str, Any], layout: BlockLayout, rank: int, alpha: float | None, conv_rank: int | None,
               conv_alpha: float | None) -> BlockPlan | None:
    """sd-scripts' per-block ranks: on when block_dims or a block lr weight is given; block_dims / block_alphas
    default to network_dim / network_alpha, conv_block_* to conv_dim / conv_alpha (none without conv_dim); a
    block whose lr weight is 0 gets rank 0."""
    if not any(k in values for k in BLOCK_ARGS):
        return None
    weights = lr_weights(values, layout)
    if "block_dims" not in values and weights is None:
        raise UserError("network_args block_alphas / conv_block_dims / conv_block_alphas / block_lr_zero_threshold "
                        "need block_dims or a block learning-rate weight (down/mid/up_lr_weight), as in sd-scripts")

    def per_block(name, default, kind):
        if name not in values:
            return None if default is None else [default] * layout.total
        raw = values[name]
        items = [kind(v) for v in (raw.split(",") if isinstance(raw, str) else raw if isinstance(
            raw, (list, tuple)) else [raw])]
        if len(items) != layout.total:
            raise UserError(f"network_args {name} needs {layout.total} values for this model (one per block), "
                            f"got {len(items)}")
        return items
    dims = per_block("block_dims", rank, int)
    alphas = per_block("block_alphas", alpha if alpha else None, float) or [None] * layout.total
    conv_dims = per_block("conv_block_dims", conv_rank, int)
    conv_alphas = (per_block("conv_block_alphas", conv_alpha if conv_alpha is not None else 1.0, float)
                   if conv_dims is not None else None)
    if weights is not None:
        dims = [0 if w == 0 else d for d, w in zip(dims, weights)]
        if conv_dims is not None:
            conv_dims = [0 if w == 0 else d for d, w in zip(conv_dims, weights)]
    return BlockPlan(weights, dims, alphas, conv_dims, conv_alphas)
