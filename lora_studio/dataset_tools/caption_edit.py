"""Caption editing for a folder of images: pages of images with their captions, one caption edited, and bulk tag
changes (add, remove, replace, move to the front) across the folder, with a tag frequency table.

Every write is atomic (a caption is always either its old or its new text, even if the process is killed), and every
change can be undone: before a change touches any caption, the captions it will change are copied to
``<folder>/.caption_backups/<time>/`` with a ``change.json`` naming the change and the files (written last, so a
backup without it is incomplete and never restored). ``undo_last`` puts the newest backup's captions back. Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data.images import is_image_file
from ..errors import UserError
from ..io_utils import atomic_write_bytes

BACKUPS = ".caption_backups"
OPERATIONS = ("add", "remove", "replace", "front")


@dataclass
class Captioned:
    image: Path
    caption_file: Path
    caption: str | None  # None: no caption file


def split_tags(caption: str, separator: str = ",") -> list[str]:
    return [t.strip() for t in caption.replace("\n", " ").split(separator) if t.strip()]


def join_tags(tags: list[str], separator: str = ", ") -> str:
    return separator.join(tags)


def _folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"Caption folder not found: {folder}")
    return path.resolve()


def images_with_captions(folder: str | Path, extension: str = ".txt", recursive: bool = False) -> list[Captioned]:
    """The folder's images in name order, each with its caption (None when it has no caption file)."""
    root = _folder(folder)
    if not extension.startswith("."):
        raise UserError(f"Caption extension must start with a dot, e.g. .txt (got {extension!r})")
    paths = root.rglob("*") if recursive else root.iterdir()
    out = []
    for image in sorted(p for p in paths if p.is_file() and is_image_file(p) and BACKUPS not in p.parts):
        caption_file = image.with_suffix(extension)
        text = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        out.append(Captioned(image, caption_file, text))
    return out


def page(items: list[Captioned], number: int, per_page: int) -> list[Captioned]:
    """Page ``number`` (from 1; past the last: the last)."""
    pages = max(1, -(-len(items) // per_page))
    number = min(max(1, number), pages)
    return items[(number - 1) * per_page: number * per_page]


def tag_frequency(items: list[Captioned], search: str = "") -> list[tuple[str, int]]:
    """Each tag with the number of captions holding it, most frequent first; ``search`` keeps tags containing it."""
    counts = Counter(t for item in items for t in dict.fromkeys(split_tags(item.caption or "")))
    needle = search.strip().lower()
    return sorted(((t, n) for t, n in counts.items() if needle in t.lower()), key=lambda kv: (-kv[1], kv[0]))


def apply_operation(tags: list[str], operation: str, tag: str, new_tag: str = "", at_front: bool = False) -> list[str]:
    """One bulk operation on one caption's tags (duplicates are never made)."""
    if operation == "add":
        if tag in tags:
            return tags
        return [tag, *tags] if at_front else [*tags, tag]
    if operation == "remove":
        return [t for t in tags if t != tag]
    if operation == "replace":
        out: list[str] = []
        for t in tags:
            t = new_tag if t == tag else t
            if t not in out:
                out.append(t)
        return out
    if operation == "front":
        return [tag, *[t for t in tags if t != tag]] if tag in tags else tags
    raise UserError(f"Unknown tag operation {operation!r}; choose one of {', '.join(OPERATIONS)}")


def _backup(root: Path, changes: dict[Path, str], description: str) -> Path:
    """Copy the captions about to change (a missing one is recorded as missing), then the manifest, last."""
    folder = root / BACKUPS / (time.strftime("%Y%m%d-%H%M%S-") + f"{time.time_ns() % 10**9:09d}")
    folder.mkdir(parents=True)
    files = []
    for number, caption_file in enumerate(changes):
        saved = None
        if caption_file.is_file():
            saved = f"{number:05d}.txt"
            shutil.copy2(caption_file, folder / saved)
        files.append({"file": str(caption_file.relative_to(root)), "saved": saved})
    atomic_write_bytes(folder / "change.json", json.dumps({"change": description, "time": time.time(),
                                                           "files": files}, indent=1).encode("utf-8"))
    return folder


def _write_all(changes: dict[Path, str]) -> None:
    delay = float(os.environ.get("LORA_STUDIO_TEST_CAPTION_WRITE_DELAY", "0"))  # tests: time to kill mid-change
    for caption_file, text in changes.items():
        atomic_write_bytes(caption_file, (text + "\n").encode("utf-8"))
        if delay:
            time.sleep(delay)


def edit_caption(folder: str | Path, image: str | Path, text: str, extension: str = ".txt") -> Path:
    """Set one image's caption (undoable)."""
    root = _folder(folder)
    image = Path(image).expanduser().resolve()
    if root not in image.parents or not image.is_file():
        raise UserError(f"{image} is not an image in {root}")
    caption_file = image.with_suffix(extension)
    text = " ".join(text.split("\n")).strip()
    _backup(root, {caption_file: text}, f"edit {image.name}")
    _write_all({caption_file: text})
    return caption_file


def bulk_edit(folder: str | Path, operation: str, tag: str, new_tag: str = "", at_front: bool = False,
              extension: str = ".txt", recursive: bool = False) -> list[Path]:
    """Apply one tag operation to every caption of the folder; returns the caption files that changed. Images
    without a caption get one only from ``add``."""
    tag, new_tag = tag.strip(), new_tag.strip()
    if not tag or "," in tag or (operation == "replace" and (not new_tag or "," in new_tag)):
        raise UserError("Give one tag (without commas)" + (" and its replacement" if operation == "replace" else ""))
    root = _folder(folder)
    changes: dict[Path, str] = {}
    for item in images_with_captions(root, extension, recursive):
        if item.caption is None and operation != "add":
            continue
        old = split_tags(item.caption or "")
        new = apply_operation(old, operation, tag, new_tag, at_front)
        if new != old or item.caption is None:
            changes[item.caption_file] = join_tags(new)
    if changes:
        what = {"add": f"add '{tag}'", "remove": f"remove '{tag}'", "replace": f"replace '{tag}' with '{new_tag}'",
                "front": f"move '{tag}' to the front"}[operation]
        _backup(root, changes, what)
        _write_all(changes)
    return list(changes)


def backups(folder: str | Path) -> list[tuple[Path, dict]]:
    """The complete backups, newest first, each with its manifest."""
    root = _folder(folder) / BACKUPS
    out = []
    for entry in sorted(root.glob("*/change.json"), reverse=True):
        try:
            out.append((entry.parent, json.loads(entry.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    return out


def undo_last(folder: str | Path) -> str:
    """Put back the captions of the newest change (a caption that did not exist before is removed); the backup is
    then deleted. Returns what was undone."""
    root = _folder(folder)
    found = backups(root)
    if not found:
        raise UserError(f"Nothing to undo in {root}")
    backup, manifest = found[0]
    for entry in manifest["files"]:
        target = root / entry["file"]
        if entry["saved"]:
            atomic_write_bytes(target, (backup / entry["saved"]).read_bytes())
        else:
            target.unlink(missing_ok=True)
    shutil.rmtree(backup)
    return f"Undid: {manifest['change']} ({len(manifest['files'])} caption(s))"
