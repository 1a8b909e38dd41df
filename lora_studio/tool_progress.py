"""Progress of a tool (``lora-studio lora|caption|dataset``): tqdm in the terminal and, with ``--events FILE``, an
events file the GUI follows.

The events file has the training engine's form (``training.events``), one JSON object a line:
  start   {tool, total_steps: 0, total_epochs: 0}
  phase   {name, total}          a new part of the work (loading, resizing, writing); its steps count from 0
  step    {step, epoch: 0, phase} one unit of the current phase done
  end     {status: "completed", output, report}
  error   {message, kind}
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

from .io_utils import atomic_write_bytes
from .training.events import EventLog, reported

T = TypeVar("T")
_events: EventLog | None = None


def report_to(path: str | Path | None) -> EventLog | None:
    """Send the progress of this process's tools to an events file (None: the terminal only)."""
    global _events
    if _events is not None:
        _events.close()
    _events = EventLog(Path(path)) if path else None
    return _events


def emit(event_type: str, **fields) -> None:
    if _events is not None:
        _events.emit(event_type, **fields)


def phase(name: str, total: int = 0) -> None:
    """A part of the work without counted steps (``total`` 0), e.g. loading a model."""
    emit("phase", name=name, total=total)


def track(items: Iterable[T], desc: str, unit: str = "module", show: bool = True,
          total: int | None = None) -> Iterator[T]:
    """``items`` with a tqdm bar (``show``) and a step event each."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = len(items) if total is None else total
    phase(desc, total)
    bar = tqdm(items, desc=desc, unit=unit, total=total, disable=not show, file=sys.stderr)
    for done, item in enumerate(bar, 1):
        yield item
        emit("step", step=done, epoch=0, phase=desc)


def run_tool(name: str, events: str | None, report: str | None, work: Callable[[], tuple[Path | None, dict]]) -> int:
    """Run a tool's ``work`` (it returns the file it wrote, or None, and its report, whose ``text`` is printed) with
    its start, end or error in the ``events`` file, and the report written to ``report`` as JSON."""
    log = report_to(events) or EventLog(None)
    try:
        with reported(log, {"status": "stopped"}):
            emit("start", tool=name, total_steps=0, total_epochs=0)
            out, result = work()
            print(result["text"])
            if report:
                atomic_write_bytes(Path(report), json.dumps(result, indent=1, default=str).encode("utf-8"))
            emit("end", status="completed", output=str(out) if out else None, report=report)
    finally:
        report_to(None)
    return 0
