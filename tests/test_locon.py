"""LoCon (network_args conv_dim/conv_alpha): the 3x3 convolutions of ResNet, down- and upsample blocks, as
sd-scripts adapts them; the file loads in diffusers and is named as AUTOMATIC1111 and ComfyUI expect."""

from __future__ import annotations


import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_checks import a1111_compvis_name


@pytest.fixture(scope="module")
def locon_run(tiny_models, tmp_path_factory):
    from lora_studio.demo import write_dataset

    root = tmp_path_factory.mktemp("locon")
    data = write_dataset(root / "data", count=4, repeats=1)
    settings = base_settings(tiny_models["folder"], data, root / "out", max_train_steps=4,
                             network_args=["conv_dim=2", "conv_alpha=1"], output_name="locon")
    run_cli("train", "--config", str(write_config(root / "run.toml", settings)))
    path = root / "out" / "locon.safetensors"
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    return {"path": path, "sd": load_file(str(path)), "meta": meta, "root": root, "data": data,
            "model": tiny_models["folder"]}


def _stems(sd):
    return sorted({k.split(".", 1)[0] for k in sd})


def test_locon_adapts_resnet_and_sampler_convs_at_conv_dim(locon_run):
    sd, meta = locon_run["sd"], locon_run["meta"]
    stems = _stems(sd)
    conv = [s for s in stems if sd[f"{s}.lora_down.weight"].ndim == 4 and sd[f"{s}.lora_down.weight"].shape[-1] == 3]
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in conv and "lora_unet_mid_block_resnets_1_conv2" in conv
    assert "lora_unet_down_blocks_0_downsamplers_0_conv" in conv and "lora_unet_up_blocks_0_upsamplers_0_conv" in conv
    for stem in conv:
        assert sd[f"{stem}.lora_down.weight"].shape[0] == 2 and float(sd[f"{stem}.alpha"]) == 1.0
        assert sd[f"{stem}.lora_up.weight"].shape[2:] == (1, 1)
    # inside ResNet blocks the Linear and 1x1 layers take network_dim, as in sd-scripts
    assert sd["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape[0] == 4
    assert sd["lora_unet_down_blocks_2_resnets_0_conv_shortcut.lora_down.weight"].shape[0] == 4
    assert sd["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 4
    assert '"conv_dim": "2"' in meta["ss_network_args"] or '"conv_dim": 2' in meta["ss_network_args"]


def test_locon_file_loads_in_diffusers_with_every_key_matched(locon_run):
    from diffusers import StableDiffusionPipeline

    path, sd = locon_run["path"], locon_run["sd"]
    pipe = StableDiffusionPipeline.from_pretrained(locon_run["model"], safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="c", use_safetensors=True)
    loaded = {}
    for name, module in pipe.unet.named_modules():
        if hasattr(module, "lora_A") and "c" in module.lora_A:
            loaded["lora_unet_" + name.replace(".", "_")] = module
    unet_stems = [s for s in _stems(sd) if s.startswith("lora_unet_")]
    assert sorted(loaded) == unet_stems
    conv = loaded["lora_unet_down_blocks_0_resnets_0_conv1"]
    down = sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].float()
    assert torch.equal(conv.lora_A["c"].weight.float(), down)
    assert conv.scaling["c"] == pytest.approx(0.5)  # conv_alpha 1 / conv_dim 2


def test_locon_stems_follow_a1111_and_comfyui_rules(locon_run):
    from lora_studio.models.loading import load_components
    from lora_studio.models.tiny import ldm_state_dict

    c = load_components(str(locon_run["model"]), None, False)
    ldm_modules = {key.rsplit(".", 1)[0].replace("model.diffusion_model.", "diffusion_model.")
                   .replace("cond_stage_model.transformer.", "transformer.").replace(".", "_")
                   for key in ldm_state_dict(c.denoiser, c.vae, c.text_encoders[0])}
    comfy_unet = {"lora_unet_" + n.replace(".", "_") for n, _ in c.denoiser.named_modules()}
    for stem in _stems(locon_run["sd"]):
        assert a1111_compvis_name(stem) in ldm_modules, stem
        if stem.startswith("lora_unet_"):
            assert stem in comfy_unet, stem


def test_network_weights_continue_a_locon_with_ranks_read_from_the_file(locon_run):
    root = locon_run["root"]
    settings = base_settings(locon_run["model"], locon_run["data"], root / "out2", max_train_steps=2,
                             network_weights=str(locon_run["path"]), dim_from_weights=True, network_dim=32,
                             output_name="continued")
    proc = run_cli("train", "--config", str(write_config(root / "run2.toml", settings)))
    assert "dim_from_weights: rank 4, conv rank 2" in proc.stderr
    continued = load_file(str(root / "out2" / "continued.safetensors"))
    assert _stems(continued) == _stems(locon_run["sd"])
    saved = (root / "out2" / "continued_config.toml").read_text(encoding="utf-8")
    assert "network_dim = 4" in saved and "conv_dim=2" in saved


def test_unknown_network_args_are_refused_not_ignored(tiny_models, tmp_path, dataset):
    settings = base_settings(tiny_models["folder"], dataset, tmp_path / "out", network_args=["algo=loha"])
    proc = run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)), check=False)
    assert proc.returncode == 2
    assert "network_args: algo not supported" in proc.stderr
