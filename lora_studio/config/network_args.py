"""``network_args`` as sd-scripts and Kohya_ss users write them, checked, never ignored.

Each network module reads the arguments its sd-scripts (or LyCORIS) namesake reads:

- ``networks.lora``: ``conv_dim``/``conv_alpha`` (LoCon), ``rank_dropout``/``module_dropout``.
- ``networks.lora_fa``: the same; LoRA-FA trains the up weights only (the down weights stay at their random start).
- ``networks.dylora``: ``conv_dim``/``conv_alpha`` and ``unit`` (DyLoRA: ranks trained ``unit`` at a time).
- ``lycoris.kohya``: ``algo`` (lora, locon, loha, lokr, ia3, dylora, glora, diag-oft, boft, full), ``preset`` (which
  layers), ``dora_wd``, ``factor``, ``use_tucker`` (``use_cp``, ``use_conv_cp``), ``use_scalar``, ``train_norm``,
  ``decompose_both``, ``bypass_mode``, ``constraint``, ``rescaled``, ``rs_lora``, ``wd_on_output``, ``block_size``,
  ``full_matrix``, as ``lycoris.kohya.create_network`` reads them. ``network_dim`` (or ``conv_dim``) of 100000 or
  more is a full-matrix LoKr, as in LyCORIS. Kohya_ss also passes ``rank_dropout_scale`` and ``train_on_input``,
  which ``lycoris.kohya`` does not read: accepted, and said to have no effect.
- ``networks.lora`` and ``networks.lora_fa`` also read the block-wise arguments (``network.blocks``).
- All of them: LoRA+ (``loraplus_lr_ratio``, ``loraplus_unet_lr_ratio``, ``loraplus_text_encoder_lr_ratio``).
- Flux.1 / Chroma (sd-scripts' ``networks.lora_flux``, also accepted as ``network_module``): ``train_blocks``,
  ``in_dims``, the per-type dims (``img_attn_dim`` ... ``single_mod_dim``), ``train_double_block_indices``,
  ``train_single_block_indices``, ``split_qkv``, ``train_t5xxl``; the Flux family reads them (``models.flux``).
- SD3 / SD3.5 (``networks.lora_sd3``): ``context_attn_dim`` ... ``x_mod_dim``, ``emb_dims``, ``train_block_indices``,
  ``split_qkv``, ``train_t5xxl``; Anima (``networks.lora_anima``): ``train_llm_adapter``, ``include_patterns``,
  ``exclude_patterns``, ``network_reg_dims``, ``network_reg_lrs``; Lumina 2 (``networks.lora_lumina``): ``attn_dim``,
  ``mlp_dim``, ``mod_dim``, ``refiner_dim``, ``embedder_dims``, ``train_blocks``, ``split_qkv``. Each family reads its
  own (``ModelFamily.network_args``) and refuses another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from ..models.family import TargetSpec
from .values import parse_key_values

LYCORIS_MODULE = "lycoris.kohya"
# sd-scripts' per-family LoRA modules are LoRA here too: the family decides the modules and names
LORA_MODULES = ("networks.lora", "lora_studio.lora", "networks.lora_flux", "networks.lora_sd3", "networks.lora_anima",
                "networks.lora_lumina")
NETWORK_MODULES = LORA_MODULES + ("networks.lora_fa", "networks.dylora", LYCORIS_MODULE)
ALGOS = ("lora", "locon", "loha", "lokr", "ia3", "dylora", "glora", "diag-oft", "boft", "full")
FULL_MATRIX_DIM = 100000  # a rank this large means "no factorisation" to LyCORIS's LoKr
MAX_RANK = 1024  # above it only as a full-matrix LoKr
_DROPOUT = ("rank_dropout", "module_dropout")
LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_LORA_ARGS = ("conv_dim", "conv_alpha") + _DROPOUT + LORAPLUS
LYCORIS_FLAGS = ("use_tucker", "use_scalar", "train_norm", "decompose_both", "bypass_mode", "rescaled", "rs_lora",
                 "full_matrix")
LYCORIS_NOT_READ = ("rank_dropout_scale", "train_on_input")  # Kohya_ss passes them; lycoris.kohya reads neither
_TUCKER_ALIASES = ("use_cp", "use_conv_cp")
BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
              "block_alphas", "conv_block_dims", "conv_block_alphas")
# sd-scripts' networks.lora_flux arguments (the Flux family reads them; other families refuse them)
FLUX_ARGS = ("train_blocks", "in_dims", "img_attn_dim", "txt_attn_dim", "img_mlp_dim", "txt_mlp_dim", "img_mod_dim",
             "txt_mod_dim", "single_dim", "single_mod_dim", "train_double_block_indices", "train_single_block_indices",
             "split_qkv", "train_t5xxl", "verbose")
SD3_ARGS = ("context_attn_dim", "context_mlp_dim", "context_mod_dim", "x_attn_dim", "x_mlp_dim", "x_mod_dim",
            "emb_dims", "train_block_indices", "split_qkv", "train_t5xxl", "verbose")
ANIMA_ARGS = ("train_llm_adapter", "include_patterns", "exclude_patterns", "network_reg_dims", "network_reg_lrs",
              "verbose")
LUMINA_ARGS = ("attn_dim", "mlp_dim", "mod_dim", "refiner_dim", "embedder_dims", "train_blocks", "split_qkv", "verbose")
# every family's own arguments (each family reads its own tuple and refuses the others)
FAMILY_ARGS = tuple(dict.fromkeys(FLUX_ARGS + SD3_ARGS + ANIMA_ARGS + LUMINA_ARGS))
SUPPORTED = {**{m: _LORA_ARGS + BLOCK_ARGS + FAMILY_ARGS for m in LORA_MODULES + ("networks.lora_fa",)},
             "networks.dylora": ("conv_dim", "conv_alpha", "unit") + LORAPLUS,
             LYCORIS_MODULE: _LORA_ARGS + ("algo", "dora_wd", "factor", "preset", "constraint", "block_size",
                                           "wd_on_output", "disable_conv_cp", "dropout")
             + LYCORIS_FLAGS + _TUCKER_ALIASES + LYCORIS_NOT_READ + ("train_t5xxl", "train_blocks",
                                                                     "train_double_block_indices",
                                                                     "train_single_block_indices")}

# LyCORIS's built-in presets: which layers of an SD UNet and its text encoders get adapters.
_BLOCKS = dict(conv_blocks=True, kxk_convs=True)
LYCORIS_PRESETS = {
    "full": TargetSpec(**_BLOCKS, stem=("conv_in", "conv_out", "time_embedding")),
    "full-lin": TargetSpec(conv_blocks=True, stem=("time_embedding",)),
    "attn-mlp": TargetSpec(),
    "attn-only": TargetSpec(attention_only=True),
    "unet-only": TargetSpec(**_BLOCKS, stem=("conv_in", "conv_out", "time_embedding"), text_encoder=False),
    "unet-transformer-only": TargetSpec(text_encoder=False),
    "unet-convblock-only": TargetSpec(transformer=False, **_BLOCKS, stem=("conv_in", "conv_out"),
                                      text_encoder=False),
}
NAMES = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)3", "dylora": "DyLoRA",
         "glora": "GLoRA", "diag-oft": "Diag-OFT", "boft": "BOFT", "full": "Native fine-tuning"}


@dataclass(frozen=True)
class NetworkArgs:
    conv_dim: int | None = None  # rank of the 3x3 convs of ResNet, down- and upsample blocks (None = not adapted)
    conv_alpha: float | None = 1.0
    algo: str = "lora"
    dora_wd: bool = False
    factor: int = -1
    rank_dropout: float = 0.0  # each step, drop this share of each adapter's ranks (the rest scaled up)
    module_dropout: float = 0.0  # each step, skip each adapter with this probability
    module: str = "networks.lora"
    unit: int = 1  # DyLoRA: ranks are trained this many at a time
    preset: str = "full"  # LyCORIS: which layers
    constraint: float = 0.0  # LyCORIS OFT: the norm bound of the rotation (0 = none)
    flags: frozenset[str] = field(default_factory=frozenset)  # the LYCORIS_FLAGS that are on
    wd_on_output: bool = True
    not_read: tuple[str, ...] = ()  # arguments given that the module does not read (LYCORIS_NOT_READ)
    loraplus_unet: float | None = None  # LoRA+: the up weights' learning rate x this (U-Net)
    loraplus_text_encoder: float | None = None  # (text encoders)
    blocks: tuple[tuple[str, Any], ...] = ()  # the block-wise LoRA arguments as given (network.blocks reads them)
    family_args: tuple[tuple[str, Any], ...] = ()  # a family's own arguments as given (FLUX_ARGS: models.flux)

    @property
    def lycoris(self) -> bool:
        return self.module == LYCORIS_MODULE

    def flag(self, name: str) -> bool:
        return name in self.flags

    @property
    def diffusers_loads(self) -> bool:
        """diffusers reads kohya LoRA/LoCon only: not LoHa, LoKr, (IA)3, OFT, full weights, nor DoRA's dora_scale."""
        return (self.algo in ("lora", "locon", "dylora") and not self.dora_wd and not self.flag("train_norm")
                and not self.flag("use_tucker") and not self.flag("use_scalar"))

    def targets(self) -> TargetSpec:
        """The layers that get adapters: sd-scripts' LoRA (+ LoCon blocks with conv_dim), or a LyCORIS preset
        (LyCORIS adapts k x k convolutions at network_dim when conv_dim is not given)."""
        if not self.lycoris:
            convs = bool(self.conv_dim) or any(name == "conv_block_dims" for name, _ in self.blocks)
            return TargetSpec(conv_blocks=convs, kxk_convs=convs, family_args=self.family_args,
                              t5=_truthy(dict(self.family_args).get("train_t5xxl", False)))
        spec = LYCORIS_PRESETS[self.preset]
        return TargetSpec(**{**spec.__dict__, "norms": self.flag("train_norm"), "family_args": self.family_args,
                             "t5": _truthy(dict(self.family_args).get("train_t5xxl", False))})

    def describe(self) -> str:
        if self.module == "networks.lora_fa":
            return "LoRA-FA"
        if self.module == "networks.dylora":
            return "DyLoRA"
        name = NAMES[self.algo]
        if self.conv_dim and self.algo == "lora":
            name = "LoCon"
        return f"DoRA ({name})" if self.dora_wd else name


