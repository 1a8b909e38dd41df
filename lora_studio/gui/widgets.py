"""Schema setting -> GUI widget: which component, its label, default, choices, range and help.

The mapping is plain data (``WidgetSpec``) so it can be tested without a browser; ``lora_tab`` turns specs into Gradio
components. Values cross the boundary in two functions: ``to_widget`` (setting value -> what the widget shows) and
``from_widget`` (what the widget holds -> raw setting value, parsed by the schema like any TOML value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import schema as S

# Where each setting appears: the LoRA tab's sub-tabs and the Parameters sub-tabs.
TABS = ("model", "folders", "basic", "advanced", "samples")
TAB_LABELS = {"model": "Model", "folders": "Folders", "basic": "Basic", "advanced": "Advanced", "samples": "Samples"}


_NUMERIC = (S.INT, S.FLOAT, S.INT_OR_RATIO)


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
    return {"model": "model", "folders": "folders"}.get(setting.group, "basic")


def elem_id(name: str) -> str:
    return f"setting-{name}"


def _fmt(number: float) -> str:
    return f"{number:g}" if number < 1e6 else f"{number:.0e}".replace("+0", "").replace("+", "")


def range_hint(setting: S.Setting) -> str:
    """Short text under a numeric field: its range and default (the full help is on hover)."""
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


def widget_spec(setting: S.Setting) -> WidgetSpec:
    common = {"label": setting.label, "elem_id": elem_id(setting.name), "info": range_hint(setting) or None}
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
