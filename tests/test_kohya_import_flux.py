"""Importing Kohya_ss Flux.1 / Chroma configurations: the GUI's real Flux presets (tests/data/kohya_flux, see its
SOURCE.md), presets changed the ways users change them, and the TOML the GUI writes for a Flux LoRA run. No model is
built: every test reads configurations only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohya_shapes import one_note, unhandled_keys

from lora_studio.config import build_config, load_config, load_kohya_config
from lora_studio.config.kohya_import import FLUX_MODULE, convert, read_kohya_json
from lora_studio.config.network_args import parse_network_args
from lora_studio.config.schema import BY_NAME, DEPRECATED, IGNORED_GUI_KEYS, UNSUPPORTED
from lora_studio.errors import ConfigError

DATA = Path(__file__).parent / "data" / "kohya_flux"
PRESET = DATA / "flux1D-adamw8bit-fp8.json"  # Kohya_ss presets/lora, b31c6510 .. 45088f04
FIRST_PRESET = DATA / "flux1D-adamw8bit-fp8-2024-08-18.json"  # the same preset as first committed (647295aa)
GUI_TOML = DATA / "config_lora-flux1D.toml"  # what the GUI writes to run PRESET
# LoRA Studio's name for sd-scripts' networks.lora_flux: its own when the schema lists it, else networks.lora
MODULE = FLUX_MODULE


def _preset(path: Path = PRESET, **changes) -> dict:
    return {**json.loads(path.read_text(encoding="utf-8")), **changes}


def test_the_kohya_flux_preset_imports_with_its_own_values():
    result = read_kohya_json(PRESET)
    s = result.settings
    expected = {
        "ae": "put the full path to ae.sft here", "clip_l": "put the full path to clip_l.safetensors here",
        "t5xxl": "put the full path to the file here. Use  the fp16 version",
        "pretrained_model_name_or_path": "put the full path to flux1-dev.safetensors here",
        "timestep_sampling": "sigmoid", "discrete_flow_shift": 3.0, "model_prediction_type": "raw",
        "guidance_scale": 1.0, "apply_t5_attn_mask": True, "t5xxl_max_token_length": 512, "fp8_base": True,
        "fp8_base_unet": False, "cpu_offload_checkpointing": False, "cache_text_encoder_outputs": True,
        "cache_text_encoder_outputs_to_disk": True, "network_module": MODULE,
        "network_args": ["train_double_block_indices=all", "train_single_block_indices=all"],
        "network_dim": 16, "network_alpha": 16.0, "network_train_unet_only": True, "unet_lr": 3e-4,
        "learning_rate": 3e-4, "text_encoder_lr": 0.0, "max_train_steps": 1000, "resolution": "512",
        "bucket_reso_steps": 64, "mixed_precision": "bf16", "full_bf16": True, "sdpa": True, "seed": 42,
        "optimizer_type": "AdamW8bit", "lr_scheduler": "constant", "save_every_n_steps": 50, "save_precision": "bf16",
        "sample_sampler": "euler",
    }
    assert {k: s.get(k) for k in expected} == expected
    # sd-scripts' Flux training reads none of these: left out, the set ones said; not passed by the GUI for Flux
    for name in ("noise_offset", "min_snr_gamma", "clip_skip", "max_token_length", "v2", "blocks_to_swap",
                 "model_type", "max_train_epochs", "lr_warmup_steps"):
        assert name not in s, name
    assert "noise_offset = 0.05, min_snr_gamma = 7.0: a DDPM-noise option" in one_note(
        result, "Not imported, as sd-scripts' Flux training does not use them")  # the reason is the family's
    assert "LoRA Studio reads the model family (Flux.1 dev, schnell or Chroma) from the checkpoint itself" in \
        one_note(result, "flux1_checkbox = true: a Flux.1 configuration")
    assert one_note(result, "flux1_cache_text_encoder_outputs = true") == (
        "flux1_cache_text_encoder_outputs = true -> cache_text_encoder_outputs = true (what the Kohya_ss GUI passes "
        "for Flux)")
    assert "train_double_block_indices = 'all', train_single_block_indices = 'all'" in one_note(
        result, "Not in the file, so the Kohya_ss GUI's own defaults apply")
    assert not result.unsupported and result.sample_prompt_text.startswith("saruman posing")
    assert {"split_mode", "train_blocks", "mem_eff_save", "sdxl_no_half_vae", "clip_skip", "conv_dim",
            "flux1_checkbox"} <= set(result.ignored)
    if MODULE != FLUX_MODULE:
        assert "sd-scripts' networks.lora_flux is not a network_module LoRA Studio accepts yet" in result.report()
    cfg = build_config(s)
    assert (cfg.guidance_scale, cfg.timestep_sampling, cfg.network_module) == (1.0, "sigmoid", MODULE)
    assert parse_network_args(cfg.network_args, cfg.network_module).family_args == (
        ("train_double_block_indices", "all"), ("train_single_block_indices", "all"))


def test_the_first_flux_preset_keeps_its_explicit_values_where_lora_studio_would_recommend_others():
    """The 2024 preset writes sd-scripts' defaults (guidance 3.5, sigma sampling) and shift 1: kept as written, as
    Kohya_ss trained them; its 32-pixel buckets are what sd-scripts' Flux script requires, not changed."""
    result = read_kohya_json(FIRST_PRESET)
    s = result.settings
    expected = {"guidance_scale": 3.5, "timestep_sampling": "sigma", "discrete_flow_shift": 1.0,
                "model_prediction_type": "raw", "bucket_reso_steps": 32, "max_train_epochs": 25,
                "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 5, "network_dim": 8,
                "apply_t5_attn_mask": False, "highvram": True, "sample_every_n_steps": 200,
                "ae": "H:/ComfyUI2/models/vae/ae.sft",
                "t5xxl": "H:/ComfyUI2/models/clip/t5xxl_fp16.safetensors", "network_module": MODULE}
    assert {k: s.get(k) for k in expected} == expected
    assert "max_train_steps" not in s and "multires_noise_iterations" not in s and "min_snr_gamma" not in s
    report = result.report()
    assert "bucket_reso_steps" not in " ".join(result.notes)  # 32 is a multiple of sd-scripts' Flux 32
    assert "multires_noise_iterations = 8, multires_noise_discount = 0.2 not used" in report
    assert "min_snr_gamma = 10.0: a DDPM-noise option" in report
    assert "apply_t5_attn_mask = False" in one_note(result, "Not in the file, so the Kohya_ss GUI's own defaults apply")
    assert not [n for n in result.notes if n.startswith("Not in the file, so Kohya_ss trains")]  # all were written
    assert {"conv_dim", "conv_alpha", "noise_offset"} <= set(result.ignored)
    assert build_config(s).discrete_flow_shift == 1.0


