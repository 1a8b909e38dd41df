"""SD3's parts load from where users keep them (inside the checkpoint, or their own files, a given setting winning),
the conditioning has sd-scripts' layout, swapped or missing files name their setting, and the family's torch-free
rules (recognition, required files, tool names, counts) read headers right."""

import pytest
import torch
from conftest import built_once

from lora_studio.config import build_config
from lora_studio.errors import UserError
from lora_studio.models.loading import load_components


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    def build(root):
        from lora_studio.models.tiny_sd3 import write_tiny_sd3, write_tiny_vae

        return {"inside": write_tiny_sd3(root / "inside", "medium", seed=5, layout="all_in_one"),
                "beside": write_tiny_sd3(root / "beside", "medium", seed=5, layout="separate"),
                "vae": str(write_tiny_vae(root / "vae.safetensors", seed=9))}
    return built_once(tmp_path_factory, "sd3-parts", build)[1]


def _load(settings):
    cfg = build_config(settings)
    return load_components(cfg.pretrained_model_name_or_path, None, False, options=cfg), cfg


def test_parts_inside_and_beside_load_the_same_models(files):
    """The same seeds written both ways give the same encoders (CLIP-L without text_projection in its own file: the
    identity) and the same VAE; a setting given wins over the checkpoint's own part."""
    inside, cfg = _load(files["inside"])
    beside, _ = _load(files["beside"])
    for a, b in zip(inside.text_encoders, beside.text_encoders):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            if k != "text_projection.weight" or a is not inside.text_encoders[0]:
                assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(beside.text_encoders[0].text_projection.weight, torch.eye(32))
    assert beside.text_encoders[1].config.hidden_act == "gelu" and beside.text_encoders[0].config.hidden_act == \
        "quick_gelu"
    assert torch.equal(inside.vae.encoder.conv_in.weight, beside.vae.encoder.conv_in.weight)
    own = inside.family.load_single_file(*_view(files["inside"]), options=build_config({**files["inside"],
                                                                                       "vae": files["vae"]}))
    assert not torch.equal(own.vae.encoder.conv_in.weight, inside.vae.encoder.conv_in.weight)
    assert own.vae.config.scaling_factor == 1.5305 and own.vae.config.shift_factor == 0.0609


def _view(settings):
    from pathlib import Path

    from lora_studio.models.loading import SafetensorsView

    path = Path(settings["pretrained_model_name_or_path"])
    return SafetensorsView(path, "model"), str(path)


def test_conditioning_layout_masks_and_no_t5(files):
    c, cfg = _load(files["inside"])
    family = c.family
    options = family.prompt_options(cfg)
    assert options == {"t5xxl_max_token_length": 256, "apply_lg_attn_mask": False, "apply_t5_attn_mask": False}
    with torch.no_grad():
        cond = family.encode_prompt(c, ["a red cat", "a dog"], "cpu", options)
        l_out = c.text_encoders[0](c.tokenizers[0](["a red cat"], padding="max_length", max_length=77,
                                                   return_tensors="pt").input_ids, output_hidden_states=True)
    context, pooled = cond["context"], cond["pooled"]
    assert context.shape == (2, 77 + 256, 64) and pooled.shape == (2, 64)
    assert torch.allclose(context[0, :77, :32], l_out.hidden_states[-2][0], atol=1e-6)  # penultimate CLIP-L
    assert torch.allclose(pooled[0, :32], l_out.text_embeds[0], atol=1e-6)
    assert not context[:, :77, 64:].any()  # (no padding here: 32 + 32 = the T5 width 64)
    g_ids = c.tokenizers[1](["a dog"], padding="max_length", max_length=77).input_ids[0]
    assert g_ids[-1] == 0 and c.tokenizers[0](["a dog"], padding="max_length", max_length=77).input_ids[0][-1] == \
        49407  # CLIP-G pads with id 0, CLIP-L with its end token
    masked = family.prompt_options(cfg.replace(apply_lg_attn_mask=True, apply_t5_attn_mask=True))
    with torch.no_grad():
        with_masks = family.encode_prompt(c, ["a red cat", "a dog"], "cpu", masked)["context"]
    assert torch.allclose(with_masks[:, :4], context[:, :4], atol=1e-5)  # the captions' tokens: causal CLIP
    assert not torch.allclose(with_masks[:, 77:], context[:, 77:])  # T5 attends no padding
    c.text_encoders = c.text_encoders[:2]
    with torch.no_grad():
        no_t5 = family.encode_prompt(c, ["a cat"], "cpu", options)["context"]
    assert no_t5.shape == (1, 77 + 77, 64) and not no_t5[:, 77:].any()  # sd-scripts: 77 zero rows without T5


