"""Import a Kohya_ss GUI configuration (the flat JSON its "Save config" writes) as LoRA Studio settings.

Every value becomes what the Kohya_ss GUI would pass to sd-scripts (its ``train_model``): ``epoch`` only fills in the
step count, ``lr_warmup`` is a percentage, a JSON 0 often means "sd-scripts' default", the noise type picks which
noise keys are passed, ``LoRA_type`` becomes a network module and its arguments. A Flux.1 / Chroma configuration
(``flux1_checkbox``, LoRA type "Flux1") is read as the GUI's Flux.1 panel passes it to ``flux_train_network.py``: its
paths and recipe values as written, its network fields as ``networks.lora_flux`` arguments, its deprecated fields
converted as sd-scripts converts them, the SD-only fields sd-scripts' Flux training does not read left out. An SD3 /
SD3.5, Anima or Lumina 2 configuration (``sd3_checkbox``, ``anima_checkbox``, ``lumina_checkbox``; LoRA type "Anima",
"Lumina") is read the same way from the GUI's SD3, Anima and Lumina panels (``DIT_IMPORTS``). The report says, in four parts, what was carried over, what was set differently (and why), what is not supported, and
what only the Kohya_ss GUI reads.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .network_args import LORAPLUS, LYCORIS_NOT_READ, LYCORIS_PRESETS
from .optimizers import optimizer_problem
from .schema import ANIMA, BY_NAME, DIT, FLUX, LUMINA, SD, SD3, UNSUPPORTED
from .values import parse_value
from ..errors import ConfigError

# Kohya_ss GUI field -> our setting, where the names differ.
RENAMED = {"optimizer": "optimizer_type", "lora_network_weights": "network_weights"}
# Fields the Kohya_ss GUI passes only when not 0 (a 0 there means "off" or "sd-scripts' default").
ZERO_IS_UNSET = {"max_train_epochs", "max_train_steps", "save_every_n_epochs", "save_every_n_steps",
                 "save_last_n_epochs", "sample_every_n_epochs", "sample_every_n_steps", "min_snr_gamma", "seed",
                 "max_token_length", "adaptive_noise_scale", "multires_noise_iterations", "ip_noise_gamma",
                 "scale_weight_norms", "min_timestep", "vae_batch_size", "save_last_n_steps",
                 "save_last_n_steps_state", "save_last_n_epochs_state", "multires_noise_discount", "clip_skip",
                 "min_bucket_reso", "v_pred_like_loss"}
# The keys handled by their own rule below.
SPECIAL = {"LoRA_type", "xformers", "lr_warmup", "lr_warmup_steps", "optimizer_args", "sample_prompts", "unet_lr",
           "text_encoder_lr", "max_resolution", "sdxl", "additional_parameters", "epoch", "max_train_epochs",
           "max_train_steps", "conv_dim", "conv_alpha", "dora_wd", "factor", "noise_offset_type", "noise_offset",
           "adaptive_noise_scale", "noise_offset_random_strength", "multires_noise_iterations",
           "multires_noise_discount", "max_grad_norm", "caption_extension", "sdxl_no_half_vae",
           "sdxl_cache_text_encoder_outputs", "rank_dropout", "module_dropout", "use_wandb", "lr_scheduler",
           "learning_rate", "flux1_checkbox", "sd3_checkbox", "anima_checkbox", "lumina_checkbox", "LyCORIS_preset",
           "unit", "constrain", "bucket_reso_steps", "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
           "resume_from_huggingface"}
# What only the Kohya_ss GUI reads: the accelerate launcher's fields and the GUI's own state.
GUI_ONLY = {"num_cpu_threads_per_process", "num_processes", "num_machines", "multi_gpu", "gpu_ids",
            "main_process_port", "extra_accelerate_launch_args", "model_list", "save_as_bool", "stop_text_encoder_training",
            "stop_text_encoder_training_pct", "no_token_padding", "conv_dims", "conv_alphas",
            "file_path", "save_as", "lowvram"}
# LoRA_type -> network_module for sd-scripts' own networks
KOHYA_TYPES = {"Standard": "networks.lora", "Kohya LoCon": "networks.lora", "LoRA-FA": "networks.lora_fa",
               "Kohya DyLoRA": "networks.dylora"}
LYCORIS_TYPES = {"LyCORIS/LoCon": "locon", "LoCon": "locon", "LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr",
                 "LyCORIS/iA3": "ia3", "LyCORIS/DyLoRA": "dylora", "LyCORIS/GLoRA": "glora",
                 "LyCORIS/BOFT": "boft", "LyCORIS/Diag-OFT": "diag-oft", "LyCORIS/Native Fine-Tuning": "full"}
NATIVE_LYCORIS_TYPES = {"Kohya LoHa": "loha", "Kohya LoKr": "lokr"}
OTHER_FAMILY_TYPES = {"HunyuanImage-2.1": "HunyuanImage"}
TRAINED_FAMILIES = "SD1.x, SD2.x, SDXL, Flux.1, Chroma, SD3 / SD3.5, Anima and Lumina 2"
# The Kohya_ss GUI's Flux.1 LoRA types: LoRA (sd-scripts' networks.lora_flux) and OFT (networks.oft_flux)
FLUX_TYPES = ("Flux1", "Flux1 OFT")
FLUX_MODULE = "networks.lora_flux"
# The Kohya_ss GUI's Flux.1 fields (its Flux.1 panel, class_flux1.py, and the Flux-only fields of its LoRA tab) at a
# fresh GUI's values: a Flux preset without one trains with these in Kohya_ss. A Flux preset only: other presets
# leave them out (the GUI passes none of them without flux1_checkbox).
FLUX_GUI_DEFAULTS = {
    "model_type": "flux", "ae": "", "clip_l": "", "t5xxl": "", "discrete_flow_shift": 3.0,
    "model_prediction_type": "sigma_scaled", "timestep_sampling": "sigma", "apply_t5_attn_mask": False,
    "split_mode": False, "train_blocks": "all", "split_qkv": False, "train_t5xxl": False,
    "cpu_offload_checkpointing": False, "guidance_scale": 3.5, "t5xxl_max_token_length": 512,
    "enable_all_linear": False, "flux1_cache_text_encoder_outputs": False,
    "flux1_cache_text_encoder_outputs_to_disk": False, "mem_eff_save": False, "blocks_to_swap": 0,
    "single_blocks_to_swap": 0, "double_blocks_to_swap": 0, "show_timesteps": "", "show_timesteps_resolution": "1024",
    "img_attn_dim": "", "img_mlp_dim": "", "img_mod_dim": "", "single_dim": "", "txt_attn_dim": "", "txt_mlp_dim": "",
    "txt_mod_dim": "", "single_mod_dim": "", "in_dims": "", "train_double_block_indices": "all",
    "train_single_block_indices": "all", "t5xxl_lr": 0, "fp8_base_unet": False,
    "train_lora_ggpo": False, "ggpo_sigma": 0.03, "ggpo_beta": 0.01,
}
# What the GUI's switch to model_type "chroma" sets (Chroma is not guidance-distilled and needs T5's mask)
CHROMA_GUI_DEFAULTS = {"guidance_scale": 0.0, "apply_t5_attn_mask": True, "timestep_sampling": "sigmoid"}
# The fields the GUI writes into networks.lora_flux's network_args when they are not empty, in its order
FLUX_NETWORK_FIELDS = ("img_attn_dim", "img_mlp_dim", "img_mod_dim", "single_dim", "txt_attn_dim", "txt_mlp_dim",
                       "txt_mod_dim", "single_mod_dim", "in_dims", "train_double_block_indices",
                       "train_single_block_indices")
# Every Flux field the GUI saves (and the names older GUIs saved CLIP-L / T5 under): read by the Flux rules below
FLUX_FIELDS = frozenset(FLUX_GUI_DEFAULTS) | {"flux1_clip_l", "flux1_t5xxl"}
# The GUI's SD3 fields; it passes them with sd3_checkbox only (never for Flux, although sd-scripts' Flux reads them)
SD3_FIELDS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale")
SPLIT_MODE_SWAP = 18  # sd-scripts' flux_train_network: the deprecated split_mode becomes blocks_to_swap 18
# The network_args the Kohya_ss GUI writes for each LyCORIS type, in its order (its LoRA_type templates)
_LYCO_COMMON = ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
                "module_dropout", "use_tucker", "use_scalar", "rank_dropout_scale", "algo", "train_norm")
LYCORIS_FIELDS = {
    "locon": _LYCO_COMMON, "loha": _LYCO_COMMON,
    "lokr": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
             "module_dropout", "factor", "use_cp", "use_scalar", "decompose_both", "rank_dropout_scale", "algo",
             "train_norm"),
    "ia3": ("preset", "conv_dim", "conv_alpha", "train_on_input", "algo"),
    "dylora": ("preset", "conv_dim", "conv_alpha", "use_tucker", "block_size", "rank_dropout", "module_dropout",
               "algo", "train_norm"),
    "glora": ("preset", "conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout",
              "rank_dropout_scale", "algo", "train_norm"),
    "boft": ("preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
             "rank_dropout_scale", "algo", "train_norm"),
    "diag-oft": ("preset", "conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
                 "rank_dropout_scale", "constraint", "rescaled", "algo", "train_norm"),
    "full": ("preset", "rank_dropout", "module_dropout", "rank_dropout_scale", "algo", "train_norm"),
}
# The Kohya_ss GUI's own defaults (its LoRA tab, as a fresh GUI shows it) for the training fields: a preset (or an
# older JSON) without a field trains with these in Kohya_ss. The run length (epoch, max_train_*) has its own rule.
KOHYA_GUI_DEFAULTS = {
    "LoRA_type": "Standard", "v2": False, "v_parameterization": False, "sdxl": False, "save_precision": "fp16",
    "max_resolution": "512,512", "learning_rate": 0.0001, "unet_lr": 0.0001, "text_encoder_lr": 0.0001,
    "lr_scheduler": "cosine", "lr_warmup": 10, "lr_warmup_steps": 0, "lr_scheduler_num_cycles": 1,
    "lr_scheduler_power": 1.0, "train_batch_size": 1, "save_every_n_epochs": 1, "seed": 0, "cache_latents": True,
    "cache_latents_to_disk": False, "caption_extension": ".txt", "enable_bucket": True, "min_bucket_reso": 256,
    "max_bucket_reso": 2048, "bucket_reso_steps": 64, "bucket_no_upscale": True, "optimizer": "AdamW8bit",
    "optimizer_args": "", "lr_scheduler_args": "", "lr_scheduler_type": "", "max_grad_norm": 1.0,
    "mixed_precision": "fp16", "gradient_checkpointing": False, "full_fp16": False, "full_bf16": False,
    "xformers": "xformers", "mem_eff_attn": False, "shuffle_caption": False, "keep_tokens": 0, "prior_loss_weight": 1.0,
    "flip_aug": False, "clip_skip": 1, "gradient_accumulation_steps": 1, "max_token_length": 75,
    "max_data_loader_n_workers": 0, "persistent_data_loader_workers": False, "caption_dropout_rate": 0,
    "noise_offset_type": "Original", "noise_offset": 0, "noise_offset_random_strength": False,
    "adaptive_noise_scale": 0, "multires_noise_iterations": 0, "multires_noise_discount": 0.3, "ip_noise_gamma": 0,
    "ip_noise_gamma_random_strength": False, "vae_batch_size": 0, "min_snr_gamma": 0, "save_every_n_steps": 0,
    "save_last_n_steps": 0, "save_last_n_steps_state": 0, "save_last_n_epochs": 0, "save_last_n_epochs_state": 0,
    "min_timestep": 0, "max_timestep": 1000, "debiased_estimation_loss": False,
    "sdxl_cache_text_encoder_outputs": False, "sdxl_no_half_vae": False, "network_dim": 8, "network_alpha": 1,
    "dim_from_weights": False, "network_dropout": 0, "scale_weight_norms": 0, "sample_every_n_steps": 0,
    "sample_every_n_epochs": 0, "sample_sampler": "euler_a",
    # the LyCORIS fields
    "LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "factor": -1, "bypass_mode": False, "dora_wd": False,
    "use_cp": False, "use_tucker": False, "use_scalar": False, "rank_dropout_scale": False, "constrain": 0.0,
    "rescaled": False, "train_norm": False, "decompose_both": False, "train_on_input": True, "unit": 1,
    "rank_dropout": 0, "module_dropout": 0.0,
}
# The JSON's LyCORIS fields (everything the templates read from the JSON besides the shared ones)
LYCORIS_ARGS = ("use_tucker", "use_cp", "use_scalar", "train_norm", "decompose_both", "rank_dropout_scale",
                "bypass_mode", "rescaled", "train_on_input", "dora_wd", "factor")
BLOCK_ARGS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
              "block_alphas", "conv_block_dims", "conv_block_alphas")
# Settings a Kohya_ss field decides besides its own name (its value may leave them unset, as sd-scripts then runs)
_RUN_LENGTH = ("max_train_epochs", "max_train_steps")
_TRAINED_PARTS = ("unet_lr", "text_encoder_lr", "network_train_unet_only", "network_train_text_encoder_only")
DECIDES = {"LoRA_type": ("network_module", "network_args"), "xformers": ("xformers", "sdpa"), "epoch": _RUN_LENGTH,
           "max_train_epochs": _RUN_LENGTH, "max_train_steps": _RUN_LENGTH, "lr_warmup": ("lr_warmup_steps",),
           "unet_lr": _TRAINED_PARTS, "text_encoder_lr": _TRAINED_PARTS, "max_resolution": ("resolution",),
           "sdxl_no_half_vae": ("no_half_vae",), "sdxl_cache_text_encoder_outputs": ("cache_text_encoder_outputs",),
           "noise_offset_type": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength",
                                 "multires_noise_iterations", "multires_noise_discount"),
           "use_wandb": ("log_with",)}
GUI_DEFAULT_STEPS = 1600  # the Kohya_ss GUI's Max train steps field
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # what the Kohya_ss GUI counts when it computes steps


@dataclass
class KohyaImport:
    settings: dict[str, Any] = field(default_factory=dict)
    carried: list[str] = field(default_factory=list)  # keys taken over as they are
    notes: list[str] = field(default_factory=list)  # set differently, with why
    unsupported: list[str] = field(default_factory=list)  # what it does, and that it was left out
    ignored: list[str] = field(default_factory=list)  # only for the Kohya_ss GUI
    sample_prompt_text: str = ""  # the GUI keeps prompts as text; the caller writes them to a file
    named: set[str] = field(default_factory=set)  # every setting the file decides: set, or left unset (its default)

    def report(self) -> str:
        lines = [f"Imported {len(self.settings)} setting(s) from the Kohya_ss configuration."]
        if self.carried:
            lines.append(f"**Carried over as they are** ({len(self.carried)}): {', '.join(sorted(self.carried))}")
        if self.notes:
            lines.append("**Set to what Kohya_ss trains:**")
            lines += [f"- {n}" for n in self.notes]
        if self.unsupported:
            lines.append("**Not supported, left out:**")
            lines += [f"- {n}" for n in self.unsupported]
        if self.ignored:
            lines.append(f"**Only for the Kohya_ss GUI** (no meaning for training; {len(self.ignored)}): "
                         f"{', '.join(sorted(self.ignored))}")
        return "\n".join(lines)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _num(value: Any) -> float:
    try:
        return 0.0 if _empty(value) or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return 0.0


def _put(result: KohyaImport, name: str, value: Any, source_key: str, carried: bool = True) -> bool:
    if _empty(value):
        return False
    if name in ZERO_IS_UNSET and not isinstance(value, bool) and str(value).strip() in ("0", "0.0"):
        return False
    try:
        result.settings[name] = parse_value(BY_NAME[name], value)
    except ConfigError as exc:
        result.unsupported.append(f"{source_key} = {value!r} was not imported: {exc}")
        return False
    if carried:
        result.carried.append(source_key)
    return True


def config_kind(data: dict[str, Any]) -> str:
    """Which Kohya_ss tab wrote this JSON: LoRA, textual inversion, fine-tune or DreamBooth."""
    if "LoRA_type" in data:
        return "LoRA"
    if {"token_string", "init_word", "num_vectors_per_token"} & set(data):
        return "textual inversion"
    if {"train_dir", "image_folder", "use_latent_files", "dataset_repeats", "train_text_encoder", "sdxl_checkbox",
            "caption_metadata_filename"} & set(data):
        return "fine-tune"
    if {"learning_rate_te", "learning_rate_te1", "no_token_padding"} & set(data) and "train_data_dir" in data \
            and "network_dim" not in data:
        return "DreamBooth"
    return "LoRA"


def convert(data: dict[str, Any]) -> KohyaImport:
    kind = config_kind(data)
    if kind != "LoRA":
        raise ConfigError(f"this is a Kohya_ss {kind} configuration, not a LoRA one: LoRA Studio trains LoRA "
                          "adapters; save the LoRA tab's configuration in Kohya_ss and import that")
    result = KohyaImport()
    flux = is_flux(data)
    dit = dit_family(data)
    panel = _flux_defaults(data) if flux else dit.defaults if dit else {}
    filled = {k: v for k, v in {**KOHYA_GUI_DEFAULTS, **panel}.items() if k not in data}
    data = {**filled, **data}
    _run_length(result, data)
    _warmup(result, data)
    _network(result, data)
    _noise(result, data)
    _learning_rates(result, data)
    _renamed_and_defaults(result, data)
    _resume_from_hub(result, data)
    if flux:
        _flux(result, data)
    elif dit:
        _dit(result, data, dit)
    else:
        result.ignored += [k for k in data if k in FLUX_FIELDS]  # the GUI passes them for Flux only
    if not dit:  # the GUI passes its SD3, Anima and Lumina panels for their family only
        result.ignored += [k for k in data if k in DIT_PANEL_KEYS]
    families = FLUX if flux else dit.families if dit else SD
    handled = FLUX_FIELDS | DIT_PANEL_KEYS | set(dit.replaces if dit else ())
    for key, value in data.items():
        if key in SPECIAL or key in LYCORIS_ARGS or key in BLOCK_ARGS or key in GUI_ONLY or key in handled:
            continue
        name = RENAMED.get(key, key)
        if name in BY_NAME and _other_family(name, families):
            result.ignored.append(key)
        elif name in BY_NAME:
            _put(result, name, value, key)
        elif key in UNSUPPORTED:
            default = UNSUPPORTED[key]
            if _empty(value) or value == default or value in (0, False, []):
                continue
            result.unsupported.append(f"{key} = {value!r} is an sd-scripts option LoRA Studio does not support yet")
        else:
            result.ignored.append(key)
    if flux:
        _without_sd_settings(result)
    elif dit:
        _dit_after(result, dit)
    _check_optimizer(result)
    _say_masks(result)
    if flux:
        _say_flux_defaults(result, filled)
    _say_filled(result, filled)
    result.named = set(result.settings) | {RENAMED.get(k, k) for k in data if RENAMED.get(k, k) in BY_NAME} | {
        name for k in data for name in DECIDES.get(k, ())} | {dit.fields[k] for k in data if dit and k in dit.fields}
    return result


def _say_masks(result: KohyaImport) -> None:
    """Kohya_ss passes masked_loss with the image folders, where sd-scripts finds no mask and trains whole images."""
    got = result.settings
    if got.get("masked_loss") and not (got.get("alpha_mask") or got.get("conditioning_data_dir")
                                       or got.get("dataset_config")):
        result.notes.append("masked_loss = true: set the Mask folder (conditioning_data_dir, mask images named like "
                            "the training images) or Alpha mask (the images' transparency) under Advanced; without "
                            "either the whole image trains, as in sd-scripts")


def _say_filled(result: KohyaImport, filled: dict[str, Any]) -> None:
    """The fields the file lacks trained with the Kohya_ss GUI's defaults: say which, apart from what was read."""
    used = [k for k in result.carried if k in filled]
    result.carried = [k for k in result.carried if k not in filled]
    result.ignored = [k for k in result.ignored if k not in filled]
    if used:
        result.notes.append("Not in the file, so the Kohya_ss GUI's own defaults apply (as when this preset is "
                            "loaded into a fresh Kohya_ss): " + ", ".join(f"{k} = {filled[k]!r}" for k in used))