@pytest.mark.parametrize("path", [PRESET, FIRST_PRESET], ids=["preset", "first-preset"])
def test_every_key_of_a_real_flux_preset_is_a_setting_a_note_or_named(path):
    data = _preset(path)
    assert unhandled_keys(data, convert(data)) == []


def test_a_sparse_flux_preset_trains_with_the_gui_defaults_and_says_where_lora_studio_recommends_others():
    result = convert({"LoRA_type": "Flux1", "flux1_checkbox": True, "ae": "ae.safetensors", "clip_l": "clip.sft",
                      "t5xxl": "t5.sft", "max_train_steps": 100})
    s = result.settings
    assert (s["guidance_scale"], s["model_prediction_type"], s["timestep_sampling"], s["discrete_flow_shift"]) == (
        3.5, "sigma_scaled", "sigma", 3.0)
    assert s["t5xxl_max_token_length"] == 512 and s["apply_t5_attn_mask"] is False
    assert s["network_args"] == ["train_double_block_indices=all", "train_single_block_indices=all"]
    assert one_note(result, "Not in the file, so Kohya_ss trains") == (
        "Not in the file, so Kohya_ss trains with its GUI's (sd-scripts') defaults, and so does this import: "
        "guidance_scale = 3.5, model_prediction_type = 'sigma_scaled', timestep_sampling = 'sigma', "
        "discrete_flow_shift = 3.0; for Flux LoRA Studio recommends guidance_scale = 1.0, model_prediction_type = "
        "'raw', timestep_sampling = 'shift', discrete_flow_shift = 3.1582: clear those settings to train with the "
        "recommended values")
    assert "guidance_scale" not in result.carried  # not in the file: said as a default, not carried over
    build_config(s)


