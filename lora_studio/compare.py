"""Comparison grids: the saved LoRA files x strengths, one labelled grid image per sample prompt (like A1111's X/Y/Z
plot), made by the engine process (``lora-studio compare``); and ``Renderer``, the base model that makes images with
any stack of LoRA files at any strengths (the grid and the GUI's Test tab).

Strength is what it is in AUTOMATIC1111 and ComfyUI: the multiplier on each LoRA's weight change
(``lora_delta``); strength 0 is the base model's own image (its tile is made once per prompt and seed, and shared by
every file's row). Every image of a prompt uses the same seed.

Outputs, in ``<output_dir>/compare/`` (or the folder given):
  ``<name>_compare_<NN>.png``       one grid per prompt (and seed): rows = files, columns = strengths
  ``tiles/<name>_<NN>_...png``      each image on its own
  ``<name>_compare.json``          the index: files, strengths, prompts, grid and tile paths (rewritten per grid)
  ``<name>_compare_events.jsonl``  progress for the GUI: start, image (its index, the total and the ETA from the
                                   images so far), grid, end / error (``training.events``)

Importing this module does not import torch (the GUI reads the index and builds the command with it).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import UserError
from .io_utils import SafetensorsFormatError, read_safetensors_header

log = logging.getLogger("lora_studio")

DEFAULT_STRENGTHS = (0.0, 0.5, 0.7, 0.85, 1.0)
INDEX_VERSION = 1


# ---------------------------------------------------------------- torch-free: paths, files of a run, the index
def compare_folder(output_dir: str | Path) -> Path:
    return Path(output_dir) / "compare"


def index_path(folder: str | Path, output_name: str) -> Path:
    return Path(folder) / f"{output_name}_compare.json"


def events_path(folder: str | Path, output_name: str) -> Path:
    return Path(folder) / f"{output_name}_compare_events.jsonl"


def read_index(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def compare_argv(config_path: str | Path, extra: Sequence[str] = ()) -> list[str]:
    """The engine command that makes a finished run's grids (for the GUI to start as a job)."""
    return [sys.executable, "-m", "lora_studio.cli", "compare", "--config", str(config_path), *extra]


def _header_metadata(path: Path) -> dict:
    try:
        return read_safetensors_header(path).metadata
    except SafetensorsFormatError:
        return {}


def run_files(output_dir: str | Path, output_name: str) -> list[Path]:
    """The LoRA files a run saved in ``output_dir``: ``<name>-<epoch>``, ``<name>-step<step>`` and the final
    ``<name>.safetensors``, in training order (by the step in their metadata, else by the number in the name; the
    final file last)."""
    folder = Path(output_dir)
    pattern = re.compile(re.escape(output_name) + r"(?:-(\d{6})|-step(\d{8}))?\.safetensors")
    found = []
    for path in folder.glob(glob.escape(output_name) + "*.safetensors"):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        epoch, step = match.groups()
        final = epoch is None and step is None
        try:
            meta_step = int(_header_metadata(path).get("ss_steps"))
        except (TypeError, ValueError):
            meta_step = None
        number = int(step) if step else int(epoch) if epoch else 0
        found.append((path, final, number, meta_step))
    if all(meta is not None for *_, meta in found):
        found.sort(key=lambda e: (e[3], e[1]))
    else:
        found.sort(key=lambda e: (e[1], e[2]))
    return [e[0] for e in found]


def sample_size(cfg) -> int:
    """The size of a run's sample images where a prompt gives no --w/--h: its training resolution (the first value
    of "width,height"), as the engine samples."""
    return int(str(cfg.resolution).split(",")[0])


def run_seed(cfg, files: Sequence[str | Path]) -> int:
    """The seed a run's sample images of prompts without --d start from (prompt i: seed + i): the config's, else the
    one the run drew, from its files' metadata (0 when neither says)."""
    if cfg.seed is not None:
        return int(cfg.seed)
    try:
        return int(_header_metadata(Path(files[-1])).get("ss_seed"))
    except (TypeError, ValueError, IndexError, OSError):
        return 0


def _label(value: float) -> str:
    return f"{value:g}"


