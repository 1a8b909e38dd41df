"""The precision a run computes in: what accelerate is told, the frozen weights' dtype, and autocast."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from ..config import Config
from ..errors import UserError
from . import faults

log = logging.getLogger("lora_studio")


@dataclass(frozen=True)
class Precision:
    mode: str  # accelerate's mixed_precision: "no", "fp16" or "bf16"
    weight_dtype: torch.dtype  # frozen weights and autocast; adapters stay float32
    cpu_loss_scaling: bool = False  # the test suite's fp16 on a CPU: a GradScaler, float32 compute

    def autocast(self, device: torch.device):
        if self.weight_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.weight_dtype)


def choose_precision(cfg: Config, cuda: bool) -> str:
    if cfg.mixed_precision == "fp16" and not cuda:
        log.warning("mixed_precision fp16 needs an NVIDIA GPU; training in fp32 on this CPU instead")
        return "no"
    if cfg.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("mixed_precision bf16 is not supported by this GPU; use fp16")
    return cfg.mixed_precision


def precision_for(cfg: Config, cuda: bool) -> Precision:
    if cfg.mixed_precision == "fp16" and not cuda and faults.cpu_loss_scaling():
        return Precision("fp16", torch.float32, cpu_loss_scaling=True)
    mode = choose_precision(cfg, cuda)
    return Precision(mode, {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32))
