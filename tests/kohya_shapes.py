"""Kohya_ss GUI configurations written here in the shapes its "Save config" produces (no file is copied from the
Kohya_ss repository): the JSON of its LoRA tab, one per LoRA type its dropdown offers, each with what the Kohya_ss
GUI passes to sd-scripts for it (its network_module and network_args templates, its run-length, warm-up, noise and
learning-rate rules), as shared/reference/kohya.md and the research notes record them."""

from __future__ import annotations

# Shaped like what the Kohya_ss GUI (v24/v25) writes with "Save config": its GUI field names, "" for unset, zeros
# that mean "off", and plenty of fields that only the GUI reads.
KOHYA_GUI_JSON = {
    "LoRA_type": "Standard", "adaptive_noise_scale": 0, "additional_parameters": "", "bucket_no_upscale": True,
    "bucket_reso_steps": 64, "cache_latents": True, "cache_latents_to_disk": False, "caption_dropout_every_n_epochs": 0,
    "caption_dropout_rate": 0.05, "caption_extension": ".txt", "clip_skip": 2, "color_aug": False, "conv_alpha": 1,
    "conv_dim": 1, "enable_bucket": True, "epoch": 10, "flip_aug": False, "full_fp16": False,
    "gradient_accumulation_steps": 1, "gradient_checkpointing": True, "keep_tokens": "0", "learning_rate": 0.0001,
    "logging_dir": "C:/lora/emi/log", "lr_scheduler": "cosine", "lr_scheduler_num_cycles": "", "lr_warmup": 10,
    "lr_warmup_steps": 0, "max_bucket_reso": 2048, "max_data_loader_n_workers": "0", "max_resolution": "512,512",
    "max_token_length": "75", "max_train_epochs": "", "max_train_steps": 0, "mem_eff_attn": False,
    "min_bucket_reso": 256, "min_snr_gamma": 5, "mixed_precision": "bf16", "network_alpha": 8, "network_dim": 16,
    "noise_offset": 0, "noise_offset_type": "Original", "num_cpu_threads_per_process": 2, "optimizer": "AdamW8bit",
    "optimizer_args": "weight_decay=0.01 betas=(0.9, 0.99)", "output_dir": "C:/lora/emi/model",
    "output_name": "emi_v1", "persistent_data_loader_workers": False,
    "pretrained_model_name_or_path": "C:/models/v1-5-pruned-emaonly.safetensors", "prior_loss_weight": 1.0,
    "random_crop": False, "reg_data_dir": "", "resume": "", "sample_every_n_epochs": 1, "sample_every_n_steps": 0,
    "sample_prompts": "emi, 1girl, smile --n lowres --w 512 --h 512 --d 1 --s 20 --l 7", "sample_sampler": "euler_a",
    "save_every_n_epochs": 2, "save_every_n_steps": 0, "save_last_n_steps": 0, "save_model_as": "safetensors",
    "save_precision": "fp16", "save_state": False, "scale_v_pred_loss_like_noise_pred": False, "sdxl": False,
    "seed": "", "shuffle_caption": True, "stop_text_encoder_training": 0, "text_encoder_lr": 5e-05,
    "train_batch_size": 2, "train_data_dir": "C:/lora/emi/img", "training_comment": "", "unet_lr": 0.0001,
    "use_wandb": False, "v2": False, "v_parameterization": False, "vae": "", "wandb_api_key": "",
    "weighted_captions": False, "xformers": "sdpa", "dataset_config": "", "network_dropout": 0,
}


# The fields every LyCORIS type's JSON carries (the GUI saves all its fields), at the GUI's defaults.
_LYCORIS_FIELDS = {"LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "use_tucker": False, "use_cp": False,
                   "use_scalar": False, "train_norm": False, "decompose_both": False, "rank_dropout_scale": False,
                   "bypass_mode": False, "dora_wd": False, "factor": -1, "train_on_input": True, "constrain": 0.0,
                   "rescaled": False, "unit": 1, "rank_dropout": 0, "module_dropout": 0}


def _lycoris(lora_type: str, **fields) -> dict:
    return {**KOHYA_GUI_JSON, **_LYCORIS_FIELDS, "LoRA_type": lora_type, **fields}


