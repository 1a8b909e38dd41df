"""LoRA adapters with kohya semantics: ``W x + (alpha / rank) * up(down(x))``, and the LyCORIS family.

Each adapter hooks the forward of one frozen Linear or Conv2d of the UNet or a text encoder. The network's own state
dict is already the kohya file layout: ``<stem>.lora_down.weight``, ``<stem>.lora_up.weight``, ``<stem>.alpha``.
LoHa, LoKr, (IA)3 and DoRA adapters come from the ``lycoris-lora`` package, placed on the same targets under the
same stems, so their files carry the key suffixes AUTOMATIC1111 and ComfyUI read (``hada_*``, ``lokr_*``,
``weight``/``on_input``, ``dora_scale``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..config.network_args import NetworkArgs
from ..errors import UserError
from ..models.family import Components
from ..models.fp8 import is_fp8


class LoRAModule(nn.Module):
    """``split`` (Flux's split_qkv): the base's outputs in these parts (q, k, v [, mlp]) each get their own rank-
    ``rank`` adapter, stored as one module of rank ``rank x parts`` whose up weight is block-diagonal (the blocks off
    the diagonal start at zero and get no gradient), with alpha x parts, so that alpha / rank in the file still gives
    the strength each part trained with (sd-scripts keeps alpha and so halves or quarters it, its #2204)."""

    def __init__(self, stem: str, base: nn.Module, rank: int, alpha: float | None, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0, frozen_down: bool = False,
                 split: tuple[int, ...] = ()):
        super().__init__()
        if split:
            if sum(split) != base.out_features:
                raise ValueError(f"{stem}: split {split} does not add up to {base.out_features} outputs")
            alpha = (float(alpha) if alpha else float(rank)) * len(split)
            rank = rank * len(split)
        self.stem = stem
        if isinstance(base, nn.Linear):
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                       bias=False)
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        else:
            raise TypeError(f"{stem}: cannot adapt {type(base).__name__}")
        if frozen_down:  # LoRA-FA: a random down projection (normal, as its paper and sd-scripts) that never trains
            fan_in = self.lora_down.weight[0].numel()
            nn.init.normal_(self.lora_down.weight, std=math.sqrt(2.0 / (fan_in + rank)))
            self.lora_down.weight.requires_grad_(False)
        else:
            nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        alpha = float(rank) if not alpha else float(alpha)  # kohya: alpha 0 or unset means alpha = rank
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.rank = rank
        self._scale = alpha / rank
        self.compute_dtype: torch.dtype | None = None  # the dtype the adapter computes in (None: its weights')
        self._conv = isinstance(base, nn.Conv2d)
        self.dropout = dropout
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout
        self.multiplier = 1.0
        self._base = [base]  # a list keeps the base module out of this module's parameters
        self._base_forward = None
        if split:
            mask = torch.zeros(base.out_features, rank)
            part_rank, start = rank // len(split), 0
            for i, size in enumerate(split):
                mask[start:start + size, i * part_rank:(i + 1) * part_rank] = 1
                start += size
            self.register_buffer("split_mask", mask, persistent=False)
            self.lora_up.weight.register_hook(lambda grad: grad * self.split_mask.to(grad.dtype))

    @property
    def scale(self) -> float:
        """alpha / rank, kept as a Python number (read once, and again when a state dict brings another alpha): the
        forward does no arithmetic on tensors' values and no host sync."""
        return self._scale

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._scale = float(self.alpha) / self.rank

    def delta_weight(self) -> torch.Tensor:
        """The change this adapter makes to its base weight: up x down x alpha/rank (a k x k kernel for a conv)."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if down.ndim == 2:
            delta = up @ down
        elif down.shape[2:] == (1, 1):
            delta = (up.flatten(1) @ down.flatten(1))[:, :, None, None]
        else:  # a k x k down conv, a 1x1 up: compose them into one kernel
            delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        return delta * self.scale

    def attach(self) -> None:
        base = self._base[0]
        self._base_forward = base.forward
        base.forward = self.forward

    def detach_from_base(self) -> None:
        if self._base_forward is not None:
            self._base[0].forward = self._base_forward
            self._base_forward = None

    def _project(self, layer: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        weight = layer.weight.to(dtype)
        if self._conv:
            return nn.functional.conv2d(x, weight, None, layer.stride, layer.padding)
        return nn.functional.linear(x, weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One dtype path: the input and the weights are cast to ``compute_dtype`` (the run's autocast dtype, set by
        the trainer: under autocast nothing is cast twice) and the result to the base output's dtype."""
        out = self._base_forward(x)
        if self.multiplier == 0:
            return out
        if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
            return out  # sd-scripts' module dropout: this adapter sits this step out
        dtype = self.compute_dtype or self.lora_down.weight.dtype
        hidden = self._project(self.lora_down, x.to(dtype), dtype)
        if self.dropout and self.training:
            hidden = nn.functional.dropout(hidden, p=self.dropout)
        factor = self.multiplier * self._scale
        if self.rank_dropout and self.training:  # drop whole ranks per sample; the rest count 1 / (1 - p)
            keep = torch.rand((hidden.shape[0], self.rank), device=hidden.device) > self.rank_dropout
            if hidden.ndim == 3:  # [batch, tokens, rank]
                keep = keep[:, None, :]
            elif hidden.ndim == 4:  # [batch, rank, height, width]
                keep = keep[:, :, None, None]
            hidden = hidden * keep.to(hidden.dtype)
            factor = factor / (1.0 - self.rank_dropout)
        return out + (self._project(self.lora_up, hidden, dtype) * factor).to(out.dtype)


class DyLoRAModule(nn.Module):
    """sd-scripts' DyLoRA (``networks.dylora``): every forward, one random group of ``unit`` ranks, starting at a
    multiple of ``unit``, is trained while the others are held (no gradient, so the optimizer leaves them as they
    are); the whole rank is applied, scaled by alpha/rank x sqrt(rank / (start + unit)). Outside training (sample
    images) the whole rank applies at alpha/rank, as the saved file does. Saved as a plain LoRA, so the file can be
    cut to any multiple of ``unit`` later and loads everywhere."""

    def __init__(self, stem: str, base: nn.Module, rank: int, alpha: float | None, unit: int):
        super().__init__()
        self.stem, self.rank, self.unit = stem, rank, unit
        self.is_conv = isinstance(base, nn.Conv2d)
        self.kernel = base.kernel_size if self.is_conv else None
        in_dim = base.in_channels if self.is_conv else base.in_features
        out_dim = base.out_channels if self.is_conv else base.out_features
        down_shape = (1, in_dim, *self.kernel) if self.is_conv else (1, in_dim)
        up_shape = (out_dim, 1, 1, 1) if self.is_conv else (out_dim, 1)
        # One parameter per rank, as sd-scripts keeps them: a rank not trained this step has no gradient at all.
        self.down_ranks = nn.ParameterList([nn.Parameter(torch.empty(down_shape)) for _ in range(rank)])
        self.up_ranks = nn.ParameterList([nn.Parameter(torch.zeros(up_shape)) for _ in range(rank)])
        for p in self.down_ranks:
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        alpha = float(rank) if not alpha else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self._scale = alpha / rank  # alpha / rank as a Python number (LoRAModule.scale)
        self.multiplier = 1.0
        self._base = [base]
        self._base_forward = None

    @property
    def scale(self) -> float:
        return self._scale

    def _draw(self) -> int:
        """The first rank trained this step (torch's random state, which a saved training state keeps)."""
        start = int(torch.randint(0, self.rank, (1,)))
        return start - start % self.unit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x)
        if self.multiplier == 0:
            return out
        start = self._draw() if self.training else self.rank - self.unit
        trained = range(start, start + self.unit) if self.training else range(self.rank)

        def ranks(params):
            return [p if i in trained else p.detach() for i, p in enumerate(params)]
        down = torch.cat(ranks(self.down_ranks), dim=0)
        up = torch.cat(ranks(self.up_ranks), dim=1)
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(down.dtype)
        base = self._base[0]
        if self.is_conv:
            hidden = nn.functional.conv2d(x, down, stride=base.stride, padding=base.padding)
            delta = nn.functional.conv2d(hidden, up)
        else:
            delta = nn.functional.linear(nn.functional.linear(x, down), up)
        scale = self.scale * math.sqrt(self.rank / (start + self.unit))
        return out + (delta * (self.multiplier * scale)).to(out.dtype)

    attach = LoRAModule.attach
    detach_from_base = LoRAModule.detach_from_base

    def _file_weights(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": torch.cat(list(self.down_ranks), dim=0),
                "lora_up.weight": torch.cat(list(self.up_ranks), dim=1)}

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """The kohya file layout: ``lora_down.weight`` [rank, in(, k, k)], ``lora_up.weight`` [out, rank(, 1, 1)]."""
        out = {} if destination is None else destination
        for name, value in self._file_weights().items():
            out[prefix + name] = value if keep_vars else value.detach()
        out[prefix + "alpha"] = self.alpha if keep_vars else self.alpha.detach()
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        down, up = state_dict.pop(prefix + "lora_down.weight", None), state_dict.pop(prefix + "lora_up.weight", None)
        if down is not None and up is not None:
            for i in range(self.rank):
                state_dict[f"{prefix}down_ranks.{i}"] = down[i:i + 1]
                state_dict[f"{prefix}up_ranks.{i}"] = up[:, i:i + 1]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self._scale = float(self.alpha) / self.rank


