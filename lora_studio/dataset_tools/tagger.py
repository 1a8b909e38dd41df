"""The WD14 tagger: SmilingWolf's wd-v1-4 / wd-v3 ONNX models (``model.onnx`` + ``selected_tags.csv``) run with
onnxruntime, with sd-scripts' preprocessing and Kohya's options.

Preprocessing (as sd-scripts' finetune/tag_images_by_wd14_tagger.py): transparency composited on white, RGB -> BGR,
padded to a centred square with white (255), resized to the model's input side (area-like BOX when shrinking,
LANCZOS when enlarging), float32 0..255, NHWC.

Tags: the model gives one probability per row of selected_tags.csv (category 9 rating, 0 general, 4 character;
other categories are ignored). General tags at or above ``general_threshold`` and character tags at or above
``character_threshold`` are kept. Underscores become spaces in tags longer than 3 characters (so kaomoji such as
``^_^`` stay), and brackets are escaped (``\\(`` ``\\)``) so AUTOMATIC1111 does not read them as emphasis.

Order of a caption:
  1. the trigger word
  2. the always-first tags that were found, in the order given
  3. the rating tag (the most probable one), with use_rating_tags
  4. the character tags, by descending confidence, with character_tags_first
  5. the other tags by descending confidence (ties: the CSV's order)
  6. the rating tag, with use_rating_tags_as_last_tag
Undesired tags are dropped; undesired and always-first tags match with or without underscores and bracket escapes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from .model_files import ModelSpec

RATING, GENERAL, CHARACTER = 9, 0, 4
DEFAULT_REPO = "SmilingWolf/wd-v1-4-convnext-tagger-v2"
MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"


def model_spec(repo_id: str = DEFAULT_REPO) -> ModelSpec:
    return ModelSpec("WD14 tagger", repo_id, (MODEL_FILE, TAGS_FILE))


@dataclass(frozen=True)
class Label:
    name: str
    category: int


def read_labels(path: str | Path) -> list[Label]:
    """The rows of selected_tags.csv (header ``tag_id,name,category,count``), in order."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"Cannot read the tag list {path}: {exc}") from None
    try:
        return [Label(row["name"], int(row["category"])) for row in rows]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} is not a WD14 tag list: it needs the columns name and category "
                        "(header tag_id,name,category,count)") from None


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """An RGB image as the tagger's input: [size, size, 3] float32 BGR 0..255, padded to a centred white square."""
    pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]
    height, width = pixels.shape[:2]
    side = max(height, width)
    pad_y, pad_x = side - height, side - width
    pad_t, pad_l = pad_y // 2, pad_x // 2
    pixels = np.pad(pixels, ((pad_t, pad_y - pad_t), (pad_l, pad_x - pad_l), (0, 0)), mode="constant",
                    constant_values=255)
    if side != size:
        resample = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
        # the channels are resampled independently, so BGR data in an "RGB" image is fine
        pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize((size, size), resample))
    return pixels.astype(np.float32)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("The WD14 tagger needs onnxruntime, which is not installed. Run the setup again, or "
                        "`pip install onnxruntime` (onnxruntime-gpu for an NVIDIA GPU)") from None
    return onnxruntime


class WD14Tagger:
    """A loaded tagger: ``probabilities(images)`` gives [len(images), labels] in the CSV's order."""

    def __init__(self, folder: str | Path):
        ort = _import_onnxruntime()
        folder = Path(folder)
        self.labels = read_labels(folder / TAGS_FILE)
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(folder / MODEL_FILE), providers=providers or None)
        except Exception as exc:
            raise UserError(f"Cannot load the tagger model {folder / MODEL_FILE}: {exc}") from None
        self.providers = self.session.get_providers()
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] not in (3, None) and not isinstance(shape[3], str):
            raise UserError(f"{folder / MODEL_FILE} is not a WD14 tagger: its input is {shape}, not [N, H, W, 3]")
        self.size = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else 448
        # a model exported with a fixed batch size runs that many images at a time
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([preprocess(im, self.size) for im in images])
        if self.fixed_batch is None:
            probs = self._run(batch)
        else:
            parts = []
            for start in range(0, len(batch), self.fixed_batch):
                chunk = batch[start:start + self.fixed_batch]
                filled = np.concatenate([chunk, np.repeat(chunk[-1:], self.fixed_batch - len(chunk), 0)])
                parts.append(self._run(filled)[:len(chunk)])
            probs = np.concatenate(parts)
        if probs.shape != (len(images), len(self.labels)):
            raise UserError(f"The tagger model gives {probs.shape[-1]} probabilities but {TAGS_FILE} lists "
                            f"{len(self.labels)} tags: the two files are not from the same model")
        return probs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0], dtype=np.float32)


@dataclass
class TagOptions:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    undesired_tags: list[str] = field(default_factory=list)
    always_first_tags: list[str] = field(default_factory=list)
    character_tags_first: bool = False
    rating: str | None = None  # None, "first" or "last"
    remove_underscore: bool = True
    escape_brackets: bool = True
    trigger: str | None = None


def parse_tag_list(text: str | None) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def format_tag(name: str, remove_underscore: bool = True, escape_brackets: bool = True) -> str:
    if remove_underscore and len(name) > 3:
        name = name.replace("_", " ")
    if escape_brackets:
        name = name.replace("(", "\\(").replace(")", "\\)")
    return name


def _key(tag: str) -> str:
    """A tag compared without underscores or bracket escapes."""
    return tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ").strip()


def select_tags(probs: np.ndarray, labels: list[Label], options: TagOptions) -> list[str]:
    """One image's caption tags, in the documented order (see the module docstring)."""
    undesired = {_key(t) for t in options.undesired_tags}

    def wanted(i: int) -> bool:
        return _key(labels[i].name) not in undesired

    def fmt(i: int) -> str:
        return format_tag(labels[i].name, options.remove_underscore, options.escape_brackets)

    def by_confidence(indices: list[int]) -> list[int]:
        return sorted(indices, key=lambda i: -float(probs[i]))  # stable: ties keep the CSV's order

    found = [i for i, label in enumerate(labels) if wanted(i) and (
        label.category == GENERAL and probs[i] >= options.general_threshold
        or label.category == CHARACTER and probs[i] >= options.character_threshold)]
    first: list[int] = []
    for tag in options.always_first_tags:
        first += [i for i in found if _key(labels[i].name) == _key(tag) and i not in first]
    rest = [i for i in found if i not in first]
    characters = [i for i in rest if labels[i].category == CHARACTER] if options.character_tags_first else []
    others = by_confidence([i for i in rest if i not in characters])
    ratings = [i for i, label in enumerate(labels) if label.category == RATING]
    rating = [max(ratings, key=lambda i: float(probs[i]))] if options.rating and ratings else []
    rating = [i for i in rating if wanted(i)]

    order = first + (rating if options.rating == "first" else []) + by_confidence(characters) + others
    order += rating if options.rating == "last" else []
    tags = [options.trigger.strip()] if options.trigger and options.trigger.strip() else []
    for tag in (fmt(i) for i in order):
        if tag not in tags:
            tags.append(tag)
    return tags