def _check_optimizer(result: KohyaImport) -> None:
    """An optimizer this machine cannot run is named now, not when training starts; AdamW stands in."""
    name = result.settings.get("optimizer_type")
    problem = optimizer_problem(name) if name else None
    if problem:
        result.settings.pop("optimizer_type")
        result.settings.pop("optimizer_args", None)
        result.unsupported.append(f"optimizer = {name!r}: {problem}; AdamW (with its default arguments) is used "
                                  "until you install it and choose it again")


def _steps_from_folder(data: dict[str, Any], epochs: float) -> int | None:
    """The Kohya_ss GUI's step count when Max train steps is 0: images x repeats of every <N>_name folder, per
    batch and accumulation, times the epochs, doubled with a regularisation folder. None if the folder is not
    here."""
    folder = Path(str(data.get("train_data_dir") or ""))
    if _empty(data.get("train_data_dir")) or not folder.is_dir():
        return None
    total = 0
    for sub in folder.iterdir():
        match = re.match(r"^(\d+)_", sub.name)
        if sub.is_dir() and match:
            total += int(match[1]) * sum(1 for f in sub.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    batch = max(1, int(_num(data.get("train_batch_size")) or 1))
    accumulation = max(1, int(_num(data.get("gradient_accumulation_steps")) or 1))
    reg = 2 if not _empty(data.get("reg_data_dir")) else 1
    return math.ceil(total / batch / accumulation * epochs * reg)


def _run_length(result: KohyaImport, data: dict[str, Any]) -> None:
    """As the Kohya_ss GUI decides it: Max train epoch wins; else Max train steps; else steps computed from the
    image folder and ``epoch`` (sd-scripts never reads ``epoch``)."""
    epochs, epoch = _num(data.get("max_train_epochs")), _num(data.get("epoch"))
    if epochs > 0:
        _put(result, "max_train_epochs", data["max_train_epochs"], "max_train_epochs")
        if _num(data.get("max_train_steps")) > 0:
            result.notes.append(f"max_train_steps = {data['max_train_steps']!r} is not used: max_train_epochs wins, "
                                "as in sd-scripts")
        return
    if "max_train_steps" not in data:
        result.settings["max_train_steps"] = GUI_DEFAULT_STEPS
        result.notes.append(f"max_train_steps is not in the file: Kohya_ss keeps its field's value, "
                            f"{GUI_DEFAULT_STEPS} steps by default, and does not use epoch = {data.get('epoch')!r}"
                            if not _empty(data.get("epoch")) else
                            f"max_train_steps is not in the file: {GUI_DEFAULT_STEPS}, the Kohya_ss GUI's default")
        return
    steps = _num(data.get("max_train_steps"))
    if steps > 0:
        _put(result, "max_train_steps", int(steps), "max_train_steps")
        if epoch:
            result.notes.append(f"epoch = {data['epoch']!r} is not used: Kohya_ss trains max_train_steps = "
                                f"{int(steps)} steps when it is set")
        return
    if not _empty(data.get("dataset_config")):
        result.settings["max_train_steps"] = GUI_DEFAULT_STEPS
        result.notes.append(f"max_train_steps = 0 with a dataset config: sd-scripts trains its default "
                            f"{GUI_DEFAULT_STEPS} steps (the Kohya_ss GUI does not compute them from epoch then)")
        return
    computed = _steps_from_folder(data, epoch or 1)
    if computed:
        result.settings["max_train_steps"] = computed
        result.notes.append(f"max_train_steps = 0, epoch = {data.get('epoch')!r}: {computed} steps, as the "
                            "Kohya_ss GUI computes them from the image folder (images x repeats / batch / "
                            "accumulation x epochs, x2 with regularisation images)")
    elif epoch:
        result.settings["max_train_epochs"] = int(epoch)
        result.notes.append(f"max_train_steps = 0, epoch = {data['epoch']!r}: Kohya_ss computes the steps of "
                            f"{int(epoch)} epoch(s) from the image folder, which is not on this computer; "
                            f"imported as max_train_epochs = {int(epoch)}")


def _warmup(result: KohyaImport, data: dict[str, Any]) -> None:
    if data.get("lr_scheduler") == "constant":
        return  # the Kohya_ss GUI turns warm-up off for constant
    steps, percent = _num(data.get("lr_warmup_steps")), _num(data.get("lr_warmup"))
    if steps > 0:
        _put(result, "lr_warmup_steps", int(steps), "lr_warmup_steps")
        if percent:
            result.notes.append(f"lr_warmup = {data['lr_warmup']!r}% is not used: lr_warmup_steps = {int(steps)} "
                                "wins, as in the Kohya_ss GUI")
    elif percent and not _empty(data.get("dataset_config")) and _num(data.get("max_train_steps")) > 0:
        value = round(percent * _num(data["max_train_steps"]) / 100)
        result.settings["lr_warmup_steps"] = value
        result.notes.append(f"lr_warmup = {data['lr_warmup']!r}% of max_train_steps: lr_warmup_steps = {value}")
    elif percent:
        result.settings["lr_warmup_steps"] = parse_value(BY_NAME["lr_warmup_steps"], float(percent) / 100.0)
        result.notes.append(f"lr_warmup = {data['lr_warmup']!r}% of the steps: lr_warmup_steps = "
                            f"{float(percent) / 100.0:g} (a fraction of the total steps)")


_WHOLE_ARGS = ("conv_dim", "factor", "block_size", "unit")


def _kohya_value(name: str, value: Any) -> str:
    """A value as the Kohya_ss GUI writes it into ``network_args``: Python's str (True/False, 0.1), whole numbers
    for ranks, factor and unit."""
    if name in _WHOLE_ARGS and not isinstance(value, bool):
        return str(int(_num(value)))
    return str(value)


def _lycoris_args(data: dict[str, Any], algo: str) -> list[str]:
    """The network_args the Kohya_ss GUI writes for a LyCORIS type: every listed field, zeros and False included."""
    fields = LYCORIS_FIELDS[algo]
    args = []
    for name in fields:
        if name == "algo":
            args.append(f"algo={algo}")
        elif name == "preset":
            args.append(f"preset={data.get('LyCORIS_preset') or 'full'}")
        elif name == "constraint":
            args.append(f"constraint={_kohya_value(name, data.get('constrain', 0.0) or 0.0)}")
        elif name == "block_size":
            args.append(f"block_size={_kohya_value(name, data.get('unit', 1) or 1)}")
        else:
            args.append(f"{name}={_kohya_value(name, data.get(name, KOHYA_GUI_DEFAULTS.get(name, False)))}")
    return args


def _network(result: KohyaImport, data: dict[str, Any]) -> None:
    lora_type = data.get("LoRA_type")
    if _empty(lora_type):
        return
    dropouts = [f"{name}={_num(data[name]):g}" for name in ("rank_dropout", "module_dropout")
                if _num(data.get(name)) > 0]
    blocks = [k for k in BLOCK_ARGS if not _empty(data.get(k))]
    dit = dit_family(data)
    dit_lora = bool(dit) and _dit_network(result, data, dit, lora_type, dropouts, blocks)
    if dit_lora:
        pass
    elif lora_type in KOHYA_TYPES:
        module = KOHYA_TYPES[lora_type]
        args = []
        if lora_type == "Kohya LoCon":
            args += [f"conv_dim={int(_num(data.get('conv_dim')))}", f"conv_alpha={_num(data.get('conv_alpha')):g}"]
        elif lora_type == "Kohya DyLoRA":
            args += [f"{k}={_kohya_value(k, data[k])}" for k in ("conv_dim", "conv_alpha", "unit") if data.get(k)]
            if dropouts:
                result.notes.append(f"{', '.join(dropouts)}: the Kohya_ss GUI passes them, but sd-scripts' DyLoRA "
                                    "does not read them: left out")
            dropouts = []
        result.settings["network_module"] = module
        block_args = [f"{k}={str(data[k]).strip()}" for k in blocks]
        if lora_type == "Kohya DyLoRA" and block_args:
            result.notes.append(f"{', '.join(blocks)}: the Kohya_ss GUI passes them, but sd-scripts' DyLoRA does not "
                                "read them: left out")
            block_args = []
        if args + dropouts + block_args:
            result.settings["network_args"] = args + dropouts + block_args
        result.carried += blocks if block_args else []
    elif lora_type in LYCORIS_TYPES:
        algo = LYCORIS_TYPES[lora_type]
        result.settings["network_module"] = "lycoris.kohya"
        result.settings["network_args"] = _lycoris_args(data, algo)
        conv, unit = int(_num(data.get("conv_dim", 1))), max(1, int(_num(data.get("unit", 1))))
        if (algo == "boft" and 0 < conv < 2) or (algo == "dylora" and conv % unit):
            result.settings["network_args"] = [a for a in result.settings["network_args"]
                                               if not a.startswith(("conv_dim=", "conv_alpha="))]
            why = "its butterfly factor must be 2 or more" if algo == "boft" else f"not a multiple of the unit {unit}"
            result.notes.append(f"conv_dim = {conv} is not passed: LyCORIS's {lora_type.split('/')[-1]} cannot "
                                f"use it ({why}; sd-scripts stops there), so the convolutions use network_dim, as "
                                "LyCORIS does without conv_dim")
        preset = str(data.get("LyCORIS_preset") or "full")
        if preset not in LYCORIS_PRESETS:
            result.unsupported.append(f"LyCORIS_preset = {preset!r}: LyCORIS preset files are not read; the "
                                      "built-in preset 'full' is used")
            result.settings["network_args"] = [a if not a.startswith("preset=") else "preset=full"
                                               for a in result.settings["network_args"]]
        not_read = [k for k in LYCORIS_NOT_READ if k in LYCORIS_FIELDS[algo] and data.get(k)]
        if not_read:
            result.notes.append(f"{', '.join(not_read)} = true: passed as Kohya_ss passes it; LyCORIS "
                                "(lycoris.kohya) does not read it, so it has no effect there or here")
        if algo == "lokr" and str(data.get("decompose_both")) == "False" and _num(data.get("network_dim")) < 100000:
            result.notes.append("decompose_both = false: LyCORIS reads the text 'False' it receives from Kohya_ss "
                                "as on (a LyCORIS quirk); LoRA Studio trains it off, as the setting says")
        if _num(data.get("network_dim")) >= 100000 or _num(data.get("conv_dim")) >= 100000:
            result.notes.append("network_dim/conv_dim of 100000 or more: a full-matrix LoKr, as LyCORIS reads it")
    elif lora_type in NATIVE_LYCORIS_TYPES:  # sd-scripts' own LoHa / LoKr (networks.loha / networks.lokr)
        algo = NATIVE_LYCORIS_TYPES[lora_type]
        args = [f"algo={algo}"]
        if _num(data.get("conv_dim")) > 0 and dit:
            result.notes.append(f"conv_dim = {data['conv_dim']!r}: passed by the Kohya_ss GUI, but {dit.title}'s "
                                f"transformer has no convolution networks.{algo} adapts (no effect): left out")
        elif _num(data.get("conv_dim")) > 0:
            args += [f"conv_dim={int(_num(data['conv_dim']))}", f"conv_alpha={data.get('conv_alpha', 1)}"]
        if data.get("use_tucker"):
            args.append("use_tucker=True")
        if algo == "lokr" and _num(data.get("factor")) not in (0, -1):
            args.append(f"factor={int(_num(data['factor']))}")
        result.settings["network_module"] = "lycoris.kohya"
        preset = "attn-mlp" if dit or not args[1:2] else "full"
        result.settings["network_args"] = args + dropouts + [f"preset={preset}"]
        result.notes.append(f"LoRA type '{lora_type}' (sd-scripts' own {algo}, networks.{algo}): trained with "
                            f"LyCORIS's {algo}, which writes the same hada_*/lokr_* weights AUTOMATIC1111 and ComfyUI "
                            "read")
        if dit:  # Anima: sd-scripts' module finds the transformer's attention and MLP layers itself
            result.notes.append(f"On {dit.title}, sd-scripts' networks.{algo} adapts the layers networks.lora_anima "
                                "does (the blocks' attention and MLP Linears); LyCORIS's nearest preset is attn-mlp")
    elif lora_type in FLUX_TYPES:
        _flux_network(result, data, lora_type, dropouts, blocks)
    elif lora_type in OTHER_FAMILY_TYPES:
        result.unsupported.append(f"LoRA type '{lora_type}' trains a {OTHER_FAMILY_TYPES[lora_type]} model, which "
                                  f"LoRA Studio does not train (it trains {TRAINED_FAMILIES}); standard LoRA is "
                                  "used")
    else:
        result.unsupported.append(f"LoRA type '{lora_type}' is not supported; standard LoRA is used")
    plus = [f"{k}={_kohya_value(k, data[k])}" for k in LORAPLUS if _num(data.get(k)) > 0]
    if plus and "network_module" in result.settings:  # the Kohya_ss GUI appends them to every type's network_args
        result.settings["network_args"] = result.settings.get("network_args", []) + plus
        result.carried += [k for k in LORAPLUS if _num(data.get(k)) > 0]
    for key in ("LyCORIS_preset", "unit", "constrain") + LYCORIS_ARGS:
        if key not in data:
            continue
        used = lora_type in LYCORIS_TYPES or (key == "unit" and lora_type == "Kohya DyLoRA" and not dit_lora) or (
            lora_type in NATIVE_LYCORIS_TYPES and key in ("use_tucker", "factor"))
        (result.carried if used else result.ignored).append(key)
    conv_types = ("Kohya LoCon", "Kohya DyLoRA") + tuple(LYCORIS_TYPES) + tuple(NATIVE_LYCORIS_TYPES)
    for key in ("conv_dim", "conv_alpha"):
        if key in data:  # the types that read them say so in their network_args (a DiT family's: a note)
            (result.carried if lora_type in conv_types and not dit else result.ignored).append(key)
    passed = {a.split("=", 1)[0] for a in result.settings.get("network_args") or []}
    for key in ("rank_dropout", "module_dropout"):
        if key in passed:
            result.carried.append(key)
        elif key in data and not _num(data[key]):
            result.ignored.append(key)
    if is_flux(data) and lora_type not in FLUX_TYPES and lora_type not in LYCORIS_TYPES:
        result.notes.append(f"LoRA type '{lora_type}' with Flux.1: the Kohya_ss GUI refuses it (it trains Flux with "
                            "'Flux1', 'Flux1 OFT' or a LyCORIS type); imported as that type's network")
    result.carried.append("LoRA_type")


def _noise(result: KohyaImport, data: dict[str, Any]) -> None:
    """The Kohya_ss GUI passes the noise keys of its noise type only."""
    multires = data.get("noise_offset_type") == "Multires"
    mine = ("multires_noise_iterations", "multires_noise_discount") if multires else (
        "noise_offset", "adaptive_noise_scale", "noise_offset_random_strength")
    theirs = ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength") if multires else (
        "multires_noise_iterations", "multires_noise_discount")
    for key in mine:
        if key == "noise_offset_random_strength":
            if data.get(key):
                _put(result, key, True, key)
        else:
            _put(result, key, data.get(key), key)
    ignored = [f"{k} = {data[k]!r}" for k in theirs if data.get(k) not in (None, "", 0, False)
               and not (k == "multires_noise_discount" and not data.get("multires_noise_iterations"))]
    result.ignored += [k for k in theirs if k in data and not any(n.startswith(f"{k} = ") for n in ignored)]
    if ignored:
        result.notes.append(f"{', '.join(ignored)} not used: noise_offset_type is "
                            f"{data.get('noise_offset_type', 'Original')!r}, and the Kohya_ss GUI passes only its "
                            "noise keys")
    if result.settings.get("adaptive_noise_scale") and not result.settings.get("noise_offset"):
        result.notes.append("adaptive_noise_scale without noise_offset would stop sd-scripts with an error: left out")
        result.settings.pop("adaptive_noise_scale")