def test_a_chroma_preset_imports_as_the_gui_passes_chroma():
    chroma = convert(_preset(model_type="chroma"))  # the real preset switched to Chroma
    s = chroma.settings
    assert s["model_type"] == "chroma" and "clip_l" not in s and s["apply_t5_attn_mask"] is True
    assert (s["guidance_scale"], s["timestep_sampling"]) == (1.0, "sigmoid")  # written in the file: kept
    assert "clip_l = 'put the full path to clip_l.safetensors here' is not passed: Chroma has no CLIP-L" in \
        chroma.report()
    assert unhandled_keys(_preset(model_type="chroma"), chroma) == []
    assert build_config(s).model_type == "chroma"
    # a Chroma preset without the recipe fields: the GUI's switch to chroma sets guidance 0, T5 mask, sigmoid
    sparse = convert({"LoRA_type": "Flux1", "flux1_checkbox": True, "model_type": "chroma", "ae": "ae.sft",
                      "t5xxl": "t5.sft", "apply_t5_attn_mask": False})
    s = sparse.settings
    assert (s["guidance_scale"], s["apply_t5_attn_mask"], s["timestep_sampling"]) == (0.0, True, "sigmoid")
    assert "apply_t5_attn_mask = false -> true: Chroma trains with T5's attention mask" in sparse.report()
    assert "for Chroma LoRA Studio recommends model_prediction_type = 'raw'" in sparse.report()
    assert "guidance_scale" not in one_note(sparse, "Not in the file, so Kohya_ss trains")  # 0 is the recommended one
    # Chroma's guidance 0 is passed as 0 (Flux's 0 is dropped by the GUI: sd-scripts' 3.5)
    assert convert(_preset(model_type="chroma", guidance_scale=0)).settings["guidance_scale"] == 0.0
    dev = convert(_preset(guidance_scale=0, discrete_flow_shift=0, t5xxl_max_token_length=0))
    assert (dev.settings["guidance_scale"], dev.settings["discrete_flow_shift"]) == (3.5, 3.0)
    assert "t5xxl_max_token_length" not in dev.settings  # not passed: the family's own length
    assert "guidance_scale = 0 -> 3.5: the Kohya_ss GUI does not pass a 0" in dev.report()


def test_the_deprecated_and_gui_only_flux_fields_are_converted_or_named():
    data = _preset(split_mode=True, train_blocks="all", split_qkv=True, train_t5xxl=True,
                   img_attn_dim="8", in_dims="[4, 0, 0, 0, 4]", train_single_block_indices="0-9",
                   rank_dropout=0.1, enable_all_linear=True, mem_eff_save=True, show_timesteps="image",
                   train_lora_ggpo=True, weighting_scheme="logit_normal", text_encoder_lr=1e-4, t5xxl_lr=2e-5)
    result = convert(data)
    s = result.settings
    assert s["blocks_to_swap"] == 18 and s["text_encoder_lr"] == [1e-4, 2e-5]
    assert s["network_args"] == ["img_attn_dim=8", "in_dims=[4,0,0,0,4]", "train_double_block_indices=all",
                                 "train_single_block_indices=0-9", "train_blocks=single", "split_qkv=True",
                                 "train_t5xxl=True", "rank_dropout=0.1"]
    report = result.report()
    for said in ("split_mode = true (deprecated) -> blocks_to_swap = 18, as sd-scripts sets it",
                 "split_mode = true: the Kohya_ss GUI passes train_blocks=single with it (instead of train_blocks = "
                 "'all')",
                 "t5xxl_lr = 2e-05 -> text_encoder_lr = [0.0001, 2e-05] (CLIP-L, T5-XXL), as the Kohya_ss GUI passes",
                 "enable_all_linear = true: an option of 'Flux1 OFT' only",
                 "mem_eff_save = true: an option of sd-scripts' Flux fine-tuning (flux_train.py)",
                 "weighting_scheme = 'logit_normal': the Kohya_ss GUI's SD3 fields, which it does not pass for Flux"):
        assert said in report, said
    assert len(result.unsupported) == 2
    assert "show_timesteps = 'image': in sd-scripts it shows the timestep draw and exits without training" in report
    assert "train_lora_ggpo = true (GGPO, ggpo_sigma = 0.03, ggpo_beta = 0.01) is not supported" in report
    assert "weighting_scheme" not in s and unhandled_keys(data, result) == []
    args = parse_network_args(build_config(s).network_args, MODULE)
    assert dict(args.family_args)["in_dims"] == [4, 0, 0, 0, 4] and args.rank_dropout == 0.1
    # an explicit blocks_to_swap wins over split_mode; the old per-kind swaps become blocks_to_swap
    assert convert(_preset(split_mode=True, blocks_to_swap=10)).settings["blocks_to_swap"] == 10
    old = convert(_preset(double_blocks_to_swap=4, single_blocks_to_swap=8))
    assert old.settings["blocks_to_swap"] == 8  # 4 + 8 // 2, as sd-scripts' flux_train.py converts them
    assert "as sd-scripts' flux_train.py converts them (memory only" in old.report()
    # train_blocks without split_mode: the GUI does not pass it, so every block trains, said
    double = convert(_preset(train_blocks="double"))
    assert "train_blocks" not in " ".join(double.settings["network_args"])
    assert "train_blocks = 'double' is not passed" in double.report()
    # a T5 rate without a text-encoder one: the GUI refuses to start
    refused = convert(_preset(t5xxl_lr=1e-5))
    assert refused.settings["text_encoder_lr"] == 0.0 and "the Kohya_ss GUI refuses to start" in refused.report()


