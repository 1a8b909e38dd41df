"""The dataset health report (``lora-studio dataset check``): what the trainer will see in a dataset, and what to fix
before training.

The images, their captions and buckets, the skipped files and the held-out images are the trainer's own: both read
``data.scan.scan_datasets`` (every image read as training reads it: EXIF rotation applied, 16-bit, CMYK and
transparency converted), and the batches are the trainer's plan. Findings have three levels:

  problem  something to fix before training (the command exits 1): unreadable images, fewer than 10 training
           images, duplicates, images under half the training area, captions missing or empty (in a folder where
           others have one), cut by max_token_length, or lacking the trigger word, no training image at all;
  warning  advice (exit 0): 10-19 images, images under the training area enlarged over 10% to their bucket,
           crops over 10%, alpha / 16-bit / CMYK / EXIF-rotated files, no caption holding the folder's trigger
           word, files that do not train;
  note     facts worth knowing (all images in one bucket, tags in every caption, ...).

No torch here: the CLIP tokenizer (transformers) is loaded only to count caption tokens.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import BY_NAME
from ..errors import UserError
from ..data.buckets import resized_and_crop
from ..data.captions import steady_rules, vary_caption
from ..data.dataset import plan_batches
from ..data.images import READ_FORMATS, is_image_file, load_alpha
from ..data.scan import DatasetScan, ImageItem, check_caption_extension, check_dataset_settings, scan_datasets
from ..data.sources import DatasetSpec, SubsetSpec, parse_folder_name, parse_resolution, subsets_from_folders
from .health_text import clip, listing, render_text, size
from .image_hash import NEAR_CORRELATION, NEAR_DHASH, NEAR_PHASH, Fingerprint, near_pairs

# ---- thresholds (the --help text repeats them) ----
MIN_IMAGES = 10  # fewer training images: a problem
ENOUGH_IMAGES = 20  # 10-19: a warning; 20-40 is what the guides recommend
RECOMMENDED_MAX = 40
TINY_AREA = 0.5  # an image under half the training area is a problem ("replace it")
SMALL_UPSCALE = 1.1  # an image under the training area enlarged more than 10% (per side) to its bucket: a warning
HEAVY_CROP = 0.10  # more than 10% of the resized image cut away to fit its bucket: a warning
TOP_TAGS = 15
ORIENTATIONS = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "mirrored and rotated 90°",
                6: "rotated 90°", 7: "mirrored and rotated 270°", 8: "rotated 270°"}
LEVELS = ("problem", "warning", "note")


def _default(setting: str) -> Any:
    return BY_NAME[setting].default


@dataclass
class FolderSettings:
    """The dataset settings used for a folder given on the command line (a config file has its own): a config's
    defaults, with buckets on."""
    resolution: tuple[int, int] = parse_resolution(_default("resolution"))
    batch_size: int = _default("train_batch_size")
    caption_extension: str = _default("caption_extension")
    enable_bucket: bool = True
    min_bucket_reso: int = _default("min_bucket_reso")
    max_bucket_reso: int = _default("max_bucket_reso")
    bucket_reso_steps: int = _default("bucket_reso_steps")
    bucket_no_upscale: bool = _default("bucket_no_upscale")


@dataclass
class CheckOptions:
    max_token_length: int = 75
    trigger: str | None = None  # None: each Kohya folder's instance token (the first word after "N_")
    top_tags: int = TOP_TAGS
    show_progress: bool = True
    gradient_accumulation_steps: int = 1
    seed: int | None = None  # the run's seed: which images validation_split holds out


@dataclass
class Issue:
    level: str  # problem | warning | note
    code: str  # e.g. "captions.missing"
    message: str  # what is wrong, with the numbers
    advice: str = ""  # what to do
    files: list[str] = field(default_factory=list)


@dataclass
class _Image:
    path: Path
    name: str  # as shown: relative to the checked folder
    subset: int  # index into the run's subsets
    error: str | None = None  # why the trainer skips it
    item: ImageItem | None = None  # the trainer's own view of it (None when skipped)
    mode: str = ""
    high_bit: str | None = None
    alpha: str | None = None  # None | "transparent" | "opaque"
    cmyk: bool = False
    orientation: int = 1
    greyscale: bool = False
    scale: float = 1.0
    cut: float = 0.0
    fingerprint: Fingerprint | None = None
    captions: list[str] = field(default_factory=list)  # the caption(s) as trained (prefix/suffix added)
    tokens: int = 0
    cut_text: str = ""

    @property
    def size(self) -> tuple[int, int]:  # as trained (EXIF rotation applied)
        return self.item.size

    @property
    def bucket(self) -> tuple[int, int]:
        return self.item.bucket

    @property
    def caption_file(self) -> bool:
        return self.item is not None and self.item.has_caption_file

    @property
    def caption_lines(self) -> list[str]:
        return self.item.lines if self.item is not None else []

    @property
    def held_out(self) -> bool:
        return self.item is not None and self.item.held_out


# ---------------------------------------------------------------- what to check

def datasets_from_folder(folder: str | Path, settings: FolderSettings) -> tuple[list[DatasetSpec], list[Issue]]:
    """The dataset a folder makes: a Kohya training folder (``N_name`` subfolders, N repeats each) or one folder of
    images (repeats 1, or N when the folder itself is named ``N_name``)."""
    root = Path(folder)
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"{root} is a file; give the folder of images (or the Kohya training folder above the "
                        "'N_name' folders)")
    spec = DatasetSpec(resolution=settings.resolution, batch_size=settings.batch_size,
                       enable_bucket=settings.enable_bucket, min_bucket_reso=settings.min_bucket_reso,
                       max_bucket_reso=settings.max_bucket_reso, bucket_reso_steps=settings.bucket_reso_steps,
                       bucket_no_upscale=settings.bucket_no_upscale)
    check_dataset_settings(spec, prefix="--")  # before the folders: a bad option is named as the option
    check_caption_extension(settings.caption_extension, "--caption_extension")
    notes: list[Issue] = []
    kohya = [c for c in root.iterdir() if c.is_dir() and parse_folder_name(c.name)]
    loose = sorted(p.name for p in root.iterdir() if is_image_file(p))
    defaults = {"caption_extension": settings.caption_extension}
    if kohya:
        spec.subsets = subsets_from_folders(root, defaults, False, str(root))
        if loose:
            notes.append(Issue("warning", "files.outside_folders",
                               f"{len(loose)} image(s) lie directly in {root}, outside the 'N_name' folders: the "
                               "trainer does not use them", "move them into a 'N_name' folder or elsewhere", loose))
    elif loose:  # the image folder itself: its own name gives the repeats and class tokens, as a subfolder's would
        repeats, tokens = parse_folder_name(root.name) or (1, None)
        spec.subsets = [SubsetSpec(image_dir=root, num_repeats=max(repeats, 1), class_tokens=tokens, **defaults)]
    else:
        raise UserError(f"{root}: no images ({READ_FORMATS}) and no '<repeats>_<name>' subfolders "
                        f"(e.g. '10_emi person') in it")
    return [spec], notes


def trigger_of(subset: SubsetSpec, explicit: str | None) -> str | None:
    """The word captions should hold: ``--trigger``, else the instance token (the first word of the folder's
    class tokens, "emi" for ``10_emi person``). Regularisation folders have none."""
    if subset.is_reg:
        return None
    if explicit:
        return explicit
    return subset.class_tokens.split()[0] if subset.class_tokens and subset.class_tokens.split() else None


def has_word(text: str, word: str) -> bool:
    """``word`` in ``text`` as a whole word, any case (a plain substring for non-ASCII words such as Japanese)."""
    if not word.isascii():
        return word.lower() in text.lower()
    return re.search(rf"(?<![0-9A-Za-z_]){re.escape(word)}(?![0-9A-Za-z_])", text, re.IGNORECASE) is not None


# ---------------------------------------------------------------- reading

def _png_bit_depth(path: Path) -> int | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(26)
    except OSError:
        return None
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return head[24]
    return None


def _inspect_image(item: _Image, rgb: Image.Image) -> None:
    """Fill ``item``'s file flags, scale, crop and fingerprint from its file and ``rgb``, the pixels the trainer
    read."""
    transparency = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(item.path) as header:
                item.mode = header.mode
                transparency = "transparency" in header.info
                try:
                    item.orientation = int(header.getexif().get(0x0112, 1) or 1)
                except Exception:  # a broken EXIF block: the trainer ignores it as well
                    item.orientation = 1
    except OSError:  # read a moment ago; gone or changed since: no flags
        pass
    mode = item.mode
    depth = _png_bit_depth(item.path)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N") or (depth == 16):
        item.high_bit = f"16-bit ({mode})"
    elif mode in ("I", "F"):
        item.high_bit = f"32-bit ({mode})"
    item.cmyk = mode == "CMYK"
    item.greyscale = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode in ("P", "L") and transparency):
        try:
            alpha = load_alpha(item.path)
            item.alpha = "transparent" if alpha is not None and alpha.getextrema()[0] < 255 else "opaque"
        except Exception:
            item.alpha = "transparent"
    (new_w, new_h), _ = resized_and_crop(rgb.size, item.bucket)
    item.scale = new_w / rgb.size[0]
    item.cut = 1.0 - (item.bucket[0] * item.bucket[1]) / (new_w * new_h)
    item.fingerprint = Fingerprint.of(rgb)


def _trained_captions(item: ImageItem) -> list[str]:
    """The caption(s) an image trains with, without their random changes (all lines with enable_wildcard); none when
    it trains with its folder's class tokens."""
    subset = item.subset
    lines = [line for line in item.lines if line.strip()]
    trained = lines if subset.enable_wildcard else lines[:1]
    return [vary_caption(line, random.Random(0), steady_rules(subset), 1, None) for line in trained]