LYCORIS_CLASSES = {"lora": "LoConModule", "locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule",
                   "ia3": "IA3Module", "dylora": "DyLoraModule", "glora": "GLoRAModule",
                   "diag-oft": "DiagOFTModule", "boft": "ButterflyOFTModule", "full": "FullModule"}


def lycoris_adapter(stem: str, base: nn.Module, rank: int, alpha: float | None, dropout: float,
                    args: NetworkArgs, norm: bool = False) -> nn.Module:
    """The LyCORIS module for ``args.algo`` (or for a normalisation layer with train_norm), with the arguments
    ``lycoris.kohya`` passes it."""
    try:
        import lycoris.modules as modules
    except ImportError:
        raise UserError("network_module lycoris.kohya needs the lycoris-lora package: pip install lycoris-lora "
                        "(setup.sh installs it)") from None
    common = {"multiplier": 1.0, "rank_dropout": args.rank_dropout, "module_dropout": args.module_dropout}
    if norm:
        return modules.NormModule(stem, base, **common)
    options = {"lora_dim": rank, "alpha": alpha or rank, "dropout": dropout, "use_tucker": args.flag("use_tucker"),
               "use_scalar": args.flag("use_scalar"), "weight_decompose": args.dora_wd,
               "wd_on_out": args.wd_on_output, "bypass_mode": args.flag("bypass_mode"),
               "rs_lora": args.flag("rs_lora"), "factor": args.factor, "decompose_both": args.flag("decompose_both"),
               "full_matrix": args.flag("full_matrix"), "block_size": args.unit, "constraint": args.constraint,
               "rescaled": args.flag("rescaled")}
    if is_fp8(base):  # fp8_base: the float8 weight is only read through the layer's own (upcasting) forward
        if args.dora_wd or args.algo in ("full", "ia3"):
            raise UserError(f"fp8_base: LyCORIS {'DoRA (dora_wd)' if args.dora_wd else 'algo=' + args.algo} works on "
                            "each layer's base weight, which fp8_base stores in float8; turn fp8_base and "
                            "fp8_base_unet off for it")
        options["bypass_mode"] = True  # W x + dW x, as LyCORIS runs quantised layers; the same file
    try:
        module = getattr(modules, LYCORIS_CLASSES[args.algo])(stem, base, **common, **options)
    except (ValueError, AssertionError) as exc:  # LyCORIS refuses this layer's shape with this rank
        raise UserError(f"network_args algo={args.algo}: LyCORIS cannot adapt {stem} ({type(base).__name__}, "
                        f"weight {tuple(base.weight.shape)}) with rank {rank}: {exc}") from None
    if args.algo == "dylora":
        _draw_ranks_with_torch(module)
    return module