def test_flux1_oft_is_named_unsupported_and_trains_standard_flux_lora():
    result = convert(_preset(LoRA_type="Flux1 OFT", enable_all_linear=True, img_attn_dim="8"))
    assert result.settings["network_module"] == MODULE and "network_args" not in result.settings
    assert result.unsupported == [f"LoRA type 'Flux1 OFT' (sd-scripts' networks.oft_flux): OFT for Flux is not "
                                  f"supported; standard LoRA ({MODULE}) is used, without enable_all_linear (an OFT "
                                  "option)"]
    assert "img_attn_dim = '8': networks.lora_flux arguments; the Kohya_ss GUI passes them for LoRA type 'Flux1' " \
           "only" in result.report()
    build_config(result.settings)


def test_sd_values_in_a_flux_preset_raise_no_error():
    """An SD preset switched to Flux keeps its SD values (clip_skip 2, v2, noise offsets, SNR): left out, said."""
    from kohya_shapes import KOHYA_GUI_JSON

    data = {**KOHYA_GUI_JSON, "LoRA_type": "Flux1", "flux1_checkbox": True, "v2": True, "v_parameterization": True,
            "noise_offset": 0.1, "debiased_estimation_loss": True, "bucket_reso_steps": 48}
    result = convert(data)
    s = result.settings
    for name in ("clip_skip", "v2", "v_parameterization", "noise_offset", "min_snr_gamma", "max_token_length",
                 "debiased_estimation_loss"):
        assert name not in s, name
    note = one_note(result, "Not imported, as sd-scripts' Flux training does not use them")
    assert "clip_skip = 2: " in note and "v2 = True" in note and "noise_offset = 0.1" in note
    assert s["bucket_reso_steps"] == 32 and "sd-scripts requires a multiple of 32 for Flux" in result.report()
    assert not result.unsupported and unhandled_keys(data, result) == []
    build_config(s)


def test_an_sd_preset_ignores_the_flux_fields_the_gui_saves_with_it():
    """The GUI saves its Flux panel with every preset and passes it only with flux1_checkbox."""
    from kohya_shapes import KOHYA_GUI_JSON

    flux_panel = {"flux1_checkbox": False, "ae": "", "clip_l": "", "t5xxl": "", "guidance_scale": 3.5,
                  "discrete_flow_shift": 3, "model_prediction_type": "sigma_scaled", "timestep_sampling": "sigma",
                  "apply_t5_attn_mask": False, "blocks_to_swap": 0, "fp8_base_unet": True, "split_mode": False,
                  "t5xxl_max_token_length": 512, "weighting_scheme": "logit_normal", "logit_mean": 0,
                  "model_type": "chroma", "flux1_clip_l": "", "t5xxl_lr": 0}
    result = convert({**KOHYA_GUI_JSON, **flux_panel})
    assert not set(flux_panel) & set(result.settings) and set(flux_panel) <= set(result.ignored)
    assert result.settings["clip_skip"] == 2 and result.settings["network_module"] == "networks.lora"
    assert not [n for n in result.notes if "Flux" in n]


def test_a_flux_json_loads_for_training_with_its_prompts(tmp_path):
    cfg, result = load_kohya_config(PRESET, overrides={"output_dir": str(tmp_path)})
    assert cfg.t5xxl == "put the full path to the file here. Use  the fp16 version" and cfg.guidance_scale == 1.0
    assert Path(cfg.sample_prompts).read_text(encoding="utf-8").startswith("saruman posing under a stormy")


