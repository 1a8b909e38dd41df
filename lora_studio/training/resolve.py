"""The settings a run trains with, and every warning about them, from the config and the scanned dataset.

``resolve`` is the one step between a checked config and a training run: the engine calls it before it loads the
model, and the GUI's **Check settings** calls it on the same config and dataset, so what the run will do differently
from what was written (``save_n_epoch_ratio``, ``dim_from_weights``) and what has no effect is seen before a start.
Warnings that only the running machine or the built model can know (an optimizer's eps in fp16, a package that will
not load) stay where they are found.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ..config import Config, parse_key_values
from ..config.network_args import parse_network_args
from ..config.optimizers import SCHEDULE_FREE
from ..data.dataset import TrainingData
from ..data.prompt_weights import separator_inside_brackets
from .plan import StepPlan, plan_steps, warmup_steps
from .trackers import wandb_key_missing

log = logging.getLogger("lora_studio")


@dataclass
class Resolved:
    cfg: Config  # the settings the run trains with
    plan: StepPlan
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (setting, message): no effect, or a surprise
    notes: list[tuple[str, str]] = field(default_factory=list)  # (setting, message): a setting turned into others

    def messages(self) -> list[str]:
        return [f"{name}: {message}" for name, message in self.warnings]

    def log(self) -> None:
        for name, message in self.notes:
            log.info("%s: %s", name, message)
        for name, message in self.warnings:
            log.warning("%s: %s", name, message)


def resolve(cfg: Config, data: TrainingData, world: int = 1, cuda: bool = False, family=None) -> Resolved:
    """``family``: the model family, when the caller knows it; else read from the model's header (None when it
    cannot be: loading then says why)."""
    plan = plan_steps(data.batches_per_epoch, cfg, world)
    result = Resolved(cfg, plan)
    _save_n_epoch_ratio(result)
    _dim_from_weights(result)
    for check in (_data_loading, _captions_and_caches, _validation, _schedule, _network, _precision, _wandb_key):
        check(result, data, cuda)
    _family(result, data, family if family is not None else family_of_config(cfg))
    return result


def family_of_config(cfg: Config):
    """The family of the config's model as far as its header tells (torch-free), or None."""
    from ..errors import UserError
    from ..models.registry import identify

    if not cfg.pretrained_model_name_or_path:
        return None
    try:
        return identify(cfg.pretrained_model_name_or_path, cfg.v2, cfg.allow_pickle, own_vae=bool(cfg.vae))
    except UserError:
        return None


def check_pixel_multiple(datasets, family) -> None:
    """Image sides (resolution, bucket steps) are multiples of the family's pixel multiple (Flux: 16, its
    autoencoder's 8 x the transformer's 2 x 2 patches); the dataset check asks the same."""
    from ..errors import UserError

    multiple = family.pixel_multiple
    why = " (its autoencoder's 8 x the transformer's 2 x 2 patches)" if multiple == 16 else ""
    for dataset in datasets:
        w, h = dataset.resolution
        if w % multiple or h % multiple:
            raise UserError(f"resolution must be a multiple of {multiple} for {family.title}{why}, got {w},{h}")
        if dataset.bucket_reso_steps % multiple:
            raise UserError(f"bucket_reso_steps must be a multiple of {multiple} for {family.title}, got "
                            f"{dataset.bucket_reso_steps}")


def _family(r: Resolved, data: TrainingData, family) -> None:
    """What the model family makes of the settings: the settings of other families that mean nothing for it (named,
    never silently ignored), its pixel multiple, its own requirements."""
    from ..config.schema import SETTINGS
    from ..errors import UserError

    if family is None:
        return
    cfg = r.cfg
    for setting in SETTINGS:
        value = getattr(cfg, setting.name)
        if setting.families and family.name not in setting.families and value not in (setting.default, None, False):
            why = family.ignored_settings.get(setting.name, "it applies to other model families")
            r.warnings.append((setting.name, f"has no effect with {family.title} ({why})"))
    check_pixel_multiple(data.datasets, family)
    r.warnings.extend(family.check_settings(cfg))
    if cfg.loss_type in ("huber", "smooth_l1") and cfg.huber_schedule == "snr" and not family.snr_schedule:
        raise UserError(f"huber_schedule = \"snr\" needs a DDPM noise schedule, which {family.title} has not; set "
                        "huber_schedule to constant or exponential")


def _save_n_epoch_ratio(r: Resolved) -> None:
    if r.cfg.save_n_epoch_ratio:  # sd-scripts: about this many epoch files over the run
        every = math.floor(r.plan.total_epochs / r.cfg.save_n_epoch_ratio) or 1
        r.notes.append(("save_n_epoch_ratio", f"a LoRA file every {every} epoch(s) of {r.plan.total_epochs} (about "
                                              f"{r.cfg.save_n_epoch_ratio} over the run)"))
        r.cfg = r.cfg.replace(save_every_n_epochs=every)


def _dim_from_weights(r: Resolved) -> None:
    """The ranks of the network_weights file become this run's settings (metadata, saved config)."""
    if not r.cfg.dim_from_weights:
        return
    from ..network.lora import ranks_in_file

    rank, conv_dim = ranks_in_file(r.cfg.network_weights)
    args = [a for a in (r.cfg.network_args or []) if not a.replace(" ", "").startswith("conv_dim=")]
    r.notes.append(("dim_from_weights", f"rank {rank}{f', conv rank {conv_dim}' if conv_dim else ''} from "
                                        f"{r.cfg.network_weights}"))
    r.cfg = r.cfg.replace(network_dim=rank,
                          network_args=args + ([f"conv_dim={conv_dim}"] if conv_dim else []) or None)