def test_required_and_swapped_files_name_their_setting(files, tmp_path):
    from lora_studio.models.sd3 import SD3Family

    family = SD3Family()
    beside = files["beside"]
    assert family.required_files(beside["pretrained_model_name_or_path"]) == ["clip_l", "clip_g"]
    assert family.required_files(files["inside"]["pretrained_model_name_or_path"]) == []
    settings = {k: v for k, v in beside.items() if k != "clip_g"}
    with pytest.raises(UserError, match="clip_g"):
        family.check_settings(build_config(settings))
    assert family.check_settings(build_config({k: v for k, v in beside.items() if k != "t5xxl"})) == []
    with pytest.raises(UserError, match="clip_l: .*not a CLIP"):
        family.check_settings(build_config({**beside, "clip_l": beside["t5xxl"]}))
    with pytest.raises(UserError, match="training_shift"):
        family.check_settings(build_config({**beside, "training_shift": -1.0}))
    notes = family.check_settings(build_config({**beside, "pos_emb_random_crop_rate": 0.2}))
    assert notes and notes[0][0] == "pos_emb_random_crop_rate"  # an SD3.5 medium option
    assert "timestep_sampling" in family.ignored_settings and "discrete_flow_shift" in family.ignored_settings


def test_recognition_tools_and_counts_from_headers(files):
    from lora_studio.io_utils import read_safetensors_header
    from lora_studio.models.registry import BY_NAME, family_of_checkpoint
    from lora_studio.models.sd3_net import CONFIGS, MMDiT

    header = read_safetensors_header(files["inside"]["pretrained_model_name_or_path"], "model").tensors
    assert family_of_checkpoint(header).name == "sd3-medium"
    shapes = {k: v["shape"] for k, v in header.items()}
    family = BY_NAME["sd3-medium"]
    counts = family.parameter_counts(shapes)
    assert counts["text_encoders"] > 0 and counts["vae"] > 0 and counts["unet"] > 0
    assert counts["blocks"]["double"][0] == 2 and counts["blocks"]["hidden"] == 128
    table = family.lora_weight_keys("transformer", list(header), targets_only=True)
    assert table["lora_unet_joint_blocks_0_x_block_attn_qkv"] == \
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
    assert table["lora_te2_text_model_encoder_layers_1_mlp_fc2"] == \
        "text_encoders.clip_g.transformer.text_model.encoder.layers.1.mlp.fc2.weight"
    assert "lora_te3_encoder_block_0_layer_0_SelfAttention_q" in table
    assert not any("ln_q" in s or "first_stage" in s or "embedder" in s for s in table)
    # which variant a file fits, and the apps
    for name, kind in (("sd3-medium", "medium"), ("sd3.5-medium", "5-medium"), ("sd3.5-large", "5-large")):
        with torch.device("meta"):
            model = MMDiT(CONFIGS[kind])
        keys = {"model.diffusion_model." + k for k in model.state_dict()}
        assert family_of_checkpoint(keys).name == name  # asked in the registry's order
        stems = ["lora_unet_" + n.replace(".", "_") for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith("joint_blocks")]
        fits = [f.name for f in BY_NAME.values() if hasattr(f, "model_type") and f.lora_file_fits(stems)]
        # attn2 names are SD3.5 medium's only, blocks 24-37 SD3.5 large's; names alone cannot tell a 24-block file
        # without attn2 (SD3 medium's) from the others'
        assert fits == [name] if kind != "medium" else name in fits
    apps = family.lora_apps(["lora_unet_joint_blocks_0_x_block_attn_qkv"], True)
    assert apps["ComfyUI"] == "yes" and apps["diffusers"].startswith("no")
