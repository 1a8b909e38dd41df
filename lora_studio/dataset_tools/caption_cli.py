"""``lora-studio caption ...``: tag (WD14) or caption (BLIP) a folder of images.

Module-level imports stay light (no torch, onnxruntime or transformers): ``lora-studio --help`` must be quick.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

_COMMON_HELP = """\
Each image DIR/name.ext gets the caption file DIR/name.txt (see --caption_extension). When a caption file exists and
is not empty, --mode says what happens:
  overwrite  (default, as Kohya) the new caption replaces it
  append     its text is kept and {what}
  skip       it is left alone (the image is not read)
--dry_run writes nothing and prints, per image, the old and the new caption. Unreadable images are skipped with a
warning. Writes are atomic.

Models come from --model_dir (a folder holding the model's files), else the Hugging Face cache, else a download
from the Hub (unless HF_HUB_OFFLINE=1; then the error says which files to fetch and where to put them).
"""

_WD14_HELP = """\
Tag images with a WD14 tagger (SmilingWolf's wd-v1-4 / wd-v3 ONNX models: model.onnx and selected_tags.csv), run
with onnxruntime (CUDA when onnxruntime-gpu sees a GPU, else the CPU). Images are prepared as sd-scripts does
(transparency on white, padded to a white square, BGR).

Order of the tags in a caption:
  1. the trigger word (--trigger)
  2. the --always_first_tags that were found, in the order given
  3. the rating tag (the most probable one), with --use_rating_tags
  4. the character tags by descending confidence, with --character_tags_first
  5. the other tags by descending confidence
  6. the rating tag, with --use_rating_tags_as_last_tag
Underscores become spaces in tags longer than 3 characters (kaomoji like ^_^ stay) unless --keep_underscore;
brackets are escaped, hat_(object) -> hat \\(object\\), unless --no_escape_brackets. --undesired_tags and
--always_first_tags match with or without underscores and escapes.

""" + _COMMON_HELP.format(what="the new tags it lacks follow (as sd-scripts' --append_tags)")

_BLIP_HELP = """\
Caption images with a sentence from BLIP (transformers' BlipForConditionalGeneration; greedy decoding, or beam search
with --num_beams > 1), written as "PREFIX caption SUFFIX". Weights are read from model.safetensors only.
Florence-2 and other models that need trust_remote_code are not supported: they would run code downloaded from the
Hub.

""" + _COMMON_HELP.format(what="the new sentence follows after --caption_separator")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("folder", metavar="DIR", help="the folder of images")
    common.add_argument("--caption_extension", default=".txt", help="the caption files' extension (default .txt)")
    common.add_argument("--mode", choices=("overwrite", "append", "skip"), default="overwrite",
                        help="what to do with an existing caption (default overwrite)")
    common.add_argument("--dry_run", action="store_true", help="write nothing; show the old and new captions")
    common.add_argument("--recursive", action="store_true", help="also the images in subfolders")
    common.add_argument("--batch_size", type=int, default=1, help="images per model run (default 1)")
    common.add_argument("--model_dir", help="a folder holding the model's files (instead of the Hugging Face cache)")
    common.add_argument("--caption_separator", default=", ", help="between tags, and before appended text "
                                                                   "(default ', ')")
    common.add_argument("--events", help="also write the progress, end or error to this JSON-lines file (the GUI's)")
    common.add_argument("--report", help="also write the report (per image: caption, old caption, action) to this "
                                         "JSON file")
    return common


def add_caption_commands(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="captioner", required=True)
    common = _common()
    raw = argparse.RawDescriptionHelpFormatter

    wd14 = tools.add_parser("wd14", parents=[common], help="Danbooru-style tags from a WD14 ONNX tagger",
                            description=_WD14_HELP, formatter_class=raw)
    wd14.add_argument("--repo_id", default="SmilingWolf/wd-v1-4-convnext-tagger-v2",
                      help="the tagger's Hugging Face repository (default SmilingWolf/wd-v1-4-convnext-tagger-v2)")
    wd14.add_argument("--general_threshold", type=float, default=0.35,
                      help="keep general tags this confident (default 0.35)")
    wd14.add_argument("--character_threshold", type=float, default=0.85,
                      help="keep character tags this confident (default 0.85)")
    wd14.add_argument("--undesired_tags", default="", help="tags never written, 'a, b'")
    wd14.add_argument("--always_first_tags", default="", help="tags put first when found, in this order, 'a, b'")
    wd14.add_argument("--character_tags_first", action="store_true", help="character tags before the others")
    wd14.add_argument("--use_rating_tags", action="store_true", help="the rating tag (general, sensitive, ...) first")
    wd14.add_argument("--use_rating_tags_as_last_tag", action="store_true", help="the rating tag last")
    wd14.add_argument("--remove_underscore", dest="remove_underscore", action="store_true", default=True,
                      help="underscores -> spaces in tags over 3 characters (default)")
    wd14.add_argument("--keep_underscore", dest="remove_underscore", action="store_false",
                      help="keep the underscores")
    wd14.add_argument("--escape_brackets", dest="escape_brackets", action="store_true", default=True,
                      help="( -> \\( and ) -> \\) (default; AUTOMATIC1111 reads bare brackets as emphasis)")
    wd14.add_argument("--no_escape_brackets", dest="escape_brackets", action="store_false",
                      help="leave brackets as they are")
    wd14.add_argument("--trigger", help="the trigger word, always the first tag")

    blip = tools.add_parser("blip", parents=[common], help="a sentence per image from BLIP (not Florence-2: it "
                                                           "needs remote code)",
                            description=_BLIP_HELP, formatter_class=raw)
    blip.add_argument("--repo_id", default="Salesforce/blip-image-captioning-large",
                      help="the model's Hugging Face repository (default Salesforce/blip-image-captioning-large)")
    blip.add_argument("--max_length", type=int, default=75, help="most tokens in a caption (default 75)")
    blip.add_argument("--min_length", type=int, default=5, help="fewest tokens in a caption (default 5)")
    blip.add_argument("--num_beams", type=int, default=1, help="beam search with more than 1 (default 1: greedy)")
    blip.add_argument("--prefix", default="", help="text before the caption (e.g. the trigger word)")
    blip.add_argument("--suffix", default="", help="text after the caption")
    blip.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")


def run_caption_command(args: argparse.Namespace) -> int:
    """Run the tagger or captioner; with ``--events`` its progress, end or error also go to that file, with
    ``--report`` the report to that JSON file."""
    from ..tool_progress import run_tool

    return run_tool(f"caption {args.captioner}", args.events, args.report, lambda: caption_folder(args))


def tag_options(args: argparse.Namespace):
    from .tagger import TagOptions, parse_tag_list

    rating = "last" if args.use_rating_tags_as_last_tag else "first" if args.use_rating_tags else None
    return TagOptions(args.general_threshold, args.character_threshold, parse_tag_list(args.undesired_tags),
                      parse_tag_list(args.always_first_tags), args.character_tags_first, rating,
                      args.remove_underscore, args.escape_brackets, args.trigger)


def caption_folder(args: argparse.Namespace, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Tag or caption ``args.folder`` as the options say: (the folder, the report)."""
    from ..tool_progress import phase
    from . import caption_files as cf
    from .model_files import find_model

    from ..errors import UserError

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 (got {args.batch_size})")
    wd14 = args.captioner == "wd14"
    jobs, warnings = cf.find_images(args.folder, args.caption_extension, args.recursive)
    todo, left = cf.to_caption(jobs, args.mode)
    records = {job.image: cf.skipped_record(job) for job in left}
    frequency: Counter = Counter()
    if todo:
        if wd14:
            from .tagger import WD14Tagger, model_spec, select_tags

            options = tag_options(args)
            folder = find_model(model_spec(args.repo_id), args.model_dir, cache_dir)
            phase(f"loading {args.repo_id if not args.model_dir else folder}")
            tagger = WD14Tagger(folder)
            infer, desc = tagger.probabilities, "tagging"
        else:
            from .captioner import BlipCaptioner, join_text, model_spec

            folder = find_model(model_spec(args.repo_id), args.model_dir, cache_dir)
            phase(f"loading {args.repo_id if not args.model_dir else folder}")
            captioner = BlipCaptioner(folder, args.device, args.max_length, args.min_length, args.num_beams)
            infer, desc = captioner.captions, "captioning"
        for job, result, warning in cf.in_batches(todo, args.batch_size, desc, infer):
            if warning:
                warnings.append(warning)
                records[job.image] = {**cf.skipped_record(job), "caption": None, "warning": warning}
                continue
            if wd14:
                tags = select_tags(result, tagger.labels, options)
                frequency.update(tags)
                caption = (cf.append_tags(job.old, tags, args.caption_separator, options.trigger)
                           if args.mode == "append" else args.caption_separator.join(tags))
            else:
                sentence = join_text(args.prefix, result, args.suffix)
                caption = (cf.append_text(job.old, sentence, args.caption_separator)
                           if args.mode == "append" else sentence)
            if not caption:
                warning = f"{job.image}: skipped, {'no tag reached the thresholds' if wd14 else 'empty caption'}"
                warnings.append(warning)
                records[job.image] = {**cf.skipped_record(job), "caption": None, "warning": warning}
                continue
            records[job.image] = cf.settle(job, caption, args.mode, args.dry_run)
    images = [records[job.image] for job in jobs if job.image in records]
    report = {"folder": str(Path(args.folder)), "tool": args.captioner, "mode": args.mode, "dry_run": args.dry_run,
              "counts": dict(Counter(r["action"] for r in images)), "images": images, "warnings": warnings}
    if wd14:
        report["tag_frequency"] = sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0]))
    report["text"] = _describe(report)
    return Path(args.folder), report


def _describe(report: dict) -> str:
    lines = []
    if report["dry_run"]:
        for record in report["images"]:
            lines.append(f"{record['image']}: {record['action']}")
            if record["action"] != "skipped":
                lines += [f"  old: {record['old'] if record['old'] is not None else '(no caption file)'}",
                          f"  new: {record['caption']}"]
    lines += [f"warning: {w}" for w in report["warnings"]]
    if report.get("tag_frequency"):
        top = report["tag_frequency"][:20]
        lines.append("top tags: " + ", ".join(f"{tag} ({count})" for tag, count in top))
    counts = ", ".join(f"{n} {action}" for action, n in sorted(report["counts"].items())) or "no images"
    verb = "tagged" if report["tool"] == "wd14" else "captioned"
    dry = ", dry run: nothing written" if report["dry_run"] else ""
    lines.append(f"{verb} {report['folder']} ({report['mode']}{dry}): {counts}")
    return "\n".join(lines)