def _bad(message: str) -> ConfigError:
    return ConfigError(f"setting 'network_args': {message}")


def _truthy(value) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on") if isinstance(value, str) else bool(value)


def _whole(values: dict, name: str, default: int, low: int) -> int:
    value = values.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(f"{name} must be a whole number of {low} or more, got {value!r}")
    return value


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
        conv_dim = _whole(values, "conv_dim", 0, 0) or None  # conv_dim=0 means no LoCon, as in sd-scripts
    # sd-scripts' LoCon: conv_alpha 1 by default; LyCORIS: network_alpha (None here: the network fills it in)
    conv_alpha = values.get("conv_alpha", None if network_module == LYCORIS_MODULE else 1.0)
    if conv_alpha is not None and (isinstance(conv_alpha, bool) or not isinstance(conv_alpha, (int, float))
                                   or conv_alpha < 0):
        raise _bad(f"conv_alpha must be a number of 0 or more, got {conv_alpha!r}")
    if "conv_alpha" in values and conv_dim is None and network_module != LYCORIS_MODULE:
        raise _bad("conv_alpha is set but conv_dim is not; add conv_dim=N for LoCon")
    algo = str(values.get("algo", "lora")).lower()
    if algo not in ALGOS:
        raise _bad(f"algo '{algo}' is not supported (choose one of {', '.join(ALGOS)})")
    dora = _truthy(values.get("dora_wd", False))
    if dora and algo not in ("lora", "locon", "loha", "lokr"):
        raise _bad(f"dora_wd applies to LoRA, LoCon, LoHa and LoKr, not algo={algo}")
    factor = values.get("factor", -1)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor == 0 or factor < -1:
        raise _bad(f"factor must be -1 (automatic) or a whole number of 1 or more, got {factor!r}")
    if conv_dim and conv_dim > MAX_RANK and not (conv_dim >= FULL_MATRIX_DIM and algo == "lokr"):
        raise _bad(f"conv_dim {conv_dim} is above {MAX_RANK}; {FULL_MATRIX_DIM} or more means a full-matrix LoKr "
                   "(algo=lokr)")
    dropouts = {}
    for name in _DROPOUT:
        value = values.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise _bad(f"{name} must be a number from 0 to below 1, got {value!r}")
        dropouts[name] = float(value)
    preset = str(values.get("preset", "full"))
    if preset not in LYCORIS_PRESETS:
        raise _bad(f"preset '{preset}' is not supported (choose one of {', '.join(LYCORIS_PRESETS)}; LyCORIS's "
                   "preset files and the ia3 preset are not read)")
    constraint = values.get("constraint", 0.0) or 0.0
    if isinstance(constraint, bool) or not isinstance(constraint, (int, float)) or constraint < 0:
        raise _bad(f"constraint must be a number of 0 or more, got {constraint!r}")
    flags = {name for name in LYCORIS_FLAGS if _truthy(values.get(name, False))}
    if any(_truthy(values.get(a, False)) for a in _TUCKER_ALIASES) or \
            ("disable_conv_cp" in values and not _truthy(values["disable_conv_cp"])):
        flags.add("use_tucker")  # LyCORIS reads use_cp / use_conv_cp / disable_conv_cp=false as use_tucker
    if "dropout" in values:
        raise _bad("dropout in network_args: set network_dropout instead (the same thing)")
    unit = _whole(values, "unit", 1, 1)
    block_size = _whole(values, "block_size", 4, 1) if "block_size" in values else None
    if algo == "dylora":
        unit = block_size or 4  # LyCORIS's DyLoRA: block_size, default 4
    args = NetworkArgs(conv_dim, None if conv_alpha is None else float(conv_alpha), algo, dora, factor, **dropouts,
                       module=network_module, unit=unit, preset=preset, constraint=float(constraint), flags=frozenset(flags),
                       wd_on_output=_truthy(values.get("wd_on_output", True)),
                       not_read=tuple(n for n in LYCORIS_NOT_READ if n in values))
    ratios = {}
    for name in LORAPLUS:
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise _bad(f"{name} must be a number above 0 (LoRA+: 16 is the paper's value), got {value!r}")
        ratios[name] = None if value is None else float(value)
    # sd-scripts: the part's own ratio, else loraplus_lr_ratio
    args = replace(args, blocks=tuple((k, values[k]) for k in BLOCK_ARGS if k in values),
                   family_args=tuple((k, values[k]) for k in FAMILY_ARGS if k in values),
                   loraplus_unet=ratios["loraplus_unet_lr_ratio"] or ratios["loraplus_lr_ratio"],
                   loraplus_text_encoder=ratios["loraplus_text_encoder_lr_ratio"] or ratios["loraplus_lr_ratio"])
    problem = lycoris_rank_problem("conv_dim", conv_dim, args) if conv_dim else None
    if problem:
        raise _bad(problem)
    return args