def _learning_rates(result: KohyaImport, data: dict[str, Any]) -> None:
    """A zero U-Net or text-encoder learning rate beside a non-zero other means "train the other part only"; both
    zero means both train at the learning rate (the Kohya_ss GUI then passes neither)."""
    _put(result, "learning_rate", data.get("learning_rate"), "learning_rate")
    unet, te = data.get("unet_lr"), data.get("text_encoder_lr")
    if _num(unet) == 0 and _num(te) == 0:
        return
    for key, value in (("unet_lr", unet), ("text_encoder_lr", te)):
        if not _empty(value):
            _put(result, key, value, key)
    if _num(te) == 0 and not _empty(te):
        result.settings["network_train_unet_only"] = True
        result.notes.append("text_encoder_lr = 0: that part of the model is not trained (network_train_unet_only, "
                            "as the Kohya_ss GUI sets it)")
    if _num(unet) == 0 and not _empty(unet):
        result.settings["network_train_text_encoder_only"] = True
        result.notes.append("unet_lr = 0: that part of the model is not trained (network_train_text_encoder_only, "
                            "as the Kohya_ss GUI sets it)")


def _renamed_and_defaults(result: KohyaImport, data: dict[str, Any]) -> None:
    attention = data.get("xformers")
    if attention in (True, "xformers"):
        result.settings["xformers"] = True
    elif attention == "sdpa":
        result.settings["sdpa"] = True
    if "xformers" in data:  # the GUI's attention field: xformers, sdpa or none
        (result.carried if attention in (True, "xformers", "sdpa") else result.ignored).append("xformers")
    if not _empty(data.get("max_resolution")):
        sides = [p.strip() for p in str(data["max_resolution"]).split(",")]
        _put(result, "resolution", sides[0] if len(set(sides)) == 1 else ",".join(sides), "max_resolution")
    if not _empty(data.get("optimizer_args")):
        _put(result, "optimizer_args", str(data["optimizer_args"]), "optimizer_args")
    steps = _num(data.get("bucket_reso_steps"))
    # what sd-scripts' SDXL / Flux / SD LoRA scripts require
    dit = dit_family(data)
    least, which = (32, "SDXL") if data.get("sdxl") else (32, "Flux") if is_flux(data) else (
        dit.bucket_steps, dit.title) if dit else (64, "SD1.x/2.x")
    if steps and steps % least:
        result.settings["bucket_reso_steps"] = least
        result.notes.append(f"bucket_reso_steps = {data['bucket_reso_steps']!r} -> {least}: sd-scripts requires a "
                            f"multiple of {least} for {which} and stops otherwise")
    elif steps:
        _put(result, "bucket_reso_steps", data["bucket_reso_steps"], "bucket_reso_steps")
    if "max_grad_norm" in data:
        if _num(data["max_grad_norm"]) == 0:
            result.settings["max_grad_norm"] = 1.0
            result.notes.append("max_grad_norm = 0 -> 1.0: the Kohya_ss GUI does not pass a 0, so sd-scripts clips "
                                "at its default 1.0")
        else:
            _put(result, "max_grad_norm", data["max_grad_norm"], "max_grad_norm")
    if "caption_extension" in data:
        if _empty(data["caption_extension"]):
            result.settings["caption_extension"] = ".caption"
            result.notes.append("caption_extension = '' -> '.caption': sd-scripts' default when the GUI passes none")
        else:
            _put(result, "caption_extension", data["caption_extension"], "caption_extension")
    if data.get("sdxl") and data.get("sdxl_cache_text_encoder_outputs") and (
            data.get("shuffle_caption") or _num(data.get("caption_dropout_rate")) > 0):
        result.notes.append("sdxl_cache_text_encoder_outputs with shuffle_caption or caption_dropout_rate: cached "
                            "outputs need fixed captions, so sd-scripts stops, and so does LoRA Studio, saying "
                            "which to turn off")
    for key, name in (("sdxl_no_half_vae", "no_half_vae"),
                      ("sdxl_cache_text_encoder_outputs", "cache_text_encoder_outputs")):
        if data.get("sdxl") and data.get(key):
            result.settings[name] = True
            result.notes.append(f"{key} = true -> {name} = true (what the Kohya_ss GUI passes for SDXL)")
        elif key in data and not data.get("sdxl"):
            result.ignored.append(key)  # the GUI passes its SDXL fields for SDXL only
    lr_scheduler = data.get("lr_scheduler")
    if not _empty(lr_scheduler):
        _put(result, "lr_scheduler", lr_scheduler, "lr_scheduler")
    if not _empty(data.get("sample_prompts")):
        result.sample_prompt_text = str(data["sample_prompts"])
    if data.get("use_wandb") == "True" and _empty(data.get("log_with")):  # the GUI's old switch
        result.settings["log_with"] = "wandb"
        result.notes.append("use_wandb = 'True' -> log_with = 'wandb', as the Kohya_ss GUI converts it")
    elif "use_wandb" in data:
        result.ignored.append("use_wandb")
    if (result.settings.get("log_with") or data.get("log_with")) in ("wandb", "all") and \
            _empty(data.get("wandb_run_name")) and \
            not _empty(data.get("output_name")):
        result.settings["wandb_run_name"] = str(data["output_name"])
        result.notes.append("wandb_run_name = '' -> the output name, as the Kohya_ss GUI passes it")
    if data.get("sdxl"):
        result.notes.append("sdxl = true: the model family is detected from the checkpoint itself")
    if not _empty(data.get("additional_parameters")):
        _additional_parameters(result, str(data["additional_parameters"]))
    for key in GUI_ONLY & set(data):
        result.ignored.append(key)
    for key in ("sdxl", "flux1_checkbox", "sd3_checkbox", "anima_checkbox", "lumina_checkbox", "epoch",
                "noise_offset_type"):
        if key in data:
            result.ignored.append(key)


