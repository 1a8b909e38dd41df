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


class LoRAModule(nn.Module):
    def __init__(self, stem: str, base: nn.Module, rank: int, alpha: float | None, dropout: float = 0.0,
                 rank_dropout: float = 0.0, module_dropout: float = 0.0):
        super().__init__()
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
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        alpha = float(rank) if not alpha else float(alpha)  # kohya: alpha 0 or unset means alpha = rank
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.rank = rank
        self.dropout = dropout
        self.rank_dropout, self.module_dropout = rank_dropout, module_dropout
        self.multiplier = 1.0
        self._base = [base]  # a list keeps the base module out of this module's parameters
        self._base_forward = None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._base_forward(x)
        if self.multiplier == 0:
            return out
        if self.module_dropout and self.training and torch.rand(1) < self.module_dropout:
            return out  # sd-scripts' module dropout: this adapter sits this step out
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_down.weight.dtype)
        hidden = self.lora_down(x)
        if self.dropout and self.training:
            hidden = nn.functional.dropout(hidden, p=self.dropout)
        scale = self.scale
        if self.rank_dropout and self.training:  # drop whole ranks per sample; the rest count 1 / (1 - p)
            keep = torch.rand((hidden.shape[0], self.rank), device=hidden.device) > self.rank_dropout
            if hidden.ndim == 3:  # [batch, tokens, rank]
                keep = keep[:, None, :]
            elif hidden.ndim == 4:  # [batch, rank, height, width]
                keep = keep[:, :, None, None]
            hidden = hidden * keep.to(hidden.dtype)
            scale = scale / (1.0 - self.rank_dropout)
        return out + (self.lora_up(hidden) * (self.multiplier * scale)).to(out.dtype)


def lycoris_adapter(stem: str, base: nn.Module, rank: int, alpha: float | None, dropout: float,
                    args: NetworkArgs) -> nn.Module:
    """A LyCORIS module for ``args.algo`` (LoHa, LoKr, (IA)3, or LoRA with DoRA's weight decomposition)."""
    try:
        from lycoris.modules import IA3Module, LohaModule, LokrModule, LoConModule
    except ImportError:
        raise UserError("network_module lycoris.kohya needs the lycoris-lora package: pip install lycoris-lora "
                        "(setup.sh installs it)") from None
    common = {"multiplier": 1.0, "lora_dim": rank, "alpha": alpha or rank, "dropout": dropout,
              "rank_dropout": args.rank_dropout, "module_dropout": args.module_dropout}
    if args.algo == "loha":
        return LohaModule(stem, base, weight_decompose=args.dora_wd, **common)
    if args.algo == "lokr":
        return LokrModule(stem, base, factor=args.factor, weight_decompose=args.dora_wd, **common)
    if args.algo == "ia3":
        return IA3Module(stem, base, **common)
    return LoConModule(stem, base, weight_decompose=args.dora_wd, **common)


def _uses_lycoris(args: NetworkArgs | None) -> bool:
    return args is not None and (args.algo in ("loha", "lokr", "ia3") or args.dora_wd)


class LoRANetwork(nn.Module):
    """All adapters of a run. Adapters are registered under their file stems."""

    def __init__(self, components: Components, rank: int, alpha: float | None, train_unet: bool = True,
                 train_text_encoder: bool = True, dropout: float = 0.0, conv_dim: int | None = None,
                 conv_alpha: float | None = None, args: NetworkArgs | None = None):
        super().__init__()
        self.args = args
        self.unet_stems: list[str] = []
        self.te_stems: list[list[str]] = [[] for _ in components.text_encoders]
        # The family says which modules get adapters and their names; with LoCon (conv_dim) its k x k convs too.
        for target in components.family.adapter_targets(components, train_unet, train_text_encoder,
                                                        locon=bool(conv_dim)):
            if target.conv:
                self._add(target.stem, target.module, conv_dim, conv_alpha, dropout)
            else:
                self._add(target.stem, target.module, rank, alpha, dropout)
            (self.unet_stems if target.text_encoder is None else self.te_stems[target.text_encoder]).append(
                target.stem)

    def _add(self, stem: str, module: nn.Module, rank: int, alpha, dropout) -> None:
        if stem in self._modules:
            raise RuntimeError(f"two modules map to the LoRA name {stem}")
        if _uses_lycoris(self.args):
            self.add_module(stem, lycoris_adapter(stem, module, rank, alpha, dropout, self.args))
        else:
            args = self.args or NetworkArgs()
            self.add_module(stem, LoRAModule(stem, module, rank, alpha, dropout, args.rank_dropout,
                                             args.module_dropout))

    def adapters(self) -> list[nn.Module]:
        return list(self.children())

    def attach(self) -> LoRANetwork:
        for m in self.adapters():
            m.attach() if isinstance(m, LoRAModule) else m.apply_to()
        return self

    def detach_from_base(self) -> None:
        for m in self.adapters():
            if isinstance(m, LoRAModule):
                m.detach_from_base()
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

    def param_groups(self, unet_lr: float, te_lrs: list[float]) -> list[dict]:
        groups = []
        if self.unet_stems:
            groups.append({"params": [p for s in self.unet_stems for p in self._modules[s].parameters()],
                           "lr": unet_lr, "name": "unet"})
        for te_index, stems in enumerate(self.te_stems):
            if stems:
                lr = te_lrs[min(te_index, len(te_lrs) - 1)]
                groups.append({"params": [p for s in stems for p in self._modules[s].parameters()], "lr": lr,
                               "name": f"text_encoder{te_index + 1 if len(self.te_stems) > 1 else ''}"})
        return [g for g in groups if g["lr"] > 0]

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

