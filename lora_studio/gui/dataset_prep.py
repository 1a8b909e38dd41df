"""Dataset preparation: build the Kohya layout (img/N_name, reg/N_class, model/, log/) by copying the user's images.

The user's files are only ever read: images and their caption files are copied, never moved, and a file already in
the destination is kept (identical) or reported (different), never overwritten.
"""

from __future__ import annotations

import filecmp
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..data.images import is_image_file
from ..errors import UserError
from ..io_utils import atomic_write

CAPTION_SUFFIXES = (".txt", ".caption", ".cap")
_BAD = set('/\\:*?"<>|')


@dataclass
class PreparedFolders:
    root: Path
    img_dir: Path
    reg_dir: Path | None
    model_dir: Path
    log_dir: Path
    copied: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)

    def settings(self) -> dict[str, str]:
        """The Folders-tab settings that point at this layout."""
        values = {"train_data_dir": str(self.img_dir), "output_dir": str(self.model_dir),
                  "logging_dir": str(self.log_dir)}
        if self.reg_dir:
            values["reg_data_dir"] = str(self.reg_dir)
        return values

    def report(self) -> str:
        lines = [f"Created the training folders in {self.root}: copied {self.copied} file(s)"
                 + (f", {self.kept} already there" if self.kept else "") + ".",
                 f"- Image folder: {self.img_dir}"]
        if self.reg_dir:
            lines.append(f"- Regularisation folder: {self.reg_dir}")
        lines += [f"- Output directory: {self.model_dir}", f"- Logging folder: {self.log_dir}"]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def _check_name(text: str, what: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise UserError(f"{what} is empty: type the word(s) that will trigger the LoRA, e.g. 'emi'")
    if _BAD & set(text):
        raise UserError(f"{what} '{text}' must not contain any of / \\ : * ? \" < > |")
    return text


def _images_in(folder: str | Path, what: str) -> list[Path]:
    folder = Path(folder).expanduser()
    if not str(folder).strip() or not folder.is_dir():
        raise UserError(f"{what}: folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not images:
        raise UserError(f"{what}: no images (png, jpg, jpeg, webp, bmp) directly in {folder}")
    return images


def _copy_with_captions(images: list[Path], dest: Path, result: PreparedFolders) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for image in images:
        files = [image] + [image.with_suffix(s) for s in CAPTION_SUFFIXES if image.with_suffix(s).is_file()]
        for src in files:
            target = dest / src.name
            if target.exists():
                if target.is_file() and filecmp.cmp(src, target, shallow=False):
                    result.kept += 1
                    continue
                raise UserError(f"{target} already exists and differs from {src}; nothing was overwritten. "
                                "Choose an empty destination folder.")
            atomic_write(target, lambda tmp, source=src: shutil.copy2(source, tmp))  # never a half copy
            result.copied += 1


def prepare_folders(destination: str | Path, instance_prompt: str, class_prompt: str, images_dir: str | Path,
                    repeats: int, reg_images_dir: str | Path | None = None, reg_repeats: int = 1) -> PreparedFolders:
    instance = _check_name(instance_prompt or "", "Instance prompt")
    klass = " ".join((class_prompt or "").split())
    if _BAD & set(klass):
        raise UserError(f"Class prompt '{klass}' must not contain any of / \\ : * ? \" < > |")
    repeats, reg_repeats = int(repeats or 0), int(reg_repeats or 0)
    if repeats < 1:
        raise UserError(f"Repeats must be 1 or more, got {repeats}")
    if not str(destination or "").strip():
        raise UserError("Destination folder is empty: type where the training folders should be created")
    root = Path(destination).expanduser().resolve()
    images = _images_in(images_dir, "Training images")
    reg_images = _images_in(reg_images_dir, "Regularisation images") if reg_images_dir else []
    if reg_images and not klass:
        raise UserError("Regularisation images need a Class prompt (e.g. 'person'): their folder is named after it")
    if reg_images and reg_repeats < 1:
        raise UserError(f"Regularisation repeats must be 1 or more, got {reg_repeats}")
    source = Path(images_dir).expanduser().resolve()
    if root == source or source in root.parents:
        raise UserError(f"Destination {root} is inside the training images folder {source}; choose another place")

    name = f"{instance} {klass}".strip()
    result = PreparedFolders(root, root / "img", root / "reg" if reg_images else None, root / "model", root / "log")
    _copy_with_captions(images, result.img_dir / f"{repeats}_{name}", result)
    if reg_images:
        _copy_with_captions(reg_images, result.reg_dir / f"{reg_repeats}_{klass}", result)
    result.model_dir.mkdir(parents=True, exist_ok=True)
    result.log_dir.mkdir(parents=True, exist_ok=True)
    missing = sum(1 for p in images if not any(p.with_suffix(s).is_file() for s in CAPTION_SUFFIXES))
    if missing:
        result.notes.append(f"{missing} of {len(images)} training image(s) have no caption file; they train with "
                            f"the folder's words '{name}'")
    return result
