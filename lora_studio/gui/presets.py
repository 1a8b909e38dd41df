"""Presets: TOML files of settings with a ``[preset]`` table (title, description), shipped in ``presets/`` and
saved by the user in their own presets folder. Choosing one changes only the settings it names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ..config import build_config, flatten_sections, read_toml
from ..config.schema import BY_NAME, SECRET_SETTINGS, SETTINGS
from ..errors import ConfigError, UserError
from ..io_utils import atomic_write_bytes

# The shipped presets live in the repository's presets/ folder (beside the package).
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "presets"
# Machine-specific settings a preset never carries (as Kohya_ss strips them before release).
PERSONAL = {"pretrained_model_name_or_path", "vae", "train_data_dir", "reg_data_dir", "dataset_config", "output_dir",
            "output_name", "logging_dir", "network_weights", "sample_prompts", "training_comment"}
USER_PREFIX = "user: "


@dataclass(frozen=True)
class Preset:
    key: str  # what the dropdown shows
    title: str
    description: str
    path: Path
    settings: dict[str, Any]


def read_preset(path: Path, key: str | None = None) -> Preset:
    data = read_toml(path)
    meta = data.pop("preset", {})
    settings = flatten_sections(data)
    personal = sorted(set(settings) & PERSONAL)
    if personal:
        raise ConfigError(f"preset {path} sets machine-specific setting(s) {', '.join(personal)}; presets must not")
    cfg = build_config(settings, source=str(path))  # every key and value checked against the schema
    values = {name: getattr(cfg, name) for name in settings}
    return Preset(key or path.stem, str(meta.get("title", path.stem)), str(meta.get("description", "")), path, values)


def list_presets(user_dir: Path | None, shipped_dir: Path = SHIPPED_DIR) -> dict[str, Preset]:
    """Shipped presets by file stem, then user presets as "user: <stem>". Broken files are listed by their error."""
    found: dict[str, Preset] = {}
    sources = [(shipped_dir, "")] + ([(user_dir, USER_PREFIX)] if user_dir else [])
    for folder, prefix in sources:
        if not folder or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            key = prefix + path.stem
            try:
                found[key] = read_preset(path, key)
            except (ConfigError, UserError) as exc:
                found[key] = Preset(key, key, f"This preset cannot be used: {exc}", path, {})
    return found


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^\w\- .]+", "_", name.strip()).strip(" .")
    if not stem:
        raise UserError("give the preset a name (letters, digits, spaces, - and _)")
    return stem


def save_user_preset(user_dir: Path, name: str, values: dict[str, Any], description: str = "") -> Path:
    """Write the non-personal settings that differ from their defaults as ``<user_dir>/<name>.toml`` (never a key
    or token)."""
    stem = _safe_stem(name)
    settings = {s.name: values[s.name] for s in SETTINGS
                if s.name in values and s.name not in PERSONAL | SECRET_SETTINGS and values[s.name] is not None
                and values[s.name] != s.default}
    data: dict[str, Any] = {"preset": {"title": name.strip(), "description": description or "Saved from the GUI."}}
    for s in SETTINGS:
        if s.name in settings:
            data.setdefault(s.group, {})[s.name] = settings[s.name]
    path = user_dir / f"{stem}.toml"
    user_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tomli_w.dumps(data).encode("utf-8"))
    return path


def describe(preset: Preset) -> str:
    names = ", ".join(f"{BY_NAME[k].label} = {v}" for k, v in preset.settings.items())
    return f"**{preset.title}**: {preset.description}\n\nSets: {names or 'nothing'}"