def _data_loading(r: Resolved, data: TrainingData, cuda: bool) -> None:
    if r.cfg.persistent_data_loader_workers and not r.cfg.max_data_loader_n_workers:
        r.warnings.append(("persistent_data_loader_workers", "has no effect with max_data_loader_n_workers = 0 (the "
                                                             "images load in the training process)"))


def _captions_and_caches(r: Resolved, data: TrainingData, cuda: bool) -> None:
    cfg = r.cfg
    if cfg.weighted_captions:
        split = [it.path.name for it in data.items
                 if (it.subset.shuffle_caption or it.subset.caption_tag_dropout_rate > 0
                     or it.subset.token_warmup_step > 0)
                 and separator_inside_brackets(it.caption, it.subset.caption_separator)]
        if split:
            shown = ", ".join(split[:3]) + (f" and {len(split) - 3} more" if len(split) > 3 else "")
            r.warnings.append(("weighted_captions", f"the captions of {shown} have a tag separator inside emphasis "
                                                    "brackets; shuffling or dropping tags splits those brackets and "
                                                    "their weights go astray (as in sd-scripts)"))
    redrawn = data.redrawn_folders()
    if (cfg.cache_latents or cfg.cache_latents_to_disk) and redrawn:
        r.warnings.append(("cache_latents", f"latent caching is off: color_aug / random_crop give "
                                            f"{', '.join(redrawn)} another picture each time it is drawn, so its "
                                            "latents cannot be made once (sd-scripts refuses the two together)"))


def _validation(r: Resolved, data: TrainingData, cuda: bool) -> None:
    if (r.cfg.save_best or r.cfg.early_stop_patience) and not data.num_validation_images:
        r.warnings.append(("validation_split", "save_best and early_stop_patience need a validation loss: set "
                                               "validation_split (e.g. 0.1) to hold out images; they do nothing now"))


def uses_schedule_free(optimizer_type: str | None) -> bool:
    return (optimizer_type or "").lower() in SCHEDULE_FREE or "schedulefree" in (optimizer_type or "").lower()


def adafactor_relative_step(cfg: Config) -> bool:
    """As sd-scripts sets Adafactor up: relative_step unless optimizer_args turns it off (warmup_init turns it on)."""
    if (cfg.optimizer_type or "").lower() != "adafactor":
        return False
    kwargs = parse_key_values(cfg.optimizer_args, "optimizer_args")
    return bool(kwargs.get("relative_step", True) or kwargs.get("warmup_init"))


def _schedule(r: Resolved, data: TrainingData, cuda: bool) -> None:
    cfg = r.cfg
    warmup = warmup_steps(cfg, r.plan.total_steps)
    if cfg.lr_scheduler_type and cfg.lr_warmup_steps:
        r.warnings.append(("lr_warmup_steps", f"ignored with lr_scheduler_type {cfg.lr_scheduler_type} (as in "
                                              "sd-scripts)"))
    elif uses_schedule_free(cfg.optimizer_type) and cfg.lr_warmup_steps:
        r.warnings.append(("lr_warmup_steps", f"ignored with {cfg.optimizer_type} (as in sd-scripts); give "
                                              "optimizer_args warmup_steps=N instead"))
    elif warmup and cfg.lr_scheduler == "constant" and not adafactor_relative_step(cfg):
        r.warnings.append(("lr_warmup_steps", f"{warmup} warm-up steps are ignored by lr_scheduler \"constant\" (as "
                                              "in sd-scripts); use \"constant_with_warmup\""))
    if adafactor_relative_step(cfg) and (cfg.unet_lr is not None or cfg.text_encoder_lr is not None):
        r.warnings.append(("unet_lr", "Adafactor with relative_step: unet_lr and text_encoder_lr are ignored (as in "
                                      "sd-scripts); it finds each step size itself"))


def _network(r: Resolved, data: TrainingData, cuda: bool) -> None:
    args = parse_network_args(r.cfg.network_args, r.cfg.network_module)
    if args.not_read:
        them = "them" if len(args.not_read) > 1 else "it"
        r.warnings.append(("network_args", f"lycoris.kohya does not read {', '.join(args.not_read)}; no effect, as "
                                           f"when Kohya_ss passes {them}"))
    if not args.diffusers_loads:
        r.warnings.append(("network_args", f"{args.describe()} files load in AUTOMATIC1111, Forge and ComfyUI; "
                                           "diffusers cannot load them"))


def _precision(r: Resolved, data: TrainingData, cuda: bool) -> None:
    from . import faults

    cfg = r.cfg
    if cfg.mixed_precision == "fp16" and not cuda and not faults.cpu_loss_scaling():
        r.warnings.append(("mixed_precision", "fp16 needs an NVIDIA GPU; training in fp32 on this CPU instead"))
    if cfg.full_fp16 and cfg.mixed_precision == "fp16" and not cuda and not faults.cpu_loss_scaling():
        r.warnings.append(("full_fp16", "needs mixed precision fp16, which this machine does not run: the adapters "
                                        "train in fp32"))


def _wandb_key(r: Resolved, data: TrainingData, cuda: bool) -> None:
    missing = wandb_key_missing(r.cfg)
    if missing:
        r.warnings.append(("log_with", missing))
