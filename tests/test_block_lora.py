"""Block-wise LoRA as sd-scripts defines it: per-block learning-rate weights (lists or the sine / cosine / linear /
reverse_linear / zeros presets, with +offset), a zero threshold, and per-block ranks and alphas; a block of rank 0
is simply absent, and the file still loads in diffusers with every key matched."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_settings, run_cli, write_config
from lora_studio.config.network_args import parse_network_args
from lora_studio.errors import UserError
from lora_studio.models.loading import load_components
from lora_studio.network.blocks import BlockLayout, lr_weights
from lora_studio.network.lora import LoRANetwork

SD = BlockLayout(per_side=12, middle=1, total=25, ends=False)
XL = BlockLayout(per_side=9, middle=3, total=23, ends=True)


def test_presets_lists_offsets_and_the_zero_threshold():
    sine = lr_weights({"down_lr_weight": "sine"}, SD)
    assert sine[:12] == pytest.approx([math.sin(math.pi * i / 11 / 2) for i in range(12)]) and sine[12:] == [1] * 13
    assert lr_weights({"up_lr_weight": "cosine+0.5"}, SD)[13:] == pytest.approx(
        [math.sin(math.pi * i / 11 / 2) + 0.5 for i in reversed(range(12))])
    assert lr_weights({"down_lr_weight": "linear"}, SD)[:12] == pytest.approx([i / 11 for i in range(12)])
    assert lr_weights({"down_lr_weight": "reverse_linear"}, SD)[11] == 0.0
    assert lr_weights({"mid_lr_weight": "zeros"}, XL) is not None
    short = lr_weights({"down_lr_weight": (0.5, 0.1)}, SD)  # too short: the rest 1, as sd-scripts fills it
    assert short[:3] == [0.5, 0.1, 1.0]
    cut = lr_weights({"down_lr_weight": (0.5, 0.1), "block_lr_zero_threshold": 0.2}, SD)
    assert cut[:2] == [0.5, 0.0]
    xl = lr_weights({"mid_lr_weight": (0.1, 0.2, 0.3)}, XL)
    assert len(xl) == 23 and xl[0] == xl[22] == 1.0 and xl[10:13] == [0.1, 0.2, 0.3]
    with pytest.raises(UserError, match="'wave' is not a list of numbers nor one of"):
        lr_weights({"down_lr_weight": "wave"}, SD)


def test_block_numbers_follow_sd_scripts():
    from lora_studio.models.sd1 import SD1
    from lora_studio.models.sdxl import SDXL

    sd1, sdxl = SD1(), SDXL()
    assert sd1.lora_block_index("lora_unet_down_blocks_0_attentions_1_proj_in") == 2
    assert sd1.lora_block_index("lora_unet_down_blocks_1_downsamplers_0_conv") == 6
    assert sd1.lora_block_index("lora_unet_mid_block_attentions_0_proj_out") == 12
    assert sd1.lora_block_index("lora_unet_up_blocks_3_attentions_2_proj_out") == 24
    assert sdxl.lora_block_index("lora_unet_input_blocks_4_1_proj_in") == 5
    assert sdxl.lora_block_index("lora_unet_middle_block_2_in_layers_2") == 12
    assert sdxl.lora_block_index("lora_unet_output_blocks_8_0_skip_connection") == 21


def test_block_weights_set_each_blocks_learning_rate_and_rank(tiny_models):
    components = load_components(str(tiny_models["single"]), None, False)
    dims = ["4"] * 25
    dims[2] = "8"
    args = parse_network_args(["down_lr_weight=0,0.5,1,1,1,1,1,1,1,1,1,1", "mid_lr_weight=0",
                               "block_dims=" + ",".join(dims), "block_alphas=" + ",".join(["2"] * 25)],
                              "networks.lora")
    net = LoRANetwork(components, 4, 2.0, args=args, train_text_encoder=False)
    blocks = {net.block_of[s] for s in net.unet_stems}
    assert 12 not in blocks and 1 in blocks  # the middle block has weight 0: no adapters at all
    rates = {g["name"]: g["lr"] for g in net.param_groups(1e-3, [0.0])}
    assert rates["unet_block1"] == pytest.approx(5e-4) and rates["unet_block2"] == pytest.approx(1e-3)
    assert "unet_block12" not in rates
    ranks = {s: net._modules[s].rank for s in net.unet_stems}
    assert {r for s, r in ranks.items() if net.block_of[s] == 2} == {8} and set(ranks.values()) == {4, 8}
    with pytest.raises(UserError, match="block_dims needs 25 values"):
        LoRANetwork(components, 4, 2.0, args=parse_network_args(["block_dims=4,4"], "networks.lora"))


def test_a_block_wise_file_loads_in_diffusers_with_every_key_matched(tiny_models, dataset, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "out"
    dims = ["2"] * 25
    dims[13:19] = ["6"] * 6
    settings = base_settings(tiny_models["folder"], dataset, out, max_train_steps=2, network_train_unet_only=True,
                             network_args=["up_lr_weight=zeros+1", "down_lr_weight=0,0,0,0,0,0,1,1,1,1,1,1",
                                           "block_dims=" + ",".join(dims)])
    run_cli("train", "--config", str(write_config(tmp_path / "run.toml", settings)))
    sd = load_file(str(out / "test_lora.safetensors"))
    stems = sorted({k.split(".", 1)[0] for k in sd})
    assert not any(s.startswith(("lora_unet_down_blocks_0_", "lora_unet_down_blocks_1_")) for s in stems)
    up_ranks = {sd[f"{s}.lora_down.weight"].shape[0] for s in stems if s.startswith("lora_unet_up_blocks_1_")}
    assert up_ranks == {6}  # up blocks 13-18 (up_blocks 0 and 1) have rank 6
    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["folder"], safety_checker=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.load_lora_weights(str(out), weight_name="test_lora.safetensors", adapter_name="b", use_safetensors=True)
    loaded = {"lora_unet_" + n.replace(".", "_") for n, m in pipe.unet.named_modules()
              if hasattr(m, "lora_A") and "b" in m.lora_A}
    assert loaded == set(stems)
    module = dict(pipe.unet.named_modules())["up_blocks.1.attentions.0.proj_in"]
    assert module.lora_A["b"].weight.shape[0] == 6 and module.scaling["b"] == pytest.approx(2.0 / 6)
