"""The LoRA tab's form as state: what a loaded config, a preset or an imported Kohya_ss JSON changes in the form (and
what it leaves alone), and the form saved as it is edited (``<state>/form.toml``) and restored when the page opens.

Values here are widget values (what the fields hold, ``widgets.to_widget``), by setting name: the saved form brings
back exactly what was typed, even a value Check settings would refuse.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from ..config import read_toml
from ..config.schema import BY_NAME, PATH, SECRET_SETTINGS, SETTINGS
from ..errors import ConfigError
from ..io_utils import atomic_write_bytes
from .presets import PERSONAL
from .widgets import to_widget

FORM_FILE = "form.toml"
# The user's own: model, folders, names, keys. A file never empties them, and a path it names that is not on this
# computer (a Kohya_ss JSON from another machine: C:/...) never replaces a filled one.
KEEP_WHEN_EMPTY = PERSONAL | SECRET_SETTINGS | {s.name for s in SETTINGS if s.kind == PATH}
_MADE_BY_THE_RUN = {"output_dir", "logging_dir"}  # folders a run creates: their parent folder is enough
_HEADER = "# The LoRA tab's form as last edited, restored when the page opens (keys and tokens are never written).\n"
DEFAULTS = {s.name: to_widget(s, s.default) for s in SETTINGS}


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "") or (
        isinstance(value, float) and math.isnan(value))


def same(a: Any, b: Any) -> bool:
    """Two widget values that mean the same (4 and 4.0, None and "")."""
    if _empty(a) or _empty(b):
        return _empty(a) and _empty(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b) and type(a) is type(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip() == str(b).strip()


def on_this_computer(name: str, value: Any) -> bool:
    text = str(value).strip()
    if name == "resume" and text.lower() == "latest":
        return True
    path = Path(text).expanduser()
    return path.exists() or (name in _MADE_BY_THE_RUN and path.parent.is_dir() and str(path.parent) != ".")


def form_dict(form: Iterable[Any]) -> dict[str, Any]:
    """The form's widget values (in ``SETTINGS`` order, as the page sends them) by name; none: the defaults."""
    values = list(form)
    return dict(zip(DEFAULTS, values)) if values else dict(DEFAULTS)


def fingerprint(form: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps(list(form), default=str).encode("utf-8")).hexdigest()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = "(empty)" if _empty(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


@dataclass
class FormMerge:
    """What loading ``settings`` into the form does: ``values`` to show (widget values), the rest stays."""

    source: str  # "file", "preset"
    values: dict[str, Any] = field(default_factory=dict)
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)  # (name, before, after)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why) named by the source, left as it was
    unnamed: int = 0  # settings the source does not name
    yours: list[str] = field(default_factory=list)  # of those, the ones the user had changed from the default

    def report(self) -> str:
        """The section the GUI adds under the source's own report: what changed in the form, what stayed."""
        lines = ["---"]
        if self.changed:
            shown = [f"{BY_NAME[n].label}: {_show(a)} → {_show(b)}" for n, a, b in self.changed]
            lines.append(f"**Changed in the form** ({len(shown)}): " + " · ".join(shown))
        else:
            lines.append("**Changed in the form:** nothing (it already held these values).")
        lines.append("**Left as they were:**")
        lines += [f"- {BY_NAME[n].label}: {why}" for n, why in self.kept]
        mine = f"; yours among them: {', '.join(BY_NAME[n].label for n in self.yours[:12])}" + (
            f" and {len(self.yours) - 12} more" if len(self.yours) > 12 else "") if self.yours else ""
        lines.append(f"- {self.unnamed} setting(s) the {self.source} does not name{mine}")
        return "\n".join(lines)


def merge(form: dict[str, Any], settings: dict[str, Any], named: Iterable[str], source: str = "file") -> FormMerge:
    """Load ``settings`` (setting values) into ``form`` (widget values): only the settings ``named`` change (those
    named without a value in ``settings`` go back to their default). Of the user's own (``KEEP_WHEN_EMPTY``), an empty value never
    empties a field, a path not on this computer (a Kohya_ss JSON's C:/... from another machine) is not taken, and
    the output name stays with the output folder when the file's folder is not used."""
    named = set(named)
    result = FormMerge(source)
    taken_dir = False
    for setting in SETTINGS:
        name = setting.name
        mine = form.get(name, DEFAULTS[name])
        if name not in named:
            result.unnamed += 1
            if not same(mine, DEFAULTS[name]) and name not in SECRET_SETTINGS:
                result.yours.append(name)
            continue
        value = settings.get(name, setting.default)
        if name in KEEP_WHEN_EMPTY and _empty(value):
            if not _empty(mine):
                result.kept.append((name, f"empty in the {source}"))
            continue
        if setting.kind == PATH and not on_this_computer(name, value) and not (
                name == "resume" and settings.get("resume_from_huggingface")):
            result.kept.append((name, f"the {source}'s `{value}` is not on this computer; "
                                      + ("yours stays" if not _empty(mine) else "set it here")))
            continue
        taken_dir = taken_dir or name == "output_dir"
        result.values[name] = to_widget(setting, value)
    name = "output_name"
    if name in result.values and "output_dir" in named and not taken_dir and not _empty(form.get(name)):
        result.kept.append((name, f"stays with your output folder (the {source} has "
                                  f"`{result.values.pop(name)}`)"))
    for name, after in result.values.items():
        before = form.get(name, DEFAULTS[name])
        if not same(before, after):
            result.changed.append((name, before, after))
    return result


def named_in_toml(path: str | Path) -> set[str]:
    """The settings a TOML config names (its sections flattened, as sd-scripts reads them)."""
    from ..config import flatten_sections

    return set(flatten_sections(read_toml(path))) & set(BY_NAME)


# ---------------------------------------------------------------- the form saved as it is edited
def saved_values(form: dict[str, Any]) -> dict[str, Any]:
    """What ``form.toml`` holds: the fields that differ from their defaults, never a key or token."""
    out = {}
    for name, value in form.items():
        if name in SECRET_SETTINGS or name not in DEFAULTS or _empty(value) and _empty(DEFAULTS[name]):
            continue
        if same(value, DEFAULTS[name]):
            continue
        out[name] = "" if _empty(value) else value
    return out


def save_form(state_dir: Path, form: dict[str, Any]) -> bool:
    """Write ``<state_dir>/form.toml`` atomically (removed when the form holds only defaults); False when it already
    held this form."""
    path = Path(state_dir) / FORM_FILE
    values = saved_values(form)
    if not values:
        if path.exists():
            path.unlink()
            return True
        return False
    data = (_HEADER + tomli_w.dumps({"form": values})).encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write_bytes(path, data)
    return True


def load_form(state_dir: Path) -> dict[str, Any] | None:
    """The saved form (every field: the saved ones, the rest their defaults), or None when there is none (or it
    cannot be read: a broken file is not worth an error on opening the page)."""
    path = Path(state_dir) / FORM_FILE
    if not path.is_file():
        return None
    try:
        saved = read_toml(path).get("form", {})
    except (ConfigError, OSError, ValueError):
        return None
    form = dict(DEFAULTS)
    for name, value in saved.items() if isinstance(saved, dict) else ():
        if name in DEFAULTS and name not in SECRET_SETTINGS and isinstance(value, (str, int, float, bool)) and (
                isinstance(value, bool) == isinstance(DEFAULTS[name], bool)):
            form[name] = None if value == "" and not isinstance(DEFAULTS[name], str) else value
    return form


def clear_form(state_dir: Path) -> None:
    (Path(state_dir) / FORM_FILE).unlink(missing_ok=True)
