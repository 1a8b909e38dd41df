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
from functools import partial
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from ..config import Config, dumps_config, load_config, save_config
from ..config.kohya_import import import_kohya_json
from ..config.schema import ADVANCED_SECTIONS, BY_NAME, SETTINGS
from ..dataset_tools.check_cli import check_config
from ..errors import ConfigError, UserError
from ..jobs.command import display, engine_argv
from ..jobs.runs import RunManager
from ..training.outputs import output_paths
from .browse import browse_button
from .dataset_prep import prepare_folders
from .dataset_tab import dataset_markdown
from .form import NAMES, check_form, form_values, outside_roots
from .form_state import DEFAULTS, clear_form, fingerprint, form_dict, load_form, merge, named_in_toml, save_form
from .model_family import FAMILY_FIELDS, PartsFilled, fill_parts, read_model, status_markdown
from .presets import describe, list_presets, save_user_preset
from .sample_prompts import SamplePrompts
from .settings_layout import build_advanced, place_help, wire_lora_type
from .widgets import (LORA_TYPE, TAB_LABELS, WidgetSpec, by_family, families_of, field_info, widget_specs,
                      with_lora_type)


def _make(spec: WidgetSpec, buttons: dict | None = None):
    """The widget of ``spec``; a path field gets its Browse button, kept in ``buttons`` by setting name."""
    kw = {k: v for k, v in spec.kwargs.items() if v is not None or k == "value"}
    if spec.component == "checkbox":
        return gr.Checkbox(**kw)
    if spec.component == "dropdown":
        return gr.Dropdown(**kw)
    if spec.component == "number":
        return gr.Number(**kw)
    box = gr.Textbox(**kw)
    if spec.kwargs.get("placeholder") == "path on this computer":
        button = browse_button(box)  # a Browse button beside it (the row it is made in)
        if buttons is not None and button is not None:
            buttons[spec.name] = button
    return box


def _place_fields(specs: list[WidgetSpec], tab: str, fields: dict, make: Callable[[WidgetSpec], Any] = _make,
                  after: dict[str, Callable[[], Any]] | None = None) -> None:
    """A tab's settings in schema order: paths one a row, other fields three a row, check boxes four a row; of each
    kind the fields for every model family first, then each family group's in rows of their own (``by_family``).
    ``after``: setting name -> what to build under its row (the model's status line)."""
    mine = [s for s in specs if s.tab == tab]
    paths = [s for s in mine if s.kwargs.get("placeholder") == "path on this computer"]
    boxes = [s for s in mine if s.component == "checkbox"]
    others = [s for s in mine if s not in paths and s not in boxes]
    for group, per_row in ((paths, 1), (others, 3), (boxes, 4)):
        for run in by_family(sorted(group, key=lambda spec: families_of(spec) is not None)):
            for start in range(0, len(run), per_row):
                row = run[start:start + per_row]
                with gr.Row(equal_height=True):
                    for spec in row:
                        fields[spec.name] = make(spec)
                for spec in row:
                    if after and spec.name in after:
                        after[spec.name]()


def _field_updates(problems: dict[str, str]) -> list:
    """Messages next to the fields: a problem replaces the field's hint (and shows a field the model's family hid:
    no problem stays out of sight); a fixed field gets its hint back."""
    updates = []
    for setting in SETTINGS:
        if setting.name in problems:
            updates.append(gr.update(info=f"⚠ {problems[setting.name]}", elem_classes=["ls-invalid"], visible=True))
        else:
            updates.append(gr.update(info=field_info(setting), elem_classes=[]))
    return updates


def _show(shown: dict[str, Any], clear_marks: bool = True) -> list:
    """Widget updates that show ``shown`` (widget values by name); the other fields keep what the user typed. With
    ``clear_marks`` every field's problem mark goes too (the form was refilled: the old problems no longer hold)."""
    if not clear_marks:
        return [shown[s.name] if s.name in shown else gr.skip() for s in SETTINGS]
    updates = _field_updates({})
    for setting, update in zip(SETTINGS, updates):
        if setting.name in shown:
            update["value"] = shown[setting.name]
    return updates