# name -> (the Kohya_ss JSON, what Kohya_ss passes to sd-scripts for it)
CORPUS = {
    "standard-dadaptadam": (
        {**KOHYA_GUI_JSON, "LoRA_type": "Standard", "optimizer": "DAdaptAdam", "learning_rate": 1.0,
         "unet_lr": 1.0, "text_encoder_lr": 1.0, "lr_scheduler": "cosine", "lr_warmup": 5, "rank_dropout": 0.1,
         "module_dropout": 0.05, "scale_weight_norms": 1, "noise_offset": 0.0357,
         "optimizer_args": '"decouple=True" "weight_decay=0.2" "betas=0.9,0.99" "growth_rate=1.02"',
         "additional_parameters": "--network_train_unet_only", "max_train_steps": 160, "epoch": 100},
        {"network_module": "networks.lora", "network_args": ["rank_dropout=0.1", "module_dropout=0.05"],
         "optimizer_type": "DAdaptAdam", "optimizer_args": ["decouple=True", "weight_decay=0.2", "betas=0.9,0.99",
                                                            "growth_rate=1.02"],
         "max_train_steps": 160, "lr_warmup_steps": 0.05, "scale_weight_norms": 1.0, "noise_offset": 0.0357,
         "network_train_unet_only": True, "learning_rate": 1.0}),
    "kohya-locon-prodigy": (
        {**KOHYA_GUI_JSON, "LoRA_type": "Kohya LoCon", "conv_dim": 8, "conv_alpha": 4, "optimizer": "Prodigy",
         "learning_rate": 1.0, "unet_lr": 1.0, "text_encoder_lr": 1.0, "lr_scheduler": "constant",
         "optimizer_args": "decouple=True weight_decay=0.45 d_coef=2 use_bias_correction=True safeguard_warmup=True",
         "additional_parameters": '--lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args "T_max=30"'},
        {"network_module": "networks.lora", "network_args": ["conv_dim=8", "conv_alpha=4"],
         "optimizer_type": "Prodigy", "lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": ["T_max=30"],
         "max_train_epochs": 10}),
    "lora-fa": (
        {**KOHYA_GUI_JSON, "LoRA_type": "LoRA-FA", "optimizer": "AdamW", "lr_scheduler": "linear", "lr_warmup": 0},
        {"network_module": "networks.lora_fa", "optimizer_type": "AdamW", "lr_scheduler": "linear"}),
    "kohya-dylora-adafactor": (
        {**KOHYA_GUI_JSON, "LoRA_type": "Kohya DyLoRA", "unit": 2, "conv_dim": 0, "conv_alpha": 0, "optimizer":
         "Adafactor", "optimizer_args": "", "lr_scheduler": "adafactor", "lr_warmup": 0, "max_grad_norm": 0,
         "rank_dropout": 0.1},
        {"network_module": "networks.dylora", "network_args": ["unit=2"], "optimizer_type": "Adafactor",
         "lr_scheduler": "adafactor", "max_grad_norm": 1.0}),
    "lycoris-locon": (
        _lycoris("LyCORIS/LoCon", conv_dim=4, conv_alpha=2, dora_wd=True, rank_dropout=0.1),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=full", "conv_dim=4", "conv_alpha=2", "use_tucker=False", "rank_dropout=0.1",
                          "bypass_mode=False", "dora_wd=True", "module_dropout=0", "use_tucker=False",
                          "use_scalar=False",
                          "rank_dropout_scale=False", "algo=locon", "train_norm=False"]}),
    "lycoris-loha-multires": (
        _lycoris("LyCORIS/LoHa", conv_dim=4, conv_alpha=1, use_tucker=True, use_scalar=True,
                 noise_offset_type="Multires", noise_offset=0.0357, multires_noise_iterations=8,
                 multires_noise_discount=0.2, scale_weight_norms=1, optimizer="AdamW"),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=full", "conv_dim=4", "conv_alpha=1", "use_tucker=True", "rank_dropout=0",
                          "bypass_mode=False", "dora_wd=False", "module_dropout=0", "use_tucker=True",
                          "use_scalar=True", "rank_dropout_scale=False", "algo=loha", "train_norm=False"],
         "multires_noise_iterations": 8, "multires_noise_discount": 0.2, "scale_weight_norms": 1.0}),
    "lycoris-lokr-full-matrix": (
        _lycoris("LyCORIS/LoKr", network_dim=100000, network_alpha=1, conv_dim=100000, conv_alpha=1, factor=4,
                 use_cp=True, train_norm=True, decompose_both=True, rank_dropout_scale=True, optimizer="AdamW",
                 optimizer_args='"weight_decay=0.1" "betas=0.9,0.99"', max_train_steps=113, epoch=20,
                 save_every_n_steps=29, noise_offset_type="Multires", multires_noise_iterations=10,
                 multires_noise_discount=0.3, adaptive_noise_scale=0.005),
        {"network_module": "lycoris.kohya", "network_dim": 100000,
         "network_args": ["preset=full", "conv_dim=100000", "conv_alpha=1", "use_tucker=False", "rank_dropout=0",
                          "bypass_mode=False", "dora_wd=False", "module_dropout=0", "factor=4", "use_cp=True",
                          "use_scalar=False", "decompose_both=True", "rank_dropout_scale=True", "algo=lokr",
                          "train_norm=True"],
         "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"], "max_train_steps": 113,
         "save_every_n_steps": 29}),
    "lycoris-ia3-prodigy": (
        _lycoris("LyCORIS/iA3", optimizer="Prodigy", learning_rate=1.0, unet_lr=1.0, text_encoder_lr=1.0,
                 network_dropout=0.3, optimizer_args="d_coef=1.0 weight_decay=0.01 safeguard_warmup=False "
                                                     "use_bias_correction=False"),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=full", "conv_dim=1", "conv_alpha=1", "train_on_input=True", "algo=ia3"],
         "network_dropout": 0.3}),
    "lycoris-dylora": (
        _lycoris("LyCORIS/DyLoRA", unit=2),
        {"network_module": "lycoris.kohya",  # conv_dim 1 is not a multiple of the unit: LyCORIS would stop
         "network_args": ["preset=full", "use_tucker=False", "block_size=2", "rank_dropout=0", "module_dropout=0",
                          "algo=dylora", "train_norm=False"]}),
    "lycoris-glora": (
        _lycoris("LyCORIS/GLoRA", LyCORIS_preset="attn-mlp"),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=attn-mlp", "conv_dim=1", "conv_alpha=1", "use_tucker=False", "rank_dropout=0",
                          "module_dropout=0", "rank_dropout_scale=False", "algo=glora", "train_norm=False"]}),
    "lycoris-boft": (
        _lycoris("LyCORIS/BOFT", train_norm=True),
        {"network_module": "lycoris.kohya",  # conv_dim 1 cannot be a butterfly factor: LyCORIS would stop
         "network_args": ["preset=full", "module_dropout=0", "use_tucker=False", "rank_dropout=0",
                          "rank_dropout_scale=False", "algo=boft", "train_norm=True"]}),
    "lycoris-diag-oft": (
        _lycoris("LyCORIS/Diag-OFT", constrain=0.0001, rescaled=True, optimizer="AdamW8bit"),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=full", "conv_dim=1", "conv_alpha=1", "module_dropout=0", "use_tucker=False",
                          "rank_dropout=0", "rank_dropout_scale=False", "constraint=0.0001", "rescaled=True",
                          "algo=diag-oft", "train_norm=False"],
         "optimizer_type": "AdamW8bit"}),
    "lycoris-native-fine-tuning": (
        _lycoris("LyCORIS/Native Fine-Tuning", LyCORIS_preset="attn-only", learning_rate=1e-5, unet_lr=1e-5,
                 text_encoder_lr=5e-6),
        {"network_module": "lycoris.kohya",
         "network_args": ["preset=attn-only", "rank_dropout=0", "module_dropout=0", "rank_dropout_scale=False",
                          "algo=full", "train_norm=False"],
         "unet_lr": 1e-5, "text_encoder_lr": 5e-6}),
}

