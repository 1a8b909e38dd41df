"""Faults the test suite injects into real runs, through environment variables that normal use never sets.

They reach code that a CPU cannot reach otherwise: fp16 loss scaling (accelerate gives a GradScaler only on a GPU)
and gradients that overflow on chosen steps; and a moment a fast CPU passes before the page can show it: a render
half done.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lora_studio")

CPU_GRAD_SCALER = "LORA_STUDIO_TEST_CPU_GRAD_SCALER"  # "1": fp16 loss scaling on the CPU (computing in float32)
OVERFLOW_STEPS = "LORA_STUDIO_TEST_OVERFLOW_STEPS"  # "1,2,3": these optimizer steps' gradients become inf
VALIDATION_LOSSES = "LORA_STUDIO_TEST_VALIDATION_LOSSES"  # "1.0,0.9,...": the n-th validation reports the n-th
HOLD_AFTER_IMAGE = "LORA_STUDIO_TEST_HOLD_AFTER_IMAGE"  # "N:PATH": a comparison job waits after its N-th image


def hold_after_image(index: int) -> None:
    """The test suite's hold in a comparison job: after its N-th image it waits (up to 5 minutes) until the file
    PATH appears, and removes it, so that the next job holds again."""
    number, _, path = os.environ.get(HOLD_AFTER_IMAGE, "").partition(":")
    if not path or index != int(number):
        return
    import time
    from pathlib import Path

    log.warning("test fault: holding after image %d until %s appears", index, path)
    deadline = time.time() + 300
    while not Path(path).exists() and time.time() < deadline:
        time.sleep(0.1)
    Path(path).unlink(missing_ok=True)


def scripted_validation_loss(index: int) -> float | None:
    """The test suite's scripted validation curve: the ``index``-th (from 0) validation loss, if scripted."""
    script = [float(v) for v in os.environ.get(VALIDATION_LOSSES, "").split(",") if v.strip()]
    if index < len(script):
        log.warning("test fault: validation %d reports the scripted loss %g", index + 1, script[index])
        return script[index]
    return None


def cpu_loss_scaling() -> bool:
    return os.environ.get(CPU_GRAD_SCALER) == "1"


def install_cpu_grad_scaler(accelerator) -> None:
    """Give accelerate the GradScaler it would make for fp16 on a GPU, on the CPU. Call it after the model is
    prepared (so its forward is not wrapped in fp16 autocast) and before the optimizer is."""
    import torch

    accelerator.scaler = torch.amp.GradScaler("cpu")
    accelerator.native_amp = True
    log.warning("test fault: fp16 loss scaling simulated on the CPU (initial scale %g)",
                accelerator.scaler.get_scale())


def overflow_steps() -> set[int]:
    return {int(s) for s in os.environ.get(OVERFLOW_STEPS, "").split(",") if s.strip()}


def overflow_gradients(params: list[torch.nn.Parameter]) -> None:
    """Make one gradient infinite, as an fp16 overflow in the backward pass does."""
    for p in params:
        if p.grad is not None:
            p.grad.view(-1)[0] = float("inf")
            return