# ---------------------------------------------------------------- the report

class _Report:
    def __init__(self, datasets: list[DatasetSpec], options: CheckOptions, root: Path | None):
        self.datasets = datasets
        self.options = options
        self.root = root
        self.subsets = [(d, s) for d, spec in enumerate(datasets) for s in spec.subsets]
        self.items: list[_Image] = []
        self.issues: list[Issue] = []
        self.extra_files: dict[int, dict[str, list[str]]] = defaultdict(dict)

    def name(self, path: Path) -> str:
        if self.root is not None:
            try:
                return path.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return str(path)

    def add(self, level: str, code: str, message: str, advice: str = "", files: list[str] | None = None) -> None:
        self.issues.append(Issue(level, code, message, advice, list(files or [])))

    # ---- scanning
    def scan(self) -> None:
        """The trainer's scan (``scan_datasets``), each readable image inspected as it is read."""
        from ..tool_progress import phase, track

        index = {id(subset): i for i, (_, subset) in enumerate(self.subsets)}

        def seen(item: ImageItem, rgb: Image.Image) -> None:
            image = _Image(item.path, self.name(item.path), index[id(item.subset)], item=item)
            _inspect_image(image, rgb)
            image.captions = _trained_captions(item)
            self.items.append(image)

        phase("listing images")
        self.scanned: DatasetScan = scan_datasets(
            self.datasets, self.options.seed, on_image=seen,
            progress=lambda found: track(found, "checking images", unit="image", show=self.options.show_progress))
        self.items += [_Image(s.path, self.name(s.path), index[id(s.subset)], error=s.reason)
                       for s in self.scanned.skipped]
        place = {(i, path): k for i, files in enumerate(self.scanned.files) for k, path in enumerate(files.images)}
        self.items.sort(key=lambda it: (it.subset, place[(it.subset, it.path)]))  # as listed, skipped ones too
        for i, files in enumerate(self.scanned.files):
            self.extra_files[i] = {"other_formats": [self.name(p) for p in files.other_formats],
                                   "orphan_captions": [self.name(p) for p in files.orphan_captions],
                                   "shared_captions": [self.name(p) for p in files.shared_captions]}
        self.plan = plan_batches(self.scanned.items, self.datasets, self.options.seed or 0, 0)
        self._count_tokens()

    def _count_tokens(self) -> None:
        from ..tool_progress import phase

        texts = [(it, c) for it in self.items for c in it.captions if c]
        if not texts:
            return
        phase("counting caption tokens")
        try:
            from ..models.tokenizer import clip_tokenizer

            tokenizer = clip_tokenizer(max_length=1_000_000)
        except (UserError, ImportError) as exc:
            self.add("note", "captions.tokens_unknown", f"caption tokens not counted: {exc}")
            return
        ids = tokenizer([c for _, c in texts], add_special_tokens=False)["input_ids"]
        limit = self.options.max_token_length
        for (item, _), row in zip(texts, ids):
            if len(row) > item.tokens:
                item.tokens = len(row)
                item.cut_text = tokenizer.decode(row[limit:]).strip() if len(row) > limit else ""

    # ---- numbers
    def folder_report(self, index: int) -> dict[str, Any]:
        d, subset = self.subsets[index]
        spec = self.datasets[d]
        items = [it for it in self.items if it.subset == index]
        ok = [it for it in items if it.error is None]
        training = [it for it in ok if not it.held_out]
        res_area = spec.resolution[0] * spec.resolution[1]
        trigger = trigger_of(subset, self.options.trigger)
        captioned = [it for it in ok if it.item.captioned]
        captioned_ids = {id(it) for it in captioned}
        tags: Counter = Counter()
        for it in captioned:
            tags.update({t.strip() for t in it.caption_lines[0].split(subset.caption_separator) if t.strip()}
                        if it.caption_lines else set())
        longest = max(captioned, key=lambda it: it.tokens, default=None)
        samples = len(training) * subset.num_repeats
        extra = self.extra_files.get(index, {})
        return {
            "index": index,
            "name": self._folder_name(index),
            "path": str(subset.metadata_file or subset.image_dir),
            "dataset": d,
            "is_reg": subset.is_reg,
            "repeats": subset.num_repeats,
            "class_tokens": subset.class_tokens,
            "trigger": trigger,
            "images": len(ok),
            "unreadable": len(items) - len(ok),
            "held_out": len(ok) - len(training),
            "image_files": [it.name for it in ok],  # what trains (or is held out), as the trainer finds it
            "held_out_files": [it.name for it in ok if it.held_out],
            "samples_per_epoch": samples,
            "steps_alone": math.ceil(samples / spec.batch_size),
            "buckets": _bucket_dict(Counter(it.bucket for it in ok)),
            "upscaled": [{"file": it.name, "size": list(it.size), "bucket": list(it.bucket),
                          "factor": round(it.scale, 3)} for it in ok if it.scale > 1.0 + 1e-6],
            "heavily_cropped": [{"file": it.name, "size": list(it.size), "bucket": list(it.bucket),
                                 "cut": round(it.cut, 3)} for it in ok if it.cut > HEAVY_CROP],
            "small": [{"file": it.name, "size": list(it.size),
                       "area_share": round(it.size[0] * it.size[1] / res_area, 4),
                       "upscale": round(it.scale, 3)}
                      for it in sorted(ok, key=lambda it: it.size[0] * it.size[1])
                      if it.size[0] * it.size[1] < res_area],
            "captions": {
                "captioned": len(captioned),
                "missing": [it.name for it in ok if not it.caption_file],
                "empty": [it.name for it in ok if it.caption_file and id(it) not in captioned_ids],
                "overlong": [{"file": it.name, "tokens": it.tokens, "cut": it.cut_text}
                             for it in sorted(captioned, key=lambda it: -it.tokens)
                             if it.tokens > self.options.max_token_length],
                "longest": {"file": longest.name, "tokens": longest.tokens} if longest else None,
                "without_trigger": [it.name for it in captioned
                                    if trigger and not any(has_word(c, trigger) for c in it.captions)],
                "extra_lines": [it.name for it in captioned
                                if len(it.caption_lines) > 1 and not subset.enable_wildcard],
                "top_tags": tags.most_common(self.options.top_tags),
                "in_every_caption": sorted(t for t, n in tags.items() if n == len(captioned) and len(captioned) >= 3
                                           and not (trigger and has_word(t, trigger))),
            },
            "files": {
                "alpha": [{"file": it.name, "alpha": it.alpha} for it in ok if it.alpha],
                "high_bit_depth": [{"file": it.name, "depth": it.high_bit} for it in ok if it.high_bit],
                "cmyk": [it.name for it in ok if it.cmyk],
                "exif_rotated": [{"file": it.name, "orientation": it.orientation,
                                  "meaning": ORIENTATIONS.get(it.orientation, "unknown")}
                                 for it in ok if it.orientation != 1],
                "greyscale": [it.name for it in ok if it.greyscale],
                "unreadable": [{"file": it.name, "error": it.error} for it in items if it.error],
                **extra,
            },
        }

    def dataset_report(self, d: int, folders: list[dict]) -> dict[str, Any]:
        """The trainer's batches of its first epoch (``plan_batches``): each batch holds one bucket; as many
        regularisation samples as training samples, drawn over the regularisation images by the seed."""
        spec = self.datasets[d]
        items = self.scanned.items
        batches = [b for b in self.plan if items[b[0][0]].dataset_index == d]
        entries = [items[i] for batch in batches for i, _ in batch]
        samples = Counter(it.bucket for it in entries)
        n_train = sum(1 for it in entries if not it.subset.is_reg)
        exact = self.scanned.hold_out_exact or not spec.validation_split
        reg = [it for it in items if it.dataset_index == d and it.subset.is_reg]
        if self.options.seed is None and reg and n_train:  # which buckets the regularisation samples fill is drawn
            drawn = sum(it.subset.num_repeats for it in reg)
            exact = exact and (n_train % drawn == 0 or len({it.bucket for it in reg}) == 1)
        mine = [f for f in folders if f["dataset"] == d]
        return {"resolution": list(spec.resolution), "batch_size": spec.batch_size,
                "enable_bucket": spec.enable_bucket, "min_bucket_reso": spec.min_bucket_reso,
                "max_bucket_reso": spec.max_bucket_reso, "bucket_reso_steps": spec.bucket_reso_steps,
                "bucket_no_upscale": spec.bucket_no_upscale, "validation_split": spec.validation_split,
                "folders": [f["name"] for f in mine],
                "training_images": sum(f["images"] - f["held_out"] for f in mine if not f["is_reg"]),
                "training_samples": n_train, "reg_samples": len(entries) - n_train,
                "buckets": _bucket_dict(samples), "batches_per_epoch": len(batches), "exact": exact}

    # ---- findings
    def judge(self, folders: list[dict], datasets: list[dict], duplicates: list[dict]) -> None:
        """Turn the numbers into problems, warnings and notes. Messages inside a folder name its files by their
        name in the folder; ``files`` keeps the paths relative to the checked folder."""
        triggers = {f["trigger"] for f in folders if f["trigger"]}
        for f in folders:
            c, files = f["captions"], f["files"]
            spec = self.datasets[f["dataset"]]
            res = f"{spec.resolution[0]}x{spec.resolution[1]}"
            add = _FolderIssues(self, f)
            if files["unreadable"]:
                add("problem", "files.unreadable", "unreadable image(s)",
                    [u["file"] for u in files["unreadable"]], "re-save or remove",
                    "(the trainer skips them)", details=[u["error"] for u in files["unreadable"]])
            if not f["images"]:
                self.add("problem", "images.none", f"'{f['name']}': no readable image",
                         f"'{f['name']}': add images or remove the folder")
            tiny = [s for s in f["small"] if s["area_share"] < TINY_AREA]
            small = [s for s in f["small"] if s["area_share"] >= TINY_AREA and s["upscale"] > SMALL_UPSCALE]
            if tiny:
                add("problem", "images.tiny", f"image(s) under half the {res} training area",
                    [s["file"] for s in tiny], "replace", "with larger versions (they train blurry)",
                    details=[size(s) for s in tiny])
            if small:
                add("warning", "images.small",
                    f"image(s) smaller than {res} and enlarged more than {SMALL_UPSCALE - 1:.0%} to fit their bucket",
                    [s["file"] for s in small],
                    "if you have larger versions of", ", use them (they would train sharper)",
                    details=[size(s) for s in small])
            crops = f["heavily_cropped"]
            if crops:
                add("warning", "buckets.cropped", f"image(s) lose more than {HEAVY_CROP:.0%} to their bucket's crop",
                    [x["file"] for x in crops], "crop",
                    "yourself to keep what matters" + ("" if spec.enable_bucket else ", or turn on enable_bucket"),
                    details=[f"{x['cut']:.1%} cut" for x in crops])
            self._judge_overlong(f, add)
            if not f["is_reg"]:
                self._judge_captions(f, add)
            else:
                uncaptioned = c["missing"] + c["empty"]
                if uncaptioned:
                    self.add("note", "captions.reg_class_tokens",
                             f"'{f['name']}': {len(uncaptioned)} regularisation image(s) without a caption train "
                             f"with the folder's class tokens '{f['class_tokens'] or ''}'")
                hits = self._captions_with(f["index"], triggers)
                if hits:
                    add("warning", "captions.reg_trigger",
                        f"regularisation caption(s) with a training trigger word ({', '.join(sorted(triggers))})",
                        hits, "remove the trigger from the captions of")
            self._judge_files(f, add)
        self._judge_counts(folders, datasets)
        for group in duplicates:
            similarity = "" if group["kind"] == "identical files" else f" (similarity {group['similarity']:.1%})"
            self.add("problem", "images.duplicates", f"{group['kind']}: " + " = ".join(group["files"]) + similarity,
                     "remove " + ", ".join(group["remove"]) + f" (keep {group['keep']})", group["files"])

    def _captions_with(self, index: int, words: set[str]) -> list[str]:
        return [it.name for it in self.items if it.subset == index and it.error is None
                and any(has_word(c, w) for c in it.captions for w in words)]

    def _folder_name(self, index: int) -> str:
        _, subset = self.subsets[index]
        if subset.image_dir is None or self.root is None or subset.image_dir.resolve() == self.root.resolve():
            return subset.name
        return self.name(subset.image_dir)

    def _judge_overlong(self, f: dict, add: "_FolderIssues") -> None:
        c, limit = f["captions"], self.options.max_token_length
        if c["overlong"]:
            longest = c["overlong"][0]
            longer = _next_length(longest["tokens"])
            add("problem", "captions.overlong",
                f"caption(s) longer than max_token_length {limit} CLIP tokens (the rest is cut; longest "
                f"{add.short(longest['file'])}, {longest['tokens']} tokens, loses '{clip(longest['cut'])}')",
                [o["file"] for o in c["overlong"]], "shorten the captions of",
                f" (or set max_token_length to {longer})" if longer and longer > limit else "",
                details=[f"{o['tokens']} tokens" for o in c["overlong"]])

    def _judge_captions(self, f: dict, add: "_FolderIssues") -> None:
        c = f["captions"]
        uncaptioned = c["missing"] + c["empty"]
        fallback = f"'{f['class_tokens']}'" if f["class_tokens"] else "an empty caption"
        if uncaptioned and not c["captioned"]:
            ext = self.subsets[f["index"]][1].caption_extension
            self.add("warning", "captions.none",
                     f"'{f['name']}': no image has a caption; every image trains with the folder's class tokens "
                     f"{fallback}", f"'{f['name']}': write a caption ({ext}) per image holding the trigger word "
                     "and what varies (pose, expression, outfit, background)", uncaptioned)
        else:
            if c["missing"]:
                add("problem", "captions.missing", "image(s) without a caption file", c["missing"],
                    "write the captions of", f" (they train with {fallback} only)")
            if c["empty"]:
                add("problem", "captions.empty", "empty caption(s)", c["empty"], "fill in the captions of",
                    f" (they train with {fallback} only)")
        trigger = f["trigger"]
        if trigger and c["without_trigger"]:
            if len(c["without_trigger"]) == c["captioned"] and not self.options.trigger:
                self.add("warning", "captions.no_trigger",
                         f"'{f['name']}': no caption holds the folder's trigger word '{trigger}' (an image with a "
                         "caption trains with its caption only, not with the folder name)",
                         f"'{f['name']}': add '{trigger}' to every caption if you mean to call the LoRA with it (or "
                         "set caption_prefix)", c["without_trigger"])
            else:
                add("problem", "captions.no_trigger", f"caption(s) without the trigger word '{trigger}'",
                    c["without_trigger"], f"add '{trigger}' to the captions of")
        if c["extra_lines"]:
            add("warning", "captions.extra_lines",
                "caption file(s) with several lines (only the first trains without enable_wildcard)",
                c["extra_lines"], "join the lines with commas (or turn on enable_wildcard) in")
        if c["in_every_caption"]:
            self.add("note", "captions.common_tags",
                     f"'{f['name']}': in every caption: {listing(c['in_every_caption'])}; tags in every caption "
                     "become part of the trigger: drop the ones that are not always part of the concept")

    def _judge_files(self, f: dict, add: "_FolderIssues") -> None:
        files = f["files"]
        alpha_mask = self.subsets[f["index"]][1].alpha_mask
        transparent = [a["file"] for a in files["alpha"] if a["alpha"] == "transparent"]
        if transparent and not alpha_mask:
            add("warning", "files.alpha", "image(s) with transparency (it trains as white)", transparent,
                "flatten", "on the background you want (or set alpha_mask to train only the opaque part)")
        if files["high_bit_depth"]:
            add("warning", "files.16bit", "image(s) with more than 8 bits per channel (the trainer scales them to "
                "8-bit)", [h["file"] for h in files["high_bit_depth"]], "save", "as 8-bit to see what trains",
                details=[h["depth"] for h in files["high_bit_depth"]])
        if files["cmyk"]:
            add("warning", "files.cmyk", "CMYK image(s) (converted to RGB without a colour profile; colours may "
                "shift)", files["cmyk"], "save", "as RGB")
        if files["exif_rotated"]:
            add("warning", "files.exif_rotated", "image(s) turned by their EXIF orientation tag (the trainer "
                "applies it; some taggers and tools do not)", [e["file"] for e in files["exif_rotated"]],
                "save", "upright (rotation applied, tag removed)",
                details=[f"orientation {e['orientation']}: {e['meaning']}" for e in files["exif_rotated"]])
        if files["greyscale"]:
            add("note", "files.greyscale", "greyscale image(s)", files["greyscale"])
        for key, text, verb, rest in (
                ("other_formats", "file(s) in a format the trainer does not read", "convert", "to PNG or JPEG"),
                ("orphan_captions", "caption file(s) without an image of the same name", "rename or delete", ""),
                ("shared_captions", "images sharing a name, and so one caption", "rename", "so each has its own")):
            if files.get(key):
                add("warning", f"files.{key}", text, files[key], verb, rest)

    def _judge_counts(self, folders: list[dict], datasets: list[dict]) -> None:
        count = sum(f["images"] - f["held_out"] for f in folders if not f["is_reg"])
        more = "(varied poses, expressions and outfits; plain backgrounds)"
        if count == 0:  # the trainer's own refusal
            self.add("problem", "images.count", self.scanned.training_problem() or "no training image",
                     f"add {ENOUGH_IMAGES}-{RECOMMENDED_MAX} images of the subject {more}")
        elif count < MIN_IMAGES:
            self.add("problem", "images.count",
                     f"only {count} training image(s): {MIN_IMAGES} is the minimum, {ENOUGH_IMAGES}-"
                     f"{RECOMMENDED_MAX} are recommended", f"add {ENOUGH_IMAGES - count} or more images {more}")
        elif count < ENOUGH_IMAGES:
            self.add("warning", "images.count",
                     f"{count} training images: enough to start; {ENOUGH_IMAGES}-{RECOMMENDED_MAX} are recommended",
                     f"add {ENOUGH_IMAGES - count} or more images {more}")
        for d, ds in enumerate(datasets):
            if len(ds["buckets"]) == 1 and ds["training_samples"]:
                (bucket,) = ds["buckets"]
                w, h = (int(v) for v in bucket.split("x"))
                if not ds["enable_bucket"]:
                    text = f"buckets are off: every image is resized and centre-cropped to {bucket}"
                elif w == h:
                    text = (f"all images fall in one square bucket ({bucket}): fine for a square set; images of "
                            "other shapes would let the LoRA draw other shapes too")
                else:
                    text = f"all images fall in one bucket ({bucket}): the LoRA sees only this shape"
                self.add("note", "buckets.single", (f"dataset {d + 1}: " if len(datasets) > 1 else "") + text)


