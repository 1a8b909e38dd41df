"""Read a kohya-format LoRA file (ours, sd-scripts', LyCORIS's) and apply it to a loaded base model at a strength.

A file holds, per module, tensors under ``<stem>.<suffix>``; the stem names the module in the base model
(``lora_unet_<path>``, ``lora_te_``/``lora_te1_``/``lora_te2_``/``lora_te3_<path>``, or, where a family allows it,
the module's dotted path: Flux's ``double_blocks.0.img_attn.qkv`` / ``diffusion_model.`` + path, as ComfyUI reads
them, with ``lora_A`` / ``lora_B`` read as down / up) and the suffixes say the kind:

  LoRA / LoCon  ``lora_down.weight``, ``lora_up.weight`` (+ ``lora_mid.weight``: LoCon's Tucker core)
  LoHa          ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (+ ``hada_t1``, ``hada_t2``)
  LoKr          ``lokr_w1`` or ``lokr_w1_a``/``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a``/``lokr_w2_b`` (+ ``lokr_t2``)
  full          ``diff`` (+ ``diff_b``)
  (IA)3         ``weight``, ``on_input``
  norm          ``w_norm``, ``b_norm``
  any of the first three may carry ``alpha`` and ``dora_scale`` (DoRA)

Each module's weight change ("delta") is computed as AUTOMATIC1111 and ComfyUI compute it: LoRA, LoCon and LoHa
scaled by alpha / rank (no alpha: 1); LoKr by alpha / rank only when one of its factors is itself low-rank
(``lokr_w1_a``/``lokr_w2_a``), else 1 (LyCORIS sets alpha = rank then); full, (IA)3 and norm unscaled. A strength is
then the multiplier on the delta, as in both UIs: ``W = W0 + strength * delta``. With DoRA, the delta is the
decomposed weight minus W0 (ComfyUI's reading of strength: a straight line from W0 to the DoRA weight).

``LoRAStack`` applies one or more files at once to a loaded model (each at its own strength) by changing the
weights in place, computed in float32 and cast to each weight's dtype; strength 0 everywhere puts back the saved
original weights bit for bit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .io_utils import read_safetensors_header

log = logging.getLogger("lora_studio")

# A key suffix that says which kind of module a stem is, checked in this order.
_MARKERS = (("lora_up.weight", "lora"), ("lora_down.weight", "lora"), ("hada_w1_a", "loha"), ("lokr_w1", "lokr"),
            ("lokr_w1_a", "lokr"), ("lokr_w2", "lokr"), ("lokr_w2_a", "lokr"), ("diff", "full"),
            ("w_norm", "norm"), ("on_input", "ia3"))
# The suffixes each kind reads; anything else under the stem is reported as unknown.
_KIND_KEYS = {
    "lora": {"lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "dora_scale"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha", "dora_scale"},
    "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha",
             "dora_scale"},
    "full": {"diff", "diff_b", "alpha"},
    "ia3": {"weight", "on_input"},
    "norm": {"w_norm", "b_norm"},
}
_REQUIRED = {"lora": ("lora_down.weight", "lora_up.weight"), "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a",
                                                                       "hada_w2_b"),
             "full": ("diff",), "ia3": ("weight",), "norm": ("w_norm",)}
# LyCORIS kinds neither computed here nor silently skipped: a file with them is refused with their name.
_UNSUPPORTED = {"oft_blocks": "Diag-OFT / BOFT", "oft_diag": "OFT", "a1.weight": "GLoRA", "a2.weight": "GLoRA",
                "b1.weight": "GLoRA", "b2.weight": "GLoRA"}
STEM_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")  # lora_te3_: Flux's T5
# the suffixes a module's key may end with, longest first (a stem that is a dotted module path ends where they begin)
_SUFFIXES = sorted({s for keys in _KIND_KEYS.values() for s in keys} | {"lora_A.weight", "lora_B.weight"},
                   key=len, reverse=True)
# ComfyUI's lora_A / lora_B names of a module named by its path: LoRA's down and up
_PEFT_NAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def path_prefixes() -> tuple[str, ...]:
    """The module paths a family lets a LoRA file name as they are (Flux: ``double_blocks.``, ``diffusion_model.``
    ...), as each family of ``models.registry`` declares them."""
    from .models.registry import FAMILIES

    return tuple(sorted({p for family in FAMILIES for p in getattr(family, "lora_path_prefixes", ())}))


def split_key(key: str, dotted: tuple[str, ...]) -> tuple[str, str] | None:
    """(stem, suffix) of a LoRA file's key, or None for a key no module name starts: ``lora_unet_x.lora_up.weight``
    splits at its first dot; a key that names the module by a path of ``dotted`` (``double_blocks.0.img_attn.qkv.
    lora_up.weight``) where a known suffix begins, lora_A / lora_B read as lora_down / lora_up."""
    stem, dot, suffix = key.partition(".")
    if dot and stem.startswith(STEM_PREFIXES):
        return stem, suffix
    if key.startswith(dotted):
        for suffix in _SUFFIXES:
            if key.endswith("." + suffix) and len(key) > len(suffix) + 1:
                return key[:-len(suffix) - 1], _PEFT_NAMES.get(suffix, suffix)
    return None


@dataclass
class ModuleWeights:
    """One module's tensors from a file, and how they change its weight."""
    stem: str
    kind: str  # lora | loha | lokr | full | ia3 | norm
    tensors: dict[str, torch.Tensor]
    _moved: dict = field(default_factory=dict, repr=False, compare=False)  # the tensors on a GPU, moved once

    def _t(self, name: str, device) -> torch.Tensor | None:
        value = self.tensors.get(name)
        if value is None:
            return None
        if value.device != device:
            key = (name, str(device))
            if key not in self._moved:
                self._moved[key] = value.to(device)
            value = self._moved[key]
        return value.to(torch.float32)

    @property
    def alpha(self) -> float | None:
        value = self.tensors.get("alpha")
        return None if value is None else float(value.float().reshape(-1)[0])

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by (None: the delta is not scaled)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":  # as ComfyUI: the rank of the decomposed factor (w2's when both are)
            rank = None
            for name in ("lokr_w1_b", "lokr_w2_b"):
                if name in t:
                    rank = int(t[name].shape[0])
            return rank
        return None

    @property
    def scale(self) -> float:
        alpha, rank = self.alpha, self.rank
        return alpha / rank if alpha is not None and rank else 1.0

    def delta_numel(self) -> int:
        """How many weights the delta has, from the tensor shapes alone (to refuse a file of another model early)."""
        t = self.tensors
        if self.kind == "lora":
            down, up, mid = t["lora_down.weight"], t["lora_up.weight"], t.get("lora_mid.weight")
            inner = down.shape[1] * math.prod(mid.shape[2:]) if mid is not None else math.prod(down.shape[1:])
            return int(up.shape[0] * inner)
        if self.kind == "loha":
            if "hada_t1" in t:
                return int(t["hada_w1_a"].shape[1] * t["hada_w1_b"].shape[1] * math.prod(t["hada_t1"].shape[2:]))
            return int(t["hada_w1_a"].shape[0] * t["hada_w1_b"].shape[1])
        if self.kind == "lokr":
            return self._lokr_half(1) * self._lokr_half(2)
        if self.kind == "full":
            return int(t["diff"].numel())
        return -1  # (IA)3 and norm: checked against the module by their own shapes

    def _lokr_half(self, i: int) -> int:
        t = self.tensors
        if f"lokr_w{i}" in t:
            return int(t[f"lokr_w{i}"].numel())
        a, b = t[f"lokr_w{i}_a"], t[f"lokr_w{i}_b"]
        if f"lokr_t{i}" in t:
            return int(a.shape[1] * b.shape[1] * math.prod(t[f"lokr_t{i}"].shape[2:]))
        return int(a.shape[0] * math.prod(b.shape[1:]))

    @torch.no_grad()
    def delta(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight delta, bias delta or None) in float32 for the module whose original weight is ``weight`` (float32,
        on the device to compute on)."""
        dev = weight.device
        get = lambda name: self._t(name, dev)  # noqa: E731
        if self.kind == "full":
            return get("diff").reshape(weight.shape), get("diff_b")
        if self.kind == "norm":
            return get("w_norm").reshape(weight.shape), get("b_norm")
        if self.kind == "ia3":
            w = get("weight").reshape(-1)
            on_input = bool(self.tensors.get("on_input", torch.tensor(0)).reshape(-1)[0])
            shape = [1] * weight.ndim
            shape[1 if on_input else 0] = -1
            return weight * w.reshape(shape), None
        if self.kind == "lora":
            up, down, mid = get("lora_up.weight"), get("lora_down.weight"), get("lora_mid.weight")
            if mid is not None:  # LoCon's Tucker core: down [r, in, 1, 1], mid [r, r, k, k] -> a [r, in, k, k] down
                down = (down.transpose(0, 1).flatten(1) @ mid.transpose(0, 1).flatten(1)).reshape(
                    down.shape[1], mid.shape[0], *mid.shape[2:]).transpose(0, 1)
            diff = up.flatten(1) @ down.flatten(1)
        elif self.kind == "loha":
            w1a, w1b, w2a, w2b = get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b")
            t1, t2 = get("hada_t1"), get("hada_t2")
            if t1 is not None and t2 is not None:
                m1 = torch.einsum("i j k l, j r, i p -> p r k l", t1, w1b, w1a)
                m2 = torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a)
            else:
                m1, m2 = w1a @ w1b.flatten(1), w2a @ w2b.flatten(1)
            diff = m1 * m2
        else:  # lokr
            w1 = get("lokr_w1")
            if w1 is None:
                w1 = get("lokr_w1_a") @ get("lokr_w1_b")
            w2 = get("lokr_w2")
            if w2 is None:
                t2, w2a, w2b = get("lokr_t2"), get("lokr_w2_a"), get("lokr_w2_b")
                w2 = torch.einsum("i j k l, j r, i p -> p r k l", t2, w2b, w2a) if t2 is not None else w2a @ w2b
            if w2.ndim == 4:
                w1 = w1[:, :, None, None]
            diff = torch.kron(w1.contiguous(), w2.contiguous())
        diff = diff.reshape(weight.shape) * self.scale
        dora = get("dora_scale")
        if dora is not None:
            diff = _decomposed(weight, diff, dora) - weight
        return diff, None


def _decomposed(weight: torch.Tensor, diff: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: W0 + delta rescaled to the magnitudes ``dora_scale``, per output row when it has one value per output
    (LyCORIS's default, wd_on_out) or per input column otherwise, as LyCORIS merges it."""
    merged = weight + diff
    if dora_scale.shape[0] == weight.shape[0] and dora_scale.numel() == weight.shape[0]:
        norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (merged.ndim - 1))
        dora_scale = dora_scale.reshape(norm.shape)
    else:
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True).reshape(
            merged.shape[1], *[1] * (merged.ndim - 1)).transpose(0, 1)
        dora_scale = dora_scale.reshape(norm.shape)
    return merged * (dora_scale / (norm + torch.finfo(torch.float32).eps))


