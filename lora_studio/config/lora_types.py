"""LoRA types by the names the Kohya_ss GUI gives them (its "LoRA type" list), as ``network_module`` and the
``network_args`` each needs, and back: the GUI's LoRA type field.

The names and their modules are the Kohya_ss import's (``KOHYA_TYPES``, ``LYCORIS_TYPES``), so a Kohya_ss JSON's
``LoRA_type`` and the GUI's field mean the same thing. DoRA, a switch on LyCORIS's LoCon in Kohya_ss
(``dora_wd``), is listed as a type of its own.
"""

from __future__ import annotations

from .kohya_import import KOHYA_TYPES, LYCORIS_TYPES
from .network_args import LORA_MODULES, LYCORIS_MODULE, SUPPORTED, _truthy
from ..errors import ConfigError
from .values import parse_key_values

DORA = "DoRA (LyCORIS/LoCon)"
KOHYA_LOCON = "Kohya LoCon"
_LYCORIS_NAME = {}  # algo -> the first Kohya_ss name for it ("LyCORIS/LoCon", not its alias "LoCon")
for _name, _algo in LYCORIS_TYPES.items():
    _LYCORIS_NAME.setdefault(_algo, _name)

# name -> (network_module, the network_args it sets); conv_dim/conv_alpha of Kohya LoCon come from the form's rank
LORA_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    **{name: (module, ()) for name, module in KOHYA_TYPES.items()},
    **{name: (LYCORIS_MODULE, (f"algo={algo}",)) for algo, name in _LYCORIS_NAME.items()},
    DORA: (LYCORIS_MODULE, ("algo=locon", "dora_wd=True")),
}


def _key(item: str) -> str:
    return item.split("=", 1)[0].strip()


def describe_lora_type(name: str) -> str:
    """What choosing ``name`` sets, for the line under the field."""
    module, args = LORA_TYPES[name]
    if name == KOHYA_LOCON:
        return (f"Sets network_module = {module} and conv_dim, conv_alpha in Network args (the rank and alpha "
                "unless set).")
    return f"Sets network_module = {module}" + (f" and {' '.join(args)} in Network args." if args else ".")


def apply_lora_type(name: str, network_args: list[str] | None, network_dim: int | None = None,
                    network_alpha: float | None = None) -> tuple[str, list[str]]:
    """(network_module, network_args) for the LoRA type ``name``: the arguments the new module does not read and
    the algo the last type set are taken away, the type's own are added; the rest of ``network_args`` stays. DoRA on
    LoHa or LoKr (dora_wd typed by hand) stays when the type changes between them."""
    module, own = LORA_TYPES[name]
    args = network_args or []
    keep_dora = own[:1] in (("algo=loha",), ("algo=lokr",)) and lora_type_of(LYCORIS_MODULE, args) != DORA
    keep = [a for a in args if _key(a) in SUPPORTED[module] and _key(a) != "algo" and
            (_key(a) != "dora_wd" or keep_dora)]
    if name == "Standard":  # Standard is LoRA without the convolutions (Kohya LoCon has them)
        keep = [a for a in keep if _key(a) not in ("conv_dim", "conv_alpha")]
    if name == KOHYA_LOCON and "conv_dim" not in {_key(a) for a in keep}:
        keep += [f"conv_dim={int(network_dim or 4)}", f"conv_alpha={network_alpha if network_alpha else 1:g}"]
    return module, keep + list(own)


def lora_type_of(network_module: str | None, network_args: list[str] | None) -> str:
    """The Kohya_ss name of a network_module + network_args (a loaded config's LoRA type)."""
    module = network_module or "networks.lora"
    try:
        values = parse_key_values(network_args, "network_args")
    except ConfigError:  # an unfinished Network args field: name the type by its module alone
        values = {}
    if module == LYCORIS_MODULE:
        algo = str(values.get("algo", "lora")).lower()
        if algo in ("lora", "locon") and _truthy(values.get("dora_wd", False)):
            return DORA
        return _LYCORIS_NAME.get("locon" if algo == "lora" else algo, _LYCORIS_NAME["locon"])
    if module in LORA_MODULES:
        return KOHYA_LOCON if values.get("conv_dim") else "Standard"
    return next((name for name, (m, _) in LORA_TYPES.items() if m == module), "Standard")