class _FolderIssues:
    """Adds a finding about some files of one folder: '<folder>': N <what>: a.png (detail), b.png ... and the
    advice '<folder>': <verb> a.png, b.png<rest>."""

    def __init__(self, report: _Report, folder: dict):
        self.report, self.folder = report, folder

    def short(self, name: str) -> str:
        prefix = self.folder["name"] + "/"
        return name[len(prefix):] if name.startswith(prefix) else name

    def __call__(self, level: str, code: str, what: str, files: list[str], verb: str = "", rest: str = "",
                 details: list[str] | None = None) -> None:
        where = f"'{self.folder['name']}'"
        shown = [self.short(n) + (f" ({d})" if d else "") for n, d in zip(files, details or [""] * len(files))]
        if rest and not rest.startswith((" ", ",", ";", ".")):
            rest = " " + rest
        advice = f"{where}: {verb} {listing([self.short(n) for n in files], 8)}{rest}" if verb else ""
        self.report.add(level, code, f"{where}: {len(files)} {what}: {listing(shown)}", advice, files)


def _bucket_dict(counter: Counter) -> dict[str, int]:
    return {f"{b[0]}x{b[1]}": n for b, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])) if b}


def _next_length(tokens: int) -> int | None:
    return next((n for n in (150, 225) if tokens <= n), None)


