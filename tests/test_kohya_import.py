"""Importing a Kohya_ss GUI JSON configuration."""

from __future__ import annotations

import json

import pytest

from lora_studio.config import build_config
from lora_studio.errors import ConfigError
from lora_studio.config.kohya_import import convert, read_kohya_json

from kohya_shapes import KOHYA_GUI_JSON

def test_a_kohya_gui_config_becomes_the_same_training_settings(tmp_path):
    path = tmp_path / "emi.json"
    path.write_text(json.dumps(KOHYA_GUI_JSON, indent=2), encoding="utf-8")
    result = read_kohya_json(path)
    s = result.settings
    expected = {
        "network_module": "networks.lora", "pretrained_model_name_or_path": "C:/models/v1-5-pruned-emaonly.safetensors",
        "train_data_dir": "C:/lora/emi/img", "output_dir": "C:/lora/emi/model", "logging_dir": "C:/lora/emi/log",
        "output_name": "emi_v1", "resolution": "512", "max_train_epochs": 10, "train_batch_size": 2,
        "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "lr_scheduler": "cosine",
        "lr_warmup_steps": 0.1, "optimizer_type": "AdamW8bit", "optimizer_args": ["weight_decay=0.01",
                                                                                   "betas=(0.9, 0.99)"],
        "network_dim": 16, "network_alpha": 8.0, "sdpa": True, "clip_skip": 2, "keep_tokens": 0,
        "min_snr_gamma": 5.0, "mixed_precision": "bf16", "save_every_n_epochs": 2, "sample_every_n_epochs": 1,
        "sample_sampler": "euler_a", "gradient_checkpointing": True, "shuffle_caption": True,
        "caption_dropout_rate": 0.05, "bucket_no_upscale": True, "enable_bucket": True, "max_bucket_reso": 2048,
        "noise_offset": 0.0, "network_dropout": 0.0, "max_token_length": 75,
    }
    for name, value in expected.items():
        assert s[name] == value, name
    # "" and the zeros that mean "off" in that GUI stay unset
    for name in ("seed", "max_train_steps", "save_every_n_steps", "sample_every_n_steps", "reg_data_dir", "vae",
                 "training_comment", "lr_scheduler_num_cycles"):
        assert name not in s, name
    assert result.sample_prompt_text.startswith("emi, 1girl")
    assert "num_cpu_threads_per_process" in result.ignored and "use_wandb" in result.ignored
    cfg = build_config(s)  # everything imported is a valid config
    assert cfg.max_train_epochs == 10 and cfg.text_encoder_lr == 5e-5


def test_unsupported_values_are_listed_not_dropped_silently():
    result = convert({**KOHYA_GUI_JSON, "LoRA_type": "HunyuanImage-2.1", "fused_backward_pass": True,
                      "lr_scheduler": "adafactor", "additional_parameters": "--foo 1", "color_aug": True,
                      "masked_loss": True})
    report = result.report()
    assert "LoRA type 'HunyuanImage-2.1'" in report and "which LoRA Studio does not train" in report
    # Flux is trained now (tests/test_kohya_import_flux.py): its LoRA type is carried over, not refused
    flux = convert({**KOHYA_GUI_JSON, "LoRA_type": "Flux1"})
    assert "LoRA_type" in flux.carried and not [n for n in flux.unsupported if "LoRA type" in n]
    assert "LoRA Studio reads the model family (Flux.1 dev, schnell or Chroma) from the checkpoint" in flux.report()
    assert "fused_backward_pass = True is an sd-scripts option LoRA Studio does not support yet" in report
    assert result.settings["color_aug"] is True and result.settings["masked_loss"] is True
    assert "masked_loss = true: set the Mask folder (conditioning_data_dir" in report
    assert "Additional parameters: --foo is not an sd-scripts training option: not imported" in report
    assert result.settings["lr_scheduler"] == "adafactor"


def test_the_hugging_face_fields_are_carried_over():
    fields = {"huggingface_repo_id": "me/emi-lora", "huggingface_token": "hf_abc", "huggingface_repo_type": "",
              "huggingface_repo_visibility": "public", "huggingface_path_in_repo": "emi",
              "save_state_to_huggingface": True, "async_upload": True, "resume_from_huggingface": ""}
    result = convert({**KOHYA_GUI_JSON, **fields})
    s = result.settings
    assert (s["huggingface_repo_id"], s["huggingface_token"], s["huggingface_repo_visibility"],
            s["huggingface_path_in_repo"], s["save_state_to_huggingface"], s["async_upload"]) == (
        "me/emi-lora", "hf_abc", "public", "emi", True, True)
    assert "huggingface_repo_type" not in s and "resume_from_huggingface" not in s  # empty fields: not passed
    assert {"huggingface_repo_id", "async_upload"} <= set(result.carried) and "hf_abc" not in result.report()
    assert build_config(s).huggingface_repo_id == "me/emi-lora"
    # the GUI's resume_from_huggingface is a text field: any text turns sd-scripts' switch on; resume holds the path
    hub = convert({**KOHYA_GUI_JSON, "resume_from_huggingface": "me/emi-lora/emi-state", "resume": ""})
    assert hub.settings["resume_from_huggingface"] is True and "resume" not in hub.settings
    assert ("resume_from_huggingface = 'me/emi-lora/emi-state' -> true: sd-scripts takes the state's Hub path from "
            "resume, which is empty, so nothing is resumed") in hub.report()
    both = convert({**KOHYA_GUI_JSON, "resume_from_huggingface": "x", "resume": "me/emi-lora/emi-state:main"})
    assert both.settings["resume"] == "me/emi-lora/emi-state:main" and both.settings["resume_from_huggingface"]
    assert convert({**KOHYA_GUI_JSON, "resume_from_huggingface": True}).settings["resume_from_huggingface"] is True


