"""What the four transformer implementations (Flux.1 / Chroma, SD3, Anima, Lumina 2) share: gradient checkpointing
of each block (with sd-scripts' cpu_offload_checkpointing), block swap from the model's ``swap_plan``, and the
float32 RMSNorm with a ``weight``.

Pure model code: imported from inside functions only (it imports torch at import time).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import UserError
from .block_swap import SwapHandles, swap_by_plan


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """x / rms(x) x weight, computed in float32 and returned in x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a ``weight`` (SD3.5's q/k norms, Lumina 2's norms), float32 inside."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class CheckpointedTransformer(nn.Module):
    """A transformer whose blocks run through ``run_block``: checkpointed when training with gradient checkpointing
    (the checkpoint wraps the block's ``__call__``, so block swap's hooks run again in the recompute), their inputs
    and outputs kept on the CPU with cpu_offload_checkpointing; ``swap_plan(count)`` (the subclass's: sd-scripts'
    choice of blocks) is what block swap keeps on the CPU."""

    def __init__(self):
        super().__init__()
        self.gradient_checkpointing = False
        self.cpu_offload_checkpointing = False

    def enable_gradient_checkpointing(self, cpu_offload: bool = False) -> None:
        """Checkpoint every block when training; ``cpu_offload`` keeps what the checkpoints hold (the hidden states
        between blocks) on the CPU, as sd-scripts' --cpu_offload_checkpointing does."""
        self.gradient_checkpointing = True
        self.cpu_offload_checkpointing = cpu_offload

    def disable_gradient_checkpointing(self) -> None:
        self.gradient_checkpointing = False
        self.cpu_offload_checkpointing = False

    def swap_plan(self, count: int) -> list[tuple[nn.ModuleList, int]]:
        raise NotImplementedError

    def enable_block_swap(self, count: int, device) -> SwapHandles:
        """Block swap of ``swap_plan(count)``; returns a handle with ``remove()``."""
        return swap_by_plan(self.swap_plan(count), device)

    def run_block(self, block: nn.Module, device: torch.device, *args):
        """``block(*args)``; ``device`` is where the block computes (an argument that stays there: with
        cpu_offload_checkpointing the hidden states come and go on the CPU)."""
        if not (self.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return block(*args)
        if self.cpu_offload_checkpointing:
            return checkpoint(_call_on_device, block, device, *args, use_reentrant=False)
        return checkpoint(block, *args, use_reentrant=False)


def block_count(shapes, prefix: str) -> int:
    """How many ``prefix.N.`` blocks a checkpoint's names hold (numbered from 0 without gaps, or a UserError)."""
    import re

    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise UserError(f"{prefix} are numbered with gaps ({sorted(indices)}): this checkpoint cannot be read")
    return len(indices)


def last_blocks(blocks: nn.ModuleList, count: int, what: str) -> list[tuple[nn.ModuleList, int]]:
    """sd-scripts' block swap of a one-kind transformer: the last ``count`` blocks, at most all but 2."""
    if count < 0:
        raise UserError(f"blocks_to_swap must be 0 or more, not {count}")
    if count > len(blocks) - 2:
        raise UserError(f"blocks_to_swap {count} is too many for {what}'s {len(blocks)} blocks: at most "
                        f"{max(len(blocks) - 2, 0)} (2 stay on the device, as in sd-scripts)")
    return [(blocks, count)]


def _call_on_device(block: nn.Module, device: torch.device, *args):
    """Run a block on ``device`` and hand its outputs back on the CPU: the checkpoint then holds CPU tensors."""
    outputs = block(*(a.to(device) if isinstance(a, Tensor) else a for a in args))
    if isinstance(outputs, tuple):
        return tuple(o.cpu() if isinstance(o, Tensor) else o for o in outputs)
    return outputs.cpu()