def _fill(values: dict[str, Any], partial: bool) -> list:
    """Widget updates for loaded settings; with ``partial`` the settings not named keep what the user typed (and
    their marks); without, every field is refilled."""
    shown = form_values(values)
    return _show(shown if partial else {**DEFAULTS, **shown}, clear_marks=not partial)


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

    def load_path(self, path: str, *form, confine: bool = True):
        """Load a config (TOML, or a Kohya_ss JSON imported) into the form: only the settings it names change
        (``form_state.merge``). ``form``: the form's values; none: a fresh form, and the report is the file's own."""
        path = (path or "").strip()
        if not path:
            return self._not_loaded("Type the path of a .toml (or Kohya_ss .json) config to load.")
        outside = outside_roots(path, self.roots) if confine else None
        if outside:
            return self._not_loaded(f"✗ Not loaded: {outside}")
        try:
            if path.lower().endswith(".json"):
                result = import_kohya_json(Path(path), self.state_dir / "imported")
                return self._merged(form, result.settings, result.named, result.report())
            cfg = load_config(Path(path).expanduser())
            named = named_in_toml(Path(path).expanduser())
        except (ConfigError, UserError) as exc:
            return self._not_loaded(f"✗ {exc}")
        return self._merged(form, cfg.as_dict(), named, f"Loaded {path}.")

    def load_upload(self, file, *form):
        """Load an uploaded config, then empty the upload box so the next file can be dropped in."""
        if not file:
            return self._not_loaded(gr.skip()) + [gr.skip()]
        # an upload is a file the browser sent (in Gradio's upload folder), not a server path the user typed
        return self.load_path(file if isinstance(file, str) else file.name, *form, confine=False) + [None]

    @staticmethod
    def _not_loaded(message) -> list:
        """The form, its check report and its marks as they were; ``message`` in the status."""
        return [gr.skip()] * (len(NAMES) + 1) + [message]

    @staticmethod
    def _merged(form: tuple, settings: dict[str, Any], named, report: str, source: str = "file") -> list:
        """The form refilled (marks cleared), the check report emptied (its problems were the old settings'), and
        the status: the source's report, then (when the form was given) what changed in the form and what stayed."""
        merged = merge(form_dict(form), settings, named, source)
        return _show(merged.values) + ["", report + (f"\n\n{merged.report()}" if form else "")]

    def save_path(self, path: str, *args):
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return _field_updates(problems) + ["✗ Not saved: " + "; ".join(f"{BY_NAME[k].label}: {v}"
                                                                            for k, v in problems.items())]
        path = (path or "").strip()
        if not path:
            return _field_updates({}) + ["Type where to save the config, e.g. /home/me/lora/emi.toml"]
        target = Path(path).expanduser()
        outside = outside_roots(target, self.roots)
        if outside:
            return _field_updates({}) + [f"✗ Not saved: {outside}"]
        if target.suffix.lower() != ".toml":
            target = target.with_suffix(target.suffix + ".toml") if target.suffix else target.with_suffix(".toml")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_config(cfg, target)
        except OSError as exc:
            return _field_updates({}) + [f"✗ Cannot write {target}: {exc}"]
        return _field_updates({}) + [f"Saved {target}."]

    def download(self, *args):
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return None, "✗ Fix the marked settings first."
        folder = Path(tempfile.mkdtemp(prefix="lora-studio-"))
        target = save_config(cfg, folder / f"{cfg.output_name or 'config'}.toml")
        return str(target), f"Ready to download: {target.name}"

    def preset_choices(self) -> list[str]:
        return list(list_presets(self.user_presets))

    def apply_preset(self, key: str, *form):
        presets = list_presets(self.user_presets)
        if not key or key not in presets:
            return self._not_loaded("Choose a preset.")
        preset = presets[key]
        return self._merged(form, preset.settings, preset.settings, describe(preset), "preset")

    def save_preset(self, name: str, *args):
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return gr.skip(), "✗ Fix the marked settings first."
        try:
            path = save_user_preset(self.user_presets, name or "", cfg.as_dict())
        except UserError as exc:
            return gr.skip(), f"✗ {exc}"
        return gr.update(choices=self.preset_choices(), value="user: " + path.stem), f"Saved preset {path}."

    def try_demo(self):
        folder = self.state_dir / "demo"
        config = folder / "config.toml"
        if not config.is_file():
            proc = subprocess.run([sys.executable, "-m", "lora_studio.cli", "demo", str(folder)], capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                return self._not_loaded(f"✗ Could not write the demo: {proc.stderr.strip()[-800:]}")
        cfg = load_config(config)
        return _fill(cfg.as_dict(), partial=False) + [
            "", f"Demo loaded from {folder}: a tiny offline model and 8 images. Press **Start training** (it trains in "
            "under a minute on a CPU)."]

    def new_config(self, *form):
        """Every field back to its default and the saved form cleared; the form as it was is kept for Undo."""
        clear_form(self.state_dir)
        return _show(dict(DEFAULTS)) + ["", "**New config:** every setting is back to its default. **Undo new "
                                        "config** brings back what the form held.", form_dict(form),
                                        gr.update(visible=True)]

    def undo_new_config(self, previous: dict | None):
        if not previous:
            return self._not_loaded("Nothing to undo.") + [{}, gr.update(visible=False)]
        return _show(previous) + ["", "The settings the form held before **New config** are back.", {},
                                  gr.update(visible=False)]

    def build(self) -> dict:
        with gr.Row():
            preset = gr.Dropdown(choices=self.preset_choices(), value=None, label="Presets", elem_id="preset",
                                 info="Sets only the settings it names; your model and folders stay.")
            demo_btn = gr.Button("Try the demo", elem_id="try-demo")
            new_btn = gr.Button("New config", elem_id="config-new")
            undo_btn = gr.Button("Undo new config", visible=False, elem_id="config-undo-new")
        with gr.Row():
            path = gr.Textbox(label="Config file", placeholder="/path/to/config.toml (or a Kohya_ss .json)",
                              elem_id="config-path", scale=3)
            browse_button(path)
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
                    save_preset_btn=save_preset_btn, status=status, new_btn=new_btn, undo_btn=undo_btn,
                    previous=gr.State({}))

    def wire(self, c: dict, inputs: list, check_md) -> list:
        """The sub-tab's events, once the form's fields (``inputs``, in ``NAMES`` order) and the check report
        (``check_md``, emptied when the form is refilled) exist. Returns the events that refill the form."""
        outputs = inputs
        status = c["status"]
        refilled = inputs + [check_md, status]
        events = [c["load_btn"].click(self.load_path, [c["path"]] + inputs, refilled),
                  c["upload"].upload(self.load_upload, [c["upload"]] + inputs, refilled + [c["upload"]])]
        c["save_btn"].click(self.save_path, [c["path"]] + inputs, outputs + [status])
        c["download_btn"].click(self.download, inputs, [c["download"], status])
        events.append(c["preset"].input(self.apply_preset, [c["preset"]] + inputs, refilled))
        c["save_preset_btn"].click(self.save_preset, [c["preset_name"]] + inputs, [c["preset"], status])
        undo = [c["previous"], c["undo_btn"]]
        return events + [c["demo_btn"].click(self.try_demo, [], refilled),
                          c["new_btn"].click(self.new_config, inputs, refilled + undo),
                          c["undo_btn"].click(self.undo_new_config, [c["previous"]], refilled + undo)]


