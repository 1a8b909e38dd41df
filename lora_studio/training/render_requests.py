"""The files a paused run is asked to render through (``<output_name>.tests/<id>.json``) and answers with
(``<id>.done.json``), without torch: the engine (``training.pause``) and the GUI's Test tab share them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..io_utils import atomic_write_bytes

POLL_SECONDS = 0.25


@dataclass
class RenderRequest:
    """Prompts x seeds x strengths to render on the paused run's weights."""
    prompts: list[str]
    negative: str = ""
    seeds: list[int] = field(default_factory=lambda: [1])
    strengths: list[float] = field(default_factory=lambda: [1.0])
    sampler: str = "euler_a"
    steps: int = 20
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0

    @classmethod
    def read(cls, path: Path) -> RenderRequest:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            request = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"test request {path.name} could not be read: {exc}") from None
        if not request.prompts or not all(isinstance(p, str) and p.strip() for p in request.prompts):
            raise UserError(f"test request {path.name}: no prompt")
        if request.width % 8 or request.height % 8:
            raise UserError(f"test request {path.name}: width and height must be multiples of 8")
        return request

    def write(self, path: Path) -> Path:
        atomic_write_bytes(path, json.dumps(self.__dict__).encode("utf-8"))
        return path


def pending_tests(folder: Path) -> list[Path]:
    """Requests without an answer yet, oldest first."""
    if not folder.is_dir():
        return []
    asked = [p for p in folder.glob("*.json") if not p.name.endswith(".done.json")]
    return sorted((p for p in asked if not p.with_name(p.stem + ".done.json").exists()),
                  key=lambda p: (p.stat().st_mtime, p.name))


def answer(request_path: Path, images: list[dict], error: str | None = None) -> Path:
    done = request_path.with_name(request_path.stem + ".done.json")
    atomic_write_bytes(done, json.dumps({"images": images, "error": error}).encode("utf-8"))
    return done
