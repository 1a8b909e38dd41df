"""Importing Kohya_ss SD3 / SD3.5, Anima and Lumina 2 configurations as the GUI's SD3, Anima and Lumina panels pass
them to sd-scripts (tests/data/kohya_dit, see its README: the GUI ships no preset for these families, so each is its
own test configuration with the family's panel, as "Save config" writes it). No model is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kohya_shapes import one_note, unhandled_keys

from lora_studio.config import build_config
from lora_studio.config.kohya_import import TRAINED_FAMILIES, convert, read_kohya_json
from lora_studio.config.network_args import parse_network_args

DATA = Path(__file__).parent / "data" / "kohya_dit"
SD3 = DATA / "sd35m-lora.json"
ANIMA = DATA / "anima-lora.json"
LUMINA = DATA / "lumina2-lora.json"
BASE = DATA / "locon-AdamW8bit-toml.json"  # the GUI's own saved configuration (an SD1.5 LoRA)

# What the GUI passes for every one of them: the general fields of the base configuration
GENERAL = {"max_train_steps": 1500, "learning_rate": 1e-4, "unet_lr": 1e-4, "text_encoder_lr": 0.0,
           "network_train_unet_only": True, "optimizer_type": "AdamW8bit", "lr_scheduler": "constant",
           "mixed_precision": "bf16", "sdpa": True, "gradient_checkpointing": True, "train_batch_size": 4,
           "resolution": "512", "bucket_reso_steps": 64, "seed": 1234, "caption_extension": ".caption",
           "train_data_dir": "C:/lora/img", "output_dir": "C:/lora/out", "sample_every_n_steps": 25}
EXPECTED = {
    SD3: {"network_module": "networks.lora_sd3", "network_args": ["rank_dropout=0.1"], "network_dim": 16,
          "network_alpha": 16.0, "pretrained_model_name_or_path": "C:/models/sd3.5_medium.safetensors",
          "clip_l": "C:/models/text_encoders/clip_l.safetensors",
          "clip_g": "C:/models/text_encoders/clip_g.safetensors",
          "t5xxl": "C:/models/text_encoders/t5xxl_fp16.safetensors", "weighting_scheme": "logit_normal",
          "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29, "clip_l_dropout_rate": 0.0,
          "clip_g_dropout_rate": 0.0, "t5_dropout_rate": 0.0, "pos_emb_random_crop_rate": 0.0,
          "enable_scaled_pos_embed": True, "text_encoder_batch_size": 4, "cache_text_encoder_outputs": True,
          "cache_text_encoder_outputs_to_disk": True, "blocks_to_swap": 8},
    ANIMA: {"network_module": "networks.lora_anima", "network_args": ["module_dropout=0.05"], "network_dim": 32,
            "network_alpha": 16.0, "pretrained_model_name_or_path": "C:/models/anima-base-v1.0.safetensors",
            "qwen3": "C:/models/text_encoders/qwen_3_06b_base.safetensors",
            "vae": "C:/models/vae/qwen_image_vae.safetensors", "discrete_flow_shift": 1.0,
            "timestep_sampling": "sigmoid", "sigmoid_scale": 1.0, "qwen3_max_token_length": 512,
            "t5_max_token_length": 512, "vae_chunk_size": 64, "cache_text_encoder_outputs": True},
    LUMINA: {"network_module": "networks.lora_lumina", "network_dim": 16, "network_alpha": 16.0,
             "pretrained_model_name_or_path": "C:/models/lumina_2_model_bf16.safetensors",
             "gemma2": "C:/models/text_encoders/gemma_2_2b_fp16.safetensors", "ae": "C:/models/vae/ae.safetensors",
             "discrete_flow_shift": 6.0, "model_prediction_type": "raw", "timestep_sampling": "nextdit_shift",
             "sigmoid_scale": 1.0, "gemma2_max_token_length": 256,
             "system_prompt": "You are an assistant designed to generate high-quality images based on user prompts.",
             "cache_text_encoder_outputs": True},
}
# The settings of the other families (and the SD-only ones) each must leave unset
NOT_SET = {
    SD3: ("qwen3", "gemma2", "ae", "vae", "timestep_sampling", "discrete_flow_shift", "model_prediction_type",
          "apply_t5_attn_mask", "t5xxl_max_token_length", "guidance_scale", "noise_offset", "clip_skip",
          "max_token_length", "training_shift", "cpu_offload_checkpointing", "fp8_base_unet"),
    ANIMA: ("clip_l", "clip_g", "t5xxl", "gemma2", "ae", "model_prediction_type", "weighting_scheme",
            "llm_adapter_path", "noise_offset", "clip_skip", "max_token_length", "blocks_to_swap", "torch_compile"),
    LUMINA: ("clip_l", "clip_g", "t5xxl", "qwen3", "vae", "weighting_scheme", "noise_offset", "clip_skip",
             "max_token_length", "guidance_scale"),
}
PATHS = {SD3: SD3, ANIMA: ANIMA, LUMINA: LUMINA}


def _config(path: Path, **changes) -> dict:
    return {**json.loads(path.read_text(encoding="utf-8")), **changes}


@pytest.mark.parametrize("path", list(PATHS), ids=["sd3", "anima", "lumina"])
def test_each_family_imports_as_the_gui_passes_it(path):
    result = read_kohya_json(path)
    s = result.settings
    expected = {**GENERAL, **EXPECTED[path]}
    assert {k: s.get(k) for k in expected} == expected
    for name in NOT_SET[path]:
        assert name not in s, name
    assert not result.unsupported and unhandled_keys(_config(path), result) == []
    assert "noise_offset = 0.05: a DDPM-noise option" in result.report()  # the SD-only values: left out, said
    cfg = build_config(s)
    assert cfg.network_module == expected["network_module"]
    parse_network_args(cfg.network_args, cfg.network_module)


def test_the_family_switches_and_script_are_named():
    for path, switch, script in ((SD3, "sd3_checkbox", "sd3_train_network.py"),
                                 (ANIMA, "anima_checkbox", "anima_train_network.py"),
                                 (LUMINA, "lumina_checkbox", "lumina_train_network.py")):
        result = read_kohya_json(path)
        assert f"sd-scripts' {script}" in one_note(result, f"{switch} = true: the configuration trains")
    sd3 = read_kohya_json(SD3)
    assert "sd3_clip_l -> clip_l, sd3_t5xxl -> t5xxl" in one_note(sd3, "The SD3 / SD3.5 panel's fields")
    assert {"save_clip", "save_t5xxl", "t5xxl_device", "t5xxl_dtype", "sd3_fused_backward_pass"} <= set(sd3.ignored)
    # LoRA type Anima without its checkbox: the GUI refuses to start; imported as Anima, said
    anima = convert(_config(BASE, LoRA_type="Anima", unet_lr=1e-4))
    assert anima.settings["network_module"] == "networks.lora_anima"
    assert "the Kohya_ss GUI refuses to start without it" in one_note(anima, "LoRA type 'Anima' (anima_checkbox")


def test_the_fields_the_gui_does_not_pass_for_the_family_are_left_out_and_named():
    sd3 = convert(_config(SD3, apply_t5_attn_mask=True, t5xxl_max_token_length=256, clip_l="C:/flux/clip_l.sft",
                          anima_qwen3="C:/q.sft", lumina_system_prompt="x", cpu_offload_checkpointing=True,
                          vae="C:/models/sd3_vae.safetensors"))
    s = sd3.settings
    assert "apply_t5_attn_mask" not in s and "t5xxl_max_token_length" not in s
    assert s["clip_l"] == "C:/models/text_encoders/clip_l.safetensors"  # the SD3 panel's, not the Flux panel's
    assert s["vae"] == "C:/models/sd3_vae.safetensors"  # SD3 reads the general VAE field
    note = one_note(sd3, "apply_t5_attn_mask = True")
    assert "clip_l = 'C:/flux/clip_l.sft'" in note and "cpu_offload_checkpointing = True" in note
    assert "t5xxl_max_token_length = 256" in note and "passes for Flux only, not for SD3 / SD3.5" in note
    assert {"anima_qwen3", "lumina_system_prompt", "flux1_checkbox", "guidance_scale"} <= set(sd3.ignored)
    # Anima: the panel's VAE, not the general field; Lumina reads no VAE file (its AE is the ae setting)
    anima = convert(_config(ANIMA, vae="C:/models/sdxl_vae.safetensors"))
    assert anima.settings["vae"] == "C:/models/vae/qwen_image_vae.safetensors"
    assert "the Kohya_ss GUI passes the Anima panel's anima_vae instead" in anima.report()
    lumina = convert(_config(LUMINA, vae="C:/models/sdxl_vae.safetensors", sd3_clip_l="C:/x.sft"))
    assert "vae" not in lumina.settings and "clip_l" not in lumina.settings
    assert "vae = 'C:/models/sdxl_vae.safetensors'" in one_note(lumina, "Not imported, as sd-scripts' Lumina 2")
    # an SD configuration ignores the three panels the GUI saves with it
    sd = convert(_config(ANIMA, LoRA_type="Standard", anima_checkbox=False))
    assert "qwen3" not in sd.settings and "timestep_sampling" not in sd.settings
    assert sd.settings["network_module"] == "networks.lora" and sd.settings["clip_skip"] == 2
    assert {"anima_qwen3", "anima_timestep_sampling"} <= set(sd.ignored)


def test_a_zero_the_gui_drops_trains_with_the_scripts_default():
    anima = convert(_config(ANIMA, anima_discrete_flow_shift=0, anima_qwen3_max_token_length=0,
                            anima_vae_chunk_size=0))
    s = anima.settings
    assert (s["discrete_flow_shift"], s["qwen3_max_token_length"]) == (1.0, 512) and "vae_chunk_size" not in s
    assert "anima_discrete_flow_shift = 0 -> discrete_flow_shift = 1.0: the Kohya_ss GUI does not pass a 0" in \
        anima.report()
    lumina = convert(_config(LUMINA, lumina_discrete_flow_shift=0, lumina_gemma2_max_token_length=0))
    assert lumina.settings["discrete_flow_shift"] == 6.0 and "gemma2_max_token_length" not in lumina.settings
    sd3 = convert(_config(SD3, logit_std=0, mode_scale=0))
    assert (sd3.settings["logit_std"], sd3.settings["mode_scale"]) == (1.0, 1.29)


def test_a_sparse_configuration_trains_with_the_panels_defaults():
    """Without the panel's fields the GUI trains with its panel's defaults (SD3: logit_normal, not sd-scripts'
    uniform)."""
    sd3 = convert({"LoRA_type": "Standard", "sd3_checkbox": True, "max_train_steps": 10})
    assert (sd3.settings["weighting_scheme"], sd3.settings["text_encoder_batch_size"]) == ("logit_normal", 1)
    assert "weighting_scheme = 'logit_normal'" in one_note(sd3, "Not in the file, so the Kohya_ss GUI's own defaults")
    lumina = convert({"LoRA_type": "Lumina", "lumina_checkbox": True, "max_train_steps": 10})
    assert (lumina.settings["timestep_sampling"], lumina.settings["discrete_flow_shift"]) == ("shift", 6.0)
    assert "system_prompt" not in lumina.settings
    anima = convert({"LoRA_type": "Anima", "anima_checkbox": True, "max_train_steps": 10})
    assert (anima.settings["timestep_sampling"], anima.settings["discrete_flow_shift"]) == ("sigmoid", 1.0)
    for result in (sd3, lumina, anima):
        build_config(result.settings)


def test_what_lora_studio_or_sd_scripts_does_not_do_is_named():
    sd3 = convert(_config(SD3, sd3_fused_backward_pass=True, sd3_disable_mmap_load_safetensors=True, save_clip=True,
                          t5xxl_dtype="fp16", show_timesteps="image"))
    assert len(sd3.unsupported) == 3
    report = sd3.report()
    assert "sd3_fused_backward_pass = True: fused_backward_pass" in report
    assert "show_timesteps = 'image': in sd-scripts it shows the timestep draw" in report
    assert "save_clip = True: sd-scripts marks it [DOES NOT WORK]" in report
    assert "t5xxl_dtype = 'fp16': sd-scripts marks it [DOES NOT WORK]" in report
    anima = convert(_config(ANIMA, anima_attn_mode="flash", anima_split_attn=True, anima_t5_tokenizer_path="C:/t5",
                            anima_qwen_image_vae_2d=True))
    assert [u.split(":")[0] for u in anima.unsupported] == [
        "anima_t5_tokenizer_path = 'C", "anima_attn_mode = 'flash'", "anima_split_attn = True",
        "anima_qwen_image_vae_2d = True"]
    lumina = convert(_config(LUMINA, lumina_use_flash_attn=True, lumina_use_sage_attn=True))
    assert len(lumina.unsupported) == 2 and "use_flash_attn" in lumina.unsupported[0]
    for result, data in ((sd3, None), (anima, None), (lumina, None)):
        build_config(result.settings)


def test_the_network_of_each_family_and_lora_type():
    # SD3 with Kohya LoCon: networks.lora_sd3; conv_dim and the SD block weights do nothing there: left out
    locon = convert(_config(SD3, LoRA_type="Kohya LoCon", conv_dim=4, conv_alpha=2, down_lr_weight="1,1,1",
                            loraplus_lr_ratio=16))
    assert locon.settings["network_module"] == "networks.lora_sd3"
    assert locon.settings["network_args"] == ["rank_dropout=0.1", "loraplus_lr_ratio=16"]
    assert "has no convolution networks.lora_sd3 adapts" in locon.report()
    assert "down_lr_weight: SD U-Net block weights; networks.lora_sd3 does not read them" in locon.report()
    # SD3 with a LyCORIS type: lycoris.kohya, as the GUI passes it; with Kohya LoKr: refused by the GUI
    lyco = convert(_config(SD3, LoRA_type="LyCORIS/LoKr"))
    assert lyco.settings["network_module"] == "lycoris.kohya" and "algo=lokr" in lyco.settings["network_args"]
    native = convert(_config(SD3, LoRA_type="Kohya LoKr"))
    assert native.settings["network_module"] == "networks.lora_sd3"
    assert "LoRA type 'Kohya LoKr' with SD3 / SD3.5: the Kohya_ss GUI trains SD3 / SD3.5 with 'Standard', " \
           "'Kohya LoCon' or a LyCORIS type only" in native.unsupported[0]
    # Anima: its own LoRA, or sd-scripts' native LoKr / LoHa (Kohya_ss v26), trained with LyCORIS's
    for lora_type, algo in (("Kohya LoKr", "lokr"), ("Kohya LoHa", "loha")):
        result = convert(_config(ANIMA, LoRA_type=lora_type, factor=4, use_tucker=True))
        args = result.settings["network_args"]
        assert result.settings["network_module"] == "lycoris.kohya" and args[0] == f"algo={algo}"
        assert "preset=attn-mlp" in args and not [a for a in args if a.startswith("conv_")]
        assert ("factor=4" in args) == (algo == "lokr") and "use_tucker=True" in args
        assert "module_dropout=0.05" in args and not result.unsupported
        assert "conv_dim = 1: passed by the Kohya_ss GUI, but Anima's transformer has no convolution" in \
            result.report()
        parse_network_args(args, "lycoris.kohya")
    refused = convert(_config(ANIMA, LoRA_type="Standard"))
    assert refused.settings["network_module"] == "networks.lora_anima"
    assert "the Kohya_ss GUI trains Anima with 'Anima', 'Kohya LoHa', 'Kohya LoKr' only" in refused.unsupported[0]
    lumina = convert(_config(LUMINA, LoRA_type="Lumina", rank_dropout=0.2, module_dropout=0.1))
    assert lumina.settings["network_args"] == ["rank_dropout=0.2", "module_dropout=0.1"]
    assert convert(_config(LUMINA, LoRA_type="Flux1 OFT")).settings["network_module"] == "networks.lora_lumina"


def test_text_encoder_rates_caches_and_memory_as_each_script_reads_them():
    sd3 = convert(_config(SD3, text_encoder_lr=1e-5, t5xxl_lr=2e-6))
    assert sd3.settings["text_encoder_lr"] == [1e-5, 2e-6] and "network_train_unet_only" not in sd3.settings
    assert "networks.lora_sd3 gives the second value to both" in one_note(sd3, "t5xxl_lr = 2e-06")
    anima = convert(_config(ANIMA, text_encoder_lr=1e-5, t5xxl_lr=2e-6))
    assert anima.settings["text_encoder_lr"] == 1e-5
    assert "which Anima's one text encoder does not read (no effect)" in anima.report()
    # Anima trains no text encoder from cached outputs (sd-scripts stops); caption dropout is fine with its cache
    assert "sd-scripts' Anima training stops (it cannot train the text encoder from a cache)" in anima.report()
    assert "need fixed captions" not in convert(_config(ANIMA, caption_dropout_rate=0.1)).report()
    assert "cached outputs need fixed captions" in convert(_config(LUMINA, caption_dropout_rate=0.1)).report()
    # Anima: fp8 is turned off by sd-scripts; unsloth offloading and the per-block compile: the nearest settings
    anima = convert(_config(ANIMA, fp8_base=True, anima_unsloth_offload_checkpointing=True, anima_compile=True,
                            anima_compile_mode="max-autotune", anima_compile_dynamic="true"))
    s = anima.settings
    assert "fp8_base" not in s and "sd-scripts' Anima training turns it off" in anima.report()
    assert s["cpu_offload_checkpointing"] is True and s["gradient_checkpointing"] is True
    assert (s["torch_compile"], s["dynamo_mode"], s["dynamo_use_dynamic"], s["dynamo_backend"]) == (
        True, "max-autotune", True, "inductor")
    build_config(s)
    assert convert(_config(SD3, fp8_base=True)).settings["fp8_base"] is True  # SD3 reads it


def test_bucket_steps_additional_parameters_and_other_families():
    # sd-scripts requires multiples of 32 (SD3) and 16 (Anima, Lumina)
    assert convert(_config(SD3, bucket_reso_steps=48)).settings["bucket_reso_steps"] == 32
    assert convert(_config(LUMINA, bucket_reso_steps=48)).settings["bucket_reso_steps"] == 48
    assert convert(_config(ANIMA, bucket_reso_steps=8)).settings["bucket_reso_steps"] == 16
    # SD3 settings the GUI has no field for come through Additional parameters
    sd3 = convert(_config(SD3, additional_parameters="--training_shift 3.0 --apply_lg_attn_mask"))
    assert (sd3.settings["training_shift"], sd3.settings["apply_lg_attn_mask"]) == (3.0, True)
    # HunyuanImage-2.1 is still not trained, and the message names what is
    hunyuan = convert(_config(BASE, LoRA_type="HunyuanImage-2.1"))
    assert f"(it trains {TRAINED_FAMILIES})" in hunyuan.unsupported[0]
    assert "SD3 / SD3.5, Anima and Lumina 2" in TRAINED_FAMILIES