COMMAND_LABEL = "Training command and config"
COMMAND_STALE = ("Training command and config: OUT OF DATE, the form changed since it was printed (press Print "
                 "training command again)")


class LoraTab:
    def __init__(self, state_dir: Path, manager: RunManager, roots: list[Path] | None):
        self.manager = manager
        self.roots = roots
        self.state_dir = state_dir
        self.config = ConfigurationTab(state_dir, roots)
        self.prompts = SamplePrompts(state_dir, roots)

    # ---------------------------------------------------------- the form saved as it is edited
    def restore_form(self):
        """On opening the page: the form as it was last edited (``<state>/form.toml``); then the form is saved."""
        saved = load_form(self.state_dir)
        if saved is None:
            return [gr.skip()] * (len(NAMES) + 1) + [True]
        return _show(saved, clear_marks=False) + [
            "Your settings from last time are back (the form is saved as you edit it). **New config** starts from "
            "the defaults.", True]

    def form_changed(self, restored: bool, printed: str, *form):
        """Any field changed: the form is saved (once the page has restored it), and a printed command is marked
        out of date while the form differs from the one it was printed from."""
        if restored:
            try:
                save_form(self.state_dir, form_dict(form))
            except OSError:
                pass  # a read-only state folder: the form works, it is just not remembered
        if not printed:
            return gr.skip()
        return gr.update(label=COMMAND_LABEL if fingerprint(form) == printed else COMMAND_STALE)

    # ---------------------------------------------------------- the model's family
    def model_chosen(self, fill: bool, *form):
        """The model field (or v2, allow_pickle, vae) changed: the family's status line, the fields it shows (the
        others hidden, their values kept) and, with ``fill``, the empty part fields a Flux / Chroma transformer
        needs filled with the files found beside it. Returns the status, then an update for each of
        ``FAMILY_FIELDS``, ``family_buttons`` and ``family_sections`` (the outputs ``_wire_family`` gives it)."""
        values = _values(form)
        model = values["pretrained_model_name_or_path"]
        reading = read_model(model, bool(values["v2"]), bool(values["allow_pickle"]),
                             own_vae=bool(str(values["vae"] or "").strip()), roots=self.roots)
        filled = fill_parts(model, reading.family, values, self.roots) if fill else PartsFilled()
        values.update(filled.values)
        shown = {s.name: reading.shows(s) for s in SETTINGS}
        fields = [gr.update(visible=shown[name], **({"value": filled.values[name]} if name in filled.values else {}))
                  for name in FAMILY_FIELDS]
        buttons = [gr.update(visible=shown[name]) for name in self.family_buttons]
        sections = [gr.update(visible=any(shown[name] for name in ADVANCED_SECTIONS[title]))
                    for title in self.family_sections]
        return [status_markdown(reading, filled, values)] + fields + buttons + sections

    def _wire_family(self, fields: dict, status, buttons: dict, sections: dict, saving: dict) -> None:
        """The model field's family: on a new model (typed, browsed, loaded, restored) the status, the fields and
        the parts; on v2 / allow_pickle / vae (what reading the model depends on) the status and the fields."""
        self.family_buttons = [name for name in FAMILY_FIELDS if name in buttons]
        self.family_sections = [title for title, names in ADVANCED_SECTIONS.items()
                                if title in sections and all(BY_NAME[n].families for n in names)]
        inputs = [fields[n] for n in NAMES]
        outputs = ([status] + [fields[n] for n in FAMILY_FIELDS] + [buttons[n] for n in self.family_buttons]
                   + [sections[t] for t in self.family_sections])
        common = dict(inputs=inputs, outputs=outputs, trigger_mode="always_last", show_progress="hidden")
        fields["pretrained_model_name_or_path"].change(partial(self.model_chosen, True), **common).then(**saving)
        gr.on([fields[n].change for n in ("v2", "allow_pickle", "vae")], partial(self.model_chosen, False), **common)

    # ---------------------------------------------------------- dataset preparation
    def prepare(self, instance, klass, images, repeats, reg_images, reg_repeats, destination):
        for path in (images, reg_images, destination):
            outside = outside_roots(path, self.roots) if (path or "").strip() else None
            if outside:
                return [gr.skip()] * len(NAMES) + [f"✗ {outside}"]
        try:
            result = prepare_folders(destination, instance, klass, images, repeats or 0, reg_images or None,
                                     reg_repeats or 1)
        except UserError as exc:
            return [gr.skip()] * len(NAMES) + [f"✗ {exc}"]
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
            return _field_updates({}) + [f"✗ {exc}"]
        return _field_updates({}) + [dataset_markdown(report)]

    def print_command(self, *args):
        cfg, problems = _checked_config(args, self.roots)
        if problems:
            return gr.update(value="", visible=True, label=COMMAND_LABEL), "✗ Fix the marked settings first.", ""
        config_path = output_paths(cfg)["config"] if cfg.output_dir else Path("<output_dir>/config.toml")
        text = (f"# Start training runs:\n{display(engine_argv(cfg, config_path, self.manager.allowed_dirs))}\n\n"
                f"# with this config, written to {config_path}:\n{dumps_config(cfg)}")
        return (gr.update(value=text, visible=True, label=COMMAND_LABEL), "The command and config are shown below.",
                fingerprint(args))

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
        buttons: dict[str, Any] = {}  # the path fields' Browse buttons (they hide with their field)
        make = partial(_make, buttons=buttons)
        family_status = []
        under_model = {"pretrained_model_name_or_path": lambda: family_status.append(
            gr.Markdown(elem_id="model-family"))}  # "Model: Flux.1 dev (transformer; needs ae, clip_l, t5xxl)"
        with gr.Tabs(elem_id="lora-tabs"):
            with gr.Tab("Configuration", id="configuration"):
                config = self.config.build()
            for tab in ("model", "folders"):
                with gr.Tab(TAB_LABELS[tab], id=tab):
                    _place_fields(specs, tab, fields, make, under_model)
                    place_help([s for s in specs if s.tab == tab])
            with gr.Tab("Parameters", id="parameters"):
                with gr.Tabs(elem_id="parameter-tabs"):
                    for tab in ("basic", "advanced", "samples"):
                        with gr.Tab(TAB_LABELS[tab], id=tab):
                            if tab == "advanced":
                                sections = build_advanced(specs, fields, make)
                            else:
                                _place_fields(specs, tab, fields, make)
                                if tab == "samples":  # typed prompts, beside the prompts file field
                                    prompts_box = self.prompts.build()
                                place_help([s for s in specs if s.tab == tab])
            with gr.Tab("Dataset preparation", id="dataset"):
                prep = self._preparation_tab()
        with gr.Row():
            start_btn = gr.Button("Start training", variant="primary", elem_id="start-training")
            stop_btn = gr.Button("Stop training", variant="secondary", interactive=False, elem_id="stop-training")
            check_btn = gr.Button("Check settings", elem_id="check-settings")
            dataset_btn = gr.Button("Check dataset", elem_id="check-dataset")
            print_btn = gr.Button("Print training command", elem_id="print-command")
        check_md = gr.Markdown(elem_id="check-report", elem_classes=["ls-mono"])  # its columns line up
        mini_progress = gr.HTML(elem_id="mini-progress")
        command_box = gr.Textbox(label=COMMAND_LABEL, lines=12, max_lines=40, interactive=False,
                                 visible=False, buttons=["copy"], elem_id="command-box")
        restored, printed = gr.State(False), gr.State("")  # the saved form is back; the printed form's fingerprint
        lora_type = fields.pop(LORA_TYPE)  # not a setting: it sets network_module and network_args
        wire_lora_type(lora_type, fields)
        inputs = [fields[n] for n in NAMES]
        outputs = inputs
        refills = self.config.wire(config, inputs, check_md)
        self.prompts.wire(prompts_box, fields["sample_prompts"], fields["output_name"])
        refills.append(prep["button"].click(self.prepare, prep["inputs"], outputs + [prep["report"]]))
        prep["summary_btn"].click(self.summary, inputs, outputs + [prep["summary"]])
        check_btn.click(self.check, inputs, outputs + [check_md])
        dataset_btn.click(self.check_dataset, inputs, outputs + [check_md])
        print_btn.click(self.print_command, inputs, [command_box, check_md, printed])
        # The form is saved after each edit (a field left, a box ticked, a choice made) and each refill; not on
        # every field's change: a refill changes them all at once, which would send one event per field.
        saving = dict(fn=self.form_changed, inputs=[restored, printed] + inputs, outputs=[command_box],
                      show_progress="hidden", concurrency_limit=1, concurrency_id="form-save")
        edits = [f.blur if isinstance(f, (gr.Textbox, gr.Number)) else f.input for f in inputs]
        gr.on(edits + [fields["network_module"].change, fields["network_args"].change], trigger_mode="always_last",
              **saving)  # (the LoRA type sets those two)
        for event in refills:
            event.then(**saving)
        self._wire_family(fields, family_status[0], buttons, sections, saving)
        return dict(fields=fields, inputs=inputs, start=start_btn, stop=stop_btn, check_md=check_md,
                    mini_progress=mini_progress, restore=inputs + [config["status"], restored])

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
            browse_button(images, "folder")
            repeats = gr.Number(label="Repeats", value=10, precision=0, elem_id="prep-repeats")
        with gr.Row():
            reg_images = gr.Textbox(label="Regularisation images (optional)", elem_id="prep-reg-images", scale=3)
            browse_button(reg_images, "folder")
            reg_repeats = gr.Number(label="Regularisation repeats", value=1, precision=0, elem_id="prep-reg-repeats")
        with gr.Row(equal_height=True):
            destination = gr.Textbox(label="Destination training folder", placeholder="e.g. /home/me/lora/emi",
                                     elem_id="prep-destination", scale=3)
            browse_button(destination, "folder")
        with gr.Row():
            button = gr.Button("Prepare training folders", variant="primary", elem_id="prep-run")
            summary_btn = gr.Button("Dataset summary", elem_id="prep-summary")
        report = gr.Markdown(elem_id="prep-report")
        summary = gr.Markdown(elem_id="dataset-summary")
        return dict(inputs=[instance, klass, images, repeats, reg_images, reg_repeats, destination], button=button,
                    report=report, summary_btn=summary_btn, summary=summary)
