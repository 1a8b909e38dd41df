"""The LoRA Studio page: LoRA tab (Configuration, Model, Folders, Parameters, Dataset preparation) and Runs.

Layout and wiring only; what each control does lives in ``form``, ``presets``, ``kohya_import``, ``dataset_prep``,
``runs`` and ``views``. Every setting widget is generated from the config schema.
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

from ..config import dumps_config, load_config, save_config
from ..config.schema import BY_NAME, SETTINGS
from ..errors import ConfigError, UserError
from ..training.outputs import output_paths
from . import views
from .command import display, engine_argv
from .dataset_prep import prepare_folders
from .form import NAMES, check_form, form_values, outside_roots
from .kohya_import import read_kohya_json
from .presets import describe, list_presets, save_user_preset
from .runs import RunManager
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
        result = read_kohya_json(path)
        settings = dict(result.settings)
        if result.sample_prompt_text:
            prompts = self.state_dir / "imported" / f"{path.stem}_prompts.txt"
            prompts.parent.mkdir(parents=True, exist_ok=True)
            prompts.write_text(result.sample_prompt_text.rstrip() + "\n", encoding="utf-8")
            settings["sample_prompts"] = str(prompts)
            result.notes.append(f"Sample prompts were written to {prompts}")
        return _fill(settings, partial=False) + [result.report()]

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

    def refresh(self, seen: dict | None):
        """One tick of the live view. Only what changed since this page's last tick is sent (the rest is skipped),
        so the page does not redraw, and the fields a user is typing in are never touched."""
        seen = dict(seen or {})
        run = self.manager.latest()
        state = self.manager.live(run) if run else None
        run_id = run.id if run else None
        stop_label = "Stop now (kill)" if run and run.status == "stopping" else "Stop training"
        progress = views.progress_html(run, state)
        values = {
            "progress": progress, "mini": progress, "status": views.status_markdown(run, state),
            "plot": (run_id, len(state.losses) if state else 0, len(state.validations) if state else 0),
            "gallery": (run_id, len(state.samples) if state else 0),
            "saved": views.saved_markdown(state), "log": self.manager.log_tail(run) if run else "",
            "queue": views.queue_rows(self.manager.queued()), "history": views.history_rows(self.manager.history()),
            "stop": stop_label, "stop2": stop_label,
            "pause": "Resume" if state and state.paused else "Pause",
        }
        out = []
        for key, value in values.items():
            marker = json.dumps(value, default=str)
            if seen.get(key) == marker:
                out.append(gr.skip())
                continue
            seen[key] = marker
            if key == "plot":
                out.append(views.loss_frame(state))
            elif key == "gallery":
                out.append([(Image.open(p).copy(), c) for p, c in views.sample_gallery(state)])
            elif key in ("stop", "stop2", "pause"):
                out.append(gr.update(value=value))
            else:
                out.append(value)
        return (*out, seen)

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
                        print_btn = gr.Button("Print training command", elem_id="print-command")
                    check_md = gr.Markdown(elem_id="check-report")
                    mini_progress = gr.HTML(elem_id="mini-progress")
                    command_box = gr.Textbox(label="Training command and config", lines=12, max_lines=40,
                                             interactive=False, visible=False, buttons=["copy"],
                                             elem_id="command-box")
                with gr.Tab("Runs", id="runs"):
                    runs = self._runs_tab()
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
            print_btn.click(self.print_command, inputs, [command_box, check_md])
            start_btn.click(self.start, inputs, outputs + [check_md, main_tabs])
            for button in (stop_btn, runs["stop"]):
                button.click(self.stop, [], [runs["stop_message"]])
            runs["remove_btn"].click(self.remove_queued, [runs["remove_id"]], [runs["stop_message"]])
            runs["resume"].click(self.manager.resume_last, [], [runs["stop_message"]])
            runs["pause"].click(self.manager.pause, [], [runs["stop_message"]])
            seen = gr.State({})
            timer = gr.Timer(1.0)
            tick_outputs = [runs["progress"], mini_progress, runs["status"], runs["plot"], runs["gallery"],
                            runs["saved"], runs["log"], runs["queue"], runs["history"], stop_btn, runs["stop"],
                            runs["pause"], seen]
            timer.tick(self.refresh, [seen], tick_outputs, show_progress="hidden")
            page.load(self.refresh, [seen], tick_outputs, show_progress="hidden")
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
        gr.Markdown("## Current run")
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
        saved = gr.Markdown(elem_id="saved-files")
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
                    plot=plot,
                    gallery=gallery, saved=saved, log=log, queue=queue, remove_id=remove_id, remove_btn=remove_btn,
                    history=history)


def serve(host: str, port: int, open_browser: bool, state_dir: Path, auth: tuple[str, str] | None,
          allowed_roots: list[Path] | None = None) -> None:
    page = Workbench(state_dir, allowed_roots=allowed_roots).build()
    page.queue(default_concurrency_limit=4)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=open_browser, auth=auth,
                max_file_size="20mb", strict_cors=True, ssr_mode=False, mcp_server=False, show_error=True,
                css=CSS, head=_help_script(), footer_links=[])
