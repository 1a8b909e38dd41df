"""``lora-studio dataset check``: the dataset health report."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

_CHECK_HELP = """\
A health report of a dataset before training: per folder the images, repeats, samples and steps per epoch, the
bucket of every image, images that are upscaled, cropped more than 10% or smaller than the resolution,
near-duplicates (within and across folders), captions (missing, empty, longer than max_token_length CLIP tokens,
without the trigger word, top tags) and files (alpha, 16-bit, CMYK, EXIF-rotated, unreadable); then the findings and
a verdict. The images found, the files skipped (and why), the captions, the buckets, the batches and, with --config
and a seed, the images validation_split holds out are the trainer's own: the check and the trainer read the dataset
with the same code.

DIR is a Kohya training folder (subfolders 'N_instance class', N repeats; the trigger word is the instance token,
'emi' for '10_emi person') or one folder of images (repeats 1). With --config, the run's own folders, dataset_config
and settings are checked (its enable_bucket default is off, as in the trainer).

Exit code 0: nothing to fix (verdict "ready", or "ready, with advice" when there are only warnings); 1: problems
found (verdict "not ready"); 2: bad input (a missing folder, a bad setting).
Problems: unreadable images; under 10 training images; identical or near-duplicate images; images under half the
training area (resolution^2); captions missing or empty while others in the folder have one, cut by
max_token_length, or lacking the trigger word (every caption lacking the folder-name trigger is only a warning:
some datasets use no trigger; with --trigger it is a problem).
Warnings (advice, exit 0): 10-19 images (20-40 recommended); images under the training area that are enlarged more
than 10% (per side) to fit their bucket; more than 10% cut away by the bucket's crop; transparency, 16-bit, CMYK,
EXIF orientation != 1; a folder with no caption at all; caption files without an image; formats the trainer skips.
Notes (facts, no effect on the verdict): all images in one bucket (fine for a square set), tags in every caption,
greyscale images, regularisation images without captions.
Near-duplicates: 64-bit pHash within 10 bits and 64-bit dHash within 12 bits, confirmed by a 32x32 greyscale
correlation of at least 0.98 (a resized, re-compressed or brightened copy scores above 0.99).
Steps per epoch are the trainer's batches: each batch holds one bucket, so each bucket's samples (images x repeats)
are divided by the batch size and rounded up on their own, then summed (divided by gradient_accumulation_steps with
--config).
"""


def add_dataset_commands(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="dataset_tool", required=True)
    check = tools.add_parser("check", help="a health report of a dataset before training (exit 1 when it has "
                                           "problems)", description=_CHECK_HELP,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("folder", nargs="?", metavar="DIR",
                       help="a Kohya training folder (N_name subfolders) or a folder of images")
    check.add_argument("--config", "--config_file", dest="config_file",
                       help="a training config (.toml): check its train_data_dir / reg_data_dir / dataset_config "
                            "with its settings")
    check.add_argument("--resolution", help="training resolution, '512' or 'width,height' (default 512)")
    check.add_argument("--batch_size", "--train_batch_size", dest="batch_size", type=int,
                       help="train_batch_size (default 1)")
    check.add_argument("--caption_extension", help="caption file extension (default .txt)")
    check.add_argument("--max_token_length", type=int, choices=(75, 150, 225),
                       help="CLIP tokens a caption keeps; the rest is cut (default 75)")
    check.add_argument("--trigger", help="the word every training caption should hold (default: each folder's "
                                         "instance token)")
    check.add_argument("--no_bucket", action="store_true",
                       help="buckets off: every image resized and centre-cropped to the resolution (for DIR "
                            "buckets are on by default; with --config the config's enable_bucket counts)")
    check.add_argument("--min_bucket_reso", type=int, help="smallest bucket side (default 256)")
    check.add_argument("--max_bucket_reso", type=int, help="largest bucket side (default 1024)")
    check.add_argument("--bucket_reso_steps", type=int, help="bucket sides are multiples of this (default 64)")
    check.add_argument("--bucket_no_upscale", action="store_true", help="small images keep their size (no upscale)")
    check.add_argument("--top_tags", type=int, default=15, help="how many of each folder's most frequent tags to show")
    check.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    check.add_argument("--events", help="also write the progress, end or error to this JSON-lines file (the GUI's)")
    check.add_argument("--report", help="also write the report (with its text) to this JSON file")


def run_dataset_command(args: argparse.Namespace) -> int:
    """Run ``dataset check``: 0 when the dataset has no problems, 1 when it has (UserError: the CLI's 2)."""
    from ..tool_progress import run_tool

    done: dict = {}

    def work():
        done["report"] = _check(args)
        return None, done["report"]

    if args.json:  # run_tool prints the text; the JSON goes to stdout instead
        with contextlib.redirect_stdout(io.StringIO()):
            run_tool("dataset check", args.events, args.report, work)
        print(json.dumps(done["report"], indent=1, default=str))
    else:
        run_tool("dataset check", args.events, args.report, work)
    return 1 if done["report"]["problems"] else 0


def _check(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from ..errors import UserError
    from .health import CheckOptions, FolderSettings, check_datasets, datasets_from_folder

    if bool(args.folder) == bool(args.config_file):
        raise UserError("give a dataset folder (DIR) or --config FILE, not both" if args.folder else
                        "give the dataset folder to check (DIR) or the training config (--config FILE)")
    if args.top_tags < 0:
        raise UserError(f"--top_tags must be 0 or more, got {args.top_tags}")
    options = CheckOptions(trigger=(args.trigger or "").strip() or None, top_tags=args.top_tags,
                           show_progress=not args.json)
    if args.config_file:
        datasets, root, options = _from_config(args, options)
        return check_datasets(datasets, options, root, source=str(args.config_file))
    settings = FolderSettings()
    if args.resolution:
        settings.resolution = _resolution(args.resolution)
    for name in ("batch_size", "caption_extension", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    settings.enable_bucket = not args.no_bucket
    settings.bucket_no_upscale = args.bucket_no_upscale
    if args.max_token_length:
        options.max_token_length = args.max_token_length
    datasets, early = datasets_from_folder(args.folder, settings)
    return check_datasets(datasets, options, Path(args.folder), source=str(args.folder), early_issues=early)


def _resolution(text: str) -> tuple[int, int]:
    from ..data.sources import parse_resolution
    from ..errors import UserError

    try:
        return parse_resolution(text)
    except (ValueError, IndexError):
        raise UserError(f"--resolution must be a number or 'width,height', got {text!r}") from None


def _from_config(args: argparse.Namespace, options):
    """The run's datasets, with the options given on the command line on top of the config's."""
    from ..config import load_config

    overrides = {}
    if args.resolution:
        overrides["resolution"] = args.resolution
    for name, setting in (("batch_size", "train_batch_size"), ("caption_extension", "caption_extension"),
                          ("min_bucket_reso", "min_bucket_reso"), ("max_bucket_reso", "max_bucket_reso"),
                          ("bucket_reso_steps", "bucket_reso_steps"), ("max_token_length", "max_token_length")):
        if getattr(args, name) is not None:
            overrides[setting] = getattr(args, name)
    if args.no_bucket:
        overrides["enable_bucket"] = False
    if args.bucket_no_upscale:
        overrides["bucket_no_upscale"] = True
    return datasets_of_config(load_config(args.config_file, overrides), options)


def check_config(cfg) -> dict:
    """The health report of a run's datasets (the GUI's Check dataset), with no progress bar."""
    from .health import CheckOptions, check_datasets

    datasets, root, options = datasets_of_config(cfg, CheckOptions(show_progress=False))
    return check_datasets(datasets, options, root, source="the LoRA tab's folders")


def datasets_of_config(cfg, options):
    """A checked config's datasets, the folder they share and the options the config sets."""
    import os
    from pathlib import Path

    from ..data.sources import datasets_from_config

    from ..training.resolve import check_pixel_multiple, family_of_config

    datasets = datasets_from_config(cfg)  # its settings are checked by the scan, as the trainer's are
    family = family_of_config(cfg)  # the model's family (torch-free): its pixel multiple
    if family is not None:
        check_pixel_multiple(datasets, family)
    options.max_token_length = cfg.max_token_length
    options.gradient_accumulation_steps = cfg.gradient_accumulation_steps
    options.seed = cfg.seed
    dirs = [str(s.image_dir or s.metadata_file.parent) for d in datasets for s in d.subsets]
    try:
        root = Path(os.path.commonpath(dirs)) if dirs else None
    except ValueError:  # folders on different drives
        root = None
    if root is not None and len(dirs) == 1:
        root = root.parent
    return datasets, root, options
