"""Parse and check one setting's value, whatever face it came from (TOML value, CLI string, GUI widget)."""

from __future__ import annotations

import ast
from typing import Any

from ..errors import ConfigError
from . import schema as S

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _bool(setting: S.Setting, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"setting '{setting.name}' must be true or false, got {_describe(value)}")


def _int(setting: S.Setting, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"setting '{setting.name}' must be a whole number, got {_describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"setting '{setting.name}' must be a whole number, got {_describe(value)}")


def _float(setting: S.Setting, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"setting '{setting.name}' must be a number, got {_describe(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"setting '{setting.name}' must be a number, got {_describe(value)}")


def _check_range(setting: S.Setting, number: float) -> None:
    low, high = setting.minimum, setting.maximum
    if (low is not None and number < low) or (high is not None and number > high):
        span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise ConfigError(f"setting '{setting.name}' must be {span}, got {number:g}")


def _str_list(setting: S.Setting, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if isinstance(value, str):
        return split_items(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"setting '{setting.name}' must be a list of \"key=value\" strings, got {_describe(value)}")


def split_items(text: str) -> list[str]:
    """Split "a=1 betas=(0.9, 0.99) c='x y'" on spaces that are outside brackets and quotes."""
    items, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch.isspace() and depth == 0:
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        items.append("".join(current))
    return [_unquoted(item) for item in items]


def _unquoted(item: str) -> str:
    """An item written in quotes as on a command line (the Kohya_ss GUI saves '"weight_decay=0.1" "betas=0.9,0.99"')
    is the text inside them."""
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        return item[1:-1]
    return item


def _resolution(setting: S.Setting, value: Any) -> str:
    if isinstance(value, bool):
        raise ConfigError(f"setting '{setting.name}' must be \"512\" or \"width,height\", got {_describe(value)}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    parts = str(value).replace(" ", "").split(",")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or any(s < 64 or s > 8192 for s in sizes):
        raise ConfigError(f"setting '{setting.name}' must be \"512\" or \"width,height\" with sides between 64 and "
                          f"8192, got {_describe(value)}")
    return ",".join(str(s) for s in sizes)


def parse_value(setting: S.Setting, value: Any) -> Any:
    """Turn ``value`` into the setting's type, or raise ConfigError naming the setting and what it accepts."""
    if value is None or (isinstance(value, str) and value == "" and setting.kind != S.STR):
        return None
    kind = setting.kind
    if kind == S.BOOL:
        result = _bool(setting, value)
    elif kind == S.INT:
        result = _int(setting, value)
    elif kind == S.FLOAT:
        result = _float(setting, value)
    elif kind in (S.STR, S.PATH):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"setting '{setting.name}' must be text, got {_describe(value)}")
        result = str(value)
        if kind == S.PATH and any(c in result for c in "\x00\r\n"):
            raise ConfigError(f"setting '{setting.name}' must be a path on one line (it holds a line break or NUL)")
    elif kind == S.STR_LIST:
        result = _str_list(setting, value)
    elif kind == S.RESOLUTION:
        result = _resolution(setting, value)
    elif kind == S.FLOAT_OR_LIST:
        if isinstance(value, str) and ("," in value or " " in value.strip()):
            value = [v for v in value.replace(",", " ").split()]
        if isinstance(value, (list, tuple)):
            result = [_float(setting, v) for v in value]
            if len(result) == 1:
                result = result[0]
        else:
            result = _float(setting, value)
    elif kind == S.INT_OR_RATIO:
        # A fraction of the total steps when below 1, or written as a decimal up to 1.0 (a TOML float, "1.0"), as
        # sd-scripts reads it: 1.0 is all the steps, 1 is one step.
        number = _float(setting, value)
        decimal = isinstance(value, float) or (isinstance(value, str) and "." in value)
        result = number if 0 < number < 1 or (decimal and number == 1.0) else _int(setting, number)
    else:  # pragma: no cover - a schema mistake
        raise AssertionError(kind)

    for number in (result if isinstance(result, list) else [result]):
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            _check_range(setting, number)
    if setting.choices is not None and result not in setting.choices:
        allowed = ", ".join(str(c) for c in setting.choices)
        raise ConfigError(f"setting '{setting.name}' must be one of {allowed}; got {_describe(value)}")
    return result


def parse_key_values(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["weight_decay=0.01", "betas=(0.9,0.99)"]`` -> ``{"weight_decay": 0.01, "betas": (0.9, 0.99)}``.

    Values are Python literals when they parse as one, else kept as text (as sd-scripts does).
    """
    parsed: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"setting '{what}': \"{item}\" is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            parsed[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            parsed[key.strip()] = raw.strip()
    return parsed
