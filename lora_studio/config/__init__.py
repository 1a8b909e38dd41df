"""Training configuration: one schema (``schema.SETTINGS``), loaded from TOML and the command line."""

from __future__ import annotations

import difflib
import logging
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ..errors import ConfigError
from .schema import (BY_NAME, DEPRECATED, IGNORED_GUI_KEYS, NETWORK_ARGS_ONLY, SECRET_SETTINGS, SETTINGS, UNSUPPORTED,
                     Setting)
from .values import parse_key_values, parse_value

__all__ = ["Config", "load_config", "SETTINGS", "Setting", "parse_key_values", "save_config", "dumps_config",
           "build_config", "read_toml", "flatten_sections", "load_kohya_config"]

log = logging.getLogger(__name__)


class Config:
    """Validated settings, read as attributes (``cfg.network_dim``). Every setting in the schema is present."""

    def __init__(self, values: dict[str, Any], source: str | None = None):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use Config.replace()")

    def replace(self, **changes: Any) -> "Config":
        return build_config({**self.explicit(), **changes}, source=self.source)

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def explicit(self) -> dict[str, Any]:
        """The settings that differ from their defaults (what a saved config needs)."""
        return {k: v for k, v in self._values.items() if v != BY_NAME[k].default}


def _closest(name: str) -> str:
    match = difflib.get_close_matches(name, list(BY_NAME) + list(UNSUPPORTED), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts flattens TOML sections: section names are ignored, their keys join the top level."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in BY_NAME:
            for inner_key, inner_value in flatten_sections(value).items():
                flat[inner_key] = inner_value
        else:
            flat[key] = value
    return flat


def build_config(raw: dict[str, Any], source: str | None = None) -> Config:
    """Check every key and value of ``raw`` against the schema; raise one ConfigError listing every problem."""
    where = f" in {source}" if source else ""
    problems: list[str] = []
    values = {s.name: s.default for s in SETTINGS}
    for key, value in raw.items():
        if key in BY_NAME:
            try:
                values[key] = parse_value(BY_NAME[key], value)
            except ConfigError as exc:
                problems.append(str(exc))
        elif key in NETWORK_ARGS_ONLY and value not in (None, 0, "", False):
            problems.append(f"setting '{key}'{where}: sd-scripts reads LoRA+ ratios from network_args only (as a "
                            f"top-level key it does nothing there): write \"{key}={value}\" in network_args")
        elif key in UNSUPPORTED:
            default = UNSUPPORTED[key]
            if value in (default, None, "", [], False) or value == default:
                log.info("setting '%s'%s is not used by LoRA Studio; its value changes nothing here", key, where)
            else:
                problems.append(f"setting '{key}' is an sd-scripts option that LoRA Studio does not support yet "
                                f"(value {value!r}); remove it or set it to {default!r}")
        elif key in DEPRECATED:
            target, replacement = DEPRECATED[key]
            if value and target not in raw:
                values[target] = replacement
                log.warning("setting '%s'%s is deprecated in sd-scripts: %s = %s is used instead, as sd-scripts does",
                            key, where, target, replacement)
            elif value:
                log.warning("setting '%s'%s is deprecated and %s is set: it is ignored", key, where, target)
        elif key in IGNORED_GUI_KEYS:
            log.info("setting '%s'%s is written by the Kohya_ss GUI for itself; sd-scripts does not read it either; "
                     "ignored", key, where)
        else:
            problems.append(f"unknown setting '{key}'.{_closest(key)}")
    if problems:
        raise ConfigError(f"problems with the training config{where}:\n  - " + "\n  - ".join(problems))
    return Config(values, source=source)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the config file (.toml) in it")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """TOML file (sections flattened) with ``overrides`` on top (command line > file > defaults)."""
    data = read_toml(path) if path else {}
    if isinstance(data.get("datasets"), (list, dict)):
        raise ConfigError(f"{path} is a dataset config (sd-scripts' [[datasets]] / [[datasets.subsets]] TOML), not a "
                          f"training config: set dataset_config = \"{path}\" in the training config (or pass "
                          f"--dataset_config {path}) and give the training config to --config")
    raw = flatten_sections(data)
    raw.update(overrides or {})
    return build_config(raw, source=str(path) if path else None)


def load_kohya_config(path: str | Path, overrides: dict[str, Any] | None = None, confinement=None):
    """A Kohya_ss GUI JSON imported as the GUI imports it, ``overrides`` on top: ``(Config, KohyaImport)``. Its sample
    prompts (text in the JSON) go to the run's output folder (beside the JSON when it names none), which must lie in
    ``confinement`` (a ``Confinement``) before it is written."""
    from .kohya_import import read_kohya_json, write_sample_prompts

    overrides = overrides or {}
    result = read_kohya_json(path)
    output_dir = overrides.get("output_dir") or result.settings.get("output_dir")
    prompts_dir = Path(output_dir).expanduser() if output_dir else Path(path).parent
    if confinement is not None:
        confinement.check(prompts_dir, "output_dir")
    write_sample_prompts(result, path, prompts_dir)
    cfg = build_config({**result.settings, **overrides}, source=str(path))
    return cfg, result


def dumps_config(cfg: Config | dict[str, Any], only_explicit: bool = False) -> str:
    """Settings as TOML text, grouped by schema group. ``0``/``false`` are kept; unset (None) values are left out."""
    values = cfg.explicit() if (only_explicit and isinstance(cfg, Config)) else (
        cfg.as_dict() if isinstance(cfg, Config) else dict(cfg))
    grouped: dict[str, dict[str, Any]] = {}
    for setting in SETTINGS:
        if setting.name in values and values[setting.name] is not None and setting.name not in SECRET_SETTINGS:
            grouped.setdefault(setting.group, {})[setting.name] = values[setting.name]
    return tomli_w.dumps(grouped)


def secret_free(cfg: Config) -> dict[str, Any]:
    """Every setting but the secrets (an API key), for records of the run that others may see."""
    return {k: v for k, v in cfg.as_dict().items() if k not in SECRET_SETTINGS}


def save_config(cfg: Config | dict[str, Any], path: str | Path, only_explicit: bool = False) -> Path:
    """Write ``dumps_config(cfg)`` to ``path`` atomically."""
    from ..io_utils import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, dumps_config(cfg, only_explicit).encode("utf-8"))
    return path
