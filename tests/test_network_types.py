"""The LoRA types Kohya_ss offers besides LoRA/LoCon, each shown by a number: LoRA-FA (networks.lora_fa), sd-scripts'
DyLoRA (networks.dylora), and the LyCORIS arguments as lycoris.kohya reads them (use_tucker, use_scalar, train_norm,
decompose_both, full-matrix LoKr, bypass_mode, constraint/rescaled, presets)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lora_studio.config import build_config
from lora_studio.config.network_args import parse_network_args
from lora_studio.config.rules import setting_problems
from lora_studio.models.loading import load_components
from lora_studio.network.lora import DyLoRAModule, LoRAModule, LoRANetwork


@pytest.fixture(scope="module")
def components(tiny_models):
    return load_components(str(tiny_models["single"]), None, False)


def _network(components, module: str, args: list[str], rank: int = 4, alpha: float = 2.0, **kw) -> LoRANetwork:
    return LoRANetwork(components, rank, alpha, args=parse_network_args(args, module), **kw)


def _denoise_loss(components) -> torch.Tensor:
    torch.manual_seed(0)
    unet = components.denoiser
    x = torch.randn(2, unet.config.in_channels, 8, 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    return unet(x, torch.tensor([10, 500]), encoder_hidden_states=context).sample.pow(2).mean()


def test_lora_fa_trains_the_up_weights_only_from_a_frozen_normal_down_projection(components):
    torch.manual_seed(1)
    net = _network(components, "networks.lora_fa", [], train_text_encoder=False)
    modules = net.adapters()
    assert all(isinstance(m, LoRAModule) and not m.lora_down.weight.requires_grad for m in modules)
    # sd-scripts' LoRA-FA start: down ~ N(0, 2 / (in + rank)), up = 0
    ratios = [float(m.lora_down.weight.std()) / math.sqrt(2.0 / (m.lora_down.weight[0].numel() + 4))
              for m in modules]
    assert sum(ratios) / len(ratios) == pytest.approx(1.0, abs=0.05)
    (group,) = net.param_groups(1e-2, [0.0])
    assert len(group["params"]) == len(modules)  # one tensor (up) per module, not two
    down_before = [m.lora_down.weight.detach().clone() for m in modules]
    optimizer = torch.optim.SGD(group["params"], lr=1.0)
    for m in modules:
        nn.init.normal_(m.lora_up.weight, std=0.01)  # so that the down weights would get a gradient if trainable
    net.attach()
    try:
        _denoise_loss(components).backward()
        optimizer.step()
    finally:
        net.detach_from_base()
    assert all(torch.equal(m.lora_down.weight, d) for m, d in zip(modules, down_before))
    assert all(m.lora_down.weight.grad is None for m in modules)


def _seed_for_start(start: int, rank: int, unit: int) -> int:
    """A seed under which DyLoRA's first draw starts at ``start``."""
    for seed in range(1000):
        torch.manual_seed(seed)
        drawn = int(torch.randint(0, rank, (1,)))
        if drawn - drawn % unit == start:
            return seed
    raise AssertionError(start)


@pytest.mark.parametrize("start", [0, 2])
def test_dylora_trains_one_unit_of_ranks_per_step_scaled_as_sd_scripts(start):
    base = nn.Linear(6, 5)
    torch.manual_seed(3)
    module = DyLoRAModule("lora_unet_x", base, rank=4, alpha=2.0, unit=2)
    for p in module.up_ranks:
        nn.init.normal_(p)
    module.attach()
    x = torch.randn(3, 6)
    down = torch.cat(list(module.down_ranks)).detach()
    up = torch.cat(list(module.up_ranks), dim=1).detach()
    torch.manual_seed(_seed_for_start(start, 4, 2))
    out = module(x)
    # the whole rank applies, at alpha/rank x sqrt(rank / (start + unit))
    expected = nn.functional.linear(x, base.weight, base.bias) + (x @ down.T @ up.T) * (2.0 / 4) * math.sqrt(
        4 / (start + 2))
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    trained = [i for i in range(4) if module.down_ranks[i].grad is not None]
    assert trained == [start, start + 1]
    assert all((module.up_ranks[i].grad is not None) == (i in trained) for i in range(4))
    module.eval()  # samples and the saved file: the whole rank at alpha/rank
    assert torch.allclose(module(x), nn.functional.linear(x, base.weight, base.bias) + (x @ down.T @ up.T) * 0.5,
                          atol=1e-5)
    sd = module.state_dict()
    assert set(sd) == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert torch.equal(sd["lora_down.weight"], down) and torch.equal(sd["lora_up.weight"], up)
    again = DyLoRAModule("lora_unet_x", base, rank=4, alpha=2.0, unit=2)
    again.load_state_dict(sd)
    assert torch.equal(torch.cat(list(again.down_ranks)), down) and torch.equal(again.state_dict()["alpha"],
                                                                                sd["alpha"])
    module.detach_from_base()


def test_dylora_conv_layers_and_the_rank_rules(components):
    net = _network(components, "networks.dylora", ["unit=2", "conv_dim=2", "conv_alpha=1"], train_text_encoder=False)
    convs = [m for m in net.adapters() if m.is_conv and m.kernel == (3, 3)]
    assert convs and all(m.state_dict()["lora_down.weight"].shape[1:] == (m._base[0].in_channels, 3, 3)
                         for m in convs)
    base = {"pretrained_model_name_or_path": "m", "output_dir": "o", "train_data_dir": "d",
            "network_module": "networks.dylora"}
    assert "multiple of unit (4)" in setting_problems(build_config({**base, "network_dim": 6,
                                                                    "network_args": ["unit=4"]}))["network_dim"]
    assert "no max-norm" in setting_problems(build_config({**base, "scale_weight_norms": 1.0}))["scale_weight_norms"]


