"""The LoRA file loads in diffusers with every key matched, means what its alpha says, and is named as
AUTOMATIC1111 and ComfyUI expect (their naming rules re-derived here, not imported)."""

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_studio.saving import model_hashes
from lora_checks import a1111_compvis_name, assert_adapters_equal_file


@pytest.fixture(scope="module")
def lora(trained_run):
    path = trained_run["file"]
    with safe_open(str(path), "pt") as fh:
        metadata = fh.metadata()
    return path, load_file(str(path)), metadata


@pytest.fixture(scope="module")
def pipe(trained_run):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(trained_run["model"], safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)


def _stems(sd):
    return sorted({k.split(".", 1)[0] for k in sd})


def test_file_layout(lora):
    _, sd, meta = lora
    stems = _stems(sd)
    assert len(stems) == 192 + 18  # every transformer-block linear/1x1 conv, and q/k/v/out/fc1/fc2 of 3 TE layers
    for stem in stems:
        down, up, alpha = sd[f"{stem}.lora_down.weight"], sd[f"{stem}.lora_up.weight"], sd[f"{stem}.alpha"]
        assert down.shape[0] == 4 and up.shape[1] == 4 and alpha.ndim == 0 and float(alpha) == 2.0
        assert down.dtype == up.dtype == torch.float16
    assert len(sd) == 3 * len(stems)  # nothing else in the file
    assert all(isinstance(v, str) for v in meta.values())


def test_metadata(lora, trained_run):
    path, sd, meta = lora
    assert meta["ss_output_name"] == "test_lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_v2"] == "False"
    assert meta["ss_clip_skip"] == "2" and meta["ss_training_comment"] == "made by the test suite"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "diffusers" and meta["modelspec.title"] == "test_lora"
    assert meta["modelspec.resolution"] == "64x64" and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert json.loads(meta["ss_tag_frequency"])["2_lsdemo shape"]["lsdemo shape"] == 6
    assert json.loads(meta["ss_dataset_dirs"]) == {"2_lsdemo shape": {"n_repeats": 2, "img_count": 6}}
    assert meta["ss_steps"] == meta["ss_max_train_steps"] == "12" and meta["ss_epoch"] == "2"
    # the data hash does not depend on the header: recompute it from the file itself
    blob = path.read_bytes()
    assert meta["sshs_model_hash"] == model_hashes(blob)[0]
    assert meta["modelspec.hash_sha256"] == "0x" + meta["sshs_model_hash"]


def test_loads_in_diffusers_with_every_key_matched_and_scale_alpha_over_rank(lora, pipe):
    from diffusers import StableDiffusionPipeline

    path, sd, _ = lora
    state, alphas = StableDiffusionPipeline.lora_state_dict(str(path))  # raises if a key is left unconverted
    assert len(alphas) == len(_stems(sd))
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="t", use_safetensors=True)
    assert pipe.get_list_adapters() == {"unet": ["t"], "text_encoder": ["t"]}

    names = {}
    for name, module in pipe.unet.named_modules():
        if hasattr(module, "lora_A") and "t" in module.lora_A:
            names["lora_unet_" + name.replace(".", "_")] = module
    for name, module in pipe.text_encoder.named_modules():
        if hasattr(module, "lora_A") and "t" in module.lora_A:
            layer = re.search(r"layers\.(\d+)\.(.+)$", name)
            names[f"lora_te_text_model_encoder_layers_{layer[1]}_{layer[2].replace('.', '_')}"] = module
    assert sorted(names) == _stems(sd)  # no key unmatched, none extra
    assert_adapters_equal_file(names, sd, "t")

    # the math: base output + (alpha/r) * up(down(x)) is what the loaded pipeline computes
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    module = names[stem]
    x = torch.randn(2, 5, module.in_features)
    expected = module.base_layer(x) + 0.5 * (x @ sd[f"{stem}.lora_down.weight"].float().T) @ \
        sd[f"{stem}.lora_up.weight"].float().T
    assert torch.allclose(module(x), expected, atol=1e-5)
    assert sd[f"{stem}.lora_up.weight"].abs().max() > 0  # trained, not the zero init

    # generation changes with the LoRA applied
    def image(weight):
        pipe.set_adapters(["t"], [weight])
        g = torch.Generator().manual_seed(0)
        return pipe("lsdemo shape", num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images
    off, on = image(0.0), image(1.0)
    assert abs(on - off).mean() > 1e-4


def test_stems_follow_a1111_and_comfyui_rules(lora, tiny_models):
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import ldm_state_dict

    _, sd, _ = lora
    c = load_components(str(tiny_models["folder"]), None, False)
    # A1111 maps names onto the LDM model's modules: build those names from the single-file checkpoint's keys
    ldm_modules = set()
    for key in ldm_state_dict(c.denoiser, c.vae, c.text_encoders[0]):
        module = key.rsplit(".", 1)[0]
        module = module.replace("model.diffusion_model.", "diffusion_model.").replace(
            "cond_stage_model.transformer.", "transformer.")
        ldm_modules.add(module.replace(".", "_"))
    # ComfyUI maps lora_unet_ + every diffusers UNet module path, and fixed CLIP layer names
    comfy_unet = {"lora_unet_" + n.replace(".", "_") for n, _ in c.denoiser.named_modules()}
    comfy_te = re.compile(r"lora_te_text_model_encoder_layers_\d+_(mlp_fc1|mlp_fc2|self_attn_(q|k|v|out)_proj)$")
    for stem in _stems(sd):
        assert "." not in stem
        assert a1111_compvis_name(stem) in ldm_modules, stem
        assert stem in comfy_unet or comfy_te.match(stem), stem
