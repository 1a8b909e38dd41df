"""Prompt lines in sd-scripts' sample-prompt format (``--n --w --h --d --s --l --g --ss``, and for the flow-matching
transformers ``--fs`` flow shift, ``--ctr`` CFG truncation and ``--rcfg`` CFG renormalisation), without torch: read by
the engine's sample images and by the GUI's Test tab."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

_OPTION = re.compile(r"^(n|w|h|d|s|l|g|ss|fs|ctr|rcfg)\s+(.*)$", re.DOTALL)


def prompt_options(line: str) -> tuple[str, list[tuple[str, str]]]:
    """A line's prompt text and its known options in order (sd-scripts ignores options it does not know; a repeated
    one: the last wins)."""
    parts = re.split(r"\s--", " " + line.strip())
    options = []
    for part in parts[1:]:
        match = _OPTION.match(part.strip())
        if match:
            options.append((match[1], match[2].strip()))
    return parts[0].strip(), options


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    steps: int = 30
    cfg_scale: float | None = None  # --l: classifier-free guidance (None: the family's default, 7.5 for SD)
    sampler: str | None = None
    guidance: float | None = None  # --g: Flux dev's embedded guidance (None: 3.5, as sd-scripts' samples)
    flow_shift: float | None = None  # --fs: the sampling schedule's shift (SD3, Anima, Lumina 2; None: the family's)
    cfg_trunc_ratio: float | None = None  # --ctr: Lumina 2 applies CFG only below this share of the time (0.25)
    renorm_cfg: float | None = None  # --rcfg: Lumina 2's CFG renormalisation (1.0)


def parse_prompt_line(line: str, default_size: int, pixel_multiple: int = 8,
                      default_steps: int = 30) -> SamplePrompt | None:
    """One prompt line; sizes are rounded down to ``pixel_multiple`` (the family's: 8, or 16 for Flux), the steps
    without --s are ``default_steps`` (the family's: sd-scripts' 30 for SD, 20 for Flux, 36 for Lumina 2 ...)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    text, options = prompt_options(line)
    sample = SamplePrompt(prompt=text, width=default_size, height=default_size, steps=default_steps)
    for key, value in options:
        try:
            if key == "n":
                sample.negative = value
            elif key == "w":
                sample.width = int(value)
            elif key == "h":
                sample.height = int(value)
            elif key == "d":
                sample.seed = int(value)
            elif key == "s":
                sample.steps = max(1, min(1000, int(value)))
            elif key == "l":
                sample.cfg_scale = float(value)
            elif key == "g":
                sample.guidance = float(value)
            elif key == "ss":
                sample.sampler = value
            elif key == "fs":
                sample.flow_shift = float(value)
            elif key == "ctr":
                sample.cfg_trunc_ratio = float(value)
            elif key == "rcfg":
                sample.renorm_cfg = float(value)
        except ValueError:
            raise UserError(f"sample_prompts: option --{key} needs a number, got '{value}' in: {line}") from None
    sample.width -= sample.width % pixel_multiple
    sample.height -= sample.height % pixel_multiple
    return sample


def read_prompt_lines(path: str | Path) -> list[str]:
    """A prompt file's lines, decoded as the engine reads them (comments and empty lines too)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sample_prompts: file not found: {path}")
    return _decode_lines(path.read_bytes())


def read_prompt_file(path: str | Path, default_size: int, pixel_multiple: int = 8,
                     default_steps: int = 30) -> list[SamplePrompt]:
    lines = read_prompt_lines(path)
    prompts = [p for p in (parse_prompt_line(line, default_size, pixel_multiple, default_steps) for line in lines)
               if p is not None]
    if not prompts:
        raise UserError(f"sample_prompts: no prompt in {path} (one prompt a line; # starts a comment)")
    return prompts


def _decode_lines(data: bytes) -> list[str]:
    for encoding in ("utf-8-sig", "cp932", "cp1252"):
        try:
            return data.decode(encoding).splitlines()
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace").splitlines()


