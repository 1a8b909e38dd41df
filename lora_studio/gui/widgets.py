"""Schema setting -> GUI widget: which component, its label, default, choices, range and help.

The mapping is plain data (``WidgetSpec``) so it can be tested without a browser; ``lora_tab`` turns specs into Gradio
components. Values cross the boundary in two functions: ``to_widget`` (setting value -> what the widget shows) and
``from_widget`` (what the widget holds -> raw setting value, parsed by the schema like any TOML value).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import schema as S
from ..config.lora_types import LORA_TYPES, describe_lora_type

# Where each setting appears: the LoRA tab's sub-tabs and the Parameters sub-tabs.
TABS = ("model", "folders", "basic", "advanced", "samples")
TAB_LABELS = {"model": "Model", "folders": "Folders", "basic": "Basic", "advanced": "Advanced", "samples": "Samples"}


_NUMERIC = (S.INT, S.FLOAT, S.INT_OR_RATIO)
# The transformers' separate model files and Flux's model type sit with the base model on the Model tab
MODEL_TAB_EXTRAS = frozenset({"ae", "clip_l", "clip_g", "t5xxl", "qwen3", "gemma2", "model_type"})


@dataclass(frozen=True)
class WidgetSpec:
    name: str
    component: str  # "checkbox" | "dropdown" | "number" | "textbox"
    tab: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    help: str = ""


def tab_of(setting: S.Setting) -> str:
    if setting.group == "samples":
        return "samples"
    if setting.advanced:
        return "advanced"
    if setting.name in MODEL_TAB_EXTRAS:
        return "model"
    return {"model": "model", "folders": "folders"}.get(setting.group, "basic")


def families_of(spec: WidgetSpec) -> tuple[str, ...] | None:
    """The model families a field is for (None: every family; also for the LoRA type, which is no setting)."""
    setting = S.BY_NAME.get(spec.name)
    return setting.families if setting is not None else None


def by_family(specs: list[WidgetSpec]) -> list[list[WidgetSpec]]:
    """``specs`` cut into runs of one ``families`` value each, order kept: a row made of one run never mixes fields
    that hide with the model's family with fields that stay (or with another family's)."""
    runs: list[list[WidgetSpec]] = []
    for spec in specs:
        if runs and families_of(runs[-1][0]) == families_of(spec):
            runs[-1].append(spec)
        else:
            runs.append([spec])
    return runs


def elem_id(name: str) -> str:
    return f"setting-{name}"


def _fmt(number: float) -> str:
    return f"{number:g}" if number < 1e6 else f"{number:.0e}".replace("+0", "").replace("+", "")


def range_hint(setting: S.Setting) -> str:
    """A numeric field's range and default, for the line under it (``field_info``)."""
    parts = []
    if setting.minimum is not None and setting.maximum is not None:
        parts.append(f"{_fmt(setting.minimum)} to {_fmt(setting.maximum)}")
    elif setting.minimum is not None:
        parts.append(f"at least {_fmt(setting.minimum)}")
    if setting.default is not None and not isinstance(setting.default, bool):
        parts.append(f"default {setting.default}")
    elif setting.default is None and not setting.required:
        parts.append("optional")
    if setting.required:
        parts.append("required")
    return " · ".join(parts)


# a sentence ends at . ! or ? before a space, but not after "e.g." and its kind
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)(?<!etc\.)(?<!vs\.)\s+")


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def field_info(setting: S.Setting) -> str | None:
    """The line under a field: the first sentence of its help, then its range and default. The full help is the
    block's tooltip and in the tab's "Full help" (on screen, for touch)."""
    sentence, hint = first_sentence(setting.help), range_hint(setting)
    return f"{sentence} ({hint})" if sentence and hint else (sentence or hint or None)


