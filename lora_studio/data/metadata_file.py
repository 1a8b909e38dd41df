"""sd-scripts' fine-tuning metadata (``in_json`` / a subset's ``metadata_file``): the images and their captions.

The file is a JSON object of image key -> {"caption": ..., "tags": ...} as sd-scripts' merge_captions_to_metadata and
merge_dd_tags_to_metadata write it (a key is an image's name without extension, or its full path), or JSON lines of
{"image_path": ..., "caption": ..., "tags": ...}. The caption an image trains with is its caption, then its tags
after the caption separator; with enable_wildcard each caption line gets the tags.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .images import IMAGE_EXTENSIONS


def read_metadata(path: Path) -> dict[str, dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            return {row["image_path"]: row for row in rows}
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"metadata file {path} could not be read: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UserError(f"metadata file {path} is not sd-scripts' fine-tuning JSON (an object of image name -> "
                        "{\"caption\": ..., \"tags\": ...})")
    return data


def _image_path(key: str, image_dir: Path | None) -> Path | None:
    """The image a key names: a full path, or a name in the image folder with or without its extension."""
    candidates = [Path(key)] if Path(key).is_absolute() else []
    if image_dir is not None:
        base = image_dir / key
        candidates += [base] + [base.with_name(base.name + ext) for e in IMAGE_EXTENSIONS for ext in (e, e.upper())]
    return next((c for c in candidates if c.is_file() and c.suffix.lower() in IMAGE_EXTENSIONS), None)


def metadata_captions(path: Path, image_dir: Path | None, separator: str, wildcard: bool) -> list[tuple[Path, list[str]]]:
    """(image path, caption lines) for every image the metadata file names, sorted by path."""
    entries, missing = [], []
    for key, record in read_metadata(path).items():
        image = _image_path(key, image_dir)
        if image is None:
            missing.append(key)
            continue
        caption, tags = str(record.get("caption") or ""), record.get("tags")
        lines = [line.strip() for line in caption.split("\n") if line.strip()] if wildcard else [caption.strip()]
        if tags:
            tags = str(tags).replace("\n", separator) if wildcard else str(tags)
            lines = [f"{line}{separator}{tags}" if line else tags for line in (lines or [""])]
        entries.append((image, lines))
    if missing:
        where = f" in {image_dir}" if image_dir is not None else ""
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"metadata file {path}: no image found{where} for {len(missing)} entr"
                        f"{'y' if len(missing) == 1 else 'ies'}: {shown}")
    if not entries:
        raise UserError(f"metadata file {path} names no image")
    return sorted(entries, key=lambda e: str(e[0]))
