"""What the run tells people and programs after each step: the progress bar, the step event (the GUI's progress,
loss chart and ETA) and TensorBoard scalars. Only the main process reports."""

from __future__ import annotations

import time

from .events import EventLog
from .guard import StepVerdict

AVERAGE_OVER = 50  # steps in the smoothed loss


class Reporter:
    def __init__(self, events: EventLog, lr_scheduler, group_names: list[str], total_steps: int, start_step: int,
                 samples_per_step: int, enabled: bool):
        from tqdm.auto import tqdm

        self.events, self.lr_scheduler, self.group_names = events, lr_scheduler, group_names
        self.total_steps, self.samples_per_step, self.enabled = total_steps, samples_per_step, enabled
        self.bar = tqdm(total=total_steps, initial=start_step, desc="steps", disable=not enabled, dynamic_ncols=True)
        self.losses: list[float] = []
        self.started, self.rate_from = time.time(), start_step

    @property
    def elapsed(self) -> float:
        return time.time() - self.started

    def step(self, verdict: StepVerdict, epoch: int) -> None:
        if not self.enabled:
            return
        if verdict.loss is not None:
            self.losses.append(verdict.loss)
        window = self.losses[-AVERAGE_OVER:]
        avg = sum(window) / len(window) if window else None
        elapsed = self.elapsed
        rate = (verdict.step - self.rate_from) / elapsed if elapsed > 0 else 0.0
        eta = (self.total_steps - verdict.step) / rate if rate > 0 else None
        lrs = [float(lr) for lr in verdict.lrs or self.lr_scheduler.get_last_lr()]  # Adafactor's: tensors
        if verdict.loss is not None:
            self.bar.set_postfix(loss=f"{verdict.loss:.4f}", avg=f"{avg:.4f}", epoch=epoch, refresh=False)
        self.bar.update(1)
        self.events.emit("step", step=verdict.step, epoch=epoch, loss=_rounded(verdict.loss), avg_loss=_rounded(avg),
                         lr=lrs[0], samples_per_s=round(rate * self.samples_per_step, 3),
                         eta_s=round(eta, 1) if eta is not None else None,
                         **({"bad": verdict.bad} if verdict.bad else {}))
        if verdict.loss is not None:
            scalars = {"loss/current": verdict.loss, "loss/average": avg}
            for name, lr in zip(self.group_names, lrs):
                scalars[f"lr/{'unet' if name == 'unet' else name.replace('text_encoder', 'textencoder')}"] = lr
            self.events.scalars(verdict.step, scalars)

    def close(self) -> None:
        self.bar.close()


def _rounded(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None
