"""The Test tab: LoRA files at several strengths and fixed seeds, rendered as a comparison job in the queue, or, while
a training run is paused, by that run's engine on its current weights. The settings and the last job are remembered
(``tester``); the page's live view (``RunsTab.refresh``) shows the job's status and images through ``TestTab.parts``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..compare import read_index
from ..config import load_config
from ..errors import ConfigError, UserError
from ..jobs.runs import RunManager, RunRecord
from ..training.outputs import output_paths
from . import views
from .browse import browse_button
from .runs_tab import shown_run
from .form import outside_roots
from .tester import SAMPLERS, TestSettings, answer_gallery, check, compare_options, family_defaults, index_grids, \
    index_tiles, load_remembered, model_family, read_answers, remember, run_family, settings_from_run, write_requests

GRIDS_TITLE = "Grids (rows: files, columns: strengths)"


class TestTab:
    __test__ = False  # not a pytest class

    def __init__(self, state_dir: Path, manager: RunManager, roots: list[Path] | None):
        self.state_dir = state_dir
        self.manager = manager
        self.roots = roots

    def _paused_run(self) -> tuple[RunRecord | None, Any]:
        """The active training run when it is paused (or asked to pause): Render then uses its current weights."""
        active = self.manager.active()
        if active is None or active.kind != "train":
            return None, None
        state = self.manager.live(active)
        try:
            asked = output_paths(load_config(active.config))["pause"].exists()
        except (ConfigError, UserError, OSError):
            asked = False
        return (active, state) if state.paused or asked else (None, None)

    def _pixel_multiple(self, run: RunRecord | None, settings: TestSettings) -> int:
        """The image-side multiple of the model that renders: the paused run's, else the tab's base model's."""
        family = None
        if run is not None:
            try:
                family = run_family(load_config(run.config))
            except (ConfigError, UserError, OSError):
                family = None
        elif settings.model.strip() and outside_roots(settings.model, self.roots) is None:
            family = model_family(settings.model)
        return family_defaults(family).pixel_multiple

    def _latest_model(self) -> str:
        for rec in reversed(self.manager.ordered()):
            if rec.kind == "train":
                try:
                    return load_config(rec.config).pretrained_model_name_or_path or ""
                except (ConfigError, UserError, OSError):
                    continue
        return ""

    def latest_files(self) -> list[tuple[str, str]]:
        """The saved files of the latest finished training run, as (label, path)."""
        rec = next((r for r in self.manager.history() if r.kind == "train" and r.started), None)
        return views.saved_choices(self.manager.live(rec)) if rec else []

    def test_defaults(self):
        """The Test tab's remembered settings and last job (on page load); an empty model: the latest run's."""
        settings, job = load_remembered(self.state_dir)
        settings = settings or TestSettings()
        if not settings.model.strip():
            settings.model = self._latest_model()
        return [*settings.values(), job, gr.update(choices=self.latest_files(), value=None)]

    def test_tab_opened(self, form_model: str, test_model: str):
        model = gr.skip()
        if not (test_model or "").strip():
            model = (form_model or "").strip() or self._latest_model()
        return model, gr.update(choices=self.latest_files(), value=None)

    def add_file(self, path: str, files: str):
        if not path:
            return gr.skip(), gr.skip()
        lines = [line for line in (files or "").splitlines() if line.strip()]
        if path not in [line.strip() for line in lines]:
            lines.append(path)
        return "\n".join(lines), gr.update(value=None)

    def test_this_file(self, path: str, choice: str, *values):
        """The Runs view's "Test this file": the file with its run's base model and sample settings
        (``settings_from_run``) into the Test tab, shown, and remembered as the tab's settings; ``values``: the Test
        tab's fields now (their strengths stay)."""
        skip = [gr.skip()] * len(TestSettings.names())
        if not path:
            return *skip, gr.skip(), "Choose one of the run's saved files first."
        current = TestSettings.from_values(values)
        run = shown_run(self.manager, choice)
        settings, note = TestSettings(**{**current.__dict__, "files": path}), "its run is not known"
        if run is not None:
            try:
                settings, note = settings_from_run(load_config(run.config), path, current)
            except (ConfigError, UserError, OSError):
                note = "its run's config cannot be read"
        remember(self.state_dir, settings)
        return (*settings.values(), gr.Tabs(selected="test"),
                f"{Path(path).name} is in the Test tab with its run's settings ({note}); press Render.")

    def render(self, *args):
        """Render: on a paused run's current weights (a request it answers), else a comparison job in the queue."""
        *values, job = args
        settings = TestSettings.from_values(values)
        remember(self.state_dir, settings)
        run, state = self._paused_run()
        multiple = self._pixel_multiple(run, settings)
        try:
            plan = check(settings, self.roots, need_files=run is None, pixel_multiple=multiple)
        except UserError as exc:
            return f"✗ {exc}", gr.skip()
        if run is not None:
            tests = output_paths(load_config(run.config))["tests"]
            requests = write_requests(tests, plan)
            job = {"kind": "paused", "run": run.id, "label": f"{run.output_name} at step {state.step}",
                   "requests": [str(p) for p in requests]}
            message = (f"Asked the paused run **{run.output_name}** (step {state.step}) to render on its current "
                       "weights; the base model and LoRA files fields are not used.")
        else:
            busy = self.manager.active() is not None
            names = [Path(f).stem for f in plan.files]
            rec = self.manager.enqueue_compare(options=compare_options(plan), prompts="\n".join(plan.prompts),
                                               label=", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3
                                                                             else ""))
            job = {"kind": "compare", "id": rec.id}
            message = f"Queued behind the current job ({rec.id})." if busy else f"Rendering ({rec.id}) …"
        remember(self.state_dir, settings, job)
        return message, job

    def parts(self, job: dict | None):
        """The Test tab's (marker, make) where make gives its status, images and grids."""
        job = job or {}
        if job.get("kind") == "compare" and self.manager.get(job.get("id")):
            rec = self.manager.get(job["id"])
            state = self.manager.live(rec) if rec.started else None
            queue = [r.id for r in self.manager.queued()]
            marker = (rec.id, rec.status, state.step if state else 0, len(state.grids) if state else 0,
                      queue.index(rec.id) if rec.id in queue else None)

            def make():
                index = None
                try:
                    index = read_index(rec.output) if rec.output and Path(rec.output).is_file() else None
                except (OSError, ValueError):
                    pass
                if rec.status == "queued":
                    text = f"Queued (position {queue.index(rec.id) + 1}): it starts when the job before it ends."
                elif rec.status in ("running", "stopping"):
                    text = f"Rendering: {views.images_progress(state)}"
                elif rec.status == "completed":
                    text = f"Done: {rec.message}."
                else:
                    text = f"✗ {views.STATUS_WORDS.get(rec.status, rec.status)}: {rec.message} (log: `{rec.log}`)"
                return (text, views.progress_html(rec, state) if rec.started else "",
                        views.gallery_images(index_tiles(index)), views.grids_html(index_grids(index), GRIDS_TITLE))
            return marker, make
        if job.get("kind") == "paused":
            requests = list(job.get("requests") or [])
            answered = [Path(r).with_name(Path(r).stem + ".done.json").is_file() for r in requests]
            run = self.manager.get(job.get("run"))
            marker = (requests, answered, run.status if run else None)

            def make():
                images, errors, waiting = read_answers(requests)
                if waiting and run is not None and run.status not in ("running", "stopping"):
                    text = f"✗ {run.output_name} ended before answering {waiting} request(s)."
                elif waiting:
                    text = (f"Rendering on {job.get('label')}'s current weights: {len(requests) - waiting} of "
                            f"{len(requests)} prompt(s) done …")
                else:
                    text = f"Done: {len(images)} image(s) on {job.get('label')}'s weights."
                text += "".join(f"\n\n✗ {e}" for e in errors)
                return text, "", views.gallery_images(answer_gallery(images, job.get("label") or "")), ""
            return marker, make
        return None, lambda: ("", "", [], "")

    def build(self) -> dict:
        gr.Markdown("Make images with LoRA files at several strengths (0 is the base model) and fixed seeds, to "
                    "choose the best file. **Render** runs in the queue, after the job before it. While a training "
                    "run is **paused**, Render uses its current weights instead (no second copy of the model).")
        d = load_remembered(self.state_dir)[0] or TestSettings()
        if not d.model:
            d.model = self._latest_model()
        with gr.Row(equal_height=True):
            model = gr.Textbox(d.model, label="Base model", elem_id="test-model", scale=8,
                               placeholder="the .safetensors checkpoint or diffusers folder the LoRA was trained on")
            browse_button(model)
        with gr.Row():
            files = gr.Textbox(d.files, label="LoRA files (one a line)", lines=3, elem_id="test-files", scale=3)
            browse_button(files, "lines")
            add = gr.Dropdown(choices=self.latest_files(), value=None, label="Add a saved file of the latest run",
                              elem_id="test-add-file", scale=2)
        prompts = gr.Textbox(d.prompts, label="Prompts (one a line; --n --w --h --d --s --l as in sample prompt files)",
                             lines=3, elem_id="test-prompts")
        negative = gr.Textbox(d.negative, label="Negative prompt (for prompts without --n)", elem_id="test-negative")
        with gr.Row():
            seeds = gr.Textbox(d.seeds, label="Seeds (empty: each prompt's --d)", elem_id="test-seeds")
            strengths = gr.Textbox(d.strengths, label="Strengths", elem_id="test-strengths")
            sampler = gr.Dropdown(choices=SAMPLERS, value=d.sampler if d.sampler in SAMPLERS else "euler_a",
                                  label="Sampler", elem_id="test-sampler")
        with gr.Row():
            steps = gr.Number(d.steps, label="Steps", precision=0, minimum=1, maximum=1000, elem_id="test-steps")
            width = gr.Number(d.width, label="Width", precision=0, minimum=64, maximum=8192, elem_id="test-width")
            height = gr.Number(d.height, label="Height", precision=0, minimum=64, maximum=8192, elem_id="test-height")
            cfg = gr.Number(d.cfg_scale, label="CFG", minimum=0, maximum=100, elem_id="test-cfg")
        gr.Markdown("Steps, size and CFG apply to the prompts that do not give their own.")
        render = gr.Button("Render", variant="primary", elem_id="test-render")
        status = gr.Markdown(elem_id="test-status")
        progress = gr.HTML(elem_id="test-progress")
        gallery = gr.Gallery(label="Images (file · strength · seed)", columns=5, height="auto",
                             elem_id="test-gallery", format="png", interactive=False, fit_columns=False)
        grids = gr.HTML(elem_id="test-grids")
        inputs = [model, files, prompts, negative, seeds, strengths, sampler, steps, width, height, cfg]
        assert len(inputs) == len(TestSettings.names())
        job = gr.State({})
        add.input(self.add_file, [add, files], [files, add])
        render.click(self.render, inputs + [job], [status, job])
        return dict(model=model, files=files, add=add, inputs=inputs, job=job, status=status, progress=progress,
                    gallery=gallery, grids=grids)