def _draw_ranks_with_torch(module) -> None:
    """LyCORIS's DyLoRA draws its block with Python's random; gradient checkpointing replays torch's random state
    when it recomputes a block, not Python's, so the recomputed forward would train another block (and torch stops
    on the changed shapes). The same draw (a uniform block) from torch's generator."""
    def random_rank_weight():
        block = int(torch.randint(0, module.block_count, (1,)))
        return module.get_weight(block * module.block_size)
    module.get_random_rank_weight = random_rank_weight


def _uses_lycoris(args: NetworkArgs | None) -> bool:
    """LyCORIS modules for its own algorithms and options; a plain LoRA/LoCon under lycoris.kohya is the same
    math as ours (kohya LoRA keys), so it stays ours and loads in diffusers too."""
    return args is not None and args.lycoris and (args.algo not in ("lora", "locon") or args.dora_wd or any(
        args.flag(f) for f in ("use_tucker", "use_scalar", "bypass_mode", "rs_lora")))


class LoRANetwork(nn.Module):
    """All adapters of a run. Adapters are registered under their file stems."""

    def __init__(self, components: Components, rank: int, alpha: float | None, train_unet: bool = True,
                 train_text_encoder: bool = True, dropout: float = 0.0, args: NetworkArgs | None = None):
        super().__init__()
        self.args = args
        self.unet_stems: list[str] = []
        self.te_stems: list[list[str]] = [[] for _ in components.text_encoders]
        args = args or NetworkArgs()
        conv_dim, conv_alpha = args.conv_dim, args.conv_alpha
        if args.lycoris and not conv_dim:  # LyCORIS adapts k x k convolutions at network_dim / network_alpha
            conv_dim, conv_alpha = rank, alpha
        elif args.lycoris and conv_alpha is None:
            conv_alpha = alpha
        family = components.family
        self.blocks = _block_plan(family, args, rank, alpha, conv_dim, conv_alpha)
        self.block_of: dict[str, int] = {}
        self.lr_of: dict[str, float] = {}  # a module's own learning rate (a family's per-module rule)
        foreign = [name for name, _ in args.family_args if name not in family.network_args()]
        if foreign:
            raise UserError(f"network_args: {', '.join(foreign)}: arguments of another model family's sd-scripts "
                            f"network module (networks.lora_flux, lora_sd3, lora_anima, lora_lumina); {family.title} "
                            "does not read them")
        # The family says which modules get adapters and their names (and, block-wise, each one's block).
        for target in family.adapter_targets(components, train_unet, train_text_encoder, args.targets()):
            block = family.lora_block_index(target.stem) if target.text_encoder is None else -1
            if self.blocks is not None and target.text_encoder is None and not target.norm:
                this_rank, this_alpha = self.blocks.rank(block, target.conv, rank, alpha, conv_dim, conv_alpha)
            else:
                this_rank, this_alpha = (conv_dim, conv_alpha) if target.conv else (rank, alpha)
            if target.rank is not None:  # the family's own rank for this module (Flux: per-type dims, in_dims)
                this_rank = target.rank
            if not this_rank:  # block-wise rank 0: this block is not adapted (the file simply lacks it)
                continue
            self._add(target.stem, target.module, this_rank, this_alpha, dropout, norm=target.norm,
                      split=target.split)
            self.block_of[target.stem] = block
            if target.lr is not None:
                self.lr_of[target.stem] = target.lr
            (self.unet_stems if target.text_encoder is None else self.te_stems[target.text_encoder]).append(
                target.stem)

    def _add(self, stem: str, module: nn.Module, rank: int, alpha, dropout, norm: bool = False,
             split: tuple[int, ...] = ()) -> None:
        if stem in self._modules:
            raise RuntimeError(f"two modules map to the LoRA name {stem}")
        args = self.args or NetworkArgs()
        if split and (norm or _uses_lycoris(args) or args.module in ("networks.dylora", "networks.lora_fa")):
            raise UserError("split_qkv trains LoRA (networks.lora or the family's sd-scripts LoRA module) only, as in "
                            "sd-scripts")
        if norm or _uses_lycoris(args):
            adapter = lycoris_adapter(stem, module, rank, alpha, dropout, args, norm)
        elif args.module == "networks.dylora":
            adapter = DyLoRAModule(stem, module, rank, alpha, args.unit)
        else:
            adapter = LoRAModule(stem, module, rank, alpha, dropout, args.rank_dropout, args.module_dropout,
                                 frozen_down=args.module == "networks.lora_fa", split=split)
        self.add_module(stem, adapter)

    def adapters(self) -> list[nn.Module]:
        return list(self.children())

    def attach(self) -> LoRANetwork:
        for m in self.adapters():
            m.attach() if isinstance(m, OWN_MODULES) else m.apply_to()
        return self

    def detach_from_base(self) -> None:
        for m in self.adapters():
            if isinstance(m, OWN_MODULES):
                m.detach_from_base()
            elif type(m).__name__ == "FullModule":  # it moved the base weight into itself: give it back
                m.restore()
            else:  # LyCORIS: put the base module's own forward back
                base = m.org_module[0]
                base.forward = getattr(base, "_lycoris_original_forward", m.org_forward)
                base._lycoris_wrappers = []

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """sd-scripts' scale_weight_norms: every LoRA adapter whose weight change (up x down x alpha/rank) has a
        Frobenius norm above ``max_norm`` is scaled down to it, half of the factor on each of up and down.
        Returns (adapters scaled, mean norm, largest norm) after scaling."""
        scaled, norms = 0, []
        for module in self.adapters():
            if not isinstance(module, LoRAModule):
                if hasattr(module, "apply_max_norm") and not isinstance(module, DyLoRAModule):
                    done, norm = module.apply_max_norm(max_norm, None)  # LyCORIS's own, as lycoris.kohya does
                    if done is not None:
                        scaled += int(done)
                        norms.append(float(norm))
                continue
            norm = module.delta_weight().norm()
            clamped = norm.clamp(min=max_norm / 2)  # as sd-scripts (it keeps a tiny norm from dividing by ~0)
            ratio = clamped.clamp(max=max_norm) / clamped
            if ratio < 1:
                scaled += 1
                module.lora_up.weight.mul_(ratio.sqrt())
                module.lora_down.weight.mul_(ratio.sqrt())
            norms.append(float(norm * ratio))
        return scaled, (sum(norms) / len(norms) if norms else 0.0), max(norms, default=0.0)

    def set_multiplier(self, value: float) -> None:
        for m in self.adapters():
            m.multiplier = value

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        """The dtype our LoRA adapters compute in: the run's autocast dtype (bf16 / fp16), so that the forward has
        one dtype path whatever dtype each call's input comes in; None: their weights' dtype."""
        for m in self.adapters():
            if isinstance(m, LoRAModule):
                m.compute_dtype = dtype

    def _trainable(self, stems: list[str], up: bool | None = None) -> list[nn.Parameter]:
        """The trained parameters of these adapters; with ``up``, only the up weights (True) or all others."""
        return [p for s in stems for name, p in self._modules[s].named_parameters() if p.requires_grad
                and (up is None or up == _is_up(name))]

    def param_groups(self, unet_lr: float, te_lrs: list[float]) -> list[dict]:
        """One group per part (U-Net, each text encoder); with LoRA+ each part's up weights in a group of their own at
        the part's learning rate x its ratio, as sd-scripts groups them."""
        args = self.args or NetworkArgs()
        parts = [("unet", self.unet_stems, unet_lr, args.loraplus_unet)]
        if self.blocks is not None and self.blocks.lr_weights is not None:  # sd-scripts: a group per U-Net block
            by_block: dict[int, list[str]] = {}
            for stem in self.unet_stems:
                by_block.setdefault(self.block_of[stem], []).append(stem)
            parts = [(f"unet_block{b}", stems, unet_lr * self.blocks.lr_weight(b), args.loraplus_unet)
                     for b, stems in sorted(by_block.items())]
        for te_index, stems in enumerate(self.te_stems):
            name = f"text_encoder{te_index + 1 if len(self.te_stems) > 1 else ''}"
            parts.append((name, stems, te_lrs[min(te_index, len(te_lrs) - 1)], args.loraplus_text_encoder))
        parts = [split for part in parts for split in self._own_lrs(*part)]
        groups = []
        for name, stems, lr, ratio in parts:
            if not stems or lr <= 0:
                continue
            if ratio is None:
                groups.append({"params": self._trainable(stems), "lr": lr, "name": name})
                continue
            groups.append({"params": self._trainable(stems, up=False), "lr": lr, "name": name})
            groups.append({"params": self._trainable(stems, up=True), "lr": lr * ratio, "name": f"{name}_plus"})
        return [g for g in groups if g["params"]]

    def _own_lrs(self, name: str, stems: list[str], lr: float, ratio) -> list[tuple]:
        """A part's modules with a learning rate of their own (``lr_of``) in a group per rate, after the part's
        (sd-scripts' lora_anima: reg_lr groups, LoRA+ applying to them too)."""
        own: dict[float, list[str]] = {}
        for stem in stems:
            if stem in self.lr_of:
                own.setdefault(self.lr_of[stem], []).append(stem)
        if not own:
            return [(name, stems, lr, ratio)]
        rest = [s for s in stems if s not in self.lr_of]
        return [(name, rest, lr, ratio)] + [(f"{name}_lr{value:g}", group, value, ratio)
                                              for value, group in own.items()]

    def load_weights(self, path: str | Path) -> None:
        """Continue from a LoRA file: every adapter must be in it with the same rank; alpha comes from the file."""
        from ..models.loading import read_safetensors

        path = Path(path)
        if not path.is_file():
            raise UserError(f"network_weights: file not found: {path}")
        sd = read_safetensors(path, "network_weights")
        own = self.state_dict()
        file_stems = {k.split(".", 1)[0] for k in sd}
        own_stems = {k.split(".", 1)[0] for k in own}
        missing = sorted(own_stems - file_stems)
        if missing:
            raise UserError(f"network_weights: {path.name} has no weights for {len(missing)} of this run's modules "
                            f"(e.g. {missing[0]}); was it trained for another model type or with other targets?")
        for key, tensor in own.items():
            value = sd.get(key)
            if key.endswith(".alpha"):
                if value is None:  # no alpha stored: kohya loaders then use alpha = rank
                    value = torch.tensor(float(self._modules[key.split(".")[0]].rank))
                own[key] = value.float().reshape(())
                continue
            if value is None:
                raise UserError(f"network_weights: {path.name} has no {key}: was it trained with another LoRA type "
                                f"(network_module / algo)?")
            if value.shape != tensor.shape:
                raise UserError(f"network_weights: {path.name} has rank {_rank_of(key, value)} but network_dim is "
                                f"{_rank_of(key, tensor)}; set network_dim to match (or dim_from_weights) ({key})")
            own[key] = value.to(tensor.dtype)
        self.load_state_dict(own)
        ignored = sorted(file_stems - own_stems)
        if ignored:
            import logging

            logging.getLogger(__name__).warning("network_weights: %d module(s) in %s are not trained in this run "
                                                "(e.g. %s)", len(ignored), path.name, ignored[0])