# An SDXL preset: SDXL flags, the U-Net only (text encoder learning rate 0), cached text-encoder outputs.
SDXL_CORPUS = {
    "sdxl-standard-adafactor": (
        {**KOHYA_GUI_JSON, "LoRA_type": "Standard", "sdxl": True, "sdxl_no_half_vae": True,
         "sdxl_cache_text_encoder_outputs": True, "text_encoder_lr": 0, "unet_lr": 1e-4, "optimizer": "Adafactor",
         "optimizer_args": "scale_parameter=False relative_step=False warmup_init=False",
         "lr_scheduler": "constant_with_warmup", "lr_warmup": 0, "max_resolution": "1024,1024",
         "xformers": "xformers", "min_snr_gamma": 5, "shuffle_caption": False, "caption_dropout_rate": 0},
        {"network_module": "networks.lora", "network_train_unet_only": True, "cache_text_encoder_outputs": True,
         "no_half_vae": True, "optimizer_type": "Adafactor", "resolution": "1024", "xformers": True,
         "optimizer_args": ["scale_parameter=False", "relative_step=False", "warmup_init=False"]}),
}


def unhandled_keys(data: dict, result) -> list[str]:
    """The JSON's keys an import neither carried over, nor named in a note or as unsupported, nor listed as the
    GUI's own; a value that means "not set" in Kohya_ss ("", 0, false) counts as handled."""
    import re

    said = " ".join(result.notes + result.unsupported)
    return sorted(k for k, v in data.items()
                  if k not in result.carried and k not in result.ignored and not re.search(rf"\b{k}\b", said)
                  and v not in ("", None, 0, False) and not (k == "sample_prompts" and result.sample_prompt_text))


def one_note(result, start: str) -> str:
    """The import's one note that starts with ``start``."""
    found = [n for n in result.notes if n.startswith(start)]
    assert len(found) == 1, (start, result.notes)
    return found[0]
