"""``lora-studio compare``: the comparison grids of a run (``--config``) or of any LoRA files (``--files``)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .errors import UserError


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Images of each LoRA file at each strength (the multiplier on the LoRA's weight change, as in A1111 and "
        "ComfyUI; 0 is the base model) with fixed seeds, one labelled grid per prompt, in <output_dir>/compare/. "
        "With --config: the run's base model, settings, sample prompts and saved files. With --files: any kohya-format "
        "LoRA / LoCon / LoHa / LoKr files on --model, with --prompts.")
    parser.add_argument("--config", "--config_file", dest="config_file", metavar="FILE",
                        help="a training config (.toml): its saved files, base model, sample prompts and sampler")
    parser.add_argument("--files", nargs="+", metavar="LORA", help="LoRA .safetensors files (rows of the grid)")
    parser.add_argument("--model", metavar="BASE", help="base model: .safetensors checkpoint or diffusers folder")
    parser.add_argument("--vae", metavar="VAE", help="a VAE to use instead of the model's own")
    parser.add_argument("--prompts", metavar="FILE_OR_TEXT",
                        help="a sample_prompts file (--n --w --h --d --s --l per line) or the prompt text")
    parser.add_argument("--negative", metavar="TEXT", help="negative prompt for every prompt")
    parser.add_argument("--strengths", nargs="+", type=float, metavar="S",
                        help="strengths, the grid's columns (default 0 0.5 0.7 0.85 1.0)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="one grid per prompt and seed (default: the prompt's --d, else seed + prompt number)")
    parser.add_argument("--seed", type=int, help="base seed of prompts without --d (default: the run's seed, or 0)")
    parser.add_argument("--sampler", help="sampler (default: the run's sample_sampler, or ddim)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: each prompt's --s, or 30)")
    parser.add_argument("--size", metavar="WxH", help="image size, e.g. 512 or 512x768 (default: each prompt's)")
    parser.add_argument("--cfg", type=float, help="CFG scale (default: each prompt's --l, or 7.5)")
    parser.add_argument("--clip_skip", type=int, help="clip skip (default: the run's, or 1)")
    parser.add_argument("--v2", action="store_true", help="the base model is SD2.x (as the train option)")
    parser.add_argument("--v_parameterization", action="store_true", help="the base model predicts v")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <output_dir>/compare)")
    parser.add_argument("--name", help="file name prefix (default: the run's output_name, or the first file's)")
    parser.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when present)")
    parser.add_argument("--allow_pickle", action="store_true", help="allow a .ckpt base model (read as data only)")
    _add_family_options(parser)


def _family_options():
    """The settings of the schema's family groups (Flux.1 / Chroma: ae, clip_l, t5xxl, tokenizer_cache_dir,
    t5xxl_max_token_length, apply_t5_attn_mask ...), which a family's base model needs to load and render."""
    from .config.schema import SD_ONLY, SETTINGS

    return [s for s in SETTINGS if s.families is not None and s.name not in SD_ONLY]


def _add_family_options(parser: argparse.ArgumentParser) -> None:
    from .config.schema import BOOL

    group = parser.add_argument_group("model family settings (Flux.1 / Chroma: the files and prompt options of the "
                                      "base model; with --config they override the run's)")
    for setting in _family_options():
        kwargs = {"dest": setting.name, "default": argparse.SUPPRESS, "metavar": "VALUE",
                  "help": setting.help.replace("%", "%%")}
        if setting.kind == BOOL:
            kwargs.update(nargs="?", const="true", metavar="true|false")
        group.add_argument(f"--{setting.name}", **kwargs)


def family_values(args: argparse.Namespace) -> dict:
    """The family settings given on the command line, as setting values."""
    return {s.name: getattr(args, s.name) for s in _family_options() if hasattr(args, s.name)}


def _size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 8:
        raise UserError(f"--size: give WIDTH or WIDTHxHEIGHT in pixels, got '{text}'")
    return values[0], values[-1]


def _run_name(path: Path) -> str:
    """A file's run name: ``name-000003`` / ``name-step00000300`` -> ``name``."""
    return re.sub(r"-(\d{6}|step\d{8})$", "", path.stem) or "lora"


def run_compare(args: argparse.Namespace) -> int:
    from .compare import DEFAULT_STRENGTHS, compare_folder, compare_grid, compare_run

    for path in args.files or []:
        if Path(path).expanduser().is_dir():
            raise UserError(f"--files: {path} is a folder; give the LoRA .safetensors files")
        if not Path(path).expanduser().is_file():
            raise UserError(f"--files: not found: {path}")
    if args.out and Path(args.out).expanduser().exists() and not Path(args.out).expanduser().is_dir():
        raise UserError(f"--out: {args.out} is a file; give the folder for the grids")
    options = {"strengths": args.strengths or DEFAULT_STRENGTHS, "seeds": args.seeds, "steps": args.steps,
               "size": _size(args.size), "cfg_scale": args.cfg, "negative": args.negative}
    if args.sampler:
        options["sampler"] = args.sampler
    if args.device:
        options["device"] = args.device
    if args.seed is not None:
        options["seed"] = args.seed
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be 1 or more")
    if args.config_file:
        from .config import load_config

        cfg = load_config(args.config_file, {})
        changes = {k: v for k, v in (("pretrained_model_name_or_path", args.model), ("vae", args.vae),
                                     ("clip_skip", args.clip_skip), ("output_name", args.name)) if v}
        if args.v2:
            changes["v2"] = True
        if args.v_parameterization:
            changes["v_parameterization"] = True
        if args.allow_pickle:
            changes["allow_pickle"] = True
        changes.update(family_values(args))
        cfg = cfg.replace(**changes) if changes else cfg
        if not cfg.pretrained_model_name_or_path:
            raise UserError(f"{args.config_file} has no pretrained_model_name_or_path; give --model")
        index = compare_run(cfg, files=args.files, prompts=args.prompts, out_dir=args.out, **options)
    else:
        if not args.files:
            raise UserError("give --config FILE (a run's config), or --files A.safetensors ... with --model and "
                            "--prompts")
        if not args.model:
            raise UserError("--files needs --model: the base model the LoRA files were trained on")
        if not args.prompts:
            raise UserError("no prompts: give --prompts (a sample_prompts file or the prompt text)")
        first = Path(args.files[0]).expanduser()
        settings = family_values(args)
        if args.vae:  # a family whose VAE is a part of its own (SD3, Anima) reads it from its settings
            settings["vae"] = args.vae
        index = compare_grid(args.files, args.prompts, model=args.model, vae=args.vae, v2=args.v2,
                             v_parameterization=True if args.v_parameterization else None,
                             clip_skip=args.clip_skip or 1, allow_pickle=args.allow_pickle,
                             settings=settings or None,
                             out_dir=args.out or compare_folder(first.parent),
                             output_name=args.name or _run_name(first), **options)
    for grid in index["grids"]:
        print(grid["path"])
    return 0
