"""The step guard: one decision per optimizer step, the same in every process.

Each step's loss, whether the loss and the gradients are finite, and whether a stop was asked for are reduced over
all processes in one collective, so every process sees the same numbers and decides the same way; nobody skips a
reduction the others enter. Then:

- fp16 with a GradScaler: the scaler sees every step. A gradient overflow it handles (it skips the step and lowers
  the scale) is its business, not a sign of divergence; one that persists once the scale is at its floor is.
- no scaler, loss read back every step: a step with a non-finite loss or gradients is skipped (the weights stay good).
  A fused optimizer (AdamW, the default) skips it on the device (its ``found_inf``, as a GradScaler uses it), so the
  host never waits in the middle of a step and reads each step's check back one step late; another optimizer is
  told after a host sync.
- no scaler, loss read back every N steps (``sync_every_n_steps``): the decision is made on the device, with no host
  sync: a bad step's gradients are zeroed before the optimizer step, and it is counted when the values are read back.

Three bad steps in a row mean the run diverged: it stops with advice (``nan_policy = "stop"``), or goes back to the
last good weights with half the learning rate (``"rollback"``, up to three times).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from ..config import Config

log = logging.getLogger("lora_studio")

BAD_STEPS_IN_A_ROW = 3
MAX_ROLLBACKS = 3
# Below this loss scale the gradients are no longer scaled up: an overflow there is the model's, not the scaler's.
SCALE_FLOOR = 1.0


class Diverged(Exception):
    """Three optimizer steps in a row with a non-finite loss or gradients."""

    def __init__(self, step: int, why: str, cfg: Config):
        tips = [f"lower the learning rate (now {cfg.learning_rate:g})"]
        if cfg.mixed_precision == "fp16":
            tips.append("use mixed_precision = \"bf16\" (or \"no\") instead of fp16")
        if cfg.nan_policy != "rollback":
            tips.append("or set nan_policy = \"rollback\" to continue from the last good weights")
        super().__init__(f"training diverged at step {step}: the {why} stayed non-finite for {BAD_STEPS_IN_A_ROW} "
                         f"steps, so the run stopped. The files saved so far are intact; the final file was not "
                         f"written. To fix: {'; '.join(tips)}")


@dataclass
class StepCheck:
    """One optimizer step as every process saw it, still on the device until it is read back."""
    step: int
    values: torch.Tensor  # summed over processes: [loss, non-finite losses, non-finite gradients, stop requests]
    scaler_handled: bool = False  # fp16: the scaler skipped an overflow while the scale was above its floor
    lrs: list | None = None  # the learning rates this step trained with, one per parameter group


@dataclass
class StepVerdict:
    step: int
    loss: float | None  # mean over processes; None when it was not finite
    bad: str | None  # "loss" or "gradients" when the step counts towards divergence
    stop: bool  # some process was asked to stop
    lrs: list | None = None  # the learning rates it trained with (Adafactor's schedule gives tensors)


class StepGuard:
    def __init__(self, accelerator, optimizer, lr_scheduler, params: list[torch.nn.Parameter], network,
                 cfg: Config):
        self.accelerator, self.optimizer, self.lr_scheduler = accelerator, optimizer, lr_scheduler
        self.params, self.network, self.cfg = params, network, cfg
        self.scaler = accelerator.scaler
        self.deferred = cfg.sync_every_n_steps > 1 and self.scaler is None
        self.skips_on_device = self.scaler is None and not self.deferred and _skips_on_device(optimizer)
        self.bad_in_a_row = 0
        self.rollbacks = 0
        self._snapshot = None
        self._last_queued = 0  # the last step handed to the optimizer
        self._stale_through = 0  # steps up to this one ran on weights a rollback has replaced

    # ---------------------------------------------------------------- on the device, every optimizer step
    def optimizer_step(self, step: int, loss: torch.Tensor, stop_wanted: bool) -> StepCheck:
        """Clip, check, and step (or not) once the gradients of ``step`` are complete and synchronised."""
        grad_norm = self._grad_norm()
        loss = loss.detach().float().reshape(())
        stop = torch.full((), float(stop_wanted), device=loss.device)  # a fill, not a copy: no host sync
        local = torch.stack([loss, (~torch.isfinite(loss)).float(), (~torch.isfinite(grad_norm)).float(), stop])
        values = self.accelerator.reduce(local, reduction="sum") if self.accelerator.num_processes > 1 else local
        check = StepCheck(step, values, lrs=list(self.lr_scheduler.get_last_lr()))
        self._last_queued = step
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.optimizer.step()  # the scaler skips a step whose gradients overflowed, and lowers its scale
            # told by the scale, not by accelerate's step_was_skipped: a fused optimizer is always called by the
            # scaler (its kernel does the skipping), so accelerate would take every step for done
            skipped = self.scaler.get_scale() < scale
            check.scaler_handled = skipped and scale > SCALE_FLOOR
            stepped = not skipped
        elif self.deferred:
            self._zero_gradients_unless((values[1] + values[2]) == 0)
            self.optimizer.step()
            stepped = True
        elif self.skips_on_device:  # the fused kernel leaves the weights and its state as they were when bad > 0
            inner = _inner(self.optimizer)
            inner.found_inf = (values[1] + values[2]).clamp(max=1.0)
            try:
                self.optimizer.step()
            finally:
                del inner.found_inf
            stepped = True
        else:
            stepped = not bool(values[1:3].sum().item())  # a host sync, this mode's choice
            if stepped:
                self.optimizer.step()
        if stepped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return check

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' total norm (non-finite if any gradient is), clipped to max_grad_norm when set. Under fp16
        the gradients are unscaled first."""
        if self.cfg.max_grad_norm:
            return self.accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm).float()
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.params[0].device)
        return torch.nn.utils.get_total_norm(grads, foreach=True).float()  # one kernel, on a CPU too

    def _zero_gradients_unless(self, ok: torch.Tensor) -> None:
        scale = ok.to(torch.float32)
        for p in self.params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
                p.grad.mul_(scale.to(p.grad.dtype))

    # ---------------------------------------------------------------- on the host, when values are read back
    def judge(self, checks: list[StepCheck]) -> list[StepVerdict]:
        """Read the checks back in one transfer and count bad steps; stop or roll back after three in a row."""
        if not checks:
            return []
        rows = torch.stack([c.values for c in checks]).cpu().tolist()
        world = self.accelerator.num_processes
        verdicts, rolled_back = [], False
        for check, (loss_sum, bad_losses, bad_grads, stops) in zip(checks, rows):
            bad = "loss" if bad_losses else ("gradients" if bad_grads and not check.scaler_handled else None)
            verdict = StepVerdict(check.step, loss_sum / world if not bad_losses else None, bad, stops > 0, check.lrs)
            verdicts.append(verdict)
            if check.scaler_handled:
                log.info("step %d: fp16 gradients overflowed; the loss scale drops to %g and the step is skipped",
                         check.step, self.scaler.get_scale())
            if rolled_back or check.step <= self._stale_through:  # from weights that are gone now: reported only
                continue
            if bad is None:
                self.bad_in_a_row = 0
                continue
            self.bad_in_a_row += 1
            log.warning("step %d: non-finite %s; %s (%d in a row)", check.step, bad,
                        "trained on zeroed gradients" if self.deferred else "step skipped", self.bad_in_a_row)
            if self.bad_in_a_row >= BAD_STEPS_IN_A_ROW:
                self._rollback_or_raise(check.step, bad)
                rolled_back = True
        return verdicts

    def _rollback_or_raise(self, step: int, why: str) -> None:
        if self.cfg.nan_policy != "rollback" or self._snapshot is None or self.rollbacks >= MAX_ROLLBACKS:
            raise Diverged(step, why, self.cfg)
        self.rollbacks += 1
        self.bad_in_a_row = 0
        self._stale_through = self._last_queued
        back_to, weights, optim_state, sched_state = self._snapshot
        self.network.load_state_dict(weights)
        self.optimizer.load_state_dict(optim_state)
        self.lr_scheduler.load_state_dict(sched_state)
        self.lr_scheduler.base_lrs = [lr * 0.5 for lr in self.lr_scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            if group["lr"] is None:  # Adafactor with relative_step finds its step size itself
                continue
            group["lr"] *= 0.5
            if "initial_lr" in group:
                group["initial_lr"] *= 0.5
        log.warning("rolled back to the weights of step %d with half the learning rate (%s)", back_to,
                    ", ".join(f"{float(lr):.3g}" for lr in self.lr_scheduler.get_last_lr()))

    def take_snapshot(self, step: int) -> None:
        """An in-memory copy of the last good weights and optimizer, for nan_policy = "rollback"."""
        if self.cfg.nan_policy != "rollback":
            return
        self._snapshot = (step, {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
                          copy.deepcopy(self.optimizer.state_dict()), copy.deepcopy(self.lr_scheduler.state_dict()))


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def _skips_on_device(optimizer) -> bool:
    """torch's fused optimizers take ``found_inf`` and skip the whole step on the device when it is non-zero."""
    inner = _inner(optimizer)
    return bool(getattr(inner, "_step_supports_amp_scaling", False) and inner.defaults.get("fused"))
