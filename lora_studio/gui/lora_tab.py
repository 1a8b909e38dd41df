"""The LoRA tab: every setting as a widget generated from the config schema (Model, Folders, Parameters), the
Configuration sub-tab (load, save, upload, download, presets, the demo), Dataset preparation, and the row under them
(Start training, Stop training, Check settings, Check dataset, Print training command).

What each control does lives in ``form``, ``presets``, ``config.kohya_import`` and ``dataset_prep``; Start training
queues the run in the job service (``jobs.runs``).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import Config, dumps_config, load_config, save_config
from ..config.kohya_import import import_kohya_json
from ..config.schema import BY_NAME, SETTINGS
from ..dataset_tools.check_cli import check_config
from ..errors import ConfigError, UserError
from ..jobs.command import display, engine_argv
from ..jobs.runs import RunManager
from ..training.outputs import output_paths
from .dataset_prep import prepare_folders
from .dataset_tab import dataset_markdown
from .form import NAMES, check_form, form_values, outside_roots
from .presets import describe, list_presets, save_user_preset
from .settings_layout import build_advanced, place_help, wire_lora_type
from .widgets import LORA_TYPE, TAB_LABELS, WidgetSpec, field_info, widget_specs, with_lora_type


def _make(spec: WidgetSpec):
    kw = {k: v for k, v in spec.kwargs.items() if v is not None or k == "value"}
    if spec.component == "checkbox":
        return gr.Checkbox(**kw)
    if spec.component == "dropdown":
        return gr.Dropdown(**kw)
    if spec.component == "number":
        return gr.Number(**kw)
    return gr.Textbox(**kw)


def _place_fields(specs: list[WidgetSpec], tab: str, fields: dict) -> None:
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


def _field_updates(problems: dict[str, str]) -> list:
    """Messages next to the fields: a problem replaces the field's hint; a fixed field gets its hint back."""
    updates = []
    for setting in SETTINGS:
        if setting.name in problems:
            updates.append(gr.update(info=f"⚠ {problems[setting.name]}", elem_classes=["ls-invalid"]))
        else:
            updates.append(gr.update(info=field_info(setting), elem_classes=[]))
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


def _values(args) -> dict[str, Any]:
    return dict(zip(NAMES, args))


def _checked_config(args, roots: list[Path] | None) -> tuple[Config, dict[str, str]]:
    """Values parsed by the schema (no dataset scan): Save, download and print work on an unfinished form."""
    check = check_form(_values(args), scan_dataset=False, roots=roots)
    return check.parsed, check.value_problems


class ConfigurationTab:
    """The LoRA tab's Configuration sub-tab: each action fills the form's fields and says what it did."""

    def __init__(self, state_dir: Path, roots: list[Path] | None):
        self.state_dir = state_dir
        self.roots = roots
        self.user_presets = self.state_dir / "presets"

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

    def save_path(self, path: str, *args):
        cfg, problems = _checked_config(args, self.roots)
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
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return None, "❌ Fix the marked settings first."
        folder = Path(tempfile.mkdtemp(prefix="lora-studio-"))
        target = save_config(cfg, folder / f"{cfg.output_name or 'config'}.toml")
        return str(target), f"Ready to download: {target.name}"

    def preset_choices(self) -> list[str]:
        return list(list_presets(self.user_presets))

    def apply_preset(self, key: str):
        presets = list_presets(self.user_presets)
        if not key or key not in presets:
            return [gr.skip()] * len(NAMES) + ["Choose a preset."]
        preset = presets[key]
        return _fill(preset.settings, partial=True) + [describe(preset)]

    def save_preset(self, name: str, *args):
        cfg, problems = _checked_config(args, self.roots)
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

    def build(self) -> dict:
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
        return dict(preset=preset, demo_btn=demo_btn, path=path, load_btn=load_btn, save_btn=save_btn, upload=upload,
                    download_btn=download_btn, download=download, preset_name=preset_name,
                    save_preset_btn=save_preset_btn, status=status)

    def wire(self, c: dict, inputs: list) -> None:
        """The sub-tab's events, once the form's fields (``inputs``, in ``NAMES`` order) exist."""
        outputs = inputs
        status = c["status"]
        c["load_btn"].click(self.load_path, [c["path"]], outputs + [status])
        c["upload"].upload(self.load_upload, [c["upload"]], outputs + [status, c["upload"]])
        c["save_btn"].click(self.save_path, [c["path"]] + inputs, outputs + [status])
        c["download_btn"].click(self.download, inputs, [c["download"], status])
        c["preset"].input(self.apply_preset, [c["preset"]], outputs + [status])
        c["save_preset_btn"].click(self.save_preset, [c["preset_name"]] + inputs, [c["preset"], status])
        c["demo_btn"].click(self.try_demo, [], outputs + [status])