# ---- Flux.1 / Chroma: what the Kohya_ss GUI's Flux.1 panel passes to flux_train_network.py (its lora_gui.py)


def is_flux(data: dict[str, Any]) -> bool:
    """A Flux.1 / Chroma configuration: the GUI's Flux.1 checkbox, or one of its Flux LoRA types (without another
    family's checkbox, which picks that family's script)."""
    return bool(data.get("flux1_checkbox")) or (data.get("LoRA_type") in FLUX_TYPES
                                                and not any(data.get(f.switch) for f in DIT_IMPORTS))


def _is_chroma(data: dict[str, Any]) -> bool:
    """The GUI trains Chroma (sd-scripts' --model_type chroma) when its Flux.1 panel's Base Model Type says so."""
    return is_flux(data) and str(data.get("model_type") or "").strip().lower() == "chroma"


def _flux_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """The Flux.1 panel's values for what a Flux preset leaves out; for Chroma, what the GUI's switch to chroma sets."""
    return {**FLUX_GUI_DEFAULTS, **(CHROMA_GUI_DEFAULTS if _is_chroma(data) else {})}


def _other_family(name: str, families: tuple[str, ...]) -> bool:
    """A setting of flow-matching families only, none of them the configuration's (``families``)."""
    own = BY_NAME[name].families
    return bool(own) and set(own) <= set(DIT) and not set(own) & set(families)


