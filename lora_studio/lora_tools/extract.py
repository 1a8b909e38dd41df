"""``lora-studio lora extract``: a LoRA from a fine-tuned model and its base, as sd-scripts'
networks/extract_lora_from_models.py makes it: per LoRA target, the SVD of (tuned - base) cut to ``dim`` (``conv_dim``
for 3x3 convolutions, which are only extracted when it is given), up and down clamped at the ``clamp_quantile`` of
their values, alpha = the rank. The text encoders are left out when no weight of theirs differs by more than
``min_diff`` (a model whose text encoder was not trained). A dynamic method (sv_ratio, sv_fro, sv_cumulative)
chooses each module's rank up to ``dim``, as ``resize`` does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import UserError
from ..models.family import TargetSpec
from ..models.loading import load_components
from .common import check_output, history_entry, write_output
from ..tool_progress import phase, track
from .resize import DYNAMIC_METHODS, choose_rank

log = logging.getLogger("lora_studio")


def _targets(components, conv: bool) -> dict[str, tuple[torch.nn.Module, bool]]:
    spec = TargetSpec(conv_blocks=conv, kxk_convs=conv)
    return {t.stem: (t.module, t.text_encoder is not None)
            for t in components.family.adapter_targets(components, True, True, spec) if not t.norm}


def extract_lora(model: str | Path, tuned: str | Path, out: str | Path, dim: int = 4, conv_dim: int | None = None,
                 clamp_quantile: float = 0.99, min_diff: float = 0.01, dynamic_method: str | None = None,
                 dynamic_param: float | None = None, device: str = "cpu", save_precision: str = "float",
                 v2: bool = False, show_progress: bool = True) -> Path:
    if dynamic_method and (dynamic_method not in DYNAMIC_METHODS or not dynamic_param):
        raise UserError(f"dynamic_method must be one of {', '.join(DYNAMIC_METHODS)}, with dynamic_param")
    model, tuned = Path(model).expanduser(), Path(tuned).expanduser()
    out = check_output(out, [model, tuned])
    phase("loading the models")
    base_c = load_components(str(model), None, v2, setting="--model")
    tuned_c = load_components(str(tuned), None, v2, setting="--tuned")
    if type(base_c.family) is not type(tuned_c.family):
        raise UserError(f"{model.name} is {base_c.family.title} but {tuned.name} is {tuned_c.family.title}")
    base_t, tuned_t = _targets(base_c, conv_dim is not None), _targets(tuned_c, conv_dim is not None)
    if set(base_t) != set(tuned_t):
        raise UserError(f"{model.name} and {tuned.name} have different layers: is one of them another model size?")
    diffs: dict[str, torch.Tensor] = {}
    te_differs = False
    for stem, (module, in_te) in base_t.items():
        diff = tuned_t[stem][0].weight.detach().float().to(device) - module.weight.detach().float().to(device)
        if in_te and float(diff.abs().max()) > min_diff:
            te_differs = True
        diffs[stem] = diff
    if not te_differs:
        log.info("the text encoders differ by at most %g (min_diff): extracting the U-Net only", min_diff)
        diffs = {s: d for s, d in diffs.items() if not base_t[s][1]}
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for stem, diff in track(diffs.items(), "extracting", show=show_progress, total=len(diffs)):
            kxk = diff.ndim == 4 and diff.shape[2:] != (1, 1)
            cap = min(conv_dim if kxk else dim, diff.shape[0], diff.shape[1])
            u, s, vh = torch.linalg.svd(diff.flatten(1), full_matrices=False)
            rank = choose_rank(s, cap, dynamic_method, dynamic_param)
            up, down = u[:, :rank] * s[:rank], vh[:rank]
            if clamp_quantile < 1:
                high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
                up, down = up.clamp(-high, high), down.clamp(-high, high)
            tensors[f"{stem}.lora_up.weight"] = up.reshape(diff.shape[0], rank, *([1, 1] if diff.ndim == 4 else []))
            tensors[f"{stem}.lora_down.weight"] = down.reshape(rank, *diff.shape[1:])
            tensors[f"{stem}.alpha"] = torch.tensor(float(rank))
    phase("writing")
    family = base_c.family
    net_args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_dim))} if conv_dim else {}
    metadata = {"ss_v2": str(bool(v2)), "ss_base_model_version": family.base_model_version,
                "ss_network_module": "networks.lora", "ss_network_dim": str(dim), "ss_network_alpha": str(float(dim)),
                "ss_network_args": str(net_args).replace("'", '"'), "ss_output_name": out.stem,
                "modelspec.title": out.stem, "modelspec.architecture": family.architecture(False)}
    entry = history_entry("extract", [model, tuned], {"dim": dim, "conv_dim": conv_dim, "clamp_quantile":
                                                      clamp_quantile, "min_diff": min_diff,
                                                      "dynamic_method": dynamic_method, "dynamic_param": dynamic_param})
    return write_output(out, tensors, save_precision, metadata, entry)
