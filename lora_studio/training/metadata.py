"""The ``ss_*`` and ``modelspec.*`` metadata of a LoRA file (what A1111's card, civitai and SwarmUI read)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.network_args import parse_network_args
from ..config import Config, parse_key_values
from ..data.dataset import TrainingData
from ..models.family import Components
from ..file_hashes import cached_sha256
from ..saving import legacy_model_hash, utc_now_iso


def _model_hashes(path: str | None) -> tuple[str | None, str | None]:
    """(A1111's old 8-character hash, sha256) of a model file; a diffusers folder has neither (A1111 and civitai
    identify single files). The sha256 comes from the cache (file_hashes) when the file is unchanged."""
    if not path or not os.path.isfile(path):
        return None, None
    return legacy_model_hash(path), cached_sha256(path)


class RunMetadata:
    """Metadata fixed for the run; ``for_save`` adds what changes with each file (epoch, step, time)."""

    def __init__(self, cfg: Config, data: TrainingData, components: Components, session_id: int, started_at: float,
                 total_steps: int, total_epochs: int, seed: int, world_size: int, optimizer_desc: str):
        family = components.family
        model_hash, new_model_hash = _model_hashes(cfg.pretrained_model_name_or_path)
        vae_hash, new_vae_hash = _model_hashes(cfg.vae)
        unet_lr = cfg.unet_lr if cfg.unet_lr is not None else cfg.learning_rate
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
        dataset_dirs = {}
        reg_dirs = {}
        for item in data.items:
            target = reg_dirs if item.subset.is_reg else dataset_dirs
            entry = target.setdefault(item.subset.name, {"n_repeats": item.subset.num_repeats,
                                                                   "img_count": 0})
            entry["img_count"] += 1
        buckets = {str(i): {"resolution": [b[0], b[1]], "count": n}
                   for i, (b, n) in enumerate(sorted(data.bucket_counts().items()))}
        network_args = parse_key_values(cfg.network_args, "network_args")
        net = parse_network_args(cfg.network_args, cfg.network_module)
        spec0 = data.datasets[0]
        self.fixed: dict[str, Any] = {
            "ss_session_id": session_id, "ss_training_started_at": started_at,
            "ss_output_name": cfg.output_name, "ss_learning_rate": cfg.learning_rate, "ss_unet_lr": unet_lr,
            "ss_text_encoder_lr": te_lr, "ss_num_train_images": data.num_train_images,
            "ss_num_reg_images": data.num_reg_images, "ss_num_batches_per_epoch": data.batches_per_epoch,
            "ss_num_epochs": total_epochs, "ss_max_train_steps": total_steps, "ss_lr_scheduler": cfg.lr_scheduler,
            "ss_lr_warmup_steps": cfg.lr_warmup_steps, "ss_optimizer": optimizer_desc, "ss_seed": seed,
            "ss_gradient_checkpointing": cfg.gradient_checkpointing,
            "ss_gradient_accumulation_steps": cfg.gradient_accumulation_steps, "ss_max_grad_norm": cfg.max_grad_norm,
            "ss_mixed_precision": cfg.mixed_precision, "ss_full_fp16": bool(cfg.full_fp16),
            "ss_fp8_base": bool(cfg.fp8_base), "ss_fp8_base_unet": bool(cfg.fp8_base_unet), "ss_lowram": cfg.lowram,
            # plain LoRA on a transformer is sd-scripts' module of its family (networks.lora_flux, lora_sd3 ...)
            "ss_network_module": family.lora_module if family.lora_module and cfg.network_module in (
                "networks.lora", "lora_studio.lora") else cfg.network_module,
            "ss_network_dim": cfg.network_dim,
            "ss_network_alpha": cfg.network_alpha if cfg.network_alpha else cfg.network_dim,
            "ss_network_args": network_args or None, "ss_network_dropout": cfg.network_dropout,
            # which programs read this file (not an sd-scripts key; A1111 and civitai show unknown keys as they are)
            "lora_studio_loads_in": "AUTOMATIC1111, Forge, ComfyUI" + (", diffusers" if net.diffusers_loads else
                                                                         f" (not diffusers: it cannot load "
                                                                         f"{net.describe()})"),
            "ss_v2": bool(cfg.v2), "ss_base_model_version": family.base_model_version, "ss_clip_skip": cfg.clip_skip,
            "ss_max_token_length": cfg.max_token_length, "ss_cache_latents": cfg.cache_latents or
            cfg.cache_latents_to_disk, "ss_sd_model_name": Path(cfg.pretrained_model_name_or_path).name,
            "ss_sd_model_hash": model_hash, "ss_new_sd_model_hash": new_model_hash,
            "ss_vae_name": Path(cfg.vae).name if cfg.vae else None, "ss_vae_hash": vae_hash,
            "ss_new_vae_hash": new_vae_hash, "ss_noise_offset": cfg.noise_offset or None,
            "ss_noise_offset_random_strength": cfg.noise_offset_random_strength,
            "ss_adaptive_noise_scale": cfg.adaptive_noise_scale,
            "ss_multires_noise_iterations": cfg.multires_noise_iterations,
            "ss_multires_noise_discount": cfg.multires_noise_discount, "ss_ip_noise_gamma": cfg.ip_noise_gamma,
            "ss_ip_noise_gamma_random_strength": cfg.ip_noise_gamma_random_strength,
            "ss_debiased_estimation": bool(cfg.debiased_estimation_loss),
            "ss_scale_weight_norms": cfg.scale_weight_norms, "ss_zero_terminal_snr": bool(cfg.zero_terminal_snr),
            "ss_v_parameterization": bool(cfg.v_parameterization), "ss_loss_type": cfg.loss_type,
            "ss_huber_schedule": cfg.huber_schedule, "ss_huber_scale": cfg.huber_scale, "ss_huber_c": cfg.huber_c,
            "ss_scale_v_pred_loss_like_noise_pred": bool(cfg.scale_v_pred_loss_like_noise_pred),
            "ss_v_pred_like_loss": cfg.v_pred_like_loss,
            "ss_min_snr_gamma": cfg.min_snr_gamma, "ss_prior_loss_weight": cfg.prior_loss_weight,
            "ss_training_comment": cfg.training_comment, "ss_caption_dropout_rate": cfg.caption_dropout_rate,
            "ss_caption_tag_dropout_rate": cfg.caption_tag_dropout_rate,
            "ss_batch_size_per_device": spec0.batch_size, "ss_total_batch_size": spec0.batch_size * world_size *
            cfg.gradient_accumulation_steps, "ss_resolution": f"({spec0.resolution[0]}, {spec0.resolution[1]})",
            "ss_flip_aug": cfg.flip_aug, "ss_shuffle_caption": cfg.shuffle_caption,
            "ss_enable_bucket": spec0.enable_bucket, "ss_bucket_no_upscale": spec0.bucket_no_upscale,
            "ss_min_bucket_reso": spec0.min_bucket_reso, "ss_max_bucket_reso": spec0.max_bucket_reso,
            "ss_keep_tokens": cfg.keep_tokens, "ss_dataset_dirs": dataset_dirs, "ss_reg_dataset_dirs": reg_dirs,
            "ss_tag_frequency": data.tag_frequency(), "ss_bucket_info": {"buckets": buckets},
            "ss_lora_studio_version": __version__,
            "ss_num_validation_images": data.num_validation_images, "ss_validation_split": spec0.validation_split,
            "ss_validation_seed": cfg.validation_seed, "ss_max_validation_steps": cfg.max_validation_steps,
            "ss_validate_every_n_epochs": cfg.validate_every_n_epochs,
            "ss_validate_every_n_steps": cfg.validate_every_n_steps,
            **family.metadata(cfg),  # the family's own recipe keys (Flux: sd-scripts' ss_timestep_sampling ...)
        }
        self.modelspec: dict[str, Any] = {
            "sai_model_spec": "1.0.1", "architecture": family.architecture(cfg.v_parameterization),
            "implementation": family.modelspec_implementation, "title": cfg.output_name,
            "resolution": f"{spec0.resolution[0]}x{spec0.resolution[1]}",
            "prediction_type": family.modelspec_prediction_type(cfg.v_parameterization),
            "implementation_version": f"lora-studio/{__version__}",
        }
        if self.modelspec["prediction_type"] is None:
            del self.modelspec["prediction_type"]
        self.title = cfg.metadata_title
        for key in ("author", "description", "license", "tags"):  # sd-scripts' metadata_* settings
            value = getattr(cfg, f"metadata_{key}")
            if value:
                self.modelspec[key] = value
        if cfg.training_comment and not cfg.metadata_description:
            self.modelspec["description"] = cfg.training_comment
        if cfg.min_timestep is not None or cfg.max_timestep is not None:
            self.modelspec["timestep_range"] = f"{cfg.min_timestep or 0},{cfg.max_timestep or 1000}"
        tokens = sorted({it.subset.class_tokens for it in data.items if it.subset.class_tokens
                         and not it.subset.is_reg})
        if tokens:
            self.modelspec["trigger_phrase"] = ", ".join(tokens)

    def for_save(self, epoch: int, step: int, finished_at: float, title: str,
                 extra: dict | None = None) -> tuple[dict, dict]:
        meta = {**self.fixed, "ss_epoch": epoch, "ss_steps": step, "ss_training_finished_at": finished_at,
                **(extra or {})}
        spec = {**self.modelspec, "date": utc_now_iso(), "title": self.title or title}
        return meta, spec


def describe_optimizer(optimizer, args: list[str] | None) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__name__}" + (f"({','.join(args)})" if args else "")