# ---------------------------------------------------------------- the renderer (torch)
class Renderer:
    """A base model, loaded once, that makes images with a stack of LoRA files at any strengths.

    For the comparison grid and the Test tab: ``set_loras(files)`` reads them (kohya LoRA / LoCon / LoHa / LoKr ...
    files, ours or any other trainer's), ``image(prompt, strengths, ...)`` makes one image with file i at
    ``strengths[i]`` (all 0, or no files: the base model). ``components`` reuses an already loaded model.
    """

    def __init__(self, model: str | Path | None = None, *, components=None, vae: str | None = None, v2: bool = False,
                 v_parameterization: bool | None = None, zero_terminal_snr: bool = False, clip_skip: int = 1,
                 max_token_length: int = 75, device=None, dtype=None, allow_pickle: bool = False,
                 no_half_vae: bool = False, settings: dict | None = None):
        import torch

        from .config import build_config
        from .models.loading import load_components

        if components is None:
            if not model:
                raise UserError("no base model: give --model (or a config with pretrained_model_name_or_path)")
            components = load_components(str(model), vae, v2, allow_pickle, options=settings)
        self.components = components
        self.device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.float32 if self.device.type == "cpu" else \
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.dtype = dtype
        family = components.family
        options = build_config({"clip_skip": clip_skip, "max_token_length": max_token_length,
                                "v_parameterization": bool(v_parameterization),
                                "zero_terminal_snr": zero_terminal_snr, **(settings or {})})
        self.prompt_options = family.prompt_options(options)
        if v_parameterization is not None or zero_terminal_snr:  # as training: the prediction type the run used
            family.objective(components, options)
        mode = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "no")
        vae_dtype = torch.float32 if family.vae_needs_float32(mode, no_half_vae) else dtype
        for module, want in [(components.denoiser, dtype), (components.vae, vae_dtype)] + \
                [(te, dtype) for te in components.text_encoders]:
            same = next(module.parameters()).dtype == want  # (a .to(dtype) that changes nothing still warns)
            module.to(self.device) if same else module.to(self.device, want)
        self.stack = None

    def set_loras(self, files: Sequence[str | Path]):
        """Read these LoRA files (replacing the previous ones); returns the ``LoRAStack`` (its ``report`` says how
        many modules of each file matched, and which keys were left out)."""
        from .lora_delta import LoRAStack

        self.close()
        self.stack = LoRAStack(self.components, list(files)) if files else None
        return self.stack

    @property
    def files(self) -> list:
        return self.stack.files if self.stack is not None else []

    def image(self, prompt, strengths: Sequence[float] = (), sampler: str = "ddim", seed: int = 0,
              output_type: str = "pil"):
        """One image of ``prompt`` (a ``SamplePrompt`` or a prompt line with ``--n --w --h --d --s --l``) with LoRA
        file i at ``strengths[i]`` (missing ones: 0). The prompt's own seed (``--d``) wins over ``seed``."""
        import contextlib

        import torch

        from .training.sampling import generate

        prompt = as_prompt(prompt)
        if self.stack is not None:
            values = list(strengths) + [0.0] * (len(self.stack.files) - len(strengths))
            self.stack.apply(values[:len(self.stack.files)])
        elif any(strengths):
            raise ValueError("strengths given but no LoRA files set")
        autocast = contextlib.nullcontext() if self.dtype == torch.float32 else \
            torch.autocast(self.device.type, dtype=self.dtype)
        with autocast:
            return generate(self.components, prompt, sampler, self.prompt_options, self.device, self.dtype, seed,
                            output_type=output_type)

    def close(self) -> None:
        """Put the base model's own weights back."""
        if self.stack is not None:
            self.stack.restore()


def as_prompt(prompt, default_size: int = 512):
    from .training.sampling import SamplePrompt, parse_prompt_line

    if isinstance(prompt, SamplePrompt):
        return prompt
    parsed = parse_prompt_line(str(prompt), default_size)
    if parsed is None:
        raise UserError(f"not a prompt: {prompt!r}")
    return parsed


def read_prompts(source: str | Path | Sequence, default_size: int = 512) -> list:
    """Prompts from a sample_prompts file (sd-scripts' ``--n --w --h --d --s --l --ss``), from prompt text (one a
    line), or from a list of prompts / SamplePrompts."""
    from .training.sampling import SamplePrompt, parse_prompt_line, read_prompt_file

    if isinstance(source, (list, tuple)):
        prompts = [p if isinstance(p, SamplePrompt) else parse_prompt_line(str(p), default_size) for p in source]
        prompts = [p for p in prompts if p is not None]
    elif isinstance(source, Path) or (isinstance(source, str) and "\n" not in source and len(source) < 1024
                                      and Path(source).expanduser().is_file()):
        return read_prompt_file(Path(source).expanduser(), default_size)
    elif isinstance(source, str) and "\n" not in source and source.strip().lower().endswith(".txt"):
        raise UserError(f"prompts: file not found: {source}")
    elif isinstance(source, str) and "\n" not in source and len(source) < 1024 and Path(source).expanduser().is_dir():
        raise UserError(f"prompts: {source} is a folder; give a sample_prompts file or the prompt text")
    else:
        prompts = [p for p in (parse_prompt_line(line, default_size) for line in str(source).splitlines())
                   if p is not None]
    if not prompts:
        raise UserError("no prompts: give a sample_prompts file or prompt text (one prompt a line)")
    return prompts


