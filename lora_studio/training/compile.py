"""``torch_compile``: the denoiser with its LoRA adapters compiled in place, as one graph per shape.

The adapters' forward does no host sync and no arithmetic on tensor values (``network.lora``), so the denoiser is
captured without a graph break; what runs around it (noise, timesteps, the loss, the optimizer, the step guard's
read-back) stays outside the compiled region. ``dynamo_mode = "reduce-overhead"`` replays the captured forward and
backward as CUDA graphs (one per bucket shape), which takes small batches out of the kernel-launch wall.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..config import Config

log = logging.getLogger("lora_studio")

# graphs a compiled denoiser may need: one per bucket shape, in training and with gradients off (validation,
# samples), before torch gives up and runs it uncompiled
GRAPHS_PER_SHAPE = 2


def compile_options(cfg: Config) -> dict:
    """torch.compile's arguments from the run's settings (Kohya_ss's accelerate fields by the same names)."""
    backend = cfg.dynamo_backend if cfg.dynamo_backend not in (None, "", "no") else "inductor"
    options = {"backend": backend, "fullgraph": bool(cfg.dynamo_use_fullgraph),
               "dynamic": True if cfg.dynamo_use_dynamic else None}  # None: torch generalises a shape that changes
    mode = cfg.dynamo_mode or "default"  # one of the setting's choices: inductor's modes (another backend takes none)
    if mode != "default":
        if backend != "inductor":
            log.warning("dynamo_mode %s is inductor's; the %s backend takes no mode, so it is not used", mode, backend)
        else:
            options["mode"] = mode
    return options


def compile_denoiser(denoiser: nn.Module, cfg: Config, shapes: int = 1) -> None:
    """Compile ``denoiser`` in place (the same module object everywhere), its LoRA adapters included: call it after
    they are attached. ``shapes``: the bucket shapes the run trains, so that each gets its graph."""
    limit = max(torch._dynamo.config.recompile_limit, GRAPHS_PER_SHAPE * shapes + 2)
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           limit * 4)
    options = compile_options(cfg)
    log.info("torch.compile of the %s: %s", type(denoiser).__name__,
             ", ".join(f"{k} {v}" for k, v in options.items() if v is not None))
    denoiser.compile(**options)