class LoraTab:
    def __init__(self, state_dir: Path, manager: RunManager, roots: list[Path] | None):
        self.manager = manager
        self.roots = roots
        self.config = ConfigurationTab(state_dir, roots)

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
        check = check_form(_values(args), roots=self.roots)
        if check.data is None:
            return _field_updates(check.problems) + [check.report()]
        text = check.data.summary()
        return _field_updates(check.problems) + [f"```\n{text}\n```\n{check.report()}"]

    # ---------------------------------------------------------- the row under the sub-tabs
    def check(self, *args):
        check = check_form(_values(args), roots=self.roots)
        return _field_updates(check.problems) + [check.report()]

    def check_dataset(self, *args):
        """The dataset health report of the form's folders (files only: no torch, in this process)."""
        check = check_form(_values(args), roots=self.roots)
        dataset_fields = {"train_data_dir", "reg_data_dir", "dataset_config", "resolution", "caption_extension"}
        problems = {k: v for k, v in check.problems.items() if k in dataset_fields}
        if problems:
            return _field_updates(problems) + [check.report()]
        try:
            report = check_config(check.cfg if check.ok else check.parsed)
        except (UserError, ConfigError) as exc:
            return _field_updates({}) + [f"❌ {exc}"]
        return _field_updates({}) + [dataset_markdown(report)]

    def print_command(self, *args):
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return gr.update(value="", visible=True), "❌ Fix the marked settings first."
        config_path = output_paths(cfg)["config"] if cfg.output_dir else Path("<output_dir>/config.toml")
        text = (f"# Start training runs:\n{display(engine_argv(cfg, config_path, self.manager.allowed_dirs))}\n\n"
                f"# with this config, written to {config_path}:\n{dumps_config(cfg)}")
        return gr.update(value=text, visible=True), "The command and config are shown below."

    def start(self, *args):
        check = check_form(_values(args), roots=self.roots)
        if not check.ok:
            return _field_updates(check.problems) + [check.report(), gr.skip()]
        busy = self.manager.active() is not None
        rec = self.manager.enqueue(check.cfg)
        where = (f"queued behind the current run (position {len(self.manager.queued())})" if busy
                 else "started")
        report = f"**{rec.output_name}** {where}: {check.plan.describe()}. Follow it in the Runs tab."
        return _field_updates({}) + [report, gr.Tabs(selected="runs")]

    # ---------------------------------------------------------- layout
    def build(self) -> dict:
        specs = with_lora_type(widget_specs())
        fields: dict[str, Any] = {}
        with gr.Tabs(elem_id="lora-tabs"):
            with gr.Tab("Configuration", id="configuration"):
                config = self.config.build()
            for tab in ("model", "folders"):
                with gr.Tab(TAB_LABELS[tab], id=tab):
                    _place_fields(specs, tab, fields)
                    place_help([s for s in specs if s.tab == tab])
            with gr.Tab("Parameters", id="parameters"):
                with gr.Tabs(elem_id="parameter-tabs"):
                    for tab in ("basic", "advanced", "samples"):
                        with gr.Tab(TAB_LABELS[tab], id=tab):
                            if tab == "advanced":
                                build_advanced(specs, fields, _make)
                            else:
                                _place_fields(specs, tab, fields)
                                place_help([s for s in specs if s.tab == tab])
            with gr.Tab("Dataset preparation", id="dataset"):
                prep = self._preparation_tab()
        with gr.Row():
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-training")
            stop_btn = gr.Button("Stop training", variant="stop", elem_id="stop-training")
            check_btn = gr.Button("Check settings", elem_id="check-settings")
            dataset_btn = gr.Button("Check dataset", elem_id="check-dataset")
            print_btn = gr.Button("Print training command", elem_id="print-command")
        check_md = gr.Markdown(elem_id="check-report")
        mini_progress = gr.HTML(elem_id="mini-progress")
        command_box = gr.Textbox(label="Training command and config", lines=12, max_lines=40, interactive=False,
                                 visible=False, buttons=["copy"], elem_id="command-box")
        lora_type = fields.pop(LORA_TYPE)  # not a setting: it sets network_module and network_args
        wire_lora_type(lora_type, fields)
        inputs = [fields[n] for n in NAMES]
        outputs = inputs
        self.config.wire(config, inputs)
        prep["button"].click(self.prepare, prep["inputs"], outputs + [prep["report"]])
        prep["summary_btn"].click(self.summary, inputs, outputs + [prep["summary"]])
        check_btn.click(self.check, inputs, outputs + [check_md])
        dataset_btn.click(self.check_dataset, inputs, outputs + [check_md])
        print_btn.click(self.print_command, inputs, [command_box, check_md])
        return dict(fields=fields, inputs=inputs, start=start_btn, stop=stop_btn, check_md=check_md,
                    mini_progress=mini_progress)

    @staticmethod
    def _preparation_tab() -> dict:
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
