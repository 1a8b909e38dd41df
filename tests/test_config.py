"""The one config schema: TOML with sections, CLI overrides, clear errors, values kept exactly."""

import pytest

from lora_studio.config import build_config, load_config, save_config
from lora_studio.config.schema import SETTINGS
from lora_studio.errors import ConfigError

REQUIRED_KEYS = """pretrained_model_name_or_path vae v2 v_parameterization train_data_dir reg_data_dir dataset_config
output_dir output_name logging_dir resolution train_batch_size max_train_steps max_train_epochs
gradient_accumulation_steps learning_rate unet_lr text_encoder_lr lr_scheduler lr_warmup_steps lr_scheduler_num_cycles
lr_scheduler_power optimizer_type optimizer_args max_grad_norm network_module network_dim network_alpha network_args
network_weights network_train_unet_only network_train_text_encoder_only network_dropout mixed_precision save_precision
save_model_as save_every_n_epochs save_every_n_steps save_last_n_epochs gradient_checkpointing xformers sdpa
cache_latents cache_latents_to_disk enable_bucket min_bucket_reso max_bucket_reso bucket_reso_steps bucket_no_upscale
caption_extension shuffle_caption keep_tokens caption_dropout_rate caption_tag_dropout_rate flip_aug clip_skip
max_token_length prior_loss_weight noise_offset min_snr_gamma seed training_comment max_data_loader_n_workers
sample_prompts sample_every_n_epochs sample_every_n_steps sample_sampler""".split()


def test_schema_has_every_required_setting_with_help():
    names = {s.name for s in SETTINGS}
    assert set(REQUIRED_KEYS) <= names
    for s in SETTINGS:
        assert s.help and s.label and s.group, s.name


def test_sections_are_flattened(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npretrained_model_name_or_path = "m.safetensors"\n'
                    '[anything.nested]\nnetwork_dim = 16\n[training]\nlearning_rate = 0.0002\n')
    cfg = load_config(path)
    assert (cfg.pretrained_model_name_or_path, cfg.network_dim, cfg.learning_rate) == ("m.safetensors", 16, 2e-4)


def test_unknown_key_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting 'netwrok_dim'.*Did you mean 'network_dim'"):
        build_config({"netwrok_dim": 8})


def test_wrong_type_and_range_are_named():
    with pytest.raises(ConfigError) as err:
        build_config({"network_dim": "big", "learning_rate": -1, "mixed_precision": "fp8", "shuffle_caption": "maybe"})
    text = str(err.value)
    assert "'network_dim' must be a whole number" in text
    assert "'learning_rate' must be between 0 and 10" in text
    assert "'mixed_precision' must be one of no, fp16, bf16" in text
    assert "'shuffle_caption' must be true or false" in text


def test_unsupported_sd_scripts_key():
    build_config({"debug_dataset": False, "face_crop_aug_range": None})  # at their defaults they change nothing
    with pytest.raises(ConfigError, match="'debug_dataset' is an sd-scripts option that LoRA Studio does not support"):
        build_config({"debug_dataset": True})


def test_zero_and_false_survive_save_and_load(tmp_path):
    cfg = build_config({"network_dropout": 0.0, "max_grad_norm": 0, "noise_offset": 0.0, "keep_tokens": 0,
                        "network_alpha": 0, "v2": False, "clip_skip": 2, "text_encoder_lr": [1e-4, 5e-5],
                        "optimizer_args": ["weight_decay=0.01", "betas=(0.9,0.99)"], "lr_warmup_steps": 0.1})
    path = save_config(cfg, tmp_path / "saved.toml")
    again = load_config(path)
    assert again.as_dict() == cfg.as_dict()
    assert again.max_grad_norm == 0 and again.network_alpha == 0 and again.v2 is False


def test_cli_overrides_beat_the_file(tmp_path):
    from lora_studio.cli import build_parser, setting_overrides

    path = tmp_path / "run.toml"
    path.write_text("network_dim = 8\nshuffle_caption = true\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--network_dim", "32", "--shuffle_caption",
                                      "false", "--flip_aug", "--text_encoder_lr", "1e-4", "5e-5",
                                      "--network_args", "conv_dim=4", "--allow-dir", str(tmp_path)])
    overrides = setting_overrides(args)
    cfg = load_config(path, overrides)
    assert (cfg.network_dim, cfg.shuffle_caption, cfg.flip_aug) == (32, False, True)
    assert cfg.text_encoder_lr == [1e-4, 5e-5] and cfg.network_args == ["conv_dim=4"]


def test_warmup_ratio_and_steps():
    assert build_config({"lr_warmup_steps": 0.25}).lr_warmup_steps == 0.25
    assert build_config({"lr_warmup_steps": 100}).lr_warmup_steps == 100
    assert build_config({"resolution": "512,768"}).resolution == "512,768"
    with pytest.raises(ConfigError, match="resolution"):
        build_config({"resolution": "512x768"})


def test_the_kohya_gui_s_hugging_face_keys_load_empty_or_set():
    """sd-scripts' upload keys, as the Kohya_ss GUI writes them (empty fields included), are settings of their own
    (their use: tests/test_hf_upload.py)."""
    empty = build_config({"async_upload": False, "huggingface_token": "", "huggingface_repo_type": "",
                          "huggingface_path_in_repo": "", "huggingface_repo_visibility": "",
                          "save_state_to_huggingface": False, "resume_from_huggingface": False})
    assert empty.huggingface_repo_id is None and not empty.async_upload and not empty.huggingface_token
    assert build_config({"async_upload": True, "huggingface_repo_id": "me/lora"}).async_upload is True
