"""Import a Kohya_ss GUI configuration (the flat JSON its "Save config" writes) as LoRA Studio settings.

Kohya_ss's JSON uses its GUI's field names; most are sd-scripts names, some are not (``epoch``, ``optimizer``,
``max_resolution``, ``lr_warmup`` in percent, ``LoRA_type``, ``xformers`` as "xformers"/"sdpa"/"none"). Empty values
and the zeros that mean "off" in that GUI are left unset. Anything we cannot carry over is listed, never dropped
silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.schema import BY_NAME, UNSUPPORTED
from ..config.values import parse_value
from ..errors import ConfigError

# Kohya_ss GUI field -> our setting, where the names differ.
RENAMED = {"optimizer": "optimizer_type"}
# In the Kohya_ss GUI a 0 in these fields means "not set" / "off".
ZERO_IS_UNSET = {"max_train_epochs", "max_train_steps", "save_every_n_epochs", "save_every_n_steps",
                 "save_last_n_epochs", "sample_every_n_epochs", "sample_every_n_steps", "min_snr_gamma", "seed",
                 "max_token_length", "adaptive_noise_scale", "multires_noise_iterations", "ip_noise_gamma",
                 "scale_weight_norms", "min_timestep"}
LORA_TYPES = {"Standard": "networks.lora", "Kohya LoCon": "networks.lora"}
# Kohya_ss "LoRA type" -> LyCORIS algo (network_module = "lycoris.kohya")
LYCORIS_TYPES = {"LyCORIS/LoCon": "locon", "LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr", "LyCORIS/iA3": "ia3"}


@dataclass
class KohyaImport:
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample_prompt_text: str = ""  # the GUI keeps prompts as text; the caller writes them to a file
    ignored: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"Imported {len(self.settings)} setting(s) from the Kohya_ss configuration."]
        lines += [f"- {n}" for n in self.notes]
        if self.ignored:
            lines.append(f"- {len(self.ignored)} Kohya_ss GUI-only field(s) have no meaning for training here and "
                         f"were skipped: {', '.join(sorted(self.ignored))}")
        return "\n".join(lines)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _put(result: KohyaImport, name: str, value: Any, source_key: str) -> None:
    if _empty(value):
        return
    if name in ZERO_IS_UNSET and not isinstance(value, bool) and value in (0, "0"):
        return
    try:
        result.settings[name] = parse_value(BY_NAME[name], value)
    except ConfigError as exc:
        result.notes.append(f"{source_key} = {value!r} was not imported: {exc}")


def convert(data: dict[str, Any]) -> KohyaImport:
    result = KohyaImport()
    data = dict(data)
    special = {"LoRA_type", "xformers", "lr_warmup", "lr_warmup_steps", "optimizer_args", "sample_prompts",
               "unet_lr", "text_encoder_lr", "max_resolution", "sdxl", "additional_parameters", "epoch",
               "conv_dim", "conv_alpha", "dora_wd", "factor"}

    # "Max train epoch" overrides "Epoch" in the Kohya_ss GUI.
    _put(result, "max_train_epochs", data.get("epoch"), "epoch")

    lora_type = data.get("LoRA_type")
    if not _empty(lora_type):
        if lora_type in LORA_TYPES:
            result.settings["network_module"] = LORA_TYPES[lora_type]
            if lora_type == "Kohya LoCon" and not _empty(data.get("conv_dim")) and int(data["conv_dim"]) > 0:
                conv_alpha = data.get("conv_alpha")
                result.settings["network_args"] = [f"conv_dim={int(data['conv_dim'])}"] + (
                    [f"conv_alpha={float(conv_alpha):g}"] if not _empty(conv_alpha) else [])
        elif lora_type in LYCORIS_TYPES:
            args = [f"algo={LYCORIS_TYPES[lora_type]}"]
            if not _empty(data.get("conv_dim")) and int(data["conv_dim"]) > 0 and lora_type != "LyCORIS/iA3":
                args += [f"conv_dim={int(data['conv_dim'])}", f"conv_alpha={float(data.get('conv_alpha') or 1):g}"]
            if data.get("dora_wd"):
                args.append("dora_wd=true")
            if lora_type == "LyCORIS/LoKr" and not _empty(data.get("factor")) and int(data["factor"]) != -1:
                args.append(f"factor={int(data['factor'])}")
            result.settings["network_module"] = "lycoris.kohya"
            result.settings["network_args"] = args
        else:
            result.notes.append(f"LoRA type '{lora_type}' is not supported; standard LoRA is used")

    attention = data.get("xformers")
    if attention in (True, "xformers"):
        result.settings["xformers"] = True
    elif attention == "sdpa":
        result.settings["sdpa"] = True

    if not _empty(data.get("max_resolution")):
        sides = [p.strip() for p in str(data["max_resolution"]).split(",")]
        _put(result, "resolution", sides[0] if len(set(sides)) == 1 else ",".join(sides), "max_resolution")

    warmup_steps = data.get("lr_warmup_steps")
    if not _empty(warmup_steps) and float(warmup_steps) > 0:
        _put(result, "lr_warmup_steps", warmup_steps, "lr_warmup_steps")
    elif not _empty(data.get("lr_warmup")) and float(data["lr_warmup"]) > 0:
        _put(result, "lr_warmup_steps", float(data["lr_warmup"]) / 100.0, "lr_warmup")  # percent of the steps

    if not _empty(data.get("optimizer_args")):
        _put(result, "optimizer_args", str(data["optimizer_args"]), "optimizer_args")

    # Kohya_ss: U-Net and TE learning rates of 0 both mean "use the learning rate"; one 0 beside a non-zero other
    # means "do not train that part", which is what its users expect (kohya_ss #2615) and what 0 means here.
    unet_lr, te_lr = data.get("unet_lr"), data.get("text_encoder_lr")
    both_zero = all(_empty(v) or float(v) == 0 for v in (unet_lr, te_lr))
    if not both_zero:
        for key, value in (("unet_lr", unet_lr), ("text_encoder_lr", te_lr)):
            if not _empty(value):
                _put(result, key, value, key)
                if float(value) == 0:
                    result.notes.append(f"{key} = 0: that part of the model is not trained")

    prompts = data.get("sample_prompts")
    if not _empty(prompts):
        result.sample_prompt_text = str(prompts)

    if data.get("sdxl"):
        result.notes.append("sdxl = true: the model family is detected from the checkpoint itself")
    if not _empty(data.get("additional_parameters")):
        result.notes.append(f"Additional parameters were not imported (set each as its own field): "
                            f"{data['additional_parameters']}")

    for key, value in data.items():
        if key in special:
            continue
        name = RENAMED.get(key, key)
        if name in BY_NAME:
            _put(result, name, value, key)
        elif key in UNSUPPORTED:
            default = UNSUPPORTED[key]
            if _empty(value) or value == default or value in (0, False):
                continue
            result.notes.append(f"{key} = {value!r} is an sd-scripts option LoRA Studio does not support yet; "
                                "left out")
        else:
            result.ignored.append(key)
    return result


def read_kohya_json(path: str | Path) -> KohyaImport:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"Kohya_ss config not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a Kohya_ss JSON configuration: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a Kohya_ss JSON configuration (expected an object of settings)")
    return convert(data)
