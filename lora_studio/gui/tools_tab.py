"""The Tools tab: the ``lora-studio lora`` tools (inspect, resize, merge, merge into a checkpoint, extract, convert)
as jobs in the queue, with a progress bar and the tool's report. The page never imports torch: it checks the fields,
turns them into the command's options, and the engine process does the work.

Each tool is described once (``TOOLS``): its fields make the tab's widgets, the checks and the command line.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import UserError
from ..jobs.runs import ACTIVE, RunManager, RunRecord
from . import views
from .browse import browse_button
from .carry import image_folder, is_empty, latest_file
from .form import outside_roots

PATH_KINDS = ("lora", "loras", "model", "out", "folder")
PRECISIONS = ("", "float", "fp16", "bf16")
DYNAMIC = ("", "sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class Field:
    """One input of a tool. ``kind``: lora (an existing .safetensors LoRA), loras (one a line: ``--lora`` each),
    model (a checkpoint file or a diffusers folder), out (a new .safetensors file), folder (an existing folder),
    int, float, ratios (one number per LoRA: ``--ratio`` each), text, choice, check."""

    name: str  # the command's option without "--", or the positional argument's name
    label: str
    kind: str
    default: Any = None
    required: bool = True
    positional: bool = False
    choices: tuple = ()
    info: str = ""


@dataclass(frozen=True)
class Tool:
    key: str
    command: str  # the sub-command of ``lora-studio <group>``
    title: str
    about: str
    fields: tuple[Field, ...] = field(default_factory=tuple)
    group: str = "lora"  # lora | caption


def _precision(default: str = "") -> Field:
    return Field("save_precision", "Save precision", "choice", default, False, choices=PRECISIONS,
                 info="empty: the input's")


def _dynamic() -> tuple[Field, Field]:
    return (Field("dynamic_method", "Dynamic method", "choice", "", False, choices=DYNAMIC,
                  info="choose each module's rank, up to the rank above"),
            Field("dynamic_param", "Dynamic parameter", "float", None, False,
                  info="e.g. 0.9 for sv_fro, 2 for sv_ratio"))


_V2 = Field("v2", "SD2.x model (when its file does not say)", "check", False, False)
_DEVICE = Field("device", "Device", "choice", "cpu", False, choices=("cpu", "cuda"))

TOOLS = (
    Tool("inspect", "inspect", "Inspect", "What a LoRA file is: family, type, rank and alpha per block, which apps "
         "load it, what it was trained with, tag frequency, NaN/inf check and norms per block.",
         (Field("file", "LoRA file", "lora", positional=True),)),
    Tool("resize", "resize", "Resize", "A LoRA / LoCon to another rank by SVD (Kohya's resize): a fixed rank, or "
         "per module by a dynamic method. The report gives the Frobenius share each module keeps.",
         (Field("source", "LoRA file", "lora", positional=True),
          Field("out", "New file", "out", positional=True),
          Field("new_rank", "New rank", "int", 32),
          Field("new_conv_rank", "New conv rank (3x3)", "int", None, False, info="empty: the new rank"),
          *_dynamic(), _DEVICE, _precision(),
          Field("verbose", "One line per module in the report", "check", True, False))),
    Tool("merge", "merge", "Merge LoRAs", "Several LoRA / LoCon files, each at a ratio, into one LoRA: concat is "
         "exact (the ranks add up); svd keeps the best new rank.",
         (Field("lora", "LoRA files (one a line)", "loras"),
          Field("ratio", "Ratios (one per file; empty: all 1)", "ratios", "", False),
          Field("out", "Merged file", "out"),
          Field("mode", "Mode", "choice", "concat", choices=("concat", "svd")),
          Field("new_rank", "New rank (svd)", "int", None, False),
          Field("new_conv_rank", "New conv rank (svd, 3x3)", "int", None, False), _precision())),
    Tool("bake", "merge", "Merge into a checkpoint", "Bake one or more LoRA files, each at a ratio, into a base "
         "model, written as a single-file .safetensors checkpoint AUTOMATIC1111 and ComfyUI open.",
         (Field("model", "Base model (checkpoint or diffusers folder)", "model"),
          Field("lora", "LoRA files (one a line)", "loras"),
          Field("ratio", "Ratios (one per file; empty: all 1)", "ratios", "", False),
          Field("out", "New checkpoint", "out"), _V2, _precision())),
    Tool("extract", "extract", "Extract", "A LoRA from a fine-tuned model and its base: the SVD of their "
         "difference, per layer.",
         (Field("model", "Base model", "model"), Field("tuned", "Fine-tuned model", "model"),
          Field("out", "LoRA file to write", "out"), Field("dim", "Rank (dim)", "int", 4),
          Field("conv_dim", "Conv rank (3x3; empty: no LoCon)", "int", None, False),
          Field("clamp_quantile", "Clamp quantile", "float", 0.99),
          Field("min_diff", "Min difference of the text encoders", "float", 0.01), *_dynamic(), _DEVICE,
          _precision("float"), _V2)),
    Tool("convert", "convert", "Convert", "A kohya-format LoRA to the diffusers / peft format, or back.",
         (Field("source", "LoRA file", "lora", positional=True), Field("out", "New file", "out", positional=True),
          Field("to", "To", "choice", "diffusers", choices=("diffusers", "kohya")),
          Field("model", "Base model (its layer names)", "model"), _V2, _precision("float"))),
)
BY_KEY = {t.key: t for t in TOOLS}
INTRO = ("LoRA file tools. Each runs as a job in the queue (after the job before it); outputs are written atomically, "
         "never over an input, with a history entry in their metadata.")


def _lines(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def tool_options(tool: Tool, values: dict[str, Any], roots: list[Path] | None = None) -> tuple[list[str], str]:
    """The command's options for the fields' values, and the job's label; a UserError names the field to fix."""
    positional, options, inputs, label_files = [], [], [], []
    counts: dict[str, int] = {}
    for f in tool.fields:
        value = values.get(f.name)
        text = "" if value is None else str(value).strip()
        if f.kind == "check":
            options += [f"--{f.name}"] if value else []
            continue
        if not text:
            if f.required:
                raise UserError(f"{f.label}: required")
            continue
        if f.kind == "text":
            options.append(f"--{f.name}={text}")
            continue
        if f.kind in ("lora", "loras", "model", "out", "folder"):
            paths = _lines(text) if f.kind == "loras" else [text]
            for path in paths:
                outside = outside_roots(path, roots)
                if outside:
                    raise UserError(f"{f.label}: {outside}")
                p = Path(path).expanduser()
                if f.kind in ("lora", "loras") and (not p.is_file() or p.suffix.lower() != ".safetensors"):
                    raise UserError(f"{f.label}: {path} is not a .safetensors file" if p.exists() else
                                    f"{f.label}: {path} not found")
                if f.kind == "model" and not p.exists():
                    raise UserError(f"{f.label}: {path} not found")
                if f.kind == "folder" and not p.is_dir():
                    raise UserError(f"{f.label}: folder not found: {path}")
                if f.kind == "out":
                    if p.suffix.lower() != ".safetensors":
                        raise UserError(f"{f.label}: {path} must end in .safetensors")
                    if any(p.resolve() == Path(i).expanduser().resolve() for i in inputs):
                        raise UserError(f"{f.label}: {path} is also an input; inputs are never overwritten")
                    if p.is_dir():
                        raise UserError(f"{f.label}: {path} is a folder")
                else:
                    inputs.append(path)
                    if f.kind in ("lora", "loras", "folder"):
                        label_files.append(p.name if f.kind == "folder" else p.stem)
                resolved = str(p.resolve())
                (positional if f.positional else options).extend([resolved] if f.positional
                                                                 else [f"--{f.name}={resolved}"])
            counts[f.name] = len(paths)
            continue
        if f.kind == "ratios":
            numbers = [n for n in re.split(r"[,;\s]+", text) if n]
            for n in numbers:
                try:
                    float(n)
                except ValueError:
                    raise UserError(f"{f.label}: '{n}' is not a number") from None
            if numbers and len(numbers) != counts.get("lora", 0):
                raise UserError(f"{f.label}: give one ratio per LoRA file ({counts.get('lora', 0)} files, "
                                f"{len(numbers)} ratios), or none for all 1")
            options += [f"--{f.name}={n}" for n in numbers]
            continue
        if f.kind in ("int", "float"):
            try:
                number = float(text)
            except ValueError:
                raise UserError(f"{f.label}: '{text}' is not a number") from None
            if f.kind == "int" and (number != int(number) or number < 1):
                raise UserError(f"{f.label}: give a whole number of at least 1")
            if f.kind == "float" and number < 0:
                raise UserError(f"{f.label}: must not be negative")
            text = str(int(number)) if f.kind == "int" else f"{number:g}"
        elif f.kind == "choice" and text not in f.choices:
            raise UserError(f"{f.label}: choose one of {', '.join(c for c in f.choices if c)}")
        options.append(f"--{f.name}={text}")
    if tool.key == "merge" and values.get("mode") == "svd" and not str(values.get("new_rank") or "").strip():
        raise UserError("New rank (svd): an svd merge needs the rank to keep")
    if values.get("dynamic_method") and not str(values.get("dynamic_param") or "").strip():
        raise UserError(f"Dynamic parameter: {values['dynamic_method']} needs it (e.g. 0.9 for sv_fro)")
    names = ", ".join(label_files[:3]) + (f" +{len(label_files) - 3}" if len(label_files) > 3 else "")
    return positional + options, f"{tool.title.lower()}: {names or Path(str(values.get('out', ''))).stem}"