def check_rank(network_dim: int, args: NetworkArgs) -> str | None:
    """A problem with ``network_dim`` for this network, or None. Ranks above 1024 only as a full-matrix LoKr; a
    DyLoRA rank must be a multiple of its unit."""
    if network_dim > MAX_RANK and not (network_dim >= FULL_MATRIX_DIM and args.lycoris and args.algo == "lokr"):
        return (f"{network_dim} is above {MAX_RANK}; {FULL_MATRIX_DIM} or more means a full-matrix LoKr "
                f"(network_module = \"{LYCORIS_MODULE}\", algo=lokr)")
    if args.module == "networks.dylora" and network_dim % args.unit:
        return f"DyLoRA needs a rank that is a multiple of unit ({args.unit}), got {network_dim}"
    return lycoris_rank_problem("network_dim", network_dim, args)


def lycoris_rank_problem(name: str, rank: int, args: NetworkArgs) -> str | None:
    """What LyCORIS's own modules would stop on, said before the run: a DyLoRA rank not a multiple of its
    block_size, a BOFT rank (its butterfly factor) below 2."""
    if not args.lycoris:
        return None
    if args.algo == "dylora" and rank % args.unit:
        return f"LyCORIS DyLoRA needs {name} to be a multiple of block_size ({args.unit}), got {rank}"
    if args.algo == "boft" and rank < 2:
        return f"LyCORIS BOFT cannot factor a layer by {name} = {rank} (its butterfly factor): use 2 or more"
    return None