@dataclass
class LoRAFile:
    """A LoRA file as read: its modules by stem, the keys nobody reads, and its metadata."""
    path: Path
    modules: dict[str, ModuleWeights]
    unknown_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.modules.values():
            out[m.kind] = out.get(m.kind, 0) + 1
        return out


def _few(names: Sequence[str], n: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def read_lora_file(path: str | Path) -> LoRAFile:
    """Read a kohya-format LoRA/LyCORIS ``.safetensors`` file. Refuses (UserError) a missing file, one that is not
    safetensors, one with no LoRA modules in it, and one whose modules are of a kind not computed here."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    read_safetensors_header(path, "LoRA file")  # missing, a folder, truncated or of another kind: one clear message
    try:
        with safe_open(str(path), "pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise UserError(f"{path.name}: cannot read it as a .safetensors file ({type(exc).__name__}: {exc})") from None
    by_stem: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    dotted = path_prefixes()
    for key, value in tensors.items():
        parts = split_key(key, dotted)
        if parts is None:
            unknown.append(key)
            continue
        by_stem.setdefault(parts[0], {})[parts[1]] = value
    modules: dict[str, ModuleWeights] = {}
    unsupported: dict[str, list[str]] = {}
    for stem, parts in by_stem.items():
        kind = next((k for marker, k in _MARKERS if marker in parts), None)
        if kind is None:
            algo = next((name for suffix, name in _UNSUPPORTED.items() if suffix in parts), None)
            if algo is not None:
                unsupported.setdefault(algo, []).append(stem)
            else:
                unknown += [f"{stem}.{s}" for s in parts]
            continue
        missing = [s for s in _REQUIRED.get(kind, ()) if s not in parts]
        if kind == "lokr":
            missing = [f"lokr_w{i}" for i in (1, 2) if f"lokr_w{i}" not in parts and not
                       {f"lokr_w{i}_a", f"lokr_w{i}_b"} <= set(parts)]
        if missing:
            raise UserError(f"{path.name}: the {kind} module {stem} lacks {', '.join(missing)}; is the file "
                            "complete?")
        unknown += [f"{stem}.{s}" for s in parts if s not in _KIND_KEYS[kind]]
        modules[stem] = ModuleWeights(stem, kind, {s: v for s, v in parts.items() if s in _KIND_KEYS[kind]})
    if unsupported:
        algos = ", ".join(f"{algo} ({len(stems)} modules, e.g. {stems[0]})" for algo, stems in unsupported.items())
        raise UserError(f"{path.name}: LyCORIS {algos} cannot be applied here yet (LoRA, LoCon, LoHa, LoKr, "
                        "(IA)3, full and norm modules, with or without DoRA, can)")
    if not modules:
        raise UserError(f"{path.name} is not a kohya-format LoRA: none of its {len(tensors)} tensors is named "
                        f"lora_unet_* / lora_te*_* with LoRA, LoHa or LoKr weights (e.g. {_few(sorted(tensors))})")
    if unknown:
        log.warning("%s: %d key(s) are not LoRA weights LoRA Studio reads and are left out: %s", path.name,
                    len(unknown), _few(sorted(unknown)))
    return LoRAFile(path, modules, sorted(unknown), dict(metadata))


def lora_module_table(components) -> dict[str, nn.Module]:
    """Every LoRA stem a file may use for this model -> the module it changes (the family's names and aliases)."""
    return components.family.lora_names(components)


class LoRAStack:
    """One or more LoRA files on a loaded model, each at its own strength, applied by changing the weights in place.

    ``apply([s1, s2, ...])`` sets every touched weight to ``W0 + s1 * delta1 + s2 * delta2 ...`` (float32, cast to
    the weight's dtype); all strengths 0 (or ``restore()``) put back the original weights exactly. The originals
    are kept on the CPU. Use it as a context manager to restore on the way out."""

    def __init__(self, components, files: Sequence[LoRAFile | str | Path]):
        self.files = [f if isinstance(f, LoRAFile) else read_lora_file(f) for f in files]
        table = lora_module_table(components)
        self.report: list[dict] = []
        # module -> [(file index, its weights)]
        self._targets: dict[nn.Module, list[tuple[int, ModuleWeights]]] = {}
        for index, lora in enumerate(self.files):
            unmatched, wrong = [], []
            for stem, weights in lora.modules.items():
                module = table.get(stem)
                if module is None:
                    unmatched.append(stem)
                    continue
                if not _fits(weights, module):
                    wrong.append(f"{stem} ({weights.kind}, module weight {tuple(module.weight.shape)})")
                    continue
                self._targets.setdefault(module, []).append((index, weights))
            if wrong:
                raise UserError(f"{lora.path.name} does not fit this base model: {len(wrong)} module(s) have other "
                                f"shapes, e.g. {_few(wrong, 2)}. Was it trained for another model type?")
            if len(unmatched) == len(lora.modules):
                raise UserError(f"{lora.path.name}: none of its {len(unmatched)} modules is in this base model "
                                f"({components.family.title}), e.g. {_few(sorted(unmatched), 2)}. Was it trained for "
                                "another model type?")
            if unmatched:
                log.warning("%s: %d of its %d modules are not in this base model and are left out: %s",
                            lora.path.name, len(unmatched), len(lora.modules), _few(sorted(unmatched)))
            self.report.append({"file": str(lora.path), "modules": len(lora.modules) - len(unmatched),
                                "kinds": lora.kinds(), "unmatched": sorted(unmatched),
                                "unknown_keys": lora.unknown_keys})
        self._originals = {m: (m.weight.detach().to("cpu", copy=True),
                               None if getattr(m, "bias", None) is None else m.bias.detach().to("cpu", copy=True))
                           for m in self._targets}
        self.strengths = [0.0] * len(self.files)

    @torch.no_grad()
    def apply(self, strengths: Sequence[float]) -> None:
        strengths = [float(s) for s in strengths]
        if len(strengths) != len(self.files):
            raise ValueError(f"{len(strengths)} strengths for {len(self.files)} LoRA files")
        try:
            for module, entries in self._targets.items():
                w0, b0 = self._originals[module]
                weight, bias = module.weight, getattr(module, "bias", None)
                active = [(strengths[i], mw) for i, mw in entries if strengths[i] != 0]
                if not active:
                    weight.copy_(w0)
                    if b0 is not None:
                        bias.copy_(b0)
                    continue
                base = w0.to(weight.device, torch.float32)
                new_w, new_b = base.clone(), None
                for strength, mw in active:
                    dw, db = mw.delta(base)
                    new_w += strength * dw
                    if db is not None and b0 is not None:
                        new_b = (b0.to(bias.device, torch.float32) if new_b is None else new_b) + strength * \
                            db.reshape(b0.shape)
                weight.copy_(new_w.to(weight.dtype))
                if b0 is not None:
                    bias.copy_(b0 if new_b is None else new_b.to(bias.dtype))
        except Exception:
            self.restore()
            raise
        self.strengths = strengths

    def restore(self) -> None:
        with torch.no_grad():
            for module, (w0, b0) in self._originals.items():
                module.weight.copy_(w0)
                if b0 is not None:
                    module.bias.copy_(b0)
        self.strengths = [0.0] * len(self.files)

    def __enter__(self) -> LoRAStack:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def _fits(weights: ModuleWeights, module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    if weight is None:
        return False
    if weights.kind == "norm":
        return weights.tensors["w_norm"].numel() == weight.numel()
    if weights.kind == "ia3":
        on_input = bool(weights.tensors.get("on_input", torch.tensor(0)).reshape(-1)[0])
        return weight.ndim >= 2 and weights.tensors["weight"].numel() == weight.shape[1 if on_input else 0]
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and weights.kind != "full":
        return False
    return weights.delta_numel() == weight.numel()