def test_the_toml_the_kohya_gui_writes_for_flux_loads_as_it_is():
    cfg = load_config(GUI_TOML)
    assert cfg.network_module == FLUX_MODULE


def test_the_toml_the_kohya_gui_writes_for_flux_loads_with_the_values_of_its_json():
    """Every other key the GUI writes is a setting or one of its own keys; the values are the JSON import's."""
    cfg = load_config(GUI_TOML, overrides={"network_module": MODULE})
    imported = read_kohya_json(PRESET).settings
    for name in ("guidance_scale", "timestep_sampling", "discrete_flow_shift", "model_prediction_type",
                 "apply_t5_attn_mask", "t5xxl_max_token_length", "fp8_base", "cache_text_encoder_outputs",
                 "cache_text_encoder_outputs_to_disk", "network_args", "network_dim", "network_alpha", "unet_lr",
                 "network_train_unet_only", "max_train_steps", "seed", "sdpa", "mixed_precision", "full_bf16"):
        assert getattr(cfg, name) == imported[name], name
    assert (cfg.ae, cfg.clip_l, cfg.model_type, cfg.blocks_to_swap) == (
        "C:/models/flux/ae.safetensors", "C:/models/flux/clip_l.safetensors", None, None)
    assert parse_network_args(cfg.network_args, MODULE).family_args  # networks.lora_flux's arguments, accepted


def test_a_chroma_toml_from_the_kohya_gui_loads(tmp_path):
    text = GUI_TOML.read_text(encoding="utf-8").replace('clip_l = "C:/models/flux/clip_l.safetensors"\n', "")
    text = text.replace("guidance_scale = 1.0", "guidance_scale = 0.0") + 'model_type = "chroma"\n'
    path = tmp_path / "config_lora-chroma.toml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path, overrides={"network_module": MODULE})
    assert (cfg.model_type, cfg.guidance_scale, cfg.clip_l, cfg.apply_t5_attn_mask) == ("chroma", 0.0, None, True)


# The Flux keys the GUI writes when they are set that the schema does not name yet (not a setting, not one of the
# GUI's known keys): refused by name, never a crash.
# keys of sd-scripts / the Kohya_ss GUI that are not settings: deprecated (split_mode), ignored (the old per-kind
# swap counts), unsupported (show_timesteps: sd-scripts' timestep plots)
OTHER_KEYS = {"split_mode": True, "single_blocks_to_swap": 4, "double_blocks_to_swap": 2, "show_timesteps": "image",
              "show_timesteps_resolution": "1024"}


def test_every_key_the_gui_writes_for_flux_is_known_or_refused_by_name(tmp_path):
    extra = {"text_encoder_lr": [1e-4, 2e-5], "blocks_to_swap": 10, "cpu_offload_checkpointing": True,
             "fp8_base_unet": True, "mem_eff_save": True, "model_type": "chroma",
             "network_args": ["img_attn_dim=8", "in_dims=[4,0,0,0,4]", "train_blocks=single", "split_qkv=True",
                              "train_t5xxl=True", "rank_dropout=0.1"], **OTHER_KEYS}
    known = set(BY_NAME) | set(UNSUPPORTED) | IGNORED_GUI_KEYS | set(DEPRECATED)
    assert set(extra) <= known
    import tomli_w

    for key, value in extra.items():
        path = tmp_path / f"{key}.toml"
        path.write_bytes(GUI_TOML.read_bytes() + tomli_w.dumps({key: value}).encode("utf-8")
                         if key != "network_args" else
                         GUI_TOML.read_text(encoding="utf-8").replace(
                             '[ "train_double_block_indices=all", "train_single_block_indices=all",]',
                             json.dumps(value)).encode("utf-8"))
        try:
            cfg = load_config(path, overrides={"network_module": MODULE})
        except ConfigError as exc:  # refused with the key's name
            assert key in str(exc) and key in UNSUPPORTED, (key, str(exc))
        else:
            if key in DEPRECATED:  # split_mode: blocks_to_swap 18, as sd-scripts
                assert getattr(cfg, DEPRECATED[key][0]) == DEPRECATED[key][1]
                continue
            if key in IGNORED_GUI_KEYS:
                continue
            assert key in BY_NAME and getattr(cfg, key) == value, key
            if key == "network_args":
                assert parse_network_args(cfg.network_args, MODULE).rank_dropout == 0.1
