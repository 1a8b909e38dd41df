"""The LoRA Studio page: LoRA tab (Configuration, Model, Folders, Parameters, Dataset preparation), Runs, Test,
Dataset (tagging, captions, health report) and Tools.

Layout and wiring only; what each control does lives in ``form``, ``presets``, ``config.kohya_import``, ``dataset_prep``,
``jobs``, ``tester``, ``dataset_tab``, ``tools_tab`` and ``views``. Every setting widget is generated from the config schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..compare import compare_folder, index_path, read_index
from ..config import dumps_config, load_config, save_config
from ..config.kohya_import import import_kohya_json
from ..config.schema import BY_NAME, SETTINGS
from ..dataset_tools.check_cli import check_config
from ..errors import ConfigError, UserError
from ..jobs.command import display, engine_argv
from ..jobs.runs import RunManager, RunRecord
from ..training.outputs import output_paths
from . import views
from .dataset_prep import prepare_folders
from .dataset_tab import DatasetTab, dataset_markdown
from .form import NAMES, check_form, form_values, outside_roots
from .presets import describe, list_presets, save_user_preset
from .tester import SAMPLERS, TestSettings, answer_gallery, check, compare_options, index_grids, index_tiles, \
    load_remembered, read_answers, remember, write_requests
from .tools_tab import ToolsTab
from .widgets import TAB_LABELS, WidgetSpec, range_hint, widget_specs

CSS = """
.ls-invalid { outline: 2px solid #d33 !important; border-radius: 8px; }
.ls-invalid .info, .ls-invalid [data-testid='block-info'] + div, .ls-invalid span { color: #c22 !important; }
.ls-progress { padding: 8px 4px; }
.ls-bar { height: 18px; background: #e4e4e7; border-radius: 9px; overflow: hidden; margin: 6px 0; }
.ls-fill { height: 100%; background: linear-gradient(90deg, #6366f1, #22c55e); transition: width .5s; }
.ls-failed .ls-fill { background: #dc2626; }
"""


def _help_script() -> str:
    """Help text on hover: each setting's block gets its schema help as a tooltip (title attribute)."""
    helps = {f"setting-{s.name}": s.help for s in SETTINGS}
    return ("<script>(function(){const H=" + json.dumps(helps) + ";"
            "function apply(){for(const id in H){const el=document.getElementById(id);"
            "if(el&&el.title!==H[id]){el.title=H[id];}}}"
            "new MutationObserver(apply).observe(document.documentElement,{childList:true,subtree:true});"
            "document.addEventListener('DOMContentLoaded',apply);})();</script>")


def _make(spec: WidgetSpec):
    kw = {k: v for k, v in spec.kwargs.items() if v is not None or k == "value"}
    if spec.component == "checkbox":
        return gr.Checkbox(**kw)
    if spec.component == "dropdown":
        return gr.Dropdown(**kw)
    if spec.component == "number":
        return gr.Number(**kw)
    return gr.Textbox(**kw)


def _field_updates(problems: dict[str, str]) -> list:
    """Messages next to the fields: a problem replaces the field's hint; a fixed field gets its hint back."""
    updates = []
    for setting in SETTINGS:
        if setting.name in problems:
            updates.append(gr.update(info=f"⚠ {problems[setting.name]}", elem_classes=["ls-invalid"]))
        else:
            updates.append(gr.update(info=range_hint(setting) or None, elem_classes=[]))
    return updates


def _fill(values: dict[str, Any], partial: bool) -> list:
    """Widget updates for loaded settings; with ``partial`` the settings not named keep what the user typed."""
    shown = form_values(values)
    out = []
    for setting in SETTINGS:
        if setting.name in shown:
            out.append(shown[setting.name])
        elif partial:
            out.append(gr.skip())
        else:
            out.append(form_values({setting.name: setting.default})[setting.name])
    return out


# the outputs of one tick of the live view, in order (the last output is the page's ``seen`` markers)
TICK_KEYS = ("progress", "mini", "status", "plot", "gallery", "saved", "log", "queue", "history", "stop", "stop2",
             "pause", "choices", "files", "compare", "grid", "test_status", "test_gallery", "test_grids")


def _images(items: list[tuple[str, str]]) -> list:
    """Gallery items as images read now (Gradio then serves its own copies, from any folder)."""
    out = []
    for path, caption in items:
        try:
            with Image.open(path) as image:
                out.append((image.copy(), caption))
        except OSError:
            continue
    return out


def _log_marker(path: str) -> tuple:
    try:
        st = Path(path).stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return ()


def _default_file(choices: list[tuple[str, str]]) -> str | None:
    """The file a run's list starts on: the best one, else the final one, else the last saved."""
    for word in ("lowest validation", "final"):
        found = next((path for label, path in choices if word in label), None)
        if found:
            return found
    return choices[-1][1] if choices else None


class Workbench:
    def __init__(self, state_dir: Path, manager: RunManager | None = None, allowed_roots: list[Path] | None = None):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # With allowed_roots, every path typed in the page must lie inside one of them or the state folder (resolved,
        # links followed); None: any path this user can reach (the GUI on this computer only).
        self.roots = None if allowed_roots is None else \
            [Path(r).expanduser().resolve() for r in allowed_roots] + [self.state_dir]
        self.user_presets = self.state_dir / "presets"
        self.manager = manager or RunManager(self.state_dir)

    # ---------------------------------------------------------- configuration
    def _values(self, args) -> dict[str, Any]:
        return dict(zip(NAMES, args))

    def load_path(self, path: str, confine: bool = True):
        path = (path or "").strip()
        if not path:
            return [gr.skip()] * len(NAMES) + ["Type the path of a .toml (or Kohya_ss .json) config to load."]
        outside = outside_roots(path, self.roots) if confine else None
        if outside:
            return [gr.skip()] * len(NAMES) + [f"❌ Not loaded: {outside}"]
        try:
            if path.lower().endswith(".json"):
                return self._import_kohya(Path(path))
            cfg = load_config(Path(path).expanduser())
        except (ConfigError, UserError) as exc:
            return [gr.skip()] * len(NAMES) + [f"❌ {exc}"]
        return _fill(cfg.as_dict(), partial=False) + [f"Loaded {path}."]

    def load_upload(self, file):
        """Load an uploaded config, then empty the upload box so the next file can be dropped in."""
        if not file:
            return [gr.skip()] * (len(NAMES) + 1) + [gr.skip()]
        # an upload is a file the browser sent (in Gradio's upload folder), not a server path the user typed
        return self.load_path(file if isinstance(file, str) else file.name, confine=False) + [None]

    def _import_kohya(self, path: Path):
        result = import_kohya_json(path, self.state_dir / "imported")
        return _fill(result.settings, partial=False) + [result.report()]

    def _checked_config(self, args):
        """Values parsed by the schema (no dataset scan): Save, download and print work on an unfinished form."""
        check = check_form(self._values(args), scan_dataset=False, roots=self.roots)
        return check.parsed, check.value_problems

    def save_path(self, path: str, *args):
        cfg, problems = self._checked_config(args)
        if problems:
            return _field_updates(problems) + ["❌ Not saved: " + "; ".join(f"{BY_NAME[k].label}: {v}"
                                                                            for k, v in problems.items())]
        path = (path or "").strip()
        if not path:
            return _field_updates({}) + ["Type where to save the config, e.g. /home/me/lora/emi.toml"]
        target = Path(path).expanduser()
        outside = outside_roots(target, self.roots)
        if outside:
            return _field_updates({}) + [f"❌ Not saved: {outside}"]
        if target.suffix.lower() != ".toml":
            target = target.with_suffix(target.suffix + ".toml") if target.suffix else target.with_suffix(".toml")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_config(cfg, target)
        except OSError as exc:
            return _field_updates({}) + [f"❌ Cannot write {target}: {exc}"]
        return _field_updates({}) + [f"Saved {target}."]

    def download(self, *args):
        cfg, problems = self._checked_config(args)
        if problems:
            return None, "❌ Fix the marked settings first."
        folder = Path(tempfile.mkdtemp(prefix="lora-studio-"))
        target = save_config(cfg, folder / f"{cfg.output_name or 'config'}.toml")
        return str(target), f"Ready to download: {target.name}"

    def print_command(self, *args):
        cfg, problems = self._checked_config(args)
        if problems:
            return gr.update(value="", visible=True), "❌ Fix the marked settings first."
        config_path = output_paths(cfg)["config"] if cfg.output_dir else Path("<output_dir>/config.toml")
        text = (f"# Start training runs:\n{display(engine_argv(cfg, config_path))}\n\n"
                f"# with this config, written to {config_path}:\n{dumps_config(cfg)}")
        return gr.update(value=text, visible=True), "The command and config are shown below."

    # ---------------------------------------------------------- presets
    def preset_choices(self) -> list[str]:
        return list(list_presets(self.user_presets))

    def apply_preset(self, key: str):
        presets = list_presets(self.user_presets)
        if not key or key not in presets:
            return [gr.skip()] * len(NAMES) + ["Choose a preset."]
        preset = presets[key]
        return _fill(preset.settings, partial=True) + [describe(preset)]

    def save_preset(self, name: str, *args):
        cfg, problems = self._checked_config(args)
        if problems:
            return gr.skip(), "❌ Fix the marked settings first."
        try:
            path = save_user_preset(self.user_presets, name or "", cfg.as_dict())
        except UserError as exc:
            return gr.skip(), f"❌ {exc}"
        return gr.update(choices=self.preset_choices(), value="user: " + path.stem), f"Saved preset {path}."

    def try_demo(self):
        folder = self.state_dir / "demo"
        config = folder / "config.toml"
        if not config.is_file():
            proc = subprocess.run([sys.executable, "-m", "lora_studio.cli", "demo", str(folder)], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                return [gr.skip()] * len(NAMES) + [f"❌ Could not write the demo: {proc.stderr.strip()[-800:]}"]
        cfg = load_config(config)
        return _fill(cfg.as_dict(), partial=False) + [
            f"Demo loaded from {folder}: a tiny offline model and 8 images. Press **Start training** (it trains in "
            "under a minute on a CPU)."]

    # ---------------------------------------------------------- dataset preparation
    def prepare(self, instance, klass, images, repeats, reg_images, reg_repeats, destination):
        for path in (images, reg_images, destination):
            outside = outside_roots(path, self.roots) if (path or "").strip() else None
            if outside:
                return [gr.skip()] * len(NAMES) + [f"❌ {outside}"]
        try:
            result = prepare_folders(destination, instance, klass, images, repeats or 0, reg_images or None,
                                     reg_repeats or 1)
        except UserError as exc:
            return [gr.skip()] * len(NAMES) + [f"❌ {exc}"]
        return _fill(result.settings(), partial=True) + [result.report()]

    def summary(self, *args):
        check = check_form(self._values(args), roots=self.roots)
        if check.data is None:
            return _field_updates(check.problems) + [check.report()]
        text = check.data.summary()
        return _field_updates(check.problems) + [f"```\n{text}\n```\n{check.report()}"]

    # ---------------------------------------------------------- runs
    def check(self, *args):
        check = check_form(self._values(args), roots=self.roots)
        return _field_updates(check.problems) + [check.report()]

    def check_dataset(self, *args):
        """The dataset health report of the form's folders (files only: no torch, in this process)."""
        check = check_form(self._values(args), roots=self.roots)
        dataset_fields = {"train_data_dir", "reg_data_dir", "dataset_config", "resolution", "caption_extension"}
        problems = {k: v for k, v in check.problems.items() if k in dataset_fields}
        if problems:
            return _field_updates(problems) + [check.report()]
        try:
            report = check_config(check.cfg if check.ok else check.parsed)
        except (UserError, ConfigError) as exc:
            return _field_updates({}) + [f"❌ {exc}"]
        return _field_updates({}) + [dataset_markdown(report)]

    def start(self, *args):
        check = check_form(self._values(args), roots=self.roots)
        if not check.ok:
            return _field_updates(check.problems) + [check.report(), gr.skip()]
        busy = self.manager.active() is not None
        rec = self.manager.enqueue(check.cfg)
        where = (f"queued behind the current run (position {len(self.manager.queued())})" if busy
                 else "started")
        report = f"**{rec.output_name}** {where}: {check.plan.describe()}. Follow it in the Runs tab."
        return _field_updates({}) + [report, gr.Tabs(selected="runs")]

    def stop(self):
        return self.manager.stop()

    def remove_queued(self, run_id: str):
        if self.manager.remove_queued((run_id or "").strip()):
            return f"Removed {run_id} from the queue."
        return f"No queued run with id '{run_id}'."

    def _shown_run(self, choice: str | None) -> RunRecord | None:
        """The training run the Runs view shows: the chosen one, else the one training, else the next one queued
        (a comparison job may run before it), else the last one started."""
        if choice and choice != "latest":
            rec = self.manager.get(choice)
            if rec is not None and rec.kind == "train":
                return rec
        active = self.manager.active()
        if active is not None and active.kind == "train":
            return active
        return next((r for r in self.manager.queued() if r.kind == "train"), None) or self.manager.latest("train")

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

    def _read_index(self, path: str | None, run: RunRecord | None, job: RunRecord | None) -> dict | None:
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
        run = self._shown_run(choice)
        state = m.live(run) if run else None
        latest = m.latest()
        latest_state = state if latest is run else m.live(latest) if latest else None
        active_state = state if active is run else m.live(active) if active else None
        run_id = run.id if run else None
        stop_label = "Stop now (kill)" if active and active.status == "stopping" else "Stop training"
        pause_label = "Resume" if active and active.kind == "train" and active_state.paused else "Pause"
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
        test_marker, test_make = self._test_parts(test_job)

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
                        lambda: _images(views.sample_gallery(state))),
            "saved": (views.saved_markdown(state), lambda: views.saved_markdown(state)),
            "log": ((run.log, _log_marker(run.log)) if run else "", lambda: m.log_tail(run) if run else ""),
            "queue": (views.queue_rows(m.queued()), lambda: views.queue_rows(m.queued())),
            "history": (views.history_rows(m.history()), lambda: views.history_rows(m.history())),
            "stop": (stop_label, lambda: gr.update(value=stop_label)),
            "stop2": (stop_label, lambda: gr.update(value=stop_label)),
            "pause": (pause_label, lambda: gr.update(value=pause_label)),
            "choices": ([r.id + r.status for r in m.ordered() if r.kind == "train"],
                        lambda: gr.update(choices=views.run_choices(m.ordered()))),
            "files": ((run_id, choices), lambda: gr.update(choices=choices, value=_default_file(choices))),
            "compare": ((grid_job.id if grid_job else None, grid_job.status if grid_job else None,
                         grid_state.step if grid_state else 0, index_marker, run.status if run else None),
                        lambda: views.compare_markdown(grid_job, grid_state, index(), run)),
            "grid": ((run_id, index_marker), lambda: _images(index_grids(index()))),
            "test": (test_marker, test_make),
        }
        out = []
        assert [k for k in TICK_KEYS if not k.startswith("test_")] + ["test"] == list(entries)
        for key, (marker, make) in entries.items():
            marker = json.dumps(marker, default=str)
            width = 3 if key == "test" else 1
            if seen.get(key) == marker:
                out += [gr.skip()] * width
                continue
            seen[key] = marker
            value = make()
            out += list(value) if width > 1 else [value]
        return (*out, seen)

    # ---------------------------------------------------------- the Test tab
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

    def test_this_file(self, path: str, choice: str):
        """The Runs view's "Test this file": the file (and its run's base model) into the Test tab, shown."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), "Choose one of the run's saved files first."
        run = self._shown_run(choice)
        model = gr.skip()
        if run is not None:
            try:
                model = load_config(run.config).pretrained_model_name_or_path or gr.skip()
            except (ConfigError, UserError, OSError):
                pass
        return path, model, gr.Tabs(selected="test"), f"{Path(path).name} is in the Test tab."

    def render(self, *args):
        """Render: on a paused run's current weights (a request it answers), else a comparison job in the queue."""
        *values, job = args
        settings = TestSettings.from_values(values)
        remember(self.state_dir, settings)
        run, state = self._paused_run()
        try:
            plan = check(settings, self.roots, need_files=run is None)
        except UserError as exc:
            return f"❌ {exc}", gr.skip()
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

    def _test_parts(self, job: dict | None):
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
                    done, total = (state.step, state.total_steps or "?") if state else (0, "?")
                    text = f"Rendering: image {done} of {total} …"
                elif rec.status == "completed":
                    text = f"Done: {rec.message}."
                else:
                    text = f"❌ {views.STATUS_WORDS.get(rec.status, rec.status)}: {rec.message} (log: `{rec.log}`)"
                return text, _images(index_tiles(index)), _images(index_grids(index))
            return marker, make
        if job.get("kind") == "paused":
            requests = list(job.get("requests") or [])
            answered = [Path(r).with_name(Path(r).stem + ".done.json").is_file() for r in requests]
            run = self.manager.get(job.get("run"))
            marker = (requests, answered, run.status if run else None)

            def make():
                images, errors, waiting = read_answers(requests)
                if waiting and run is not None and run.status not in ("running", "stopping"):
                    text = f"❌ {run.output_name} ended before answering {waiting} request(s)."
                elif waiting:
                    text = (f"Rendering on {job.get('label')}'s current weights: {len(requests) - waiting} of "
                            f"{len(requests)} prompt(s) done …")
                else:
                    text = f"Done: {len(images)} image(s) on {job.get('label')}'s weights."
                text += "".join(f"\n\n❌ {e}" for e in errors)
                return text, _images(answer_gallery(images, job.get("label") or "")), []
            return marker, make
        return None, lambda: ("", [], [])

    # ---------------------------------------------------------- layout
    def build(self) -> gr.Blocks:
        specs = widget_specs()
        with gr.Blocks(title="LoRA Studio") as page:
            gr.Markdown("# LoRA Studio\nTrain LoRA adapters for Stable Diffusion on your own images.")
            fields: dict[str, Any] = {}
            with gr.Tabs(selected="lora", elem_id="main-tabs") as main_tabs:
                with gr.Tab("LoRA", id="lora"):
                    with gr.Tabs(elem_id="lora-tabs"):
                        with gr.Tab("Configuration", id="configuration"):
                            config_status = self._configuration_tab()
                        for tab in ("model", "folders"):
                            with gr.Tab(TAB_LABELS[tab], id=tab):
                                self._fields(specs, tab, fields)
                        with gr.Tab("Parameters", id="parameters"):
                            with gr.Tabs(elem_id="parameter-tabs"):
                                for tab in ("basic", "advanced", "samples"):
                                    with gr.Tab(TAB_LABELS[tab], id=tab):
                                        self._fields(specs, tab, fields)
                        with gr.Tab("Dataset preparation", id="dataset"):
                            prep = self._dataset_tab()
                    with gr.Row():
                        start_btn = gr.Button("Start training", variant="primary", elem_id="start-training")
                        stop_btn = gr.Button("Stop training", variant="stop", elem_id="stop-training")
                        check_btn = gr.Button("Check settings", elem_id="check-settings")
                        dataset_btn = gr.Button("Check dataset", elem_id="check-dataset")
                        print_btn = gr.Button("Print training command", elem_id="print-command")
                    check_md = gr.Markdown(elem_id="check-report")
                    mini_progress = gr.HTML(elem_id="mini-progress")
                    command_box = gr.Textbox(label="Training command and config", lines=12, max_lines=40,
                                             interactive=False, visible=False, buttons=["copy"],
                                             elem_id="command-box")
                with gr.Tab("Runs", id="runs"):
                    runs = self._runs_tab()
                with gr.Tab("Test", id="test", elem_id="test") as test_tab:
                    test = self._test_tab()
                with gr.Tab("Dataset", id="dataset-tools", elem_id="dataset-tools"):
                    DatasetTab(self.manager, self.roots).build()
                with gr.Tab("Tools", id="tools", elem_id="tools"):
                    ToolsTab(self.manager, self.roots).build()
            inputs = [fields[n] for n in NAMES]
            outputs = inputs
            c = self._config_controls
            c["load_btn"].click(self.load_path, [c["path"]], outputs + [config_status])
            c["upload"].upload(self.load_upload, [c["upload"]], outputs + [config_status, c["upload"]])
            c["save_btn"].click(self.save_path, [c["path"]] + inputs, outputs + [config_status])
            c["download_btn"].click(self.download, inputs, [c["download"], config_status])
            c["preset"].input(self.apply_preset, [c["preset"]], outputs + [config_status])
            c["save_preset_btn"].click(self.save_preset, [c["preset_name"]] + inputs, [c["preset"], config_status])
            c["demo_btn"].click(self.try_demo, [], outputs + [config_status])
            prep["button"].click(self.prepare, prep["inputs"], outputs + [prep["report"]])
            prep["summary_btn"].click(self.summary, inputs, outputs + [prep["summary"]])
            check_btn.click(self.check, inputs, outputs + [check_md])
            dataset_btn.click(self.check_dataset, inputs, outputs + [check_md])
            print_btn.click(self.print_command, inputs, [command_box, check_md])
            start_btn.click(self.start, inputs, outputs + [check_md, main_tabs])
            for button in (stop_btn, runs["stop"]):
                button.click(self.stop, [], [runs["stop_message"]])
            runs["remove_btn"].click(self.remove_queued, [runs["remove_id"]], [runs["stop_message"]])
            runs["resume"].click(self.manager.resume_last, [], [runs["stop_message"]])
            runs["pause"].click(self.manager.pause, [], [runs["stop_message"]])
            test_job = gr.State({})
            runs["test_btn"].click(self.test_this_file, [runs["file"], runs["choice"]],
                                   [test["files"], test["model"], main_tabs, runs["stop_message"]])
            test_tab.select(self.test_tab_opened, [fields["pretrained_model_name_or_path"], test["model"]],
                            [test["model"], test["add"]])
            test["add"].input(self.add_file, [test["add"], test["files"]], [test["files"], test["add"]])
            test["render"].click(self.render, test["inputs"] + [test_job], [test["status"], test_job])
            page.load(self.test_defaults, [], test["inputs"] + [test_job, test["add"]])
            seen = gr.State({})
            timer = gr.Timer(1.0)
            tick_outputs = [runs["progress"], mini_progress, runs["status"], runs["plot"], runs["gallery"],
                            runs["saved"], runs["log"], runs["queue"], runs["history"], stop_btn, runs["stop"],
                            runs["pause"], runs["choice"], runs["file"], runs["compare"], runs["grid"],
                            test["status"], test["gallery"], test["grids"], seen]
            tick_inputs = [seen, runs["choice"], test_job]
            timer.tick(self.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            page.load(self.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            runs["choice"].input(self.refresh, tick_inputs, tick_outputs, show_progress="hidden")
            test_job.change(self.refresh, tick_inputs, tick_outputs, show_progress="hidden")
        return page

    def _fields(self, specs: list[WidgetSpec], tab: str, fields: dict) -> None:
        """A tab's settings in schema order: paths one a row, other fields three a row, check boxes four a row."""
        mine = [s for s in specs if s.tab == tab]
        paths = [s for s in mine if s.kwargs.get("placeholder") == "path on this computer"]
        boxes = [s for s in mine if s.component == "checkbox"]
        others = [s for s in mine if s not in paths and s not in boxes]
        for group, per_row in ((paths, 1), (others, 3), (boxes, 4)):
            for start in range(0, len(group), per_row):
                with gr.Row(equal_height=True):
                    for spec in group[start:start + per_row]:
                        fields[spec.name] = _make(spec)

    def _configuration_tab(self):
        with gr.Row():
            preset = gr.Dropdown(choices=self.preset_choices(), value=None, label="Presets", elem_id="preset",
                                 info="Sets only the settings it names; your model and folders stay.")
            demo_btn = gr.Button("Try the demo", elem_id="try-demo")
        with gr.Row():
            path = gr.Textbox(label="Config file", placeholder="/path/to/config.toml (or a Kohya_ss .json)",
                              elem_id="config-path", scale=3)
            load_btn = gr.Button("Load", elem_id="config-load")
            save_btn = gr.Button("Save", elem_id="config-save")
        with gr.Row():
            upload = gr.File(label="Upload a config (.toml, or a Kohya_ss GUI .json)", file_types=[".toml", ".json"],
                             type="filepath", elem_id="config-upload")
            with gr.Column():
                download_btn = gr.Button("Prepare config for download", elem_id="config-download-btn")
                download = gr.File(label="Download", interactive=False, elem_id="config-download")
        with gr.Row():
            preset_name = gr.Textbox(label="Save the current settings as a preset named", elem_id="preset-name")
            save_preset_btn = gr.Button("Save preset", elem_id="preset-save")
        status = gr.Markdown(elem_id="config-status")
        self._config_controls = dict(preset=preset, demo_btn=demo_btn, path=path, load_btn=load_btn,
                                     save_btn=save_btn, upload=upload, download_btn=download_btn, download=download,
                                     preset_name=preset_name, save_preset_btn=save_preset_btn)
        return status

    def _dataset_tab(self) -> dict:
        gr.Markdown("Create the `img/<repeats>_<instance> <class>`, `reg/`, `model/` and `log/` folders from a "
                    "folder of images. Your images and captions are **copied**; the originals are never moved.")
        with gr.Row():
            instance = gr.Textbox(label="Instance prompt", placeholder="e.g. emi", elem_id="prep-instance")
            klass = gr.Textbox(label="Class prompt", placeholder="e.g. person", elem_id="prep-class")
        with gr.Row():
            images = gr.Textbox(label="Training images", placeholder="folder with your images (and .txt captions)",
                                elem_id="prep-images", scale=3)
            repeats = gr.Number(label="Repeats", value=10, precision=0, elem_id="prep-repeats")
        with gr.Row():
            reg_images = gr.Textbox(label="Regularisation images (optional)", elem_id="prep-reg-images", scale=3)
            reg_repeats = gr.Number(label="Regularisation repeats", value=1, precision=0, elem_id="prep-reg-repeats")
        destination = gr.Textbox(label="Destination training folder", placeholder="e.g. /home/me/lora/emi",
                                 elem_id="prep-destination")
        with gr.Row():
            button = gr.Button("Prepare training folders", variant="primary", elem_id="prep-run")
            summary_btn = gr.Button("Dataset summary", elem_id="prep-summary")
        report = gr.Markdown(elem_id="prep-report")
        summary = gr.Markdown(elem_id="dataset-summary")
        return dict(inputs=[instance, klass, images, repeats, reg_images, reg_repeats, destination], button=button,
                    report=report, summary_btn=summary_btn, summary=summary)

    def _runs_tab(self) -> dict:
        with gr.Row():
            gr.Markdown("## Current run")
            choice = gr.Dropdown(choices=views.run_choices(self.manager.ordered()), value="latest", label="Show run",
                                 elem_id="run-choice", scale=2)
        progress = gr.HTML(elem_id="run-progress")
        status = gr.Markdown(elem_id="run-status")
        with gr.Row():
            stop = gr.Button("Stop training", variant="stop", elem_id="runs-stop")
            pause = gr.Button("Pause", elem_id="pause-run")
            resume = gr.Button("Resume last run", elem_id="resume-last")
            stop_message = gr.Markdown(elem_id="stop-message")
        with gr.Row():
            plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss",
                               elem_id="loss-chart", height=280)
            gallery = gr.Gallery(label="Sample images (newest epoch first)", columns=4, height=280,
                                 elem_id="sample-gallery", format="png", interactive=False)
        compare = gr.Markdown(elem_id="compare-status")
        grid = gr.Gallery(label="Comparison grid (rows: saved files, columns: strengths)", columns=1, height=480,
                          elem_id="compare-grid", format="png", interactive=False, object_fit="scale-down",
                          preview=True)
        saved = gr.Markdown(elem_id="saved-files")
        with gr.Row(equal_height=True):
            file = gr.Dropdown(choices=[], value=None, label="Saved files of this run", elem_id="run-file", scale=3)
            test_btn = gr.Button("Test this file", elem_id="test-this-file")
        log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, autoscroll=True, interactive=False,
                         elem_id="run-log")
        gr.Markdown("## Queue\nRuns started while another trains wait here and start in order.")
        queue = gr.Dataframe(headers=views.QUEUE_HEADERS, value=[], interactive=False, elem_id="run-queue")
        with gr.Row():
            remove_id = gr.Textbox(label="Run id to remove from the queue", elem_id="queue-remove-id")
            remove_btn = gr.Button("Remove from queue", elem_id="queue-remove")
        gr.Markdown("## History")
        history = gr.Dataframe(headers=views.HISTORY_HEADERS, value=[], interactive=False, wrap=True,
                               elem_id="run-history")
        return dict(progress=progress, status=status, stop=stop, pause=pause, resume=resume, stop_message=stop_message,
                    plot=plot, choice=choice, compare=compare, grid=grid, file=file, test_btn=test_btn,
                    gallery=gallery, saved=saved, log=log, queue=queue, remove_id=remove_id, remove_btn=remove_btn,
                    history=history)

    def _test_tab(self) -> dict:
        gr.Markdown("Make images with LoRA files at several strengths (0 is the base model) and fixed seeds, to "
                    "choose the best file. **Render** runs in the queue, after the job before it. While a training "
                    "run is **paused**, Render uses its current weights instead (no second copy of the model).")
        d = load_remembered(self.state_dir)[0] or TestSettings()
        if not d.model:
            d.model = self._latest_model()
        model = gr.Textbox(d.model, label="Base model", elem_id="test-model",
                           placeholder="the .safetensors checkpoint or diffusers folder the LoRA was trained on")
        with gr.Row():
            files = gr.Textbox(d.files, label="LoRA files (one a line)", lines=3, elem_id="test-files", scale=3)
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
        gallery = gr.Gallery(label="Images (file · strength · seed)", columns=5, height="auto",
                             elem_id="test-gallery", format="png", interactive=False, fit_columns=False)
        grids = gr.Gallery(label="Grids (rows: files, columns: strengths)", columns=1, height=480,
                           elem_id="test-grids", format="png", interactive=False, object_fit="scale-down",
                           preview=True)
        inputs = [model, files, prompts, negative, seeds, strengths, sampler, steps, width, height, cfg]
        assert len(inputs) == len(TestSettings.names())
        return dict(model=model, files=files, add=add, inputs=inputs, render=render, status=status, gallery=gallery,
                    grids=grids)


def serve(host: str, port: int, open_browser: bool, state_dir: Path, auth: tuple[str, str] | None,
          allowed_roots: list[Path] | None = None) -> None:
    page = Workbench(state_dir, allowed_roots=allowed_roots).build()
    page.queue(default_concurrency_limit=4)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=open_browser, auth=auth,
                max_file_size="20mb", strict_cors=True, ssr_mode=False, mcp_server=False, show_error=True,
                css=CSS, head=_help_script(), footer_links=[])
