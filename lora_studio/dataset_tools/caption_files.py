"""The caption files of a tagging or captioning run: which images, their caption paths, the modes (overwrite, append,
skip), dry runs and atomic writes.

An image's caption is the file of the same name with the caption extension (``a.png`` -> ``a.txt``), as sd-scripts
reads it. Modes, when the caption file exists and is not empty:
  overwrite  the new caption replaces it (Kohya's default)
  append     its text is kept and the new tags follow, those it already holds left out (as sd-scripts'
             --append_tags); for sentences, the new sentence follows the old text after the separator
  skip       it is left alone (the image is not even read)
A dry run writes nothing; each image's record says what would happen. Writes are atomic (a caption file is always its
old or its new text), UTF-8, with one trailing newline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..data.images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_rgb
from ..errors import UserError
from ..io_utils import atomic_write_bytes
from ..tool_progress import track

MODES = ("overwrite", "append", "skip")
R = TypeVar("R")


@dataclass
class Job:
    image: Path
    caption_file: Path
    old: str | None  # the existing caption, stripped; None when there is no caption file


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(folder: str | Path, extension: str = ".txt", recursive: bool = False) -> tuple[list[Job], list[str]]:
    """The folder's images in path order with their captions, and warnings (images left out, with why). Hidden files
    and folders (``.caption_backups``) are left out."""
    root = Path(folder).expanduser()
    if root.is_file():
        raise UserError(f"Image folder: {folder} is a file; give the folder of images")
    if not root.is_dir():
        raise UserError(f"Image folder not found: {folder}")
    if not extension.startswith(".") or len(extension) < 2:
        raise UserError(f"--caption_extension must start with a dot, e.g. .txt (got {extension!r})")
    if extension.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"--caption_extension {extension} is an image extension: the captions would overwrite images")
    paths = root.rglob("*") if recursive else root.iterdir()
    images = sorted(p for p in paths if is_image_file(p) and not _hidden(p, root))
    jobs: list[Job] = []
    warnings: list[str] = []
    owners: dict[Path, Path] = {}
    for image in images:
        caption_file = image.with_suffix(extension)
        if caption_file in owners:
            warnings.append(f"{image}: skipped, its caption file {caption_file.name} belongs to "
                            f"{owners[caption_file].name}")
            continue
        owners[caption_file] = image
        old = None
        if caption_file.is_file():
            try:
                old = caption_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                warnings.append(f"{image}: skipped, its caption {caption_file.name} cannot be read as UTF-8 text "
                                f"({exc.__class__.__name__}); left alone")
                continue
        jobs.append(Job(image, caption_file, old))
    return jobs, warnings


def split_tags(text: str, separator: str = ", ") -> list[str]:
    """Tags of a caption, split on the separator (stripped, e.g. ","), blanks dropped."""
    sep = separator.strip() or separator
    return [t.strip() for t in text.replace("\n", " ").split(sep) if t.strip()]


def append_tags(old: str | None, new: Sequence[str], separator: str = ", ", first: str | None = None) -> str:
    """The old caption's tags, then the new tags it lacks. ``first`` (the trigger word) leads when it is missing."""
    tags = split_tags(old or "", separator)
    if first and first not in tags:
        tags.insert(0, first)
    tags += [t for t in dict.fromkeys(new) if t not in tags]
    return separator.join(tags)


def append_text(old: str | None, new: str, separator: str = ", ") -> str:
    """The old text, the separator and the new sentence (the old text alone when it already holds the sentence)."""
    if not old:
        return new
    if new in old:
        return old
    head, sep = old.rstrip(), separator.strip()
    if sep and head.endswith(sep):
        head = head[: -len(sep)].rstrip()
    return f"{head}{separator}{new}"


def to_caption(jobs: list[Job], mode: str) -> tuple[list[Job], list[Job]]:
    """(the jobs to caption, the jobs skip mode leaves alone: a non-empty caption exists)."""
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    if mode != "skip":
        return jobs, []
    return [j for j in jobs if not j.old], [j for j in jobs if j.old]


def skipped_record(job: Job) -> dict:
    return {"image": str(job.image), "caption": job.old, "old": job.old, "action": "skipped"}


def settle(job: Job, caption: str, mode: str, dry_run: bool) -> dict:
    """Write ``caption`` for ``job`` (unless it is the old one, or a dry run); its record for the report."""
    if caption == job.old:
        action = "unchanged"
    elif dry_run:
        action = "would write"
    else:
        atomic_write_bytes(job.caption_file, (caption + "\n").encode("utf-8"))
        action = "appended" if mode == "append" and job.old else "written"
    return {"image": str(job.image), "caption": caption, "old": job.old, "action": action}


def in_batches(jobs: list[Job], batch_size: int, desc: str,
               infer: Callable[[list], list[R]]) -> Iterator[tuple[Job, R | None, str | None]]:
    """Each job with ``infer``'s result for its image (read with ``load_rgb``), ``batch_size`` images at a time, with
    a progress bar and step events (phase ``desc``). An unreadable image gives (job, None, warning)."""
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {batch_size})")
    batch: list[tuple[Job, object]] = []
    for number, job in enumerate(track(jobs, desc, unit="image"), 1):
        try:
            batch.append((job, load_rgb(job.image)))
        except UnreadableImage as exc:
            yield job, None, f"{job.image}: skipped, unreadable ({exc})"
        if batch and (len(batch) == batch_size or number == len(jobs)):
            results = infer([image for _, image in batch])
            for (done, _), result in zip(batch, results):
                yield done, result, None
            batch = []
