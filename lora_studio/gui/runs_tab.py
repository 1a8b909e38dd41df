"""The Runs tab and the page's live view: the shown run's progress, loss chart, sample images, comparison grid, saved
files and log, the queue and the history; Stop, Pause, Resume and removing a queued run.

One tick of the live view (``RunsTab.refresh``) updates every live output of the page (``TICK_KEYS``): this tab's,
the LoRA tab's small progress bar and Stop label, and the Test tab's status and images (from ``TestTab.parts``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from ..compare import compare_folder, index_path, read_index
from ..jobs.runs import RunManager, RunRecord
from . import views
from .tester import index_grids

# the outputs of one tick of the live view, in order (the last output is the page's ``seen`` markers)
TICK_KEYS = ("progress", "mini", "status", "plot", "gallery", "saved", "log", "queue", "history", "stop", "stop2",
             "pause", "resume", "remove", "timer", "choices", "files", "compare", "grid", "test_status", "test_progress", "test_gallery",
             "test_grids")


def _log_marker(path: str) -> tuple:
    try:
        st = Path(path).stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return ()


LIVE_TICK, IDLE_TICK = 1.0, 5.0  # seconds between the live view's ticks: while a job runs or waits, and idle


def _stop_button(label: str, running: bool):
    """Stop is red and pressable only while a job runs."""
    return gr.update(value=label, interactive=running, variant="stop" if running else "secondary")


def default_file(choices: list[tuple[str, str]]) -> str | None:
    """The file a run's list starts on: the best one, else the final one, else the last saved."""
    for word in ("lowest validation", "final"):
        found = next((path for label, path in choices if word in label), None)
        if found:
            return found
    return choices[-1][1] if choices else None


def shown_run(manager: RunManager, choice: str | None) -> RunRecord | None:
    """The training run the Runs view shows: the chosen one, else the one training, else the next one queued
    (a comparison job may run before it), else the last one started."""
    if choice and choice != "latest":
        rec = manager.get(choice)
        if rec is not None and rec.kind == "train":
            return rec
    active = manager.active()
    if active is not None and active.kind == "train":
        return active
    return next((r for r in manager.queued() if r.kind == "train"), None) or manager.latest("train")


GRID_TITLE = "Comparison grid (rows: saved files, columns: strengths)"