# ---------------------------------------------------------------- the grid image (PIL)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int = 6) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (split at spaces, long words anywhere)."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:  # a word wider than the line is cut anywhere
            if draw.textlength(line + ch, font=font) > width and line:
                lines.append(line)
                line = ""
            line += ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return lines or [""]


def compose_grid(tiles: Sequence[Sequence], row_labels: Sequence[str], column_labels: Sequence[str],
                 title: str = "", corner: str = "strength") -> tuple[Any, dict]:
    """One image: ``tiles[row][column]`` (PIL images of one size) with the column labels above, the row labels on
    the left and ``title`` on top. Returns (image, layout) where layout gives ``left``, ``top`` (the first tile's
    corner), ``tile_width``, ``tile_height``, ``rows``, ``columns``."""
    from PIL import Image, ImageDraw

    rows, columns = len(tiles), len(tiles[0])
    tw, th = tiles[0][0].size
    # the labels grow with the tiles: readable at full size, and when a wide grid is shrunk to fit a page
    size = max(12, min(tw, th) // 12)
    font, pad = _font(size), max(3, size // 3)
    line_h = size + pad
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(tw, 10 * size)  # the row-label column: room for a file name in a few lines
    row_lines = [_wrap(probe, label, font, label_w - 2 * pad, max(1, (th - 2 * pad) // line_h)) for label in
                 row_labels]
    left = min(label_w, max(int(max(probe.textlength(line, font=font) for lines in row_lines for line in lines)),
                            size * 3) + 2 * pad)
    width = left + columns * tw
    title_lines = _wrap(probe, title, font, width - 2 * pad, 4) if title else []
    title_h = len(title_lines) * line_h + (pad if title_lines else 0)
    top = title_h + line_h + pad
    grid = Image.new("RGB", (width, top + rows * th), "white")
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(title_lines):
        draw.text((pad, pad + i * line_h), line, fill="black", font=font)
    if corner and draw.textlength(corner, font=font) <= left - 2 * pad:
        draw.text((pad, title_h + pad // 2), corner, fill="gray", font=font)
    for c, label in enumerate(column_labels):
        text_w = draw.textlength(label, font=font)
        draw.text((left + c * tw + (tw - text_w) / 2, title_h + pad // 2), label, fill="black", font=font)
    for r, lines in enumerate(row_lines):
        y0 = top + r * th + (th - len(lines) * line_h) // 2
        for i, line in enumerate(lines):
            draw.text((pad, y0 + i * line_h), line, fill="black", font=font)
        for c in range(columns):
            grid.paste(tiles[r][c], (left + c * tw, top + r * th))
    return grid, {"left": left, "top": top, "tile_width": tw, "tile_height": th, "rows": rows, "columns": columns}


# ---------------------------------------------------------------- the job
def _atomic_png(image, path: Path) -> None:
    from .io_utils import atomic_write

    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _atomic_json(doc: dict, path: Path) -> None:
    from .io_utils import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def compare_grid(files: Sequence[str | Path], prompts, *, model: str | Path | None = None,
                 renderer: Renderer | None = None,
                 strengths: Sequence[float] = DEFAULT_STRENGTHS, seeds: Sequence[int] | None = None, seed: int = 0,
                 sampler: str = "ddim", steps: int | None = None, size: tuple[int, int] | None = None,
                 cfg_scale: float | None = None, negative: str | None = None, out_dir: str | Path = "compare",
                 output_name: str = "lora", default_size: int = 512,
                 progress: Callable[[int, int, dict], None] | None = None, show_progress: bool = True,
                 **model_options) -> dict:
    """Make the grids: for each prompt (and each of ``seeds``, if given; else the prompt's ``--d`` or ``seed`` + its
    index, as training's sample images), an image per file x strength, one grid image per prompt (rows = files,
    columns = strengths). ``steps``, ``size`` (width, height), ``cfg_scale`` and ``negative`` override the prompts'
    own values when given. ``model_options`` go to ``Renderer`` (vae, v2, v_parameterization, clip_skip ...)
    unless a ``renderer`` is given. ``progress(done, total, event)`` is called after each image. Returns the index
    (also written as JSON)."""
    from tqdm import tqdm

    from .lora_delta import read_lora_file
    from .training.events import EventLog, reported
    from .training.faults import hold_after_image
    from .training.sampling import make_scheduler

    folder = Path(out_dir)
    (folder / "tiles").mkdir(parents=True, exist_ok=True)
    events = EventLog(events_path(folder, output_name))
    started = time.time()
    with reported(events, {"status": "stopped", "output": str(folder)}):
        try:
            if not files:
                raise UserError("no LoRA files to compare")
            strengths = [float(s) for s in strengths]
            if not strengths:
                raise UserError("no strengths to compare")
            jobs = []  # one grid each: a prompt with its settings and seed
            for i, p in enumerate(read_prompts(prompts, default_size)):
                changes = {k: v for k, v in (("steps", steps), ("cfg_scale", cfg_scale), ("negative", negative))
                           if v is not None}
                if size is not None:
                    changes.update(width=int(size[0]) - int(size[0]) % 8, height=int(size[1]) - int(size[1]) % 8)
                p = dataclasses.replace(p, **changes)
                for s in (seeds if seeds else [p.seed if p.seed is not None else seed + i]):
                    jobs.append(dataclasses.replace(p, seed=int(s)))
            for p in jobs:  # an unknown sampler or a bad file is refused before the model loads
                make_scheduler(p.sampler or sampler, {})
            loras = [read_lora_file(f) for f in files]
            if renderer is None:
                events.emit("log", level="info", message=f"loading {model}")
                renderer = Renderer(model, **model_options)
            multiple = renderer.components.family.pixel_multiple  # the sizes the family renders (16 px: SD3 ...)
            jobs = [dataclasses.replace(p, width=p.width - p.width % multiple, height=p.height - p.height % multiple)
                    for p in jobs]
            only = renderer.components.family.samplers()
            if len(only) == 1:  # a family that renders one way (Flux: Euler over its schedule) records that one
                sampler = only[0]
                jobs = [dataclasses.replace(p, sampler=None) for p in jobs]
            stack = renderer.set_loras(loras)
            names = [f.name for f in stack.files]
            nonzero = [s for s in strengths if s != 0]
            per_grid = len(names) * len(nonzero) + (1 if len(nonzero) < len(strengths) else 0)
            total = per_grid * len(jobs)
            index = {"version": INDEX_VERSION, "model": str(renderer.components.source),
                     "files": [str(f.path) for f in stack.files], "file_names": names, "strengths": strengths,
                     "output_name": output_name, "folder": str(folder), "report": stack.report, "grids": [],
                     "status": "running", "started": round(started, 3)}
            events.emit("start", total_images=total, grids=len(jobs), files=index["files"], strengths=strengths,
                        output=str(folder))
            log.info("compare: %d file(s) x %d strength(s) x %d prompt(s) = %d images, into %s", len(names),
                     len(strengths), len(jobs), total, folder)
            done, rendering_since = 0, time.time()
            bar = tqdm(total=total, desc="compare", unit="image", disable=not show_progress, file=sys.stderr)
            for number, prompt in enumerate(jobs):
                stem = f"{output_name}_{number:02d}"
                base_image = base_path = None
                grid_tiles, grid_paths = [], []
                for f, name in enumerate(names):
                    row, row_paths = [], []
                    for s in strengths:
                        if s == 0 and base_image is not None:  # the base model's image: made once, shared by every row
                            row.append(base_image)
                            row_paths.append(str(base_path))
                            continue
                        values = [0.0] * len(names)
                        values[f] = s
                        image = renderer.image(prompt, values, sampler, prompt.seed)
                        path = folder / "tiles" / (f"{stem}_base.png" if s == 0 else
                                                   f"{stem}_f{f:02d}_{name}_{_label(s)}.png")
                        _atomic_png(image, path)
                        if s == 0:
                            base_image, base_path = image, path
                        row.append(image)
                        row_paths.append(str(path))
                        done += 1
                        bar.update(1)
                        per_image = (time.time() - rendering_since) / done  # from the first image on
                        event = {"index": done, "total": total, "grid": number, "file": None if s == 0 else f,
                                 "strength": s, "path": str(path), "prompt": prompt.prompt,
                                 "eta_s": round(per_image * (total - done), 1)}
                        events.emit("image", **event)
                        hold_after_image(done)
                        if progress is not None:
                            progress(done, total, event)
                    grid_tiles.append(row)
                    grid_paths.append(row_paths)
                title = prompt.prompt + (f"  (negative: {prompt.negative})" if prompt.negative else "") + \
                    f"  seed {prompt.seed}"
                grid, layout = compose_grid(grid_tiles, names, [_label(s) for s in strengths], title)
                grid_path = folder / f"{output_name}_compare_{number:02d}.png"
                _atomic_png(grid, grid_path)
                index["grids"].append({"index": number, "prompt": prompt.prompt, "negative": prompt.negative,
                                       "seed": prompt.seed, "width": prompt.width, "height": prompt.height,
                                       "steps": prompt.steps, "cfg_scale": prompt.cfg_scale,
                                       "sampler": prompt.sampler or sampler, "path": str(grid_path),
                                       "base": None if base_path is None else str(base_path), "tiles": grid_paths,
                                       "layout": layout})
                _atomic_json(index, index_path(folder, output_name))
                events.emit("grid", grid=number, path=str(grid_path), prompt=prompt.prompt)
            bar.close()
            index.update(status="completed", seconds=round(time.time() - started, 1))
            _atomic_json(index, index_path(folder, output_name))
            events.emit("end", status="completed", output=str(folder), index=str(index_path(folder, output_name)),
                        seconds=index["seconds"])
            log.info("compare: %d grid(s) in %s (%.0f s)", len(jobs), folder, index["seconds"])
            return index
        finally:
            if renderer is not None:
                renderer.close()  # the base model's own weights back


def family_settings(cfg) -> tuple[Any, dict]:
    """(the family of the run's base model, from its header or folder configs, or None; the explicit values of the
    run's settings that family reads: every setting whose ``families`` (config.schema) include it or are not
    limited). Flux and Chroma load their AE, CLIP-L, T5 and tokenizers from ``ae``, ``clip_l``, ``t5xxl`` and
    ``tokenizer_cache_dir`` and encode prompts with ``t5xxl_max_token_length`` / ``apply_t5_attn_mask``: the grid
    renders as the run's samples did."""
    from .config.schema import BY_NAME
    from .lora_tools.common import model_family

    model = cfg.pretrained_model_name_or_path
    family = model_family(Path(model).expanduser(), "pretrained_model_name_or_path") if model else None
    if family is None:
        return None, {}
    return family, {name: value for name, value in cfg.explicit().items()
                    if BY_NAME[name].families is None or family.name in BY_NAME[name].families}


def compare_run(cfg, files: Sequence[str | Path] | None = None, prompts=None, out_dir: str | Path | None = None,
                **options) -> dict:
    """The grids of a finished run from its config: its base model, VAE, v2 / v_parameterization / clip_skip, the
    settings its family reads (``family_settings``: Flux's ae, clip_l, t5xxl ...), its sample prompts and sampler (the
    family's own when it renders with no other), and its saved files (``run_files``) unless ``files`` are given."""
    if files is None:
        if not cfg.output_dir:
            raise UserError("the config has no output_dir, so its saved LoRA files cannot be found; give --files")
        files = run_files(cfg.output_dir, cfg.output_name)
        if not files:
            raise UserError(f"no saved LoRA files of '{cfg.output_name}' in {cfg.output_dir} "
                            f"({cfg.output_name}.safetensors, {cfg.output_name}-000001.safetensors ...): has the run "
                            "saved any yet?")
    if prompts is None:
        if not cfg.sample_prompts:
            raise UserError("no prompts: the config has no sample_prompts; give --prompts (a file or the text)")
        prompts = Path(cfg.sample_prompts)
    seed = run_seed(cfg, files)  # the seed of the run's sample images, so the grid matches them
    default_size = sample_size(cfg)
    family, settings = family_settings(cfg)
    samplers = family.samplers() if family is not None else ()
    options.setdefault("sampler", cfg.sample_sampler if not samplers or cfg.sample_sampler in samplers
                       else samplers[0])
    options.setdefault("settings", settings)
    if cfg.mixed_precision in ("fp16", "bf16") and "dtype" not in options:
        import torch

        if torch.cuda.is_available():
            options["dtype"] = torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16
    return compare_grid(files, prompts, model=cfg.pretrained_model_name_or_path, vae=cfg.vae, v2=cfg.v2,
                        v_parameterization=cfg.v_parameterization, zero_terminal_snr=cfg.zero_terminal_snr,
                        clip_skip=cfg.clip_skip, max_token_length=cfg.max_token_length, allow_pickle=cfg.allow_pickle,
                        no_half_vae=cfg.no_half_vae, seed=seed, default_size=default_size,
                        out_dir=out_dir or compare_folder(cfg.output_dir), output_name=cfg.output_name, **options)