def _flux_network(result: KohyaImport, data: dict[str, Any], lora_type: str, dropouts: list[str],
                  blocks: list[str]) -> None:
    """LoRA type Flux1: networks.lora_flux with the network_args the GUI writes (the per-type dims, in_dims and block
    indices that are not empty, train_blocks=single with split_mode, split_qkv, train_t5xxl, the dropouts).
    Flux1 OFT (networks.oft_flux) is not trained: standard Flux LoRA stands in."""
    result.settings["network_module"] = FLUX_MODULE
    if lora_type == "Flux1 OFT":
        result.unsupported.append(
            "LoRA type 'Flux1 OFT' (sd-scripts' networks.oft_flux): OFT for Flux is not supported; standard LoRA "
            f"({FLUX_MODULE}) is used" + (", without enable_all_linear (an OFT option)" if data.get("enable_all_linear")
                                     else ""))
        return
    args = []
    for key in FLUX_NETWORK_FIELDS:
        value = data.get(key)
        if not _empty(value) and value not in (0, False):  # the GUI passes each field that is not empty
            args.append(f"{key}={''.join(str(value).split())}")
            result.carried.append(key)
    train_blocks = str(data.get("train_blocks") or "all")
    if data.get("split_mode"):
        args.append("train_blocks=single")
        result.notes.append("split_mode = true: the Kohya_ss GUI passes train_blocks=single with it"
                            + (f" (instead of train_blocks = {train_blocks!r})" if train_blocks != "single" else ""))
    elif train_blocks != "all":
        result.notes.append(f"train_blocks = {train_blocks!r} is not passed: the Kohya_ss GUI passes train_blocks "
                            "only with split_mode (as 'single'), so all blocks train, as in Kohya_ss")
    elif "train_blocks" in data:
        result.ignored.append("train_blocks")
    for flag in ("split_qkv", "train_t5xxl"):
        if data.get(flag):
            args.append(f"{flag}=True")
            result.carried.append(flag)
        elif flag in data:
            result.ignored.append(flag)
    if args + dropouts:
        result.settings["network_args"] = args + dropouts
    if blocks:
        result.notes.append(f"{', '.join(blocks)}: SD U-Net block weights; the Kohya_ss GUI does not pass them for "
                            f"LoRA type '{lora_type}': left out")


def _flux(result: KohyaImport, data: dict[str, Any]) -> None:
    """Every field of the GUI's Flux.1 panel (and its Flux-only LoRA fields), as the GUI passes it for Flux."""
    _flux_family(result, data)
    _flux_files(result, data)
    _flux_recipe(result, data)
    _flux_memory(result, data)
    _te_caches(result, data, ("flux1_cache_text_encoder_outputs", "flux1_cache_text_encoder_outputs_to_disk"), "Flux")
    _t5xxl_lr(result, data)
    _flux_gui_fields(result, data)


def _flux_family(result: KohyaImport, data: dict[str, Any]) -> None:
    why = "flux1_checkbox = true" if data.get("flux1_checkbox") else \
        f"LoRA type '{data.get('LoRA_type')}' (flux1_checkbox is not set)"
    result.notes.append(f"{why}: a Flux.1 configuration (Kohya_ss trains it with sd-scripts' "
                        "flux_train_network.py); LoRA Studio reads the model family (Flux.1 dev, schnell or Chroma) "
                        "from the checkpoint itself")
    if _is_chroma(data):
        _put(result, "model_type", "chroma", "model_type")  # checked against the checkpoint
    elif "model_type" in data:
        result.ignored.append("model_type")  # the GUI passes model_type for Chroma only (flux is sd-scripts' own)


def _flux_files(result: KohyaImport, data: dict[str, Any]) -> None:
    """The autoencoder and text-encoder files; Chroma has no CLIP-L, and the GUI does not pass one for it."""
    for key in ("ae", "t5xxl"):
        _put(result, key, data.get(key), key)
    if not _is_chroma(data):
        _put(result, "clip_l", data.get("clip_l"), "clip_l")
    elif not _empty(data.get("clip_l")):
        result.notes.append(f"clip_l = {data['clip_l']!r} is not passed: Chroma has no CLIP-L (the Kohya_ss GUI "
                            "leaves it out for Chroma)")
    result.ignored += [k for k in ("flux1_clip_l", "flux1_t5xxl") if k in data]  # older GUIs' names, unread now


def _flux_recipe(result: KohyaImport, data: dict[str, Any]) -> None:
    """The flow-matching values as written. A 0 the GUI drops (its filter drops values equal to False) leaves
    sd-scripts' default; Chroma's guidance 0 and T5 mask are passed always."""
    chroma = _is_chroma(data)
    for key, default in (("discrete_flow_shift", 3.0), ("guidance_scale", 3.5)):
        value = data.get(key)
        if not _empty(value) and _num(value) == 0 and not (chroma and key == "guidance_scale"):
            result.settings[key] = default
            result.notes.append(f"{key} = 0 -> {default}: the Kohya_ss GUI does not pass a 0, so sd-scripts trains "
                                f"with its default {default}")
        else:
            _put(result, key, value, key)
    for key in ("model_prediction_type", "timestep_sampling", "cpu_offload_checkpointing", "fp8_base_unet"):
        _put(result, key, data.get(key), key)
    length = data.get("t5xxl_max_token_length")
    if _num(length) > 0:
        _put(result, "t5xxl_max_token_length", int(_num(length)), "t5xxl_max_token_length")
    if chroma:
        result.settings["apply_t5_attn_mask"] = True
        if data.get("apply_t5_attn_mask"):
            result.carried.append("apply_t5_attn_mask")
        else:
            result.notes.append("apply_t5_attn_mask = false -> true: Chroma trains with T5's attention mask (the "
                                "Kohya_ss GUI always passes it for Chroma; sd-scripts requires it)")
    else:
        _put(result, "apply_t5_attn_mask", bool(data.get("apply_t5_attn_mask")), "apply_t5_attn_mask")