class RunsTab:
    """``test_parts(job)``: the Test tab's (marker, make) for its status, progress, images and grids, sent by the same
    tick."""

    def __init__(self, manager: RunManager, test_parts: Callable[[dict | None], tuple[Any, Callable[[], tuple]]]):
        self.manager = manager
        self.test_parts = test_parts

    def stop(self):
        return self.manager.stop()

    def remove_queued(self, run_id: str | None):
        """The queued job chosen (clicked in the queue) out of the queue."""
        rec = self.manager.get((run_id or "").strip())
        if not run_id:
            return "Click a queued job in the queue first, then Remove.", gr.skip()
        if rec is None or not self.manager.remove_queued(rec.id):
            return f"{rec.output_name if rec else run_id} is no longer in the queue.", gr.update(value=None)
        return f"Removed {rec.output_name} ({rec.id}) from the queue.", gr.update(value=None)

    def pick_queued(self, evt: gr.SelectData):
        """A click on a row of the queue chooses that job for Remove."""
        row = getattr(evt, "row_value", None) or []
        run_id = row[0] if row else None
        if not run_id:
            index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            queued = self.manager.queued()
            run_id = queued[index].id if isinstance(index, int) and 0 <= index < len(queued) else None
        return gr.update(value=run_id) if run_id else gr.skip()

    def _run_index(self, run: RunRecord | None, job: RunRecord | None) -> tuple[str | None, Any]:
        """Where the shown run's comparison index is, and a cheap marker that changes when it does."""
        if run is None:
            return None, None
        if job is not None:
            state = self.manager.live(job) if job.started else None
            return job.output, (job.id, job.status, len(state.grids) if state else 0)
        path = index_path(compare_folder(run.output_dir), run.output_name)  # a grid made outside the GUI
        try:
            return str(path), (str(path), path.stat().st_mtime_ns)
        except OSError:
            return None, None

    @staticmethod
    def _read_index(path: str | None, run: RunRecord | None, job: RunRecord | None) -> dict | None:
        if not path:
            return None
        try:
            index = read_index(path)
        except (OSError, ValueError):
            return None
        if job is None and run is not None and float(index.get("started") or 0) < (run.started or 0):
            return None  # a grid of an earlier run with the same name
        return index

    def refresh(self, seen: dict | None, choice: str | None = "latest", test_job: dict | None = None):
        """One tick of the live view. Only what changed since this page's last tick is sent (the rest is skipped),
        so the page does not redraw, and the fields a user is typing in are never touched. Each output has a cheap
        marker; its value is made only when the marker changed."""
        seen = dict(seen or {})
        m = self.manager
        active = m.active()
        run = shown_run(m, choice)
        state = m.live(run) if run else None
        latest = shown_run(m, None)  # the LoRA tab's card shows training runs only (tools and tests: their tabs)
        latest_state = state if latest is run else m.live(latest) if latest else None
        active_state = state if active is run else m.live(active) if active else None
        run_id = run.id if run else None
        stop_label = "Stop now (kill)" if active and active.status == "stopping" else "Stop training"
        pause_label = "Resume" if active and active.kind == "train" and active_state.paused else "Pause"
        # Stop and Pause work only while something runs; Resume last run only after a run that stopped or died
        running, training = active is not None, active is not None and active.kind == "train"
        resumable = self.manager.resumable() is not None and not running
        queued = [(f"{r.output_name} · {views.job_word(r)} ({r.id})", r.id) for r in m.queued()]
        interval = LIVE_TICK if running or queued else IDLE_TICK
        progress = views.progress_html(run, state)
        mini = views.progress_html(latest, latest_state)
        status = views.status_markdown(run, state)
        elsewhere = views.running_elsewhere(run, active)
        grid_job = m.compare_job(run.id) if run else None
        grid_state = m.live(grid_job) if grid_job and grid_job.started else None
        index_file, index_marker = self._run_index(run, grid_job)
        index_cache: dict = {}

        def index():
            if "doc" not in index_cache:
                index_cache["doc"] = self._read_index(index_file, run, grid_job)
            return index_cache["doc"]

        choices = views.saved_choices(state)
        test_marker, test_make = self.test_parts(test_job)

        def plot():
            # The browser's chart keeps the series it was first drawn with: a new one (validation) shows once the
            # chart is redrawn, which a change of its legend does, sent the tick after the data that holds it.
            pending = seen.pop("plot_redraw", None)
            if pending is not None:
                return gr.update(colors_in_legend=pending)
            frame = views.loss_frame(state)
            series = list(dict.fromkeys(frame["series"])) if frame is not None else []
            if series and seen.get("plot_series") != series:
                seen["plot_series"] = seen["plot_redraw"] = series
            return frame
        entries = {  # key: (marker, make the value)
            "progress": (progress, lambda: progress), "mini": (mini, lambda: mini),
            "status": ((status, elsewhere), lambda: status + (f"\n\n{elsewhere}" if elsewhere else "")),
            "plot": ((run_id, len(state.losses) if state else 0, len(state.validations) if state else 0,
                      seen.get("plot_redraw")),
                     plot),
            "gallery": ((run_id, len(state.samples) if state else 0),
                        lambda: views.gallery_images(views.sample_gallery(state))),
            "saved": (views.saved_markdown(state), lambda: views.saved_markdown(state)),
            "log": ((run.log, _log_marker(run.log)) if run else "", lambda: m.log_tail(run) if run else ""),
            "queue": (views.queue_rows(m.queued()), lambda: views.queue_rows(m.queued())),
            "history": (views.history_rows(m.history()), lambda: views.history_rows(m.history())),
            "stop": ((stop_label, running), lambda: _stop_button(stop_label, running)),
            "stop2": ((stop_label, running), lambda: _stop_button(stop_label, running)),
            "pause": ((pause_label, training), lambda: gr.update(value=pause_label, interactive=training)),
            "resume": (resumable, lambda: gr.update(visible=resumable)),
            "remove": (queued, lambda: gr.update(choices=queued)),
            "timer": (interval, lambda: gr.Timer(interval)),
            "choices": ([r.id + r.status for r in m.ordered() if r.kind == "train"],
                        lambda: gr.update(choices=views.run_choices(m.ordered()))),
            "files": ((run_id, choices), lambda: gr.update(choices=choices, value=default_file(choices))),
            "compare": ((grid_job.id if grid_job else None, grid_job.status if grid_job else None,
                         grid_state.step if grid_state else 0, index_marker, run.status if run else None),
                        lambda: views.compare_markdown(grid_job, grid_state, index(), run)),
            "grid": ((run_id, index_marker), lambda: views.grids_html(index_grids(index()), GRID_TITLE)),
            "test": (test_marker, test_make),
        }
        out = []
        assert [k for k in TICK_KEYS if not k.startswith("test_")] + ["test"] == list(entries)
        for key, (marker, make) in entries.items():
            marker = json.dumps(marker, default=str)
            width = sum(k.startswith("test_") for k in TICK_KEYS) if key == "test" else 1
            if seen.get(key) == marker:
                out += [gr.skip()] * width
                continue
            seen[key] = marker
            value = make()
            out += list(value) if width > 1 else [value]
        return (*out, seen)

    def build(self) -> dict:
        with gr.Row():
            gr.Markdown("## Current run")
            choice = gr.Dropdown(choices=views.run_choices(self.manager.ordered()), value="latest", label="Show run",
                                 elem_id="run-choice", scale=2)
        progress = gr.HTML(elem_id="run-progress")
        status = gr.Markdown(elem_id="run-status")
        with gr.Row():
            stop = gr.Button("Stop training", variant="secondary", interactive=False, elem_id="runs-stop")
            pause = gr.Button("Pause", interactive=False, elem_id="pause-run")
            resume = gr.Button("Resume last run", visible=False, elem_id="resume-last")
            stop_message = gr.Markdown(elem_id="stop-message")
        with gr.Row():
            plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss",
                               elem_id="loss-chart", height=280)
            gallery = gr.Gallery(label="Sample images (newest epoch first)", columns=4, height=280,
                                 elem_id="sample-gallery", format="png", interactive=False)
        compare = gr.Markdown(elem_id="compare-status")
        grid = gr.HTML(elem_id="compare-grid")
        saved = gr.Markdown(elem_id="saved-files")
        with gr.Row(equal_height=True):
            file = gr.Dropdown(choices=[], value=None, label="Saved files of this run", elem_id="run-file", scale=3)
            test_btn = gr.Button("Test this file", elem_id="test-this-file")
        log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, autoscroll=True, interactive=False,
                         elem_id="run-log")
        gr.Markdown("## Queue\nRuns started while another trains wait here and start in order.")
        queue = gr.Dataframe(headers=views.QUEUE_HEADERS, value=[], interactive=False, elem_id="run-queue")
        with gr.Row():
            remove_id = gr.Dropdown(choices=[], value=None, label="Queued job to remove (click it in the queue)",
                                    elem_id="queue-remove-id", scale=3)
            remove_btn = gr.Button("Remove from queue", elem_id="queue-remove")
        gr.Markdown("## History")
        history = gr.Dataframe(headers=views.HISTORY_HEADERS, value=[], interactive=False, wrap=True,
                               elem_id="run-history")
        queue.select(self.pick_queued, [], [remove_id])
        # what these buttons change shows at once: the page chains a tick of the live view to each (``actions``)
        actions = [remove_btn.click(self.remove_queued, [remove_id], [stop_message, remove_id]),
                   resume.click(self.manager.resume_last, [], [stop_message]),
                   pause.click(self.manager.pause, [], [stop_message])]
        return dict(progress=progress, status=status, stop=stop, stop_message=stop_message, plot=plot, choice=choice,
                    compare=compare, grid=grid, file=file, test_btn=test_btn, gallery=gallery, saved=saved, log=log,
                    queue=queue, history=history, pause=pause, resume=resume, remove=remove_id, actions=actions)
