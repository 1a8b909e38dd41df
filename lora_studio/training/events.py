"""Progress of a run, for people and programs: a JSON-lines events file (the GUI tails it) and TensorBoard scalars.

Events (one JSON object a line, each with ``type`` and ``time``):
  start   {total_steps, total_epochs, steps_per_epoch, num_images, output}
  step    {step, epoch, loss, avg_loss, lr, samples_per_s, eta_s, [bad]}: loss is the mean over all processes;
          bad is "loss" (loss then null) or "gradients" for a step the step guard counted as non-finite
  sample  {step, epoch, path, prompt}
  save    {step, epoch, path}
  log     {level, message}
  end     {status: "completed" | "stopped", step, epoch, output, seconds}, or {status: "killed"} when a second
          stop request (Ctrl+C twice, SIGTERM twice) ends the engine at once
  error   {message, kind}
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class EventLog:
    def __init__(self, path: Path | None, logging_dir: str | None = None, enabled: bool = True):
        self.path = path if enabled else None
        self._fh = None
        self._tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        if enabled and logging_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=logging_dir)

    def emit(self, event_type: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"type": event_type, "time": round(time.time(), 3), **fields}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_events(path: str | Path) -> list[dict]:
    """All complete events of a file (a line still being written is left out)."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                events.append(json.loads(line))
    return events
