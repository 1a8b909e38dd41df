"""What the Runs view shows, rendered from a run record and its live state (HTML, tables, chart data, gallery
images)."""

from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from ..jobs.live import LiveState, format_seconds, smoothed
from ..jobs.runs import JOB_WORDS, RunRecord

STATUS_WORDS = {"queued": "Queued", "running": "Training", "stopping": "Stopping (saving after this step)",
                "completed": "Finished", "stopped": "Stopped (saved)", "failed": "Failed", "killed": "Ended at once",
                "cancelled": "Removed from the queue"}


def progress_html(run: RunRecord | None, state: LiveState | None) -> str:
    if run is None:
        return "<div id='ls-progress-box' class='ls-progress'><div class='ls-progress-text'>No run yet.</div></div>"
    state = state or LiveState()
    total = state.total_steps or 0
    fraction = min(1.0, state.step / total) if total else 0.0
    if run.status == "completed":
        fraction = 1.0
    grid = run.kind != "train"
    if run.kind == "tool":
        parts = [f"{state.phase}: {state.step} / {total}" if total else state.phase or "starting"]
    elif run.kind == "compare" and not total and run.status == "running":
        parts = ["Loading the model"]
    else:
        parts = [f"{'Image' if grid else 'Step'} {state.step} / {total or '?'}"]
    if run.kind == "compare":
        parts.append("comparison images" if run.parent else "Test tab images")
    elif state.total_epochs:
        parts.append(f"Epoch {max(state.epoch, 1 if state.step else 0)} / {state.total_epochs}")
    if state.steps_per_s and not grid:
        parts.append(f"{state.steps_per_s:.2f} it/s")
    if state.samples_per_s:
        parts.append(f"{state.samples_per_s:.1f} samples/s")
    if run.status in ("running", "stopping") and (not grid or run.kind == "compare" and state.eta_s is not None):
        parts.append(f"ETA {format_seconds(state.eta_s)}")
    if state.losses:
        parts.append(f"loss {state.losses[-1][1]:.4f}")
    status = STATUS_WORDS.get(run.status, run.status)
    if state.paused and run.status == "running":
        status = "Paused (the model waits in memory: test it, then Resume)"
    return (f"<div id='ls-progress-box' class='ls-progress ls-{run.status}' data-step='{state.step}' "
            f"data-total='{total}' data-status='{run.status}'>"
            f"<div class='ls-progress-head'><b>{html.escape(run.output_name)}</b> · {html.escape(status)}</div>"
            f"<div class='ls-bar'><div class='ls-fill' style='width:{fraction * 100:.1f}%'></div></div>"
            f"<div class='ls-progress-text'>{html.escape(' · '.join(parts))}</div></div>")


def status_markdown(run: RunRecord | None, state: LiveState | None) -> str:
    if run is None:
        return "No run yet. Fill in the LoRA tab (or press **Try the demo**) and press **Start training**."
    lines = [f"**{html.escape(run.output_name)}**: {STATUS_WORDS.get(run.status, run.status)}"]
    if run.message:
        prefix = "✗ " if run.status == "failed" else ""
        lines.append(f"{prefix}{run.message}")
    if state and state.skipped:
        lines.append(f"Skipped unreadable image(s): {', '.join(state.skipped)}")
    if state and state.end and state.end.get("reason"):
        lines.append(f"Ended: {html.escape(state.end['reason'])}")
    if state and state.best:
        best = state.best
        where = state.end.get("best_file") if state.end else None
        lines.append(f"Best: validation loss {best['loss']:.4g} at epoch {best['epoch']}, step {best['step']}"
                     + (f" (kept as `{html.escape(where)}`)" if where else ""))
    lines.append(f"Log: `{run.log}`")
    return "\n\n".join(lines)


def running_elsewhere(shown: RunRecord | None, active: RunRecord | None) -> str:
    """A line for the Runs view when the job now running is not the run it shows."""
    if active is None or (shown is not None and active.id == shown.id):
        return ""
    return f"Now running: {JOB_WORDS[active.kind]} **{html.escape(active.output_name)}** ({active.id})."


def compare_markdown(job: RunRecord | None, state: LiveState | None, index: dict | None, run: RunRecord | None) -> str:
    """The comparison grid's line under a finished run: queued, being made, done, or why not."""
    if run is None or run.kind != "train":
        return ""
    if job is None:
        if index and index.get("grids"):
            return f"**Comparison grid** ({len(index['grids'])} prompt(s)) from `{index.get('folder', '')}`."
        if run.status == "completed":
            return ("No comparison grid: the run has no sample prompts. Choose its files in the Test tab to make "
                    "one.")
        return ""
    state = state or LiveState()
    if job.status == "queued":
        return "**Comparison grid**: queued (it starts when the job before it ends)."
    if job.status in ("running", "stopping"):
        return f"**Comparison grid**: {images_progress(state)}"
    if job.status == "completed":
        return (f"**Comparison grid**: rows are the saved files, columns the strengths (0 is the base model). "
                f"{html.escape(job.message)}.")
    return f"**Comparison grid** {STATUS_WORDS.get(job.status, job.status).lower()}: {html.escape(job.message)} " \
           f"(log: `{job.log}`)"


def images_progress(state: LiveState | None) -> str:
    """A comparison job's progress in words: "image 2 of 6 · ETA 0:12" (the ETA from the images so far)."""
    if not state or not state.total_steps:
        return "loading the model …"
    eta = state.eta_s if state.step < state.total_steps else None
    return f"image {state.step} of {state.total_steps}" + ("" if eta is None else f" · ETA {format_seconds(eta)}")