def _keys_by_stem(net: LoRANetwork) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key in net.state_dict():
        stem, rest = key.split(".", 1)
        out.setdefault(stem, set()).add(rest)
    return out


def test_lycoris_arguments_shape_the_weights_as_lycoris_makes_them(components):
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    linear = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    plain = _keys_by_stem(_network(components, "lycoris.kohya", ["algo=loha", "conv_dim=2"]))
    tucker = _keys_by_stem(_network(components, "lycoris.kohya", ["algo=loha", "conv_dim=2", "use_cp=True"]))
    assert "hada_t1" not in plain[conv] and {"hada_t1", "hada_t2"} <= tucker[conv]  # use_cp is use_tucker
    assert "hada_t1" not in tucker[linear]  # Tucker only for k x k convolutions
    # train_norm: the GroupNorm / LayerNorm layers inside the adapted blocks get w_norm / b_norm
    normed = _keys_by_stem(_network(components, "lycoris.kohya", ["algo=locon", "conv_dim=2", "train_norm=True"]))
    norms = {s for s, k in normed.items() if k == {"w_norm", "b_norm"}}
    expected = sum(1 for name, block in components.denoiser.named_modules()
                   if type(block).__name__ in ("Transformer2DModel", "ResnetBlock2D")
                   for _, child in block.named_modules() if isinstance(child, (nn.GroupNorm, nn.LayerNorm)))
    assert len(norms) == expected > 0 and "lora_unet_down_blocks_0_resnets_0_norm1" in norms
    # LoKr: decompose_both splits the first factor too; a rank of 100000 keeps both factors whole (full matrix)
    one = _keys_by_stem(_network(components, "lycoris.kohya", ["algo=lokr", "factor=8"], rank=1))
    both = _keys_by_stem(_network(components, "lycoris.kohya", ["algo=lokr", "factor=8", "decompose_both=True"],
                                  rank=1))
    assert "lokr_w1" in one[linear] and {"lokr_w1_a", "lokr_w1_b"} <= both[linear]
    full = _network(components, "lycoris.kohya", ["algo=lokr", "factor=4"], rank=100000, train_text_encoder=False)
    full_keys = _keys_by_stem(full)
    assert full_keys[linear] == {"lokr_w1", "lokr_w2", "alpha"}
    module = full._modules[linear]
    base = module.org_module[0]
    assert module.lokr_w1.numel() * module.lokr_w2.numel() == base.weight.numel()  # a Kronecker product of the
    # two factors spans the whole weight: every entry of the change can be learned
    oft = _network(components, "lycoris.kohya", ["algo=diag-oft", "constraint=0.0001", "rescaled=True"])
    oft_keys = _keys_by_stem(oft)
    assert {"oft_blocks", "rescale"} <= oft_keys[linear]
    oft_module = oft._modules[linear]
    assert oft_module.constraint == pytest.approx(0.0001 * oft_module.org_module[0].out_features)
    scalar = _network(components, "lycoris.kohya", ["algo=locon", "use_scalar=True"])
    assert float(scalar._modules[linear].scalar.detach()) == 0.0  # starts at 0: the up weights need not start at 0


def test_bypass_mode_changes_how_the_delta_is_applied_not_what_it_is(components):
    torch.manual_seed(5)
    results = []
    for bypass in (False, True):
        net = _network(components, "lycoris.kohya", ["algo=loha", f"bypass_mode={bypass}"], train_text_encoder=False)
        torch.manual_seed(6)
        for p in net.parameters():
            nn.init.normal_(p, std=0.05)
        net.attach()
        try:
            with torch.no_grad():
                results.append(_denoise_loss(components))
        finally:
            net.detach_from_base()
    assert results[0] == pytest.approx(float(results[1]), rel=1e-4)


def test_lycoris_presets_choose_the_layers(components):
    def stems(preset):
        net = _network(components, "lycoris.kohya", ["algo=locon", f"preset={preset}"])
        return set(net.unet_stems), set(net.te_stems[0])

    full_unet, full_te = stems("full")
    attn_unet, attn_te = stems("attn-only")
    unet_only, te_none = stems("unet-only")
    assert {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_2"} <= full_unet
    assert attn_unet and all("_attn1_" in s or "_attn2_" in s for s in attn_unet)
    assert attn_te and all("self_attn" in s for s in attn_te) and len(full_te) == len(attn_te) * 6 // 4
    assert unet_only == full_unet and not te_none
    with pytest.raises(Exception, match="preset 'my.toml' is not supported"):
        parse_network_args(["preset=my.toml"], "lycoris.kohya")


def test_arguments_lycoris_does_not_read_are_accepted_and_said(components):
    args = parse_network_args(["algo=locon", "rank_dropout_scale=True", "train_on_input=True"], "lycoris.kohya")
    assert args.not_read == ("rank_dropout_scale", "train_on_input")
    base = {"pretrained_model_name_or_path": "m", "output_dir": "o", "train_data_dir": "d"}
    assert "full-matrix LoKr" in setting_problems(build_config({**base, "network_dim": 5000}))["network_dim"]
    assert "network_dim" not in setting_problems(build_config({
        **base, "network_dim": 100000, "network_module": "lycoris.kohya", "network_args": ["algo=lokr"]}))