OWN_MODULES = (LoRAModule, DyLoRAModule)


def _block_plan(family, args: NetworkArgs, rank, alpha, conv_dim, conv_alpha):
    """Block-wise ranks and learning-rate weights from network_args, for this family's blocks (or None)."""
    if not args.blocks:
        return None
    from .blocks import block_plan

    layout = family.lora_blocks()
    if layout is None:
        raise UserError(f"network_args {', '.join(k for k, _ in args.blocks)}: block-wise LoRA is not defined for "
                        f"{family.title} models")
    return block_plan(dict(args.blocks), layout, rank, alpha, conv_dim, conv_alpha)


def _is_up(parameter_name: str) -> bool:
    """An up (B) weight, the one LoRA+ trains faster: ``lora_up`` as sd-scripts and LyCORIS name it (DyLoRA's
    per-rank up weights too)."""
    return "lora_up" in parameter_name or parameter_name.startswith("up_ranks.")


def _rank_of(key: str, tensor: torch.Tensor) -> int:
    """The rank a weight implies: rows of a down/w*_b matrix, columns of an up/w*_a one."""
    return int(tensor.shape[0] if key.endswith(("lora_down.weight", "_b")) else tensor.shape[1] if tensor.ndim > 1
               else tensor.shape[0])


def ranks_in_file(path: str | Path) -> tuple[int, int | None]:
    """(network_dim, conv_dim or None) of a kohya LoRA file, for dim_from_weights."""
    from ..models.loading import read_safetensors

    sd = read_safetensors(Path(path), "network_weights")
    linear, conv = set(), set()
    for key, value in sd.items():
        if key.endswith(".lora_down.weight"):
            (conv if value.ndim == 4 and value.shape[-1] > 1 else linear).add(int(value.shape[0]))
        elif key.endswith(".hada_w1_b"):  # LoHa flattens conv kernels: all its ranks count as one
            linear.add(int(value.shape[0]))
    if not linear:
        raise UserError(f"network_weights: {Path(path).name} holds no LoRA or LoHa weights to read a rank from "
                        "(set network_dim yourself)")
    if len(linear) > 1 or len(conv) > 1:
        raise UserError(f"network_weights: {Path(path).name} mixes ranks {sorted(linear | conv)}; dim_from_weights "
                        "needs one rank (and one conv rank)")
    return linear.pop(), (conv.pop() if conv else None)

