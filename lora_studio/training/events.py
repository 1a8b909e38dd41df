"""Progress of a run, for people and programs: a JSON-lines events file (the GUI tails it) and TensorBoard scalars.

Events (one JSON object a line, each with ``type`` and ``time``):
  start   {total_steps, total_epochs, steps_per_epoch, num_images, output, estimate: {ram, vram, vram_phases}
          bytes (the GPU estimate of each phase: loading and caching, training) or null}
  step    {step, epoch, loss, avg_loss, lr, samples_per_s, eta_s, [bad]}: loss is the mean over all processes;
          bad is "loss" (loss then null) or "gradients" for a step the step guard counted as non-finite
  sample  {step, epoch, path, prompt, index}
  save    {step, epoch, path}
  log     {level, message}
  memory  {phase, rss, peak, gpu_peak}: bytes of host RAM held after a phase of the set-up or the first step, the
          most held so far, and the GPU's peak during that phase (null without CUDA)
  end     {status: "completed" | "stopped", step, epoch, output, seconds, peak_ram, peak_gpu (the whole run),
          peak_gpu_training (from the first step on)}, or
          {status: "killed"} when a second stop request (Ctrl+C twice, SIGTERM twice) ends the engine at once
  error   {message, kind}
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError


class EventLog:
    """The events file, and the scalars (and sample images) for the trackers of ``log_with``."""

    def __init__(self, path: Path | None, trackers=None, enabled: bool = True):
        self.path = path if enabled else None
        self._fh = None
        self._trackers = trackers if enabled else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")

    def emit(self, event_type: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"type": event_type, "time": round(time.time(), 3), **fields}
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        if event_type == "sample" and self._trackers is not None:
            self._trackers.image(fields["step"], fields["path"], fields.get("prompt", ""), fields.get("index", 0))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._trackers is not None:
            self._trackers.scalars(step, values)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._trackers is not None:
            self._trackers.close()
            self._trackers = None


@contextlib.contextmanager
def reported(events: EventLog, interrupted: dict[str, Any],
             translated: tuple[tuple[type, str, Callable[[BaseException], str]], ...] = ()) -> Iterator[EventLog]:
    """The end of a piece of work (a training run, a comparison, a tool) in its events file, however it ends: an
    interruption (Ctrl+C) is an ``end`` event with ``interrupted``'s fields; an error is an ``error`` event, of kind
    ``config`` for a UserError (what the user can fix), else the exception's class name; ``translated``: (exception
    class, kind, message) for errors told to the user as a UserError with that message. The file is closed after."""
    try:
        yield events
    except KeyboardInterrupt:
        events.emit("end", **interrupted)
        raise
    except Exception as exc:
        for cls, kind, message in translated:
            if isinstance(exc, cls):
                events.emit("error", kind=kind, message=message(exc))
                raise UserError(message(exc)) from exc
        events.emit("error", kind="config" if isinstance(exc, UserError) else type(exc).__name__, message=str(exc))
        raise
    finally:
        events.close()


def read_events(path: str | Path) -> list[dict]:
    """All complete events of a file (a line still being written is left out)."""
    events = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                events.append(json.loads(line))
    return events
