"""A run's live state, read from the engine's events file (``<output_name>_events.jsonl``) and its log.

A comparison job (``lora-studio compare``) writes the same kind of file (``<name>_compare_events.jsonl``): its images
count as its steps, and its grids are listed. A LoRA tool's job (``lora-studio lora ... --events``) adds phases, each
with its own count of steps."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LiveState:
    total_steps: int = 0
    total_epochs: int = 0
    step: int = 0
    epoch: int = 0
    started_at: float | None = None
    last_time: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    lr: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    validations: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    best: dict | None = None  # the lowest validation loss: {loss, epoch, step}
    paused: bool = False  # waiting in place (Pause), the model in memory
    tests: list[dict] = field(default_factory=list)  # answered test requests: {id, images, error, step}
    samples: list[dict] = field(default_factory=list)  # {epoch, step, path, prompt}
    saves: list[str] = field(default_factory=list)
    end: dict | None = None
    error: dict | None = None
    skipped: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)  # a comparison job's images: {path, file, strength, grid}
    grids: list[dict] = field(default_factory=list)  # a comparison job's grids: {grid, path, prompt}
    phase: str = ""  # a LoRA tool's current part of the work (its steps count that part)

    @property
    def steps_per_s(self) -> float | None:
        if self.started_at is None or self.last_time is None or self.step == 0:
            return None
        elapsed = self.last_time - self.started_at
        return self.step / elapsed if elapsed > 0 else None


class EventsFollower:
    """Reads the events a run appends to its file, from the offset the file had when the run was launched."""

    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self.state = LiveState()

    def update(self) -> LiveState:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return self.state
        end = chunk.rfind(b"\n")
        if end < 0:
            return self.state
        self.offset += end + 1
        for line in chunk[: end + 1].decode("utf-8", errors="replace").splitlines():
            try:
                self._apply(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
        return self.state

    def _apply(self, event: dict) -> None:
        s, kind = self.state, event.get("type")
        if kind == "start" and "total_images" in event:  # a comparison job: its images stand for steps
            s.total_steps, s.started_at = event["total_images"], event.get("time")
        elif kind == "start":
            s.total_steps, s.total_epochs = event["total_steps"], event["total_epochs"]
            s.started_at = event.get("time")
            s.skipped = list(event.get("skipped") or [])
        elif kind == "step":
            s.step, s.epoch = event["step"], event["epoch"]
            s.last_time = event.get("time")
            s.samples_per_s, s.eta_s, s.lr = event.get("samples_per_s"), event.get("eta_s"), event.get("lr")
            if event.get("loss") is not None:  # null: a step the guard skipped (non-finite loss)
                s.losses.append((event["step"], event["loss"]))
        elif kind == "phase":
            s.phase, s.total_steps, s.step = event.get("name", ""), event.get("total", 0), 0
        elif kind == "validation":
            s.validations.append((event["step"], event["loss"]))
            if event.get("improved"):
                s.best = {"loss": event["loss"], "epoch": event.get("epoch"), "step": event["step"]}
        elif kind == "paused":
            s.paused = True
        elif kind == "resumed":
            s.paused = False
        elif kind == "test":
            s.tests.append({k: event.get(k) for k in ("id", "images", "error", "step", "epoch")})
        elif kind == "image":
            s.step, s.last_time = event.get("index", s.step + 1), event.get("time")
            s.eta_s = event.get("eta_s")
            s.images.append({k: event.get(k) for k in ("path", "file", "strength", "grid")})
        elif kind == "grid":
            s.grids.append({k: event.get(k) for k in ("grid", "path", "prompt")})
        elif kind == "sample":
            s.samples.append({k: event.get(k) for k in ("epoch", "step", "path", "prompt")})
        elif kind == "save":
            s.saves.append(event["path"])
        elif kind == "end":
            s.end = event
        elif kind == "error":
            s.error = event


def smoothed(values: list[float], weight: float = 0.9) -> list[float]:
    """TensorBoard-style exponential smoothing, debiased so the first points are not pulled to 0."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def log_tail(path: str | Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last lines of a log, with tqdm's carriage-return redraws reduced to their final state."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    out = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
           for line in text.split("\n")]
    return "\n".join(out[-lines:]).rstrip()


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
