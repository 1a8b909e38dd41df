"""sd-scripts' ``--blocks_to_swap``, simply: the frozen weights of the last N transformer blocks live on the CPU and
each such block gets a device copy of them just for its own forward.

Which blocks: the LAST ``count`` ones, as sd-scripts' ``ModelOffloader.prepare_block_devices_before_forward`` places
them (``library/custom_offloading_utils.py``; sd-scripts then rotates blocks through the device on a side thread and
stream, we do not: each swapped block is copied in just before it runs, always the same ones).

How, so that autograd stays correct:
- a forward pre-hook puts, in place of each frozen parameter, a NEW Parameter holding a device copy; a forward hook
  (``always_call``, so it also runs when a checkpoint's recompute stops early) puts the CPU original back. Nothing is
  ever copied back to the CPU: frozen weights do not change, the device copy is simply dropped.
- tensors autograd saved for the backward (e.g. a Linear's weight) are the device copies, so the backward works and
  they are freed with the graph. Without gradient checkpointing they therefore stay on the device until the backward
  (little memory is saved); with it (non-reentrant, wrapping the block's ``__call__``) nothing is saved in the
  forward, and the recompute's pre-hook copies the weights in again.
- only parameters with ``requires_grad`` False move. A LoRA adapter replaces ``forward`` of a Linear and owns its
  parameters in a separate network module (``lora_studio.network.lora``), so its parameters are not the block's and
  stay where they are; a trainable parameter of the block itself stays too. The base Linear reads ``self.weight`` at
  call time, so it sees the device copy.
- on CUDA the copies are ``non_blocking`` (ordered on the current stream, so correct); they only overlap compute when
  the CPU weights are pinned (``pin_memory=True``, at the cost of page-locked host memory).

Call it after the model is on the device (it moves the swapped blocks' frozen weights to the CPU); a later
``model.to(device)`` would bring them back (still correct, no saving). Pure torch; imported from inside functions.
"""

from __future__ import annotations

import torch
from torch import nn


class SwapHandle:
    """What ``swap_blocks`` installed: counts of device loads and unloads, ``remove()`` to take the hooks off (the
    swapped weights stay on the CPU; move the model to put them anywhere else)."""

    def __init__(self, device: torch.device, swapped: list[nn.Module]):
        self.device = device
        self.swapped = swapped
        self.loads = 0  # block forwards that copied weights in (forward and checkpoint recompute)
        self.unloads = 0
        self._originals: dict[nn.Module, list[tuple[nn.Module, str, nn.Parameter]]] = {}
        self._hooks: list = []

    def managed_parameters(self) -> list[nn.Parameter]:
        """The CPU-resident parameters this handle copies in (frozen parameters of the swapped blocks)."""
        return [param for entries in self._originals.values() for _, _, param in entries]

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for block in self._originals:
            self._restore(block)

    def _load(self, block: nn.Module, *_unused) -> None:
        non_blocking = self.device.type == "cuda"
        for module, name, param in self._originals[block]:
            module._parameters[name] = nn.Parameter(param.to(self.device, non_blocking=non_blocking),
                                                    requires_grad=False)
        self.loads += 1

    def _unload(self, block: nn.Module, *_unused) -> None:
        self._restore(block)
        self.unloads += 1

    def _restore(self, block: nn.Module) -> None:
        for module, name, param in self._originals[block]:
            module._parameters[name] = param


class SwapHandles:
    """Several handles as one (Flux swaps double and single blocks separately)."""

    def __init__(self, handles: list[SwapHandle]):
        self.handles = handles

    @property
    def loads(self) -> int:
        return sum(h.loads for h in self.handles)

    @property
    def unloads(self) -> int:
        return sum(h.unloads for h in self.handles)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def swap_by_plan(plan: list[tuple[nn.ModuleList, int]], device) -> SwapHandles:
    """Block swap of a transformer's ``swap_plan``: the last ``n`` of each block list."""
    return SwapHandles([swap_blocks(blocks, n, device) for blocks, n in plan])


def swap_blocks(blocks: list[nn.Module] | nn.ModuleList, count: int, device, pin_memory: bool = False) -> SwapHandle:
    """Keep the frozen weights of the last ``count`` blocks on the CPU; copy them to ``device`` for each forward of
    their block. ``device`` "cpu" works (the copies are no-ops; the hooks and counts run the same)."""
    blocks = list(blocks)
    if not 0 <= count <= len(blocks):
        raise ValueError(f"cannot swap {count} of {len(blocks)} blocks")
    handle = SwapHandle(torch.device(device), blocks[len(blocks) - count:])
    for block in handle.swapped:
        handle._originals[block] = _frozen_parameters_to_cpu(block, pin_memory and handle.device.type == "cuda")
        handle._hooks.append(block.register_forward_pre_hook(handle._load))
        handle._hooks.append(block.register_forward_hook(handle._unload, always_call=True))
    return handle


def _frozen_parameters_to_cpu(block: nn.Module, pin: bool) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """Move the block's frozen parameters to the CPU in place (the Parameter objects stay the same)."""
    entries = []
    for module in block.modules():
        for name, param in module._parameters.items():
            if param is None or param.requires_grad:
                continue
            cpu = param.data.to("cpu")
            param.data = cpu.pin_memory() if pin else cpu
            entries.append((module, name, param))
    return entries