def read_report(rec: RunRecord | None) -> dict | None:
    try:
        return json.loads(Path(rec.output).read_text(encoding="utf-8")) if rec and rec.output else None
    except (OSError, ValueError):
        return None


def job_status(rec: RunRecord | None, manager: RunManager) -> str:
    if rec is None:
        return "Fill in a tool's fields and press its button: it runs in the queue, after the job before it."
    state = manager.live(rec) if rec.started else None
    if rec.status == "queued":
        active = manager.active()
        return f"**{html.escape(rec.output_name)}**: queued behind {html.escape(active.output_name) if active else '…'}."
    if rec.status in ("running", "stopping"):
        return f"**{html.escape(rec.output_name)}**: {html.escape(state.phase if state else '') or 'starting'} …"
    words = views.STATUS_WORDS.get(rec.status, rec.status)
    prefix = "✗ " if rec.status == "failed" else "✓ " if rec.status == "completed" else ""
    return f"{prefix}**{html.escape(rec.output_name)}**: {words}. {html.escape(rec.message)}\n\nLog: `{rec.log}`"


class ToolsTab:
    """A tab of tools (one sub-tab each) whose jobs share a progress bar, a status line and a report. ``prefix``
    names its elements (``<prefix>-<tool>-<field>``, ``<prefix>-progress``, ...)."""

    def __init__(self, manager: RunManager, roots: list[Path] | None, tools: tuple[Tool, ...] = TOOLS,
                 prefix: str = "tool", intro: str = INTRO):
        self.manager = manager
        self.roots = roots
        self.tools = {t.key: t for t in tools}
        self.prefix = prefix
        self.intro = intro
        self.carried: list[tuple[Field, Any]] = []  # the input fields filled from the LoRA tab when opened

    def run(self, key: str, *values):
        tool = self.tools[key]
        try:
            options, label = tool_options(tool, dict(zip([f.name for f in tool.fields], values)), self.roots)
        except UserError as exc:
            return f"✗ {exc}", gr.skip()
        busy = self.manager.active() is not None
        rec = self.manager.enqueue_tool(tool.command, options, label, tool.group)
        # said as what was done, not as the job's state (which the status line below follows): never stale
        where = ", behind the current job" if busy else ""
        return f"Added to the queue as {rec.id}{where}: its progress and report show below.", {"id": rec.id}

    def tick(self, job: dict | None, seen: str | None):
        """The shown job's progress, status and report; nothing is sent while they have not changed."""
        rec = self.manager.get((job or {}).get("id"))
        state = self.manager.live(rec) if rec and rec.started else None
        marker = json.dumps([rec.id, rec.status, state.phase, state.step, state.total_steps] if rec and state
                            else [rec.id if rec else None, rec.status if rec else None])
        if marker == seen:
            return gr.skip(), gr.skip(), gr.skip(), seen
        report = read_report(rec) if rec and rec.status == "completed" else None
        progress = views.progress_html(rec, state) if rec else ""
        return progress, job_status(rec, self.manager), (report or {}).get("text", ""), marker

    def live_tick(self, job: dict | None, seen: str | None):
        """``tick``, and the timer on while the shown job waits or runs, off once it ended (an idle page polls
        nothing)."""
        rec = self.manager.get((job or {}).get("id"))
        return (*self.tick(job, seen), gr.Timer(active=bool(rec and rec.status in ("queued", *ACTIVE))))

    def opened(self, model: str, train_dir: str, *values):
        """The tab opened: its empty input fields take the LoRA tab's model and image folder and the latest run's
        best file (``carried``, in order)."""
        suggestions = {"model": (model or "").strip(), "folder": image_folder(train_dir)}
        newest = latest_file(self.manager)
        out = []
        for (f, _), value in zip(self.carried, values):
            suggestion = newest if f.kind in ("lora", "loras") else suggestions.get(f.name, "")
            out.append(suggestion if is_empty(value) and suggestion else gr.skip())
        return out

    def build(self) -> dict:
        gr.Markdown(self.intro)
        message = gr.Markdown(elem_id=f"{self.prefix}-message")
        job = gr.State({})
        with gr.Tabs(elem_id=f"{self.prefix}-tabs"):
            for tool in self.tools.values():
                with gr.Tab(tool.title, id=f"{self.prefix}-{tool.key}"):
                    gr.Markdown(tool.about)
                    widgets = [self._widget(f, f"{self.prefix}-{tool.key}-{f.name}") for f in tool.fields]
                    self.carried += [(f, w) for f, w in zip(tool.fields, widgets) if f.kind in ("lora", "loras") or
                                     (f.kind, f.name) in (("model", "model"), ("folder", "folder"))]
                    button = gr.Button(tool.title, variant="primary", elem_id=f"{self.prefix}-{tool.key}-run")
                    button.click(partial(self.run, tool.key), widgets, [message, job])
        progress = gr.HTML(elem_id=f"{self.prefix}-progress")
        status = gr.Markdown(elem_id=f"{self.prefix}-status")
        report = gr.Textbox(label="Report", lines=16, max_lines=40, interactive=False, buttons=["copy"],
                            elem_id=f"{self.prefix}-report", elem_classes=["ls-mono"])
        seen = gr.State(None)
        timer = gr.Timer(1.0, active=False)  # ticks only while the shown job waits or runs
        outputs = [progress, status, report, seen, timer]
        timer.tick(self.live_tick, [job, seen], outputs, show_progress="hidden")
        job.change(self.live_tick, [job, seen], outputs, show_progress="hidden")
        return dict(job=job, progress=progress, status=status, report=report, message=message,
                    carried=[w for _, w in self.carried], opened=self.opened)

    @staticmethod
    def _widget(f: Field, elem_id: str):
        info = f.info or None
        if f.kind == "check":
            return gr.Checkbox(bool(f.default), label=f.label, elem_id=elem_id, info=info)
        if f.kind == "choice":
            return gr.Dropdown(choices=list(f.choices), value=f.default or "", label=f.label, elem_id=elem_id,
                               info=info)
        placeholder = {"lora": "/path/to/file.safetensors", "model": "checkpoint .safetensors or diffusers folder",
                       "out": "/path/to/new.safetensors", "folder": "/path/to/folder"}.get(f.kind)
        value = "" if f.default is None else str(f.default)
        if f.kind not in PATH_KINDS:
            return gr.Textbox(value, label=f.label, elem_id=elem_id, info=info, placeholder=placeholder)
        with gr.Row(equal_height=True):
            box = gr.Textbox(value, label=f.label, elem_id=elem_id, info=info, placeholder=placeholder,
                             lines=3 if f.kind == "loras" else 1, scale=8)
            browse_button(box, {"loras": "lines", "out": "out"}.get(f.kind, "path"))
        return box