def _duplicates(report: _Report) -> list[dict]:
    """Groups of near-duplicate images (any folders), each with the one to keep (the largest) and the rest."""
    from ..io_utils import file_sha256

    unique: dict[Path, _Image] = {}
    for it in report.items:
        if it.fingerprint is not None:
            unique.setdefault(it.path.resolve(), it)
    items = list(unique.values())
    pairs = near_pairs([it.fingerprint for it in items])
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    lowest: dict[tuple[int, int], float] = {}
    for i, j, _, corr in pairs:
        parent[find(i)] = find(j)
        lowest[(i, j)] = corr
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        members[find(i)].append(i)
    groups = []
    for group in members.values():
        if len(group) < 2:
            continue
        files = [items[i] for i in sorted(group, key=lambda i: items[i].name)]
        hashes = {file_sha256(it.path) for it in files}
        # keep a training image over a regularisation one, then the largest, then the first by name
        keep = max(files, key=lambda it: (not report.subsets[it.subset][1].is_reg, it.size[0] * it.size[1],
                                          -files.index(it)))
        similarity = min(c for (i, j), c in lowest.items() if i in group and j in group)
        groups.append({"kind": "identical files" if len(hashes) == 1 else "near-duplicates",
                       "files": [it.name for it in files], "similarity": round(min(similarity, 1.0), 4),
                       "keep": keep.name, "remove": [it.name for it in files if it is not keep]})
    return sorted(groups, key=lambda g: g["files"])


