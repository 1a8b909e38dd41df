"""Frozen weights stored in float8 and computed in the mixed precision (sd-scripts' fp8_base / fp8_base_unet).

The weights of the Linear and Conv2d layers (nearly all of a U-Net's or a text encoder's parameters) are kept as
``float8_e4m3fn``: 1 byte a weight instead of bf16/fp16's 2. Biases, normalisation layers and embeddings keep the
compute dtype. Every call upcasts the layer's weight to the compute dtype (autocast's, else the input's), so the
forward is the layer's own with its weight rounded to float8; the backward pass keeps the float8 weight, not the
upcast copy, so the saving holds through the step. LoRA adapters wrap the patched forward like any other; the
sample-image pipeline runs the same forwards. PyTorch converts float8 on the CPU and on every CUDA GPU (no float8
matmul is needed), so this works wherever torch has the dtype.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.nn import functional as F

FP8 = getattr(torch, "float8_e4m3fn", None)


class _Fp8Linear(torch.autograd.Function):
    """``x W^T + b`` with W upcast for this call only; the gradient of x reads the float8 W again."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return (grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None), None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.geometry = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight.to(x.dtype), bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.geometry
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(shape, weight.to(grad.dtype), grad, stride, padding, dilation,
                                                groups)
        return grad_x, None, None, None, None, None, None


def _call_dtype(x: torch.Tensor, module: nn.Module) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype if x.is_floating_point() else module.fp8_compute_dtype


def _fp8_linear_forward(self, x):
    dtype = _call_dtype(x, self)
    bias = None if self.bias is None else self.bias.to(dtype)
    return _Fp8Linear.apply(x.to(dtype), self.weight, bias)


def _fp8_conv2d_forward(self, x):
    dtype = _call_dtype(x, self)
    bias = None if self.bias is None else self.bias.to(dtype)
    if self.padding_mode != "zeros" or isinstance(self.padding, str):  # rare: a plain upcast (the copy is kept)
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), bias)
    return _Fp8Conv2d.apply(x.to(dtype), self.weight, bias, self.stride, self.padding, self.dilation, self.groups)


_FORWARDS = ((nn.Linear, _fp8_linear_forward), (nn.Conv2d, _fp8_conv2d_forward))


def fp8_problem(device: torch.device) -> str | None:
    """Why float8 weights cannot be stored on ``device``, or None."""
    if FP8 is None:
        return f"this PyTorch ({torch.__version__}) has no float8 type; fp8_base needs torch 2.1 or newer"
    try:
        torch.ones(2, device=device).to(FP8).to(torch.float32)
    except (RuntimeError, TypeError) as exc:
        return f"PyTorch cannot store float8 tensors on this {device.type} device ({str(exc).splitlines()[0][:120]})"
    return None


def store_fp8(model: nn.Module, compute_dtype: torch.dtype) -> tuple[int, int]:
    """Store the frozen weights of ``model``'s Linear and Conv2d layers in float8, computed in ``compute_dtype``
    (or autocast's dtype). Call it before adapters wrap the layers. Returns (layers, bytes saved)."""
    layers = saved = 0
    for module in model.modules():
        forward = next((f for cls, f in _FORWARDS if isinstance(module, cls) and type(module).forward is cls.forward),
                       None)  # a subclass with a forward of its own keeps its weights as they are
        if forward is None or module.weight.requires_grad or module.weight.dtype == FP8 or \
                getattr(module, "fp8_compute_dtype", None) is not None:  # already stored by its loader (Flux's T5)
            continue
        if "forward" in vars(module):
            raise RuntimeError("store_fp8: an adapter already wraps this layer; store the weights in float8 first")
        before = module.weight.numel() * module.weight.element_size()
        module.weight = nn.Parameter(module.weight.detach().to(FP8), requires_grad=False)
        module.fp8_compute_dtype = compute_dtype
        module.forward = types.MethodType(forward, module)
        layers += 1
        saved += before - module.weight.numel()
    model.fp8_compute_dtype = compute_dtype
    return layers, saved


def is_fp8(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return FP8 is not None and isinstance(weight, torch.Tensor) and weight.dtype == FP8


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in: its ``dtype``, or the mixed precision when its weights are float8."""
    dtype = getattr(model, "fp8_compute_dtype", None) or getattr(model, "dtype", None)
    if dtype is None:  # a plain nn.Module (Flux's transformer): the dtype of its weights
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    return dtype


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights of ``model``'s Linear and Conv2d layers (what fp8 storage halves)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d)))
