"""``network_args`` as sd-scripts and Kohya_ss users write them, checked, never ignored.

``networks.lora`` reads ``conv_dim``/``conv_alpha`` (LoCon) and ``rank_dropout``/``module_dropout``. ``lycoris.kohya`` also reads ``algo`` (lora, locon,
loha, lokr, ia3), ``dora_wd`` (DoRA weight decomposition) and ``factor`` (LoKr), as the LyCORIS package does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .values import parse_key_values

LYCORIS_MODULE = "lycoris.kohya"
ALGOS = ("lora", "locon", "loha", "lokr", "ia3")
_DROPOUT = ("rank_dropout", "module_dropout")
SUPPORTED = {"networks.lora": ("conv_dim", "conv_alpha") + _DROPOUT,
             "lora_studio.lora": ("conv_dim", "conv_alpha") + _DROPOUT,
             LYCORIS_MODULE: ("conv_dim", "conv_alpha", "algo", "dora_wd", "factor") + _DROPOUT}


@dataclass(frozen=True)
class NetworkArgs:
    conv_dim: int | None = None  # rank of the 3x3 convs of ResNet, down- and upsample blocks (None = not adapted)
    conv_alpha: float = 1.0
    algo: str = "lora"
    dora_wd: bool = False
    factor: int = -1
    rank_dropout: float = 0.0  # each step, drop this share of each adapter's ranks (the rest scaled up)
    module_dropout: float = 0.0  # each step, skip each adapter with this probability

    @property
    def diffusers_loads(self) -> bool:
        """diffusers reads kohya LoRA/LoCon only: not LoHa, LoKr, (IA)3, nor DoRA's dora_scale."""
        return self.algo in ("lora", "locon") and not self.dora_wd

    def describe(self) -> str:
        name = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)3"}[self.algo]
        if self.conv_dim and self.algo == "lora":
            name = "LoCon"
        return f"DoRA ({name})" if self.dora_wd else name


def _bad(message: str) -> ConfigError:
    return ConfigError(f"setting 'network_args': {message}")


def parse_network_args(items: list[str] | None, network_module: str = "networks.lora") -> NetworkArgs:
    values = parse_key_values(items, "network_args")
    allowed = SUPPORTED.get(network_module, SUPPORTED["networks.lora"])
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        hint = (f"; for LyCORIS types set network_module = \"{LYCORIS_MODULE}\""
                if set(unknown) <= set(SUPPORTED[LYCORIS_MODULE]) else "")
        raise _bad(f"{', '.join(unknown)} not supported with {network_module} (it reads {', '.join(allowed)}){hint}")
    conv_dim = values.get("conv_dim")
    if conv_dim is not None:
        if isinstance(conv_dim, bool) or not isinstance(conv_dim, int) or conv_dim < 0:
            raise _bad(f"conv_dim must be a whole number of 1 or more, got {conv_dim!r}")
        conv_dim = conv_dim or None  # conv_dim=0 means no LoCon, as in sd-scripts
    conv_alpha = values.get("conv_alpha", 1.0)
    if isinstance(conv_alpha, bool) or not isinstance(conv_alpha, (int, float)) or conv_alpha < 0:
        raise _bad(f"conv_alpha must be a number of 0 or more, got {conv_alpha!r}")
    if "conv_alpha" in values and conv_dim is None:
        raise _bad("conv_alpha is set but conv_dim is not; add conv_dim=N for LoCon")
    algo = str(values.get("algo", "lora")).lower()
    if algo not in ALGOS:
        raise _bad(f"algo '{algo}' is not supported (choose one of {', '.join(ALGOS)})")
    dora = values.get("dora_wd", False)
    if isinstance(dora, str):
        dora = dora.lower() in ("true", "1", "yes")
    if dora and algo in ("ia3",):
        raise _bad("dora_wd does not apply to algo=ia3")
    factor = values.get("factor", -1)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor == 0 or factor < -1:
        raise _bad(f"factor must be -1 (automatic) or a whole number of 1 or more, got {factor!r}")
    dropouts = {}
    for name in _DROPOUT:
        value = values.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise _bad(f"{name} must be a number from 0 to below 1, got {value!r}")
        dropouts[name] = float(value)
    return NetworkArgs(conv_dim, float(conv_alpha), algo, bool(dora), factor, **dropouts)