def check_datasets(datasets: list[DatasetSpec], options: CheckOptions | None = None, root: str | Path | None = None,
                   source: str = "", early_issues: list[Issue] | None = None) -> dict[str, Any]:
    """The health report of ``datasets`` as a dict (JSON-ready; ``text`` holds the readable report)."""
    options = options or CheckOptions()
    if options.max_token_length not in (75, 150, 225):
        raise UserError(f"--max_token_length must be 75, 150 or 225, got {options.max_token_length}")
    report = _Report(datasets, options, Path(root) if root else None)
    report.issues.extend(early_issues or [])
    report.scan()
    from ..tool_progress import phase

    phase("finding duplicates")
    folders = [report.folder_report(i) for i in range(len(report.subsets))]
    summaries = [report.dataset_report(d, folders) for d in range(len(datasets))]
    duplicates = _duplicates(report)
    report.judge(folders, summaries, duplicates)
    issues = sorted(report.issues, key=lambda i: LEVELS.index(i.level))
    problems = [i for i in issues if i.level == "problem"]
    warnings_ = [i for i in issues if i.level == "warning"]
    verdict = "not ready" if problems else ("ready, with advice" if warnings_ else "ready")
    batches = sum(s["batches_per_epoch"] for s in summaries)
    ga = max(1, options.gradient_accumulation_steps)
    result = {
        "source": source,
        "root": str(root) if root else None,
        "max_token_length": options.max_token_length,
        "trigger": options.trigger,
        "thresholds": {"min_images": MIN_IMAGES, "recommended_images": [ENOUGH_IMAGES, RECOMMENDED_MAX],
                       "tiny_area_share": TINY_AREA, "small_upscale": SMALL_UPSCALE, "heavy_crop_share": HEAVY_CROP,
                       "near_duplicate": {"phash_bits": NEAR_PHASH, "dhash_bits": NEAR_DHASH,
                                          "thumbnail_correlation": NEAR_CORRELATION}},
        "datasets": summaries,
        "folders": folders,
        "duplicates": duplicates,
        "batches_per_epoch": batches,
        "gradient_accumulation_steps": ga,
        "steps_per_epoch": math.ceil(batches / ga),
        "issues": [dataclasses.asdict(i) for i in issues],
        "problems": len(problems),
        "warnings": len(warnings_),
        "verdict": verdict,
        "advice": [i.advice for i in problems + warnings_ if i.advice],
    }
    result["text"] = render_text(result)
    return result
