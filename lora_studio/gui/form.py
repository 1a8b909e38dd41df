"""The GUI form as settings: widget values -> raw settings -> a checked Config, with problems per field.

``check_form`` is what "Check settings" and "Start training" run: the same schema parsing, rules and dataset scan the
engine uses, so the step count shown is the one the run will take.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, build_config
from ..config.rules import setting_problems
from ..config.schema import BY_NAME, SETTINGS
from ..config.values import parse_value
from ..confinement import Confinement
from ..data.dataset import TrainingData
from ..data.sources import datasets_from_config
from ..errors import ConfigError, UserError
from ..models.registry import identify
from ..training.outputs import output_paths
from ..training.estimate import Estimate, detect_gpu, resource_estimate
from ..training.plan import StepPlan
from ..training.resolve import resolve
from ..training.run_paths import check_run_paths
from .widgets import from_widget, to_widget

NAMES = [s.name for s in SETTINGS]
_PREFIX = re.compile(r"^setting '[^']+' ")
_PATHS_THAT_MUST_EXIST = ("pretrained_model_name_or_path", "vae", "network_weights", "sample_prompts",
                          "dataset_config")


@dataclass
class FormCheck:
    raw: dict[str, Any]
    cfg: Config | None = None  # set only when nothing stops a run
    parsed: Config | None = None  # the values that parsed (what Save writes, even before the form is complete)
    value_problems: dict[str, str] = field(default_factory=dict)  # values the schema refuses (type, range)
    problems: dict[str, str] = field(default_factory=dict)  # everything; name -> message shown next to its field
    warnings: list[str] = field(default_factory=list)
    plan: StepPlan | None = None
    data: TrainingData | None = None
    estimate: Estimate | None = None

    @property
    def ok(self) -> bool:
        return self.cfg is not None and not self.problems

    def report(self) -> str:
        """Markdown for the line beside the Start button."""
        if self.problems:
            lines = [f"**Fix {len(self.problems)} setting(s) before starting:**"]
            lines += [f"- {BY_NAME[name].label}: {message}" for name, message in self.problems.items()]
        else:
            lines = [f"**Ready:** {self.plan.describe()}" if self.plan else "**Ready.**"]
            if self.estimate is not None:
                lines.append(f"- {self.estimate.describe()[0].upper()}{self.estimate.describe()[1:]}")
        lines += [f"- ⚠ {w}" for w in self.warnings]
        return "\n".join(lines)


def values_to_raw(values: dict[str, Any]) -> dict[str, Any]:
    """Widget values by setting name -> raw setting values (empty fields left out, so they take their default)."""
    raw = {}
    for name, value in values.items():
        converted = from_widget(BY_NAME[name], value)
        if converted is not None:
            raw[name] = converted
    return raw


def _field_message(exc: Exception) -> str:
    return _PREFIX.sub("", str(exc))


def _dataset_field(cfg: Config, message: str) -> str:
    if cfg.dataset_config:
        return "dataset_config"
    return "reg_data_dir" if message.startswith("reg_data_dir") else "train_data_dir"


def outside_roots(path: str | Path, roots: list[Path] | None) -> str | None:
    """None if ``path`` (resolved, links followed) lies inside one of ``roots``; else the message to show (the
    engine's own rule, ``Confinement``)."""
    return Confinement.of(roots).problem(path, "start the GUI with --allow-dir <folder> to add one")


def check_form(values: dict[str, Any], scan_dataset: bool = True, roots: list[Path] | None = None) -> FormCheck:
    """``roots``: when given, every path must resolve inside one of these folders (the GUI's --allow-dir): the
    form's paths, and every path the run would read or write (the engine's own check, run before the dataset scan)."""
    confinement = Confinement.of(roots)
    check = FormCheck(raw=values_to_raw(values))
    for name, value in check.raw.items():
        try:
            parse_value(BY_NAME[name], value)
        except ConfigError as exc:
            check.problems[name] = _field_message(exc)
    for name, value in list(check.raw.items()):
        setting = BY_NAME[name]
        hub_resume = name == "resume" and str(check.raw.get("resume_from_huggingface", "")).lower() in ("true", "1")
        if setting.kind == "path" and name not in check.problems and not (name == "resume" and (
                str(value).lower() == "latest" or hub_resume)):  # "latest" and a Hub state are not local paths
            message = outside_roots(value, roots)
            if message:
                check.problems[name] = message
    check.value_problems = dict(check.problems)
    # Rules between settings are checked on the values that parsed, so every problem shows at once.
    cfg = check.parsed = build_config({k: v for k, v in check.raw.items() if k not in check.problems})
    for name, message in setting_problems(cfg, confinement).items():
        check.problems.setdefault(name, message)
    for name in _PATHS_THAT_MUST_EXIST:
        path = getattr(cfg, name)
        if path and not Path(path).expanduser().exists():
            check.problems[name] = f"not found: {path}"
    model = cfg.pretrained_model_name_or_path
    family = None
    if model and "pretrained_model_name_or_path" not in check.problems:
        try:
            # the file read as far as it can be without torch: its type, family, completeness
            family = identify(model, cfg.v2, cfg.allow_pickle, own_vae=bool(cfg.vae))
        except UserError as exc:
            check.problems["pretrained_model_name_or_path"] = str(exc)
    if family is not None:
        try:  # its separate files and requirements, also when the dataset cannot be read yet
            family.check_settings(cfg)
        except UserError as exc:
            check.problems[_setting_named(str(exc), "pretrained_model_name_or_path")] = str(exc)
    if cfg.resume and cfg.resume.strip().lower() != "latest" and not cfg.resume_from_huggingface and not (
            Path(cfg.resume).expanduser() / "state.json").is_file():  # (a state on the Hub is checked when read)
        check.problems["resume"] = f"not a saved state folder (no state.json): {cfg.resume}"
    dataset_fields = {"train_data_dir", "reg_data_dir", "dataset_config", "train_batch_size", "resolution"}
    if confinement.confined and scan_dataset and not check.problems:
        try:
            check_run_paths(cfg, confinement)
        except UserError as exc:
            named = str(exc).split(":")[0]
            check.problems[named if named in BY_NAME else _dataset_field(cfg, str(exc))] = str(exc)
    if scan_dataset and not dataset_fields & set(check.problems):
        try:
            check.data = TrainingData(datasets_from_config(cfg), cfg.prior_loss_weight, seed=0)
        except (UserError, ConfigError) as exc:
            check.problems[_dataset_field(cfg, str(exc))] = _field_message(exc)
    if check.data is not None:
        try:  # what the engine will change and warn about, as it will (the same step)
            resolved = resolve(cfg, check.data, cfg.num_processes, detect_gpu() is not None, family)
            check.plan = resolved.plan
            check.warnings.extend(f"{name}: {message}" for name, message in resolved.notes + resolved.warnings)
        except (UserError, ConfigError) as exc:  # dim_from_weights: a network_weights file without LoRA ranks
            check.problems.setdefault(_setting_named(str(exc), "dim_from_weights"), _field_message(exc))
    if not check.problems:
        check.cfg = cfg
        if check.plan is not None and check.data is not None:
            check.estimate = resource_estimate(cfg, check.data, check.plan.steps_per_epoch, detect_gpu())
            if check.estimate is not None:
                check.warnings.extend(check.estimate.warnings)
    if cfg.output_dir and cfg.output_name and not check.problems:
        final = output_paths(cfg)["final"]
        if final.exists():
            check.warnings.append(f"{final} exists and will be replaced when this run saves")
    return check


def form_values(cfg_values: dict[str, Any]) -> dict[str, Any]:
    """Setting values (a loaded config or preset) -> widget values by name."""
    return {name: to_widget(BY_NAME[name], value) for name, value in cfg_values.items() if name in BY_NAME}


def _setting_named(message: str, fallback: str) -> str:
    """The setting a message starts with ("t5xxl: not found ..."), or ``fallback``."""
    first = message.split(":")[0].split(" ")[0]
    return first if first in BY_NAME else fallback
