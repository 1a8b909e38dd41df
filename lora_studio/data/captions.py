"""Caption files: read them in whatever encoding they were saved, and vary them per step as sd-scripts does."""

from __future__ import annotations

import random
from pathlib import Path

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))


def read_caption(path: Path) -> str:
    """Text of a caption file: UTF-8 (with or without BOM), UTF-16 with BOM, Shift-JIS (cp932) or cp1252."""
    data = path.read_bytes()
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            text = data[len(bom):].decode(encoding, errors="replace")
            break
    else:
        for encoding in ("utf-8", "cp932", "cp1252"):
            try:
                text = data.decode(encoding)
                break
            except UnicodeDecodeError:
                continue
        else:
            text = data.decode("utf-8", errors="replace")
    # Multi-line captions: sd-scripts uses the first non-empty line.
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return lines[0] if lines else ""


def vary_caption(caption: str, rng: random.Random, shuffle: bool, keep_tokens: int, dropout_rate: float,
                 tag_dropout_rate: float) -> str:
    """One training-time version of ``caption``: maybe dropped whole, tags maybe dropped and shuffled.

    The first ``keep_tokens`` comma-separated tags always stay first.
    """
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    if not (shuffle or tag_dropout_rate > 0):
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    fixed, rest = tags[:keep_tokens], tags[keep_tokens:]
    if tag_dropout_rate > 0:
        rest = [t for t in rest if rng.random() >= tag_dropout_rate]
    if shuffle:
        rng.shuffle(rest)
    return ", ".join(fixed + rest)