def _served(path: str) -> str:
    """A URL of the page's server for a copy of this file (in Gradio's upload folder, which it serves)."""
    from urllib.parse import quote

    from gradio.processing_utils import save_file_to_cache
    from gradio.utils import get_upload_folder

    return "gradio_api/file=" + quote(save_file_to_cache(path, get_upload_folder()))


def grids_html(items: list[tuple[str, str]], title: str) -> str:
    """Grid images at their natural size (narrowed only to fit the page), each with its caption, its size and a link
    that opens it on its own: a gallery's square tiles would letterbox a wide grid or blow up a tiny one."""
    figures = []
    for path, caption in items:
        try:
            with Image.open(path) as image:
                width, height = image.size
            url = html.escape(_served(path), quote=True)
        except OSError:
            continue
        figures.append(
            f"<figure class='ls-grid' style='margin:0 0 14px 0'>"
            f"<figcaption style='margin-bottom:4px'>{html.escape(caption)} · {width}x{height} px · "
            f"<a href='{url}' target='_blank' rel='noopener'>open full size</a></figcaption>"
            f"<a href='{url}' target='_blank' rel='noopener'><img src='{url}' width='{width}' height='{height}' "
            f"alt='{html.escape(caption, quote=True)}' style='max-width:100%;height:auto;display:block'></a>"
            f"</figure>")
    if not figures:
        return ""
    return f"<div class='ls-grids'><div style='font-weight:600;margin:6px 0'>{html.escape(title)}</div>" + \
        "".join(figures) + "</div>"


def run_choices(runs: list[RunRecord]) -> list[tuple[str, str]]:
    """The Runs view's choice of run: the latest (follows the current one), then each training run, newest first."""
    out = [("Latest run (follows the current one)", "latest")]
    for r in sorted((r for r in runs if r.kind == "train" and r.started), key=lambda r: -r.started):
        out.append((f"{r.output_name} · {STATUS_WORDS.get(r.status, r.status)} · {_when(r.started)} ({r.id})", r.id))
    return out


def saved_choices(state: LiveState | None) -> list[tuple[str, str]]:
    """A run's saved files that still exist, in the order they were first saved, as (label, path)."""
    if not state:
        return []
    out = []
    best = state.end.get("best_file") if state.end else None
    for path in dict.fromkeys(state.saves):
        p = Path(path)
        if not p.is_file():
            continue
        note = " (the lowest validation loss)" if p.stem.endswith("-best") or path == best else \
            " (final)" if state.end and path == state.end.get("output") else ""
        out.append((p.name + note, path))
    return out


def loss_frame(state: LiveState | None) -> pd.DataFrame | None:
    """Raw and smoothed training loss by step, and the validation loss beside them (None before the first step:
    the chart starts from real data)."""
    if not state or not state.losses:
        return None
    steps = [s for s, _ in state.losses]
    raw = [v for _, v in state.losses]
    val_steps = [s for s, _ in state.validations]
    return pd.DataFrame({"step": steps + steps + val_steps,
                         "loss": raw + smoothed(raw) + [v for _, v in state.validations],
                         "series": ["raw"] * len(steps) + ["smoothed"] * len(steps) + ["validation"] * len(val_steps)})


def sample_gallery(state: LiveState | None) -> list[tuple[str, str]]:
    """Sample images by epoch, newest epoch first, as (path, caption)."""
    if not state:
        return []
    items = [s for s in state.samples if s.get("path") and Path(s["path"]).is_file()]
    items.sort(key=lambda s: (-(s.get("epoch") or 0), s.get("step") or 0, s["path"]))
    return [(s["path"], f"Epoch {s.get('epoch')} · step {s.get('step')}: {s.get('prompt') or ''}") for s in items]


def gallery_images(items: list[tuple[str, str]]) -> list:
    """Gallery items as images read now (Gradio then serves its own copies, from any folder)."""
    out = []
    for path, caption in items:
        try:
            with Image.open(path) as image:
                out.append((image.copy(), caption))
        except OSError:
            continue
    return out


def saved_markdown(state: LiveState | None) -> str:
    if not state or not state.saves:
        return "No file saved yet."
    lines = []
    for path in dict.fromkeys(state.saves):
        p = Path(path)
        size = f"{p.stat().st_size / 1e6:.2f} MB" if p.is_file() else "missing"
        lines.append(f"- `{path}` ({size})")
    return "**Saved files**\n" + "\n".join(lines)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


QUEUE_HEADERS = ["Run", "Job", "Output name", "Output directory", "Queued at"]
HISTORY_HEADERS = ["Run", "Job", "Output name", "Status", "Steps", "Started", "Duration", "Output", "Message"]


def job_word(r: RunRecord) -> str:
    if r.kind == "tool":
        return "tagging / captioning" if r.argv[3:4] == ["caption"] else "LoRA tool"
    return "training" if r.kind == "train" else "comparison grid" if r.parent else "test images"


def queue_rows(runs: list[RunRecord]) -> list[list]:
    return [[r.id, job_word(r), r.output_name, r.output_dir, _when(r.created)] for r in runs]


def history_rows(runs: list[RunRecord]) -> list[list]:
    rows = []
    for r in runs:
        duration = format_seconds(r.ended - r.started) if r.started and r.ended else ""
        steps = f"{r.final_step}/{r.total_steps}" if r.total_steps else (str(r.final_step or 0))
        rows.append([r.id, job_word(r), r.output_name, STATUS_WORDS.get(r.status, r.status), steps, _when(r.started),
                     duration, r.output or "", r.message])
    return rows