def _flux_memory(result: KohyaImport, data: dict[str, Any]) -> None:
    """blocks_to_swap as written; the deprecated split_mode becomes blocks_to_swap 18 (as sd-scripts sets it) and the
    old double/single_blocks_to_swap become blocks_to_swap as sd-scripts' flux_train.py converts them."""
    swap = int(_num(data.get("blocks_to_swap")))
    if swap:
        _put(result, "blocks_to_swap", swap, "blocks_to_swap")
    if data.get("split_mode") and swap:
        result.notes.append("split_mode = true (deprecated): sd-scripts ignores it for block swapping because "
                            f"blocks_to_swap = {swap} is set")
    elif data.get("split_mode"):
        result.settings["blocks_to_swap"] = SPLIT_MODE_SWAP
        result.notes.append(f"split_mode = true (deprecated) -> blocks_to_swap = {SPLIT_MODE_SWAP}, as sd-scripts "
                            "sets it")
    elif "split_mode" in data:
        result.ignored.append("split_mode")
    double, single = int(_num(data.get("double_blocks_to_swap"))), int(_num(data.get("single_blocks_to_swap")))
    old = f"double_blocks_to_swap = {double}, single_blocks_to_swap = {single}"
    if (double or single) and "blocks_to_swap" in result.settings:
        result.notes.append(f"{old}: deprecated, and sd-scripts' LoRA script does not read them; blocks_to_swap = "
                            f"{result.settings['blocks_to_swap']} is used")
    elif double or single:
        if _put(result, "blocks_to_swap", double + single // 2, "double_blocks_to_swap", carried=False):
            result.notes.append(f"{old} (deprecated; sd-scripts' LoRA script does not read them, so they saved no "
                                f"memory in Kohya_ss) -> blocks_to_swap = {double + single // 2}, as sd-scripts' "
                                "flux_train.py converts them (memory only: the result is the same)")
    else:
        result.ignored += [k for k in ("double_blocks_to_swap", "single_blocks_to_swap") if k in data]
    if result.settings.get("blocks_to_swap") and result.settings.get("cpu_offload_checkpointing"):
        result.notes.append("blocks_to_swap with cpu_offload_checkpointing: sd-scripts stops, and so does LoRA "
                            "Studio; turn one off")


def _te_caches(result: KohyaImport, data: dict[str, Any], keys: tuple[str, str], title: str,
               dropout_cached: bool = False) -> None:
    """A family panel's text-encoder caches are sd-scripts' cache_text_encoder_outputs(_to_disk); cached outputs need
    fixed captions (Anima's script alone drops cached captions itself, and trains no text encoder from a cache)."""
    for key, name in zip(keys, ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk")):
        if data.get(key):
            result.settings[name] = True
            result.notes.append(f"{key} = true -> {name} = true (what the Kohya_ss GUI passes for {title})")
        elif key in data:
            result.ignored.append(key)
    if not result.settings.get("cache_text_encoder_outputs"):
        return
    if data.get("shuffle_caption") or (not dropout_cached and _num(data.get("caption_dropout_rate")) > 0):
        result.notes.append("cached text-encoder outputs with shuffle_caption"
                            + ("" if dropout_cached else " or caption_dropout_rate")
                            + ": cached outputs need fixed captions, so sd-scripts stops, and so does LoRA Studio, "
                            "saying which to turn off")
    if dropout_cached and not result.settings.get("network_train_unet_only"):
        result.notes.append(f"cached text-encoder outputs while the text encoder trains (text_encoder_lr is not 0): "
                            f"sd-scripts' {title} training stops (it cannot train the text encoder from a cache); set "
                            "text_encoder_lr to 0 or turn the cache off")


def _t5xxl_lr(result: KohyaImport, data: dict[str, Any], meaning: str | None = None) -> None:
    """The GUI's T5XXL learning rate: text_encoder_lr = [the text-encoder rate, T5-XXL's] (Chroma, without CLIP-L:
    T5-XXL's); refused by the GUI without a text-encoder learning rate. ``meaning``: what the two values train (Flux's
    CLIP-L and T5-XXL when not given)."""
    t5, te = _num(data.get("t5xxl_lr")), _num(data.get("text_encoder_lr"))
    if not t5:
        if "t5xxl_lr" in data:
            result.ignored.append("t5xxl_lr")
        return
    if not te:
        result.unsupported.append(f"t5xxl_lr = {data['t5xxl_lr']!r} with text_encoder_lr = 0: the Kohya_ss GUI "
                                  "refuses to start (it needs a text-encoder learning rate above 0 with a T5-XXL one); "
                                  "not imported")
        return
    chroma = _is_chroma(data)
    result.settings["text_encoder_lr"] = t5 if chroma else [te, t5]
    result.carried.append("t5xxl_lr")
    if meaning is None:
        meaning = (" (Chroma's only text encoder is T5-XXL)" if chroma else
                   " (CLIP-L, T5-XXL), as the Kohya_ss GUI passes them") + (
            "" if data.get("train_t5xxl") else "; T5-XXL trains only with train_t5xxl, which is off")
    else:
        meaning = " " + meaning
    result.notes.append(f"t5xxl_lr = {data['t5xxl_lr']!r} -> text_encoder_lr = {result.settings['text_encoder_lr']!r}"
                        + meaning)


def _flux_gui_fields(result: KohyaImport, data: dict[str, Any]) -> None:
    """The Flux fields the GUI passes for other LoRA types or other scripts only, or that do not train."""
    lora_type = data.get("LoRA_type")
    if lora_type != "Flux1":  # the networks.lora_flux fields: the GUI passes them with LoRA type Flux1 only
        keys = list(FLUX_NETWORK_FIELDS) + ["train_blocks", "split_qkv", "train_t5xxl"]
        active = [f"{k} = {data[k]!r}" for k in keys if data.get(k) not in (None, "", 0, False, "all")]
        result.ignored += [k for k in keys if k in data]
        if active:
            result.notes.append(f"{', '.join(active)}: networks.lora_flux arguments; the Kohya_ss GUI passes them "
                                f"for LoRA type 'Flux1' only, not for {lora_type!r}: left out")
    if data.get("enable_all_linear") and lora_type != "Flux1 OFT":
        result.notes.append(f"enable_all_linear = true: an option of 'Flux1 OFT' only; the Kohya_ss GUI does not "
                            f"pass it for {lora_type!r}")
    elif "enable_all_linear" in data and lora_type != "Flux1 OFT":
        result.ignored.append("enable_all_linear")
    if data.get("mem_eff_save"):
        result.notes.append("mem_eff_save = true: an option of sd-scripts' Flux fine-tuning (flux_train.py); its LoRA "
                            "script does not read it, so it has no effect in Kohya_ss or here")
    elif "mem_eff_save" in data:
        result.ignored.append("mem_eff_save")
    _timestep_preview(result, data)
    ggpo = ("train_lora_ggpo", "ggpo_sigma", "ggpo_beta")
    if data.get("train_lora_ggpo") and lora_type == "Flux1":
        result.unsupported.append(f"train_lora_ggpo = true (GGPO, ggpo_sigma = {data.get('ggpo_sigma')!r}, ggpo_beta "
                                  f"= {data.get('ggpo_beta')!r}) is not supported: trained without it")
    else:
        result.ignored += [k for k in ggpo if k in data]
    sd3 = [f"{k} = {data[k]!r}" for k in SD3_FIELDS if k in data and data[k] not in ("", None)
           and data[k] != BY_NAME[k].default]
    if sd3:
        result.ignored = [k for k in result.ignored if k not in SD3_FIELDS]  # said here instead
        result.notes.append(f"{', '.join(sd3)}: the Kohya_ss GUI's SD3 fields, which it does not pass for Flux: "
                            "sd-scripts' defaults apply (uniform weighting)")
    _dit_losses(result, data)


def _without_sd_settings(result: KohyaImport, families: tuple[str, ...] = FLUX, title: str = "Flux") -> None:
    """The settings a flow-matching configuration carries that its family does not read (the SD-only ones the GUI
    passes, e.g. noise_offset, min_snr_gamma, clip_skip, and a VAE file Lumina does not use): sd-scripts' training
    of the family does not use them, so they are left out, said when set."""
    reasons = _ignored_reasons(families)
    active: dict[str, list[str]] = {}  # why -> the settings it explains
    for name in [n for n in result.settings if BY_NAME[n].families and not set(BY_NAME[n].families) & set(families)]:
        value = result.settings.pop(name)
        result.carried = [k for k in result.carried if RENAMED.get(k, k) != name]
        if value in (BY_NAME[name].default, None, False, 0):
            result.ignored.append(name)
        else:
            why = reasons.get(name, "a Stable Diffusion option")
            active.setdefault(why, []).append(f"{name} = {value!r}")
    if active:
        result.notes.append(f"Not imported, as sd-scripts' {title} training does not use them (so they had no effect "
                            "in Kohya_ss either): " + "; ".join(f"{', '.join(names)}: {why}"
                                                                for why, names in active.items()))


def _ignored_reasons(families: tuple[str, ...]) -> dict[str, str]:
    """Why a family does not read a setting (the model family's own words, as training says them)."""
    from ..models.registry import BY_NAME as FAMILIES

    family = next((FAMILIES[n] for n in families if n in FAMILIES), None)
    if family is not None:
        return family.ignored_settings
    try:  # a family not registered (yet): what every flow-matching transformer ignores
        from ..models.dit import DIT_IGNORED
    except ImportError:
        from ..models.flux import FluxFamily

        return FluxFamily.ignored_settings
    return DIT_IGNORED


def _say_flux_defaults(result: KohyaImport, filled: dict[str, Any]) -> None:
    """The recipe values a Flux preset leaves out train with the GUI's (sd-scripts') defaults, as in Kohya_ss: say
    where LoRA Studio recommends otherwise."""
    chroma = result.settings.get("model_type") == "chroma"
    recommended = {"guidance_scale": 0.0 if chroma else 1.0, "model_prediction_type": "raw",
                   "timestep_sampling": "sigmoid" if chroma else "shift", "discrete_flow_shift": 3.1582}
    differ = [k for k in recommended if k in filled and k in result.settings and result.settings[k] != recommended[k]]
    if differ:
        result.notes.append(
            "Not in the file, so Kohya_ss trains with its GUI's (sd-scripts') defaults, and so does this import: "
            + ", ".join(f"{k} = {result.settings[k]!r}" for k in differ) + "; for "
            + ("Chroma" if chroma else "Flux") + " LoRA Studio recommends "
            + ", ".join(f"{k} = {recommended[k]!r}" for k in differ)
            + ": clear those settings to train with the recommended values")


# ---- SD3 / SD3.5, Anima, Lumina 2: what the Kohya_ss GUI's SD3, Anima and Lumina panels pass to sd-scripts'
# sd3_train_network.py, anima_train_network.py and lumina_train_network.py (its lora_gui.py, train_model)


@dataclass(frozen=True)
class DitImport:
    """One of the GUI's flow-matching panels besides Flux.1 (kohya_gui/class_sd3.py, class_anima.py,
    class_lumina.py), as lora_gui.py passes it to the family's sd-scripts script."""
    title: str
    switch: str  # the GUI's model checkbox (class_source_model.py)
    script: str
    families: tuple[str, ...]  # the schema's names of the family's models
    module: str  # the sd-scripts network module of the family's own LoRA type
    lora_types: tuple[str, ...]  # the LoRA types the GUI trains the family with (its own first)
    fields: dict[str, str]  # the panel's JSON key -> the sd-scripts setting the GUI passes it as
    defaults: dict[str, Any]  # the panel at a fresh GUI's values: what a preset without them trains with
    zero_is: dict[str, Any]  # setting -> sd-scripts' default, which a 0 (dropped by the GUI) leaves; None: unset
    caches: tuple[str, str]  # the panel's switches for cache_text_encoder_outputs(_to_disk)
    bucket_steps: int  # the multiple sd-scripts' script requires of bucket_reso_steps
    no_effect: dict[str, str] = field(default_factory=dict)  # panel key -> why sd-scripts does nothing with it
    unsupported: dict[str, str] = field(default_factory=dict)  # panel key -> what LoRA Studio does not do
    replaces: tuple[str, ...] = ()  # general GUI fields the panel's own replace for this family (not passed)
    text_encoders: str = ""  # the text encoders text_encoder_lr's values go to, as the network module reads them

    @property
    def keys(self) -> frozenset[str]:
        """Every JSON key of the panel."""
        return frozenset(self.fields) | set(self.defaults) | set(self.no_effect) | set(self.unsupported) | set(
            self.caches)


_DOES_NOT_WORK = "sd-scripts marks it [DOES NOT WORK] and does nothing with it"
SD3_IMPORT = DitImport(
    title="SD3 / SD3.5", switch="sd3_checkbox", script="sd3_train_network.py", families=SD3,
    module="networks.lora_sd3", lora_types=("Standard", "Kohya LoCon"),
    fields={"sd3_clip_l": "clip_l", "clip_g": "clip_g", "sd3_t5xxl": "t5xxl", "weighting_scheme": "weighting_scheme",
            "logit_mean": "logit_mean", "logit_std": "logit_std", "mode_scale": "mode_scale",
            "sd3_clip_l_dropout_rate": "clip_l_dropout_rate", "clip_g_dropout_rate": "clip_g_dropout_rate",
            "sd3_t5_dropout_rate": "t5_dropout_rate", "pos_emb_random_crop_rate": "pos_emb_random_crop_rate",
            "sd3_enable_scaled_pos_embed": "enable_scaled_pos_embed",
            "sd3_text_encoder_batch_size": "text_encoder_batch_size"},
    defaults={"weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
              "sd3_clip_l": "", "clip_g": "", "sd3_t5xxl": "", "save_clip": False, "save_t5xxl": False,
              "t5xxl_device": "", "t5xxl_dtype": "bf16", "sd3_text_encoder_batch_size": 1,
              "sd3_cache_text_encoder_outputs": False, "sd3_cache_text_encoder_outputs_to_disk": False,
              "sd3_clip_l_dropout_rate": 0.0, "clip_g_dropout_rate": 0.0, "sd3_t5_dropout_rate": 0.0,
              "sd3_fused_backward_pass": False, "sd3_disable_mmap_load_safetensors": False,
              "sd3_enable_scaled_pos_embed": False, "pos_emb_random_crop_rate": 0.0},
    zero_is={"logit_std": 1.0, "mode_scale": 1.29, "text_encoder_batch_size": None},
    caches=("sd3_cache_text_encoder_outputs", "sd3_cache_text_encoder_outputs_to_disk"), bucket_steps=32,
    no_effect={"save_clip": _DOES_NOT_WORK, "save_t5xxl": _DOES_NOT_WORK, "t5xxl_device": _DOES_NOT_WORK,
               "t5xxl_dtype": _DOES_NOT_WORK},
    unsupported={"sd3_fused_backward_pass": "fused_backward_pass (the optimizer step inside the backward pass)",
                 "sd3_disable_mmap_load_safetensors": "disable_mmap_load_safetensors (reading the model without "
                                                      "memory-mapping it)"},
    text_encoders="CLIP-L; CLIP-G and T5-XXL (networks.lora_sd3 gives a second value to both)")
ANIMA_IMPORT = DitImport(
    title="Anima", switch="anima_checkbox", script="anima_train_network.py", families=ANIMA,
    module="networks.lora_anima", lora_types=("Anima", "Kohya LoHa", "Kohya LoKr"),
    fields={"anima_qwen3": "qwen3", "anima_vae": "vae", "anima_llm_adapter_path": "llm_adapter_path",
            "anima_discrete_flow_shift": "discrete_flow_shift", "anima_timestep_sampling": "timestep_sampling",
            "anima_sigmoid_scale": "sigmoid_scale", "anima_qwen3_max_token_length": "qwen3_max_token_length",
            "anima_t5_max_token_length": "t5_max_token_length", "anima_vae_chunk_size": "vae_chunk_size",
            "anima_vae_disable_cache": "vae_disable_cache", "anima_torch_compile": "torch_compile"},
    defaults={"anima_qwen3": "", "anima_vae": "", "anima_llm_adapter_path": "", "anima_t5_tokenizer_path": "",
              "anima_discrete_flow_shift": 1.0, "anima_timestep_sampling": "sigmoid", "anima_sigmoid_scale": 1.0,
              "anima_qwen3_max_token_length": 512, "anima_t5_max_token_length": 512, "anima_attn_mode": "torch",
              "anima_split_attn": False, "anima_vae_chunk_size": 0, "anima_vae_disable_cache": False,
              "anima_qwen_image_vae_2d": False, "anima_cache_text_encoder_outputs": False,
              "anima_cache_text_encoder_outputs_to_disk": False, "anima_unsloth_offload_checkpointing": False,
              "anima_compile": False, "anima_torch_compile": False, "anima_compile_backend": "inductor",
              "anima_compile_mode": "default", "anima_compile_dynamic": "auto", "anima_compile_fullgraph": False,
              "anima_compile_cache_size_limit": 0},
    zero_is={"discrete_flow_shift": 1.0, "sigmoid_scale": 1.0, "qwen3_max_token_length": 512,
             "t5_max_token_length": 512, "vae_chunk_size": None},
    caches=("anima_cache_text_encoder_outputs", "anima_cache_text_encoder_outputs_to_disk"), bucket_steps=16,
    unsupported={"anima_t5_tokenizer_path": "t5_tokenizer_path (a T5 tokenizer folder of your own; LoRA Studio uses "
                                            "the T5 tokenizer Anima's adapter was trained with)",
                 "anima_attn_mode": "attn_mode (attention through flash or sageattn; LoRA Studio's attention is "
                                    "PyTorch's SDPA, or xformers with the xformers setting)",
                 "anima_split_attn": "split_attn (attention one sample at a time)",
                 "anima_qwen_image_vae_2d": "qwen_image_vae_2d (a 2D Qwen-Image VAE)",
                 "anima_compile_cache_size_limit": "compile_cache_size_limit (torch._dynamo's cache size)"},
    replaces=("vae",), text_encoders="Qwen3 (networks.lora_anima reads the first value only)")
LUMINA_IMPORT = DitImport(
    title="Lumina 2", switch="lumina_checkbox", script="lumina_train_network.py", families=LUMINA,
    module="networks.lora_lumina", lora_types=("Lumina",),
    fields={"lumina_gemma2": "gemma2", "lumina_ae": "ae", "lumina_discrete_flow_shift": "discrete_flow_shift",
            "lumina_model_prediction_type": "model_prediction_type",
            "lumina_timestep_sampling": "timestep_sampling", "lumina_sigmoid_scale": "sigmoid_scale",
            "lumina_gemma2_max_token_length": "gemma2_max_token_length", "lumina_system_prompt": "system_prompt"},
    defaults={"lumina_gemma2": "", "lumina_ae": "", "lumina_discrete_flow_shift": 6.0,
              "lumina_model_prediction_type": "raw", "lumina_timestep_sampling": "shift", "lumina_sigmoid_scale": 1.0,
              "lumina_gemma2_max_token_length": 256, "lumina_system_prompt": "", "lumina_use_flash_attn": False,
              "lumina_use_sage_attn": False, "lumina_cache_text_encoder_outputs": False,
              "lumina_cache_text_encoder_outputs_to_disk": False},
    zero_is={"discrete_flow_shift": 6.0, "sigmoid_scale": 1.0, "gemma2_max_token_length": None},
    caches=("lumina_cache_text_encoder_outputs", "lumina_cache_text_encoder_outputs_to_disk"), bucket_steps=16,
    unsupported={"lumina_use_flash_attn": "use_flash_attn (attention through the flash-attn package)",
                 "lumina_use_sage_attn": "use_sage_attn (attention through SageAttention)"},
    text_encoders="Gemma2 (networks.lora_lumina reads the first value only)")
DIT_IMPORTS = (SD3_IMPORT, ANIMA_IMPORT, LUMINA_IMPORT)  # in the order the GUI picks the script
DIT_PANEL_KEYS = frozenset().union(*(f.keys for f in DIT_IMPORTS))
# The GUI's Anima per-block compile fields -> LoRA Studio's compile settings (passed with anima_compile only)
ANIMA_COMPILE = {"anima_compile_backend": "dynamo_backend", "anima_compile_mode": "dynamo_mode",
                 "anima_compile_fullgraph": "dynamo_use_fullgraph"}


def dit_family(data: dict[str, Any]) -> DitImport | None:
    """The SD3, Anima or Lumina panel a configuration trains with: its checkbox (the GUI's script choice, after SDXL
    and Flux.1), or Anima's / Lumina's own LoRA type (which the GUI accepts with its checkbox only)."""
    if data.get("sdxl") or data.get("flux1_checkbox"):
        return None
    return next((f for f in DIT_IMPORTS if data.get(f.switch)), None) or next(
        (f for f in DIT_IMPORTS[1:] if data.get("LoRA_type") == f.lora_types[0]), None)


def _network_module(result: KohyaImport, name: str) -> str:
    """sd-scripts' network module when LoRA Studio accepts its name, else networks.lora (the same LoRA here)."""
    if name in (BY_NAME["network_module"].choices or ()):
        return name
    result.notes.append(f"network_module: sd-scripts' {name} is not a network_module LoRA Studio accepts yet; "
                        "networks.lora is used (LoRA on the family's own layers, as the model family decides)")
    return "networks.lora"


def _dit_network(result: KohyaImport, data: dict[str, Any], fam: DitImport, lora_type: str, dropouts: list[str],
                 blocks: list[str]) -> bool:
    """The family's own LoRA type: its network module with the dropouts (the only network_args the GUI writes for
    it). The LyCORIS types (SD3) and Kohya LoHa / LoKr (Anima) are the general rules' (False); another type is one
    the GUI does not train the family with: the family's LoRA stands in."""
    if (fam is SD3_IMPORT and lora_type in LYCORIS_TYPES) or (
            lora_type in NATIVE_LYCORIS_TYPES and lora_type in fam.lora_types):
        return False
    if lora_type not in fam.lora_types:
        trained = "', '".join(fam.lora_types) + ("' or a LyCORIS type" if fam is SD3_IMPORT else "'")
        result.unsupported.append(f"LoRA type '{lora_type}' with {fam.title}: the Kohya_ss GUI trains {fam.title} "
                                  f"with '{trained} only (it refuses this one or sd-scripts' {fam.script} cannot use "
                                  f"it); LoRA ({fam.module}) is used")
    result.settings["network_module"] = _network_module(result, fam.module)
    if dropouts:
        result.settings["network_args"] = list(dropouts)
    if blocks:
        result.notes.append(f"{', '.join(blocks)}: SD U-Net block weights; {fam.module} does not read them (no "
                            "effect in Kohya_ss): left out")
    if lora_type == "Kohya LoCon" and _num(data.get("conv_dim")) > 0:
        result.notes.append(f"conv_dim = {data['conv_dim']!r}, conv_alpha = {data.get('conv_alpha')!r}: passed by "
                            f"the Kohya_ss GUI, but {fam.title}'s transformer has no convolution {fam.module} adapts "
                            "(no effect in Kohya_ss): left out")
    return True


def _dit(result: KohyaImport, data: dict[str, Any], fam: DitImport) -> None:
    """Every field of the family's panel (and the general ones it reads its own way), as the GUI passes them."""
    why = f"{fam.switch} = true" if data.get(fam.switch) else \
        f"LoRA type '{data.get('LoRA_type')}' ({fam.switch} is not set: the Kohya_ss GUI refuses to start without it)"
    result.notes.append(f"{why}: the configuration trains {fam.title} (Kohya_ss runs sd-scripts' {fam.script}); "
                        "LoRA Studio reads the model from the checkpoint itself")
    _dit_fields(result, data, fam)
    _te_caches(result, data, fam.caches, fam.title, dropout_cached=fam is ANIMA_IMPORT)
    swap = int(_num(data.get("blocks_to_swap")))
    if swap:
        _put(result, "blocks_to_swap", swap, "blocks_to_swap")
    elif "blocks_to_swap" in data:
        result.ignored.append("blocks_to_swap")
    if fam is SD3_IMPORT:
        _t5xxl_lr(result, data, "(CLIP-L; CLIP-G and T5-XXL: networks.lora_sd3 gives the second value to both), as "
                                "the Kohya_ss GUI passes them; T5-XXL trains only with network_args train_t5xxl, which "
                                "the GUI does not pass for SD3, so its value goes to CLIP-G")
    elif _num(data.get("t5xxl_lr")) and _num(data.get("text_encoder_lr")):
        result.notes.append(f"t5xxl_lr = {data['t5xxl_lr']!r}: the Kohya_ss GUI passes it as text_encoder_lr's "
                            f"second value, which {fam.title}'s one text encoder does not read (no effect): left out")
    elif "t5xxl_lr" in data:
        _t5xxl_lr(result, data, "")  # a T5 rate without a text-encoder one: the GUI refuses to start
    if fam is ANIMA_IMPORT:
        _anima(result, data)
    _other_panels(result, data, fam)
    _timestep_preview(result, data)
    _dit_losses(result, data)


def _dit_fields(result: KohyaImport, data: dict[str, Any], fam: DitImport) -> None:
    """The panel's paths and recipe values as written; a 0 the GUI drops (its filter drops values equal to False)
    leaves sd-scripts' default; the fields sd-scripts or LoRA Studio do not use, named."""
    renamed = []
    for key, name in fam.fields.items():
        value = data.get(key)
        if name in fam.zero_is and not isinstance(value, bool) and not _empty(value) and _num(value) == 0:
            default = fam.zero_is[name]
            if default is None:
                result.ignored.append(key)
                continue
            result.settings[name] = default
            result.notes.append(f"{key} = 0 -> {name} = {default}: the Kohya_ss GUI does not pass a 0, so sd-scripts "
                                f"trains with its default {default}")
        elif isinstance(value, bool) and not value or _empty(value):
            if key in data:
                result.ignored.append(key)
        elif _put(result, name, value, key):
            renamed += [f"{key} -> {name}"] if name != key else []
    if renamed:
        result.notes.append(f"The {fam.title} panel's fields, as the Kohya_ss GUI passes them: {', '.join(renamed)}")
    for key, why in fam.no_effect.items():
        if data.get(key) not in (None, "", False, fam.defaults.get(key)):
            result.notes.append(f"{key} = {data[key]!r}: {why} (no effect in Kohya_ss): left out")
        elif key in data:
            result.ignored.append(key)
    for key, what in fam.unsupported.items():
        if data.get(key) not in (None, "", 0, False, fam.defaults.get(key)):
            result.unsupported.append(f"{key} = {data[key]!r}: {what} is not supported; trained without it")
        elif key in data:
            result.ignored.append(key)
    for key in fam.replaces:
        if not _empty(data.get(key)) and data.get(key) != data.get(_panel_key(fam, key)):
            result.notes.append(f"{key} = {data[key]!r} is not passed: the Kohya_ss GUI passes the {fam.title} "
                                f"panel's {_panel_key(fam, key)} instead")
        elif key in data:
            result.ignored.append(key)


def _panel_key(fam: DitImport, name: str) -> str:
    return next(k for k, v in fam.fields.items() if v == name)


def _anima(result: KohyaImport, data: dict[str, Any]) -> None:
    """What sd-scripts' Anima script does with the general fields, and the panel's compile and offload switches."""
    if data.get("anima_unsloth_offload_checkpointing"):
        result.settings.update(cpu_offload_checkpointing=True, gradient_checkpointing=True)
        result.notes.append("anima_unsloth_offload_checkpointing = true -> cpu_offload_checkpointing = true and "
                            "gradient_checkpointing = true: LoRA Studio's nearest setting (the same activations kept "
                            "on the CPU, moved without sd-scripts' asynchronous copies)")
    else:
        result.ignored += [k for k in ("anima_unsloth_offload_checkpointing",) if k in data]
    compile_keys = ("anima_compile", "anima_compile_dynamic") + tuple(ANIMA_COMPILE)
    if not data.get("anima_compile"):
        result.ignored += [k for k in compile_keys if k in data]
        return
    result.settings["torch_compile"] = True
    result.notes.append("anima_compile = true (sd-scripts' per-block torch.compile) -> torch_compile = true: LoRA "
                        "Studio compiles the transformer with its LoRA, with the compile fields as its dynamo_* "
                        "settings")
    for key, name in ANIMA_COMPILE.items():
        _put(result, name, data.get(key), key)
    dynamic = str(data.get("anima_compile_dynamic") or "auto").lower()
    if dynamic in ("true", "false"):
        _put(result, "dynamo_use_dynamic", dynamic, "anima_compile_dynamic")
    else:
        result.ignored += [k for k in ("anima_compile_dynamic",) if k in data]
    result.carried.append("anima_compile")


def _dit_after(result: KohyaImport, fam: DitImport) -> None:
    """What the family's script turns off among the general settings the GUI passes (after they are read)."""
    if fam is ANIMA_IMPORT and result.settings.pop("fp8_base", False):
        result.carried = [k for k in result.carried if k != "fp8_base"]
        result.notes.append("fp8_base = true: sd-scripts' Anima training turns it off (it does not support fp8), so "
                            "Kohya_ss trained without it: left out")
    _without_sd_settings(result, fam.families, fam.title)


def _other_panels(result: KohyaImport, data: dict[str, Any], fam: DitImport) -> None:
    """The other families' panels, which the GUI saves with every configuration and passes for their family only:
    named where they set what this family reads."""
    said = []
    for key in sorted(FLUX_FIELDS & set(data)):
        name = {"flux1_clip_l": "clip_l", "flux1_t5xxl": "t5xxl"}.get(key, key)
        setting = BY_NAME.get(name)
        if setting is not None and set(setting.families or ()) & set(fam.families) and not _empty(data[key]) \
                and data[key] != FLUX_GUI_DEFAULTS.get(key) and name not in ("blocks_to_swap",):
            said.append(f"{key} = {data[key]!r}")
        elif key != "blocks_to_swap":
            result.ignored.append(key)
    if said:
        result.notes.append(f"{', '.join(said)}: fields of the Kohya_ss GUI's Flux.1 panel, which it passes for Flux "
                            f"only, not for {fam.title}: sd-scripts' defaults apply")
    result.ignored += [k for k in DIT_PANEL_KEYS - fam.keys if k in data]


def _timestep_preview(result: KohyaImport, data: dict[str, Any]) -> None:
    if not _empty(data.get("show_timesteps")):
        result.unsupported.append(f"show_timesteps = {data['show_timesteps']!r}: in sd-scripts it shows the timestep "
                                  "draw and exits without training; LoRA Studio has no such mode and trains")
    else:
        result.ignored += [k for k in ("show_timesteps",) if k in data]
    result.ignored += [k for k in ("show_timesteps_resolution",) if k in data]


def _dit_losses(result: KohyaImport, data: dict[str, Any]) -> None:
    if data.get("loss_type") in ("huber", "smooth_l1") and data.get("huber_schedule", "snr") == "snr":
        result.notes.append(f"loss_type = {data['loss_type']!r} with huber_schedule = 'snr': sd-scripts stops for "
                            "the flow-matching transformers (they have no DDPM noise schedule), and so does LoRA "
                            "Studio; set huber_schedule to constant or exponential")


def _resume_from_hub(result: KohyaImport, data: dict[str, Any]) -> None:
    """The Kohya_ss GUI's resume_from_huggingface is a text field (for the state's Hub path); any text in it turns
    sd-scripts' switch on, which then reads that path from resume."""
    value = data.get("resume_from_huggingface")
    if _empty(value):
        return
    try:
        parse_value(BY_NAME["resume_from_huggingface"], value)
    except ConfigError:  # a path, not true/false
        result.settings["resume_from_huggingface"] = True
    else:
        _put(result, "resume_from_huggingface", value, "resume_from_huggingface")
        return
    resume = data.get("resume")
    result.notes.append(f"resume_from_huggingface = {value!r} -> true: sd-scripts takes the state's Hub path from "
                        + (f"resume ({resume!r})" if not _empty(resume) else
                           "resume, which is empty, so nothing is resumed (as in Kohya_ss); put the path there"))


def _additional_parameters(result: KohyaImport, text: str) -> None:
    """The Kohya_ss GUI appends "Additional parameters" to sd-scripts' command line, where they win over the
    fields: ``--name=value``, ``--name value ...`` or ``--flag``, each imported as that setting."""
    import shlex

    from ..config.schema import BOOL, STR_LIST

    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        result.unsupported.append(f"Additional parameters {text!r} were not imported: {exc}")
        return
    options: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            options.append((name.replace("-", "_"), [value] if eq else []))
        elif options:
            options[-1][1].append(token)
        else:
            result.unsupported.append(f"Additional parameters: {token!r} is not an --option: not imported")
    for name, values in options:
        setting = BY_NAME.get(RENAMED.get(name, name))
        if setting is None:
            where = "an sd-scripts option LoRA Studio does not support yet" if name in UNSUPPORTED else \
                "not an sd-scripts training option"
            result.unsupported.append(f"Additional parameters: --{name} is {where}: not imported")
            continue
        if setting.kind == BOOL and not values:
            value: Any = True
        elif setting.kind == STR_LIST:
            value = values
        elif len(values) == 1:
            value = values[0]
        else:
            result.unsupported.append(f"Additional parameters: --{name} needs one value, got {values!r}: not "
                                      "imported")
            continue
        before = result.settings.get(setting.name)
        if _put(result, setting.name, value, f"--{name}", carried=False):
            result.notes.append(f"Additional parameters: --{name}{' ' + ' '.join(values) if values else ''} -> "
                                f"{setting.name} = {result.settings[setting.name]!r}"
                                + (f" (instead of {before!r}: it wins, as on sd-scripts' command line)"
                                   if before is not None and before != result.settings[setting.name] else ""))


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
    try:
        return convert(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def is_kohya_json(path: str | Path) -> bool:
    """A Kohya_ss GUI configuration is a ``.json`` file; training configs are TOML."""
    return str(path).lower().endswith(".json")


def import_kohya_json(path: str | Path, prompts_dir: str | Path) -> KohyaImport:
    """``read_kohya_json`` with its sample prompts written to ``prompts_dir`` (``write_sample_prompts``): what the GUI's
    Load and ``train --config preset.json`` both do."""
    return write_sample_prompts(read_kohya_json(path), path, prompts_dir)


def write_sample_prompts(result: KohyaImport, path: str | Path, prompts_dir: str | Path) -> KohyaImport:
    """The sample prompts (text in the JSON at ``path``) written to ``<prompts_dir>/<stem>_prompts.txt`` and
    ``sample_prompts`` set to that file."""
    from ..io_utils import atomic_write_bytes

    if result.sample_prompt_text:
        prompts = Path(prompts_dir) / f"{Path(path).stem}_prompts.txt"
        prompts.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(prompts, (result.sample_prompt_text.rstrip() + "\n").encode("utf-8"))
        result.settings["sample_prompts"] = str(prompts)
        result.notes.append(f"Sample prompts were written to {prompts}")
    return result