def test_the_accelerate_compile_fields_are_carried_over():
    """The GUI's dynamo_mode / dynamo_use_fullgraph / dynamo_use_dynamic (accelerate's launch fields) set how
    torch_compile compiles here."""
    fields = {"torch_compile": True, "dynamo_backend": "inductor", "dynamo_mode": "reduce-overhead",
              "dynamo_use_fullgraph": True, "dynamo_use_dynamic": False}
    result = convert({**KOHYA_GUI_JSON, **fields})
    cfg = build_config(result.settings)
    assert (cfg.torch_compile, cfg.dynamo_mode, cfg.dynamo_use_fullgraph, cfg.dynamo_use_dynamic) == (
        True, "reduce-overhead", True, False)
    assert not {"dynamo_mode", "dynamo_use_fullgraph"} & set(result.ignored)


def test_learning_rate_zeros_keep_the_kohya_meaning():
    both = convert({"learning_rate": 1e-4, "unet_lr": 0, "text_encoder_lr": 0})
    assert "unet_lr" not in both.settings and "text_encoder_lr" not in both.settings  # "use Learning rate"
    te_off = convert({"learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 0})
    assert te_off.settings["text_encoder_lr"] == 0.0
    assert "text_encoder_lr = 0: that part of the model is not trained" in te_off.report()
    assert convert({"epoch": 4, "max_train_epochs": 6}).settings["max_train_epochs"] == 6
    # Max train steps 0: Kohya_ss computes the steps of `epoch` epochs from the image folder (not here: epochs)
    assert convert({"epoch": 4, "max_train_epochs": "", "max_train_steps": 0}).settings["max_train_epochs"] == 4
    assert convert({"max_resolution": "768,512"}).settings["resolution"] == "768,512"
    assert convert({"xformers": "xformers"}).settings["xformers"] is True
    locon = convert({"LoRA_type": "Kohya LoCon", "conv_dim": 8, "conv_alpha": 4}).settings
    assert locon["network_args"] == ["conv_dim=8", "conv_alpha=4"]
    loha = convert({"LoRA_type": "LyCORIS/LoHa", "conv_dim": 4, "conv_alpha": 1, "dora_wd": True}).settings
    assert loha["network_module"] == "lycoris.kohya"
    # the Kohya_ss GUI's LoHa template, in its order (use_tucker twice), the GUI's defaults for what is missing
    assert loha["network_args"] == ["preset=full", "conv_dim=4", "conv_alpha=1", "use_tucker=False",
                                    "rank_dropout=0", "bypass_mode=False", "dora_wd=True", "module_dropout=0.0",
                                    "use_tucker=False", "use_scalar=False", "rank_dropout_scale=False", "algo=loha",
                                    "train_norm=False"]


def test_a_file_that_is_not_a_kohya_config_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected an object"):
        read_kohya_json(bad)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a Kohya_ss JSON"):
        read_kohya_json(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_kohya_json(tmp_path / "missing.json")


def test_the_run_length_is_the_one_kohya_trains(tmp_path):
    """sd-scripts never reads `epoch`: Max train epoch wins, else Max train steps, else the Kohya_ss GUI computes the
    steps from the image folder; a preset without Max train steps keeps the GUI's 1600."""
    from lora_studio.demo import write_dataset

    img = write_dataset(tmp_path / "data", count=7, repeats=3)  # 21 images with repeats
    (img / "3_lsdemo shape" / "notes.txt").write_text("not an image")
    steps = convert({"epoch": 100, "max_train_steps": 160, "max_train_epochs": ""})
    assert steps.settings["max_train_steps"] == 160 and "max_train_epochs" not in steps.settings
    assert "epoch = 100 is not used" in steps.report()
    computed = convert({"epoch": 10, "max_train_steps": 0, "train_data_dir": str(img), "train_batch_size": 2,
                        "gradient_accumulation_steps": 1})
    assert computed.settings["max_train_steps"] == 105  # ceil(21 / 2 * 10)
    with_reg = convert({"epoch": 10, "max_train_steps": 0, "train_data_dir": str(img), "train_batch_size": 2,
                        "reg_data_dir": str(tmp_path)})
    assert with_reg.settings["max_train_steps"] == 210  # x2 with regularisation images
    preset = convert({"LoRA_type": "LyCORIS/LoKr", "epoch": 20})
    assert preset.settings["max_train_steps"] == 1600 and "max_train_epochs" not in preset.settings
    assert "Kohya_ss keeps its field's value, 1600 steps" in preset.report()


def test_kohya_zeros_percentages_and_noise_types_become_what_kohya_passes():
    full = convert({"lr_warmup": 100, "lr_warmup_steps": 0, "lr_scheduler": "cosine"}).settings
    assert full["lr_warmup_steps"] == 1.0 and build_config(full).lr_warmup_steps == 1.0  # all the steps, not 1
    from lora_studio.training.optim import warmup_steps

    assert warmup_steps(build_config(full), 300) == 300
    assert "lr_warmup_steps" not in convert({"lr_warmup": 10, "lr_scheduler": "constant"}).settings
    assert convert({"max_grad_norm": 0}).settings["max_grad_norm"] == 1.0  # a GUI 0 is sd-scripts' default
    assert convert({"caption_extension": ""}).settings["caption_extension"] == ".caption"
    multires = convert({"noise_offset_type": "Multires", "noise_offset": 0.0357, "adaptive_noise_scale": 0.00357,
                        "multires_noise_iterations": 8, "multires_noise_discount": 0.3})
    assert multires.settings["multires_noise_iterations"] == 8 and "noise_offset" not in multires.settings
    assert "noise_offset = 0.0357" in multires.report() and "only its noise keys" in multires.report()
    original = convert({"noise_offset_type": "Original", "noise_offset": 0.05, "multires_noise_iterations": 6})
    assert original.settings["noise_offset"] == 0.05 and "multires_noise_iterations" not in original.settings
    xl = convert({"sdxl": True, "sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": True,
                  "lora_network_weights": "C:/old.safetensors", "max_timestep": 1000}).settings
    assert xl["no_half_vae"] and xl["cache_text_encoder_outputs"] and xl["network_weights"] == "C:/old.safetensors"
    assert xl["max_timestep"] == 1000
    drop = convert({"LoRA_type": "Standard", "rank_dropout": 0.1, "module_dropout": 0.05}).settings
    assert drop["network_args"] == ["rank_dropout=0.1", "module_dropout=0.05"]
    assert build_config(drop).network_args == ["rank_dropout=0.1", "module_dropout=0.05"]


def test_the_report_has_four_parts_and_other_tabs_are_named():
    report = convert({**KOHYA_GUI_JSON, "max_grad_norm": 0, "fused_backward_pass": True}).report()
    parts = ["**Carried over as they are**", "**Set to what Kohya_ss trains:**", "**Not supported, left out:**",
             "**Only for the Kohya_ss GUI**"]
    assert all(p in report for p in parts) and [report.index(p) for p in parts] == sorted(report.index(p)
                                                                                        for p in parts)
    assert "max_grad_norm = 0 -> 1.0" in report
    for data, kind in (({"token_string": "emi", "init_word": "girl", "num_vectors_per_token": 4}, "textual inversion"),
                       ({"train_dir": "x", "image_folder": "y", "train_text_encoder": True}, "fine-tune"),
                       ({"train_data_dir": "x", "learning_rate_te": 1e-5, "no_token_padding": False}, "DreamBooth")):
        with pytest.raises(ConfigError, match=f"this is a Kohya_ss {kind} configuration, not a LoRA one"):
            convert(data)


def test_a_preset_without_a_field_trains_with_the_kohya_gui_default_for_it():
    """Kohya_ss presets leave out most fields (its preset tool strips paths and samples; old presets are sparse):
    loaded into the Kohya_ss GUI, those fields keep the GUI's values, which are not sd-scripts' defaults."""
    sparse = convert({"LoRA_type": "LyCORIS/iA3", "optimizer": "Prodigy", "learning_rate": 1.0,
                      "network_dim": 4, "bucket_reso_steps": 1})
    s = sparse.settings
    assert s["mixed_precision"] == "fp16" and s["xformers"] is True and s["cache_latents"] is True
    assert s["enable_bucket"] is True and s["bucket_no_upscale"] is True and s["max_bucket_reso"] == 2048
    assert s["caption_extension"] == ".txt" and s["lr_scheduler"] == "cosine" and s["save_every_n_epochs"] == 1
    assert s["network_args"][:4] == ["preset=full", "conv_dim=1", "conv_alpha=1", "train_on_input=True"]
    report = sparse.report()
    assert "Kohya_ss GUI's own defaults apply" in report and "mixed_precision = 'fp16'" in report
    assert "mixed_precision" not in sparse.carried  # not in the file: said as a default, not as carried over
    assert s["bucket_reso_steps"] == 64 and "bucket_reso_steps = 1 -> 64: sd-scripts requires a multiple of 64" in report
    assert convert({"sdxl": True, "bucket_reso_steps": 8}).settings["bucket_reso_steps"] == 32
