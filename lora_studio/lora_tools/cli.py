"""The ``lora-studio lora`` command group: inspect, resize, merge (option names as Kohya_ss's utilities)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


# the transformer families' separate text-encoder files (their settings' names): who has them, which modules
TEXT_ENCODER_FILES = {"clip_l": ("Flux.1 / SD3", "CLIP-L (lora_te1_)"), "clip_g": ("SD3", "CLIP-G (lora_te2_)"),
                      "t5xxl": ("Flux.1 / Chroma / SD3", "T5-XXL (lora_te3_)"),
                      "qwen3": ("Anima", "Qwen3 (lora_te_)"), "gemma2": ("Lumina 2", "Gemma2 (lora_te_)")}


def add_lora_commands(parser: argparse.ArgumentParser) -> None:
    tools = parser.add_subparsers(dest="tool", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--events", help="also write the progress, end or error to this JSON-lines file (the GUI's)")
    common.add_argument("--report", help="also write the result (and inspect's report) to this JSON file")
    inspect = tools.add_parser("inspect", parents=[common],
                               help="what a LoRA file is: family, type, ranks, apps, training settings")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")

    resize = tools.add_parser("resize", parents=[common],
                              help="a LoRA / LoCon to another rank by SVD (as Kohya's resize)")
    resize.add_argument("source", help="the LoRA to resize")
    resize.add_argument("out", help="the new file (never the input)")
    resize.add_argument("--new_rank", type=int, default=4, help="the rank (the cap with a dynamic method)")
    resize.add_argument("--new_conv_rank", type=int, help="the rank of 3x3 convolutions (default: new_rank)")
    resize.add_argument("--dynamic_method", choices=("sv_ratio", "sv_fro", "sv_cumulative"))
    resize.add_argument("--dynamic_param", type=float, help="the dynamic method's target (e.g. 0.9 for sv_fro)")
    resize.add_argument("--device", default="cpu", help="cpu or cuda")
    resize.add_argument("--save_precision", choices=("float", "fp16", "bf16"), help="default: the input's")
    resize.add_argument("--verbose", action="store_true", help="one line per module: its rank and what it keeps")

    merge = tools.add_parser("merge", parents=[common],
                             help="LoRA files with ratios into one LoRA, or (with --model) into a checkpoint")
    merge.add_argument("--model", help="bake the LoRAs into this base model (a single-file checkpoint or a diffusers "
                                       "folder); the output is a single-file checkpoint")
    merge.add_argument("--v2", action="store_true", help="the base model is SD2.x (when its file does not say)")
    for part, (family, modules) in TEXT_ENCODER_FILES.items():
        merge.add_argument(f"--{part}", help=f"{family}: also bake the {modules} modules into a copy of this {part} "
                                             f"file (written as <out>-{part}.safetensors); else they are left out")
    merge.add_argument("--lora", action="append", required=True, help="a LoRA file (repeat for more)")
    merge.add_argument("--ratio", action="append", type=float, default=[], help="its ratio (one per --lora)")
    merge.add_argument("--out", required=True, help="the merged file")
    merge.add_argument("--mode", choices=("concat", "svd"), default="concat",
                       help="concat: exact (ranks add up); svd: the best new_rank")
    merge.add_argument("--new_rank", type=int, help="the rank of an svd merge")
    merge.add_argument("--new_conv_rank", type=int, help="the rank of 3x3 convolutions in an svd merge")
    merge.add_argument("--save_precision", choices=("float", "fp16", "bf16"), help="default: the first input's")

    extract = tools.add_parser("extract", parents=[common],
                               help="a LoRA from a fine-tuned model and its base (SVD of the difference)")
    extract.add_argument("--model", "--model_org", dest="model", required=True, help="the base model")
    extract.add_argument("--tuned", "--model_tuned", dest="tuned", required=True, help="the fine-tuned model")
    extract.add_argument("--out", "--save_to", dest="out", required=True, help="the LoRA to write")
    extract.add_argument("--dim", type=int, default=4, help="the rank (the cap with a dynamic method)")
    extract.add_argument("--conv_dim", type=int, help="also extract 3x3 convolutions, at this rank (LoCon)")
    extract.add_argument("--clamp_quantile", type=float, default=0.99, help="clamp the weights at this quantile")
    extract.add_argument("--min_diff", type=float, default=0.01,
                         help="leave the text encoders out when none of their weights differs by more")
    extract.add_argument("--dynamic_method", choices=("sv_ratio", "sv_fro", "sv_cumulative"))
    extract.add_argument("--dynamic_param", type=float)
    extract.add_argument("--device", default="cpu")
    extract.add_argument("--save_precision", choices=("float", "fp16", "bf16"), default="float")
    extract.add_argument("--v2", action="store_true", help="the models are SD2.x (when their files do not say)")
    for part, (family, modules) in TEXT_ENCODER_FILES.items():
        extract.add_argument(f"--{part}", help=f"{family}: the base {part} file (with --{part}_tuned: extract the "
                                               f"{modules} modules too)")
        extract.add_argument(f"--{part}_tuned", help=f"{family}: the fine-tuned {part} file")

    convert = tools.add_parser("convert", parents=[common], help="kohya format <-> diffusers / peft format")
    convert.add_argument("source")
    convert.add_argument("out")
    convert.add_argument("--to", choices=("diffusers", "kohya"), required=True)
    convert.add_argument("--model", required=True, help="the base model (its layer names; for Flux.1 / Chroma the "
                                                        "transformer file, whose header is enough)")
    convert.add_argument("--v2", action="store_true")
    convert.add_argument("--save_precision", choices=("float", "fp16", "bf16"), default="float")


def run_lora_command(args: argparse.Namespace) -> int:
    """Run one tool; with ``--events`` its progress, end or error also go to that file, and with ``--report`` what
    it printed (and, for inspect and resize, the numbers) to that JSON file."""
    from ..tool_progress import run_tool

    return run_tool(args.tool, args.events, args.report, lambda: _run_tool(args))


def _run_tool(args: argparse.Namespace) -> tuple[Path | None, dict]:
    """(the file written, or None for inspect; the report, whose ``text`` is what the terminal shows)."""
    if args.tool == "inspect":
        from .inspect import describe, inspect_lora

        report = inspect_lora(args.file, show_progress=not args.json)
        text = json.dumps(report, indent=1, default=str) if args.json else describe(report)
        return None, {**report, "text": text}
    if args.tool == "resize":
        from .resize import resize_lora

        out, modules = resize_lora(args.source, args.out, args.new_rank, args.new_conv_rank, args.dynamic_method,
                                   args.dynamic_param, args.device, args.save_precision)
        lines = [f"{r.stem:80} rank {r.old_rank} -> {r.new_rank}, Frobenius kept {r.fro_kept:.1%}"
                 for r in modules] if args.verbose else []
        mean = sum(r.fro_kept for r in modules) / len(modules)
        lines.append(f"wrote {out}: {len(modules)} modules, mean Frobenius share kept {mean:.2%}")
        return out, {"text": "\n".join(lines), "output": str(out), "mean_fro_kept": mean,
                     "modules": [vars(r) for r in modules]}
    if args.tool == "convert":
        from .convert import convert_lora

        out = convert_lora(args.source, args.out, args.model, args.to, args.v2, args.save_precision)
    elif args.tool == "extract":
        from .extract import extract_lora

        text_encoders = {part: (getattr(args, part), getattr(args, f"{part}_tuned")) for part in TEXT_ENCODER_FILES
                         if getattr(args, part) or getattr(args, f"{part}_tuned")}
        out = extract_lora(args.model, args.tuned, args.out, args.dim, args.conv_dim, args.clamp_quantile,
                           args.min_diff, args.dynamic_method, args.dynamic_param, args.device, args.save_precision,
                           args.v2, text_encoders=text_encoders)
    elif args.model:
        from .bake import bake_checkpoint

        text_encoders = {part: getattr(args, part) for part in TEXT_ENCODER_FILES if getattr(args, part)}
        out, notes = bake_checkpoint(args.model, args.lora, args.ratio, args.out, args.save_precision, args.v2,
                                     text_encoders)
        return out, {"text": "\n".join([f"wrote {out}", *notes]), "output": str(out), "notes": notes}
    elif any(getattr(args, part) for part in TEXT_ENCODER_FILES):
        from ..errors import UserError

        raise UserError(f"--{' / --'.join(TEXT_ENCODER_FILES)} are for merging into a checkpoint (with --model)")
    else:
        from .merge import merge_loras

        out = merge_loras(args.lora, args.ratio, args.out, args.mode, args.new_rank, args.new_conv_rank,
                          args.save_precision)
    return out, {"text": f"wrote {out}", "output": str(out)}
