"""``network_args`` as sd-scripts users write them (``["conv_dim=4", "conv_alpha=1"]``), checked, never ignored."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.values import parse_key_values
from ..errors import ConfigError

SUPPORTED = ("conv_dim", "conv_alpha")


@dataclass(frozen=True)
class NetworkArgs:
    conv_dim: int | None = None  # LoCon: rank of the 3x3 convs of ResNet, down- and upsample blocks (None = off)
    conv_alpha: float = 1.0


def parse_network_args(items: list[str] | None) -> NetworkArgs:
    values = parse_key_values(items, "network_args")
    unknown = sorted(set(values) - set(SUPPORTED))
    if unknown:
        raise ConfigError(f"setting 'network_args': {', '.join(unknown)} not supported (LoRA Studio reads "
                          f"{', '.join(SUPPORTED)})")
    conv_dim = values.get("conv_dim")
    if conv_dim is not None:
        if isinstance(conv_dim, bool) or not isinstance(conv_dim, int) or conv_dim < 0:
            raise ConfigError(f"setting 'network_args': conv_dim must be a whole number of 1 or more, got {conv_dim!r}")
        conv_dim = conv_dim or None  # conv_dim=0 means no LoCon, as in sd-scripts
    conv_alpha = values.get("conv_alpha", 1.0)
    if isinstance(conv_alpha, bool) or not isinstance(conv_alpha, (int, float)) or conv_alpha < 0:
        raise ConfigError(f"setting 'network_args': conv_alpha must be a number of 0 or more, got {conv_alpha!r}")
    if "conv_alpha" in values and conv_dim is None:
        raise ConfigError("setting 'network_args': conv_alpha is set but conv_dim is not; add conv_dim=N for LoCon")
    return NetworkArgs(conv_dim, float(conv_alpha))