def widget_spec(setting: S.Setting) -> WidgetSpec:
    common = {"label": setting.label, "elem_id": elem_id(setting.name), "info": field_info(setting)}
    value = to_widget(setting, setting.default)
    if setting.kind == S.BOOL:
        return WidgetSpec(setting.name, "checkbox", tab_of(setting), {**common, "value": value}, setting.help)
    if setting.choices is not None or setting.suggestions is not None:
        options = list(setting.choices if setting.choices is not None else setting.suggestions)
        kwargs = {**common, "value": value, "choices": options, "allow_custom_value": setting.choices is None}
        return WidgetSpec(setting.name, "dropdown", tab_of(setting), kwargs, setting.help)
    if setting.kind in _NUMERIC and setting.default is not None:
        kwargs = {**common, "value": value, "precision": 0 if setting.kind == S.INT else None}
        return WidgetSpec(setting.name, "number", tab_of(setting), kwargs, setting.help)
    # An optional number is a text field: a number box cannot be empty (it shows 0, which would mean something).
    placeholder = {S.INT: "empty = not set", S.FLOAT: "empty = not set",
                   S.PATH: "path on this computer", S.STR_LIST: "key=value key=value",
                   S.FLOAT_OR_LIST: "one value, or one per text encoder: 1e-4, 5e-5",
                   S.RESOLUTION: "512 or width,height"}.get(setting.kind, "")
    kwargs = {**common, "value": value, "placeholder": placeholder or None}
    if setting.name in S.SECRET_SETTINGS:  # a key or token is not shown on the screen
        kwargs["type"] = "password"
    return WidgetSpec(setting.name, "textbox", tab_of(setting), kwargs, setting.help)


def widget_specs() -> list[WidgetSpec]:
    return [widget_spec(s) for s in S.SETTINGS]


# The LoRA type as the Kohya_ss GUI names it: not a setting of its own, it sets network_module and network_args
LORA_TYPE = "lora_type"
LORA_TYPE_SPEC = WidgetSpec(LORA_TYPE, "dropdown", "basic", {
    "label": "LoRA type", "elem_id": "lora-type", "choices": list(LORA_TYPES), "value": "Standard",
    "allow_custom_value": False, "info": describe_lora_type("Standard")},
    "The kind of adapter, by the Kohya_ss GUI's names: it sets Network module and Network args (Advanced > "
    "Network).")


def with_lora_type(specs: list[WidgetSpec]) -> list[WidgetSpec]:
    """The specs with the LoRA type field where Kohya_ss shows it: before the rank."""
    at = next(i for i, spec in enumerate(specs) if spec.name == "network_dim")
    return specs[:at] + [LORA_TYPE_SPEC] + specs[at:]


def advanced_sections(specs: list[WidgetSpec]) -> list[tuple[str, list[WidgetSpec]]]:
    """The Advanced tab's specs by section (``schema.ADVANCED_SECTIONS``), in their order; one no section names
    goes to "Other" (a test keeps that empty)."""
    by_name = {spec.name: spec for spec in specs if spec.tab == "advanced"}
    sections = [(title, [by_name[n] for n in names if n in by_name]) for title, names in S.ADVANCED_SECTIONS.items()]
    rest = [spec for name, spec in by_name.items() if name not in S.SECTION_OF]
    return [(title, group) for title, group in sections + [("Other", rest)] if group]


def search_text(setting: S.Setting) -> str:
    """What the Advanced filter matches: the label, the name (with and without underscores) and the help."""
    return " ".join((setting.label, setting.name, setting.name.replace("_", " "), setting.help)).lower()


def to_widget(setting: S.Setting, value: Any) -> Any:
    """A setting value as its widget shows it (None = empty)."""
    if setting.kind == S.BOOL:
        return bool(value)
    if setting.kind in _NUMERIC and setting.default is None and not setting.choices:  # a text field
        return "" if value is None else (repr(float(value)) if setting.kind == S.FLOAT else str(value))
    if value is None:
        return None if setting.kind in _NUMERIC or setting.choices else ""
    if setting.kind == S.STR_LIST:
        return " ".join(value)
    if setting.kind == S.FLOAT_OR_LIST:
        return ", ".join(repr(float(v)) for v in value) if isinstance(value, list) else repr(float(value))
    return value


def from_widget(setting: S.Setting, value: Any) -> Any:
    """A widget's value as a raw setting value (None = not set); the schema parses and checks it."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":  # an empty text setting with a default ("" caption extension) stays a value
            return "" if setting.kind == S.STR and setting.default is not None else None
    if isinstance(value, float) and setting.kind == S.INT and value.is_integer():
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
