"""Base models: single-file and diffusers folders load to the same weights, offline; families are checked."""

import pytest
import torch
from safetensors.torch import save_file

from lora_studio.errors import UserError
from lora_studio.models.loading import load_components
from lora_studio.models.tiny import ldm_state_dict
from lora_studio.models.tokenizer import clip_tokenizer


def test_tokenizer_matches_clip_ids_offline():
    tok = clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77


def test_single_file_and_folder_give_identical_models(tiny_models):
    a = load_components(str(tiny_models["folder"]), None, False)
    b = load_components(str(tiny_models["single"]), None, False)
    for x, y in [(a.denoiser, b.denoiser), (a.vae, b.vae), (a.text_encoders[0], b.text_encoders[0])]:
        sx, sy = x.state_dict(), y.state_dict()
        assert sx.keys() == sy.keys()
        assert all(torch.equal(sx[k], sy[k]) for k in sx)
    assert a.denoiser.config.block_out_channels == b.denoiser.config.block_out_channels
    assert a.tokenizers[0]("lsdemo shape").input_ids == b.tokenizers[0]("lsdemo shape").input_ids


def test_our_ldm_names_agree_with_diffusers_own_converter(tiny_models):
    """Independent check of the single-file layout: diffusers' converter reads our checkpoint back exactly."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    c = load_components(str(tiny_models["folder"]), None, False)
    ckpt = ldm_state_dict(c.denoiser, c.vae, c.text_encoders[0])
    unet = convert_ldm_unet_checkpoint(dict(ckpt), dict(c.denoiser.config))
    assert unet.keys() == c.denoiser.state_dict().keys()
    assert all(torch.equal(unet[k], v) for k, v in c.denoiser.state_dict().items())
    vae = convert_ldm_vae_checkpoint(dict(ckpt), dict(c.vae.config))
    assert vae.keys() == c.vae.state_dict().keys()
    assert all(torch.equal(vae[k].reshape(v.shape), v) for k, v in c.vae.state_dict().items())


def test_separate_vae_file(tiny_models, tmp_path):
    c = load_components(str(tiny_models["folder"]), None, False)
    whole = ldm_state_dict(c.denoiser, c.vae, c.text_encoders[0])
    vae_only = {k[len("first_stage_model."):]: v for k, v in whole.items() if k.startswith("first_stage_model.")}
    save_file({k: v * 0 + 1 if k.endswith("conv_in.bias") else v for k, v in vae_only.items()},
              str(tmp_path / "vae.safetensors"))
    with_vae = load_components(str(tiny_models["single"]), str(tmp_path / "vae.safetensors"), False)
    assert torch.all(with_vae.vae.encoder.conv_in.bias == 1)


def test_family_and_file_errors(tiny_models, tmp_path):
    with pytest.raises(UserError, match="SD1.x model but the config sets v2"):
        load_components(str(tiny_models["single"]), None, True)
    with pytest.raises(UserError, match="not found"):
        load_components(str(tmp_path / "missing.safetensors"), None, False)
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickle file"):
        load_components(str(tmp_path / "model.ckpt"), None, False)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read"):
        load_components(str(tmp_path / "junk.safetensors"), None, False)
    save_file({"model.diffusion_model.x": torch.zeros(1), "conditioner.embedders.1.model.y": torch.zeros(1)},
              str(tmp_path / "xl.safetensors"))
    with pytest.raises(UserError, match="incomplete SDXL checkpoint"):
        load_components(str(tmp_path / "xl.safetensors"), None, False)


def test_a_family_we_do_not_train_is_named_at_the_check_and_at_the_start(tiny_models, tmp_path):
    import json

    from lora_studio.gui.form import check_form

    cascade = tmp_path / "stable-cascade-stage-c.safetensors"  # (Flux is trained now: a single file of another one)
    save_file({"down_blocks.0.0.channelwise.0.weight": torch.zeros(2, 2)}, str(cascade))
    z_image = tmp_path / "z_image_turbo_bf16.safetensors"  # Lumina 2's layout, but its adaLN is a plain Linear
    save_file({"layers.0.adaLN_modulation.0.weight": torch.zeros(2, 2)}, str(z_image))
    qwen = tmp_path / "qwen-image-diffusers"
    qwen.mkdir()
    (qwen / "model_index.json").write_text(json.dumps({"_class_name": "QwenImagePipeline"}))
    for model, name in ((cascade, "Stable Cascade"), (z_image, "Z-Image"), (qwen, "Qwen-Image")):
        with pytest.raises(UserError, match=f"is a {name} model, which LoRA Studio does not train"):
            load_components(str(model), None, False)
        problems = check_form({"pretrained_model_name_or_path": str(model), "output_dir": str(tmp_path / "o"),
                               "train_data_dir": str(tmp_path)}, scan_dataset=False).problems
        assert f"is a {name} model" in problems["pretrained_model_name_or_path"]
    problems = check_form({"pretrained_model_name_or_path": str(tiny_models["single"]), "v2": True,
                           "output_dir": str(tmp_path / "o"), "train_data_dir": str(tmp_path)},
                          scan_dataset=False).problems
    assert "SD1.x model but the config sets v2" in problems["pretrained_model_name_or_path"]
