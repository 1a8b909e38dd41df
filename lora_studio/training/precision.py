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
    adapter_dtype: torch.dtype = torch.float32  # the trained weights: fp16/bf16 with full_fp16/full_bf16
    fp8_unet: bool = False  # fp8_base / fp8_base_unet: the U-Net's Linear/Conv weights stored in float8
    fp8_text_encoders: bool = False  # fp8_base without fp8_base_unet: the text encoders' too

    @property
    def full_fp16(self) -> bool:
        """sd-scripts' full_fp16: the adapters (and their gradients) in fp16, unscaled by the GradScaler."""
        return self.adapter_dtype == torch.float16

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the adapters compute in: the autocast dtype under mixed precision, else their own weights' dtype."""
        return self.weight_dtype if self.weight_dtype != torch.float32 else self.adapter_dtype

    def autocast(self, device: torch.device):
        if self.weight_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.weight_dtype)


def choose_precision(cfg: Config, cuda: bool) -> str:
    if cfg.mixed_precision == "fp16" and not cuda:  # said by resolve
        return "no"
    if cfg.mixed_precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("mixed_precision bf16 is not supported by this GPU; use fp16")
    return cfg.mixed_precision


def precision_for(cfg: Config, cuda: bool) -> Precision:
    """With full_fp16 / full_bf16 (sd-scripts' experimental options) the adapters train in that dtype too, as
    sd-scripts casts the network: half the memory for their weights, gradients and optimizer state."""
    fp8 = {"fp8_unet": bool(cfg.fp8_base or cfg.fp8_base_unet),
           "fp8_text_encoders": bool(cfg.fp8_base and not cfg.fp8_base_unet)}  # as sd-scripts splits them
    if cfg.mixed_precision == "fp16" and not cuda and faults.cpu_loss_scaling():
        return Precision("fp16", torch.float32, cpu_loss_scaling=True,
                         adapter_dtype=torch.float16 if cfg.full_fp16 else torch.float32, **fp8)
    mode = choose_precision(cfg, cuda)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode, torch.float32)
    full = (cfg.full_fp16 and mode == "fp16") or (cfg.full_bf16 and mode == "bf16")  # else fp32 (resolve says so)
    return Precision(mode, dtype, adapter_dtype=dtype if full else torch.float32, **fp8)


def unscale_fp16_gradients(accelerator) -> None:
    """Let the GradScaler unscale fp16 gradients (PyTorch refuses them by default), as sd-scripts patches it for
    full_fp16."""
    scaler = accelerator.scaler
    if scaler is None:
        return
    unscale = scaler._unscale_grads_

    def allowing_fp16(optimizer, inv_scale, found_inf, allow_fp16):
        return unscale(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = allowing_fp16
